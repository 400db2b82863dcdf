"""The ``x12_partner`` destination: X12 files to each trading partner, the way its
``delivery`` in ``mappings/trading_partners.yaml`` says.

- ``sftp_server: {account: NAME}``: the file is left in that account's ``outbound/`` folder on
  our own SFTP server (written atomically under a hidden name, then renamed, so the partner
  never downloads half a file);
- ``sftp: {...}``: uploaded to the partner's own server with the ``sftp`` destination (host key
  pinned, atomic upload, retried with backoff).

The delivery's ``partner`` and ``filename`` come from the procurement book. The same delivery
sent again rewrites the same file with the same bytes.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

from twisted.internet.threads import deferToThreadPool

from engine.destinations.file import write_atomically
from engine.destinations.sftp import SftpDestination
from engine.errors import ConfigError, DeliveryError
from engine.model import Delivery
from engine.registry import destination
from engine.spec import Bool, Field, Spec

X12_PARTNER_SPEC = Spec(
    "x12_partner",
    [Field("fsync", Bool(), True, "fsync files left in our SFTP server's outbound/ folders.")],
    description=(
        "Delivers X12 files (850, 997/999, TA1) to the trading partner named by the "
        "procurement book: into the partner's `outbound/` folder on our SFTP server, or onto "
        "the partner's own SFTP server, as its `delivery` in "
        "`mappings/trading_partners.yaml` says."
    ),
    example="destinations:\n  - name: vendors\n    x12_partner: {}",
)


class X12PartnerDestination:
    def __init__(
        self, options: Any, *, reactor: Any, channel: str, name: str, base_dir: pathlib.Path
    ) -> None:
        self.options = options
        self.reactor = reactor
        self.channel = channel
        self.name = name
        self.base_dir = pathlib.Path(base_dir)
        self._project: Any = None
        self._remote: dict[str, SftpDestination] = {}

    def _settings(self) -> Any:
        if self._project is None:
            from engine.config.project import load_project

            try:
                self._project = load_project(self.base_dir, dict(os.environ))
            except ConfigError as exc:
                raise DeliveryError(f"project does not load: {exc}", retryable=True) from exc
        return self._project

    async def send(self, delivery: Delivery) -> bytes | None:
        from engine.domains.procurement.partners import OurSftpServer, PartnerSftp

        project = self._settings()
        pid = delivery.meta.get("partner")
        filename = str(delivery.meta.get("filename") or f"{delivery.idempotency_key}.x12")
        partner = project.mappings.partners.get(pid) if pid else None
        if partner is None:
            raise DeliveryError(f"no trading partner {pid!r} for this X12 file", retryable=False)
        how = partner.delivery
        if isinstance(how, OurSftpServer):
            server = project.settings.sftp_server
            if server is None:
                raise DeliveryError(
                    f"partner {pid} collects from our SFTP server, but routes.yaml has no "
                    "sftp_server",
                    retryable=False,
                )
            folder = how.folder(server, self.base_dir)
            if "/" in filename or filename.startswith("."):
                raise DeliveryError(f"bad file name {filename!r}", retryable=False)
            try:
                await deferToThreadPool(
                    self.reactor,
                    self.reactor.getThreadPool(),
                    write_atomically,
                    folder,
                    filename,
                    delivery.payload,
                    self.options.fsync,
                )
            except OSError as exc:
                raise DeliveryError(
                    f"could not write {filename!r} for {pid}: {exc.strerror}", retryable=True
                ) from exc
            return None
        if isinstance(how, PartnerSftp):
            remote = self._remote.get(pid)
            if remote is None:
                remote = SftpDestination(
                    how.options,
                    reactor=self.reactor,
                    channel=self.channel,
                    name=f"{self.name}:{pid}",
                    base_dir=self.base_dir,
                )
                self._remote[pid] = remote
            return await remote.send(delivery)
        raise DeliveryError(f"trading partner {pid} has no delivery configured", retryable=False)

    def close(self) -> None:
        for remote in self._remote.values():
            remote.close()
        self._remote.clear()


@destination("x12_partner", X12_PARTNER_SPEC)
def make_x12_partner(
    options: Any, *, reactor: Any, channel: str, name: str, base_dir: pathlib.Path
) -> X12PartnerDestination:
    return X12PartnerDestination(
        options, reactor=reactor, channel=channel, name=name, base_dir=base_dir
    )
