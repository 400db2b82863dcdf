"""The ``mllp`` destination and its client protocol, on MemoryReactorClock and StringTransport
(no sockets).

Bytes on the wire follow the MLLP Release 2 block format: <SB=0x0B> data <EB=0x1C><CR=0x0D>.
ACK semantics follow HL7 v2.5.1 §2.9 (acknowledgment): MSA-1 is the acknowledgment code
(table 0008: AA/AE/AR, CA/CE/CR) and MSA-2 echoes the MSH-10 of the message acknowledged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from twisted.internet import error
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from engine.destinations.mllp import IDLE_TIMEOUT, MLLP_DEST_SPEC, PROBE_DELAY, MLLPDestination
from engine.errors import DeliveryError
from engine.model import Delivery
from engine.net.mllp import (
    EB,
    SB,
    MLLPClientProtocol,
    MLLPConnectionLost,
    MLLPNotConnected,
    MLLPProtocolError,
)
from engine.spec import INVALID, Context

ROOT = Path(__file__).resolve().parents[2]

MSG = (
    b"MSH|^~\\&|WHARF|GENHOSP|BILLING|GENHOSP|20260115103000||DFT^P03^DFT_P03|CTRL-1|P|2.5.1\r"
    b"EVN|P03|20260115103000\r"
    b"FT1|1|CU-7f3a9c||20260115093000||CG|278000123^BONE SCREW^99CDM|||2\r"
)


def ack(code: str, control_id: str = "CTRL-1", extra: str = "") -> bytes:
    """An ACK as a receiver builds it (HL7 v2.5.1 §2.9): MSA-1 the code, MSA-2 our MSH-10."""
    return (
        "MSH|^~\\&|BILLING|GENHOSP|WHARF|GENHOSP|20260115103001||ACK^P03^ACK|ACK-9|P|2.5.1\r"
        f"MSA|{code}|{control_id}\r{extra}"
    ).encode()


def block(data: bytes) -> bytes:
    """One MLLP Release 2 block."""
    return SB + data + EB


def options(**kw: Any) -> Any:
    ctx = Context("t.yaml")
    parsed = MLLP_DEST_SPEC.parse(
        yaml.compose(yaml.safe_dump({"host": "127.0.0.1", "port": 2575, **kw})), ctx, ""
    )
    assert not ctx.errors, [str(e) for e in ctx.errors]
    return parsed


def delivery(payload: bytes = MSG, i: int = 1) -> Delivery:
    return Delivery(
        i,
        "m",
        "charges",
        "billing",
        payload,
        "x-application/hl7-v2+er7",
        "k",
        "c",
        None,
        0,
        0.0,
        {},
    )


class Wire(StringTransport):
    """A StringTransport that reports closing to its protocol on the next reactor turn, as a
    real reactor does."""

    def __init__(self, protocol: Any, reactor: MemoryReactorClock) -> None:
        super().__init__()
        self.protocol = protocol
        self.reactor = reactor
        self.closed = False

    def loseConnection(self) -> None:
        super().loseConnection()
        self._close(error.ConnectionDone())

    def abortConnection(self) -> None:
        super().abortConnection()
        self.aborted = True
        self._close(error.ConnectionAborted())

    def _close(self, exc: Exception) -> None:
        if not self.closed:
            self.closed = True
            self.reactor.callLater(0, self.protocol.connectionLost, Failure(exc))

    def peer_closes(self, exc: Exception | None = None) -> None:
        """The peer closed the connection."""
        self.disconnecting = True
        self._close(exc or error.ConnectionDone())

    def answer(self, data: bytes) -> None:
        """The peer writes ``data``."""
        self.protocol.dataReceived(data)


class Rig:
    """An MLLPDestination on a MemoryReactorClock; ``accept()`` plays the peer accepting."""

    def __init__(self, **kw: Any) -> None:
        self.reactor = MemoryReactorClock()
        self.dest = MLLPDestination(
            options(**kw), reactor=self.reactor, channel="charges", name="billing", base_dir=ROOT
        )
        self.wires: list[Wire] = []

    def pump(self) -> None:
        for _ in range(8):
            self.reactor.advance(0)

    def settle(self) -> None:
        """Let PROBE_DELAY pass (a first reuse waits for it)."""
        self.reactor.advance(PROBE_DELAY)
        self.pump()

    def send(self, payload: bytes = MSG, i: int = 1) -> list[Any]:
        """Start a send; the returned list receives its result (bytes or a Failure)."""
        out: list[Any] = []
        ensureDeferred(self.dest.send(delivery(payload, i))).addBoth(out.append)
        self.pump()
        return out

    @property
    def attempts(self) -> int:
        return len(self.reactor.tcpClients)

    def accept(self) -> Wire:
        """The peer accepts the newest connection attempt."""
        factory = self.reactor.tcpClients[len(self.wires)][2]
        proto = factory.buildProtocol(None)
        wire = Wire(proto, self.reactor)
        proto.makeConnection(wire)
        self.wires.append(wire)
        self.pump()
        return wire

    def refuse(self) -> None:
        """Nothing listens: the newest connection attempt is refused."""
        factory = self.reactor.tcpClients[-1][2]
        factory.clientConnectionFailed(
            self.reactor.connectors[-1], Failure(error.ConnectionRefusedError())
        )
        self.reactor.advance(1)  # HostnameEndpoint reports after its attempt delay
        self.pump()


def failure_of(out: list[Any]) -> DeliveryError:
    assert len(out) == 1, out
    assert isinstance(out[0], Failure), out[0]
    exc = out[0].value
    assert isinstance(exc, DeliveryError), exc
    return exc


# --------------------------------------------------------------------------- the protocol


def connected(max_ack: int = 1024, tls: bool = False) -> tuple[MLLPClientProtocol, Wire]:
    proto = MLLPClientProtocol(max_ack, tls=tls)
    wire = Wire(proto, MemoryReactorClock())
    proto.makeConnection(wire)
    return proto, wire


def test_protocol_writes_one_block_and_returns_the_ack_block() -> None:
    """send() writes exactly <SB> payload <EB><CR> (MLLP Release 2 block format) and the
    Deferred fires with the answer block's content, framing removed."""
    proto, wire = connected()
    got: list[bytes] = []
    proto.send(MSG).addCallback(got.append)
    assert wire.value() == b"\x0b" + MSG + b"\x1c\x0d"
    wire.answer(b"\x0b" + ack("AA") + b"\x1c\x0d")
    assert got == [ack("AA")]


def test_protocol_reassembles_an_ack_split_byte_by_byte_after_junk() -> None:
    """Junk before the start block is dropped and an ACK arriving one byte per read, its
    end block split across reads, is reassembled (MLLP Release 2 block format)."""
    proto, wire = connected()
    got: list[bytes] = []
    proto.send(MSG).addCallback(got.append)
    data = b"\r\nnoise" + block(ack("AA"))
    for i in range(len(data)):
        wire.answer(data[i : i + 1])
    assert got == [ack("AA")]
    assert not wire.closed


def test_protocol_answers_two_outstanding_sends_in_order() -> None:
    """One Deferred per outstanding ACK: two blocks in one read answer two sends in order."""
    proto, wire = connected()
    got: list[bytes] = []
    proto.send(MSG).addCallback(got.append)
    proto.send(MSG.replace(b"CTRL-1", b"CTRL-2")).addCallback(got.append)
    wire.answer(block(ack("AA")) + block(ack("AA", "CTRL-2")))
    assert got == [ack("AA"), ack("AA", "CTRL-2")]


def test_protocol_drops_the_connection_on_an_oversized_ack() -> None:
    """An ACK longer than max_ack fails the send with MLLPProtocolError and drops the
    connection, holding no more than max_ack bytes."""
    proto, wire = connected(max_ack=100)
    out: list[Any] = []
    proto.send(MSG).addBoth(out.append)
    wire.answer(SB + b"x" * 150)
    assert isinstance(out[0].value, MLLPProtocolError)
    assert wire.aborted


def test_protocol_drops_the_connection_on_an_unsolicited_block() -> None:
    """A block nobody waits for means the connection is out of step: it is dropped."""
    _, wire = connected()
    wire.answer(block(ack("AA")))
    assert wire.aborted


def test_protocol_lost_after_send_reports_bytes_heard() -> None:
    """A close while an ACK is outstanding fails it with MLLPConnectionLost."""
    proto, wire = connected()
    out: list[Any] = []
    proto.send(MSG).addBoth(out.append)
    wire.answer(SB + b"MSH|")
    proto.connectionLost(Failure(error.ConnectionDone()))
    assert isinstance(out[0].value, MLLPConnectionLost)
    assert out[0].value.received == 5


def test_protocol_with_tls_is_ready_only_after_the_handshake() -> None:
    """With tls, ready waits for handshakeCompleted; a close before it fails ready with
    MLLPNotConnected (nothing was sent)."""
    proto, _ = connected(tls=True)
    assert not proto.ready.called
    proto.handshakeCompleted()
    assert proto.ready.called
    proto2, _ = connected(tls=True)
    out: list[Any] = []
    proto2.ready.addBoth(out.append)
    proto2.connectionLost(Failure(error.ConnectionDone()))
    assert isinstance(out[0].value, MLLPNotConnected)


# --------------------------------------------------------------------------- the destination


def test_aa_returns_the_ack_as_the_response() -> None:
    """The payload goes out as one MLLP Release 2 block; an AA whose MSA-2 echoes MSH-10
    (HL7 v2.5.1 §2.9) is success and the ACK bytes are the response."""
    rig = Rig()
    out = rig.send()
    wire = rig.accept()
    assert wire.value() == b"\x0b" + MSG + b"\x1c\x0d"
    wire.answer(b"\x0b" + ack("AA") + b"\x1c\x0d")
    rig.pump()
    assert out == [ack("AA")]


def test_ca_commit_accept_is_success() -> None:
    """CA (enhanced-mode commit accept, HL7 v2.5.1 §2.9) counts as sent."""
    rig = Rig()
    out = rig.send()
    rig.accept().answer(block(ack("CA")))
    rig.pump()
    assert out == [ack("CA")]


def test_ae_is_not_retryable_and_carries_the_err_text() -> None:
    """AE (application error, HL7 v2.5.1 §2.9) is a permanent failure by default; the error
    names MSA-3 and ERR-3/ERR-8, and the ACK is kept as the response."""
    rig = Rig()
    out = rig.send()
    err = "ERR||FT1^1^7|103^Table value not found^HL70357|E||||Unknown charge code\r"
    nak = ack("AE", extra=err).replace(b"MSA|AE|CTRL-1", b"MSA|AE|CTRL-1|bad charge")
    rig.accept().answer(block(nak))
    rig.pump()
    exc = failure_of(out)
    assert (exc.retryable, exc.ambiguous) == (False, False)
    assert exc.response == nak
    assert "AE" in exc.message and "bad charge" in exc.message
    assert "103 Table value not found" in exc.message and "Unknown charge code" in exc.message


def test_ae_is_retryable_with_retry_on_ae() -> None:
    """retry_on_ae: true makes AE/CE retryable (still not ambiguous)."""
    rig = Rig(retry_on_ae=True)
    out = rig.send()
    rig.accept().answer(block(ack("CE")))
    rig.pump()
    exc = failure_of(out)
    assert (exc.retryable, exc.ambiguous) == (True, False)


@pytest.mark.parametrize("code", ["AR", "CR"])
def test_ar_and_cr_are_retryable(code: str) -> None:
    """AR/CR (reject, HL7 v2.5.1 §2.9) are retried; the connection stays in the pool."""
    rig = Rig()
    out = rig.send()
    rig.accept().answer(block(ack(code)))
    rig.pump()
    exc = failure_of(out)
    assert (exc.retryable, exc.ambiguous) == (True, False)
    assert exc.response == ack(code)
    assert len(rig.dest.idle) == 1


def test_msa2_mismatch_is_ambiguous_and_drops_the_connection() -> None:
    """An ACK whose MSA-2 is not the sent MSH-10 (HL7 v2.5.1 §2.9) is ambiguous: the peer may
    have processed our message; the connection is out of step and dropped."""
    rig = Rig()
    out = rig.send()
    wire = rig.accept()
    wire.answer(block(ack("AA", "OTHER-7")))
    rig.pump()
    exc = failure_of(out)
    assert (exc.retryable, exc.ambiguous) == (True, True)
    assert "OTHER-7" in exc.message and "CTRL-1" in exc.message
    assert wire.aborted and rig.dest.idle == []


def test_ack_timeout_is_ambiguous_and_the_connection_is_not_reused() -> None:
    """No ACK within ack_timeout: ambiguous (the message went out); the connection is dropped
    and the next send opens a new one."""
    rig = Rig(ack_timeout="5s")
    out = rig.send()
    wire = rig.accept()
    rig.reactor.advance(4.9)
    assert out == []
    rig.reactor.advance(0.2)
    rig.pump()
    exc = failure_of(out)
    assert (exc.retryable, exc.ambiguous) == (True, True)
    assert "no ACK within 5s" in exc.message
    assert wire.aborted
    wire.answer(block(ack("AA")))  # a late ACK goes nowhere
    rig.send()
    assert rig.attempts == 2


def test_connection_is_reused_for_the_second_send() -> None:
    """After an AA the connection goes back to the pool; the next send writes on it. The first
    reuse waits PROBE_DELAY after the ACK (a peer that closes after each message would have
    closed by then); once a connection carried two messages, reuse is immediate."""
    rig = Rig()
    first = rig.send()
    wire = rig.accept()
    wire.answer(block(ack("AA")))
    rig.pump()
    second = rig.send(MSG.replace(b"CTRL-1", b"CTRL-2"), 2)
    assert wire.value().count(SB) == 1  # still waiting PROBE_DELAY
    rig.settle()
    assert rig.attempts == 1
    assert wire.value() == block(MSG) + block(MSG.replace(b"CTRL-1", b"CTRL-2"))
    wire.answer(block(ack("AA", "CTRL-2")))
    rig.pump()
    assert first == [ack("AA")] and second == [ack("AA", "CTRL-2")]
    third = rig.send(MSG.replace(b"CTRL-1", b"CTRL-3"), 3)
    assert wire.value().count(SB) == 3  # no wait any more
    wire.answer(block(ack("AA", "CTRL-3")))
    rig.pump()
    assert third == [ack("AA", "CTRL-3")]
    assert rig.dest.connections_opened == 1


def test_concurrent_sends_use_one_connection_each_and_both_are_pooled() -> None:
    """Two sends in flight open two connections; both return to the pool and the next send
    reuses one of them."""
    rig = Rig()
    a = rig.send(MSG, 1)
    b = rig.send(MSG.replace(b"CTRL-1", b"CTRL-2"), 2)
    w1, w2 = rig.accept(), rig.accept()
    w2.answer(block(ack("AA", "CTRL-2")))
    w1.answer(block(ack("AA")))
    rig.pump()
    assert a == [ack("AA")] and b == [ack("AA", "CTRL-2")]
    assert len(rig.dest.idle) == 2
    rig.send(MSG.replace(b"CTRL-1", b"CTRL-3"), 3)
    rig.settle()
    assert rig.attempts == 2
    assert sum(w.value().count(SB) for w in (w1, w2)) == 3


def test_idle_connection_closed_by_the_peer_is_replaced_not_ambiguous() -> None:
    """A pooled connection the peer closed while idle is discarded before anything is written
    on it: the next send opens a new connection and succeeds."""
    rig = Rig()
    rig.send()
    wire = rig.accept()
    wire.answer(block(ack("AA")))
    rig.pump()
    rig.reactor.advance(30)
    wire.peer_closes()  # e.g. the peer's idle timeout
    rig.pump()
    assert rig.dest.idle == []
    out = rig.send(MSG.replace(b"CTRL-1", b"CTRL-2"), 2)
    assert wire.value().count(SB) == 1  # nothing written on the dead connection
    second = rig.accept()
    second.answer(block(ack("AA", "CTRL-2")))
    rig.pump()
    assert out == [ack("AA", "CTRL-2")]
    assert len(rig.dest.idle) == 1  # still pooling


def test_peer_that_closes_after_each_ack_is_detected_and_pooling_stops() -> None:
    """A peer that closes soon after its ACK (one message per connection) is noticed while
    the first reuse waits PROBE_DELAY; nothing is written on the closing connection and later
    connections are closed after their ACK instead of being pooled."""
    rig = Rig()
    rig.send()
    wire = rig.accept()
    wire.answer(block(ack("AA")))
    rig.pump()
    out = rig.send(MSG.replace(b"CTRL-1", b"CTRL-2"), 2)  # waits PROBE_DELAY ...
    rig.reactor.advance(PROBE_DELAY / 2)
    wire.peer_closes()  # ... during which the peer closes
    rig.settle()
    assert wire.value().count(SB) == 1
    second = rig.accept()
    second.answer(block(ack("AA", "CTRL-2")))
    rig.pump()
    assert out == [ack("AA", "CTRL-2")]
    assert second.closed and rig.dest.idle == []


def test_connection_lost_before_any_byte_is_written_is_not_ambiguous() -> None:
    """With TLS, the message is written only after the handshake; a connection that closes
    during the handshake (here: the peer answers with something that is not TLS) fails with
    retryable and not ambiguous, and the payload never reached the wire in clear."""
    rig = Rig(tls=True, tls_verify=False)
    out = rig.send()
    wire = rig.accept()
    hello = wire.value()
    assert hello[:1] == b"\x16"  # a TLS handshake record, not an MLLP block
    assert MSG not in hello
    wire.answer(b"\x0bMSH|^~\\&|not TLS at all\x1c\x0d" * 4)
    rig.pump()
    exc = failure_of(out)
    assert (exc.retryable, exc.ambiguous) == (True, False)
    assert "TLS handshake failed" in exc.message


def test_connection_lost_after_the_payload_was_written_is_ambiguous() -> None:
    """A reset after the block went out and before the ACK: ambiguous."""
    rig = Rig()
    out = rig.send()
    wire = rig.accept()
    wire.peer_closes(error.ConnectionLost())
    rig.pump()
    exc = failure_of(out)
    assert (exc.retryable, exc.ambiguous) == (True, True)
    assert "connection lost before an ACK" in exc.message


def test_refused_connection_is_retryable_not_ambiguous() -> None:
    """Connection refused: nothing was sent, a retry is safe."""
    rig = Rig()
    out = rig.send()
    rig.refuse()
    exc = failure_of(out)
    assert (exc.retryable, exc.ambiguous) == (True, False)
    assert "refused" in exc.message and "127.0.0.1:2575" in exc.message


def test_connect_timeout_is_retryable_not_ambiguous() -> None:
    """No connection within connect_timeout: nothing was sent."""
    rig = Rig(connect_timeout="2s")
    out = rig.send()
    rig.reactor.advance(2.1)
    rig.pump()
    exc = failure_of(out)
    assert (exc.retryable, exc.ambiguous) == (True, False)
    assert "timed out after 2s" in exc.message


@pytest.mark.parametrize(
    "payload", [b'{"not": "hl7"}', b"MSH|^~\\&|A|B|C|D|20260101||DFT^P03||P|2.5.1\r"]
)
def test_payload_that_is_not_hl7_is_permanent_and_nothing_connects(payload: bytes) -> None:
    """No MSH, or no MSH-10 to match the ACK with: a permanent failure, no connection made."""
    rig = Rig()
    exc = failure_of(rig.send(payload))
    assert (exc.retryable, exc.ambiguous) == (False, False)
    assert rig.attempts == 0


def test_answer_that_is_not_an_ack_is_ambiguous() -> None:
    """A block that is not HL7 (or has no MSA) cannot confirm anything: ambiguous."""
    rig = Rig()
    out = rig.send()
    rig.accept().answer(block(b"hello"))
    rig.pump()
    exc = failure_of(out)
    assert (exc.retryable, exc.ambiguous) == (True, True)


def test_oversized_ack_is_ambiguous() -> None:
    """An ACK over max_ack drops the connection: ambiguous (the peer did answer something)."""
    rig = Rig(max_ack="100B")
    out = rig.send()
    wire = rig.accept()
    wire.answer(block(ack("AA", extra="NTE|" + "x" * 200 + "\r")))
    rig.pump()
    exc = failure_of(out)
    assert (exc.retryable, exc.ambiguous) == (True, True)
    assert wire.aborted


def test_keep_alive_false_closes_after_each_ack() -> None:
    """keep_alive: false closes the connection after the ACK; the next send reconnects."""
    rig = Rig(keep_alive=False)
    rig.send()
    wire = rig.accept()
    wire.answer(block(ack("AA")))
    rig.pump()
    assert wire.closed and rig.dest.idle == []


def test_idle_connection_is_closed_after_the_idle_timeout() -> None:
    """A pooled connection unused for IDLE_TIMEOUT is closed by Wharf."""
    rig = Rig()
    rig.send()
    wire = rig.accept()
    wire.answer(block(ack("AA")))
    rig.pump()
    rig.reactor.advance(IDLE_TIMEOUT + 1)
    rig.pump()
    assert wire.closed and rig.dest.idle == []


def test_close_closes_pooled_connections() -> None:
    """close() closes the pool; its Deferred fires once every connection is closed."""
    rig = Rig()
    rig.send()
    wire = rig.accept()
    wire.answer(block(ack("AA")))
    rig.pump()
    done: list[Any] = []
    d: Deferred[Any] = rig.dest.close()
    d.addBoth(done.append)
    rig.pump()
    assert wire.closed and done == [None]


def test_spec_defaults_and_checks() -> None:
    """Defaults per the spec; ca_file without tls is refused, as is ca_file with
    tls_verify: false."""
    o = options()
    assert (o.connect_timeout, o.ack_timeout, o.tls, o.tls_verify, o.retry_on_ae) == (
        10.0,
        30.0,
        False,
        True,
        False,
    )
    assert (o.ca_file, o.client_certificate, o.max_ack) == (None, None, 1024 * 1024)
    for bad in ({"ca_file": "ca.pem"}, {"tls": True, "tls_verify": False, "ca_file": "ca.pem"}):
        ctx = Context("t.yaml")
        text = yaml.safe_dump({"host": "h", "port": 1, **bad})
        assert MLLP_DEST_SPEC.parse(yaml.compose(text), ctx, "") is INVALID
        assert "ca_file" in str(ctx.errors[0])
    ctx = Context("t.yaml")
    assert MLLP_DEST_SPEC.parse(yaml.compose("host: h\nport: 70000\n"), ctx, "") is INVALID
