"""X12 control numbers are durable and never handed out twice: monotonic per partner and kind,
kept across reopening the SQLite file and across a crash, unique under concurrent allocation,
wrapping 999999999 → 1 (DOMAIN §3.1). Also the outbound ack log and inbound duplicates."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from engine.domains.procurement import control
from engine.domains.procurement.control import (
    ControlNumbers,
    ack_status_for,
    allocate,
    allocate_envelope,
    last_allocated,
    overdue_acks,
    raise_floor,
    record_ack,
    record_inbound,
    record_outbound,
    record_ta1,
    seen_inbound,
)
from engine.domains.procurement.schema import SQLITE_MIGRATIONS
from engine.runtime.store import open_store

ROOT = Path(__file__).resolve().parents[2]


def new_db() -> Path:
    path = Path(tempfile.mkdtemp()) / "wharf.db"
    open_store(path).close()  # WAL + every migration, as the engine opens it
    return path


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=30.0)
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def test_migration_creates_the_tables() -> None:
    number = SQLITE_MIGRATIONS[-1][0]
    assert any("x12 control numbers" in description for _, description, _ in SQLITE_MIGRATIONS)
    conn = connect(new_db())
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"x12_control", "x12_outbound", "x12_inbound"} <= tables
    assert (
        conn.execute(
            "SELECT MAX(version) FROM component_versions WHERE component = 'procurement'"
        ).fetchone()[0]
        == number
    )


def test_allocation_is_monotonic_per_partner_and_kind() -> None:
    conn = connect(new_db())
    assert [allocate(conn, "acme", "isa13")[0] for _ in range(3)] == [1, 2, 3]
    assert allocate(conn, "acme", "isa13", 3) == [4, 5, 6]
    assert allocate(conn, "acme", "gs06") == [1]
    assert allocate(conn, "harbor", "isa13") == [1]
    assert last_allocated(conn, "acme", "isa13") == 6
    assert last_allocated(conn, "acme", "st02") == 0
    assert not conn.in_transaction  # committed by allocate itself


def test_envelope_numbers_come_in_one_call() -> None:
    conn = connect(new_db())
    assert allocate_envelope(conn, "acme") == ControlNumbers(1, 1, (1,))
    assert allocate_envelope(conn, "acme", sets=3) == ControlNumbers(2, 2, (2, 3, 4))


def test_numbers_survive_reopening_the_file() -> None:
    path = new_db()
    conn = connect(path)
    allocate(conn, "acme", "isa13", 41)
    conn.close()
    again = connect(path)
    assert allocate(again, "acme", "isa13") == [42]


CRASH = """
import os, sqlite3, sys
from engine.domains.procurement.control import allocate
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("PRAGMA synchronous=FULL")
print(allocate(conn, "acme", "isa13")[0], flush=True)
os._exit(9)  # die before writing or recording the document, without closing anything
"""


def test_crash_after_allocating_never_reuses_the_number() -> None:
    """Allocated, never recorded, process killed: the next allocation moves on (a gap)."""
    path = new_db()
    conn = connect(path)
    allocate(conn, "acme", "isa13", 6)
    conn.close()
    run = subprocess.run(
        [sys.executable, "-c", CRASH, str(path)], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 9, run.stderr
    assert run.stdout.strip() == "7"
    conn = connect(path)
    assert allocate(conn, "acme", "isa13") == [8]
    assert conn.execute("SELECT COUNT(*) FROM x12_outbound").fetchone()[0] == 0


def test_inside_a_transaction_the_numbers_go_with_it() -> None:
    """Allocated in the caller's transaction: committed or rolled back with the outbox row."""
    conn = connect(new_db())
    conn.execute("BEGIN IMMEDIATE")
    assert allocate(conn, "acme", "isa13") == [1]
    assert conn.in_transaction
    conn.execute("ROLLBACK")
    assert last_allocated(conn, "acme", "isa13") == 0
    conn.execute("BEGIN IMMEDIATE")
    assert allocate(conn, "acme", "isa13") == [1]
    conn.execute("COMMIT")
    assert allocate(conn, "acme", "isa13") == [2]


def test_two_threads_with_their_own_connections_get_distinct_numbers() -> None:
    path = new_db()
    got: list[list[int]] = [[], []]
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def work(slot: int) -> None:
        conn = connect(path)
        try:
            start.wait()
            for i in range(150):
                got[slot] += allocate(conn, "acme", "st02", 1 + i % 3)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    everything = got[0] + got[1]
    assert len(everything) == len(set(everything)) == 2 * 300
    assert sorted(everything) == list(range(1, 601))
    assert got[0] == sorted(got[0]) and got[1] == sorted(got[1])


def test_wrap_after_999999999_to_1() -> None:
    conn = connect(new_db())
    assert raise_floor(conn, "acme", "isa13", 999_999_997) == 999_999_997
    assert allocate(conn, "acme", "isa13", 4) == [999_999_998, 999_999_999, 1, 2]
    assert last_allocated(conn, "acme", "isa13") == 2


def test_raise_floor_never_lowers() -> None:
    conn = connect(new_db())
    allocate(conn, "acme", "gs06", 10)
    assert raise_floor(conn, "acme", "gs06", 5) == 10
    assert allocate(conn, "acme", "gs06") == [11]
    assert raise_floor(conn, "acme", "gs06", 500) == 500
    assert allocate(conn, "acme", "gs06") == [501]


def test_bad_arguments() -> None:
    conn = connect(new_db())
    with pytest.raises(
        ValueError, match=r"'kind' must be one of isa13, gs06, st02 \(got 'ISA13'\)"
    ):
        allocate(conn, "acme", "ISA13")
    with pytest.raises(ValueError, match=r"'n' must be an integer in 1..10000 \(got 0\)"):
        allocate(conn, "acme", "isa13", 0)
    assert last_allocated(conn, "acme", "isa13") == 0


def test_outbound_log_acks_and_overdue() -> None:
    conn = connect(new_db())
    a = allocate_envelope(conn, "acme")
    b = allocate_envelope(conn, "acme")
    c = allocate_envelope(conn, "acme")
    for numbers, po in ((a, "PO-1"), (b, "PO-2"), (c, "PO-3")):
        record_outbound(
            conn,
            partner="acme",
            numbers=numbers,
            document="850",
            business_key=po,
            sent_at=1000.0,
            ack_within=3600,
        )
    assert overdue_acks(conn, now=4599.0) == []
    assert [r.business_key for r in overdue_acks(conn, now=4600.0)] == ["PO-1", "PO-2", "PO-3"]
    got = record_ack(conn, "acme", b.gs06, ack_status_for("A"), ["AK9:A"], at=2000.0)
    assert got is not None and (got.business_key, got.ack_status) == ("PO-2", "accepted")
    assert got.ack_codes == ("AK9:A",) and got.ack_at == 2000.0 and got.st02 == b.st02
    ta1 = record_ta1(conn, "acme", c.isa13, "R", "025", at=2100.0)
    assert ta1 is not None and (ta1.ta1_status, ta1.ack_status) == ("R", "rejected")
    assert [r.business_key for r in overdue_acks(conn, now=9999.0)] == ["PO-1"]
    assert record_ack(conn, "acme", 999, "accepted") is None
    assert record_ack(conn, "harbor", a.gs06, "accepted") is None  # another partner's GS06


def test_ack_codes_map_to_statuses() -> None:
    assert [ack_status_for(c) for c in "AEPRMWX"] == [
        "accepted",
        "accepted",
        "partial",
        "rejected",
        "rejected",
        "rejected",
        "rejected",
    ]
    with pytest.raises(ValueError):
        ack_status_for("Q")


def test_inbound_duplicates_within_a_window() -> None:
    conn = connect(new_db())
    sender = ("ZZ", "ACMEMED        ")
    record_inbound(conn, sender, "000000042", "7", "0001", received_at=1000.0, message_id="m1")
    day = 86400.0
    assert seen_inbound(conn, ("ZZ", "ACMEMED"), 42, 7, 1, day, now=1000.0 + day - 1)
    assert seen_inbound(conn, sender, "000000042", None, None, day, now=2000.0)  # interchange
    assert not seen_inbound(conn, sender, 42, 7, 2, day, now=2000.0)  # another set
    assert not seen_inbound(conn, sender, 43, None, None, day, now=2000.0)
    assert not seen_inbound(conn, ("ZZ", "HARBOR"), 42, None, None, day, now=2000.0)
    assert not seen_inbound(conn, sender, 42, 7, 1, day, now=1000.0 + day + 1)  # window passed


def test_inbound_receiver_narrows_the_key() -> None:
    conn = connect(new_db())
    record_inbound(conn, ("ZZ", "ACMEMED"), 5, 5, 1, receiver=("ZZ", "GENHOSP"), received_at=10.0)
    assert seen_inbound(conn, ("ZZ", "ACMEMED"), 5, 5, 1, 60, now=20.0, receiver=("ZZ", "GENHOSP"))
    assert not seen_inbound(
        conn, ("ZZ", "ACMEMED"), 5, 5, 1, 60, now=20.0, receiver=("ZZ", "NORTHCLINIC")
    )


def test_public_names_exist() -> None:
    for name in control.__all__:
        assert hasattr(control, name), name


def test_prune_inbound_keeps_the_window() -> None:
    conn = connect(new_db())
    record_inbound(conn, ("ZZ", "A"), 1, 1, 1, received_at=100.0)
    record_inbound(conn, ("ZZ", "A"), 2, 2, 1, received_at=900.0)
    assert control.prune_inbound(conn, older_than=500.0, now=1000.0) == 1
    assert not seen_inbound(conn, ("ZZ", "A"), 1, None, None, 10_000, now=1000.0)
    assert seen_inbound(conn, ("ZZ", "A"), 2, None, None, 10_000, now=1000.0)
