"""SqliteStore against real SQLite files under tmp_path."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from engine import model
from engine.errors import StoreError
from engine.model import Inbound, Outbound
from engine.store import SqliteStore, make_store
from engine.store.migrations import LATEST_VERSION, MIGRATIONS, apply_migrations
from engine.store.sqlite import PRUNE_GIVE_BACK, PruneBatches

T0 = 1_700_000_000.0


@pytest.fixture
def store(store_location: Path | str) -> SqliteStore:
    """The store under test: SQLite, then PostgreSQL (tests/conftest.py)."""
    s = make_store(store_location).open()
    yield s
    s.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> SqliteStore:
    """For what only SQLite has (its file, its pragmas)."""
    s = SqliteStore(tmp_path / "data" / "wharf.db").open()
    yield s
    s.close()


def inbound(raw: bytes = b"MSH|1", **kw: object) -> Inbound:
    fields: dict[str, object] = {
        "channel": "adt",
        "source": "mllp",
        "raw": raw,
        "content_type": "application/hl7-v2",
        "received_at": T0,
    }
    fields.update(kw)
    return Inbound(**fields)  # type: ignore[arg-type]


def store_one(store: SqliteStore, raw: bytes = b"MSH|1", now: float = T0, **kw: object) -> str:
    (result,) = store.ingest_batch([inbound(raw, received_at=now, **kw)], now)
    return result.message_id


def queued_message(
    store: SqliteStore, outbound: list[Outbound], raw: bytes = b"MSH|1", now: float = T0
) -> str:
    message_id = store_one(store, raw, now)
    store.finish_processing(message_id, status=model.QUEUED, now=now, outbound=outbound)
    return message_id


def raw_sql(store: SqliteStore, sql: str, params: tuple = ()) -> list[tuple]:
    """What is committed, read outside the store's API (SQLite: a connection of its own)."""
    if store.dialect != "sqlite":
        return [tuple(row) for row in store._query("raw_sql", sql, params)]
    with sqlite3.connect(store.path) as conn:
        return conn.execute(sql, params).fetchall()


def drop_trigger(store: SqliteStore, name: str) -> None:
    """Someone with the database goes around the audit's trigger."""
    if store.dialect == "sqlite":
        store._conn().execute(f"DROP TRIGGER {name}")
    else:
        store._conn().execute(f"ALTER TABLE audit DISABLE TRIGGER {name}")


# ---------------------------------------------------------------------- open / migrations


def test_open_creates_directory_and_sets_pragmas(tmp_path: Path) -> None:
    """open() makes the parent dir, uses WAL, synchronous=FULL, foreign keys, latest schema."""
    path = tmp_path / "a" / "b" / "wharf.db"
    with SqliteStore(path) as s:
        conn = s._conn()
        assert path.exists()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 10000
        assert s.schema_version == LATEST_VERSION >= 2


def test_calls_before_open_raise_store_error(tmp_path: Path) -> None:
    """Using a store that was never opened fails with a StoreError that says what to do."""
    s = SqliteStore(tmp_path / "wharf.db")
    with pytest.raises(StoreError, match="not open"):
        s.get_message("x")


def test_migration_from_v1_keeps_rows_and_reaches_latest(tmp_path: Path) -> None:
    """A database built with only migration 1 is upgraded on open; its rows survive."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    assert apply_migrations(conn, target=1) == 1
    conn.execute(
        "INSERT INTO messages (id, channel, source, content_type, received_at, updated_at, "
        "sha256, size, status) VALUES ('m1', 'adt', 'mllp', 'x', 1.0, 1.0, 'abc', 3, 'received')"
    )
    conn.close()

    with SqliteStore(path) as s:
        assert s.schema_version == LATEST_VERSION
        row = s.get_message("m1")
        assert row is not None and row.status == "received"
        assert row.correlation_id == "m1"  # v3 backfilled it
        versions = raw_sql(s, "SELECT version FROM schema_version ORDER BY version")
        assert [v for (v,) in versions] == [m[0] for m in MIGRATIONS]
        assert raw_sql(s, "SELECT COUNT(*) FROM business_keys") == [(0,)]  # v2 table exists


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A file written by a newer Wharf (unknown schema version) is not opened."""
    path = tmp_path / "new.db"
    with SqliteStore(path):
        pass
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO schema_version VALUES (99, 'future', 0)")
    with pytest.raises(StoreError, match="version 99"):
        SqliteStore(path).open()


def test_failed_migration_rolls_back(tmp_path: Path) -> None:
    """A broken migration leaves no half-applied change and no version row."""
    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    broken = [*MIGRATIONS[:1], (2, "broken", ["CREATE TABLE t2 (a)", "NOT SQL"])]
    with pytest.raises(StoreError, match="v2 \\(broken\\)"):
        apply_migrations(conn, broken)
    assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone() == (1,)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "t2" not in tables


# ---------------------------------------------------------------------- ingest


def test_ingest_stores_message_raw_and_response(store: SqliteStore) -> None:
    """A new message is 'received' with its raw bytes, response, hash and own correlation id."""
    (result,) = store.ingest_batch([inbound(b"MSH|A", response=b"ACK|A", peer="10.0.0.1")], T0)
    assert result.outcome == "stored" and result.status == model.RECEIVED
    row = store.get_message(result.message_id)
    assert row is not None
    assert row.correlation_id == result.correlation_id == result.message_id
    assert row.sha256 == hashlib.sha256(b"MSH|A").hexdigest() and row.size == 5
    assert row.peer == "10.0.0.1"
    assert store.get_content(result.message_id, "raw") == b"MSH|A"
    assert store.get_content(result.message_id, "response") == b"ACK|A"
    assert store.received_ids(10) == [result.message_id]


def test_ingest_keeps_given_ids(store: SqliteStore) -> None:
    """Caller-supplied message and correlation ids are used as given."""
    (result,) = store.ingest_batch([inbound(message_id="m-1", correlation_id="c-1")], T0)
    assert (result.message_id, result.correlation_id) == ("m-1", "c-1")


def test_set_response_upserts(store: SqliteStore) -> None:
    """set_response stores the response stage and replaces an earlier one."""
    mid = store_one(store)
    store.set_response(mid, b"first")
    store.set_response(mid, b"second")
    assert store.get_content(mid, "response") == b"second"
    with pytest.raises(StoreError, match="no message"):
        store.set_response("nope", b"x")


def test_duplicate_within_window_returns_original(store: SqliteStore) -> None:
    """Same channel, dedup key and bytes inside the window: the original answers, nothing new."""
    first = store.ingest_batch([inbound(dedup_key="K1", dedup_window=60, response=b"AA")], T0)[0]
    dup = store.ingest_batch(
        [inbound(dedup_key="K1", dedup_window=60, received_at=T0 + 30)], T0 + 30
    )[0]
    assert dup.outcome == "duplicate"
    assert (dup.message_id, dup.status, dup.correlation_id) == (
        first.message_id,
        model.RECEIVED,
        first.correlation_id,
    )
    assert dup.response == b"AA"
    assert store.counts()["messages"] == {model.RECEIVED: 1}


def test_same_key_outside_window_is_new(store: SqliteStore) -> None:
    """A repeat after the window has passed is stored as a new message."""
    first = store.ingest_batch([inbound(dedup_key="K1", dedup_window=60)], T0)[0]
    later = store.ingest_batch(
        [inbound(dedup_key="K1", dedup_window=60, received_at=T0 + 61)], T0 + 61
    )[0]
    assert later.outcome == "stored" and later.message_id != first.message_id


def test_same_key_other_channel_is_new(store: SqliteStore) -> None:
    """Dedup keys are per channel."""
    store.ingest_batch([inbound(dedup_key="K1", dedup_window=60)], T0)
    other = store.ingest_batch([inbound(dedup_key="K1", dedup_window=60, channel="orm")], T0)[0]
    assert other.outcome == "stored"


def test_same_key_different_bytes_is_conflict(store: SqliteStore) -> None:
    """Same dedup key, other bytes: kept with status 'conflict' and never handed to the pipeline."""
    first = store.ingest_batch([inbound(b"one", dedup_key="K1", dedup_window=60)], T0)[0]
    clash = store.ingest_batch([inbound(b"two", dedup_key="K1", dedup_window=60)], T0 + 1)[0]
    assert clash.outcome == "conflict" and clash.status == model.CONFLICT
    assert clash.message_id != first.message_id
    assert store.get_content(clash.message_id, "raw") == b"two"
    assert store.received_ids(10) == [first.message_id]
    again = store.ingest_batch([inbound(b"one", dedup_key="K1", dedup_window=60)], T0 + 2)[0]
    assert again.outcome == "duplicate" and again.message_id == first.message_id


def test_duplicate_inside_one_batch(store: SqliteStore) -> None:
    """Dedup sees earlier items of the same batch: a repeated item is a duplicate of the first."""
    items = [
        inbound(b"same", dedup_key="K", dedup_window=10, response=b"ACK"),
        inbound(b"same", dedup_key="K", dedup_window=10),
        inbound(b"other", dedup_key="K", dedup_window=10),
    ]
    first, dup, clash = store.ingest_batch(items, T0)
    assert first.outcome == "stored"
    assert dup.outcome == "duplicate" and dup.message_id == first.message_id
    assert dup.response == b"ACK"
    assert clash.outcome == "conflict"


def test_batch_is_one_transaction(store: SqliteStore) -> None:
    """When one item of a batch cannot be stored, none of the batch is stored."""
    store_one(store, message_id="taken")
    with pytest.raises(StoreError, match="'taken' must be new"):
        store.ingest_batch([inbound(b"ok"), inbound(b"bad", message_id="taken")], T0)
    assert store.counts()["messages"] == {model.RECEIVED: 1}


class CountingConnection:
    """The store thread's connection, with every statement it is handed recorded."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.statements: list[str] = []

    def execute(self, sql: str, *args: Any) -> Any:
        self.statements.append(" ".join(sql.split()[:3]))
        return self.conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def test_an_ingest_batch_costs_five_statements_whatever_its_size(
    sqlite_store: SqliteStore,
) -> None:
    """A batch is stored with one duplicate lookup, one INSERT into messages and one into
    contents, whatever its size (it was four statements per message and a PRAGMA)."""
    store = sqlite_store
    store_one(store, b"warm")  # the connection is open and its sync level set
    counting = CountingConnection(store._conn())
    store._local.conn = counting
    items = [
        inbound(f"MSH|{n}".encode(), dedup_key=f"K{n}", dedup_window=60, response=b"ACK")
        for n in range(8)
    ]
    results = store.ingest_batch(items, T0)
    assert [r.outcome for r in results] == ["stored"] * 8
    assert counting.statements == [
        "BEGIN IMMEDIATE",
        "SELECT received_at, rowid,",
        "INSERT INTO messages",
        "INSERT INTO contents",
        "COMMIT",
    ]
    assert {store.get_content(r.message_id, "response") for r in results} == {b"ACK"}
    counting.statements.clear()
    assert [r.outcome for r in store.ingest_batch(items[:4], T0 + 1)] == ["duplicate"] * 4
    # each duplicate reads the answer it is given again; nothing written, nothing committed
    assert counting.statements == ["BEGIN IMMEDIATE", "SELECT received_at, rowid,"] + [
        "SELECT data FROM"
    ] * 4 + ["ROLLBACK"]


@pytest.mark.parametrize("size", [1, 3, 255, 256, 257, 600])
def test_ingest_batches_of_any_size_keep_order_and_dedup(store: SqliteStore, size: int) -> None:
    """Batches cut into chunks of 256, 128, ..., 1 rows: every item stored once, in order, each
    key's second copy a duplicate of its first, a changed copy a conflict."""
    items = [
        inbound(f"MSH|{n}".encode(), dedup_key=f"K{n % 200}", dedup_window=60) for n in range(size)
    ]
    results = store.ingest_batch(items, T0)
    seen: dict[str, str] = {}
    for n, result in enumerate(results):
        key = f"K{n % 200}"
        if key in seen:  # the same key, other bytes: a conflict
            assert result.outcome == "conflict", n
        else:
            assert result.outcome == "stored", n
            seen[key] = result.message_id
        assert store.get_content(result.message_id, "raw") == f"MSH|{n}".encode()
    again = store.ingest_batch(items[:1] * 2, T0 + 1)
    assert [r.outcome for r in again] == ["duplicate", "duplicate"]
    assert {r.message_id for r in again} == {seen["K0"]}


def test_a_duplicate_answers_for_the_newest_stored_copy(store: SqliteStore) -> None:
    """Outside the window the same bytes are stored again; inside both windows a resend is a
    duplicate of the newest copy (received_at, then insertion order)."""
    old = store_one(store, b"same", dedup_key="K", dedup_window=5, response=b"OLD")
    new = store.ingest_batch(
        [inbound(b"same", dedup_key="K", dedup_window=5, received_at=T0 + 10, response=b"NEW")],
        T0 + 10,
    )[0]
    assert new.outcome == "stored" and new.message_id != old
    (dup,) = store.ingest_batch([inbound(b"same", dedup_key="K", dedup_window=60)], T0 + 11)
    assert (dup.outcome, dup.message_id, dup.response) == ("duplicate", new.message_id, b"NEW")


# ---------------------------------------------------------------------- finish_processing


def test_finish_processing_writes_outbox_keys_and_status(store: SqliteStore) -> None:
    """One run stores transformed bytes, business keys and outbox rows; message is 'queued'."""
    mid = store_one(store)
    outbound = [
        Outbound("erp", b"p0", order_key="PO-1", meta={"n": 1}),
        Outbound("erp", b"p1"),
        Outbound("ledger", b"q0"),
    ]
    store.finish_processing(
        mid,
        status=model.SENT,
        now=T0 + 1,
        transformed=b"{}",
        outbound=outbound,
        business_keys=[("po", "PO-1"), ("mrn", "42")],
    )
    row = store.get_message(mid)
    assert row is not None and row.status == model.QUEUED
    assert store.get_content(mid, "transformed") == b"{}"
    rows = store.deliveries_for(mid)
    assert [(r["destination"], r["idx"], r["status"]) for r in rows] == [
        ("erp", 0, "pending"),
        ("erp", 1, "pending"),
        ("ledger", 0, "pending"),
    ]
    assert rows[0]["idempotency_key"] == model.idempotency_key("adt", "erp", mid, 0)
    assert rows[2]["idempotency_key"] == model.idempotency_key("adt", "ledger", mid, 0)
    assert rows[0]["meta"] == {"n": 1} and rows[0]["next_attempt_at"] == T0 + 1
    assert [m.id for m in store.search(key="mrn", value="42")] == [mid]


def test_finish_processing_without_outbound_uses_given_status(store: SqliteStore) -> None:
    """No outbound: the given status and error text are stored as they are."""
    mid = store_one(store)
    store.finish_processing(
        mid, status=model.ERROR, now=T0, error="MissingField: PID-3", error_location="PID^3"
    )
    row = store.get_message(mid)
    assert row is not None
    assert (row.status, row.error, row.error_location) == ("error", "MissingField: PID-3", "PID^3")
    with pytest.raises(ValueError, match="got 'bogus'"):
        store.finish_processing(mid, status="bogus", now=T0)
    with pytest.raises(StoreError, match="no message"):
        store.finish_processing("nope", status=model.FILTERED, now=T0)


def test_finish_processing_rerun_keeps_sent_rows_and_stable_keys(store: SqliteStore) -> None:
    """A re-run replaces unsent rows and keys, keeps sent rows, and derives the same keys."""
    mid = store_one(store)
    first = [Outbound("erp", b"a"), Outbound("erp", b"b")]
    store.finish_processing(
        mid, status=model.QUEUED, now=T0, outbound=first, business_keys=[("po", "1")]
    )
    keys_before = [r["idempotency_key"] for r in store.deliveries_for(mid)]
    (claimed, _) = store.claim_deliveries("adt", "erp", 10, T0, 30)
    store.delivery_succeeded(claimed.id, b"ok", T0)

    second = [Outbound("erp", b"a2"), Outbound("erp", b"b2")]
    store.finish_processing(
        mid, status=model.QUEUED, now=T0 + 5, outbound=second, business_keys=[("po", "2")]
    )
    rows = store.deliveries_for(mid)
    assert [r["idempotency_key"] for r in rows] == keys_before
    assert [(r["payload"], r["status"]) for r in rows] == [(b"a", "sent"), (b"b2", "pending")]
    assert store.search(key="po", value="1") == []
    assert [m.id for m in store.search(key="po", value="2")] == [mid]


def test_finish_processing_rerun_all_sent_rolls_up_to_sent(store: SqliteStore) -> None:
    """When every output of a re-run was already sent, the message is 'sent', not stuck queued."""
    mid = queued_message(store, [Outbound("erp", b"a")])
    (d,) = store.claim_deliveries("adt", "erp", 10, T0, 30)
    store.delivery_succeeded(d.id, None, T0)
    store.finish_processing(mid, status=model.QUEUED, now=T0, outbound=[Outbound("erp", b"a")])
    assert store.get_message(mid).status == model.SENT
    assert len(store.deliveries_for(mid)) == 1


# ---------------------------------------------------------------------- claiming and ordering


def test_claim_marks_inflight_with_lease_and_only_due_rows(store: SqliteStore) -> None:
    """Claimed rows become inflight with a lease; rows not yet due and claimed rows are skipped."""
    queued_message(store, [Outbound("erp", b"a", meta={"k": "v"})], now=T0)
    queued_message(store, [Outbound("erp", b"b")], raw=b"2", now=T0 + 100)
    (d,) = store.claim_deliveries("adt", "erp", 10, T0 + 1, lease=30)
    assert d.payload == b"a" and d.attempts == 0 and d.meta == {"k": "v"}
    assert store.claim_deliveries("adt", "erp", 10, T0 + 1, lease=30) == []
    (row,) = [r for r in store.deliveries_for(d.message_id)]
    assert row["status"] == "inflight" and row["lease_until"] == T0 + 31
    assert store.claim_deliveries("adt", "other", 10, T0 + 200, lease=30) == []


def test_claim_oldest_first_and_limit(store: SqliteStore) -> None:
    """Rows are claimed oldest first, at most ``limit`` at a time."""
    ids = [queued_message(store, [Outbound("erp", b"x")], raw=bytes([i])) for i in range(5)]
    got = store.claim_deliveries("adt", "erp", 3, T0, 30)
    assert [d.message_id for d in got] == ids[:3]


def test_a_commit_claims_the_rows_it_queues_with_the_same_ordering(store: SqliteStore) -> None:
    """Rows queued in a transaction are claimed in it (inflight, leased) up to the limit, and a
    row behind an open row of its order key stays pending; release_claims puts claimed rows
    back to pending when their worker went away."""
    first = queued_message(store, [Outbound("erp", b"A", order_key="K")], raw=b"a")
    mid = store_one(store, b"b")
    with store.transaction("finish") as tx:
        queued = tx.finish(
            mid,
            status=model.QUEUED,
            now=T0,
            outbound=[
                Outbound("erp", b"B", order_key="K"),
                Outbound("erp", b"C"),
                Outbound("erp", b"D"),
            ],
        )
        assert [dest for dest, _ in queued] == ["erp", "erp", "erp"]
        claimed = tx.claim([i for _, i in queued], T0, 30, limit=1)
    assert [d.payload for d in claimed] == [b"C"]  # B waits behind A (same key, still pending)
    rows = {r["payload"]: r for r in store.deliveries_for(mid)}
    assert rows[b"C"]["status"] == "inflight" and rows[b"C"]["lease_until"] == T0 + 30
    assert rows[b"B"]["status"] == rows[b"D"]["status"] == "pending"
    assert store.release_claims([claimed[0].id], T0 + 1) == 1
    assert {r["status"] for r in store.deliveries_for(mid)} == {"pending"}
    assert [d.message_id for d in store.claim_deliveries("adt", "erp", 1, T0 + 1, 30)] == [first]


def test_an_idle_claim_commits_nothing(store: SqliteStore) -> None:
    """Nothing due: a claim commits nothing (an idle worker costs no transaction); a due row
    costs one commit."""
    assert store.claim_deliveries("adt", "erp", 10, T0, 30) == []
    queued_message(store, [Outbound("erp", b"a")])
    before = store.commits
    assert len(store.claim_deliveries("adt", "erp", 10, T0 + 1, 30)) == 1
    assert store.commits == before + 1
    assert store.claim_deliveries("adt", "erp", 10, T0 + 1, 30) == []
    assert store.commits == before + 1


def test_an_idle_claim_writes_nothing(sqlite_store: SqliteStore) -> None:
    """Nothing due: a claim reads and commits nothing (an idle worker costs no transaction)."""
    store = sqlite_store
    commits: list[str] = []
    store._conn().set_trace_callback(
        lambda sql: commits.append(sql) if sql.upper().startswith(("BEGIN", "COMMIT")) else None
    )
    assert store.claim_deliveries("adt", "erp", 10, T0, 30) == []
    assert commits == []
    queued_message(store, [Outbound("erp", b"a")])
    commits.clear()
    assert len(store.claim_deliveries("adt", "erp", 10, T0, 30)) == 1
    assert commits == ["BEGIN IMMEDIATE", "COMMIT"]


def test_order_key_blocks_later_row_while_earlier_inflight(store: SqliteStore) -> None:
    """B (same order key as A) waits while A is inflight; other keys flow; B comes after A."""
    a = queued_message(store, [Outbound("erp", b"A", order_key="PO-1")], raw=b"a")
    b = queued_message(store, [Outbound("erp", b"B", order_key="PO-1")], raw=b"b")
    c = queued_message(store, [Outbound("erp", b"C", order_key="PO-2")], raw=b"c")
    claimed = store.claim_deliveries("adt", "erp", 10, T0, 30)
    assert [d.message_id for d in claimed] == [a, c]
    assert store.claim_deliveries("adt", "erp", 10, T0, 30) == []
    store.delivery_retry(claimed[0].id, "timeout", T0 + 10, T0)
    assert store.claim_deliveries("adt", "erp", 10, T0 + 5, 30) == []  # A pending, not due
    (again,) = store.claim_deliveries("adt", "erp", 10, T0 + 10, 30)
    assert again.message_id == a and again.attempts == 1
    store.delivery_succeeded(again.id, None, T0 + 11)
    (next_one,) = store.claim_deliveries("adt", "erp", 10, T0 + 11, 30)
    assert next_one.message_id == b


def test_block_on_dead_holds_the_key(store: SqliteStore) -> None:
    """A dead earlier row blocks its key only when block_on_dead is set."""
    a = queued_message(store, [Outbound("erp", b"A", order_key="K")], raw=b"a")
    b = queued_message(store, [Outbound("erp", b"B", order_key="K")], raw=b"b")
    (da,) = store.claim_deliveries("adt", "erp", 10, T0, 30)
    assert da.message_id == a
    store.delivery_dead(da.id, "400 Bad Request", T0)
    assert store.claim_deliveries("adt", "erp", 10, T0, 30, block_on_dead=True) == []
    (db,) = store.claim_deliveries("adt", "erp", 10, T0, 30, block_on_dead=False)
    assert db.message_id == b


# ---------------------------------------------------------------------- outcomes and roll-up


def test_roll_up_all_sent_is_sent(store: SqliteStore) -> None:
    """The message is 'queued' while any row is open and 'sent' once every row is sent."""
    mid = queued_message(store, [Outbound("erp", b"a"), Outbound("ledger", b"b")])
    (d1,) = store.claim_deliveries("adt", "erp", 10, T0, 30)
    store.delivery_succeeded(d1.id, b"201", T0 + 1)
    assert store.get_message(mid).status == model.QUEUED
    (d2,) = store.claim_deliveries("adt", "ledger", 10, T0, 30)
    store.delivery_succeeded(d2.id, None, T0 + 2)
    row = store.get_message(mid)
    assert row.status == model.SENT and row.updated_at == T0 + 2
    assert store.deliveries_for(mid)[0]["response"] == b"201"
    assert store.deliveries_for(mid)[0]["attempts"] == 1


def test_roll_up_dead_is_error_once_nothing_open(store: SqliteStore) -> None:
    """A dead row makes the message 'error' (first dead letter's text) once no row is open."""
    mid = queued_message(store, [Outbound("erp", b"a"), Outbound("ledger", b"b")])
    (d1,) = store.claim_deliveries("adt", "erp", 10, T0, 30)
    store.delivery_dead(d1.id, "HTTP 422: bad item", T0)
    assert store.get_message(mid).status == model.QUEUED  # ledger still pending
    (d2,) = store.claim_deliveries("adt", "ledger", 10, T0, 30)
    store.delivery_quarantined(d2.id, "timeout after send", T0)
    row = store.get_message(mid)
    assert (row.status, row.error, row.error_location) == ("error", "HTTP 422: bad item", "erp")
    kinds = raw_sql(store, "SELECT kind, destination FROM dead_letters ORDER BY id")
    assert kinds == [("dead", "erp"), ("quarantine", "ledger")]
    assert store.counts()["dead_letters"] == 2


def test_delivery_retry_and_next_due(store: SqliteStore) -> None:
    """A retry puts the row back to pending at the given time; next_due reports it."""
    queued_message(store, [Outbound("erp", b"a")], now=T0)
    assert store.next_due("adt", "erp") == T0
    (d,) = store.claim_deliveries("adt", "erp", 10, T0, 30)
    assert store.next_due("adt", "erp") is None
    store.delivery_retry(d.id, "503", T0 + 60, T0)
    assert store.next_due("adt", "erp") == T0 + 60
    (row,) = store.deliveries_for(d.message_id)
    assert (row["status"], row["attempts"], row["last_error"]) == ("pending", 1, "503")


def test_outcome_for_unknown_delivery_fails(store: SqliteStore) -> None:
    """Reporting an outcome for an unknown outbox id is a StoreError naming the id."""
    with pytest.raises(StoreError, match="no outbox row with id 999"):
        store.delivery_succeeded(999, None, T0)


def test_recover_resets_inflight(store: SqliteStore) -> None:
    """recover() puts inflight rows back to pending, due now, and counts open messages."""
    queued_message(store, [Outbound("erp", b"a")])
    store_one(store, b"waiting")
    store.claim_deliveries("adt", "erp", 10, T0, 30)
    assert store.recover(T0 + 100) == {"inflight_reset": 1, "received": 1, "queued": 1}
    (d,) = store.claim_deliveries("adt", "erp", 10, T0 + 100, 30)
    assert d.payload == b"a"


def test_counts_by_channel(store: SqliteStore) -> None:
    """counts() groups messages and deliveries by status, optionally for one channel."""
    queued_message(store, [Outbound("erp", b"a")])
    store_one(store, b"x", channel="orm")
    assert store.counts() == {
        "messages": {"queued": 1, "received": 1},
        "deliveries": {"pending": 1},
        "dead_letters": 0,
    }
    assert store.counts("orm") == {"messages": {"received": 1}, "deliveries": {}, "dead_letters": 0}


# ---------------------------------------------------------------------- search


def test_search_filters_and_order(store: SqliteStore) -> None:
    """search() applies every filter and returns newest first, with limit and offset."""
    ids = [store_one(store, bytes([i]), now=T0 + i, correlation_id="C") for i in range(4)]
    other = store_one(store, b"o", now=T0 + 10, channel="orm")
    assert [m.id for m in store.search(channel="adt")] == ids[::-1]
    assert [m.id for m in store.search(since=T0 + 1, until=T0 + 3)] == [ids[2], ids[1]]
    assert [m.id for m in store.search(correlation_id="C", limit=2, offset=1)] == [ids[2], ids[1]]
    assert [m.id for m in store.search(status="received", channel="orm")] == [other]
    with pytest.raises(ValueError, match="both key and value"):
        store.search(key="po")


@pytest.mark.parametrize(
    "filters",
    [
        {"key": "po", "value": "PO-1"},
        {"correlation_id": "C"},
        {"status": "error", "since": T0, "until": T0 + 10},
        {"channel": "adt", "since": T0},
    ],
)
def test_search_uses_an_index(sqlite_store: SqliteStore, filters: dict) -> None:
    """EXPLAIN QUERY PLAN of search looks rows up through an index, never a table scan."""
    store = sqlite_store
    plan = store.search_plan(**filters)
    assert not _scans_messages(plan), plan
    assert any(line.startswith("SEARCH m USING") for line in plan), plan


def _scans_messages(plan: list[str]) -> bool:
    return any(line.startswith(("SCAN m ", "SCAN messages")) or line == "SCAN m" for line in plan)


def test_plan_check_detects_a_table_scan(sqlite_store: SqliteStore) -> None:
    """The plan check above does flag a query that must scan messages (unindexed column)."""
    store = sqlite_store
    plan = [
        r[-1]
        for r in store._conn().execute("EXPLAIN QUERY PLAN SELECT * FROM messages m WHERE size > 1")
    ]
    assert _scans_messages(plan), plan


@pytest.mark.parametrize(
    "sql",
    [
        # claim_deliveries (every claim), through the partial index of pending rows
        "SELECT id FROM outbox AS o INDEXED BY idx_outbox_pending WHERE o.channel = 'c' "
        "AND o.destination = 'd' AND o.status = 'pending' AND o.next_attempt_at <= 1 "
        "ORDER BY o.id LIMIT 10",
        # work items opened by the ledger and the procurement book
        "SELECT 1 FROM work_items WHERE kind = 'INVOICE_HELD' AND subject = 'a:b'",
        # release_expired (every 30 s)
        "UPDATE outbox SET status = 'pending', next_attempt_at = 1, lease_until = NULL, "
        "updated_at = 1 WHERE status = 'inflight' AND lease_until IS NOT NULL "
        "AND lease_until < 1",
    ],
)
def test_hot_store_statements_use_an_index(sqlite_store: SqliteStore, sql: str) -> None:
    """What runs for every delivery and work item looks rows up through an index (a full scan
    of work_items or outbox grew with the tables; the ledger's charges: test_ledger_book)."""
    store = sqlite_store
    plan = [r[-1] for r in store._conn().execute("EXPLAIN QUERY PLAN " + sql)]
    assert not any(line.startswith("SCAN") for line in plan), plan


# ---------------------------------------------------------------------- work items


def test_work_items_open_once_refresh_and_resolve(store: SqliteStore) -> None:
    """``while_open``: one open item per kind and subject whichever message; ``ever``: never a
    second one; a refresh gives the open one a new detail, a resolved one keeps its own."""
    first, second = store_one(store, b"MSH|1"), store_one(store, b"MSH|2")
    with store.transaction("work items") as tx:
        assert tx.open_work_item("HELD", "a:b", "NO_RECEIPT", first, None, T0, once="while_open")
        assert not tx.open_work_item("HELD", "a:b", "x", second, None, T0, once="while_open")
        assert tx.open_work_item("HELD", "a:b", "x", second, None, T0)  # per message
        assert tx.refresh_work_items("HELD", subject="a:b", detail="QTY_REC", now=T0 + 1) == 2
        assert tx.resolve_work_items("HELD", subject="a:b", now=T0 + 2) == 2
        assert tx.refresh_work_items("HELD", subject="a:b", detail="later", now=T0 + 3) == 0
        assert tx.open_work_item("LATE", "p:850:1", "due", first, None, T0, once="ever")
        assert tx.resolve_work_items("LATE", subject="p:850:1", now=T0 + 1) == 1
        assert not tx.open_work_item("LATE", "p:850:1", "due", first, None, T0, once="ever")
    rows = raw_sql(store, "SELECT kind, detail, status, updated_at FROM work_items ORDER BY id")
    assert rows == [
        ("HELD", "QTY_REC", "resolved", T0 + 2),
        ("HELD", "QTY_REC", "resolved", T0 + 2),
        ("LATE", "due", "resolved", T0 + 1),
    ]


# ---------------------------------------------------------------------- replay


def test_replay_dead_delivery_requeues_with_same_key(store: SqliteStore) -> None:
    """A dead row becomes pending again (attempts 0, same idempotency key) and is audited."""
    mid = queued_message(store, [Outbound("erp", b"a")])
    (d,) = store.claim_deliveries("adt", "erp", 10, T0, 30)
    store.delivery_dead(d.id, "HTTP 400", T0)
    assert store.get_message(mid).status == model.ERROR

    assert store.replay(mid, actor="alice", now=T0 + 50) == {"requeued": 1, "reprocess": False}
    row = store.get_message(mid)
    assert (row.status, row.error) == ("queued", None)
    (again,) = store.claim_deliveries("adt", "erp", 10, T0 + 50, 30)
    assert again.id == d.id and again.idempotency_key == d.idempotency_key
    assert again.attempts == 0
    assert raw_sql(store, "SELECT replayed_at FROM dead_letters") == [(T0 + 50,)]
    (entry,) = store.audit_entries()
    assert (entry["actor"], entry["action"], entry["target"]) == ("alice", "replay", mid)
    assert entry["detail"]["requeued"] == 1


def test_replay_transform_error_goes_back_to_received(store: SqliteStore) -> None:
    """An 'error' message without outbox rows returns to 'received' for the pipeline."""
    mid = store_one(store)
    store.finish_processing(mid, status=model.ERROR, now=T0, error="MappingMiss")
    assert store.replay(mid, actor="bob", now=T0 + 1) == {"requeued": 0, "reprocess": True}
    row = store.get_message(mid)
    assert (row.status, row.error) == ("received", None)
    assert store.received_ids(10) == [mid]


def test_replay_explicit_destination_resends_sent(store: SqliteStore) -> None:
    """Naming a destination also resends rows already sent there, and only there."""
    mid = queued_message(store, [Outbound("erp", b"a"), Outbound("ledger", b"b")])
    for dest in ("erp", "ledger"):
        (d,) = store.claim_deliveries("adt", dest, 10, T0, 30)
        store.delivery_succeeded(d.id, None, T0)
    assert store.replay(mid, actor="a", now=T0) == {"requeued": 0, "reprocess": False}
    assert store.replay(mid, destination="erp", actor="a", now=T0)["requeued"] == 1
    statuses = {r["destination"]: r["status"] for r in store.deliveries_for(mid)}
    assert statuses == {"erp": "pending", "ledger": "sent"}
    assert store.get_message(mid).status == model.QUEUED


def test_replay_unknown_message_fails(store: SqliteStore) -> None:
    """Replaying an unknown id raises StoreError and writes no audit row."""
    with pytest.raises(StoreError, match="no message with id 'nope'"):
        store.replay("nope", actor="a", now=T0)
    assert store.audit_entries() == []


def test_replay_channel(store: SqliteStore) -> None:
    """replay_channel replays the channel's 'error' messages and returns their ids."""
    failed = store_one(store, b"1")
    store.finish_processing(failed, status=model.ERROR, now=T0)
    fine = store_one(store, b"2")
    store.finish_processing(fine, status=model.FILTERED, now=T0)
    assert store.replay_channel("adt", actor="ops", now=T0) == [failed]
    assert store.get_message(fine).status == model.FILTERED


# ---------------------------------------------------------------------- audit


def test_audit_chain_verifies_and_refuses_changes(store: SqliteStore) -> None:
    """Audit rows chain by hash; UPDATE and DELETE are refused by triggers."""
    first = store.audit("alice", "login", "cli", {"ip": "10.0.0.1"}, T0)
    second = store.audit("alice", "pause", "channel:adt", {}, 1_700_000_001)
    assert (first, second) == (1, 2)
    assert store.verify_audit() is True
    entries = store.audit_entries()
    assert [e["id"] for e in entries] == [2, 1]
    assert entries[0]["prev_hash"] == entries[1]["hash"]
    conn = store._conn()
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE audit SET actor = 'mallory'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM audit")


def test_verify_audit_detects_tampering(store: SqliteStore) -> None:
    """Changing a row after dropping the trigger breaks the hash chain."""
    store.audit("alice", "replay", "m1", {"n": 1}, T0)
    store.audit("bob", "replay", "m2", {"n": 2}, T0)
    drop_trigger(store, "audit_no_update")
    store._conn().execute("UPDATE audit SET actor = 'mallory' WHERE id = 1")
    assert store.verify_audit() is False


def test_verify_audit_detects_removed_row(store: SqliteStore) -> None:
    """Deleting a middle row (trigger dropped) breaks the chain of the next row."""
    for n in range(3):
        store.audit("a", "x", str(n), {}, T0)
    drop_trigger(store, "audit_no_delete")
    store._conn().execute("DELETE FROM audit WHERE id = 2")
    assert store.verify_audit() is False


# ---------------------------------------------------------------------- prune


def _db_bytes(path: Path) -> int:
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def test_prune_deletes_old_finished_messages_and_shrinks_file(sqlite_store: SqliteStore) -> None:
    """Old sent/filtered messages go with their rows; open ones and the audit stay; file shrinks."""
    store = sqlite_store
    big = b"x" * 64_000
    old = []
    for i in range(60):
        mid = store_one(store, big + bytes([i]), now=T0)
        store.finish_processing(mid, status=model.FILTERED, now=T0, business_keys=[("k", "v")])
        old.append(mid)
    sent = queued_message(store, [Outbound("erp", big)], raw=b"s", now=T0)
    (d,) = store.claim_deliveries("adt", "erp", 10, T0, 30)
    store.delivery_dead(d.id, "x", T0)
    store.replay(sent, actor="a", now=T0)
    (d,) = store.claim_deliveries("adt", "erp", 10, T0, 30)
    store.delivery_succeeded(d.id, None, T0)
    keep_recent = store_one(store, b"recent", now=T0 + 3600)
    store.finish_processing(keep_recent, status=model.FILTERED, now=T0 + 3600)
    keep_open = store_one(store, b"open", now=T0)
    store.reclaim()
    before = _db_bytes(store.path)

    assert store.prune(older_than=600, now=T0 + 3600) == 61
    after = _db_bytes(store.path)
    assert after < before / 4, (before, after)
    assert store.get_message(old[0]) is None and store.get_content(old[0], "raw") is None
    assert {m.id for m in store.search()} == {keep_recent, keep_open}
    for table in ("contents", "outbox", "business_keys", "dead_letters"):
        stale = raw_sql(
            store, f"SELECT COUNT(*) FROM {table} WHERE message_id NOT IN (SELECT id FROM messages)"
        )
        assert stale == [(0,)], table
    assert len(store.audit_entries()) == 1 and store.verify_audit()


def test_prune_refuses_open_statuses(store: SqliteStore) -> None:
    """Pruning 'received' or 'queued' messages is refused: they are still being worked on."""
    with pytest.raises(ValueError, match="got \\['queued'\\]"):
        store.prune(older_than=0, statuses=("sent", "queued"), now=T0)


# ---------------------------------------------------------------------- threads


def test_threads_get_their_own_connections(store: SqliteStore) -> None:
    """Several threads can write at once; each uses its own connection; nothing is lost."""
    errors: list[BaseException] = []
    connections: set[int] = set()

    def work(n: int) -> None:
        try:
            connections.add(id(store._conn()))
            for i in range(25):
                store.ingest_batch([inbound(f"{n}-{i}".encode())], T0)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(connections) == 4
    assert store.counts()["messages"] == {"received": 100}


def test_expired_leases_are_released_with_their_key(tmp_path: Path) -> None:
    """A delivery claimed and never reported on goes back to pending once its lease ran out,
    keeping its idempotency key; one still within its lease stays claimed."""
    store = SqliteStore(tmp_path / "lease.db").open()
    now = time.time()
    (result,) = store.ingest_batch([Inbound("c", "t", b"x", "text/plain", now)], now)
    store.finish_processing(
        result.message_id, status="sent", now=now, outbound=[Outbound("d", b"{}")]
    )
    (claimed,) = store.claim_deliveries("c", "d", 10, now, lease=60)
    assert store.release_expired(now + 30) == 0
    assert store.release_expired(now + 61) == 1
    (again,) = store.claim_deliveries("c", "d", 10, now + 62, lease=60)
    assert again.id == claimed.id and again.idempotency_key == claimed.idempotency_key


def test_a_store_from_before_the_domain_histories_opens_unchanged(tmp_path: Path) -> None:
    """A store whose schema v4-v9 created the ledger's and procurement's tables (every store
    before they had histories of their own) opens: its rows stay, the domains' migrations only
    record their versions, and it ends with the same objects as a new store."""
    from engine.domains.ledger.schema import SQLITE_MIGRATIONS as LEDGER
    from engine.domains.procurement.schema import SQLITE_MIGRATIONS as PROCUREMENT
    from engine.runtime.store import open_store

    old = tmp_path / "old.db"
    conn = sqlite3.connect(old, isolation_level=None)
    apply_migrations(conn, target=9)  # the store's own history up to v9 ...
    for _, _, step in [*LEDGER, *PROCUREMENT]:  # ... and what v4-v7 and v9 made then
        if callable(step):
            step(conn)
        else:
            for statement in step:
                conn.execute(statement)
    conn.execute(
        "INSERT INTO onhand (location_id, item_id, quantity, uom, updated_at) "
        "VALUES ('LOC', 'ITEM', '7', 'EA', 0)"
    )
    conn.close()
    store = open_store(old)
    try:
        rows = raw_sql(store, "SELECT component, MAX(version) FROM component_versions GROUP BY 1")
        assert dict(rows) == {"ledger": LEDGER[-1][0], "procurement": PROCUREMENT[-1][0]}
        assert raw_sql(store, "SELECT quantity FROM onhand") == [("7",)]
    finally:
        store.close()
    fresh = open_store(tmp_path / "new.db")
    fresh.close()

    def objects(path: Path) -> set[tuple[str, str]]:
        with sqlite3.connect(path) as c:
            return set(c.execute("SELECT type, name FROM sqlite_master").fetchall())

    assert objects(old) == objects(tmp_path / "new.db")


def test_prune_goes_in_short_batches_and_keeps_what_is_young_or_open(store: SqliteStore) -> None:
    """35 old finished messages go 10 per transaction (4 commits, each a short one); a young
    one and an open one stay; the file's footprint goes down, not up."""
    old = [store_one(store, b"x" * 4000 + bytes([i]), now=T0) for i in range(35)]
    for mid in old:
        store.finish_processing(mid, status=model.SENT, now=T0)
    young = store_one(store, b"young", now=T0 + 3600)
    store.finish_processing(young, status=model.SENT, now=T0 + 3600)
    still_open = store_one(store, b"open", now=T0)
    before, commits = store.footprint(), store.commits
    assert store.prune(older_than=600, now=T0 + 3600, batch=10, hold=None) == 35
    assert store.commits - commits == 4  # 10 + 10 + 10 + 5: the engine's writer gets in between
    assert {m.id for m in store.search()} == {young, still_open}
    if store.dialect == "sqlite":  # (PostgreSQL's autovacuum gives the space back later)
        assert _db_bytes(store.path) < before


def test_prune_batches_grow_while_quick_and_shrink_while_slow() -> None:
    """Sizes follow the smoothed time a batch held the lock: up an eighth under the hold, down a
    quarter over 1.5 x the hold, unchanged between, within PRUNE_LEAST..most."""
    sizes = PruneBatches(hold=0.002, most=500)
    assert sizes.size == 50
    assert [sizes.after(0.001) for _ in range(3)] == [56, 63, 70]
    # 2.5 ms batches: still growing while the smoothed time is under 2 ms, then steady
    assert [sizes.after(0.0025) for _ in range(4)] == [78, 87, 97, 97]
    assert sizes.smoothed is not None and 0.002 < sizes.smoothed < 0.003
    assert [sizes.after(0.010) for _ in range(3)] == [72, 54, 40]  # over 1.5 x the hold
    one_slow = PruneBatches(hold=0.002, most=500)
    one_slow.after(0.001)
    assert one_slow.after(0.004) == 63  # one slow batch among quick ones: still growing
    for _ in range(200):
        one_slow.after(0.5)
    assert one_slow.size == 8  # never below the least
    quick = PruneBatches(hold=0.002, most=60)
    assert [quick.after(0.0001) for _ in range(3)] == [56, 60, 60]  # never past the most


@pytest.mark.parametrize(
    ("per_row", "first_limits"),
    [
        (0.0001, [50, 37, 27, 20]),  # 0.1 ms a row: smaller until the lock is held briefly
        (0.00001, [50, 56, 63, 70]),  # 0.01 ms a row: larger while under the hold
    ],
)
def test_prune_batches_follow_how_long_each_held_the_lock(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch, per_row: float, first_limits: list[int]
) -> None:
    """The batches grow while they are quick and shrink while they hold the write lock longer
    than the hold; freed space goes back every PRUNE_GIVE_BACK rows and at the end."""
    left = 5000
    limits: list[int] = []
    given_back: list[tuple[int, bool]] = []

    def one(limit: int) -> tuple[int, float]:
        nonlocal left
        limits.append(limit)
        deleted = min(limit, left)
        left -= deleted
        return deleted, per_row * limit

    monkeypatch.setattr("engine.store.sqlite._yield_to_writers", lambda held: None)
    monkeypatch.setattr(store, "_give_back", lambda last=False: given_back.append((left, last)))
    assert store._in_short_batches(one, 500, 0.002) == 5000
    assert limits[: len(first_limits)] == first_limits
    assert given_back[-1] == (0, True) and [last for _, last in given_back].count(True) == 1
    done = [5000 - rest for rest, _ in given_back]  # rows deleted at each give-back
    gaps = [b - a for a, b in zip([0, *done], done, strict=False)]
    assert all(PRUNE_GIVE_BACK <= gap < PRUNE_GIVE_BACK + 500 for gap in gaps[:-1])
    assert 0 < gaps[-1] < PRUNE_GIVE_BACK + 500


def test_closed_work_items_have_their_own_retention(store: SqliteStore) -> None:
    """Closed or resolved work items past their retention go; open ones never do."""
    mid = store_one(store)
    with store.transaction("items") as tx:
        for kind in ("MISSING_MAPPING", "UNBILLED_USAGE", "CHARGE_REJECTED"):
            tx.open_work_item(kind, "s", "d", mid, mid, T0)
        tx.resolve_work_items("UNBILLED_USAGE", message_id=mid, now=T0)
        tx.resolve_work_items("CHARGE_REJECTED", message_id=mid, now=T0 + 5000)
    assert store.prune_work_items(older_than=600, now=T0 + 3600, batch=1, hold=None) == 1
    left = sorted(r[0] for r in raw_sql(store, "SELECT kind FROM work_items"))
    assert left == ["CHARGE_REJECTED", "MISSING_MAPPING"]


def test_pruning_the_audit_keeps_the_chain_verifiable(store: SqliteStore) -> None:
    """Rows older than the retention go; the chain verifies from the anchor the prune left, goes
    on after it, and still catches a row removed or changed behind the store's back."""
    for i in range(5):
        store.audit("a", "act", f"t{i}", {"i": i}, T0 + i)
    store.audit("a", "act", "late", {}, T0 + 5000)
    assert store.prune_audit(older_than=600, now=T0 + 5100, actor="ops") == 5
    assert store.verify_audit()
    assert [e["action"] for e in store.audit_entries(10)] == ["audit.prune", "act"]
    store.audit("a", "after", "t", {}, T0 + 5200)
    assert store.verify_audit()
    conn = store._conn()
    first = conn.execute("SELECT MIN(id) FROM audit").fetchone()[0]
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM audit WHERE id = ?", (first,))  # past the anchor: refused
    drop_trigger(store, "audit_no_delete")  # someone with the database goes around it
    conn.execute("DELETE FROM audit WHERE id = ?", (first,))
    assert not store.verify_audit()


def test_work_items_know_their_channel_and_a_scope_sees_its_own(store: SqliteStore) -> None:
    """A work item takes its message's channel; a channel scope sees only its channels' items
    (in the page and the counts by kind); an item of no message is outside every scope."""
    adt = store_one(store, b"MSH|1", channel="adt")
    lab = store_one(store, b"MSH|2", channel="lab")
    with store.transaction("items") as tx:
        tx.open_work_item("MISSING_MAPPING", "items:A", "d", adt, adt, T0)
        tx.open_work_item("MISSING_MAPPING", "items:B", "d", lab, lab, T0 + 1)
        tx.open_work_item("ACK_OVERDUE", "p:850:1", "d", None, None, T0 + 2)
    every = store.work_item_page().rows
    assert [(w["subject"], w["channel"]) for w in every] == [
        ("items:A", "adt"),
        ("items:B", "lab"),
        ("p:850:1", None),
    ]
    assert [w["subject"] for w in store.work_item_page(channels=["lab"]).rows] == ["items:B"]
    assert store.work_item_page(channels=[]).rows == []
    assert store.work_item_ages(T0, channels=["adt"]) == {
        "MISSING_MAPPING": {"open": 1, "oldest": T0}
    }
    assert set(store.work_item_ages(T0)) == {"MISSING_MAPPING", "ACK_OVERDUE"}
    about = store.work_items_about("MISSING_MAPPING", "items:", channels=["adt", "x"])
    assert [w["subject"] for w in about] == ["items:A"]
    assert store.work_item(every[1]["id"])["channel"] == "lab"


def test_work_items_from_before_take_their_channel_from_their_message(tmp_path: Path) -> None:
    """Migration 18 fills the channel of the work items a store already had."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    apply_migrations(conn, target=17)
    conn.execute(
        "INSERT INTO messages (id, channel, source, content_type, received_at, updated_at, "
        "sha256, size, status) VALUES ('m1', 'adt', 'mllp', 'x', 1.0, 1.0, 'abc', 3, 'error')"
    )
    for message in ("m1", None):
        conn.execute(
            "INSERT INTO work_items (kind, subject, detail, status, message_id, "
            "correlation_id, created_at, updated_at) VALUES ('K', 's', 'd', 'open', ?, ?, 1, 1)",
            (message, message),
        )
    conn.close()
    with SqliteStore(path) as s:
        assert raw_sql(s, "SELECT message_id, channel FROM work_items ORDER BY id") == [
            ("m1", "adt"),
            (None, None),
        ]
