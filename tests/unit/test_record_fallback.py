"""The pipeline's batch commit: one bad result does not hold back or loop its batch."""

from __future__ import annotations

import time
from pathlib import Path

from engine.model import Inbound, Outbound
from engine.runtime.processor import Outcome, record
from engine.store import SqliteStore


def test_a_result_the_store_refuses_goes_to_error_and_the_rest_commit(tmp_path: Path) -> None:
    """The batch falls back to one commit per message; the refused one is an error."""
    store = SqliteStore(tmp_path / "w.db").open()
    now = time.time()
    items = [Inbound("c", "t", f"m{i}".encode(), "text/plain", now) for i in range(2)]
    ids = [r.message_id for r in store.ingest_batch(items, now)]
    good = dict(message_id=ids[0], status="sent", outbound=[Outbound("d", b"{}")])
    bad = dict(message_id=ids[1], status="bogus", outbound=[Outbound("d", b"{}")])
    record(store, [Outcome(**good), Outcome(**bad)], now)
    assert store.get_message(ids[0]).status == "queued"
    row = store.get_message(ids[1])
    assert row.status == "error"
    assert row.error.startswith("the store refused this message's result")
    assert store.deliveries_for(ids[1]) == []
