"""Goods receipts in the inventory-to-finance reconciliation, over a real store on both
dialects: 856 lines that count as the receipt are pending until the ERP's goods receipt
delivery settles (through the runtime's delivery outcomes, as the worker settles them), then
posted, dead-lettered or rejected; the ERP's own receipts and returns are posted; an expected
receipt (an ASN that is not the receipt) is left out; by location, item and UTC month, valued
at the PO's price in the PO line's base unit. And procurement's migration 5 on a store of
migration 4 whose 856 receipts were sent before it."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from engine.channel import Channel
from engine.config.project import load_project
from engine.domains.procurement import reports
from engine.domains.procurement.book import book_x12
from engine.domains.procurement.domain import repository
from engine.domains.procurement.memory import InMemoryProcurementRepository
from engine.domains.procurement.records import ErpReceipt, ErpReceiptLine, ErpReturn
from engine.model import Inbound
from engine.runtime.outcomes import DeliveryBook
from engine.runtime.store import open_store
from tests.unit.test_x12_book import REPO, inbound, release


def at(*when: int) -> float:
    return datetime(*when, tzinfo=UTC).timestamp()


def asn(shipment: str, quantity: str, unit: str) -> list[list[str]]:
    return [
        ["BSN", "00", shipment, "20260116", "1400", "0001"],
        ["HL", "1", "", "S"],
        ["HL", "2", "1", "O"],
        ["PRF", "PO-1"],
        ["HL", "3", "2", "I"],
        ["LIN", "1", "VC", "X"],
        ["SN1", "1", quantity, unit],
        ["CTT", "3"],
    ]


class Vendors:
    """The shipped x12_from_vendors channel over a real store: each booking is a message
    ingested and finished with what the book made of it, in one commit; its deliveries settle
    through the runtime's delivery outcomes."""

    def __init__(self, location: Path | str) -> None:
        self.project = load_project(REPO, env={})
        self.channel = Channel.of(self.project, "x12_from_vendors")
        self.binding = self.channel.bindings[0]
        self.partners = self.project.extras["trading_partners"]
        self.store = open_store(location)
        self.outcomes = DeliveryBook(
            self.store, lambda ch: self.channel.bindings if ch == self.channel.name else []
        )
        self.n = 0

    def book(self, records: list, now: float, partners: Any = None) -> tuple[str, list[dict]]:
        self.n += 1
        data = f"interchange {self.n}".encode()
        item = Inbound(self.channel.name, "t", data, "application/edi-x12", now)
        mid = self.store.ingest_batch([item], now)[0].message_id
        with self.store.transaction("book") as tx:
            out = book_x12(
                repository(tx),
                records=records,
                channel=self.channel.name,
                message_id=mid,
                correlation_id=mid,
                routes=self.binding.routes,
                partners=partners or self.partners,
                converter=self.binding.converter,
                now=now,
            )
            tx.finish(mid, status="sent", now=now, outbound=out)
        return mid, [
            d for d in self.store.deliveries_for(mid) if d["destination"] == "erp_receipts"
        ]

    def ship(self, shipment: str, quantity: str, unit: str, control: int, now: float) -> Any:
        return self.book([inbound("856", "SH", asn(shipment, quantity, unit), control)], now)

    def report(self, since: float = 0.0) -> dict[str, Any]:
        with self.store.reading() as rd:
            return reports.receipt_reconciliation(rd, since)

    def postings(self) -> list[tuple[str, str | None]]:
        rows = self.store._conn().execute(
            "SELECT status, reason FROM receipt_postings ORDER BY receipt_id"
        )
        return [tuple(r) for r in rows.fetchall()]


def figures(row: dict[str, Any]) -> tuple[Any, ...]:
    return (
        row["period"],
        row["location"],
        row["item"],
        row["uom"],
        *(Decimal(row[k]) for k in reports.RECEIPT_FIGURES),
        {k: Decimal(v) for k, v in row["reasons"].items()},
        row["messages"],
    )


def test_receipts_against_what_the_erp_posted_by_location_item_and_month(
    store_location: Path | str,
) -> None:
    """PO-1 orders 2 BX at 125.00 (10 EA: 25.00 an EA). In January ACME's 856s receive 1 BX
    (posted), 2 EA (dead-lettered after its retries), 1 EA (refused: a permanent failure) and,
    the last second of the month, 1 EA still pending; in February the ERP's own receipt of
    1 BX and its return of 1 EA count as posted, and an ASN that is only the expected receipt
    is left out. The same figures on both dialects."""
    v = Vendors(store_location)
    v.book([release(v.project)], at(2026, 1, 15))
    _, (posted,) = v.ship("S1", "1", "BX", 11, at(2026, 1, 20, 10))
    dead_mid, (dead,) = v.ship("S2", "2", "EA", 12, at(2026, 1, 21))
    refused_mid, (refused,) = v.ship("S3", "1", "EA", 13, at(2026, 1, 22))
    pending_mid, (pending,) = v.ship("S4", "1", "EA", 14, at(2026, 1, 31, 23, 59, 59) + 0.6)
    assert posted["meta"]["effect"] == "receipt"
    assert v.postings() == [("pending", None)] * 4
    v.outcomes.delivery_succeeded(posted["id"], b'{"id": "GR-1"}', at(2026, 1, 20, 11))
    v.outcomes.delivery_retry(dead["id"], "503", at(2026, 1, 21, 1), at(2026, 1, 21, 0, 1))
    v.outcomes.delivery_dead(dead["id"], "gave up after 20 attempts: 503", at(2026, 1, 21, 2))
    v.outcomes.delivery_dead(refused["id"], "permanent failure: 422 PO closed", at(2026, 1, 23))
    assert v.postings() == [
        ("posted", None),
        ("dead", "gave up after 20 attempts: 503"),
        ("rejected", "permanent failure: 422 PO closed"),
        ("pending", None),
    ]
    erp = ErpReceipt("GR-9", "PO-1", (ErpReceiptLine("1", Decimal(1), "BX"),))
    v.book([erp], at(2026, 2, 3))
    v.book([ErpReturn("RTV-1", "PO-1", (ErpReceiptLine("1", Decimal(1), "EA"),))], at(2026, 2, 4))
    acme = v.partners["acmemed"]
    expected_only = dataclasses.replace(
        v.partners,
        partners={
            **v.partners.partners,
            "acmemed": dataclasses.replace(acme, asn_is_receipt=False),
        },
    )
    _, sent = v.book(
        [inbound("856", "SH", asn("S5", "1", "BX"), 15)], at(2026, 2, 5), expected_only
    )
    assert len(sent) == 1 and len(v.postings()) == 4  # sent as expected, not a receipt posting

    data = v.report()
    place = ("LOC-OR-MAIN", "ITEM-100123", "EA")
    january_reasons = {"dead-lettered": 2, "pending delivery": 1, "rejected by the ERP": 1}
    assert [figures(r) for r in data["rows"]] == [
        (
            "2026-01",
            *place,
            9,
            225,
            5,
            125,
            4,
            100,
            january_reasons,
            [pending_mid, refused_mid, dead_mid],
        ),
        ("2026-02", *place, 4, 100, 4, 100, 0, 0, {}, []),
    ]
    assert data["rows"][0]["received_value"] == "225.00"
    assert data["rows"][0]["reason"] == (
        "dead-lettered 2; pending delivery 1; rejected by the ERP 1"
    )
    assert data["periods"] == [
        {
            "period": "2026-01",
            "received_value": "225.00",
            "posted_value": "125.00",
            "difference_value": "100.00",
        },
        {
            "period": "2026-02",
            "received_value": "100.00",
            "posted_value": "100.00",
            "difference_value": "0.00",
        },
    ]
    # the window starts at ``since``; ``drill`` bounds the messages, ``limit`` the rows
    assert [r["period"] for r in v.report(at(2026, 2, 1))["rows"]] == ["2026-02"]
    with v.store.reading() as rd:
        one = reports.receipt_reconciliation(rd, 0.0, limit=1, drill=1)
    assert [(r["period"], r["messages"]) for r in one["rows"]] == [("2026-01", [pending_mid])]
    # the pending one posted at last: January agrees but for what the ERP never took
    v.outcomes.delivery_succeeded(pending["id"], None, at(2026, 2, 1))
    (jan, _feb) = v.report()["rows"]
    assert (jan["posted_quantity"], jan["difference_value"]) == ("6", "75.00")
    assert jan["messages"] == [refused_mid, dead_mid]
    v.store.close()


def test_a_goods_receipt_without_a_receipts_destination_is_not_sent(
    store_location: Path | str,
) -> None:
    """A channel with no ``receipts`` destination sends no goods receipt: its 856 lines are
    received and differ from the ERP as not sent (no posting row to wait for)."""
    v = Vendors(store_location)
    v.binding.routes = dataclasses.replace(v.binding.routes, receipts=None)
    v.book([release(v.project)], at(2026, 1, 15))
    mid, sent = v.ship("S1", "1", "BX", 11, at(2026, 1, 20))
    assert sent == [] and v.postings() == []
    (row,) = v.report()["rows"]
    assert (row["difference_quantity"], row["reasons"], row["messages"]) == (
        "5",
        {"not sent": "5"},
        [mid],
    )
    v.store.close()


def test_the_in_memory_repository_keeps_receipt_postings_as_the_sql_one() -> None:
    """A posting for a receipt line recorded, once; settled by its goods receipt's key."""
    from engine.domains.procurement.repository import NewReceipt

    repo = InMemoryProcurementRepository()
    repo.add_receipt_posting("nothing", "k", "erp_receipts", "m", 1.0)
    assert repo.receipt_postings == {}  # no such receipt line
    repo.add_receipt(
        NewReceipt(
            "B1",
            "PO-1",
            "1",
            "I",
            Decimal(1),
            "EA",
            Decimal(1),
            None,
            None,
            None,
            None,
            "asn",
            "m",
            1.0,
            "c",
        )
    )
    repo.add_receipt_posting("B1", "k", "erp_receipts", "m", 1.0)
    repo.add_receipt_posting("B1", "k2", "erp_receipts", "m2", 2.0)  # taken once
    assert repo.settle_receipt_postings("k2", "posted", None, 3.0) == 0
    assert repo.settle_receipt_postings("k", "rejected", "permanent failure: 422", 3.0) == 1
    assert (repo.receipt_postings["B1"]["status"], repo.receipt_postings["B1"]["reason"]) == (
        "rejected",
        "permanent failure: 422",
    )


def test_a_store_of_migration_4_takes_the_outcomes_of_the_goods_receipts_sent_before(
    store_location: Path | str,
) -> None:
    """Procurement's migration 5 on a store of migration 4 (no receipt postings) whose 856
    goods receipts went to the ERP before it: each line takes its delivery's outcome as the
    outbox has it (posted, refused, still pending); a line whose delivery is gone shows as
    not sent; the ERP's own receipt needs none."""
    from engine.domains.procurement.schema import migrations

    v = Vendors(store_location)
    v.book([release(v.project)], at(2026, 1, 15))
    _, (posted,) = v.ship("S1", "1", "BX", 11, at(2026, 1, 20))
    refused_mid, (refused,) = v.ship("S2", "2", "EA", 12, at(2026, 1, 21))
    pending_mid, _ = v.ship("S3", "1", "EA", 13, at(2026, 1, 22))
    gone_mid, (gone,) = v.ship("S4", "1", "EA", 14, at(2026, 1, 23))
    v.book([ErpReceipt("GR-9", "PO-1", (ErpReceiptLine("1", Decimal(1), "EA"),))], at(2026, 1, 24))
    v.outcomes.delivery_succeeded(posted["id"], None, at(2026, 1, 20, 1))
    v.outcomes.delivery_dead(refused["id"], "permanent failure: 422 PO closed", at(2026, 1, 21, 1))
    conn = v.store._conn()  # back to procurement as of migration 4, the outbox as it was
    conn.execute("DELETE FROM component_versions WHERE component = 'procurement' AND version >= 5")
    conn.execute("DROP TABLE receipt_postings")
    conn.execute("DELETE FROM outbox WHERE id = ?", (gone["id"],))  # pruned since
    history = migrations(v.store.dialect)
    assert v.store.migrate("procurement", history) == history[-1][0]
    assert v.postings() == [
        ("posted", None),
        ("rejected", "permanent failure: 422 PO closed"),
        ("pending", None),
    ]
    (row,) = v.report()["rows"]
    assert (row["received_quantity"], row["posted_quantity"]) == ("10", "6")
    assert row["reasons"] == {"not sent": "1", "pending delivery": "1", "rejected by the ERP": "2"}
    assert set(row["messages"]) == {gone_mid, pending_mid, refused_mid}
    # what settles afterwards is heard as before
    (pending,) = v.store.deliveries_for(pending_mid)
    v.outcomes.delivery_succeeded(pending["id"], None, at(2026, 1, 25))
    assert v.postings()[2] == ("posted", None)
    assert v.store.migrate("procurement", history) == history[-1][0]  # once
    v.store.close()
