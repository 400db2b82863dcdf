"""The ``x12_partner`` destination: X12 files to each trading partner, the way its
``delivery`` in ``mappings/trading_partners.yaml`` says.

- ``sftp_server: {account: NAME}``: the file is left in that account's ``outbound/`` folder on
  our own SFTP server (written atomically under a hidden name, then renamed, so the partner
  never downloads half a file);
- ``sftp: {...}``: uploaded to the partner's own server as the ``sftp`` destination does it
  (:class:`engine.net.sftp.SftpUploader`: host key pinned, atomic upload, retried with backoff).

The delivery's ``partner`` and ``filename`` come from the procurement book. The same delivery
sent again rewrites the same file with the same bytes. The trading partners and the SFTP
server's settings are read from the runtime's resources at each delivery, so a reloaded
``mappings/trading_partners.yaml`` counts from the next file on, without a restart.

A component only procurement uses: it lives in the domain's package and registers when
:mod:`engine.domains.procurement.domain` is imported.
"""

from __future__ import annotations

import pathlib
from typing import Any

from twisted.internet.threads import deferToThreadPool

from engine.domains.procurement.partners import OurSftpServer, PartnerSftp
from engine.errors import DeliveryError
from engine.model import Delivery
from engine.net.files import write_atomically
from engine.net.sftp import SftpUploader
from engine.registry import destination
from engine.resources import Resources
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
        self,
        options: Any,
        *,
        reactor: Any,
        channel: str,
        name: str,
        base_dir: pathlib.Path,
        resources: Resources,
    ) -> None:
        self.options = options
        self.reactor = reactor
        self.channel = channel
        self.name = name
        self.base_dir = pathlib.Path(base_dir)
        self.resources = resources
        self._remote: dict[str, tuple[Any, SftpUploader]] = {}

    async def send(self, delivery: Delivery) -> bytes | None:
        partners = self.resources.get("trading_partners")
        pid = delivery.meta.get("partner")
        filename = str(delivery.meta.get("filename") or f"{delivery.idempotency_key}.x12")
        partner = partners.get(pid) if pid and partners is not None else None
        if partner is None:
            raise DeliveryError(f"no trading partner {pid!r} for this X12 file", retryable=False)
        how = partner.delivery
        if isinstance(how, OurSftpServer):
            server = self.resources.settings.sftp_server
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
            known = self._remote.get(pid)
            if known is None or known[0] != how.options:  # new, or reloaded with other settings
                if known is not None:
                    known[1].close()
                remote = SftpUploader(
                    how.options,
                    reactor=self.reactor,
                    base_dir=self.base_dir,
                    label=f"sftp destination {self.channel}/{self.name}:{pid}",
                )
                self._remote[pid] = (how.options, remote)
            return await self._remote[pid][1].send(delivery)
        raise DeliveryError(f"trading partner {pid} has no delivery configured", retryable=False)

    def close(self) -> None:
        for _, remote in self._remote.values():
            remote.close()
        self._remote.clear()


@destination("x12_partner", X12_PARTNER_SPEC)
def make_x12_partner(
    options: Any,
    *,
    reactor: Any,
    channel: str,
    name: str,
    base_dir: pathlib.Path,
    resources: Resources,
) -> X12PartnerDestination:
    return X12PartnerDestination(
        options,
        reactor=reactor,
        channel=channel,
        name=name,
        base_dir=base_dir,
        resources=resources,
    )
