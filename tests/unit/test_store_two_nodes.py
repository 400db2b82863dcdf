"""Two nodes writing the same rows of one PostgreSQL store at the same moment (issue 15).

Each test opens two stores on one database (two nodes), leaves node 1's transaction open at
the point where the nodes used to go wrong, starts node 2's write in a thread, then commits
node 1: node 2's write must wait for node 1's commit and see it. The interleaving is forced,
not hoped for, so each of these tests fails without its fix.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from engine import model
from engine.domains.ledger.repository import SqliteLedgerRepository
from engine.errors import StoreConflict
from engine.model import Inbound, Outbound
from engine.runtime import processor
from engine.store import SqliteStore, make_store

T0 = 1_800_000_000.0


@pytest.fixture
def nodes(pg_url: str) -> Iterator[tuple[SqliteStore, SqliteStore]]:
    one = make_store(pg_url).open()
    two = make_store(pg_url).open()
    # the ledger's tables (its own history) for the on-hand test
    from engine.domains.ledger.schema import POSTGRESQL_MIGRATIONS

    one.migrate("ledger", POSTGRESQL_MIGRATIONS)
    yield one, two
    two.close()
    one.close()


def queued_message(store: SqliteStore, outbound: list[Outbound]) -> str:
    (result,) = store.ingest_batch(
        [
            Inbound(
                channel="adt",
                source="mllp",
                raw=b"MSH|1",
                content_type="application/hl7-v2",
                received_at=T0,
            )
        ],
        T0,
    )
    store.finish_processing(result.message_id, status=model.QUEUED, now=T0, outbound=outbound)
    return result.message_id


def in_thread(work: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(work())
        except BaseException as exc:  # handed back to the test
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_two_nodes_settling_a_messages_last_two_deliveries_at_once_roll_it_up_to_sent(
    nodes: tuple[SqliteStore, SqliteStore],
) -> None:
    one, two = nodes
    mid = queued_message(one, [Outbound("erp", b"a"), Outbound("billing", b"b")])
    (da,) = one.claim_deliveries("adt", "erp", 10, T0, 30)
    (db,) = two.claim_deliveries("adt", "billing", 10, T0, 30)
    with one.transaction("node 1 settles erp") as tx:
        tx.delivery_succeeded(da.id, b"ok", T0 + 1)
        thread, out = in_thread(lambda: two.delivery_succeeded(db.id, b"ok", T0 + 1))
        thread.join(0.5)
        assert thread.is_alive(), "node 2 rolled up without waiting for node 1"
    thread.join(10)
    assert out == [None]
    assert one.get_message(mid).status == model.SENT


def test_two_nodes_moving_one_items_stock_at_once_lose_nothing(
    nodes: tuple[SqliteStore, SqliteStore],
) -> None:
    one, two = nodes
    with one.transaction("seed") as tx:
        SqliteLedgerRepository(tx).move_stock("OR", "ITEM-1", Decimal("10"), "EA", T0)

    def node2_issue() -> Decimal:
        with two.transaction("node 2 issues") as tx:
            return SqliteLedgerRepository(tx).move_stock("OR", "ITEM-1", Decimal("-3"), "EA", T0)

    with one.transaction("node 1 issues") as tx:
        assert SqliteLedgerRepository(tx).move_stock(
            "OR", "ITEM-1", Decimal("-2"), "EA", T0
        ) == Decimal("8")
        thread, out = in_thread(node2_issue)
        thread.join(0.5)
        assert thread.is_alive(), "node 2 read the on-hand node 1 is changing"
    thread.join(10)
    assert out == [Decimal("5")]
    with one.transaction("read") as tx:
        assert SqliteLedgerRepository(tx).stock("OR", "ITEM-1") == (Decimal("5"), "EA")


def test_a_deadlock_between_nodes_is_a_store_conflict_and_the_processor_records_again(
    nodes: tuple[SqliteStore, SqliteStore],
) -> None:
    """Node 1 holds row A and wants B, node 2 holds B and wants A: PostgreSQL ends one of
    them with a deadlock, which the store raises as StoreConflict; record() not ``final``
    hands it back instead of putting the messages in error."""
    one, two = nodes
    a = queued_message(one, [Outbound("erp", b"a")])
    b = queued_message(one, [Outbound("erp", b"b")])
    gate = threading.Barrier(2, timeout=10)

    def lock_both(store: SqliteStore, first: str, second: str) -> None:
        with store.transaction(f"lock {first} then {second}") as tx:
            tx.connection.execute("UPDATE messages SET updated_at = ? WHERE id = ?", (T0, first))
            gate.wait()
            tx.connection.execute("UPDATE messages SET updated_at = ? WHERE id = ?", (T0, second))

    thread, out = in_thread(lambda: lock_both(two, b, a))
    try:
        lock_both(one, a, b)
        mine: BaseException | None = None
    except StoreConflict as exc:
        mine = exc
    thread.join(20)
    errors = [e for e in [mine, *out] if isinstance(e, BaseException)]
    assert len(errors) == 1 and isinstance(errors[0], StoreConflict), (mine, out)
    assert "deadlock" in str(errors[0]).lower()

    class Conflicted:
        def transaction(self, what: str, durable: bool = True) -> Any:
            raise StoreConflict(f"{what} failed: DeadlockDetected: deadlock detected")

    outcome = processor.Outcome(
        message_id=a, channel="adt", correlation_id=a, status=model.SENT, outbound=()
    )
    with pytest.raises(StoreConflict):
        processor.record(Conflicted(), [outcome], T0, final=False)
