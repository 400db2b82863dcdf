"""The admin listener as a Twisted service: the console (``engine.web.console``) with its pages
and API routes, the observability resources when ``engine.web.observability`` is there, listening
on routes.yaml's ``admin: listen`` (TLS and mutual TLS as the other listeners)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.logger import Logger

from engine.web import api, pages
from engine.web.console import Console, age_text

log = Logger(namespace="wharf.console")


class AdminService(service.Service):
    """The admin listener as a Twisted service: ``start()`` (a Deferred fired once listening)
    and ``stop()``. At start it mounts ``engine.web.observability``'s resources when that module
    is there, and prints a one-time setup link when the store has no account yet."""

    name = "admin"

    def __init__(self, engine: Any, config: Any, *, out: Callable[[str], None] = print) -> None:
        self.console = Console(engine, config)
        pages.register(self.console)
        api.register(self.console)
        self.config = config
        self.engine = engine
        self.out = out
        self.port: Any = None
        self.setup_link: str | None = None

    def url(self) -> str:
        from engine.web.config import base_url

        return base_url(self.config, self.port.getHost().port if self.port is not None else None)

    def _mount_observability(self) -> None:
        try:
            from engine.web import observability  # type: ignore[attr-defined]
        except ImportError:
            return
        for path, child in observability.resources(self.engine).items():
            self.console.mount(path, child)

    async def start(self) -> None:
        from engine.net.endpoints import server_endpoint

        self._mount_observability()
        self.console.start()
        endpoint = server_endpoint(
            self.engine.reactor, self.config.listen, self.config.client_ca, Path(self.engine.root)
        )
        self.port = await endpoint.listen(self.console.site())
        service.Service.startService(self)
        log.info("console listening on {url}", url=self.url())
        self.setup_link = await self.first_run_link()

    async def first_run_link(self) -> str | None:
        """With no account that can log in (none yet, or none has set its password): a
        one-time link to set the ``admin`` account's password (made if missing), printed and
        never logged."""
        from engine.web import accounts

        users = await self.console.read(self.console.store.users)
        if any(u["password_hash"] and not u["disabled"] for u in users):
            return None
        create = not any(u["name"] == "admin" for u in users)
        token = await self.console.write(
            accounts.issue_setup,
            self.console.store,
            "admin",
            roles=["admin"],
            channels=["*"],
            actor="wharf",
            ttl=self.config.setup_link_ttl,
            create=create,
        )
        link = f"{self.url()}/setup?token={token}"
        self.out(
            f"console: {self.url()}/ has no account that can log in yet; set the admin "
            f"password once at {link} (valid {age_text(self.config.setup_link_ttl)})"
        )
        return link

    async def stop(self) -> None:
        service.Service.stopService(self)
        if self.port is not None:
            port, self.port = self.port, None
            await port.stopListening()
        self.console.stop()
