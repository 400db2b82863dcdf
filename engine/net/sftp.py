"""The SFTP client for partners who host their own server, and what is built on it.

* :func:`connect` opens an SSH connection on twisted.conch, **verifies the host key** against a
  known_hosts file and/or a pinned ``SHA256:`` fingerprint (one of the two is required; an
  unknown or different key fails the connection, nothing is ever trusted on first use), logs
  in with a private key file and starts the ``sftp`` subsystem. :class:`SftpSession` offers
  list / read / atomic write / remove / rename as coroutines.
* :func:`connection_fields` (the spec fields of such a server), :func:`remote_of` (options to a
  :class:`Remote`), :class:`Outage` (backoff and one alert per outage): shared by the
  ``sftp_poll`` source and the uploads.
* :data:`SFTP_UPLOAD_SPEC` (connection fields + ``filename``) and :class:`SftpUploader`: one
  upload target (a reused, lock-protected connection; atomic upload under a hidden name, then
  rename), used by the ``sftp`` and ``x12_partner`` destinations.
"""

from __future__ import annotations

import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.conch.client.knownhosts import KnownHostsFile
from twisted.conch.error import ConchError, HostKeyChanged
from twisted.conch.ssh import channel, common, connection, filetransfer, keys, transport, userauth
from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.logger import Logger
from twisted.python.filepath import FilePath

from engine.errors import DeliveryError
from engine.model import Delivery
from engine.net.files import extension_for
from engine.spec import Context, Duration, Field, Int, Spec, Str, join
from engine.templating import check_template, render_template, template_values

log = Logger(namespace="wharf.net.sftp")

CHUNK = 32 * 1024
PIPELINE = 16


class HostKeyError(ConchError):
    """The server's host key is unknown or differs from the pinned one."""


class RenameFailed(ConchError):
    """The upload was complete but the final rename failed or its answer was lost: the file may
    or may not be in place under its final name."""


@dataclass(frozen=True)
class Remote:
    """Where and how to connect."""

    host: str
    port: int
    user: str
    private_key: str
    known_hosts: str | None = None
    host_key_fingerprint: str | None = None
    connect_timeout: float = 15.0


def fingerprint(key: keys.Key) -> str:
    """``SHA256:<base64>`` as OpenSSH prints it (``ssh-keygen -lf``)."""
    raw = key.fingerprint(keys.FingerprintFormats.SHA256_BASE64)
    return "SHA256:" + raw.removeprefix("SHA256:").rstrip("=")


def known_hosts_name(host: str, port: int) -> bytes:
    """The host's name in a known_hosts file (``[host]:port`` when the port is not 22)."""
    return (host if port == 22 else f"[{host}]:{port}").encode()


class _ClientTransport(transport.SSHClientTransport):
    def __init__(self, remote: Remote, ready: defer.Deferred) -> None:
        self.remote = remote
        self.ready = ready

    def verifyHostKey(self, hostKey: bytes, fp: bytes) -> defer.Deferred:
        d = self._verify(hostKey)
        d.addErrback(self._fail_ready)
        return d

    def _fail_ready(self, reason: Any) -> Any:
        if not self.ready.called:
            self.ready.errback(reason)
        return reason

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        self.disconnect_reason = description.decode("utf-8", errors="replace")
        super().receiveError(reasonCode, description)

    def sendDisconnect(self, reason: int, desc: bytes) -> None:
        if not getattr(self, "disconnect_reason", None):
            self.disconnect_reason = desc.decode("utf-8", errors="replace")
        super().sendDisconnect(reason, desc)

    def _verify(self, hostKey: bytes) -> defer.Deferred:
        r = self.remote
        try:
            key = keys.Key.fromString(hostKey)
        except keys.BadKeyError:
            return defer.fail(HostKeyError("the server sent an unreadable host key"))
        if not r.known_hosts and not r.host_key_fingerprint:
            return defer.fail(HostKeyError("no known_hosts and no host_key_fingerprint given"))
        got = fingerprint(key)
        if r.host_key_fingerprint:
            want = r.host_key_fingerprint.strip()
            if not want.startswith("SHA256:"):
                want = "SHA256:" + want
            if want.rstrip("=") != got.rstrip("="):
                return defer.fail(
                    HostKeyError(
                        f"host key of {r.host}:{r.port} is {got}, expected the pinned {want}"
                    )
                )
        if r.known_hosts:
            try:
                kh = KnownHostsFile.fromPath(FilePath(r.known_hosts))
                ok = kh.hasHostKey(known_hosts_name(r.host, r.port), key)
            except HostKeyChanged:
                return defer.fail(
                    HostKeyError(
                        f"host key of {r.host}:{r.port} ({got}) differs from {r.known_hosts}"
                    )
                )
            except OSError as e:
                return defer.fail(HostKeyError(f"cannot read {r.known_hosts}: {e}"))
            if not ok:
                return defer.fail(
                    HostKeyError(f"host {r.host}:{r.port} ({got}) is not in {r.known_hosts}")
                )
        return defer.succeed(True)

    def connectionSecure(self) -> None:
        self.requestService(_UserAuth(self.remote, _Connection(self.ready)))

    lost = False

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True
        super().connectionLost(reason)
        if not self.ready.called:
            why = getattr(self, "disconnect_reason", None) or (
                reason.getErrorMessage() if reason is not None else "connection lost"
            )
            self.ready.errback(
                ConchError(
                    f"{self.remote.user}@{self.remote.host}:{self.remote.port}: connection "
                    f"closed before the sftp session was ready ({why})"
                )
            )


class _UserAuth(userauth.SSHUserAuthClient):
    def __init__(self, remote: Remote, conn: connection.SSHConnection) -> None:
        super().__init__(remote.user.encode(), conn)
        self.key = keys.Key.fromFile(remote.private_key)
        self._offered = False

    def getPublicKey(self) -> Any:
        if self._offered:
            return None
        self._offered = True
        return self.key.public()

    def getPrivateKey(self) -> defer.Deferred:
        return defer.succeed(self.key)

    def getPassword(self, prompt: Any = None) -> None:
        return None

    def getGenericAnswers(self, name: Any, instruction: Any, questions: Any) -> defer.Deferred:
        return defer.fail(ConchError("keyboard-interactive is not supported"))


class _Connection(connection.SSHConnection):
    def __init__(self, ready: defer.Deferred) -> None:
        super().__init__()
        self.ready = ready

    def serviceStarted(self) -> None:
        self.openChannel(_SftpChannel(conn=self))


class _SftpClient(filetransfer.FileTransferClient):
    def __init__(self, ready: defer.Deferred) -> None:
        super().__init__()
        self.ready = ready
        self.server_extensions: dict[bytes, bytes] = {}

    def gotServerVersion(self, serverVersion: int, extData: dict) -> None:
        self.server_extensions = dict(extData)
        if not self.ready.called:
            self.ready.callback(self)


class _SftpChannel(channel.SSHChannel):
    name = b"session"

    def channelOpen(self, specificData: bytes) -> None:
        d = self.conn.sendRequest(self, b"subsystem", common.NS(b"sftp"), wantReply=True)
        d.addCallbacks(self._subsystem, self._failed)

    def _subsystem(self, _: Any) -> None:
        self.client = _SftpClient(self.conn.ready)
        self.client.makeConnection(self)
        self.dataReceived = self.client.dataReceived

    def _failed(self, reason: Any) -> None:
        if not self.conn.ready.called:
            self.conn.ready.errback(ConchError("the server refused the sftp subsystem"))
        self.conn.transport.loseConnection()

    def openFailed(self, reason: Any) -> None:
        self._failed(reason)

    def closed(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.connectionLost(protocol.connectionDone)
        self.conn.transport.loseConnection()


class SftpSession:
    """One logged-in SFTP connection."""

    def __init__(self, client: _SftpClient) -> None:
        self.client = client

    @property
    def transport(self) -> Any:
        return self.client.transport.conn.transport

    @property
    def alive(self) -> bool:
        """False once the SSH connection or the sftp channel is gone."""
        return bool(self.client.connected) and not self.transport.lost

    async def listdir(self, path: str) -> list[tuple[str, dict[str, Any]]]:
        """(name, attrs) of the regular files in ``path`` (no directories, no links)."""
        d = await self.client.openDirectory(path.encode())
        out: list[tuple[str, dict[str, Any]]] = []
        try:
            while True:
                try:
                    names = await d.read()
                except EOFError:
                    break
                for name, _long, attrs in names:
                    mode = attrs.get("permissions")
                    if mode is not None and not stat.S_ISREG(mode):
                        continue
                    out.append((name.decode("utf-8", errors="surrogateescape"), attrs))
        finally:
            await d.close()
        return out

    async def stat(self, path: str) -> dict[str, Any]:
        return await self.client.getAttrs(path.encode())

    async def read(self, path: str, max_size: int) -> bytes:
        f = await self.client.openFile(path.encode(), filetransfer.FXF_READ, {})
        try:
            size = (await f.getAttrs()).get("size", 0)
            if size > max_size:
                raise ValueError(f"{path} is {size} bytes; the limit is {max_size}")
            parts: list[bytes] = []
            offset = 0
            eof = False
            while not eof:
                ds = [f.readChunk(offset + i * CHUNK, CHUNK) for i in range(PIPELINE)]
                results = await defer.DeferredList(ds, consumeErrors=True)
                for ok, value in results:
                    if not ok:
                        value.trap(EOFError)
                        eof = True
                        continue
                    if eof:
                        raise ConchError(f"{path}: read gap (the file changed while reading)")
                    parts.append(value)
                    offset += len(value)
                    if len(value) < CHUNK:
                        eof = True
                if offset > max_size:
                    raise ValueError(f"{path} grew past the limit of {max_size} bytes")
            return b"".join(parts)
        finally:
            await f.close()

    async def write_atomically(self, directory: str, name: str, data: bytes) -> None:
        """Upload under a hidden temporary name, then rename over ``name``."""
        directory = directory.rstrip("/") or "/"
        tmp = f"{directory}/.{name}.{secrets.token_hex(6)}.part"
        final = f"{directory}/{name}"
        flags = (
            filetransfer.FXF_WRITE
            | filetransfer.FXF_CREAT
            | filetransfer.FXF_TRUNC
            | filetransfer.FXF_EXCL
        )
        f = await self.client.openFile(tmp.encode(), flags, {})
        try:
            try:
                for start in range(0, len(data), CHUNK * PIPELINE):
                    ds = [
                        f.writeChunk(off, data[off : off + CHUNK])
                        for off in range(start, min(len(data), start + CHUNK * PIPELINE), CHUNK)
                    ]
                    try:
                        await defer.gatherResults(ds, consumeErrors=True)
                    except defer.FirstError as e:
                        e.subFailure.raiseException()
            finally:
                await f.close()
            try:
                await self.rename_over(tmp, final)
            except Exception as e:
                raise RenameFailed(f"rename of {tmp} to {final} failed: {e}") from e
        except BaseException:
            try:
                await self.client.removeFile(tmp.encode())
            except Exception:
                pass
            raise

    async def rename_over(self, old: str, new: str) -> None:
        """Rename, replacing ``new``: ``posix-rename@openssh.com`` when offered, else rename
        (and, if the target exists, remove it and rename again)."""
        if b"posix-rename@openssh.com" in self.client.server_extensions:
            await self.client.extendedRequest(
                b"posix-rename@openssh.com", common.NS(old.encode()) + common.NS(new.encode())
            )
            return
        try:
            await self.client.renameFile(old.encode(), new.encode())
        except filetransfer.SFTPError:
            await self.client.removeFile(new.encode())
            await self.client.renameFile(old.encode(), new.encode())

    async def remove(self, path: str) -> None:
        await self.client.removeFile(path.encode())

    async def mkdir(self, path: str) -> None:
        await self.client.makeDirectory(path.encode(), {})

    def close(self) -> None:
        try:
            self.transport.loseConnection()
        except Exception:
            pass


async def connect(reactor: Any, remote: Remote) -> SftpSession:
    """Connect, verify the host key, log in and start the sftp subsystem."""
    ready: defer.Deferred = defer.Deferred()
    endpoint = TCP4ClientEndpoint(reactor, remote.host, remote.port, timeout=remote.connect_timeout)
    proto = await connectProtocol(endpoint, _ClientTransport(remote, ready))
    timer = reactor.callLater(remote.connect_timeout, proto.transport.loseConnection)
    try:
        client = await ready
    except BaseException:
        proto.transport.loseConnection()
        raise
    finally:
        if timer.active():
            timer.cancel()
    return SftpSession(client)


# -- connection settings, outages ------------------------------------------------------------


def connection_fields() -> list[Field]:
    """Fields shared by ``sftp_poll`` and the ``sftp`` destination."""
    return [
        Field("host", Str(), description="The partner's SFTP server.", example="sftp.acme.com"),
        Field("port", Int(1, 65535), 22, "TCP port."),
        Field("user", Str(), description="Login name."),
        Field(
            "private_key",
            Str(),
            description="Private key file (OpenSSH or PEM, unencrypted); relative to the "
            "project root.",
        ),
        Field(
            "known_hosts",
            Str(),
            None,
            "OpenSSH known_hosts file holding the server's key (`[host]:port` for a port other "
            "than 22).",
        ),
        Field(
            "host_key_fingerprint",
            Str(),
            None,
            "Pinned host key fingerprint as `ssh-keygen -lf` prints it (`SHA256:...`).",
        ),
        Field("remote_dir", Str(), description="Remote folder.", example="/outbound"),
        Field("connect_timeout", Duration(lo=0.1), 15.0, "Connect and login deadline."),
        Field(
            "alert_after",
            Duration(),
            900.0,
            "Log an error once when the server stays unreachable for this long.",
        ),
    ]


def remote_of(options: Any, base_dir: Path) -> Remote:
    """The :class:`Remote` of spec options with :func:`connection_fields` (key and known_hosts
    paths relative to ``base_dir``)."""

    def path(p: str | None) -> str | None:
        if p is None:
            return None
        q = Path(p)
        return str(q if q.is_absolute() else base_dir / q)

    return Remote(
        host=options.host,
        port=options.port,
        user=options.user,
        private_key=path(options.private_key) or "",
        known_hosts=path(options.known_hosts),
        host_key_fingerprint=options.host_key_fingerprint,
        connect_timeout=options.connect_timeout,
    )


class Outage:
    """Tracks one partner's unreachability: backoff delays and the single alert per outage."""

    def __init__(self, what: str, alert_after: float, initial: float, maximum: float) -> None:
        self.what = what
        self.alert_after = alert_after
        self.initial = initial
        self.maximum = maximum
        self.since: float | None = None
        self.failures = 0
        self.alerted = False

    def failed(self, reason: str, now: float | None = None) -> float:
        """Record a failure; the delay before the next attempt."""
        now = time.time() if now is None else now
        if self.since is None:
            self.since = now
            log.warn("{what}: unreachable ({reason})", what=self.what, reason=reason)
        self.failures += 1
        down = now - self.since
        if not self.alerted and down >= self.alert_after:
            self.alerted = True
            log.error(
                "{what}: partner server down for {duration:.0f}s ({reason})",
                what=self.what,
                duration=down,
                reason=reason,
            )
        return min(self.initial * 2 ** (self.failures - 1), self.maximum)

    def ok(self, now: float | None = None) -> None:
        """Record a success: the outage (if any) is over."""
        if self.since is not None:
            now = time.time() if now is None else now
            log.info(
                "{what}: reachable again after {duration:.0f}s",
                what=self.what,
                duration=now - self.since,
            )
        self.since = None
        self.failures = 0
        self.alerted = False


# -- uploads ---------------------------------------------------------------------------------


def _check_upload(config: Any, ctx: Context, node: Any, path: str) -> None:
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


#: An upload target: the connection fields and the remote ``filename`` template.
SFTP_UPLOAD_SPEC = Spec(
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
    check=_check_upload,
)


class SftpUploader:
    """One upload target on a partner's SFTP server: one connection, kept and reused (re-opened
    when lost; opened under a lock so concurrent sends share it), each delivery written under a
    hidden temporary name and renamed over its final name (``options.filename`` rendered).

    Failures are :class:`DeliveryError`: a bad host key is retryable and logged as an error;
    connect failures are retryable; a failure once the rename was requested is ambiguous; a
    file name that renders a path is permanent.
    """

    def __init__(self, options: Any, *, reactor: Any, base_dir: Path, label: str) -> None:
        self.options = options
        self.reactor = reactor
        self.remote = remote_of(options, Path(base_dir))
        self.what = f"{label} ({options.user}@{options.host}:{options.port}{options.remote_dir})"
        self.outage = Outage(self.what, options.alert_after, 1.0, 60.0)
        self._session: SftpSession | None = None
        self._lock = defer.DeferredLock()

    def filename_for(self, delivery: Delivery) -> str:
        """The remote file name of ``delivery``: a plain visible name, else a permanent
        DeliveryError."""
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
        """Upload ``delivery.payload`` atomically into ``remote_dir``; no response."""
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
        """Close the connection (a later send opens a new one)."""
        if self._session is not None:
            self._session.close()
            self._session = None
