"""MLLP listener: framing per MLLP release 2 (0x0B ... 0x1C 0x0D), TLS and mutual TLS.

:class:`MLLPProtocol` only frames and unframes; :class:`MLLPServerFactory` wires a listener to
the engine and holds its limits and counters; :class:`MLLPSource` is the channel component
(lifecycle). Replies go back in the order their frames arrived, even when a sender pipelines.
A frame over ``max_frame`` is answered with an AR and the connection closed, holding at most
``max_frame`` bytes. Frame contents are never logged.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from twisted.internet import defer, endpoints, protocol, ssl
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin

from engine.errors import CodecError
from engine.registry import source
from engine.sources import Ingest, IngestOutcome
from engine.spec import ByteSize, Context, Duration, Field, Int, Spec, Str

log = Logger()

SB = b"\x0b"
EB = b"\x1c\x0d"
PREFIX = 4096

Handle = Callable[[bytes, str], defer.Deferred]


class MLLPProtocol(protocol.Protocol, TimeoutMixin):
    """Unframes inbound blocks, hands each to the factory, writes replies framed and in order."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.in_frame = False
        self.oversize = False
        self.pending: deque[list[Any]] = deque()  # [reply or None, done?] in frame order
        self.closing = False
        self.scan = 0

    @property
    def peer(self) -> str:
        addr = self.transport.getPeer()
        return f"{getattr(addr, 'host', '?')}:{getattr(addr, 'port', '?')}"

    def connectionMade(self) -> None:
        f = self.factory
        f.connections += 1
        if f.connections > f.max_connections:
            f.stats["refused_connections"] += 1
            self.closing = True
            self.transport.abortConnection()
            return
        self.callLater = f.clock.callLater  # TimeoutMixin schedules on the injected clock
        self.setTimeout(f.idle_timeout)

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.connections -= 1
        self.setTimeout(None)

    def timeoutConnection(self) -> None:
        self.factory.stats["idle_timeouts"] += 1
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        self.resetTimeout()
        f = self.factory
        buf = self.buffer
        buf += data
        while buf:
            if not self.in_frame:
                start = buf.find(SB)
                if start < 0:
                    f.stats["junk_bytes"] += len(buf)
                    buf.clear()
                    return
                f.stats["junk_bytes"] += start
                del buf[: start + 1]
                self.in_frame = True
                self.scan = 0
            end = buf.find(EB, self.scan)
            if end < 0:
                if len(buf) > f.max_frame:
                    self._oversize()
                    return
                self.scan = max(0, len(buf) - 1)  # an end block may be split across reads
                return
            if end > f.max_frame:
                self._oversize()
                return
            frame = bytes(buf[:end])
            del buf[: end + 2]
            self.in_frame = False
            self._dispatch(frame)

    def _oversize(self) -> None:
        f = self.factory
        f.stats["oversize"] += 1
        prefix = bytes(self.buffer[:PREFIX])
        self.buffer.clear()
        self.closing = True
        log.warn(
            "MLLP frame from {peer} over {limit} bytes: AR and close",
            peer=self.peer,
            limit=f.max_frame,
        )
        slot: list[Any] = [f.oversize_reply(prefix), True]
        self.pending.append(slot)
        self._flush(close_after=True)

    def _dispatch(self, frame: bytes) -> None:
        f = self.factory
        f.stats["frames"] += 1
        slot: list[Any] = [None, False]
        self.pending.append(slot)
        d = defer.maybeDeferred(f.handle, frame, self.peer)

        def done(reply: bytes | None) -> None:
            slot[0], slot[1] = reply, True
            self._flush()

        def failed(failure: Any) -> None:
            log.failure("MLLP handler failed for a frame from {peer}", failure, peer=self.peer)
            done(None)

        d.addCallbacks(done, failed)

    def _flush(self, close_after: bool = False) -> None:
        while self.pending and self.pending[0][1]:
            reply, _ = self.pending.popleft()
            if reply is None:  # no answer: close, the sender resends
                self.closing = True
                self.pending.clear()
                self.transport.loseConnection()
                return
            if reply:  # b"" = answer nothing, keep the connection (MSH-15 NE/ER/SU)
                self.transport.write(SB + reply + EB)
        if close_after:
            self.transport.loseConnection()


class MLLPServerFactory(protocol.Factory):
    protocol = MLLPProtocol

    def __init__(
        self,
        handle: Handle,
        *,
        oversize_reply: Callable[[bytes], bytes],
        max_frame: int = 10 * 1024 * 1024,
        idle_timeout: float = 300.0,
        max_connections: int = 200,
        clock: Any = None,
    ) -> None:
        from twisted.internet import reactor

        self.handle = handle
        self.oversize_reply = oversize_reply
        self.max_frame = max_frame
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.clock = clock or reactor
        self.connections = 0
        self.stats = dict(
            frames=0, junk_bytes=0, oversize=0, idle_timeouts=0, refused_connections=0
        )
        self.protocols: set[MLLPProtocol] = set()

    def buildProtocol(self, addr: Any) -> MLLPProtocol:
        p = super().buildProtocol(addr)
        self.protocols.add(p)
        original = p.connectionLost

        def lost(reason: Any = None) -> None:
            self.protocols.discard(p)
            original(reason)

        p.connectionLost = lost  # type: ignore[method-assign]
        return p


def oversize_nak(prefix: bytes, limit: int) -> bytes:
    """AR with ERR 207 built from the start of an oversize frame (its MSH, when readable)."""
    from engine import responder

    exc = CodecError(f"frame is larger than the {limit}-byte limit", code="too_large")
    return responder.rejected(prefix, exc)


def _check(config: Any, ctx: Context, node: yaml.Node, path: str) -> None:
    if config.client_ca is not None and not config.listen.startswith("ssl:"):
        ctx.error(
            node,
            f"{path}.client_ca",
            f"client_ca needs an ssl: listen string (got {config.listen!r})",
        )


MLLP_SPEC = Spec(
    "mllp",
    [
        Field(
            "listen",
            Str(),
            description="Twisted server endpoint: `tcp:2575`, `tcp:2575:interface=127.0.0.1`, "
            "`ssl:2576:privateKey=key.pem:certKey=cert.pem` (paths relative to the project).",
        ),
        Field(
            "client_ca",
            Str(),
            None,
            "PEM file of CAs; when set, clients must present a certificate signed by one "
            "(mutual TLS). Needs an ssl: listen string.",
        ),
        Field("max_frame", ByteSize(), 10 * 1024 * 1024, "Larger frames get AR and a close."),
        Field("idle_timeout", Duration(lo=0.01), 300.0, "Close a connection silent this long."),
        Field("max_connections", Int(1, 100000), 200, "Connections beyond are closed at once."),
    ],
    description=(
        "HL7 v2 over MLLP (release 2 framing). Each frame is decoded, stored with one group "
        "commit, and answered per the channel's `respond_from` and the message's MSH-15/16. "
        "Frames split across reads, several frames per read and pipelined senders all work; "
        "bytes outside a frame are dropped and counted."
    ),
    example="source:\n  mllp:\n    listen: tcp:2575\n    idle_timeout: 10m",
    check=_check,
)


def _ssl_parts(listen: str, base_dir: Path) -> dict[str, str]:
    parts = listen.split(":")
    out = {"port": parts[1]}
    for p in parts[2:]:
        k, _, v = p.partition("=")
        out[k] = v
    for k in ("privateKey", "certKey"):
        if k in out and not Path(out[k]).is_absolute():
            out[k] = str(base_dir / out[k])
    out.setdefault("certKey", out.get("privateKey", ""))
    return out


class MLLPSource:
    answers = True

    def __init__(
        self, options: Any, *, reactor: Any, channel: str, base_dir: Path, ingest: Ingest
    ) -> None:
        self.options = options
        self.reactor = reactor
        self.channel = channel
        self.base_dir = base_dir
        self.ingest = ingest
        self.factory = MLLPServerFactory(
            self._handle,
            oversize_reply=lambda prefix: oversize_nak(prefix, options.max_frame),
            max_frame=options.max_frame,
            idle_timeout=options.idle_timeout,
            max_connections=options.max_connections,
            clock=reactor,
        )
        self.port: Any = None
        self._listening: defer.Deferred | None = None

    def _endpoint(self) -> Any:
        o = self.options
        if not o.listen.startswith("ssl:"):
            return endpoints.serverFromString(self.reactor, o.listen)
        parts = _ssl_parts(o.listen, self.base_dir)
        key_pem = Path(parts["privateKey"]).read_bytes()
        cert_pem = Path(parts["certKey"]).read_bytes()
        cert = ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
        kwargs: dict[str, Any] = {}
        if o.client_ca is not None:
            ca_path = Path(o.client_ca)
            ca_path = ca_path if ca_path.is_absolute() else self.base_dir / ca_path
            cas = [c.original for c in _load_certs(ca_path.read_bytes())]
            kwargs = dict(verify=True, caCerts=cas, requireCertificate=True)
        options = ssl.CertificateOptions(
            privateKey=cert.privateKey.original, certificate=cert.original, **kwargs
        )
        return endpoints.SSL4ServerEndpoint(
            self.reactor,
            int(parts["port"]),
            options,
            interface=parts.get("interface", ""),
            backlog=int(parts.get("backlog", 50)),
        )

    def start(self) -> None:
        self._listening = self._endpoint().listen(self.factory)

        def listening(port: Any) -> Any:
            self.port = port
            log.info(
                "MLLP {channel} listening on {addr}", channel=self.channel, addr=port.getHost()
            )
            return port

        def failed(f: Any) -> None:
            log.error(
                "MLLP {channel} cannot listen on {listen}: {error}",
                channel=self.channel,
                listen=self.options.listen,
                error=f.getErrorMessage(),
            )

        self._listening.addCallbacks(listening, failed)

    async def stop(self) -> None:
        if self._listening is not None:
            await self._listening
        if self.port is not None:
            await self.port.stopListening()
        for p in list(self.factory.protocols):
            p.transport.loseConnection()

    def _handle(self, frame: bytes, peer: str) -> defer.Deferred:
        d = defer.ensureDeferred(self.ingest(frame, peer))
        return d.addCallback(_reply)


def _reply(outcome: IngestOutcome) -> bytes | None:
    return outcome.response


def _load_certs(pem: bytes) -> list[ssl.Certificate]:
    out = []
    marker = b"-----END CERTIFICATE-----"
    for block in pem.split(marker):
        if b"-----BEGIN CERTIFICATE-----" in block:
            out.append(ssl.Certificate.loadPEM(block + marker))
    return out


@source("mllp", MLLP_SPEC)
def make_mllp(
    options: Any, *, reactor: Any, channel: str, base_dir: Path, ingest: Ingest
) -> MLLPSource:
    return MLLPSource(options, reactor=reactor, channel=channel, base_dir=base_dir, ingest=ingest)
