"""The revenue-cycle reports of the ledger follow a person's channels: rejected charges by the
channel that booked them (``charges.channel``, ledger migration 10, written with every charge)
and held credits by the channel that carried them; no scope (None) sees every channel, an
empty one none. Ledger migration 10 back-fills the channel of the charges still pending or
rejected from their messages (accepted ones, and those whose message is gone, stay in no
scope). On both dialects."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from engine.domains.ledger import reports
from engine.domains.ledger.domain import LEDGER, repository
from engine.domains.ledger.records import ConsumptionEvent
from engine.store import make_store


def event(key: str, *, kind: str = "usage", reverses: str | None = None) -> ConsumptionEvent:
    return ConsumptionEvent(
        business_key=key,
        kind=kind,
        item_id="STENT",
        location_id="LOC-CATH",
        quantity=Decimal("1"),
        uom="EA",
        encounter=f"ENC-{key}",
        service_time="20260116",
        chargeable=True,
        charge_code="278000789",
        source_line=key,
        unit_price=Decimal("900"),
        reverses=reverses,
    )


def open_ledger(location: Path | str, upto: int | None = None) -> Any:
    store = make_store(location).open()
    store.migrate("ledger", LEDGER.migrations(store.dialect)[:upto])
    return store


def charge(tx: Any, key: str, channel: str | None, status: str, now: float) -> None:
    """A usage event of ``channel``'s message and its charge, settled to ``status``."""
    message_id, corr = tx.internal_message(channel or "gone", "test", b"x", "text/plain", now)
    repo = repository(tx)
    eid = repo.add_event(event(key), message_id, corr, now)
    if channel is None:  # what a charge from before migration 10 looks like
        tx.connection.execute(
            "INSERT INTO charges (event_id, encounter, charge_code, quantity, uom, "
            "transaction_type, amount, currency, status, message_id, correlation_id, "
            "created_at, updated_at) VALUES (?, 'E', '1', '1', 'EA', 'CG', '9', 'USD', "
            "'pending', ?, ?, ?, ?)",
            (eid, message_id, corr, now, now),
        )
    else:
        repo.add_charge(eid, event(key), Decimal("1"), "CG", message_id, corr, now, channel=channel)
    if status != "pending":
        assert repo.set_charge_status(key, status, now)


def test_rejected_charges_and_held_credits_follow_the_scope(store_location: Path | str) -> None:
    store = open_ledger(store_location)
    now = time.time()
    with store.transaction("book") as tx:
        charge(tx, "A1", "cath_lab", "rejected", now)
        charge(tx, "A2", "cath_lab", "accepted", now + 1)
        charge(tx, "B1", "or_pou", "rejected", now + 2)
        repo = repository(tx)
        for key, channel in (("CA|CD", "cath_lab"), ("CB|CD", "or_pou")):
            mid, corr = tx.internal_message(channel, "test", b"x", "text/plain", now)
            credit = event(key, kind="credit", reverses=key[:2])
            assert repo.hold_credit(credit, channel, mid, corr, now) is not None
    with store.reading() as rd:
        every = reports.charges_in(rd, "rejected")
        cath = reports.charges_in(rd, "rejected", channels=["cath_lab"])
        both = reports.charges_in(rd, "rejected", channels=["cath_lab", "or_pou"])
        none = reports.charges_in(rd, "rejected", channels=[])
        credits = reports.held_credits(rd)
        or_credits = reports.held_credits(rd, channels=["or_pou"])
        no_credits = reports.held_credits(rd, channels=["elsewhere"])
    assert [(c["encounter"], c["channel"]) for c in every] == [
        ("ENC-B1", "or_pou"),
        ("ENC-A1", "cath_lab"),
    ]  # newest first, accepted left out
    assert [c["encounter"] for c in cath] == ["ENC-A1"]
    assert both == every and none == []
    assert [c["business_key"] for c in credits] == ["CA|CD", "CB|CD"]
    assert [(c["business_key"], c["channel"]) for c in or_credits] == [("CB|CD", "or_pou")]
    assert no_credits == []


def test_migration_10_back_fills_pending_and_rejected_charges(store_location: Path | str) -> None:
    """Charges written before the column: those pending or rejected take their message's
    channel; an accepted one stays NULL (in no scope); a new write carries its channel."""
    store = open_ledger(store_location, 9)
    now = time.time()
    with store.transaction("before") as tx:
        for key, status in (("P1", "pending"), ("R1", "rejected"), ("K1", "accepted")):
            charge(tx, key, None, status, now)
        rows = tx.connection.execute("SELECT id, message_id FROM charges").fetchall()
        for cid, mid in rows:  # each charge's message of its own channel
            tx.connection.execute("UPDATE messages SET channel = ? WHERE id = ?", (f"ch{cid}", mid))
    store.migrate("ledger", LEDGER.migrations(store.dialect))
    with store.reading() as rd:
        by_id = rd.connection.execute(
            "SELECT id, status, channel FROM charges ORDER BY id"
        ).fetchall()
    assert [(s, c) for _, s, c in by_id] == [
        ("pending", f"ch{by_id[0][0]}"),
        ("rejected", f"ch{by_id[1][0]}"),
        ("accepted", None),
    ]
    with store.transaction("after") as tx:
        charge(tx, "N1", "cath_lab", "rejected", now + 5)
    with store.reading() as rd:
        new = reports.charges_in(rd, "rejected", channels=["cath_lab"])
        old = reports.charges_in(rd, "rejected", channels=[f"ch{by_id[1][0]}"])
    assert [c["encounter"] for c in new] == ["ENC-N1"]
    assert [c["id"] for c in old] == [by_id[1][0]]
