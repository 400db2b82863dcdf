"""``SftpServerService``: Wharf's SFTP server for trading partners, started and stopped with the
engine. ``audit(actor, action, target, detail)`` receives every login, upload, download, delete
and refusal (the engine wires it to ``store.audit`` through its executor)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from twisted.conch.ssh import keys
from twisted.internet import defer, task
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from engine.coordination import Alone, Coordination
from engine.errors import ConfigError
from engine.net.admission import networks
from engine.net.files import private_dirs
from engine.sftp.server import PART_SUFFIX, Partner, ServerContext, WharfSSHFactory
from engine.uploads import OpenUploads

log = Logger(namespace="wharf.sftp")

AREAS = ("inbound", "outbound", "archive", "error")


def ensure_host_key(path: Path, kind: str = "ed25519") -> keys.Key:
    """Load the host key at ``path``; create it first (mode 0600, ``.pub`` beside) if missing."""
    if not path.exists():
        private_dirs(path.parent)
        if kind == "rsa":
            private: Any = rsa.generate_private_key(public_exponent=65537, key_size=3072)
        else:
            private = ed25519.Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        # Written whole under a private name, then linked: nodes sharing the folder and
        # starting together make one key between them (the link of the others fails).
        part = path.with_name(f".{path.name}.{os.getpid()}.part")
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(part, path)
        except FileExistsError:
            pass  # another node made it first: every node serves that one
        else:
            pub = private.public_key().public_bytes(
                serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
            )
            Path(f"{path}.pub").write_bytes(pub + b" wharf-sftp-host\n")
            log.info("created SFTP host key {path}", path=str(path))
        finally:
            part.unlink()
    return keys.Key.fromFile(str(path))


def _load_keys(entries: Any, base: Path, partner: str) -> list[keys.Key]:
    out: list[keys.Key] = []
    for entry in entries:
        text = entry.strip()
        lines: list[str]
        if text.split(" ", 1)[0].startswith(("ssh-", "ecdsa-", "sk-")):
            lines = [text]
        else:
            path = Path(text) if Path(text).is_absolute() else base / text
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except OSError as e:
                raise ConfigError(
                    f"partner '{partner}': cannot read authorized_keys file {str(path)!r}: "
                    f"{e.strerror}"
                ) from e
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                out.append(keys.Key.fromString(line.encode()))
            except Exception as e:
                raise ConfigError(
                    f"partner '{partner}': not an OpenSSH public key line ({line[:30]!r}...)"
                ) from e
    return out


class SftpServerService:
    """The SFTP server: ``start()`` (returns a Deferred fired once listening), ``await stop()``."""

    def __init__(
        self,
        config: Any,
        *,
        root: Path,
        reactor: Any,
        audit: Callable[[str, str, str, dict], Any],
        uploads: OpenUploads | None = None,
        coordination: Coordination | None = None,
    ) -> None:
        self.config = config
        self.uploads = uploads if uploads is not None else OpenUploads()
        self.coordination: Coordination = coordination if coordination is not None else Alone()
        self.root = Path(root).resolve()
        self.reactor = reactor
        self.audit = audit
        self.listening: Any = None
        self.factory: WharfSSHFactory | None = None
        self.host_key: keys.Key | None = None

    @property
    def port(self) -> int:
        if self.listening is None:
            raise RuntimeError("the SFTP server is not listening")
        return self.listening.getHost().port

    def _path(self, text: str) -> Path:
        p = Path(text)
        return p if p.is_absolute() else self.root / p

    def partners(self, writing: frozenset[str] = frozenset()) -> dict[str, Partner]:
        """The accounts, their folders made; part files left by a crash are removed, except
        those in ``writing`` (uploads another node sharing the folders is writing now)."""
        out: dict[str, Partner] = {}
        for p in self.config.partners:
            root = self._path(p.root)
            private_dirs(root)
            root = root.resolve()
            for area in AREAS:
                private_dirs(root / area)
                self._sweep_parts(root / area, writing)
            out[p.name] = Partner(
                name=p.name,
                root=root,
                keys=_load_keys(p.authorized_keys, self.root, p.name),
                password_bcrypt=p.password_bcrypt.encode() if p.password_bcrypt else None,
                max_file_size=p.max_file_size,
                quota_bytes=p.quota_bytes,
                quota_files=p.quota_files,
                allow=networks(p.allow),
            )
        return out

    @staticmethod
    def _sweep_parts(folder: Path, writing: frozenset[str] = frozenset()) -> None:
        """Remove temporary upload files left by a crash (they were never complete), but not
        those another node is writing (``writing``: their paths)."""
        for entry in folder.iterdir():
            if str(entry) in writing:
                continue
            if entry.name.startswith(".") and entry.name.endswith(PART_SUFFIX):
                try:
                    entry.unlink()
                    log.warn("removed an incomplete upload {path}", path=str(entry))
                except OSError:
                    pass

    def start(self) -> defer.Deferred:
        """Listen (after asking the upload registry which part files other nodes are
        writing: the start-up sweep leaves them)."""
        d = self.coordination.open_parts()
        return d.addCallback(lambda writing: self._start(frozenset(writing)))

    def _start(self, writing: frozenset[str]) -> defer.Deferred:
        self.host_key = ensure_host_key(self._path(self.config.host_key), self.config.host_key_type)
        ctx = ServerContext(
            self.partners(writing),
            self.config,
            self.audit,
            self.reactor,
            self.uploads,
            self.coordination,
        )
        self.factory = WharfSSHFactory(ctx, self.host_key, self.config)
        endpoint = serverFromString(self.reactor, self.config.listen)
        d = endpoint.listen(self.factory)

        def listening(port: Any) -> Any:
            self.listening = port
            log.info(
                "SFTP server listening on {address} for {n} partner(s)",
                address=str(port.getHost()),
                n=len(ctx.partners),
            )
            return port

        return d.addCallback(listening)

    async def stop(self) -> None:
        if self.factory is not None:
            self.factory.ctx.close()
        if self.listening is not None:
            port, self.listening = self.listening, None
            await defer.maybeDeferred(port.stopListening)
        if self.factory is not None:
            for t in list(self.factory.connections):
                if t.transport is not None:
                    t.transport.abortConnection()
            deadline = self.reactor.seconds() + 5.0
            while self.factory.connections and self.reactor.seconds() < deadline:
                await task.deferLater(self.reactor, 0.01, lambda: None)
            self.factory.connections.clear()
