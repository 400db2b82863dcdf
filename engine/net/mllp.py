"""MLLP framing per MLLP release 2 (``0x0B`` message ``0x1C 0x0D``), server side and client side.

Server side: :class:`MLLPProtocol` only frames and unframes; :class:`MLLPServerFactory` wires a
listener to a handler and holds its limits and counters. Replies go back in the order their
frames arrived, even when a sender pipelines. Who may hold connections (an allowlist, a cap per
peer, fair shares of ``max_connections``) is :class:`engine.net.admission.Admission`'s call.

Time limits: a frame must end within ``frame_timeout`` of its first byte, plus one second for
every ``min_rate`` bytes it brought (so a large frame sent at least that fast is never cut, and
a frame trickled a byte at a time is cut at ``frame_timeout``); it is then closed without an
answer (nothing was stored: the sender resends). Between frames, ``idle_timeout`` of silence
closes the connection; only a whole frame counts as traffic (bytes outside a frame and a
frame still arriving do not reset it). A frame over ``max_frame`` is answered with
``oversize_reply(prefix)`` (the caller's: the ``mllp`` source and the sandbox pass
:func:`engine.responder.oversize_nak`) and the connection closed, holding at most
``max_frame + 1`` bytes of it; :func:`minimal_nak` builds an AR without parsing the message.

Client side: :class:`MLLPClientProtocol` writes one block per send and hands back the next
block the peer sends (its ACK), in order.

Frame contents are never logged (PHI): only the peer, sizes and counts.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Callable
from typing import Any

from OpenSSL import SSL
from twisted.internet import defer, protocol
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from engine.codecs.hl7ack import AckError, nak_without_message
from engine.net.admission import BUSY, IDLE, RECEIVING, Admission, networks, peer_host
from engine.net.endpoints import peer_name
from engine.net.tls import client_common_name

log = Logger()

#: MLLP Release 2 block: start block, end block (FS CR).
SB = b"\x0b"
FS = b"\x1c"
EB = b"\x1c\x0d"
_FS = 0x1C
_CR = 0x0D
PREFIX = 4096  # bytes of an oversize frame kept to build its NAK from the MSH

#: ``handle(frame, peer)`` answers one frame: bytes (sent framed), b"" (send nothing, keep the
#: connection: MSH-15 NE/ER/SU) or None (no answer: close, the sender resends). It may return the
#: value, a Deferred or a coroutine.
Handle = Callable[[bytes, str], Any]


# -- server side ------------------------------------------------------------------------------


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
        self.origin: str | None = None  # "tls:<client certificate CN>" ("" when none)
        self.on_lost: defer.Deferred = defer.Deferred()
        self.paused = False  # reading paused: max_pipeline frames are waiting for answers
        self.backlog = b""  # the rest of the read that filled the pipeline
        self.host: str | None = None
        self.admitted = False
        self.frame_started = 0.0  # clock time of the current frame's first byte
        self.frame_bytes = 0  # bytes of the current frame so far
        self._frame_timer: Any = None

    # -- connection ------------------------------------------------------------------------

    def connectionMade(self) -> None:
        f = self.factory
        self.peer = peer_name(self.transport)
        self.host = peer_host(self.transport)
        f.connections += 1
        f.protocols.add(self)
        refused = f.admission.admit(self, self.host, self.peer)
        if refused is not None:
            f.stats["refused_connections"] += 1
            self.closing = True
            self.transport.loseConnection()
            return
        self.admitted = True
        self.callLater = f.clock.callLater  # TimeoutMixin schedules on the injected clock
        self.setTimeout(f.idle_timeout)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True
        self.closing = True
        self.setTimeout(None)
        self._stop_frame_timer()
        self.factory.connections -= 1
        self.factory.protocols.discard(self)
        if self.admitted:
            self.admitted = False
            self.factory.admission.release(self, self.host)
        self.buffer = bytearray()
        self.pending.clear()
        if not self.on_lost.called:
            self.on_lost.callback(None)

    # -- admission (engine.net.admission) ----------------------------------------------------

    def admission_state(self) -> int:
        """BUSY while a frame waits for its answer; RECEIVING inside a frame; else IDLE."""
        if self.pending:
            return BUSY
        return RECEIVING if self.in_frame else IDLE

    def evict(self, reason: str) -> None:
        """Closed to make room for another peer (no frame of ours is waiting for an answer)."""
        self.factory.stats["evicted"] += 1
        self.admitted = False  # the admission already let go of it
        self.closing = True
        self._stop_frame_timer()
        self.transport.abortConnection()

    # -- time limits -------------------------------------------------------------------------

    def _frame_begins(self) -> None:
        f = self.factory
        self.in_frame = True
        self.frame_started = f.clock.seconds()
        self.frame_bytes = 0
        self.setTimeout(None)  # the frame's own deadline governs until it ends
        if f.frame_timeout is not None and self._frame_timer is None:
            self._frame_timer = f.clock.callLater(f.frame_timeout, self._frame_deadline)

    def _frame_ends(self) -> None:
        self._stop_frame_timer()
        if not self.closing:
            self.setTimeout(self.factory.idle_timeout)

    def _stop_frame_timer(self) -> None:
        timer, self._frame_timer = self._frame_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _frame_deadline(self) -> None:
        """The frame's deadline: ``frame_timeout`` from its first byte, one second more per
        ``min_rate`` bytes received."""
        self._frame_timer = None
        if self.closing or not self.in_frame:
            return
        f = self.factory
        allowed = f.frame_timeout + (self.frame_bytes / f.min_rate if f.min_rate else 0.0)
        now = f.clock.seconds()
        left = self.frame_started + allowed - now
        if left > 0:
            self._frame_timer = f.clock.callLater(left, self._frame_deadline)
            return
        f.stats["frame_timeouts"] += 1
        log.info(
            "MLLP frame from {peer} not complete {seconds:.0f}s after its first byte "
            "({size} bytes): closed without an answer",
            peer=self.peer,
            seconds=now - self.frame_started,
            size=self.frame_bytes,
        )
        self.buffer = bytearray()
        self.in_frame = False
        self._close()

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
        if self.paused:  # a read already under way when reading was paused
            self.backlog += data
            return
        f = self.factory
        buf = self.buffer
        i, n = 0, len(data)
        if self.in_frame:
            self.frame_bytes += n
        while i < n and not self.closing:
            if not self.in_frame:
                start = data.find(SB, i)
                if start < 0:
                    f.stats["junk_bytes"] += n - i
                    return
                f.stats["junk_bytes"] += start - i
                i = start + 1
                self._frame_begins()
                self.frame_bytes = n - i
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
        self._frame_ends()
        f = self.factory
        f.stats["frames"] += 1
        slot = _Reply()
        self.pending.append(slot)
        try:
            if f.identify:
                # the handshake is done by the first frame: the client certificate is known
                if self.origin is None:
                    name = client_common_name(self.transport)
                    self.origin = f"tls:{name}" if name else ""
                result = f.handle(frame, self.peer, origin=self.origin or None)
            else:
                result = f.handle(frame, self.peer)
            if isinstance(result, defer.Deferred):
                d = result
            elif inspect.isawaitable(result):
                d = defer.ensureDeferred(result)
            else:
                d = defer.succeed(result)
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
        self._stop_frame_timer()
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
        self._stop_frame_timer()
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
        max_connections_per_peer: int | None = None,
        allow: tuple[str, ...] = (),
        frame_timeout: float | None = 30.0,
        min_rate: float = 1024.0,
        identify: bool = False,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.handle = handle
        # hand the handler the client certificate's name too: handle(frame, peer, origin=...)
        self.identify = identify
        self.oversize_reply = oversize_reply
        self.max_frame = max_frame
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.max_pipeline = max_pipeline  # frames of one connection awaiting answers at most
        self.frame_timeout = frame_timeout  # None: no deadline per frame
        self.min_rate = min_rate  # bytes per second that earn a frame one more second
        self.clock = clock
        self.admission = Admission(
            max_connections=max_connections,
            max_per_peer=min(max_connections_per_peer or max_connections, max_connections),
            allow=networks(allow),
            clock=clock,
            label="MLLP",
        )
        self.connections = 0
        self.protocols: set[MLLPProtocol] = set()
        self.stats: dict[str, int] = dict(
            frames=0,
            junk_bytes=0,
            oversize=0,
            idle_timeouts=0,
            frame_timeouts=0,
            refused_connections=0,
            evicted=0,
            handler_errors=0,
        )


def minimal_nak(prefix: bytes, text: str) -> bytes:
    """An AR with ERR 207 and ``text``, from whatever MSH starts ``prefix`` (MSA-2 = MSH-10,
    sender and receiver swapped; empty MSA-2 when no MSH can be read). It needs no parse of
    the message, so it also answers frames the tokenizer cannot read."""
    return nak_without_message(prefix, AckError(text, "207"))


# -- client side ------------------------------------------------------------------------------


class MLLPConnectionLost(Exception):
    """The connection closed while an ACK was outstanding.

    ``reason``: the Failure given to ``connectionLost``; ``received``: bytes that arrived for
    the outstanding ACK (0 means the peer said nothing at all)."""

    def __init__(self, reason: Failure | None, received: int) -> None:
        super().__init__(_reason_text(reason))
        self.reason = reason
        self.received = received


class MLLPProtocolError(Exception):
    """The peer broke the framing contract (oversized ACK, unsolicited block); the connection
    has been dropped."""


class MLLPNotConnected(Exception):
    """The connection (or its TLS handshake) failed before anything was sent."""

    def __init__(self, reason: Failure | None, tls: bool) -> None:
        super().__init__(_reason_text(reason))
        self.reason = reason
        self.tls = tls


def _reason_text(reason: Failure | None) -> str:
    if reason is None:
        return "connection closed"
    value = reason.value
    text = str(value).strip()
    if isinstance(value, SSL.Error) and value.args and isinstance(value.args[0], list):
        text = "; ".join(str(part[-1]) for part in value.args[0] if part) or text
    return f"{type(value).__name__}: {text}" if text else type(value).__name__


@implementer(IHandshakeListener)
class MLLPClientProtocol(Protocol):
    """The client side of an MLLP connection: frames what is sent, unframes what comes back.

    :meth:`send` writes one block and returns a Deferred that fires with the payload of the
    next block the peer sends (its ACK), in order, one Deferred per outstanding ACK. Bytes
    outside a block (junk before the start block, between blocks) are ignored; a block may
    arrive in any number of reads. A block larger than ``max_ack`` or a block nobody waits
    for drops the connection.

    ``ready`` fires with the protocol once it can send: at ``connectionMade`` for plain TCP,
    at ``handshakeCompleted`` when ``tls`` is true; it fails with :class:`MLLPNotConnected`
    when the connection closes first (so nothing was sent).
    """

    def __init__(self, max_ack: int = 1024 * 1024, *, tls: bool = False) -> None:
        self.max_ack = max_ack
        self.tls = tls
        self.ready: Deferred[MLLPClientProtocol] = Deferred(self._cancel_ready)
        self.lost = False
        self.lost_reason: Failure | None = None
        self.written = 0  # blocks written
        self.received = 0  # bytes received since the oldest outstanding send
        self._buf = bytearray()
        self._in_block = False
        self._scan = 0
        self._waiting: deque[Deferred[bytes]] = deque()
        self._closed: list[Deferred[None]] = []
        #: Called with the protocol when the connection closes (the pool listens).
        self.on_lost: Callable[[MLLPClientProtocol], None] | None = None
        #: ``seconds()`` when the pool last put this connection back (idle since).
        self.released_at: float | None = None

    # ------------------------------------------------------------------ connection state

    def connectionMade(self) -> None:
        if not self.tls:
            self._set_ready()

    def handshakeCompleted(self) -> None:
        # A failed host name check aborts the connection inside the handshake; the TLS layer
        # still reports completion, so look at the transport before trusting it.
        if getattr(self.transport, "disconnecting", False):
            return
        self._set_ready()

    def _set_ready(self) -> None:
        if not self.ready.called:
            self.ready.callback(self)

    def _cancel_ready(self, d: Deferred[Any]) -> None:
        if self.transport is not None:
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = True
        self.lost_reason = reason
        if not self.ready.called:
            self.ready.errback(MLLPNotConnected(reason, self.tls))
        waiting, self._waiting = self._waiting, deque()
        received = self.received
        for d in waiting:
            d.errback(MLLPConnectionLost(reason, received))
            received = 0
        closed, self._closed = self._closed, []
        for d in closed:
            d.callback(None)
        if self.on_lost is not None:
            self.on_lost(self)

    def when_closed(self) -> Deferred[None]:
        """A Deferred that fires (with None) once the connection is closed."""
        if self.lost:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._closed.append(d)
        return d

    def abort(self) -> None:
        """Drop the connection now (it can no longer be trusted to be in step)."""
        if not self.lost and self.transport is not None:
            self.transport.abortConnection()

    @property
    def outstanding(self) -> int:
        """ACKs waited for."""
        return len(self._waiting)

    # ------------------------------------------------------------------ sending

    def send(self, payload: bytes) -> Deferred[bytes]:
        """Write ``payload`` as one block; the Deferred fires with the next ACK block's payload
        (framing removed), or fails with :class:`MLLPConnectionLost` /
        :class:`MLLPProtocolError`. Cancelling it drops the connection."""
        if self.lost:  # nothing written
            return _failed(MLLPNotConnected(self.lost_reason, self.tls))
        d: Deferred[bytes] = Deferred(self._cancel_wait)
        if not self._waiting:
            self.received = 0
        self._waiting.append(d)
        self.written += 1
        self.transport.write(SB + payload + EB)
        return d

    def _cancel_wait(self, d: Deferred[bytes]) -> None:
        # A late ACK would be taken for the next message's: this connection is done.
        try:
            self._waiting.remove(d)
        except ValueError:
            pass
        self.abort()

    # ------------------------------------------------------------------ receiving

    def dataReceived(self, data: bytes) -> None:
        if self._waiting:
            self.received += len(data)
        self._buf += data
        while self._buf and not self.lost:
            if not self._in_block:
                start = self._buf.find(SB)
                if start < 0:
                    self._buf.clear()  # junk outside a block
                    return
                del self._buf[:start]
                self._in_block = True
                self._scan = 1
            end = self._buf.find(EB, self._scan)
            if end < 0:
                restart = self._buf.rfind(SB, self._scan)
                if restart > 0:  # a new start block: what came before it was junk
                    del self._buf[:restart]
                # keep a trailing FS for the CR of the next read
                self._scan = max(len(self._buf) - 1, 1)
                if len(self._buf) - 1 > self.max_ack:
                    self._protocol_error(f"ACK longer than max_ack ({self.max_ack} bytes)")
                return
            block = bytes(self._buf[1:end])
            del self._buf[: end + len(EB)]
            self._in_block = False
            self._scan = 0
            restart = block.rfind(SB)
            if restart >= 0:
                block = block[restart + 1 :]
            if len(block) > self.max_ack:
                self._protocol_error(f"ACK longer than max_ack ({self.max_ack} bytes)")
                return
            self._deliver(block)

    def _deliver(self, block: bytes) -> None:
        if not self._waiting:
            self._protocol_error("the peer sent a block nobody was waiting for")
            return
        d = self._waiting.popleft()
        self.received = len(self._buf) if self._waiting else 0
        d.callback(block)

    def _protocol_error(self, text: str) -> None:
        waiting, self._waiting = self._waiting, deque()
        self._buf.clear()
        self.abort()
        for d in waiting:
            d.errback(MLLPProtocolError(text))


def _failed(exc: BaseException) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(exc)
    return d
