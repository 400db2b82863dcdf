"""The durable floors bench/mllp_ack.py and bench/fhir_http.py measure Wharf against keep the
promise they stand for (bench/baselines.py): an answer only for a message in a committed row, a
resent message stored once, bad FHIR refused with an OperationOutcome. A floor that dropped
any of it would make the benchmarks' 'of floor' figures flatter Wharf. Speed is not asserted."""

from __future__ import annotations

import hashlib
import json
import socket
import sqlite3
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from baselines import start_durable_fhir, start_durable_mllp  # noqa: E402
from ledger_flow import free_port, wait_port  # noqa: E402


def frame(control: str) -> bytes:
    return (
        b"\x0bMSH|^~\\&|POU|GENHOSP|WHARF|GENHOSP|20260115103000||DFT^P03^DFT_P03|"
        + control.encode()
        + b"|P|2.5.1\rEVN|P03|20260115103000\r\x1c\x0d"
    )


EB = b"\x1c\x0d"


def acks(sock: socket.socket, n: int) -> list[bytes]:
    got = b""
    while got.count(EB) < n:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {got.count(EB)} of {n} ACKs"
        got += chunk
    return got.split(EB)[:n]


@pytest.fixture(params=["thread", "reactor"])
def mllp_floor(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    proc, port = start_durable_mllp(tmp_path, request.param)
    try:
        yield port, next(tmp_path.glob("floor-*/floor.db"))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_mllp_floor_acks_each_frame_after_storing_it_once(mllp_floor: tuple[int, Path]) -> None:
    port, db = mllp_floor
    controls = [f"F{i}" for i in range(40)]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"".join(frame(c) for c in controls))  # pipelined: one group commit or more
        answered = acks(sock, len(controls))
        sock.sendall(frame("F7"))  # a resend
        answered += acks(sock, 1)
    assert [a.rsplit(b"|", 1)[1].strip() for a in answered] == [
        c.encode() for c in [*controls, "F7"]
    ]
    assert all(b"MSA|AA|" in a for a in answered)
    with sqlite3.connect(db) as conn:  # every ACKed frame is in a committed row, once
        rows = conn.execute("SELECT control, body FROM m ORDER BY id").fetchall()
    assert [r[0] for r in rows] == [c.encode() for c in controls]
    assert all(r[1].startswith(b"MSH|") for r in rows)


def test_fhir_floor_validates_stores_and_refuses(tmp_path: Path) -> None:
    port = free_port()
    proc = start_durable_fhir(tmp_path, port, hashlib.sha256(b"secret").hexdigest())
    try:
        wait_port(port)
        url = f"http://127.0.0.1:{port}/fhir/R5/SupplyDelivery"
        good = (ROOT / "samples/fhir/r5_supplydelivery_code.json").read_bytes()

        def post(body: bytes, token: str = "secret") -> tuple[int, dict]:
            req = urllib.request.Request(
                url, data=body, headers={"Authorization": f"Bearer {token}"}
            )
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    return resp.status, json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())

        status, doc = post(good)
        assert (status, doc["resourceType"]) == (201, "SupplyDelivery")
        wrong = json.loads(good)
        wrong["suppliedItem"] = [{"quantity": "two trays"}]  # a Quantity is an object
        status, doc = post(json.dumps(wrong).encode())
        assert (status, doc["resourceType"]) == (400, "OperationOutcome")
        status, doc = post(b"{not json")
        assert (status, doc["resourceType"]) == (400, "OperationOutcome")
        status, doc = post(good, token="wrong")
        assert (status, doc["resourceType"]) == (401, "OperationOutcome")
        db = next(tmp_path.glob("floor-fhir-*/floor.db"))
        with sqlite3.connect(db) as conn:
            stored = conn.execute("SELECT body FROM r").fetchall()
        assert stored == [(good,)]  # only the valid one, answered after its commit
    finally:
        proc.terminate()
        proc.wait(timeout=30)
