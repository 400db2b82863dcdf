"""MLLP framing and connection policy, with StringTransport and Clock (no sockets).

Block format per the HL7 MLLP Release 2 transport specification: <SB=0x0B> data <EB=0x1C><CR=0x0D>.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.internet.testing import StringTransport

from engine.sources.mllp import EB, SB, MLLPServerFactory

MSG = b"MSH|^~\\&|A|B|C|D|20260101||DFT^P03|X1|P|2.5.1\rPID|1\r"


def frame(data: bytes) -> bytes:
    return SB + data + EB


class Harness:
    def __init__(self, *, max_frame: int = 1024, idle: float = 30.0, max_conn: int = 10) -> None:
        self.clock = task.Clock()
        self.seen: list[bytes] = []
        self.waiting: list[defer.Deferred] = []
        self.manual = False
        self.factory = MLLPServerFactory(
            self.handle,
            oversize_reply=lambda prefix: b"NAK:" + prefix[:10],
            max_frame=max_frame,
            idle_timeout=idle,
            max_connections=max_conn,
            clock=self.clock,
        )

    def handle(self, data: bytes, peer: str) -> Any:
        self.seen.append(data)
        if self.manual:
            d: defer.Deferred = defer.Deferred()
            self.waiting.append(d)
            return d
        return b"ACK:" + data[-3:]

    def connect(self) -> tuple[Any, StringTransport]:
        proto = self.factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport


def test_one_frame_one_reply() -> None:
    """A complete block is handed over without its framing bytes; the reply is framed (MLLP
    Release 2, block format)."""
    h = Harness()
    proto, tr = h.connect()
    proto.dataReceived(frame(MSG))
    assert h.seen == [MSG]
    assert tr.value() == frame(b"ACK:" + MSG[-3:])


def test_frame_split_byte_by_byte() -> None:
    """A block delivered one byte per read is reassembled, including a split end block."""
    h = Harness()
    proto, tr = h.connect()
    for i in range(len(frame(MSG))):
        proto.dataReceived(frame(MSG)[i : i + 1])
    assert h.seen == [MSG]
    assert tr.value().count(SB) == 1


def test_several_frames_in_one_read() -> None:
    """Three blocks in one read are three messages, answered in order."""
    h = Harness()
    proto, tr = h.connect()
    msgs = [MSG + b"1", MSG + b"2", MSG + b"3"]
    proto.dataReceived(b"".join(frame(m) for m in msgs))
    assert h.seen == msgs
    assert tr.value() == b"".join(frame(b"ACK:" + m[-3:]) for m in msgs)


def test_junk_outside_frames_is_dropped_and_counted() -> None:
    """Bytes before a start block and between blocks are not data; they are counted."""
    h = Harness()
    proto, _ = h.connect()
    proto.dataReceived(b"noise" + frame(MSG) + b"\r\n" + frame(MSG + b"2"))
    assert h.seen == [MSG, MSG + b"2"]
    assert h.factory.stats["junk_bytes"] == len(b"noise") + 2


def test_oversize_frame_gets_nak_and_close_with_memory_bounded() -> None:
    """A block over max_frame gets the NAK (built from its start) and the connection closes;
    the buffer never holds more than max_frame plus one read."""
    h = Harness(max_frame=1000)
    proto, tr = h.connect()
    proto.dataReceived(SB + b"MSH|" + b"x" * 200)
    peak = 0
    for _ in range(15):  # 3x the limit in 200-byte reads
        proto.dataReceived(b"y" * 200)
        peak = max(peak, len(proto.buffer))
    assert peak <= 1000 + 200
    assert tr.value() == frame(b"NAK:MSH|xxxxxx")
    assert tr.disconnecting
    assert h.seen == []
    assert h.factory.stats["oversize"] == 1


def test_idle_connection_is_closed_after_the_timeout() -> None:
    """No bytes for idle_timeout seconds closes the connection; traffic resets the timer."""
    h = Harness(idle=10)
    proto, tr = h.connect()
    h.clock.advance(9)
    proto.dataReceived(frame(MSG))
    h.clock.advance(9)
    assert not tr.disconnecting
    h.clock.advance(1.5)
    assert tr.disconnecting
    assert h.factory.stats["idle_timeouts"] == 1


def test_replies_keep_frame_order_when_handlers_finish_out_of_order() -> None:
    """A pipelining sender gets its ACKs in the order it sent the messages."""
    h = Harness()
    h.manual = True
    proto, tr = h.connect()
    proto.dataReceived(frame(MSG + b"1") + frame(MSG + b"2"))
    h.waiting[1].callback(b"second")
    assert tr.value() == b""
    h.waiting[0].callback(b"first")
    assert tr.value() == frame(b"first") + frame(b"second")


def test_no_reply_closes_and_empty_reply_keeps_the_connection() -> None:
    """None (nothing stored, no answer) closes; b'' (MSH-15 says no ACK) keeps the connection."""
    h = Harness()
    h.manual = True
    proto, tr = h.connect()
    proto.dataReceived(frame(MSG))
    h.waiting[0].callback(b"")
    assert tr.value() == b"" and not tr.disconnecting
    proto.dataReceived(frame(MSG))
    h.waiting[1].callback(None)
    assert tr.disconnecting


def test_connections_over_the_limit_are_refused() -> None:
    """The connection past max_connections is closed at once and counted."""
    h = Harness(max_conn=2)
    conns = [h.connect() for _ in range(3)]
    assert [t.disconnecting or getattr(t, "aborting", False) for _, t in conns] == [
        False,
        False,
        True,
    ]
    assert h.factory.stats["refused_connections"] == 1
