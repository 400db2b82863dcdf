"""Admission and deadlines of the HTTP listeners without sockets (StringTransport and
MemoryReactorClock): the ``http`` source (the ERP webhooks) and the ``fhir_http`` site.

A connection over a peer's cap gets 503 and is closed; a sender outside ``allow`` is closed
unanswered; a full port closes the heaviest peer's idle connection for a newcomer from another
address; the ``http`` source cuts a request not complete within ``request_timeout`` of its first
byte with 408, however steadily it trickles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from engine.registry import REGISTRY
from engine.sources import IngestOutcome
from engine.sources.fhir_http import FHIR_HTTP_SPEC, FhirSite
from engine.sources.http_post import HTTP_SPEC, HttpPostSource
from engine.spec import Context


def parse(spec: Any, values: dict[str, Any]) -> Any:
    ctx = Context("t.yaml", env={}, registry=REGISTRY)
    config = spec.parse(yaml.compose(yaml.safe_dump(values)), ctx, "source")
    assert not ctx.errors, [str(e) for e in ctx.errors]
    return config


class Post:
    """An ``http`` source on a MemoryReactorClock; connections are StringTransports."""

    def __init__(self, **values: Any) -> None:
        self.clock = MemoryReactorClock()
        self.seen: list[bytes] = []
        options = parse(HTTP_SPEC, {"listen": "tcp:0", "path": "/in", **values})
        self.source = HttpPostSource(
            options, reactor=self.clock, channel="po", base_dir=Path("."), ingest=self.ingest
        )
        self.n = 0

    async def ingest(self, raw: bytes, peer: str) -> IngestOutcome:
        self.seen.append(raw)
        return IngestOutcome("stored", message_id="m1")

    def connect(self, host: str = "127.0.0.1") -> tuple[Any, StringTransport]:
        self.n += 1
        addr = IPv4Address("TCP", host, 40000 + self.n)
        proto = self.source.site.buildProtocol(addr)
        transport = StringTransport(peerAddress=addr)
        proto.makeConnection(transport)
        return proto, transport


def status(transport: StringTransport) -> int:
    return int(transport.value().split(b" ", 2)[1])


POST = b"POST /in HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"


def test_a_request_trickled_past_request_timeout_gets_408() -> None:
    """A byte a second keeps twisted's idle timer happy; the deadline from the first byte does
    not: at request_timeout the sender gets 408 and is closed, nothing ingested."""
    h = Post(request_timeout="5s", timeout="30s")
    proto, t = h.connect()
    for i in range(4):
        proto.dataReceived(POST[i : i + 1])
        h.clock.advance(1)
    assert t.value() == b""
    h.clock.advance(1.01)
    assert status(t) == 408 and b"within 5.0s" in t.value()
    assert t.disconnecting and h.seen == []
    assert h.source.site.stats["request_timeouts"] == 1


def test_a_whole_request_is_answered_and_its_deadline_cleared() -> None:
    h = Post(request_timeout="5s")
    proto, t = h.connect()
    proto.dataReceived(POST)
    assert status(t) == 202 and h.seen == [b"{}"]
    h.clock.advance(10)  # no 408 after the answer
    assert b"408" not in t.value()


def test_the_webhook_caps_each_peer_and_keeps_room_for_others() -> None:
    """Per peer: the third connection from 127.0.0.2 gets 503 and is closed; 127.0.0.1 gets
    in and is answered."""
    h = Post(max_connections=10, max_connections_per_peer=2)
    conns = [h.connect("127.0.0.2") for _ in range(3)]
    assert [t.value() for _, t in conns[:2]] == [b"", b""]
    assert status(conns[2][1]) == 503 and conns[2][1].disconnecting
    assert b"Retry-After: 5" in conns[2][1].value()
    proto, t = h.connect("127.0.0.1")
    proto.dataReceived(POST)
    assert status(t) == 202


def test_a_full_webhook_port_evicts_the_heaviest_peers_idle_connection() -> None:
    h = Post(max_connections=3, max_connections_per_peer=3)
    attacker = [h.connect("127.0.0.2") for _ in range(3)]
    attacker[0][0].dataReceived(POST[:10])  # receiving: kept over the idle ones
    proto, t = h.connect("127.0.0.1")
    assert t.value() == b""
    assert [tr.disconnected for _, tr in attacker] == [False, True, False]
    proto.dataReceived(POST)
    assert status(t) == 202
    assert h.source.site.stats["evicted"] == 1


def test_a_sender_outside_allow_is_closed_unanswered() -> None:
    h = Post(allow=["10.0.0.0/8"])
    proto, t = h.connect("192.168.1.9")
    assert t.value() == b"" and t.disconnected
    proto.dataReceived(POST)
    assert h.seen == []
    proto, t = h.connect("10.1.2.3")
    proto.dataReceived(POST)
    assert status(t) == 202


class Fhir:
    def __init__(self, **values: Any) -> None:
        self.clock = MemoryReactorClock()
        options = parse(
            FHIR_HTTP_SPEC, {"listen": "tcp:0", "base": "/fhir/R5", "auth": "none", **values}
        )
        self.site = FhirSite(options, self.clock)
        self.n = 0

    def connect(self, host: str) -> tuple[Any, StringTransport]:
        self.n += 1
        addr = IPv4Address("TCP", host, 40000 + self.n)
        proto = self.site.buildProtocol(addr)
        transport = StringTransport(peerAddress=addr)
        proto.makeConnection(transport)
        return proto, transport


def test_the_fhir_port_caps_each_peer_and_evicts_for_another() -> None:
    """Per peer cap: 503 with Retry-After; a full port: the heaviest peer's idle connection
    is closed for a newcomer; allow: a stranger is closed unanswered."""
    f = Fhir(max_connections=4, max_connections_per_peer=3)
    attacker = [f.connect("127.0.0.2") for _ in range(4)]
    assert [t.value() == b"" for _, t in attacker] == [True, True, True, False]
    assert status(attacker[3][1]) == 503 and b"Retry-After: 5" in attacker[3][1].value()
    f.connect("127.0.0.3")  # the port is now full (3 + 1)
    _, t = f.connect("127.0.0.1")
    assert t.value() == b"" and not t.disconnecting
    assert [tr.disconnected for _, tr in attacker[:3]] == [True, False, False]
    assert f.site.stats["evicted"] == 1
    g = Fhir(allow=["10.0.0.0/8"])
    _, t = g.connect("192.168.1.9")
    assert t.value() == b"" and t.disconnected


FHIR_CHANNEL = """\
source:
  fhir_http:
    listen: tcp:8090
    base: /fhir/{base}
    auth: none
    allow: [{allow}]
codec:
  fhir: {{version: R5, resources: [SupplyDelivery]}}
"""


def test_channels_sharing_a_fhir_port_must_agree_on_its_admission(tmp_path: Path) -> None:
    """allow (like max_connections_per_peer) is a setting of the port: two channels on one
    listen string with different allow lists are a lint error naming both."""
    from engine.config.project import load_project
    from engine.errors import LintFailed

    (tmp_path / "channels").mkdir()
    (tmp_path / "channels/a.yaml").write_text(FHIR_CHANNEL.format(base="A", allow="10.0.0.0/8"))
    (tmp_path / "channels/b.yaml").write_text(FHIR_CHANNEL.format(base="B", allow="10.1.0.0/16"))
    try:
        load_project(tmp_path, env={})
    except LintFailed as exc:
        errors = [str(e) for e in exc.errors]
    else:
        raise AssertionError("expected a lint error")
    assert any(
        "channels sharing tcp:8090 must agree on allow (channel 'a': ('10.0.0.0/8',), "
        "'b': ('10.1.0.0/16',))" in e
        for e in errors
    ), errors
