"""The usage-to-charge flow under a crash and under resends, against the stateful sandbox:
``wharf run`` and ``wharf sandbox`` as real processes, DFT^P03 over MLLP to ``usage_ledger``.

After a ``kill -9`` mid-flow and a restart, and after every message is sent again with new
MSH-10s, the ledger and the sandbox agree: per item and location the on-hand is equal, and per
encounter the charges equal the chargeable usage — every effect exactly once.
"""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest

from engine.codecs.hl7v2 import tokenize
from engine.sandbox.state import SandboxState
from tests.integration.helpers import Processes, free_port, port_open, wait_until, wharf_env

ROOT = Path(__file__).resolve().parents[2]
KNEE = (ROOT / "samples/hl7/dft_p03_knee_and_sutures.hl7").read_bytes()
SB, EB = b"\x0b", b"\x1c\x0d"


def message(n: int, resend: int = 0) -> tuple[str, bytes]:
    """Message ``n``: its own MSH-10 (new on each resend), its own FT1-2 line ids and
    encounter (the same on each resend: the business keys)."""
    cid = f"LC{n:05d}R{resend}"
    raw = (
        KNEE.replace(b"POU-000124", cid.encode())
        .replace(b"CU-7f3a9d", f"LC-{n}-A".encode())
        .replace(b"CU-7f3a9e", f"LC-{n}-B".encode())
        .replace(b"ENC-112233", f"ENC-LC{n % 7}".encode())
    )
    return cid, raw


def send(sock: socket.socket, raw: bytes) -> bytes:
    sock.sendall(SB + raw + EB)
    buf = b""
    while EB not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf.split(EB)[0].lstrip(SB)


def sender(port: int, items: list[tuple[int, int]], acked: set[int], lost: set[int]) -> None:
    sock = None
    for n, resend in items:
        try:
            sock = sock or socket.create_connection(("127.0.0.1", port), timeout=5)
            if tokenize(send(sock, message(n, resend)[1])).get("MSA-1") in ("AA", "CA"):
                acked.add(n)
                continue
        except OSError:
            sock = None
        lost.add(n)


def ledger_state(db: Path) -> tuple[dict[tuple[str, str], Decimal], Counter[str], int]:
    conn = sqlite3.connect(db)
    try:
        onhand = {
            (r[0], r[1]): Decimal(r[2])
            for r in conn.execute("SELECT location_id, item_id, quantity FROM onhand")
        }
        charges = Counter(r[0] for r in conn.execute("SELECT encounter FROM charges"))
        events = conn.execute("SELECT COUNT(*) FROM consumption_events").fetchone()[0]
    finally:
        conn.close()
    return onhand, charges, events


def settled(db: Path) -> bool:
    conn = sqlite3.connect(db)
    try:
        open_messages = conn.execute(
            "SELECT COUNT(*) FROM messages WHERE channel = 'usage_ledger' AND status IN ('received', 'queued')"
        ).fetchone()[0]
        open_deliveries = conn.execute(
            "SELECT COUNT(*) FROM outbox WHERE channel = 'usage_ledger' AND status IN ('pending', 'inflight')"
        ).fetchone()[0]
    finally:
        conn.close()
    return open_messages == 0 and open_deliveries == 0


@pytest.mark.integration
def test_crash_and_resends_leave_ledger_and_sandbox_in_agreement(
    project_dir: Path, tmp_path: Path
) -> None:
    """kill -9 while 150 two-line messages flow, restart, resend what got no ACK, then resend
    everything with new MSH-10s: per item and location the sandbox's on-hand equals the
    ledger's, and per encounter its charges equal the ledger's chargeable events."""
    http_port, billing_port = free_port(), free_port()
    env = wharf_env(tmp_path, http_port)
    env["BILLING_PORT"] = str(billing_port)
    ledger_port = int(env["LEDGER_MLLP_PORT"])
    db = Path(env["WHARF_DB"])
    state_path = tmp_path / "sandbox.db"
    count = 150
    with Processes(tmp_path) as procs:
        procs.sandbox(http_port, billing_port, state_path, project_dir / "mappings/onhand.csv", env)
        first = procs.wharf(project_dir, env)
        wait_until(lambda: port_open(ledger_port), 30, "usage_ledger listener")
        acked: set[int] = set()
        lost: set[int] = set()
        work = [(n, 0) for n in range(count)]
        threads = [
            threading.Thread(target=sender, args=(ledger_port, work[i::4], acked, lost))
            for i in range(4)
        ]
        for t in threads:
            t.start()
        wait_until(lambda: len(acked) >= 40, 60, "40 ACKs before the crash")
        first.kill9()
        for t in threads:
            t.join(60)
        procs.wharf(project_dir, env, name="wharf2")
        wait_until(lambda: port_open(ledger_port), 30, "restarted listener")
        missing = sorted(set(range(count)) - acked)
        again: set[int] = set()
        sender(ledger_port, [(n, 0) for n in missing], again, set())
        assert set(missing) <= again
        # Every message once more, each with a new MSH-10: no business key is new.
        resent: set[int] = set()
        sender(ledger_port, [(n, 1) for n in range(count)], resent, set())
        assert len(resent) == count
        wait_until(lambda: settled(db), 90, "ledger deliveries done", procs=[procs.procs[-1]])
        time.sleep(0.5)
        onhand, charges, events = ledger_state(db)
        state = SandboxState(state_path)
        try:
            assert events == 2 * count  # two FT1 lines per message, each booked once
            for (location, item), quantity in onhand.items():
                assert state.on_hand(location, item) == quantity, (location, item)
            sandbox_charges = Counter(c["encounter"] for c in state.charges())
            assert sandbox_charges == charges
            assert sum(charges.values()) == count  # the knee implant is chargeable, sutures not
        finally:
            state.db.close()
        print(
            f"\nledger crash: {len(acked)} ACKed before the kill, {len(missing)} resent after "
            f"restart, {count} resent with new MSH-10s; {events} events, "
            f"{sum(charges.values())} charges, on-hand equal for {len(onhand)} item/location pairs"
        )
