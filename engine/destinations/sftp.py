"""The ``sftp`` destination: upload each delivery to a partner's SFTP server, atomically.

The payload is written under a hidden temporary name (``.<name>.<random>.part``) in
``remote_dir`` and renamed over the final name (``posix-rename@openssh.com`` when the server
offers it, else remove + rename). The default name is the idempotency key, so a redelivery
rewrites the same file with the same bytes. The host key must be known in advance
(``known_hosts`` or ``host_key_fingerprint``); a mismatch fails the delivery (retryable, logged
as an error) and nothing is sent. One connection is kept and reused; it is re-opened when lost.

==========================================================  =========  =========
outcome                                                     retryable  ambiguous
==========================================================  =========  =========
connect refused / timeout / login refused / host key bad    yes        no
failure while writing the temporary file                    yes        no
failure once the rename was requested                       yes        yes
file name template renders a path                           no         no
==========================================================  =========  =========
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from engine.delivery import check_template, render_template, template_values
from engine.destinations.file import extension_for
from engine.errors import DeliveryError
from engine.model import Delivery
from engine.registry import destination
from engine.sftp import HostKeyError, RenameFailed, SftpSession, connect
from engine.sources.sftp_poll import Outage, connection_fields, remote_of
from engine.spec import Context, Field, Spec, Str, join

log = Logger(namespace="wharf.destination.sftp")


def _check(config: Any, ctx: Context, node: Any, path: str) -> None:
    if not config.known_hosts and not config.host_key_fingerprint:
        ctx.error(
            node,
            join(path, "known_hosts"),
            "set known_hosts or host_key_fingerprint: the server's host key must be known "
            "in advance (there is no trust on first use)",
        )
    problem = check_template(config.filename)
    if problem:
        ctx.error(node, join(path, "filename"), problem)
    elif "/" in config.filename or "\\" in config.filename:
        ctx.error(node, join(path, "filename"), "must be a plain file name without a directory")


SFTP_DEST_SPEC = Spec(
    "sftp",
    [
        *connection_fields(),
        Field(
            "filename",
            Str(),
            "{idempotency_key}{ext}",
            "Remote file name template (the http placeholders plus {ext}); no directory.",
        ),
    ],
    description=(
        "Upload each delivery to a partner's SFTP server: temporary hidden name, then rename. "
        "The default name is the idempotency key, so a redelivery rewrites the same file."
    ),
    example="""
sftp:
  host: sftp.acme.com
  user: wharf
  private_key: keys/acme_id_ed25519
  host_key_fingerprint: SHA256:Hk0d...
  remote_dir: /inbound
""",
    check=_check,
)


class SftpDestination:
    def __init__(
        self, options: Any, *, reactor: Any, channel: str, name: str, base_dir: pathlib.Path
    ) -> None:
        self.options = options
        self.reactor = reactor
        self.channel = channel
        self.name = name
        self.remote = remote_of(options, pathlib.Path(base_dir))
        self.what = (
            f"sftp destination {channel}/{name} "
            f"({options.user}@{options.host}:{options.port}{options.remote_dir})"
        )
        self.outage = Outage(self.what, options.alert_after, 1.0, 60.0)
        self._session: SftpSession | None = None
        self._lock = defer.DeferredLock()

    def filename_for(self, delivery: Delivery) -> str:
        values = template_values(delivery, ext=extension_for(delivery.content_type))
        name = render_template(self.options.filename, values, what="filename")
        if (
            not name
            or name.startswith(".")
            or "/" in name
            or "\\" in name
            or ".." in name
            or any(ord(c) < 32 or ord(c) == 127 for c in name)
            or len(name.encode()) > 200
        ):
            raise DeliveryError(
                f"filename must be a plain visible name without '/', '..' or control "
                f"characters (got {name!r})",
                retryable=False,
            )
        return name

    async def _connected(self) -> SftpSession:
        await self._lock.acquire()
        try:
            s = self._session
            if s is not None and s.alive:
                return s
            self._session = None
            try:
                self._session = await connect(self.reactor, self.remote)
            except HostKeyError as e:
                log.error("{what}: {error}", what=self.what, error=str(e))
                self.outage.failed(str(e))
                raise DeliveryError(f"host key check failed: {e}", retryable=True) from e
            except Exception as e:
                self.outage.failed(str(e) or type(e).__name__)
                raise DeliveryError(
                    f"cannot connect to {self.options.host}:{self.options.port}: {e}",
                    retryable=True,
                ) from e
            self.outage.ok()
            return self._session
        finally:
            self._lock.release()

    async def send(self, delivery: Delivery) -> bytes | None:
        name = self.filename_for(delivery)
        session = await self._connected()
        started = time.monotonic()
        try:
            await session.write_atomically(self.options.remote_dir, name, delivery.payload)
        except Exception as e:
            self._drop(session)
            raise DeliveryError(
                f"upload of {name!r} failed: {e}",
                retryable=True,
                ambiguous=isinstance(e, RenameFailed),
            ) from e
        log.debug(
            "{what}: delivery {delivery_id} uploaded as {file} in {ms:.0f} ms",
            what=self.what,
            delivery_id=delivery.id,
            file=name,
            ms=(time.monotonic() - started) * 1000,
        )
        return None

    def _drop(self, session: SftpSession) -> None:
        if self._session is session:
            self._session = None
        session.close()

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None


@destination("sftp", SFTP_DEST_SPEC)
def make_sftp(
    options: Any, *, reactor: Any, channel: str, name: str, base_dir: pathlib.Path
) -> SftpDestination:
    return SftpDestination(options, reactor=reactor, channel=channel, name=name, base_dir=base_dir)
