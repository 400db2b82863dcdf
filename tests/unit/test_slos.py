"""Objectives judged from the store: each message, usage event and work item once its time is
up, in the order they started, with the error budget left and the burn rate; a catch-up in
chunks misses and repeats nothing."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from engine.registry import REGISTRY
from engine.runtime import slos
from engine.runtime.slos import Objectives
from engine.runtime.store import migrate_domains
from engine.store import SqliteStore

NOW = 1_800_000_000.0


def objective(measure: str, **kw: Any) -> Any:
    base = dict(
        name=measure,
        measure=measure,
        objective=0.9,
        within=60.0,
        window=3600.0,
        channels=None,
        kinds=None,
        fast_burn=2.0,
        burn_window=600.0,
    )
    return SimpleNamespace(**(base | kw))


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = SqliteStore(tmp_path / "w.db").open()
    migrate_domains(s, REGISTRY)
    yield s
    s.close()


def add_message(
    store: Any, i: int, channel: str, status: str, received: float, took: float
) -> None:
    with store.transaction("test") as tx:
        tx.connection.execute(
            "INSERT INTO messages (id, channel, source, content_type, received_at, updated_at, "
            "sha256, size, status) VALUES (?, ?, 'test', 'text/plain', ?, ?, 'x', 1, ?)",
            (f"m{i:04d}", channel, received, received + took, status),
        )


def judge(store: Any, configs: list[Any], now: float) -> Objectives:
    o = Objectives(configs, store, REGISTRY, reactor=None)
    for objective in o.objectives:
        objective.cursor = now - 3600.0 - objective.config.within
    o._judge_all(now)
    return o


def test_event_latency_counts_settled_in_time_and_burns_on_recent_misses(store: Any) -> None:
    for i in range(8):  # an hour ago: all sent within a second
        add_message(store, i, "a", "sent", NOW - 3000 + i, 1.0)
    add_message(store, 8, "a", "filtered", NOW - 2000, 0.0)  # no deliveries: not counted
    add_message(store, 9, "b", "sent", NOW - 2000, 1.0)  # another channel
    add_message(store, 10, "a", "sent", NOW - 300, 120.0)  # settled too late
    add_message(store, 11, "a", "queued", NOW - 200, 0.0)  # still waiting past its minute
    add_message(store, 12, "a", "queued", NOW - 30, 0.0)  # its minute is not up: not judged
    o = judge(store, [objective("event_latency", channels=["a"])], NOW)
    (r,) = o.state(NOW)["slos"]
    assert (r["good"], r["total"]) == (8, 10)
    assert r["measurement"] == pytest.approx(0.8)
    assert r["error_budget_remaining"] == pytest.approx(1 - 0.2 / 0.1)  # overspent: -1
    assert r["burn_rate"] == pytest.approx(10.0)  # both judged in the last 10 min were bad
    # the next turn judges only what came due since: the waiting one, now sent late
    o._judge_all(NOW + 60)
    (r,) = o.state(NOW + 60)["slos"]
    assert r["total"] == 11


def test_a_catch_up_in_chunks_judges_each_message_once(store: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(slos, "CHUNK", 4)
    for i in range(10):
        add_message(store, i, "a", "sent", NOW - 1000 + (i // 3), 1.0)  # ties at the edges
    o = judge(store, [objective("event_latency")], NOW)
    assert o.state(NOW)["slos"][0]["total"] == 10


def test_work_items_closed_within_their_time(store: Any) -> None:
    with store.transaction("t") as tx:
        for i, kind in enumerate(["UNBILLED_USAGE", "UNBILLED_USAGE", "INVOICE_HELD"]):
            tx.open_work_item(kind, f"s{i}", "d", None, None, NOW - 1000 - i)
    item = store.work_items(kind="UNBILLED_USAGE")[0]
    store.close_work_item(item["id"], actor="t", note="done", now=NOW - 990)
    o = judge(store, [objective("work_item_resolution", kinds=["UNBILLED_USAGE"])], NOW)
    r = o.state(NOW)["slos"][0]
    assert (r["good"], r["total"]) == (1, 2)


def test_reconciliation_is_usage_charged_within_its_time(store: Any) -> None:
    with store.transaction("t") as tx:
        c = tx.connection
        for i, (chargeable, charge) in enumerate(
            [(1, ("accepted", 10.0)), (1, ("accepted", 500.0)), (1, None), (0, None)]
        ):
            at = NOW - 2000 + i
            c.execute(
                "INSERT INTO consumption_events (id, business_key, kind, item_id, location_id, "
                "quantity, uom, chargeable, encounter, service_time, detail, message_id, "
                "correlation_id, created_at) VALUES (?, ?, 'usage', 'I', 'L', '1', 'EA', ?, 'E', "
                "'t', '{}', 'm', 'c', ?)",
                (i + 1, f"k{i}", chargeable, at),
            )
            if charge:
                c.execute(
                    "INSERT INTO charges (event_id, encounter, charge_code, quantity, uom, "
                    "transaction_type, status, message_id, correlation_id, created_at, "
                    "updated_at) VALUES (?, 'E', 'C', '1', 'EA', 'CG', ?, 'm', 'c', ?, ?)",
                    (i + 1, charge[0], at, at + charge[1]),
                )
    o = judge(store, [objective("reconciliation", within=86400.0 / 1000)], NOW)
    r = o.state(NOW)["slos"][0]
    assert (r["good"], r["total"]) == (1, 3)


def test_receipts_invoiced_within_their_time(store: Any) -> None:
    with store.transaction("t") as tx:
        c = tx.connection
        for i, (line, source) in enumerate([("1", "asn"), ("2", "erp"), ("3", "asn")]):
            c.execute(
                "INSERT INTO receipts (business_key, po_number, po_line, item_id, quantity, uom, "
                "base_quantity, source, created_at) VALUES (?, 'PO1', ?, 'I', '1', 'EA', '1', ?, ?)",
                (f"r{i}", line, source, NOW + 1 + i),
            )
        # line 1 invoiced and matched an hour after its receipt, line 2 a day after; 3 never
        for n, (line, after, status) in enumerate(
            [("1", 3600, "matched"), ("2", 86400, "released")]
        ):
            c.execute(
                "INSERT INTO invoices (id, partner, vendor_key, invoice_key, invoice_number, "
                "po_number, status, reasons, body, created_at, updated_at) VALUES "
                "(?, 'p', 'v', ?, ?, 'PO1', ?, '[]', '{}', ?, ?)",
                (n + 1, f"k{n}", f"INV{n}", status, NOW, NOW + after),
            )
            c.execute(
                "INSERT INTO invoice_lines (invoice_id, line, po_line, base_quantity) "
                "VALUES (?, '1', ?, '1')",
                (n + 1, line),
            )
    o = judge(store, [objective("receipts_invoiced", within=2 * 3600.0)], NOW + 3 * 3600)
    r = o.state(NOW + 3 * 3600)["slos"][0]
    assert (r["good"], r["total"]) == (1, 3)
