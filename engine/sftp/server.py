"""Wharf's SFTP server on twisted.conch: realm, checkers, login limits, the jailed ISFTPServer.

Every partner-supplied path goes through :func:`engine.sftp.jail.split` once; every file system
call is then made relative to a directory descriptor opened component by component with
``O_NOFOLLOW`` (:func:`engine.sftp.jail.open_dir`), files are opened with ``O_NOFOLLOW`` and must
be regular files with a single link. Symlink and hard-link creation, ``mkdir``/``rmdir`` and the
OpenSSH extensions are refused.

Areas of a partner root:

=============  ======================================================================
``inbound/``   upload a new name, list, read, rename inside inbound/, delete own hidden files
``outbound/``  list, download, delete (the partner collected the file; audited)
``archive/``   list, download (files Wharf picked up)
``error/``     list, download (files Wharf refused, with their ``.reason.txt``)
=============  ======================================================================

An upload is written to a hidden temporary name (``.<name>.<random>.wharf-part``, never taken by
a drop folder) that is registered in :mod:`engine.uploads` together with the final name, and
linked to the final name when the client closes the handle: a partial file never appears
under its final name, not even after a crash. A name already waiting in inbound/ is neither
overwritten nor deletable (the drop folder may be between reading it and moving it to archive/,
and would otherwise archive the replacement unread); resuming an upload is therefore not
supported, the partner re-sends the whole file. A handle closed because the connection was lost
(not by the client) is an aborted upload: its temporary file is removed and audited.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.conch import avatar, error
from twisted.conch.checkers import SSHPublicKeyChecker
from twisted.conch.interfaces import IConchUser, ISFTPFile, ISFTPServer
from twisted.conch.ls import lsLine
from twisted.conch.ssh import connection, factory, filetransfer, keys, session, transport, userauth
from twisted.conch.ssh.filetransfer import (
    FX_FAILURE,
    FX_FILE_ALREADY_EXISTS,
    FX_NO_SUCH_FILE,
    FX_OP_UNSUPPORTED,
    FX_PERMISSION_DENIED,
    FXF_APPEND,
    FXF_CREAT,
    FXF_TRUNC,
    FXF_WRITE,
    SFTPError,
)
from twisted.cred import credentials, portal
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python import components
from zope.interface import implementer

from engine.coordination import Alone, Coordination
from engine.net.admission import peer_key
from engine.sftp import jail
from engine.uploads import OpenUploads

log = Logger(namespace="wharf.sftp.server")

AREAS_READ = ("inbound", "outbound", "archive", "error")
AREAS_WRITE = ("inbound",)
AREAS_DELETE = ("inbound", "outbound")
PART_SUFFIX = ".wharf-part"
#: Largest SFTP packet accepted (a 256 KiB write plus headers); a bigger length is a DoS attempt.
MAX_SFTP_PACKET = 256 * 1024 + 1024

Audit = Callable[[str, str, str, dict], Any]


def safe(text: str | bytes, limit: int = 300) -> str:
    """A printable, bounded rendering of a peer-supplied name for logs and the audit log."""
    if isinstance(text, bytes | bytearray):
        text = bytes(text).decode("utf-8", errors="backslashreplace")
    out = text.encode("unicode_escape").decode("ascii")
    return out if len(out) <= limit else out[: limit - 3] + "..."


def sha256_fd(fd: int) -> tuple[int, str]:
    """(size, sha256 hex) of the whole file behind ``fd``, read with pread."""
    digest = hashlib.sha256()
    offset = 0
    while True:
        chunk = os.pread(fd, 1024 * 1024, offset)
        if not chunk:
            break
        digest.update(chunk)
        offset += len(chunk)
    return offset, digest.hexdigest()


def attrs_of(st: os.stat_result) -> dict[str, Any]:
    return {
        "size": st.st_size,
        "uid": st.st_uid,
        "gid": st.st_gid,
        "permissions": st.st_mode,
        "atime": int(st.st_atime),
        "mtime": int(st.st_mtime),
    }


@dataclass
class Partner:
    """One account: its real root and limits."""

    name: str
    root: Path
    keys: list[keys.Key]
    password_bcrypt: bytes | None
    max_file_size: int
    quota_bytes: int
    quota_files: int
    open_uploads: set[UploadFile] = field(default_factory=set)
    allow: tuple[Any, ...] = ()  # ip_network objects; empty: any address


class ServerContext:
    """What every connection shares: partners, the audit function, login throttling, the clock.

    Failed logins are counted per (account, source address) (:func:`peer_key`: an IPv4
    address or an IPv6 /64), for account names that exist and for those that do not alike, so
    that neither the answers nor their timing tell which accounts exist. Each failure makes the
    next refused password from that pair wait longer (``login_delay``, doubling, at most
    ``MAX_DELAY`` times it);
    ``max_failed_logins`` failures within ``lockout`` lock that pair (not the account: the
    partner's own address still logs in) for ``lockout``, twice as long for each lockout of the
    same pair in the last day (at most a day). Lockouts and unlocks are logged (account name,
    address, duration; nothing else) and audited.
    """

    MAX_DELAY = 16  # times login_delay
    MAX_TRACKED = 10000  # (account, address) pairs remembered at most

    def __init__(
        self,
        partners: dict[str, Partner],
        config: Any,
        audit: Audit,
        clock: Any,
        uploads: OpenUploads | None = None,
        coordination: Coordination | None = None,
    ):
        self.partners = partners
        self.uploads = uploads if uploads is not None else OpenUploads()
        #: The upload registry other nodes on the same store see (alone: nothing registered).
        self.coordination: Coordination = coordination if coordination is not None else Alone()
        self.config = config
        self._audit = audit
        self.clock = clock
        self.failures: dict[tuple[str, str], list[float]] = {}
        self.locked_until: dict[tuple[str, str], float] = {}
        self.lockouts: dict[tuple[str, str], list[float]] = {}
        self._unlocks: dict[tuple[str, str], Any] = {}
        self._dummy_hash: bytes | None = None

    def audit(self, partner: str, action: str, target: str, detail: dict[str, Any]) -> None:
        detail = {"partner": partner, **detail}
        try:
            result = self._audit(f"sftp:{partner}", action, target, detail)
        except Exception:
            log.failure("sftp audit failed ({action} {target})", action=action, target=target)
            return
        if isinstance(result, defer.Deferred):
            result.addErrback(
                lambda f: log.failure("sftp audit failed ({action})", f, action=action)
            )

    def close(self) -> None:
        """Cancel the pending unlock timers (the server stops)."""
        for call in self._unlocks.values():
            if call.active():
                call.cancel()
        self._unlocks.clear()

    # -- failed logins ----------------------------------------------------------------------
    def is_locked(self, user: str, address: str = "") -> bool:
        """Whether logins as ``user`` from ``address`` are locked now."""
        return self._locked((user, peer_key(address)))

    def _locked(self, pair: tuple[str, str]) -> bool:
        until = self.locked_until.get(pair)
        return until is not None and self.clock.seconds() < until

    def failed(self, user: str, address: str = "") -> bool:
        """Record one failed login of ``user`` from ``address``; True when that pair just got
        locked."""
        lockout = self.config.lockout
        if not lockout:
            return False
        pair = (user, peer_key(address))
        now = self.clock.seconds()
        recent = [t for t in self.failures.get(pair, []) if now - t < lockout] + [now]
        self.failures[pair] = recent
        self._forget_oldest()
        if len(recent) < self.config.max_failed_logins or self._locked(pair):
            return False
        earlier = [t for t in self.lockouts.get(pair, []) if now - t < 86400.0]
        seconds = min(lockout * 2 ** len(earlier), 86400.0)
        self.lockouts[pair] = [*earlier, now]
        self.locked_until[pair] = now + seconds
        self.failures.pop(pair, None)
        who = user if user in self.partners else f"unknown account {safe(user, 80)!r}"
        log.warn(
            "SFTP logins as {who} from {address} locked for {seconds:.0f}s after {n} failed logins",
            who=who,
            address=pair[1],
            seconds=seconds,
            n=len(recent),
        )
        self.audit(
            user if user in self.partners else "?",
            "sftp.locked",
            "/",
            {
                "user": safe(user, 80),
                "address": pair[1],
                "seconds": seconds,
                "failures": len(recent),
            },
        )
        old = self._unlocks.pop(pair, None)
        if old is not None and old.active():
            old.cancel()
        self._unlocks[pair] = self.clock.callLater(seconds, self._unlocked, pair)
        return True

    def succeeded(self, user: str, address: str) -> None:
        """A login: the pair's failures are forgotten."""
        self.failures.pop((user, peer_key(address)), None)

    def delay(self, user: str, address: str) -> float:
        """Seconds a refused password of this pair waits: ``login_delay`` for the first
        failure, doubling with each one before it."""
        n = len(self.failures.get((user, peer_key(address)), []))
        return self.config.login_delay * min(2 ** max(n, 0), self.MAX_DELAY)

    def _unlocked(self, pair: tuple[str, str]) -> None:
        self._unlocks.pop(pair, None)
        if self.locked_until.pop(pair, None) is None:
            return
        user, address = pair
        who = user if user in self.partners else f"unknown account {safe(user, 80)!r}"
        log.info("SFTP logins as {who} from {address} unlocked", who=who, address=address)
        self.audit(
            user if user in self.partners else "?",
            "sftp.unlocked",
            "/",
            {"user": safe(user, 80), "address": address},
        )

    def _forget_oldest(self) -> None:
        if len(self.failures) <= self.MAX_TRACKED:
            return
        by_age = sorted(self.failures, key=lambda k: self.failures[k][-1])
        for pair in by_age[: len(by_age) - self.MAX_TRACKED // 2]:
            self.failures.pop(pair, None)

    def allowed_from(self, partner: Partner, address: str) -> bool:
        """Whether the partner may log in from ``address`` (its ``allow`` networks; any when
        it has none)."""
        return not partner.allow or _in_networks(address, partner.allow)

    def dummy_hash(self) -> bytes:
        """A bcrypt hash of a random password, at the cost of the partners' own hashes, to
        check a password against when the account has none (same time either way)."""
        import bcrypt

        if self._dummy_hash is None:
            costs = [_bcrypt_cost(p.password_bcrypt) for p in self.partners.values()]
            cost = max([c for c in costs if c] or [12])
            self._dummy_hash = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(cost))
        return self._dummy_hash


def _bcrypt_cost(hashed: bytes | None) -> int | None:
    try:
        return int(hashed.split(b"$")[2]) if hashed else None
    except (IndexError, ValueError):
        return None


def _in_networks(address: str, networks: tuple[Any, ...]) -> bool:
    try:
        addr = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == net.version and addr in net for net in networks)


# ------------------------------------------------------------------------------ credentials


@implementer(ICredentialsChecker)
class BcryptChecker:
    """Password login checked against the partner's bcrypt hash (in a thread: bcrypt is slow)."""

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def requestAvatarId(self, creds: Any) -> defer.Deferred:
        import bcrypt

        name = creds.username.decode("utf-8", errors="replace")
        partner = self.ctx.partners.get(name)
        hashed = partner.password_bcrypt if partner else None
        password = creds.password

        def check() -> bool:
            # an account that does not exist (or has no password) costs the same bcrypt check
            # as one that does: the refusal's timing must not tell them apart
            ok = bcrypt.checkpw(password, hashed or self.ctx.dummy_hash())
            return ok and hashed is not None

        d = threads.deferToThread(check)

        def done(ok: bool) -> bytes:
            if not ok:
                raise UnauthorizedLogin("bad user name or password")
            return creds.username

        return d.addCallback(done)


class PartnerKeys:
    """IAuthorizedKeysDB over the configured partners."""

    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def getAuthorizedKeys(self, username: bytes) -> list[keys.Key]:
        partner = self.ctx.partners.get(username.decode("utf-8", errors="replace"))
        return list(partner.keys) if partner else []


class SftpOnlySession(session.SSHSession):
    """A session channel that answers only the ``subsystem`` request (shell, exec, pty, env,
    forwarding of agents or X11 are refused without touching the avatar)."""

    def requestReceived(self, requestType: bytes, data: bytes) -> Any:
        if requestType != b"subsystem":
            return 0
        return super().requestReceived(requestType, data)


class PartnerAvatar(avatar.ConchUser):
    """A logged-in partner: only the ``session`` channel and only the ``sftp`` subsystem."""

    def __init__(self, partner: Partner, ctx: ServerContext) -> None:
        super().__init__()
        self.partner = partner
        self.ctx = ctx
        self.peer = "?"
        self.channelLookup[b"session"] = SftpOnlySession
        self.subsystemLookup[b"sftp"] = WharfFileTransferServer


@implementer(portal.IRealm)
class PartnerRealm:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def requestAvatar(self, avatarId: bytes, mind: Any, *interfaces: Any) -> Any:
        if IConchUser not in interfaces:
            raise NotImplementedError("only IConchUser")
        name = avatarId.decode("utf-8")
        user = PartnerAvatar(self.ctx.partners[name], self.ctx)

        def logout() -> None:
            self.ctx.audit(name, "sftp.logout", "/", {"peer": user.peer})

        return IConchUser, user, logout


class LockoutUserAuth(userauth.SSHUserAuthServer):
    """Userauth with the configured limits: failures per connection and per account (lockout),
    every failure and success audited with the peer address."""

    def serviceStarted(self) -> None:
        ctx: ServerContext = self.transport.factory.ctx
        self.loginTimeout = ctx.config.login_timeout
        self.attemptsBeforeDisconnect = max(ctx.config.max_failed_logins - 1, 0)
        super().serviceStarted()

    def _peer(self) -> str:
        try:
            peer = self.transport.transport.getPeer()
            return f"{peer.host}:{peer.port}"
        except Exception:
            return "?"

    def _host(self) -> str:
        try:
            return str(self.transport.transport.getPeer().host)
        except Exception:
            return ""

    def tryAuth(self, kind: bytes, user: bytes, data: bytes) -> defer.Deferred:
        ctx: ServerContext = self.transport.factory.ctx
        name = user.decode("utf-8", errors="replace")
        if kind != b"none" and ctx.is_locked(name, self._host()):
            return defer.fail(UnauthorizedLogin("locked after too many failed logins"))
        d = super().tryAuth(kind, user, data)
        partner = ctx.partners.get(name)
        if d is None or partner is None or not partner.allow:
            return d

        def only_from_allowed(result: Any) -> Any:
            if ctx.allowed_from(partner, self._host()):
                return result
            raise UnauthorizedLogin("this account may not log in from this address")

        return d.addCallback(only_from_allowed)

    def _ebPassword(self, f: Any) -> defer.Deferred:
        """A refused password waits longer for each failure of its (account, address) pair."""
        ctx: ServerContext = self.transport.factory.ctx
        name = (self.user or b"").decode("utf-8", errors="replace")
        d: defer.Deferred = defer.Deferred()
        self.clock.callLater(ctx.delay(name, self._host()), d.callback, f)
        return d

    def _cbFinishedAuth(self, result: Any) -> None:
        _, user, _ = result
        user.peer = self._peer()
        self.transport.factory.ctx.succeeded(user.partner.name, self._host())
        self.transport.factory.ctx.audit(
            user.partner.name,
            "sftp.login",
            "/",
            {"peer": user.peer, "method": self.method.decode("ascii", "replace")},
        )
        return super()._cbFinishedAuth(result)

    def _ebBadAuth(self, reason: Any) -> None:
        if not reason.check(error.IgnoreAuthentication) and self.method != b"none":
            ctx: ServerContext = self.transport.factory.ctx
            name = (self.user or b"").decode("utf-8", errors="replace")
            known = name in ctx.partners
            host = self._host()
            locked_now = ctx.failed(name, host)
            ctx.audit(
                name if known else "?",
                "sftp.login_failed",
                "/",
                {
                    "peer": self._peer(),
                    "user": safe(name, 80),
                    "method": safe(self.method or b"", 40),
                    "reason": safe(reason.getErrorMessage(), 120),
                    "locked": locked_now or ctx.is_locked(name, host),
                },
            )
        return super()._ebBadAuth(reason)


class LimitedServerTransport(transport.SSHServerTransport, TimeoutMixin):
    """Server transport with an idle timeout (reset by every byte) and a login deadline counted
    from the TCP connect (so a client stalling in the key exchange is cut off as well)."""

    _login_call: Any = None

    def connectionMade(self) -> None:
        f = self.factory
        if len(f.connections) >= f.ctx.config.max_sessions:
            self.transport.loseConnection()
            return
        f.connections.add(self)
        self.setTimeout(f.ctx.config.idle_timeout)
        self._login_call = f.ctx.clock.callLater(f.ctx.config.login_timeout, self._login_expired)
        super().connectionMade()

    def _login_expired(self) -> None:
        self._login_call = None
        if getattr(self, "avatar", None) is None:
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        super().dataReceived(data)

    def timeoutConnection(self) -> None:
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.setTimeout(None)
        if self._login_call is not None and self._login_call.active():
            self._login_call.cancel()
        self._login_call = None
        try:
            super().connectionLost(reason)
        finally:
            self.factory.connections.discard(self)


class WharfSSHFactory(factory.SSHFactory):
    protocol = LimitedServerTransport
    services = {b"ssh-userauth": LockoutUserAuth, b"ssh-connection": connection.SSHConnection}

    def __init__(self, ctx: ServerContext, host_key: keys.Key, config: Any) -> None:
        self.ctx = ctx
        self.connections: set[LimitedServerTransport] = set()
        self.privateKeys = {host_key.sshType(): host_key}
        self.publicKeys = {host_key.sshType(): host_key.public()}
        self.primes = None
        checkers: list[Any] = [SSHPublicKeyChecker(PartnerKeys(ctx))]
        if any(p.password_bcrypt for p in ctx.partners.values()):
            checkers.append(BcryptChecker(ctx))
        self.portal = portal.Portal(PartnerRealm(ctx), checkers)
        self.ciphers = [c.encode() for c in config.ciphers]
        self.macs = [m.encode() for m in config.macs]
        self.kex = [k.encode() for k in config.kex]

    def getPrimes(self) -> None:
        return None

    def buildProtocol(self, addr: Any) -> Any:
        t = super().buildProtocol(addr)
        t.supportedCiphers = list(self.ciphers)
        t.supportedMACs = list(self.macs)
        t.supportedKeyExchanges = [k for k in t.supportedKeyExchanges if k in self.kex]
        t.supportedCompressions = [b"none"]
        return t


# ------------------------------------------------------------------------------ SFTP subsystem


class WharfFileTransferServer(filetransfer.FileTransferServer):
    """conch's SFTP server protocol with a packet size cap and abort detection: handles still
    open when the channel goes away were not closed by the client."""

    def dataReceived(self, data: bytes) -> None:
        if len(self.buf) + len(data) >= 4:
            head = (self.buf + data[:4])[:4]
            if int.from_bytes(head, "big") > MAX_SFTP_PACKET:
                self.transport.loseConnection()
                return
        super().dataReceived(data)

    def connectionLost(self, reason: Any) -> None:
        for handle in self.openFiles.values():
            if isinstance(handle, UploadFile):
                handle.aborted = True
        super().connectionLost(reason)


@implementer(ISFTPServer)
class PartnerSFTP:
    """The ISFTPServer of one logged-in partner, confined to the partner's root."""

    def __init__(self, user: PartnerAvatar) -> None:
        self.avatar = user
        self.partner = user.partner
        self.ctx = user.ctx

    # -- helpers -----------------------------------------------------------------------------
    def audit(self, action: str, target: str, detail: dict[str, Any]) -> None:
        self.ctx.audit(self.partner.name, action, target, {"peer": self.avatar.peer, **detail})

    def refuse(self, op: str, path: Any, reason: str, code: int = FX_PERMISSION_DENIED) -> None:
        self.audit("sftp.refused", safe(path), {"op": op, "reason": reason})
        raise SFTPError(code, reason)

    def parts(self, op: str, path: bytes) -> tuple[str, ...]:
        try:
            return jail.split(path)
        except jail.JailError as e:
            self.refuse(op, path, e.reason)
            raise AssertionError("unreachable") from None

    def file_parts(self, op: str, path: bytes, areas: tuple[str, ...]) -> tuple[str, str]:
        parts = self.parts(op, path)
        if len(parts) != 2 or parts[0] not in areas:
            self.refuse(op, path, f"not allowed here (allowed: {', '.join(areas)}/<file>)")
        if parts[1].endswith(PART_SUFFIX):
            self.refuse(op, path, "reserved name")
        if parts[1].startswith(".") and parts[0] != "inbound":
            # temporary files of Wharf's writers (the file destination writes `.name.*.tmp`
            # into outbound/ and renames it): never visible before they are complete
            raise SFTPError(FX_NO_SUCH_FILE, "no such file")
        return parts[0], parts[1]

    def dir_fd(self, op: str, path: Any, parts: tuple[str, ...] | list[str]) -> int:
        try:
            return jail.open_dir(self.partner.root, parts)
        except jail.JailError as e:
            self.refuse(op, path, e.reason)
        except FileNotFoundError:
            raise SFTPError(FX_NO_SUCH_FILE, "no such directory") from None
        raise AssertionError("unreachable")

    # -- ISFTPServer -------------------------------------------------------------------------
    def gotVersion(self, otherVersion: int, extData: dict) -> dict:
        return {}

    def openFile(self, filename: bytes, flags: int, attrs: dict) -> Any:
        writing = flags & (FXF_WRITE | FXF_APPEND | FXF_CREAT | FXF_TRUNC)
        if writing:
            upload = self._open_upload(filename, flags)
            return upload if not self.ctx.coordination.shared else upload.registered()
        area, name = self.file_parts("open", filename, AREAS_READ)
        dfd = self.dir_fd("open", filename, [area])
        try:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    self.refuse("open", filename, "symbolic links are not followed")
                if e.errno == errno.ENOENT:
                    raise SFTPError(FX_NO_SUCH_FILE, "no such file") from None
                raise
        finally:
            os.close(dfd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            why = "not a regular file" if not stat.S_ISREG(st.st_mode) else "hard-linked file"
            self.refuse("open", filename, why)
        return DownloadFile(self, jail.virtual([area, name]), fd)

    def _open_upload(self, filename: bytes, flags: int) -> UploadFile:
        area, name = self.file_parts("upload", filename, AREAS_WRITE)
        target = jail.virtual([area, name])
        dfd = self.dir_fd("upload", filename, [area])
        ok = False
        tmp = f".{name[:200]}.{secrets.token_hex(6)}{PART_SUFFIX}"
        try:
            existing = None
            try:
                existing = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                pass
            if existing is not None:
                # Never replace a file waiting for pickup: the drop folder may be between
                # reading it and moving it, and would then archive the new file unread.
                self.refuse(
                    "upload",
                    filename,
                    "a file of this name is waiting for pickup",
                    FX_FILE_ALREADY_EXISTS,
                )
            count, used = self._inbound_usage(dfd, exclude=name)
            if count + 1 > self.partner.quota_files:
                self.refuse(
                    "upload",
                    filename,
                    f"file quota reached ({self.partner.quota_files})",
                    FX_FAILURE,
                )
            fd = os.open(
                tmp,
                os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o640,
                dir_fd=dfd,
            )
            handle = UploadFile(self, target, name, tmp, dfd, fd, used)
            ok = True
            return handle
        finally:
            if not ok:
                try:
                    os.unlink(tmp, dir_fd=dfd)
                except OSError:
                    pass
                os.close(dfd)

    def _inbound_usage(self, dfd: int, exclude: str) -> tuple[int, int]:
        count = used = 0
        with os.scandir(dfd) as it:
            for entry in it:
                if entry.name == exclude or entry.name.endswith(PART_SUFFIX):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # taken by the drop folder meanwhile
                if stat.S_ISREG(st.st_mode):
                    count += 1
                    used += st.st_size
        others = [u for u in self.partner.open_uploads]
        return count + len(others), used + sum(u.size for u in others)

    def removeFile(self, filename: bytes) -> None:
        area, name = self.file_parts("delete", filename, AREAS_DELETE)
        if area == "inbound" and not name.startswith("."):
            # a visible inbound file belongs to the pickup now (it may be half-way through it)
            self.refuse("delete", filename, "a file waiting for pickup cannot be deleted")
        dfd = self.dir_fd("delete", filename, [area])
        try:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    self.refuse("delete", filename, "symbolic links are not followed")
                if e.errno == errno.ENOENT:
                    raise SFTPError(FX_NO_SUCH_FILE, "no such file") from None
                raise
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    self.refuse("delete", filename, "not a regular file")
                size, digest = sha256_fd(fd)
            finally:
                os.close(fd)
            os.unlink(name, dir_fd=dfd)
        finally:
            os.close(dfd)
        self.audit("sftp.delete", jail.virtual([area, name]), {"size": size, "sha256": digest})

    def renameFile(self, oldpath: bytes, newpath: bytes) -> None:
        old_area, old = self.file_parts("rename", oldpath, AREAS_WRITE)
        new_area, new = self.file_parts("rename", newpath, AREAS_WRITE)
        if old_area != new_area:
            self.refuse("rename", newpath, "rename only inside one folder")
        dfd = self.dir_fd("rename", oldpath, [old_area])
        try:
            try:
                st = os.stat(old, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                raise SFTPError(FX_NO_SUCH_FILE, "no such file") from None
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                self.refuse("rename", oldpath, "not a plain regular file")
            try:
                os.stat(new, dir_fd=dfd, follow_symlinks=False)
                raise SFTPError(FX_FILE_ALREADY_EXISTS, "target exists")
            except FileNotFoundError:
                pass
            os.rename(old, new, src_dir_fd=dfd, dst_dir_fd=dfd)
        finally:
            os.close(dfd)
        self.audit(
            "sftp.rename",
            jail.virtual([new_area, new]),
            {"from": jail.virtual([old_area, old]), "size": st.st_size},
        )

    def makeDirectory(self, path: bytes, attrs: dict) -> None:
        self.refuse("mkdir", path, "directories cannot be created")

    def removeDirectory(self, path: bytes) -> None:
        self.refuse("rmdir", path, "directories cannot be removed")

    def openDirectory(self, path: bytes) -> DirectoryListing:
        parts = self.parts("list", path)
        if len(parts) > 1 or (parts and parts[0] not in AREAS_READ):
            raise SFTPError(FX_NO_SUCH_FILE, "no such directory")
        dfd = self.dir_fd("list", path, parts)
        try:
            rows = []
            with os.scandir(dfd) as it:
                for entry in it:
                    if entry.name.endswith(PART_SUFFIX):
                        continue
                    if entry.name.startswith(".") and parts != ("inbound",):
                        continue  # a writer's temporary file: not there until renamed
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # moved away meanwhile (pickup, archive)
                    if not parts:
                        if entry.name not in AREAS_READ or not stat.S_ISDIR(st.st_mode):
                            continue
                    elif not stat.S_ISREG(st.st_mode):
                        continue
                    rows.append((entry.name, st))
        finally:
            os.close(dfd)
        rows.sort()
        return DirectoryListing(
            [
                (n.encode("utf-8", "surrogateescape"), lsLine(n, st).encode(), attrs_of(st))
                for n, st in rows
            ]
        )

    def getAttrs(self, path: bytes, followLinks: bool) -> dict[str, Any]:
        parts = self.parts("stat", path)
        if not parts:
            return attrs_of(os.stat(self.partner.root))
        if (
            parts[0] not in AREAS_READ
            or len(parts) > 2
            or (len(parts) == 2 and parts[0] != "inbound" and parts[1].startswith("."))
        ):
            raise SFTPError(FX_NO_SUCH_FILE, "no such file")
        dfd = self.dir_fd("stat", path, parts[:-1])
        try:
            try:
                st = os.stat(parts[-1], dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                raise SFTPError(FX_NO_SUCH_FILE, "no such file") from None
        finally:
            os.close(dfd)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise SFTPError(FX_NO_SUCH_FILE, "no such file")
        return attrs_of(st)

    def setAttrs(self, path: bytes, attrs: dict) -> None:
        self.getAttrs(path, False)  # must exist inside the jail; attributes are not changed

    def readLink(self, path: bytes) -> None:
        self.refuse("readlink", path, "symbolic links are not supported", FX_OP_UNSUPPORTED)

    def makeLink(self, linkPath: bytes, targetPath: bytes) -> None:
        self.refuse("symlink", linkPath, "symbolic links cannot be created")

    def realPath(self, path: bytes) -> bytes:
        return jail.virtual(self.parts("realpath", path)).encode("utf-8")

    def extendedRequest(self, extendedName: bytes, extendedData: bytes) -> None:
        self.refuse("extended", extendedName, "extension not supported", FX_OP_UNSUPPORTED)


components.registerAdapter(PartnerSFTP, PartnerAvatar, ISFTPServer)


class DirectoryListing:
    def __init__(self, rows: list[tuple[bytes, bytes, dict]]) -> None:
        self.rows = rows

    def __iter__(self) -> Iterator[tuple[bytes, bytes, dict]]:
        return iter(self.rows)

    def close(self) -> None:
        self.rows = []


@implementer(ISFTPFile)
class DownloadFile:
    """A file opened for reading; the download is audited on close with size and SHA-256."""

    def __init__(self, server: PartnerSFTP, target: str, fd: int) -> None:
        self.server = server
        self.target = target
        self.fd = fd
        self.sent = 0

    def readChunk(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, min(length, 256 * 1024), offset)
        if not data:
            raise EOFError()
        self.sent += len(data)
        return data

    def writeChunk(self, offset: int, data: bytes) -> None:
        raise SFTPError(FX_PERMISSION_DENIED, "opened for reading only")

    def getAttrs(self) -> dict[str, Any]:
        return attrs_of(os.fstat(self.fd))

    def setAttrs(self, attrs: dict) -> None:
        return None

    def close(self) -> None:
        if self.fd < 0:
            return
        try:
            size, digest = sha256_fd(self.fd)
        finally:
            os.close(self.fd)
            self.fd = -1
        self.server.audit(
            "sftp.download", self.target, {"size": size, "sha256": digest, "sent": self.sent}
        )


@implementer(ISFTPFile)
class UploadFile:
    """A file being uploaded: written under a hidden temporary name, renamed on a clean close."""

    def __init__(
        self, server: PartnerSFTP, target: str, name: str, tmp: str, dfd: int, fd: int, used: int
    ) -> None:
        self.server = server
        self.partner = server.partner
        self.target = target
        self.name = name
        self.tmp = tmp
        self.dfd = dfd
        self.fd = fd
        self.used_by_others = used
        self.size = 0
        self.failed: str | None = None
        self.aborted = False
        folder = self.partner.root / target.strip("/").rsplit("/", 1)[0]
        self.final_path = folder / name
        self.tmp_path = folder / tmp
        self.uploads = server.ctx.uploads
        self.uploads.opened(self.final_path)
        self.uploads.opened(self.tmp_path)
        self.partner.open_uploads.add(self)
        self.opened_at = time.monotonic()

    def writeChunk(self, offset: int, data: bytes) -> None:
        if self.failed:
            raise SFTPError(FX_FAILURE, self.failed)
        end = offset + len(data)
        limit = self.partner.max_file_size
        if end > limit:
            self._fail(f"file larger than the maximum of {limit} bytes")
        others = sum(u.size for u in self.partner.open_uploads if u is not self)
        if self.used_by_others + others + max(end, self.size) > self.partner.quota_bytes:
            self._fail(f"quota of {self.partner.quota_bytes} bytes reached")
        os.pwrite(self.fd, data, offset)
        self.size = max(self.size, end)

    def registered(self) -> defer.Deferred:
        """Fires with this handle once the shared upload registry lists it as open (other
        nodes then leave its part file alone); the upload is refused when the store cannot
        record it."""
        d = self.server.ctx.coordination.upload_opened(str(self.final_path), self.tmp)

        def refused(failure: Any) -> None:
            log.failure(
                "SFTP upload registry: cannot register {target}", failure, target=self.target
            )
            self.failed = "the upload registry is unavailable; try again later"
            self.close()
            raise SFTPError(FX_FAILURE, self.failed)

        return d.addCallbacks(lambda _: self, refused)

    def _fail(self, reason: str) -> None:
        self.failed = reason
        self.server.audit("sftp.refused", self.target, {"op": "write", "reason": reason})
        raise SFTPError(FX_FAILURE, reason)

    def readChunk(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, min(length, 256 * 1024), offset)
        if not data:
            raise EOFError()
        return data

    def getAttrs(self) -> dict[str, Any]:
        return attrs_of(os.fstat(self.fd))

    def setAttrs(self, attrs: dict) -> None:
        return None

    def close(self) -> Any:
        """Link the upload under its name (or drop it when aborted); with nodes sharing the
        folders, returns a Deferred fired once the upload registry knows the outcome."""
        if self.fd < 0:
            return None
        self._outcome: tuple[int, str] | None = None
        try:
            self._close()
        except BaseException:
            self._record(None)
            raise
        return self._record(self._outcome)

    def _record(self, outcome: tuple[int, str] | None) -> Any:
        if not self.server.ctx.coordination.shared:
            return None
        size, digest = outcome if outcome is not None else (None, None)
        d = self.server.ctx.coordination.upload_closed(str(self.final_path), size, digest)
        d.addErrback(
            lambda f: log.failure(
                "SFTP upload registry: cannot record {target}", f, target=self.target
            )
        )
        return d if outcome is not None else None

    def _close(self) -> None:
        try:
            if self.aborted or self.failed:
                os.close(self.fd)
                self.fd = -1
                os.unlink(self.tmp, dir_fd=self.dfd)
                self.server.audit(
                    "sftp.upload_aborted",
                    self.target,
                    {
                        "size": self.size,
                        "reason": self.failed or "connection lost before the file was closed",
                    },
                )
                return
            os.fsync(self.fd)
            size, digest = sha256_fd(self.fd)
            os.close(self.fd)
            self.fd = -1
            try:  # link + unlink: appears atomically, never replaces a file waiting for pickup
                os.link(
                    self.tmp,
                    self.name,
                    src_dir_fd=self.dfd,
                    dst_dir_fd=self.dfd,
                    follow_symlinks=False,
                )
            except FileExistsError:
                os.unlink(self.tmp, dir_fd=self.dfd)
                reason = "a file of this name appeared meanwhile and is waiting for pickup"
                self.server.audit(
                    "sftp.upload_aborted", self.target, {"size": size, "reason": reason}
                )
                raise SFTPError(FX_FILE_ALREADY_EXISTS, reason) from None
            os.unlink(self.tmp, dir_fd=self.dfd)
            os.fsync(self.dfd)
            self.server.audit("sftp.upload", self.target, {"size": size, "sha256": digest})
            self._outcome = (size, digest)
        finally:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
            os.close(self.dfd)
            self.partner.open_uploads.discard(self)
            self.uploads.closed(self.tmp_path)
            self.uploads.closed(self.final_path)
