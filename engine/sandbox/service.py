"""The sandbox as one service: the ERP HTTP API and the MLLP billing receiver on one state."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory

from engine.sandbox.billing import BillingReceiver
from engine.sandbox.cloud import CloudApis, Credentials
from engine.sandbox.erp import ErpApi, site
from engine.sandbox.purchasing import ReleaseWebhook
from engine.sandbox.state import SandboxState

log = Logger()


class SandboxService:
    """``start()`` listens on both ports (0 = any free port; the actual ones are then in
    ``http_port`` and ``mllp_port``); ``await stop()`` closes listeners, connections and the
    state file."""

    def __init__(
        self,
        state_path: str | Path,
        *,
        http_port: int,
        mllp_port: int,
        interface: str = "127.0.0.1",
        reactor: Any,
        seed: str | Path | None = None,
        reseed: bool = False,
        reject_codes: Iterable[str] = (),
        po_webhook: str | None = None,
        po_webhook_token: str | None = None,
        credentials: Credentials | None = None,
        po_webhook_secret: str | None = None,
    ) -> None:
        self.state_path = Path(state_path)
        self.interface = interface
        self.reactor = reactor
        self.requested = (http_port, mllp_port)
        self.seed = seed
        self.reseed = reseed
        self.reject_codes = tuple(reject_codes)
        self.po_webhook = po_webhook
        self.po_webhook_token = po_webhook_token
        self.po_webhook_secret = po_webhook_secret
        self.credentials = credentials
        self.cloud: CloudApis | None = None
        self.webhook: ReleaseWebhook | None = None
        self.state: SandboxState | None = None
        self.billing: BillingReceiver | None = None
        self.api: ErpApi | None = None
        self.http_port: int | None = None
        self.mllp_port: int | None = None
        self._ports: list[Any] = []
        self._factories: list[Any] = []

    @property
    def http_url(self) -> str:
        return f"http://{self.interface}:{self.http_port}"

    def start(self) -> defer.Deferred:
        """Open the state, seed it, listen. Listening when this returns (the Deferred it returns
        has already fired with the service, for callers that await)."""
        self.state = SandboxState(self.state_path)
        if self.seed is not None:
            n = self.state.seed_csv(self.seed, overwrite=self.reseed)
            log.info("sandbox seeded {n} on-hand row(s) from {seed}", n=n, seed=str(self.seed))
        self.billing = BillingReceiver(self.state, self.reject_codes)
        self.api = ErpApi(self.state, self.billing)
        self.cloud = CloudApis(self.state, self.credentials)
        inner = [site(self.api, self.reactor, self.cloud), self.billing.factory(self.reactor)]
        web, mllp = (WrappingFactory(f) for f in inner)
        for f in (*inner, web, mllp):
            f.noisy = False  # no "Starting factory" lines
        try:
            http_port = self.reactor.listenTCP(self.requested[0], web, interface=self.interface)
            self._ports.append(http_port)
            mllp_port = self.reactor.listenTCP(self.requested[1], mllp, interface=self.interface)
            self._ports.append(mllp_port)
        except Exception:
            for port in self._ports:
                port.stopListening()
            self._ports.clear()
            self.state.close()
            raise
        self._factories = [web, mllp]
        if self.po_webhook:
            self.webhook = ReleaseWebhook(
                self.api.purchasing,
                self.po_webhook,
                reactor=self.reactor,
                token=self.po_webhook_token,
                secret=self.po_webhook_secret,
            )
            self.webhook.start()
        self.http_port = http_port.getHost().port
        self.mllp_port = mllp_port.getHost().port
        log.info(
            "sandbox ERP on http://{iface}:{http}, billing MLLP on {iface}:{mllp}, state {state}",
            iface=self.interface,
            http=self.http_port,
            mllp=self.mllp_port,
            state=str(self.state_path),
        )
        return defer.succeed(self)

    async def stop(self) -> None:
        if self.webhook is not None:
            self.webhook.stop()
            self.webhook = None
        ports, self._ports = self._ports, []
        for port in ports:
            await port.stopListening()
        if self._factories:
            for call in list(self._factories[0].wrappedFactory.resource.pending):
                if call.active():
                    call.cancel()
        for factory in self._factories:
            for p in list(factory.protocols):
                p.transport.abortConnection()
        self._factories = []
        if self.state is not None:
            self.state.close()
            self.state = None
