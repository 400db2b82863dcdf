"""The console's part of the store: running counters kept by triggers (equal to a count of the
rows after inserts, status changes and deletes, and backfilled by the migration), the browser's
keyset pages and the index each search starts from, pauses and accounts (audited)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from engine import model
from engine.model import Outbound
from engine.store import SqliteStore, make_store
from engine.store.migrations import apply_migrations
from tests.unit.test_store import T0, store_one


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    s = SqliteStore(tmp_path / "wharf.db").open()
    yield s
    s.close()


@pytest.fixture
def any_store(store_location: Path | str) -> SqliteStore:
    """SQLite, then PostgreSQL (tests/conftest.py): for what both dialects must answer alike."""
    s = make_store(store_location).open()
    yield s
    s.close()


def counted(store: SqliteStore) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for channel, status, n in store._query(
        "t", "SELECT channel, status, COUNT(*) FROM messages GROUP BY 1, 2"
    ):
        out.setdefault(channel, {})[status] = n
    return out


def test_counters_follow_inserts_status_changes_and_deletes(store: SqliteStore) -> None:
    ids = [store_one(store, f"MSH|{i}".encode(), T0 + i, channel=f"c{i % 2}") for i in range(6)]
    store.finish_processing(
        ids[0], status=model.QUEUED, now=T0, outbound=[Outbound("erp", b"{}"), Outbound("b", b"")]
    )
    store.finish_processing(ids[1], status=model.FILTERED, now=T0)
    store.finish_processing(ids[2], status=model.ERROR, now=T0, error="x", error_location="y")
    assert store.message_counters() == counted(store)
    assert store.message_counters()["c0"] == {"received": 1, "queued": 1, "error": 1}
    deliveries = store.delivery_counters()
    assert deliveries == {("c0", "erp"): {"pending": 1}, ("c0", "b"): {"pending": 1}}
    store.prune(older_than=0, statuses=(model.FILTERED,), now=T0 + 10**6)
    assert store.message_counters() == counted(store)
    assert "filtered" not in store.message_counters()["c1"]


def test_throughput_buckets_count_arrivals_per_five_minutes(store: SqliteStore) -> None:
    start = 1_700_000_100.0  # a bucket boundary (300 s)
    for i, offset in enumerate((0, 10, 299, 300, 1000)):
        store_one(store, f"MSH|{i}".encode(), start + offset, channel="c")
    series = store.throughput(start, start + 1000)
    assert series == {"c": [(start, 3), (start + 300, 1), (start + 900, 1)]}


def test_the_migration_backfills_counters_from_a_store_that_has_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    apply_migrations(conn, target=14)
    for i, status in enumerate(("sent", "sent", "error")):
        conn.execute(
            "INSERT INTO messages (id, channel, source, content_type, received_at, updated_at, "
            "sha256, size, status, correlation_id) "
            f"VALUES ('m{i}', 'adt', 'mllp', 'x', {T0 + i}, 1.0, 'h', 3, '{status}', 'm{i}')"
        )
    conn.close()
    with SqliteStore(path) as s:
        assert s.message_counters() == {"adt": {"sent": 2, "error": 1}}
        assert sum(n for _, n in s.throughput(T0 - 600, T0 + 600)["adt"]) == 3


def test_keyset_pages_cover_every_row_once_newest_first(store: SqliteStore) -> None:
    for i in range(23):  # three share a time: the rowid breaks the tie
        store_one(store, f"MSH|{i}".encode(), T0 + (i // 3), channel="c")
    seen, after = [], None
    while True:
        page = store.browse(channel="c", after=after, limit=5)
        seen += [m.id for m in page.rows]
        if page.next is None:
            break
        after = page.next
    everything = [m.id for m in store.search(channel="c", limit=100)]
    assert seen == everything and len(set(seen)) == 23


def test_a_bad_cursor_is_named(store: SqliteStore) -> None:
    with pytest.raises(Exception, match="expected a page cursor TIME:ROWID"):
        store.browse(after="yesterday")


@pytest.mark.parametrize(
    ("filters", "index"),
    [
        ({"key": "po", "value": "4500012345", "status": "sent"}, "idx_business_keys_name_value"),
        ({"key": "po", "value": "1", "channel": "c", "since": T0}, "idx_business_keys_name_value"),
        ({"correlation_id": "x", "status": "error"}, "idx_messages_correlation"),
        ({"control_id": "ABC", "status": "sent"}, "idx_messages_control"),
        ({"channel": "c", "status": "error"}, "idx_messages_channel_status_time"),
        ({"status": "error"}, "idx_messages_status_time"),
    ],
)
def test_each_search_starts_from_its_most_selective_index(
    store: SqliteStore, filters: dict, index: str
) -> None:
    plan = store.browse_plan(**filters)
    assert index in plan[0], plan


def test_searches_find_what_they_say(any_store: SqliteStore) -> None:
    store = any_store
    a = store_one(store, b"MSH|a", T0, channel="c", control_id="CTL-1")
    b = store_one(store, b"MSH|b", T0 + 1, channel="c")
    store.finish_processing(
        a, status=model.QUEUED, now=T0, outbound=[Outbound("d", b"")], business_keys=[("po", "45")]
    )
    store.finish_processing(b, status=model.FILTERED, now=T0, business_keys=[("po", "45")])
    assert [m.id for m in store.browse(key="po", value="45").rows] == [b, a]
    assert [m.id for m in store.browse(key="po", value="45", status="queued").rows] == [a]
    assert [m.id for m in store.browse(control_id="CTL-1").rows] == [a]
    assert store.browse(key="po", value="45", channels=["other"]).rows == []
    # every filter that does not drive the search is an expression no index holds
    assert [m.id for m in store.browse(channel="c", channels=["c"], since=T0 + 1).rows] == [b]
    assert [m.id for m in store.browse(control_id="CTL-1", channel="c", until=T0 + 1).rows] == [a]
    assert store.browse(control_id="CTL-1", status="filtered", channels=["c"]).rows == []


def test_pauses_are_kept_and_audited_once(store: SqliteStore) -> None:
    assert store.set_paused("c", "erp", True, actor="ann", note="ERP upgrade", now=T0)
    assert not store.set_paused("c", "erp", True, actor="ann", note="again", now=T0)
    assert store.pauses() == {("c", "erp"): {"actor": "ann", "note": "ERP upgrade", "at": T0}}
    assert store.set_paused("c", "erp", False, actor="bob", note="", now=T0 + 1)
    assert store.pauses() == {}
    actions = [(e["actor"], e["action"], e["target"]) for e in store.audit_entries()]
    assert actions == [("bob", "resume", "c/erp"), ("ann", "pause", "c/erp")]
    assert store.verify_audit()


def test_accounts_are_audited_without_their_hashes(store: SqliteStore) -> None:
    store.save_user(
        "ann",
        actor="root",
        action="user.add",
        now=T0,
        roles=["viewer"],
        password_hash="$2b$04$secret-hash",
    )
    user = store.user("ann")
    assert user is not None and user["roles"] == ["viewer"] and user["channels"] == ["*"]
    (entry,) = store.audit_entries()
    assert entry["action"] == "user.add" and "secret-hash" not in str(entry["detail"])
    assert entry["detail"]["password"] == "set"


def test_edit_and_replay_takes_only_a_message_that_failed_before_delivery(
    store: SqliteStore,
) -> None:
    mid = store_one(store, b"MSH|bad", T0)
    store.finish_processing(mid, status=model.ERROR, now=T0, error="no row", error_location="t")
    store.edit_and_replay(mid, b"MSH|good", diff="-bad\n+good\n", actor="al", now=T0 + 1)
    assert store.get_message(mid).status == model.RECEIVED
    assert store.get_content(mid, "raw") == b"MSH|good"
    assert store.audit_entries()[0]["detail"]["diff"] == "-bad\n+good\n"
    sent = store_one(store, b"MSH|x", T0)
    store.finish_processing(sent, status=model.QUEUED, now=T0, outbound=[Outbound("d", b"")])
    with pytest.raises(Exception, match=r"failed before delivery.*replay resends them"):
        store.edit_and_replay(sent, b"MSH|y", diff="", actor="al", now=T0)
