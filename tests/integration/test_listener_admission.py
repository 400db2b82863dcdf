"""Listeners under a connection flood, over real sockets against ``wharf run``: one address
(127.0.0.2; Linux routes all of 127/8 to lo) opens 1,000 connections to each listener and
holds them, trickling a byte now and then on MLLP; a legitimate sender at 127.0.0.1 is still
answered (AA over MLLP, 201 from the FHIR base, 202 from the ERP webhook), and the attacker's
connections past its share are closed. bench/listener_attack.py prints the same scenario's
figures.

The MLLP channel has a cap per peer as large as the port, so the attacker can fill the port:
the legitimate sender gets in because a full port makes room for a peer holding fewer
connections than the heaviest one. The FHIR and webhook listeners keep their cap per peer.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import selectors
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.sources.fhir_http.rest import token_sha256
from tests.integration.helpers import Processes, free_port, port_open, wait_until

pytestmark = pytest.mark.integration

SB, EB = b"\x0b", b"\x1c\x0d"
TOKEN = "admission-" + uuid.uuid4().hex
ATTACK = 1000

MLLP = """\
source:
  mllp:
    listen: tcp:${MLLP_PORT}:interface=127.0.0.1
    max_connections: 100
    max_connections_per_peer: 100
    frame_timeout: 60s
codec: {hl7v2: {}}
"""
FHIR = """\
source:
  fhir_http:
    listen: tcp:${FHIR_PORT}:interface=127.0.0.1
    base: /fhir/R5
    auth:
      tokens:
        - {name: pou, sha256: %s}
    max_connections: 200
    max_connections_per_peer: 20
    header_timeout: 30s
    request_timeout: 60s
codec:
  fhir: {version: R5, resources: [SupplyDelivery]}
"""
WEBHOOK = """\
source:
  http:
    listen: tcp:${HTTP_PORT}:interface=127.0.0.1
    path: /erp/purchase-orders
    max_connections: 100
    max_connections_per_peer: 10
    timeout: 60s
codec:
  json: {id_field: po_number}
"""


@pytest.fixture(scope="module")
def engine() -> Iterator[dict[str, int]]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 8192) if hard != resource.RLIM_INFINITY else 8192
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < ATTACK + 200:
        pytest.skip(f"needs {ATTACK + 200} open files (ulimit -n); the hard limit is {hard}")
    root = Path(tempfile.mkdtemp(prefix="wharf-admission-"))
    try:
        (root / "channels").mkdir()
        (root / "routes.yaml").write_text("store: var/wharf.db\nreload_interval: 0s\n")
        (root / "channels" / "mllp_in.yaml").write_text(MLLP)
        (root / "channels" / "fhir_in.yaml").write_text(FHIR % token_sha256(TOKEN))
        (root / "channels" / "po_in.yaml").write_text(WEBHOOK)
        ports = {"MLLP_PORT": free_port(), "FHIR_PORT": free_port(), "HTTP_PORT": free_port()}
        env = {**os.environ, **{k: str(v) for k, v in ports.items()}, "PYTHONUNBUFFERED": "1"}
        with Processes(root) as procs:
            proc = procs.wharf(root, env)
            for port in ports.values():
                wait_until(lambda p=port: port_open(p), 20, f"port {port}", procs=[proc])
            yield ports
    finally:
        shutil.rmtree(root, ignore_errors=True)


class Flood:
    """``n`` sockets from 127.0.0.2, opened at once and kept; ``trickle``: one byte of an MLLP
    frame that never ends, on every open socket, that often. Counts what the server closed."""

    def __init__(self, port: int, n: int, trickle: float = 0.0) -> None:
        self.port, self.n, self.trickle = port, n, trickle
        self.socks: dict[int, socket.socket] = {}
        self.closed_by_server = 0
        self.replies = b""
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Flood:
        self.sel = selectors.DefaultSelector()
        for _ in range(self.n):
            s = socket.socket()
            s.setblocking(False)
            s.bind(("127.0.0.2", 0))
            err = s.connect_ex(("127.0.0.1", self.port))
            assert err in (0, errno.EINPROGRESS), os.strerror(err)
            self.socks[s.fileno()] = s
            self.sel.register(s, selectors.EVENT_READ)
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(10)
        for s in self.socks.values():
            s.close()

    def _run(self) -> None:
        frame = SB + b"MSH|^~\\&|" + b"X" * 10000
        sent = 0
        next_byte = time.monotonic() + self.trickle
        while not self.stop.is_set():
            for key, _ in self.sel.select(timeout=0.05):
                s = key.fileobj
                try:
                    data = s.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if data:
                    self.replies += data[:200]
                    continue
                self.closed_by_server += 1
                self.sel.unregister(s)
                self.socks.pop(s.fileno(), None)
                s.close()
            if self.trickle and time.monotonic() >= next_byte:
                next_byte = time.monotonic() + self.trickle
                for s in list(self.socks.values()):
                    try:
                        s.send(frame[sent : sent + 1])
                    except OSError:
                        pass
                sent += 1

    @property
    def held(self) -> int:
        return len(self.socks)


def mllp_ack(port: int, control_id: str) -> bytes:
    msg = (
        "MSH|^~\\&|POU|GENHOSP|WHARF|GENHOSP|20260115103000||DFT^P03^DFT_P03|"
        f"{control_id}|P|2.5.1\rEVN|P03|20260115103000\rPID|1||MRN1^^^GENHOSP^MR||DOE^JANE\r"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(SB + msg + EB)
        got = b""
        while EB not in got:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    return got


def http_post(port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "Connection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(head.encode() + body)
        got = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    return got


def settle(flood: Flood, target: int, what: str) -> None:
    wait_until(lambda: flood.held <= target, 30, what)


def test_one_address_holding_every_mllp_connection_does_not_starve_another(
    engine: dict[str, int],
) -> None:
    """1,000 connections from 127.0.0.2 trickling a byte every 0.5 s: the port keeps 100 of
    them (its cap), the rest are closed; a sender at 127.0.0.1 then gets its AA on every one
    of five new connections: the first makes room by closing one of the attacker's (the
    attacker, at the port's cap, cannot take that place back), the others use that room."""
    port = engine["MLLP_PORT"]
    with Flood(port, ATTACK, trickle=0.5) as flood:
        settle(flood, 100, "the attacker's connections past the port's cap closed")
        time.sleep(1.0)  # a few trickled bytes on every held connection
        for i in range(5):
            ack = mllp_ack(port, f"LEGIT-{uuid.uuid4().hex[:8]}-{i}")
            assert b"MSA|AA|LEGIT-" in ack, ack[:300]
        wait_until(
            lambda: flood.closed_by_server == ATTACK - 99,
            30,
            "one of the attacker's held connections closed to make room",
        )
        assert flood.held == 99
        assert flood.replies == b""  # the attacker never got an answer


def test_one_address_cannot_take_the_fhir_port(engine: dict[str, int]) -> None:
    """1,000 idle connections from 127.0.0.2: 20 (its cap per peer) are kept, the others get
    503 and are closed; a FHIR client at 127.0.0.1 creates its SupplyDelivery (201)."""
    port = engine["FHIR_PORT"]
    doc = {
        "resourceType": "SupplyDelivery",
        "status": "completed",
        "identifier": [{"system": "urn:test", "value": uuid.uuid4().hex}],
        "patient": {"reference": "Patient/p1"},
    }
    with Flood(port, ATTACK) as flood:
        settle(flood, 20, "the attacker's connections past its cap closed")
        answer = http_post(
            port,
            "/fhir/R5/SupplyDelivery",
            json.dumps(doc).encode(),
            {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/fhir+json"},
        )
        assert answer.startswith(b"HTTP/1.1 201"), answer[:300]
        assert flood.held == 20
        assert b"HTTP/1.1 503" in flood.replies


def test_one_address_cannot_take_the_webhook_port(engine: dict[str, int]) -> None:
    """The ERP webhook (`http` source) had no connection cap at all: now 10 per peer; the
    ERP at 127.0.0.1 still gets its 202."""
    port = engine["HTTP_PORT"]
    with Flood(port, ATTACK) as flood:
        settle(flood, 10, "the attacker's connections past its cap closed")
        body = json.dumps({"po_number": f"PO-{uuid.uuid4().hex[:8]}", "lines": []}).encode()
        answer = http_post(port, "/erp/purchase-orders", body, {"Content-Type": "application/json"})
        assert answer.startswith(b"HTTP/1.1 202"), answer[:300]
        assert flood.held == 10
