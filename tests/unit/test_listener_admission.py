"""Who may hold a listener's connections (engine.net.admission), on the MLLP server factory:
allowlists, per-peer caps, fair shares of a full port, log lines that do not flood. With
StringTransport and Clock (no sockets); tests/integration/test_listener_admission.py holds the
same claims over real sockets."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from twisted.internet import task
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher

from engine.net.admission import Admission, peer_key
from engine.net.mllp import EB, SB, MLLPServerFactory
from engine.registry import REGISTRY
from engine.sources.mllp import MLLP_SPEC
from engine.spec import Context

MSG = b"MSH|^~\\&|SEND|FAC|RECV|RFAC|20260101||DFT^P03|X1|P|2.5.1\rPID|1\r"


class Harness:
    def __init__(self, **kw: Any) -> None:
        self.clock = task.Clock()
        self.seen: list[bytes] = []
        self.factory = MLLPServerFactory(
            self.handle, oversize_reply=lambda prefix: b"NAK", clock=self.clock, **kw
        )

    def handle(self, data: bytes, peer: str) -> bytes:
        self.seen.append(data)
        return b"ACK"

    def connect(self, host: str, port: int = 40000) -> tuple[Any, StringTransport]:
        addr = IPv6Address("TCP", host, port) if ":" in host else IPv4Address("TCP", host, port)
        proto = self.factory.buildProtocol(addr)
        transport = StringTransport(peerAddress=addr)
        proto.makeConnection(transport)
        return proto, transport


def open_(conns: list[tuple[Any, StringTransport]]) -> list[bool]:
    return [not (t.disconnecting or getattr(t, "aborted", False)) for _, t in conns]


def test_a_peer_gets_at_most_its_cap_and_other_peers_still_get_in() -> None:
    """max_connections_per_peer: the attacker's third connection is closed at once (and
    counted), while another address connects and is answered."""
    h = Harness(max_connections=10, max_connections_per_peer=2)
    attacker = [h.connect("127.0.0.2", 1000 + i) for i in range(5)]
    assert open_(attacker) == [True, True, False, False, False]
    assert h.factory.stats["refused_connections"] == 3
    assert h.factory.admission.stats["refused_per_peer"] == 3
    proto, tr = h.connect("127.0.0.1")
    proto.dataReceived(SB + MSG + EB)
    assert tr.value() == SB + b"ACK" + EB
    attacker[0][0].connectionLost(None)  # one closes: the attacker may open one again
    assert open_([h.connect("127.0.0.2", 2000)]) == [True]


def test_a_full_port_makes_room_for_a_peer_that_holds_less() -> None:
    """With every connection held by one address (its cap as large as the port), a sender at
    another address still gets in: the heaviest peer's idle connection, the oldest first, is
    closed for it; the attacker's next connection is refused, not given another's place."""
    h = Harness(max_connections=4, max_connections_per_peer=4)
    attacker = [h.connect("127.0.0.2", 1000 + i) for i in range(4)]
    attacker[0][0].dataReceived(SB + b"MSH|")  # receiving: closed after the idle ones
    proto, tr = h.connect("127.0.0.1")
    assert not tr.disconnecting
    assert attacker[1][1].disconnecting or attacker[1][1].disconnected  # the oldest idle one
    assert open_(attacker) == [True, False, True, True]
    assert h.factory.admission.stats["evicted"] == 1
    proto.dataReceived(SB + MSG + EB)
    assert tr.value() == SB + b"ACK" + EB
    again = h.connect("127.0.0.2", 3000)
    assert open_([again]) == [False]
    assert h.factory.admission.stats["refused_full"] == 1


def test_a_connection_awaiting_its_answer_is_never_evicted() -> None:
    """Connections whose frame waits for the store are not closed to make room: with all of
    them busy, the newcomer is refused instead."""
    h = Harness(max_connections=2, max_connections_per_peer=2)
    waiting: list[Any] = []

    def slow(data: bytes, peer: str) -> Any:
        from twisted.internet import defer

        d: defer.Deferred = defer.Deferred()
        waiting.append(d)
        return d

    h.factory.handle = slow
    busy = [h.connect("127.0.0.2", 1000 + i) for i in range(2)]
    for p, _ in busy:
        p.dataReceived(SB + MSG + EB)
    newcomer = h.connect("127.0.0.1")
    assert open_(busy) == [True, True]
    assert open_([newcomer]) == [False]
    waiting[0].callback(b"ACK")
    assert busy[0][1].value() == SB + b"ACK" + EB


def test_the_allow_list_closes_other_senders_before_reading() -> None:
    """allow: only senders in the listed networks are kept; others are closed at once and
    nothing they send is handled."""
    h = Harness(allow=("10.20.0.0/16", "192.168.1.20/32"))
    ok = [h.connect("10.20.3.4"), h.connect("192.168.1.20")]
    other = h.connect("192.168.1.21")
    assert open_(ok) == [True, True]
    assert open_([other]) == [False]
    other[0].dataReceived(SB + MSG + EB)
    assert h.seen == []
    assert h.factory.admission.stats["refused_not_allowed"] == 1


def test_an_ipv6_peer_is_counted_by_its_64_block() -> None:
    """A host picks addresses from its /64 at will: the cap counts the block; an IPv4-mapped
    address counts as the IPv4 address."""
    assert peer_key("2001:db8:1:2::5") == peer_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert peer_key("::ffff:10.0.0.1") == "10.0.0.1"
    assert peer_key(None) == "local"
    h = Harness(max_connections=10, max_connections_per_peer=2)
    conns = [h.connect(f"2001:db8:1:2::{i}") for i in range(1, 4)]
    assert open_(conns) == [True, True, False]


def test_refusals_are_logged_once_a_minute_per_peer() -> None:
    """1,000 refused connections from one address make one log line, naming the peer and the
    rule (never any traffic); a minute later the next line says how many were left out."""
    lines: list[str] = []

    def observe(event: dict) -> None:
        if event.get("log_namespace") == "wharf.net.admission":
            from twisted.logger import formatEvent

            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        h = Harness(max_connections=10, max_connections_per_peer=1)
        for i in range(1001):
            h.connect("127.0.0.2", 1000 + i)
        assert len(lines) == 1
        assert "127.0.0.2" in lines[0] and "cap per peer" in lines[0]
        h.clock.advance(61)
        h.connect("127.0.0.2", 9999)
        assert len(lines) == 2 and "999 more like it" in lines[1]
    finally:
        globalLogPublisher.removeObserver(observe)


def _parse(text: str) -> tuple[Any, Context]:
    ctx = Context("channels/x.yaml", {}, REGISTRY)
    return MLLP_SPEC.parse(yaml.compose(text), ctx, "source.mllp"), ctx


def test_the_spec_takes_networks_and_names_a_bad_one() -> None:
    """allow takes CIDRs and addresses; a network with host bits set is an error at its line
    with the network meant; garbage says what was expected."""
    cfg, ctx = _parse("listen: tcp:2575\nallow: [10.20.0.0/16, 192.168.1.20]\n")
    assert ctx.errors == []
    assert cfg.allow == ("10.20.0.0/16", "192.168.1.20/32")
    assert cfg.max_connections_per_peer == 50 and cfg.frame_timeout == 30.0
    _, ctx = _parse("listen: tcp:2575\nallow:\n  - 10.20.3.0/16\n  - banana\n")
    shown = [str(e) for e in ctx.errors]
    assert len(shown) == 2
    assert shown[0].startswith("channels/x.yaml:3:5: source.mllp.allow[0]")
    assert "did you mean '10.20.0.0/16'?" in shown[0]
    assert shown[1].startswith("channels/x.yaml:4:5: source.mllp.allow[1]")
    assert "CIDR" in shown[1]


def test_a_per_peer_cap_over_the_port_cap_is_an_error() -> None:
    """max_connections_per_peer above max_connections cannot mean anything: lint says so."""
    _, ctx = _parse("listen: tcp:2575\nmax_connections: 10\nmax_connections_per_peer: 50\n")
    assert [e.path for e in ctx.errors] == ["source.mllp.max_connections_per_peer"]
    assert "at most max_connections (10)" in str(ctx.errors[0])


@pytest.mark.parametrize("n", [1, 3])
def test_admission_counts_return_to_zero(n: int) -> None:
    """Every admitted connection is released when it closes (no leak of held slots)."""
    h = Harness(max_connections=5, max_connections_per_peer=5)
    conns = [h.connect("127.0.0.2", 1000 + i) for i in range(n)]
    for p, _ in conns:
        p.connectionLost(None)
    assert h.factory.admission.open == 0 and h.factory.connections == 0
    assert isinstance(h.factory.admission, Admission)
