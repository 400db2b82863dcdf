"""The ledger's running totals by day (``usage_daily``, ``issue_daily``, ledger migration 9):
the utilization and reconciliation reports sum every event of their window, however many (they
read only the totals; the reports used to load the newest ``limit`` x 20 events), kept by
triggers through charges rejected and ERP postings settled, on both dialects."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from engine.domains.ledger import reports
from engine.domains.ledger.domain import LEDGER, repository
from engine.domains.ledger.records import ConsumptionEvent, Posting, PostingOutcome
from engine.store import make_store

COST = {"STENT": Decimal("10"), "GLOVE": Decimal("0.25")}.get
DAY = 86400.0


def open_ledger(location: Path | str) -> Any:
    store = make_store(location).open()
    store.migrate("ledger", LEDGER.migrations(store.dialect))
    return store


def usage(n: int, item: str, qty: str, *, chargeable: bool = True, **kw: Any) -> ConsumptionEvent:
    base = dict(
        business_key=f"L{n}|{item}",
        kind="usage",
        item_id=item,
        location_id=f"LOC-{n % 3}",
        quantity=Decimal(qty),
        uom="EA",
        encounter=f"ENC-{n}",
        service_time="20260116",
        chargeable=chargeable,
        charge_code="278000789",
        source_line=str(n),
        unit_price=Decimal("12.50") if chargeable else None,
        performer=f"DR{n % 4}",
    )
    base.update(kw)
    return ConsumptionEvent(**base)


def book(tx: Any, events: list[ConsumptionEvent], now: float, *, post: bool) -> list[int]:
    """Each event, its charge (when billable) and its ERP posting (pending) through the
    repository's own methods; their ids."""
    repo = repository(tx)
    ids = []
    for i, ev in enumerate(events):
        eid = repo.add_event(ev, f"m{i % 97}", "c", now)
        if ev.chargeable:
            repo.add_charge(eid, ev, ev.quantity, "CG", f"m{i % 97}", "c", now)
        if post:
            repo.add_posting(
                Posting(eid, ev.business_key, f"iss{eid}", "erp", ev.location_id, ev.item_id,
                        ev.quantity, ev.uom, f"m{i % 97}", now)
            )  # fmt: skip
        ids.append(eid)
    return ids


def test_the_reports_sum_every_event_past_the_old_cap(tmp_path: Path) -> None:
    """More events than the old cap of 20,000 (limit 1000 x 20): the totals are the sums of
    every event booked, billable and not."""
    store = open_ledger(tmp_path / "wharf.db")
    now = time.time()
    events = [usage(n, "GLOVE", "2", chargeable=n % 5 != 0) for n in range(20_600)]
    with store.transaction("bulk") as tx:
        book(tx, events, now, post=False)
    with store.reading() as rd:
        rows = reports.utilization(rd, now - DAY, by="location", cost=COST)
        billable = reports.utilization(rd, now - DAY, by="location", cost=COST, billable=True)
        recon = reports.reconciliation(rd, now - DAY, COST)
    assert sum(r["events"] for r in rows) == 20_600
    assert sum(Decimal(r["quantity"]) for r in rows) == 41_200
    assert sum(Decimal(r["non_billable_quantity"]) for r in rows) == 2 * 4_120
    assert sum(Decimal(r["charged"]) for r in rows) == Decimal("25.00") * 16_480
    assert sum(Decimal(r["supply_cost"]) for r in rows) == Decimal("10300.00")
    assert sum(r["events"] for r in billable) == 16_480
    assert sum(Decimal(r["ledger_quantity"]) for r in recon["rows"]) == 41_200
    assert {k for r in recon["rows"] for k in r["reasons"]} == {"not sent"}
    assert [p["ledger_value"] for p in recon["periods"]] == ["10300.00"]
    assert all(len(r["messages"]) == 10 for r in recon["rows"])


def test_a_small_limit_no_longer_truncates(store_location: Path | str) -> None:
    """With ``limit`` 2 the old reports read the newest 40 events only; every one of 90 now
    counts, in no more than 2 groups; on both dialects."""
    store = open_ledger(store_location)
    now = time.time()
    with store.transaction("bulk") as tx:
        book(tx, [usage(n, "STENT", "1.5") for n in range(90)], now, post=True)
    with store.reading() as rd:
        rows = reports.utilization(rd, now, limit=2, by="location", cost=COST)
        recon = reports.reconciliation(rd, now, COST, limit=2)
    assert [(r["location"], r["events"], Decimal(r["quantity"])) for r in rows] == [
        ("LOC-0", 30, 45),
        ("LOC-1", 30, 45),
    ]
    assert [(r["location"], Decimal(r["ledger_quantity"])) for r in recon["rows"]] == [
        ("LOC-0", 45),
        ("LOC-1", 45),
    ]
    assert {k: Decimal(v) for k, v in recon["rows"][0]["reasons"].items()} == {
        "pending delivery": 45
    }


def test_the_totals_follow_charges_and_postings_and_the_window(
    store_location: Path | str,
) -> None:
    """A charge rejected leaves the charged amount; a posting settled moves its quantity from
    pending to posted (or dead-lettered, or rejected); events booked before the window's first
    UTC day are left out; on both dialects."""
    store = open_ledger(store_location)
    now = time.time()
    old = now - 40 * DAY
    with store.transaction("bulk") as tx:
        book(tx, [usage(100 + n, "STENT", "9", location_id="OR") for n in range(3)], old, post=True)
        ids = book(tx, [usage(n, "STENT", "1", location_id="OR") for n in range(3)], now, post=True)
    with store.transaction("settle") as tx:
        repo = repository(tx)
        assert repo.set_charge_status("L0|STENT", "accepted", now)
        assert repo.set_charge_status("L1|STENT", "rejected", now)
        for eid, status in zip(ids, ("posted", "dead", "rejected"), strict=True):
            repo.settle_postings(
                f"iss{eid}", PostingOutcome(status, now, document="D1", unit_cost=COST)
            )
    with store.reading() as rd:
        (row,) = reports.utilization(rd, now - 30 * DAY, by="item", cost=COST)
        (recon,) = reports.reconciliation(rd, now - 30 * DAY, COST)["rows"]
        (everything,) = reports.utilization(rd, old, by="item", cost=COST)
    assert (row["events"], row["quantity"], row["charged"], row["supply_cost"]) == (
        3,
        "3",
        "25.00",
        "30.00",
    )
    assert everything["events"] == 6 and everything["quantity"] == "30"
    assert (recon["ledger_quantity"], recon["posted_quantity"], recon["posted_value"]) == (
        "3",
        "1",
        "10.00",
    )
    assert recon["reasons"] == {"dead-lettered": "1", "rejected by the ERP": "1"}
    with store.transaction("again") as tx:  # rejected, then accepted after all
        assert repository(tx).set_charge_status("L1|STENT", "accepted", now)
    with store.reading() as rd:
        (row,) = reports.utilization(rd, now - 30 * DAY, by="item", cost=COST)
    assert row["charged"] == "37.50"


def test_the_migration_totals_what_the_ledger_holds(tmp_path: Path) -> None:
    """A ledger at version 8 with events, charges and postings: migration 9 totals them."""
    store = make_store(tmp_path / "wharf.db").open()
    store.migrate("ledger", LEDGER.migrations(store.dialect)[:8])
    now = time.time()
    with store.transaction("bulk") as tx:
        # today's repository writes each charge's channel (ledger migration 10, which then
        # finds the column and leaves it)
        tx.connection.execute("ALTER TABLE charges ADD COLUMN channel TEXT")
        book(tx, [usage(n, "STENT", "2") for n in range(6)], now, post=True)
    store.migrate("ledger", LEDGER.migrations(store.dialect))
    with store.reading() as rd:
        rows = reports.utilization(rd, now, by="item", cost=COST)
        recon = reports.reconciliation(rd, now, COST)
    assert [(r["location"], r["events"], r["charged"]) for r in rows] == [
        ("LOC-0", 2, "50.00"),
        ("LOC-1", 2, "50.00"),
        ("LOC-2", 2, "50.00"),
    ]
    assert [r["reasons"] for r in recon["rows"]] == [{"pending delivery": "4"}] * 3
