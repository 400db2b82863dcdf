"""The ``mllp`` destination: send HL7 v2 over MLLP and wait for the peer's ACK.

Each delivery goes out as one MLLP Release 2 block (``0x0B`` payload ``0x1C 0x0D``) on a pooled
connection, and exactly one ACK block is awaited on that connection within ``ack_timeout``.
The ACK is read with the lean tokenizer; its MSA-2 must echo the MSH-10 of what was sent
(HL7 v2.5.1 §2.9). Outcomes map to :class:`~engine.errors.DeliveryError` flags:

==============================================================  =========  =========
outcome                                                         retryable  ambiguous
==============================================================  =========  =========
MSA-1 AA / CA (the ACK is returned and stored as the response)  (success)
MSA-1 AE / CE (application / commit error: fix the content)     no [1]_    no
MSA-1 AR / CR (reject: often transient)                         yes        no
MSA-2 is not our MSH-10; ACK unreadable or over ``max_ack``     yes        yes
no ACK within ``ack_timeout``; connection lost after sending    yes        yes
refused, connect timeout, DNS failure, TLS handshake failure    yes        no
payload is not HL7 (no MSH, no MSH-10)                          no         no
==============================================================  =========  =========

.. [1] yes with ``retry_on_ae: true``.

Connections: one per concurrent send. A connection whose send got a well-formed ACK for our
MSH-10 goes back to the idle pool and is reused by the next send; one that errored, timed out,
answered for another MSH-10 or sent an unsolicited block is dropped. Idle connections are closed
after :data:`IDLE_TIMEOUT` and dropped as soon as the peer closes them.

The framing (:class:`~engine.net.mllp.MLLPClientProtocol`) and client TLS
(:func:`~engine.net.tls.tls_creator`) live in :mod:`engine.net`.

Payloads and ACK contents are never logged: log lines carry host:port, the delivery id and MSA-1.
(The error text of an AE/AR carries the peer's MSA-3/ERR text, as the operator needs it.)
"""

from __future__ import annotations

import pathlib
from typing import Any

from twisted.internet import endpoints, error, task
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.logger import Logger

from engine.codecs.hl7v2 import Hl7Message, tokenize, with_msh
from engine.errors import CodecError, DeliveryError
from engine.model import Delivery
from engine.net.mllp import (
    FS,
    SB,
    MLLPClientProtocol,
    MLLPConnectionLost,
    MLLPNotConnected,
    MLLPProtocolError,
)
from engine.net.tls import tls_creator
from engine.registry import destination
from engine.spec import Bool, ByteSize, Context, Duration, Field, Int, Spec, Str, join

log = Logger(namespace="wharf.destination.mllp")

#: Seconds an idle pooled connection is kept before Wharf closes it (below common receiver
#: idle limits, so a send rarely lands on a connection the peer is closing: that is ambiguous).
IDLE_TIMEOUT = 60.0
#: At most this many idle connections are kept; more are closed.
MAX_IDLE = 32
#: Reactor turns to yield before reusing an idle connection, so a close the peer sent right
#: after its last ACK (peers that close after each message) is seen first.
REUSE_TURNS = 2
#: A peer that closes a pooled connection within this many seconds of its ACK is taken for one
#: that closes after every message: from then on connections are not pooled (as keep_alive:
#: false), so no message is written on a connection the peer is closing.
PEER_CLOSE_WINDOW = 1.0
#: Until one connection has carried a second message, a connection is reused only once it has
#: been idle this long since its ACK: time for a peer that closes after each message to do so.
PROBE_DELAY = 0.2

SUCCESS_CODES = ("AA", "CA")
ERROR_CODES = ("AE", "CE")
REJECT_CODES = ("AR", "CR")


def _check(config: Any, ctx: Context, node: Any, path: str) -> None:
    if not config.tls:
        for name in ("ca_file", "client_certificate"):
            if getattr(config, name):
                ctx.error(node, join(path, name), f"{name} needs tls: true (got tls: false)")
    if config.ca_file and not config.tls_verify:
        ctx.error(
            node, join(path, "ca_file"), "ca_file needs tls_verify: true (got tls_verify: false)"
        )
    if config.max_ack < 64:
        ctx.error(node, join(path, "max_ack"), f"must be at least 64 bytes (got {config.max_ack})")


MLLP_DEST_SPEC = Spec(
    "mllp",
    [
        Field("host", Str(), description="Peer host name or address.", example="billing.local"),
        Field("port", Int(1, 65535), description="Peer port.", example=2575),
        Field(
            "connect_timeout",
            Duration(lo=0.01),
            10.0,
            "Time to open a connection (TLS handshake included); nothing was sent when it "
            "runs out, so the delivery is retried.",
            "5s",
        ),
        Field(
            "ack_timeout",
            Duration(lo=0.01),
            30.0,
            "Time to wait for the ACK after the message went out. When it runs out the outcome "
            "is ambiguous (the peer may have the message).",
            "20s",
        ),
        Field("tls", Bool(), False, "Connect with TLS.", True),
        Field(
            "ca_file",
            Str(),
            None,
            "PEM bundle of the CAs trusted for the peer instead of the system store. "
            "Relative to the project root.",
            "certs/billing-ca.pem",
        ),
        Field(
            "client_certificate",
            Str(),
            None,
            "PEM file holding Wharf's certificate and private key, for mutual TLS. Relative to "
            "the project root.",
            "certs/wharf-client.pem",
        ),
        Field(
            "tls_verify",
            Bool(),
            True,
            "Verify the peer's certificate and host name. false is for test rigs only.",
            True,
        ),
        Field(
            "retry_on_ae",
            Bool(),
            False,
            "Retry AE/CE answers. An application error usually means the content must be fixed, "
            "so by default it is a permanent failure.",
            False,
        ),
        Field(
            "keep_alive",
            Bool(),
            True,
            "Reuse connections between messages; false closes the connection after each ACK "
            "(for peers that expect one message per connection).",
            True,
        ),
        Field(
            "max_ack",
            ByteSize(),
            1024 * 1024,
            "Largest ACK accepted; a larger one drops the connection (ambiguous outcome).",
            "64KiB",
        ),
    ],
    description=(
        "Send each delivery as one MLLP block and wait for the ACK on the same connection; idle "
        "connections are reused. AA/CA: sent, the ACK is stored as the response. AE/CE: "
        "permanent failure (retried only with `retry_on_ae`). AR/CR, refused connections and "
        "connect timeouts: retried with backoff. No ACK within `ack_timeout`, a lost "
        "connection after sending, or an ACK whose MSA-2 is not the message's MSH-10 is "
        "ambiguous: retried when the destination is idempotent, otherwise quarantined. The "
        "payload must be HL7 v2 with an MSH-10."
    ),
    example="""
destinations:
  - name: billing
    mllp:
      host: billing.local
      port: 2575
      ack_timeout: 20s
      tls: true
      ca_file: certs/billing-ca.pem
    ordered: true
    idempotent: false
""",
    check=_check,
)


# --------------------------------------------------------------------------- the destination


class MLLPDestination:
    """Sends deliveries over MLLP with a small pool of reused connections; see the module
    docstring for the outcome mapping."""

    def __init__(
        self,
        options: Any,
        *,
        reactor: Any,
        name: str,
        base_dir: pathlib.Path,
        channel: str = "",
    ) -> None:
        self.options = options
        self.reactor = reactor
        self.channel = channel
        self.name = name
        self.base_dir = pathlib.Path(base_dir)
        self.peer = f"{options.host}:{options.port}"
        self.idle: list[MLLPClientProtocol] = []
        self.busy: set[MLLPClientProtocol] = set()
        self.connections_opened = 0
        self._idle_timers: dict[MLLPClientProtocol, Any] = {}
        self._connecting: set[Deferred[Any]] = set()
        self._closed = False
        self._peer_closes = False  # the peer closes after each ACK: do not pool
        self._peer_keeps_open = False  # a connection carried a second message: reuse at once
        self._tls = tls_creator(options, self.base_dir) if options.tls else None

    # ------------------------------------------------------------------ connections

    def _endpoint(self) -> Any:
        o = self.options
        tcp = endpoints.HostnameEndpoint(self.reactor, o.host, o.port, timeout=o.connect_timeout)
        if self._tls is None:
            return tcp
        return endpoints.wrapClientTLS(self._tls, tcp)

    async def _connect(self) -> MLLPClientProtocol:
        """A new connection, ready to send (TLS handshake done); DeliveryError (retryable, not
        ambiguous) when that fails: nothing has been sent."""
        if self._closed:
            raise DeliveryError(f"{self.peer}: destination is closed", retryable=True)
        proto = MLLPClientProtocol(self.options.max_ack, tls=self._tls is not None)
        d = endpoints.connectProtocol(self._endpoint(), proto)
        d.addCallback(lambda p: p.ready)
        timed_out = [False]

        def on_timeout() -> None:
            timed_out[0] = True
            d.cancel()

        timer = self.reactor.callLater(self.options.connect_timeout, on_timeout)
        self._connecting.add(d)
        try:
            conn = await d
        except Exception as e:
            raise self._connect_error(e, timed_out[0]) from None
        finally:
            self._connecting.discard(d)
            if timer.active():
                timer.cancel()
        self.connections_opened += 1
        conn.on_lost = self._lost
        log.debug(
            "destination {channel}/{destination}: connected to {peer}",
            channel=self.channel,
            destination=self.name,
            peer=self.peer,
        )
        return conn

    def _connect_error(self, exc: BaseException, timed_out: bool) -> DeliveryError:
        peer, tls = self.peer, self._tls is not None
        if timed_out:
            what = "connect and TLS handshake" if tls else "connect"
            text = f"{peer}: {what} timed out after {self.options.connect_timeout:g}s"
        elif isinstance(exc, MLLPNotConnected):
            if exc.tls:
                text = f"{peer}: TLS handshake failed: {exc}"
            else:
                text = f"{peer}: connection closed before it could be used: {exc}"
        elif isinstance(exc, error.DNSLookupError):
            text = f"{peer}: host name lookup failed: {type(exc).__name__}"
        elif isinstance(exc, error.ConnectionRefusedError):
            text = f"{peer}: connection refused"
        else:
            text = f"{peer}: could not connect: {type(exc).__name__}: {exc}".rstrip(": ")
        return DeliveryError(text, retryable=True, ambiguous=False)

    async def _acquire(self) -> MLLPClientProtocol:
        """An idle connection that is still open, else a new one."""
        if self.idle and REUSE_TURNS:
            # Let a close the peer sent right after its last ACK be processed first.
            for _ in range(REUSE_TURNS):
                await _turn(self.reactor)
        while self.idle:
            conn = self.idle.pop()
            self._cancel_idle_timer(conn)
            if conn.lost or conn.outstanding:
                continue
            since = conn.released_at
            wait = 0.0 if since is None else since + PROBE_DELAY - self.reactor.seconds()
            if not self._peer_keeps_open and wait > 0:
                # Not yet known whether this peer keeps connections open: give it time to
                # close this one before writing on it.
                self.busy.add(conn)
                try:
                    await task.deferLater(self.reactor, wait, lambda: None)
                finally:
                    self.busy.discard(conn)
                if conn.lost:
                    self._peer_closed_idle(conn)
                    continue
                if self._closed:
                    conn.transport.loseConnection()
                    raise DeliveryError(f"{self.peer}: destination is closed", retryable=True)
            return conn
        return await self._connect()

    def _release(self, conn: MLLPClientProtocol, reusable: bool) -> None:
        self.busy.discard(conn)
        if conn.lost:
            return
        if (
            not reusable
            or self._closed
            or self._peer_closes
            or not self.options.keep_alive
            or len(self.idle) >= MAX_IDLE
        ):
            if reusable:
                conn.transport.loseConnection()
            else:
                conn.abort()
            return
        conn.released_at = self.reactor.seconds()
        self.idle.append(conn)
        self._idle_timers[conn] = self.reactor.callLater(IDLE_TIMEOUT, self._expire, conn)

    def _lost(self, conn: MLLPClientProtocol) -> None:
        """A connection closed; when it was idle, the peer closed it."""
        if conn not in self.idle:
            return
        self.idle.remove(conn)
        self._cancel_idle_timer(conn)
        self._peer_closed_idle(conn)

    def _peer_closed_idle(self, conn: MLLPClientProtocol) -> None:
        """The peer closed an idle connection: soon after its ACK means it always does."""
        since = conn.released_at
        if (
            not self._peer_closes
            and since is not None
            and self.reactor.seconds() - since < PEER_CLOSE_WINDOW
        ):
            self._peer_closes = True
            log.info(
                "destination {channel}/{destination}: {peer} closes the connection after each "
                "ACK; connections are no longer reused (set keep_alive: false for this peer)",
                channel=self.channel,
                destination=self.name,
                peer=self.peer,
            )

    def _expire(self, conn: MLLPClientProtocol) -> None:
        self._idle_timers.pop(conn, None)
        if conn in self.idle:
            self.idle.remove(conn)
            if not conn.lost:
                conn.transport.loseConnection()

    def _cancel_idle_timer(self, conn: MLLPClientProtocol) -> None:
        timer = self._idle_timers.pop(conn, None)
        if timer is not None and timer.active():
            timer.cancel()

    def close(self) -> Deferred[Any]:
        """Close every connection; the Deferred fires once they are all closed."""
        self._closed = True
        for d in list(self._connecting):
            d.cancel()
        conns = [*self.idle, *self.busy]
        for conn in self.idle:
            self._cancel_idle_timer(conn)
        self.idle.clear()
        waits = [conn.when_closed() for conn in conns]
        for conn in conns:
            if not conn.lost:
                conn.transport.loseConnection()
        return DeferredList(waits).addCallback(lambda _: None)

    # ------------------------------------------------------------------ sending

    async def send(self, delivery: Delivery) -> bytes | None:
        """Send ``delivery.payload`` and wait for its ACK; the ACK bytes on AA/CA, else raise
        :class:`DeliveryError`."""
        payload = delivery.payload
        if delivery.meta.get("test") and payload.lstrip().startswith(b"MSH"):
            payload = with_msh(payload, f11=b"T")  # test data (a canary): the receiver's flag
        control_id = _control_id(payload)
        if self._closed:
            raise DeliveryError(f"{self.peer}: destination is closed", retryable=True)
        conn = await self._acquire()
        self.busy.add(conn)
        reusable = False
        try:
            block = await self._exchange(conn, payload)
            ack = _parse_ack(block, self.peer)
            code = (ack.get("MSA-1") or "").strip().upper()
            echoed = (ack.get("MSA-2") or "").strip()
            emit = log.debug if code in SUCCESS_CODES and echoed == control_id else log.info
            emit(
                "destination {channel}/{destination}: delivery {delivery_id}: {peer} answered "
                "{code}",
                channel=self.channel,
                destination=self.name,
                delivery_id=delivery.id,
                peer=self.peer,
                code=code or "-",
            )
            if echoed != control_id:
                raise DeliveryError(
                    f"{self.peer}: ACK answers MSH-10 {echoed!r}, not {control_id!r}; the "
                    "connection was dropped (the message may have been processed)",
                    retryable=True,
                    ambiguous=True,
                    response=block,
                )
            reusable = True
            if conn.written > 1:
                self._peer_keeps_open = True
            if code in SUCCESS_CODES:
                return block
            text = _ack_text(ack)
            detail = f"{self.peer} answered {code}{': ' + text if text else ''}"
            # The peer's text (MSA-3, ERR-8) stays in the store; the log gets codes only.
            logged = f"{self.peer} answered {code}" + (
                " (its error text is kept with the delivery)" if text else ""
            )
            if code in ERROR_CODES:
                retry = bool(self.options.retry_on_ae)
                tail = "" if retry else " (not retried: fix the content)"
                raise DeliveryError(
                    detail + tail, retryable=retry, response=block, log_text=logged + tail
                )
            if code in REJECT_CODES:
                raise DeliveryError(detail, retryable=True, response=block, log_text=logged)
            raise DeliveryError(
                f"{self.peer}: ACK has MSA-1 {code or 'empty'!r}, expected one of AA, AE, AR, "
                f"CA, CE, CR (the message may have been processed)",
                retryable=True,
                ambiguous=True,
                response=block,
            )
        finally:
            self._release(conn, reusable)

    async def _exchange(self, conn: MLLPClientProtocol, payload: bytes) -> bytes:
        """Write one block and wait ``ack_timeout`` for the answer block."""
        d = conn.send(payload)
        timed_out = [False]

        def on_timeout() -> None:
            timed_out[0] = True
            d.cancel()

        timer = self.reactor.callLater(self.options.ack_timeout, on_timeout)
        try:
            return await d
        except CancelledError:
            if timed_out[0]:
                raise DeliveryError(
                    f"{self.peer}: no ACK within {self.options.ack_timeout:g}s "
                    "(the message may have been processed)",
                    retryable=True,
                    ambiguous=True,
                ) from None
            raise
        except MLLPNotConnected as e:
            raise DeliveryError(
                f"{self.peer}: connection closed before the message was written: {e}",
                retryable=True,
                ambiguous=False,
            ) from None
        except MLLPConnectionLost as e:
            heard = f" after {e.received} byte(s) of an ACK" if e.received else " before an ACK"
            raise DeliveryError(
                f"{self.peer}: connection lost{heard} (the message may have been processed): {e}",
                retryable=True,
                ambiguous=True,
            ) from None
        except MLLPProtocolError as e:
            raise DeliveryError(
                f"{self.peer}: {e}; the connection was dropped (the message may have been "
                "processed)",
                retryable=True,
                ambiguous=True,
            ) from None
        finally:
            if timer.active():
                timer.cancel()


def _turn(reactor: Any) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    reactor.callLater(0, d.callback, None)
    return d


def _control_id(payload: bytes) -> str:
    """MSH-10 of the payload; a permanent DeliveryError when it is not HL7 v2 or has none."""
    try:
        msg = tokenize(payload)
    except CodecError as e:
        raise DeliveryError(f"payload is not HL7 v2: {e.message}", retryable=False) from None
    control_id = (msg.msh.get(10, whole=True) or "").strip()
    if not control_id:
        raise DeliveryError(
            "payload has no MSH-10 (message control id) to match the ACK with", retryable=False
        )
    if SB in payload or FS in payload:
        raise DeliveryError("payload contains an MLLP framing byte (0x0B or 0x1C)", retryable=False)
    return control_id


def _parse_ack(block: bytes, peer: str) -> Hl7Message:
    try:
        ack = tokenize(block.lstrip(b"\r\n\t "))
    except CodecError as e:
        raise DeliveryError(
            f"{peer}: the answer is not an HL7 ACK ({e.message}); the message may have been "
            "processed",
            retryable=True,
            ambiguous=True,
            response=block,
        ) from None
    if ack.segment("MSA") is None:
        raise DeliveryError(
            f"{peer}: the answer has no MSA segment; the message may have been processed",
            retryable=True,
            ambiguous=True,
            response=block,
        )
    return ack


def _ack_text(ack: Hl7Message, limit: int = 400) -> str:
    """MSA-3 and the ERR segments' codes and messages, for the error text."""
    parts: list[str] = []
    msa3 = ack.get("MSA-3")
    if msa3:
        parts.append(msa3)
    for err in ack.all("ERR")[:5]:
        bits = []
        code, label = err.get(3, 1), err.get(3, 2)
        if code or label:
            bits.append(f"ERR-3 {code} {label}".strip())
        location = err.get(2, whole=True)
        if location:
            bits.append(f"at {location.replace('^', '-')}")
        message = err.get(8) or err.get(7)
        if message:
            bits.append(message)
        if not bits and err.get(1, whole=True):
            bits.append(err.get(1, whole=True))  # pre-2.5 ERR-1
        if bits:
            parts.append(" ".join(bits))
    text = "; ".join(parts)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@destination("mllp", MLLP_DEST_SPEC)
def make_mllp_destination(
    options: Any, *, reactor: Any, channel: str, name: str, base_dir: pathlib.Path
) -> MLLPDestination:
    """Build the ``mllp`` destination of channel ``channel`` named ``name``."""
    return MLLPDestination(options, reactor=reactor, channel=channel, name=name, base_dir=base_dir)
