"""MLLP listener: framing per MLLP release 2 (0x0B ... 0x1C 0x0D), TLS and mutual TLS.

:class:`MLLPProtocol` only frames and unframes; :class:`MLLPServerFactory` wires a listener to
a handler and holds its limits and counters; :class:`MLLPSource` is the channel component
(lifecycle, endpoints, TLS). Replies go back in the order their frames arrived, even when a
sender pipelines. A frame over ``max_frame`` is answered with an AR and the connection closed,
holding at most ``max_frame + 1`` bytes of it. Frame contents are never logged (PHI): only the
peer, sizes and counts.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto
from twisted.internet import defer, endpoints, protocol, ssl
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin

from engine.codecs.hl7ack import AckError, nak_without_message
from engine.errors import CodecError
from engine.registry import source
from engine.sources import Ingest, IngestOutcome
from engine.spec import ByteSize, Context, Duration, Field, Int, Spec, Str

log = Logger()

SB = b"\x0b"  # start block (MLLP release 2)
EB = b"\x1c\x0d"  # end block: FS + CR
_FS = 0x1C
_CR = 0x0D
PREFIX = 4096  # bytes of an oversize frame kept to build its NAK from the MSH

#: ``handle(frame, peer)`` answers one frame: bytes (sent framed), b"" (send nothing, keep the
#: connection: MSH-15 NE/ER/SU) or None (no answer: close, the sender resends). It may return the
#: value, a Deferred or a coroutine.
Handle = Callable[[bytes, str], Any]


def peer_name(transport: Any) -> str:
    """``host:port`` of the other side (``[v6]:port``; the path of a UNIX socket)."""
    try:
        addr = transport.getPeer()
    except Exception:
        return "?"
    host = getattr(addr, "host", None)
    if host is None:
        return str(getattr(addr, "name", None) or "?")
    port = getattr(addr, "port", "?")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Reply:
    """One frame's place in the reply queue."""

    __slots__ = ("close_after", "done", "reply")

    def __init__(self) -> None:
        self.reply: bytes | None = None
        self.done = False
        self.close_after = False


class MLLPProtocol(protocol.Protocol, TimeoutMixin):
    """Unframes inbound blocks, hands each to the factory, writes replies framed and in order."""

    factory: MLLPServerFactory

    def __init__(self) -> None:
        self.buffer = bytearray()  # the frame being received (its start block already eaten)
        self.in_frame = False
        self.closing = False  # no more input is read as frames; no more replies are written
        self.lost = False
        self.pending: deque[_Reply] = deque()  # in frame order
        self.peer = "?"
        self.on_lost: defer.Deferred = defer.Deferred()
        self.paused = False  # reading paused: max_pipeline frames are waiting for answers
        self.backlog = b""  # the rest of the read that filled the pipeline

    # -- connection ------------------------------------------------------------------------

    def connectionMade(self) -> None:
        f = self.factory
        self.peer = peer_name(self.transport)
        f.connections += 1
        f.protocols.add(self)
        if f.connections > f.max_connections:
            f.stats["refused_connections"] += 1
            log.warn(
                "MLLP connection from {peer} refused: {limit} connections open",
                peer=self.peer,
                limit=f.max_connections,
            )
            self.closing = True
            self.transport.loseConnection()
            return
        self.callLater = f.clock.callLater  # TimeoutMixin schedules on the injected clock
        self.setTimeout(f.idle_timeout)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True
        self.closing = True
        self.setTimeout(None)
        self.factory.connections -= 1
        self.factory.protocols.discard(self)
        self.buffer = bytearray()
        self.pending.clear()
        if not self.on_lost.called:
            self.on_lost.callback(None)

    def timeoutConnection(self) -> None:
        self.factory.stats["idle_timeouts"] += 1
        log.info(
            "MLLP connection from {peer} idle for {seconds}s: closed",
            peer=self.peer,
            seconds=self.factory.idle_timeout,
        )
        self.closing = True
        self.transport.loseConnection()

    # -- inbound ---------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return  # after an oversize frame, a None reply or a refusal: nothing more is read
        self.resetTimeout()
        if self.paused:  # a read already under way when reading was paused
            self.backlog += data
            return
        f = self.factory
        buf = self.buffer
        i, n = 0, len(data)
        while i < n and not self.closing:
            if not self.in_frame:
                start = data.find(SB, i)
                if start < 0:
                    f.stats["junk_bytes"] += n - i
                    return
                f.stats["junk_bytes"] += start - i
                i = start + 1
                self.in_frame = True
                continue
            if buf and buf[-1] == _FS and data[i] == _CR:  # end block split across reads
                del buf[-1]
                i += 1
                self._complete(bytes(buf))
                buf.clear()
                continue
            end = data.find(EB, i)
            stop = n if end < 0 else end
            size = len(buf) + stop - i
            if end < 0 and data[n - 1] == _FS:
                size -= 1  # may be the first byte of an end block
            if size > f.max_frame:
                self._oversize(data[i : i + PREFIX])
                return
            if end < 0:
                buf += data[i:]  # bounded: at most max_frame + 1 bytes
                return
            if buf:
                buf += data[i:end]
                frame = bytes(buf)
                buf.clear()
            else:
                frame = data[i:end]
            i = end + 2
            self._complete(frame)
            if len(self.pending) >= f.max_pipeline and not self.closing:
                # a pipelining sender waits for answers before more frames are read
                self.paused = True
                self.backlog = data[i:]
                self.transport.pauseProducing()
                return

    def _complete(self, frame: bytes) -> None:
        self.in_frame = False
        f = self.factory
        f.stats["frames"] += 1
        slot = _Reply()
        self.pending.append(slot)
        try:
            result = f.handle(frame, self.peer)
            d = defer.ensureDeferred(result) if inspect.isawaitable(result) else result
            if not isinstance(d, defer.Deferred):
                d = defer.succeed(d)
        except Exception as exc:
            d = defer.fail(exc)

        def done(reply: bytes | None) -> None:
            slot.reply, slot.done = reply, True
            self._flush()

        def failed(failure: Any) -> None:
            f.stats["handler_errors"] += 1
            # the type only: an exception's text may carry message content (PHI)
            log.error(
                "MLLP handler failed on a {size}-byte frame from {peer} ({error}): "
                "no answer, connection closed",
                size=len(frame),
                peer=self.peer,
                error=failure.type.__name__,
            )
            done(None)

        d.addCallbacks(done, failed)

    def _oversize(self, head: bytes) -> None:
        f = self.factory
        f.stats["oversize"] += 1
        prefix = bytes(self.buffer[:PREFIX])
        if len(prefix) < PREFIX:
            prefix += head[: PREFIX - len(prefix)]
        self.buffer = bytearray()
        self.in_frame = False
        self.closing = True
        log.warn(
            "MLLP frame from {peer} over {limit} bytes: AR and close",
            peer=self.peer,
            limit=f.max_frame,
        )
        slot = _Reply()
        try:
            slot.reply = f.oversize_reply(prefix)
        except Exception as exc:
            log.error("MLLP oversize reply failed ({error})", error=type(exc).__name__)
            slot.reply = None
        slot.done = slot.close_after = True
        self.pending.append(slot)
        self._flush()

    # -- outbound --------------------------------------------------------------------------

    def _flush(self) -> None:
        if self.lost:
            return
        while self.pending and self.pending[0].done:
            slot = self.pending.popleft()
            if slot.reply is None:  # no answer: close, the sender resends
                self._close()
                return
            if slot.reply:  # b"" = answer nothing, keep the connection (MSH-15 NE/ER/SU)
                self.transport.write(SB + slot.reply + EB)
                if not self.closing:
                    self.resetTimeout()
            if slot.close_after:
                self._close()
                return
        if self.paused and len(self.pending) < self.factory.max_pipeline and not self.closing:
            self.paused = False
            backlog, self.backlog = self.backlog, b""
            self.transport.resumeProducing()
            if backlog:
                self.dataReceived(backlog)

    def _close(self) -> None:
        self.closing = True
        self.pending.clear()  # later answers are dropped; their frames were still ingested
        self.backlog = b""
        self.transport.loseConnection()


class MLLPServerFactory(protocol.Factory):
    """Builds :class:`MLLPProtocol` s sharing one handler, limits and counters."""

    protocol = MLLPProtocol

    def __init__(
        self,
        handle: Handle,
        *,
        oversize_reply: Callable[[bytes], bytes | None],
        max_frame: int = 10 * 1024 * 1024,
        idle_timeout: float = 300.0,
        max_connections: int = 200,
        max_pipeline: int = 100,
        clock: Any = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.handle = handle
        self.oversize_reply = oversize_reply
        self.max_frame = max_frame
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.max_pipeline = max_pipeline  # frames of one connection awaiting answers at most
        self.clock = clock
        self.connections = 0
        self.protocols: set[MLLPProtocol] = set()
        self.stats: dict[str, int] = dict(
            frames=0,
            junk_bytes=0,
            oversize=0,
            idle_timeouts=0,
            refused_connections=0,
            handler_errors=0,
        )


# -- NAKs for oversize frames -----------------------------------------------------------------


def minimal_nak(prefix: bytes, text: str) -> bytes:
    """An AR with ERR 207 and ``text``, from whatever MSH starts ``prefix`` (MSA-2 = MSH-10,
    sender and receiver swapped; empty MSA-2 when no MSH can be read). It needs no parse of
    the message, so it also answers frames the tokenizer cannot read."""
    return nak_without_message(prefix, AckError(text, "207"))


def oversize_nak(prefix: bytes, limit: int) -> bytes:
    """AR (ERR) for a frame over ``limit`` bytes, from the start of the frame (its MSH)."""
    text = f"frame is larger than the {limit}-byte limit; not stored"
    try:
        from engine import responder

        return responder.rejected(prefix, CodecError(text, code="too_large"))
    except Exception:
        return minimal_nak(prefix, text)


# -- the source component ---------------------------------------------------------------------


def _parse_listen(listen: str) -> tuple[str, list[str], dict[str, str]]:
    """``(type, positional args, keyword args)`` of a Twisted endpoint string (``\\:`` escapes)."""
    args, kwargs = endpoints._parse(listen)  # the parser serverFromString uses
    if not args:
        raise ValueError("empty endpoint string")
    return str(args[0]).lower(), [str(a) for a in args[1:]], {k: str(v) for k, v in kwargs.items()}


def _check(config: Any, ctx: Context, node: yaml.Node, path: str) -> None:
    try:
        kind, args, kwargs = _parse_listen(config.listen)
    except Exception:
        ctx.error(
            node, f"{path}.listen", f"expected a Twisted endpoint string (got {config.listen!r})"
        )
        return
    if config.client_ca is not None and kind != "ssl":
        ctx.error(
            node,
            f"{path}.client_ca",
            f"client_ca needs an ssl: listen string (got {config.listen!r})",
        )
    if kind == "ssl":
        if not args and "port" not in kwargs:
            ctx.error(node, f"{path}.listen", f"ssl: needs a port (got {config.listen!r})")
        if "privateKey" not in kwargs:
            ctx.error(
                node,
                f"{path}.listen",
                f"ssl: needs privateKey=<PEM file> (got {config.listen!r})",
            )


MLLP_SPEC = Spec(
    "mllp",
    [
        Field(
            "listen",
            Str(),
            description="Twisted server endpoint: `tcp:2575`, `tcp:2575:interface=127.0.0.1`, "
            "`ssl:2576:privateKey=key.pem:certKey=cert.pem` (PEM paths relative to the project; "
            "`certKey` may hold the chain after the certificate; TLS 1.2 at least).",
        ),
        Field(
            "client_ca",
            Str(),
            None,
            "PEM file of CAs; when set, clients must present a certificate signed by one "
            "(mutual TLS). Needs an ssl: listen string. Relative to the project.",
        ),
        Field("max_frame", ByteSize(), 10 * 1024 * 1024, "Larger frames get AR and a close."),
        Field("idle_timeout", Duration(lo=0.01), 300.0, "Close a connection silent this long."),
        Field("max_connections", Int(1, 100000), 200, "Connections beyond are closed at once."),
    ],
    description=(
        "HL7 v2 over MLLP (release 2 framing: 0x0B, message, 0x1C 0x0D). Each frame is "
        "ingested (stored with one group commit) and answered per the channel's `respond_from` "
        "and the message's MSH-15/16; when nothing could be stored the connection is closed "
        "without an answer and the sender resends. Frames split across reads, several frames "
        "per read and pipelined senders all work (answers go back in order); bytes outside a "
        "frame are dropped and counted. A frame over `max_frame` gets an AR and the connection "
        "is closed. With `client_ca` the listener requires mutual TLS."
    ),
    example=(
        "source:\n"
        "  mllp:\n"
        "    listen: ssl:2576:privateKey=tls/server.key:certKey=tls/server.pem\n"
        "    client_ca: tls/clients-ca.pem\n"
        "    max_frame: 2MiB\n"
        "    idle_timeout: 10m\n"
        "    max_connections: 50"
    ),
    check=_check,
)


def _load_certs(pem: bytes, name: str) -> list[x509.Certificate]:
    """Every certificate of a PEM file, in order (ValueError naming the file if none)."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        certs = []
    if not certs:
        raise ValueError(f"no PEM certificate in {name}")
    return certs


class MLLPSource:
    """The ``mllp`` source: one listening port; each frame goes to ``ingest``."""

    answers = True  # the engine builds HL7 answers for this source (see engine.responder)

    def __init__(
        self,
        options: Any,
        *,
        reactor: Any,
        channel: str,
        base_dir: Path,
        ingest: Ingest,
        oversize_reply: Callable[[bytes], bytes | None] | None = None,
    ) -> None:
        self.options = options
        self.reactor = reactor
        self.channel = channel
        self.base_dir = Path(base_dir)
        self.ingest = ingest
        limit = options.max_frame
        self.factory = MLLPServerFactory(
            self._handle,
            oversize_reply=oversize_reply or (lambda prefix: oversize_nak(prefix, limit)),
            max_frame=options.max_frame,
            idle_timeout=options.idle_timeout,
            max_connections=options.max_connections,
            clock=reactor,
        )
        self.port: Any = None  # IListeningPort once listening
        self.listening: defer.Deferred | None = None  # fires with the port (or None on failure)

    @property
    def stats(self) -> dict[str, int]:
        return self.factory.stats

    def _path(self, name: str) -> Path:
        p = Path(name)
        return p if p.is_absolute() else self.base_dir / p

    def tls_options(self) -> ssl.CertificateOptions:
        """CertificateOptions of an ssl: listen string (mutual TLS when ``client_ca`` is set).

        ``privateKey`` (unencrypted PEM) and ``certKey`` (PEM certificate, optionally followed
        by its chain; default: the ``privateKey`` file), ``extraCertChain`` (more chain);
        TLS 1.2 at least.
        """
        _, _args, kw = _parse_listen(self.options.listen)
        cert_name = kw.get("certKey", kw["privateKey"])
        key = serialization.load_pem_private_key(
            self._path(kw["privateKey"]).read_bytes(), password=None
        )
        certs = _load_certs(self._path(cert_name).read_bytes(), cert_name)
        chain = certs[1:]
        if "extraCertChain" in kw:
            name = kw["extraCertChain"]
            chain += _load_certs(self._path(name).read_bytes(), name)
        kwargs: dict[str, Any] = {}
        if self.options.client_ca is not None:
            name = self.options.client_ca
            cas = _load_certs(self._path(name).read_bytes(), name)
            # (the trust store takes pyOpenSSL X509 objects only)
            x509s = [crypto.X509.from_cryptography(c) for c in cas]
            kwargs = dict(verify=True, caCerts=x509s, requireCertificate=True)
        return ssl.CertificateOptions(
            privateKey=key,
            certificate=certs[0],
            extraCertChain=chain or None,
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
            **kwargs,
        )

    def endpoint(self) -> Any:
        kind, args, kw = _parse_listen(self.options.listen)
        if kind != "ssl":
            return endpoints.serverFromString(self.reactor, self.options.listen)
        port = int(args[0] if args else kw["port"])
        return endpoints.SSL4ServerEndpoint(
            self.reactor,
            port,
            self.tls_options(),
            backlog=int(kw.get("backlog", 50)),
            interface=kw.get("interface", ""),
        )

    def start(self) -> None:
        try:
            self.listening = self.endpoint().listen(self.factory)
        except Exception as exc:  # bad PEM files, bad endpoint string
            self.listening = defer.fail(exc)

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

        self.listening.addCallbacks(listening, failed)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop listening and close open connections (aborted if not closed within grace)."""
        if self.listening is not None:
            await self.listening
        if self.port is not None:
            port, self.port = self.port, None
            await port.stopListening()
        protocols = list(self.factory.protocols)
        for p in protocols:
            p.closing = True
            p.transport.loseConnection()
        if not protocols:
            return

        def abort() -> None:
            for p in protocols:
                if not p.lost:
                    p.transport.abortConnection()

        timer = self.reactor.callLater(grace, abort)
        try:
            await defer.DeferredList([p.on_lost for p in protocols])
        finally:
            if timer.active():
                timer.cancel()

    async def _handle(self, frame: bytes, peer: str) -> bytes | None:
        outcome: IngestOutcome = await self.ingest(frame, peer)
        return outcome.response


@source("mllp", MLLP_SPEC)
def make_mllp(
    options: Any,
    *,
    reactor: Any,
    channel: str,
    base_dir: Path,
    ingest: Ingest,
    oversize_reply: Callable[[bytes], bytes | None] | None = None,
) -> MLLPSource:
    return MLLPSource(
        options,
        reactor=reactor,
        channel=channel,
        base_dir=base_dir,
        ingest=ingest,
        oversize_reply=oversize_reply,
    )
