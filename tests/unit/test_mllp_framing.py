"""MLLP framing and connection policy, with StringTransport and Clock (no sockets).

Block format per MLLP Release 2 (HL7 Transport Specification), §block format:
<SB=0x0B> data <EB=0x1C><CR=0x0D>.
"""

from __future__ import annotations

from typing import Any

import yaml
from twisted.internet import defer, task
from twisted.internet.testing import StringTransport

from engine.net.mllp import EB, SB, MLLPServerFactory, minimal_nak
from engine.registry import REGISTRY
from engine.responder import oversize_nak
from engine.sources.mllp import MLLP_SPEC
from engine.spec import Context

MSG = b"MSH|^~\\&|SEND|FAC|RECV|RFAC|20260101||DFT^P03|X1|P|2.5.1\rPID|1\r"


def frame(data: bytes) -> bytes:
    return SB + data + EB


class Harness:
    def __init__(
        self,
        *,
        max_frame: int = 1024,
        idle: float = 30.0,
        max_conn: int = 10,
        oversize_reply: Any = None,
    ) -> None:
        self.clock = task.Clock()
        self.seen: list[bytes] = []
        self.peers: list[str] = []
        self.waiting: list[defer.Deferred] = []
        self.manual = False
        self.factory = MLLPServerFactory(
            self.handle,
            oversize_reply=oversize_reply or (lambda prefix: b"NAK:" + prefix[:10]),
            max_frame=max_frame,
            idle_timeout=idle,
            max_connections=max_conn,
            clock=self.clock,
        )

    def handle(self, data: bytes, peer: str) -> Any:
        self.seen.append(data)
        self.peers.append(peer)
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
    """A complete block is handed to the handler without its framing bytes, with the peer;
    the reply goes back as one block: 0x0B reply 0x1C 0x0D (MLLP Release 2 (HL7 Transport
    Specification), §block format)."""
    h = Harness()
    proto, tr = h.connect()
    proto.dataReceived(frame(MSG))
    assert h.seen == [MSG]
    assert h.peers == ["192.168.1.1:54321"]  # StringTransport's peer address
    assert tr.value() == b"\x0b" + b"ACK:" + MSG[-3:] + b"\x1c\x0d"
    assert h.factory.stats["frames"] == 1
    assert not tr.disconnecting


def test_frame_split_byte_by_byte() -> None:
    """A block delivered one byte per read is reassembled, including an end block split
    between 0x1C and 0x0D (MLLP Release 2 (HL7 Transport Specification), §block format)."""
    h = Harness()
    proto, tr = h.connect()
    wire = frame(MSG) + frame(MSG + b"2")
    for i in range(len(wire)):
        proto.dataReceived(wire[i : i + 1])
    assert h.seen == [MSG, MSG + b"2"]
    assert tr.value() == frame(b"ACK:" + MSG[-3:]) + frame(b"ACK:" + (MSG + b"2")[-3:])
    assert h.factory.stats["junk_bytes"] == 0


def test_a_lone_fs_inside_the_data_is_data() -> None:
    """0x1C not followed by 0x0D does not end a block, also when split across reads (MLLP
    Release 2 (HL7 Transport Specification), §block format: the end block is 0x1C 0x0D)."""
    h = Harness()
    proto, _ = h.connect()
    proto.dataReceived(SB + b"AB\x1c")
    proto.dataReceived(b"CD" + EB)
    assert h.seen == [b"AB\x1cCD"]


def test_three_frames_in_one_write() -> None:
    """Three blocks in one read are three messages, answered in order (MLLP Release 2 (HL7
    Transport Specification), §block format)."""
    h = Harness()
    proto, tr = h.connect()
    msgs = [MSG + b"1", MSG + b"2", MSG + b"3"]
    proto.dataReceived(b"".join(frame(m) for m in msgs))
    assert h.seen == msgs
    assert tr.value() == b"".join(frame(b"ACK:" + m[-3:]) for m in msgs)


def test_junk_outside_frames_is_dropped_and_counted() -> None:
    """Bytes before a start block 0x0B, between blocks and after the last one are not data:
    dropped and counted (MLLP Release 2 (HL7 Transport Specification), §block format)."""
    h = Harness()
    proto, tr = h.connect()
    proto.dataReceived(b"noise" + frame(MSG) + b"\r\n" + frame(MSG + b"2") + b"tail")
    proto.dataReceived(b"more")
    assert h.seen == [MSG, MSG + b"2"]
    assert h.factory.stats["junk_bytes"] == len(b"noise") + 2 + len(b"tail") + len(b"more")
    assert not tr.disconnecting


def test_oversize_frame_gets_framed_nak_and_close_with_memory_bounded() -> None:
    """A block over max_frame gets the NAK (built from its first bytes), framed as
    0x0B NAK 0x1C 0x0D (MLLP Release 2 (HL7 Transport Specification), §block format), and the
    connection closes; the buffer never holds more than max_frame + 1 bytes while 3x max_frame
    arrive, and nothing reaches the handler."""
    prefixes: list[bytes] = []

    def reply(prefix: bytes) -> bytes:
        prefixes.append(prefix)
        return b"NAK"

    h = Harness(max_frame=1000, oversize_reply=reply)
    proto, tr = h.connect()
    proto.dataReceived(SB + b"MSH|" + b"x" * 196)
    peak = len(proto.buffer)
    for _ in range(14):  # 3x the limit in 200-byte reads
        proto.dataReceived(b"y" * 200)
        peak = max(peak, len(proto.buffer))
    assert peak <= 1000 + 1
    assert tr.value() == b"\x0bNAK\x1c\x0d"
    assert tr.disconnecting
    assert h.seen == []
    assert h.factory.stats["oversize"] == 1
    assert prefixes[0].startswith(b"MSH|xxx") and len(prefixes[0]) <= 4096


def test_oversize_in_one_big_read_keeps_only_a_prefix() -> None:
    """One read of 3x max_frame is never copied into the buffer; the NAK gets the first 4 KiB
    of the block (MLLP Release 2 (HL7 Transport Specification), §block format)."""
    prefixes: list[bytes] = []
    h = Harness(max_frame=10_000, oversize_reply=lambda p: prefixes.append(p) or b"NAK")
    proto, tr = h.connect()
    proto.dataReceived(SB + MSG + b"z" * 30_000 + EB)
    assert len(proto.buffer) == 0
    assert prefixes == [(MSG + b"z" * 30_000)[:4096]]
    assert tr.value() == frame(b"NAK")
    assert tr.disconnecting


def test_a_frame_of_exactly_max_frame_passes_even_with_a_split_end_block() -> None:
    """max_frame bytes of data are allowed; a 0x1C held back at the read boundary is not
    counted as data (MLLP Release 2 (HL7 Transport Specification), §block format)."""
    h = Harness(max_frame=100)
    proto, tr = h.connect()
    data = b"M" * 100
    proto.dataReceived(SB + data + b"\x1c")
    proto.dataReceived(b"\x0d")
    assert h.seen == [data]
    assert not tr.disconnecting
    proto.dataReceived(SB + data + b"!" + EB)
    assert h.factory.stats["oversize"] == 1


def test_oversize_nak_waits_for_earlier_replies() -> None:
    """Earlier frames' answers still go out first, then the NAK, then the close (blocks per
    MLLP Release 2 (HL7 Transport Specification), §block format)."""
    h = Harness(max_frame=100)
    h.manual = True
    proto, tr = h.connect()
    proto.dataReceived(frame(b"small") + SB + b"x" * 200)
    assert tr.value() == b"" and not tr.disconnecting
    h.waiting[0].callback(b"ACK1")
    assert tr.value() == frame(b"ACK1") + frame(b"NAK:xxxxxxxxxx")
    assert tr.disconnecting


def test_idle_timeout_closes_after_silence_but_not_while_frames_arrive() -> None:
    """No whole frame for idle_timeout seconds closes the connection; each frame (and each
    answer written) resets the timer. (A partial frame no longer resets it: a frame has its
    own deadline, see the tests below.)"""
    h = Harness(idle=10)
    proto, tr = h.connect()
    for _ in range(5):  # 45 s of slow but steady traffic
        h.clock.advance(9)
        proto.dataReceived(frame(MSG))
        assert not tr.disconnecting
    h.clock.advance(9.9)
    assert not tr.disconnecting
    h.clock.advance(0.2)
    assert tr.disconnecting
    assert h.factory.stats["idle_timeouts"] == 1


def test_bytes_outside_a_frame_do_not_keep_a_connection_open() -> None:
    """Junk trickled between frames is not traffic: the idle timeout still closes."""
    h = Harness(idle=10)
    proto, tr = h.connect()
    for _ in range(3):
        h.clock.advance(3)
        proto.dataReceived(b"junk")
    assert not tr.disconnecting
    h.clock.advance(1.1)  # 10.1 s since the connection opened
    assert tr.disconnecting
    assert h.factory.stats["idle_timeouts"] == 1
    assert h.factory.stats["junk_bytes"] == 12


def test_a_trickled_frame_is_cut_at_its_deadline_without_an_answer() -> None:
    """A frame's deadline runs from its first byte: a byte a second never completes a frame,
    and however often bytes come the connection is closed at frame_timeout (plus one second
    per min_rate bytes: here 29 bytes earn 29/1024 s), with no answer and nothing handled."""
    h = Harness(idle=1000)
    h.factory.frame_timeout = 30.0
    h.factory.min_rate = 1024.0
    proto, tr = h.connect()
    proto.dataReceived(SB)
    for _ in range(29):
        h.clock.advance(1)
        proto.dataReceived(b"M")
        assert not tr.disconnecting
    h.clock.advance(1.0)  # 30 s since the first byte; 29 bytes earned 0.03 s more
    assert not tr.disconnecting
    h.clock.advance(0.05)
    assert tr.disconnecting
    assert tr.value() == b""
    assert h.seen == []
    assert h.factory.stats["frame_timeouts"] == 1
    assert h.factory.stats["idle_timeouts"] == 0


def test_a_large_frame_sent_at_min_rate_is_not_cut() -> None:
    """A frame that brings at least min_rate bytes a second earns a second for each: 100 KiB
    at 2 KiB/s (50 s, well past frame_timeout) completes and is answered."""
    h = Harness(idle=1000, max_frame=1024 * 1024)
    h.factory.frame_timeout = 10.0
    h.factory.min_rate = 1024.0
    proto, tr = h.connect()
    proto.dataReceived(SB)
    for _ in range(50):
        h.clock.advance(1)
        proto.dataReceived(b"x" * 2048)
        assert not tr.disconnecting
    proto.dataReceived(EB)
    assert len(h.seen) == 1 and len(h.seen[0]) == 50 * 2048
    assert tr.value().startswith(SB + b"ACK:")
    h.clock.advance(100)  # the frame's timer is gone once it ended; only idle_timeout is left
    assert not tr.disconnecting
    assert h.factory.stats["frame_timeouts"] == 0


def test_replies_keep_frame_order_when_handlers_finish_in_reverse() -> None:
    """A pipelining sender gets its ACKs in the order it sent the messages, each as its own
    block (MLLP Release 2 (HL7 Transport Specification), §block format)."""
    h = Harness()
    h.manual = True
    proto, tr = h.connect()
    proto.dataReceived(frame(MSG + b"1") + frame(MSG + b"2") + frame(MSG + b"3"))
    h.waiting[2].callback(b"third")
    h.waiting[1].callback(b"second")
    assert tr.value() == b""
    h.waiting[0].callback(b"first")
    assert tr.value() == frame(b"first") + frame(b"second") + frame(b"third")


def test_a_pipelining_sender_is_paused_at_max_pipeline_frames() -> None:
    """With max_pipeline frames awaiting answers, reading pauses (the rest of the read is
    kept); as answers go out, reading resumes and the kept frames are handled, all answered
    in order (MLLP Release 2 (HL7 Transport Specification), §block format)."""
    h = Harness()
    h.factory.max_pipeline = 2
    h.manual = True
    proto, tr = h.connect()
    proto.dataReceived(b"".join(frame(b"m%d" % i) for i in range(5)))
    assert h.seen == [b"m0", b"m1"]
    assert tr.producerState == "paused"
    proto.dataReceived(frame(b"m5"))  # a read already under way is kept too
    assert len(h.seen) == 2
    h.waiting[0].callback(b"a0")
    assert h.seen == [b"m0", b"m1", b"m2"]
    assert tr.producerState == "paused"
    for i in range(1, 6):
        h.waiting[i].callback(b"a%d" % i)
    assert h.seen == [b"m%d" % i for i in range(6)]
    assert tr.producerState == "producing"
    assert tr.value() == b"".join(frame(b"a%d" % i) for i in range(6))
    assert proto.backlog == b""


def test_none_reply_closes_after_earlier_replies() -> None:
    """None (nothing stored, no answer) closes the connection after the earlier answers are
    written (MLLP Release 2 (HL7 Transport Specification), §block format); later answers are
    dropped."""
    h = Harness()
    h.manual = True
    proto, tr = h.connect()
    proto.dataReceived(frame(b"a") + frame(b"b") + frame(b"c"))
    h.waiting[1].callback(None)
    h.waiting[2].callback(b"late")
    assert not tr.disconnecting
    h.waiting[0].callback(b"first")
    assert tr.value() == frame(b"first")
    assert tr.disconnecting
    proto.dataReceived(frame(b"d"))
    assert len(h.seen) == 3  # nothing more is read


def test_empty_reply_keeps_the_connection() -> None:
    """b'' (MSH-15 says no ACK) writes nothing and keeps the connection."""
    h = Harness()
    h.manual = True
    proto, tr = h.connect()
    proto.dataReceived(frame(MSG))
    h.waiting[0].callback(b"")
    assert tr.value() == b"" and not tr.disconnecting


def test_failing_handler_closes_without_answer() -> None:
    """A handler that raises (or fails its Deferred) is answered with nothing: close."""
    h = Harness()

    def boom(data: bytes, peer: str) -> Any:
        raise RuntimeError("PHI must not be logged")

    h.factory.handle = boom
    proto, tr = h.connect()
    proto.dataReceived(frame(MSG))
    assert tr.value() == b""
    assert tr.disconnecting
    assert h.factory.stats["handler_errors"] == 1


def test_coroutine_handler_is_awaited() -> None:
    """An async handler's result is the reply (MLLP Release 2 (HL7 Transport Specification),
    §block format)."""
    h = Harness()

    async def handle(data: bytes, peer: str) -> bytes:
        return b"A:" + data

    h.factory.handle = handle
    proto, tr = h.connect()
    proto.dataReceived(frame(b"x"))
    assert tr.value() == frame(b"A:x")


def test_max_connections_refuses_the_extra_connection() -> None:
    """The connection past max_connections is closed at once and counted; once one closes,
    a new one is accepted."""
    h = Harness(max_conn=2)
    conns = [h.connect() for _ in range(3)]
    assert [t.disconnecting for _, t in conns] == [False, False, True]
    assert h.factory.stats["refused_connections"] == 1
    conns[2][0].dataReceived(frame(MSG))
    assert h.seen == []
    for p, _ in conns[1:]:
        p.connectionLost(None)
    assert h.factory.connections == 1
    p4, t4 = h.connect()
    assert not t4.disconnecting
    p4.dataReceived(frame(MSG))
    assert h.seen == [MSG]


def test_minimal_nak_from_an_msh_prefix() -> None:
    """The AR echoes MSH-10 in MSA-2 and swaps sender and receiver; with no MSH, MSA-2 is
    empty."""
    nak = minimal_nak(MSG[:40] + b"...", "too big | really")
    segs = nak.rstrip(b"\r").split(b"\r")
    msh = segs[0].split(b"|")
    assert msh[:6] == [b"MSH", b"^~\\&", b"RECV", b"RFAC", b"SEND", b"FAC"]
    full = minimal_nak(MSG, "too big")
    assert full.split(b"\r")[1] == b"MSA|AR|X1"
    assert full.split(b"\r")[0].split(b"|")[8:12][0] == b"ACK"
    assert full.split(b"\r")[0].split(b"|")[11] == b"2.5.1"
    assert b"too big \\F\\ really" in nak
    assert minimal_nak(b"\x00garbage", "x").split(b"\r")[1] == b"MSA|AR|"


def test_oversize_nak_is_an_ar_with_the_control_id() -> None:
    """The default oversize reply is an AR answering MSH-10."""
    nak = oversize_nak(MSG + b"x" * 100, 100)
    assert b"\rMSA|AR|X1" in nak


def test_spec_check_rejects_client_ca_without_ssl() -> None:
    """client_ca without an ssl: listen string is a configuration error; ssl: needs a key."""

    def parse(text: str) -> tuple[Any, list[str]]:
        ctx = Context("c.yaml", env={}, registry=REGISTRY)
        cfg = MLLP_SPEC.parse(yaml.compose(text), ctx, "source.mllp")
        return cfg, [str(e) for e in ctx.errors]

    _, errs = parse("listen: tcp:2575\nclient_ca: ca.pem\n")
    assert any("client_ca" in e and "ssl:" in e for e in errs)
    _, errs = parse("listen: ssl:2576\n")
    assert any("privateKey" in e for e in errs)
    cfg, errs = parse("listen: ssl:2576:privateKey=k.pem:certKey=c.pem\nclient_ca: ca.pem\n")
    assert errs == [] and cfg.client_ca == "ca.pem"
    cfg, errs = parse("listen: tcp:2575\n")
    assert errs == [] and cfg.max_frame == 10 * 1024 * 1024 and cfg.idle_timeout == 300.0
    assert cfg.max_connections == 200
