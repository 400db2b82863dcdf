"""SFTP for trading partners.

* Wharf's own server: :mod:`engine.sftp.server`, :mod:`engine.sftp.service`, the confinement in
  :mod:`engine.sftp.jail` and the YAML spec in :mod:`engine.sftp.config`.
* The client half, below, shared by the ``sftp_poll`` source and the ``sftp`` destination for
  partners who host their own server: :func:`connect` opens an SSH connection on
  twisted.conch, **verifies the host key** against a known_hosts file and/or a pinned
  ``SHA256:`` fingerprint (one of the two is required; an unknown or different key fails the
  connection, nothing is ever trusted on first use), logs in with a private key file and starts
  the ``sftp`` subsystem. :class:`SftpSession` offers list / read / atomic write / remove /
  rename as coroutines.
"""

from __future__ import annotations

import secrets
import stat
from dataclasses import dataclass
from typing import Any

from twisted.conch.client.knownhosts import KnownHostsFile
from twisted.conch.error import ConchError, HostKeyChanged
from twisted.conch.ssh import channel, common, connection, filetransfer, keys, transport, userauth
from twisted.internet import defer, protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.python.filepath import FilePath

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
