"""What keeps the store's paths flat as it grows (bench/store_growth.py measures the rates):
ids that sort by time, an index for a message's work items, fresh planner statistics and
checkpoints off the committing thread. Behaviour and query plans are asserted, never times."""

from __future__ import annotations

import sqlite3
import time
import uuid
from pathlib import Path

import pytest

from engine import model
from engine.model import Inbound
from engine.store import SqliteStore
from engine.store import sqlite as sqlite_module

T0 = 1_700_000_000.0


def inbound(n: int) -> Inbound:
    return Inbound(
        channel="feed",
        source="mllp",
        raw=f"MSH|{n}".encode(),
        content_type="x-application/hl7-v2+er7",
        received_at=T0,
    )


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    s = SqliteStore(tmp_path / "wharf.db").open()
    yield s
    s.close()


def test_message_ids_are_uuid7_and_sort_in_the_order_they_were_made() -> None:
    before_ms = time.time_ns() // 1_000_000
    ids = [model.new_id() for _ in range(2000)]
    after_ms = time.time_ns() // 1_000_000
    assert len(set(ids)) == 2000
    parsed = [uuid.UUID(i) for i in ids]
    assert {u.version for u in parsed} == {7}
    assert {u.variant for u in parsed} == {uuid.RFC_4122}
    # the first 48 bits are the Unix milliseconds: never decreasing, and taken while they were
    # made (an order of clock readings, not a duration)
    millis = [u.int >> 80 for u in parsed]
    assert millis == sorted(millis)
    assert before_ms <= millis[0] and millis[-1] <= after_ms
    # ids made in a later millisecond sort after every id made before it
    later = model.new_id()
    while uuid.UUID(later).int >> 80 == millis[-1]:
        later = model.new_id()
    assert later > max(ids)


def test_resolving_a_messages_work_items_uses_the_index_not_a_walk(store: SqliteStore) -> None:
    with store.reading() as tx:
        plan = tx.connection.execute(
            "EXPLAIN QUERY PLAN UPDATE work_items SET status = 'resolved', updated_at = 1 "
            "WHERE kind = 'MISSING_MAPPING' AND message_id = 'm' AND status = 'open'"
        ).fetchall()
    assert any("idx_work_items_message" in row[-1] for row in plan), plan


def test_resolving_visits_only_the_messages_own_items(store: SqliteStore) -> None:
    """Counted in SQLite's own virtual-machine steps: resolving one message's item costs the
    same with 100 or with 5,000 other open items (a walk would grow 50-fold)."""
    ids = [r.message_id for r in store.ingest_batch([inbound(n) for n in range(2)], T0)]
    costs = []
    for others in (100, 5000):
        with store.transaction("fill") as tx:
            tx.connection.executemany(
                "INSERT INTO work_items (kind, subject, detail, status, message_id, "
                "correlation_id, created_at, updated_at) "
                "VALUES ('MISSING_MAPPING', ?, 'no mapping', 'open', ?, NULL, 0, 0)",
                [(f"cdm:{n}-{others}", f"other-{n}") for n in range(others - len(costs) * 100)],
            )
            tx.open_work_item("MISSING_MAPPING", "cdm:1", "no mapping", ids[0], ids[0], T0)
        steps = [0]

        def count(steps: list[int] = steps) -> int:
            steps[0] += 1
            return 0

        with store.transaction("resolve") as tx:
            tx.connection.set_progress_handler(count, 1)
            resolved = tx.resolve_work_items("MISSING_MAPPING", message_id=ids[0], now=T0)
            tx.connection.set_progress_handler(None, 1)
        assert resolved == 1
        costs.append(steps[0])
    assert costs[1] <= costs[0] * 2, costs


def test_open_gathers_planner_statistics(store: SqliteStore) -> None:
    store.ingest_batch([inbound(n) for n in range(50)], T0)
    store.optimize()
    with sqlite3.connect(store.path) as conn:
        tables = {row[0] for row in conn.execute("SELECT tbl FROM sqlite_stat1")}
    assert {"messages", "contents"} <= tables


def test_connections_keep_a_page_cache_big_enough_for_a_million_messages(
    store: SqliteStore,
) -> None:
    with store.reading() as tx:
        (size,) = tx.connection.execute("PRAGMA cache_size").fetchone()
    assert size == -sqlite_module.CACHE_KIB


def test_background_checkpoints_copy_the_wal_back_off_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_module, "CHECKPOINT_INTERVAL", 0.01)
    store = SqliteStore(tmp_path / "wharf.db", background_checkpoints=True).open()
    try:
        with store.reading() as tx:
            (backstop,) = tx.connection.execute("PRAGMA wal_autocheckpoint").fetchone()
        assert backstop == sqlite_module.BACKSTOP_PAGES  # the writer no longer every 1,000
        store.ingest_batch([inbound(n) for n in range(200)], T0)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            _busy, frames, copied = store.checkpoint("PASSIVE")
            if store.checkpoints and frames == copied:
                break
            time.sleep(0.01)
        assert store.checkpoints > 0
        assert frames == copied  # everything committed is in the database file
    finally:
        store.close()
    assert not any(t.name == "wharf-store-checkpoint" for t in threading_enumerate())
    # after close, a new connection sees every message (nothing lived only in memory)
    with sqlite3.connect(tmp_path / "wharf.db") as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 200


def test_a_store_without_background_checkpoints_starts_no_thread(store: SqliteStore) -> None:
    assert not any(t.name == "wharf-store-checkpoint" for t in threading_enumerate())
    with store.reading() as tx:
        (auto,) = tx.connection.execute("PRAGMA wal_autocheckpoint").fetchone()
    assert auto == 1000


def test_checkpoint_mode_is_checked(store: SqliteStore) -> None:
    with pytest.raises(ValueError, match="PASSIVE, FULL, RESTART or TRUNCATE"):
        store.checkpoint("SOMETIMES")


def threading_enumerate() -> list:
    import threading

    return threading.enumerate()
