"""The procurement book against both of its repositories (the store's SQLite one, booked in a
transaction, and the in-memory one): a PO sent once with control numbers that are never
reused, late 997/999 alerts, receipts, held invoices released or rejected by a person, and the
receipts nobody invoiced. Checks only SQL can make (the outbox, the audit) run on SQLite."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from engine.channel import Channel
from engine.config.project import load_project
from engine.domains.procurement import desk
from engine.domains.procurement.book import book_x12, flag_overdue_acks
from engine.domains.procurement.control import record_ack
from engine.domains.procurement.domain import converter, repository
from engine.domains.procurement.memory import InMemoryProcurementRepository
from engine.domains.procurement.numbers import ControlNumbers
from engine.domains.procurement.po850 import segments_850
from engine.domains.procurement.records import InboundInterchange, PoLine, PoRelease
from engine.domains.procurement.repository import ProcurementRepository
from engine.errors import StoreError
from engine.model import Outbound
from engine.runtime.store import open_store
from engine.x12.documents import read_invoice, read_ship_notice
from engine.x12.samplegen import Party, group, interchange, render, transaction_set
from engine.x12.segments import transaction_sets

REPO = Path(__file__).resolve().parents[2]
VENDOR, HOSPITAL = Party("ZZ", "ACMEMED"), Party("ZZ", "GENHOSP")
PO = {
    "po_number": "PO-1",
    "vendor": "VND-ACMEMED",
    "order_date": "2026-01-15",
    "ship_to": {"gln": "0614141000012", "name": "GENERAL HOSPITAL"},
    "lines": [
        {"line": "1", "item_id": "ITEM-100123", "qty": "2", "uom": "BX", "unit_price": "125.00"}
    ],
}


class Book:
    """What both kinds of book share: the channel's routes, partners and unit conversions."""

    store: Any = None

    def __init__(self, project: Any, channel: Channel) -> None:
        self.project = project
        self.channel = channel

    def _book(self, repo: ProcurementRepository, records: list, mid: str, now: float) -> list:
        return book_x12(
            repo,
            records=records,
            channel=self.channel.name,
            message_id=mid,
            correlation_id=mid,
            routes=self.channel.bindings[0].routes,
            partners=self.project.extras["trading_partners"],
            converter=self.channel.bindings[0].converter,
            now=now,
        )


class SqliteBook(Book):
    """The book over the store's SQLite repository, each booking in its own transaction (as
    the runtime books a message), with messages for it to point at."""

    def __init__(self, project: Any, channel: Channel, store: Any) -> None:
        super().__init__(project, channel)
        self.store = store
        # the book runs inside a message's commit: give it messages to point at
        with store._write("seed") as conn:
            for mid in ("m-po", "m-asn", "m-inv"):
                conn.execute(
                    "INSERT INTO messages (id, channel, source, content_type, received_at, "
                    "updated_at, sha256, size, status) "
                    "VALUES (?, 'x12_from_vendors', 'test', 'x', 0, 0, '', 0, 'sent')",
                    (mid,),
                )

    def book(self, records: list, mid: str, now: float) -> list:
        with self.store.transaction("book") as tx:
            return self._book(repository(tx), records, mid, now)

    @contextmanager
    def repository(self) -> Iterator[ProcurementRepository]:
        with self.store.transaction("repository") as tx:
            yield repository(tx)

    def flag_overdue(self, now: float) -> int:
        with self.store.transaction("flag_overdue_acks", durable=False) as tx:
            return flag_overdue_acks(repository(tx), now)

    def record_ack(self, partner: str, gs06: int, status: str) -> None:
        with self.store._write("ack") as c:
            record_ack(c, partner, gs06, status)

    def invoices(self, status: str | None = None) -> list[dict[str, Any]]:
        with self.store.reading() as rd:
            return desk.invoices(repository(rd), status)

    def unmatched_receipts(self, *, older_than: float, now: float) -> list[dict[str, Any]]:
        with self.store.reading() as rd:
            return desk.unmatched_receipts(repository(rd), older_than=older_than, now=now)

    def release(self, invoice_id: int, *, actor: str, note: str, now: float) -> dict[str, Any]:
        return desk.release_invoice(
            self.store, self.project, invoice_id, actor=actor, note=note, now=now
        )

    def reject(self, invoice_id: int, *, actor: str, note: str, now: float) -> dict[str, Any]:
        return desk.reject_invoice(self.store, invoice_id, actor=actor, note=note, now=now)

    def sql(self, sql: str, *params: Any) -> list[tuple]:
        return [tuple(r) for r in self.store._conn().execute(sql, params).fetchall()]

    def open_work_items(self, kind: str) -> int:
        (row,) = self.sql(
            "SELECT COUNT(*) FROM work_items WHERE kind = ? AND status = 'open'", kind
        )
        return row[0]

    def work_item_statuses(self, kind: str) -> list[tuple]:
        return self.sql("SELECT status FROM work_items WHERE kind = ?", kind)

    def work_item_details(self, kind: str, status: str | None = None) -> list[str]:
        if status is None:
            return [r[0] for r in self.sql("SELECT detail FROM work_items WHERE kind = ?", kind)]
        rows = self.sql("SELECT detail FROM work_items WHERE kind = ? AND status = ?", kind, status)
        return [r[0] for r in rows]

    def ack_statuses(self) -> list[tuple]:
        return self.sql("SELECT ack_status FROM x12_outbound")

    def count(self, table: str) -> int:
        return self.sql(f"SELECT COUNT(*) FROM {table}")[0][0]

    def onhand(self, location: str, item: str) -> tuple | None:
        rows = self.sql(
            "SELECT quantity FROM onhand WHERE location_id = ? AND item_id = ?", location, item
        )
        return rows[0] if rows else None

    def released_to_ap(self, mid: str) -> bytes:
        (payload,) = (
            self.store._conn()
            .execute(
                "SELECT payload FROM outbox WHERE destination = 'erp_ap' AND message_id = ?", (mid,)
            )
            .fetchone()
        )
        return bytes(payload)


class MemoryBook(Book):
    """The same book over the in-memory repository (no SQL at all); what the AP desk releases
    is kept as the outbox would keep it."""

    def __init__(self, project: Any, channel: Channel) -> None:
        super().__init__(project, channel)
        self.repo = InMemoryProcurementRepository()
        self.outbox: list[tuple[str | None, Outbound]] = []

    def book(self, records: list, mid: str, now: float) -> list:
        return self._book(self.repo, records, mid, now)

    @contextmanager
    def repository(self) -> Iterator[ProcurementRepository]:
        yield self.repo

    def flag_overdue(self, now: float) -> int:
        return flag_overdue_acks(self.repo, now)

    def record_ack(self, partner: str, gs06: int, status: str) -> None:
        self.repo.record_ack(partner, gs06, status)

    def invoices(self, status: str | None = None) -> list[dict[str, Any]]:
        return desk.invoices(self.repo, status)

    def unmatched_receipts(self, *, older_than: float, now: float) -> list[dict[str, Any]]:
        return desk.unmatched_receipts(self.repo, older_than=older_than, now=now)

    def release(self, invoice_id: int, *, actor: str, note: str, now: float) -> dict[str, Any]:
        held = desk.held_invoice(self.repo, invoice_id)
        partner = self.project.extras["trading_partners"][held.partner]
        ap = self.channel.bindings[0].routes.ap
        delivery = desk.ap_release(
            self.repo,
            held,
            partner,
            converter(self.project.mappings, partner),
            channel=self.channel.name,
            destination=ap,
            actor=actor,
            note=note,
        )
        self.outbox.append((held.message_id, delivery))
        desk.close(self.repo, held, "released", now)
        return {"invoice": held.invoice_number, "status": "released", "ap_destination": ap}

    def reject(self, invoice_id: int, *, actor: str, note: str, now: float) -> dict[str, Any]:
        held = desk.held_invoice(self.repo, invoice_id)
        desk.close(self.repo, held, "rejected", now)
        return {"invoice": held.invoice_number, "status": "rejected"}

    def _items(self, kind: str) -> list[dict[str, Any]]:
        return [w for w in self.repo.work_items if w["kind"] == kind]

    def open_work_items(self, kind: str) -> int:
        return sum(w["status"] == "open" for w in self._items(kind))

    def work_item_statuses(self, kind: str) -> list[tuple]:
        return [(w["status"],) for w in self._items(kind)]

    def work_item_details(self, kind: str, status: str | None = None) -> list[str]:
        return [w["detail"] for w in self._items(kind) if status in (None, w["status"])]

    def ack_statuses(self) -> list[tuple]:
        return [(r.ack_status,) for r in self.repo.outbound]

    def count(self, table: str) -> int:
        return len({"receipts": self.repo.receipts, "invoices": self.repo.invoice_rows}[table])

    def onhand(self, location: str, item: str) -> tuple | None:
        held = self.repo.onhand.get((location, item))
        return None if held is None else (str(held[0]),)

    def released_to_ap(self, mid: str) -> bytes:
        (payload,) = [o.payload for m, o in self.outbox if m == mid and o.destination == "erp_ap"]
        return payload


@pytest.fixture(params=["sqlite", "postgresql", "memory"])
def env(request: Any) -> Any:
    """The book against every repository (the store's on SQLite and on PostgreSQL, and the
    in-memory one): the same scenarios, the same answers."""
    project = load_project(REPO, env={})
    channel = Channel.of(project, "x12_from_vendors")
    if request.param == "memory":
        yield MemoryBook(project, channel)
        return
    location = (
        request.getfixturevalue("pg_url")
        if request.param == "postgresql"
        else Path(tempfile.mkdtemp()) / "w.db"
    )
    store = open_store(location)
    yield SqliteBook(project, channel, store)
    store.close()


def release(project: Any) -> PoRelease:
    partner = project.extras["trading_partners"]["acmemed"]
    line = PoLine("1", "ITEM-100123", Decimal(2), "BX", Decimal("125.00"), Decimal(10), "EA")
    return PoRelease(
        "acmemed",
        "PO-1",
        "VND-ACMEMED",
        "LOC-OR-MAIN",
        "USD",
        (line,),
        tuple(tuple(s) for s in segments_850(PO, partner)),
    )


def inbound(
    set_id: str, fid: str, body: list[list[str]], control: int, gs06: int | None = None
) -> InboundInterchange:
    data = render(
        interchange(
            [
                group(
                    fid, gs06 or control, [transaction_set(set_id, "0001", body)], version="005010"
                )
            ],
            control=control,
            version="005010",
        )
    )
    ((ic, _g, ts),) = list(transaction_sets(data))
    reader = {"856": read_ship_notice, "810": read_invoice}[set_id]
    return InboundInterchange(
        "acmemed",
        ("ZZ", "ACMEMED"),
        ("ZZ", "GENHOSP"),
        ic.control_number,
        ((_g.control_number, ts.id, ts.control_number),),
        None,
        ((reader(ts), ts, _g.control_number),),
    )


def test_control_numbers_the_interchange_log_and_inbound_sets(env: Any) -> None:
    """What the book asks of the repository about X12 numbers: both give the same answers."""
    with env.repository() as repo:
        assert repo.allocate("acme", "isa13") == [1]
        assert repo.allocate("acme", "isa13", 3) == [2, 3, 4]
        assert repo.allocate("harbor", "isa13") == [1]
        numbers = repo.allocate_envelope("acme", sets=2)
        assert numbers == ControlNumbers(5, 1, (1, 2))
        with pytest.raises(ValueError, match=r"'kind' must be one of isa13, gs06, st02"):
            repo.allocate("acme", "ISA13")
        with pytest.raises(ValueError, match=r"'n' must be an integer in 1..10000 \(got 0\)"):
            repo.allocate("acme", "gs06", 0)
        for po, sent in (("PO-1", 1000.0), ("PO-2", 1010.0)):
            repo.record_outbound(
                partner="acme",
                numbers=numbers,
                document="850",
                business_key=po,
                sent_at=sent,
                ack_within=60.0,
                message_id="m-po",
            )
        assert repo.overdue_acks(1059.0) == []
        assert [r.business_key for r in repo.overdue_acks(1070.0)] == ["PO-1", "PO-2"]
        # the same numbers twice (a wrap): the latest sent is the one answered
        rec = repo.record_ta1("acme", 5, "R", "025")
        assert rec is not None and rec.business_key == "PO-2"
        assert (rec.ta1_status, rec.ack_status, rec.ack_codes) == ("R", "rejected", ("TA1:025",))
        rec = repo.record_ack("acme", 1, "partial", ["AK9:P"])
        assert rec is not None and (rec.business_key, rec.ack_codes) == ("PO-2", ("AK9:P",))
        assert [r.business_key for r in repo.overdue_acks(2000.0)] == ["PO-1"]
        assert repo.record_ack("acme", 99, "accepted") is None
        assert repo.record_ack("harbor", 1, "accepted") is None
        repo.record_inbound(
            ("ZZ", "ACMEMED  "),
            "000000042",
            "0007",
            "0001",
            receiver=("ZZ", "GENHOSP"),
            message_id="m-asn",
            received_at=1000.0,
        )
        assert repo.seen_interchange(("ZZ", "ACMEMED"), "42", 60.0, 1060.0)
        assert not repo.seen_interchange(("ZZ", "ACMEMED"), "42", 60.0, 1061.0)
        assert not repo.seen_interchange(("ZZ", "ACMEMED"), "43", 60.0, 1000.0)
        assert repo.seen_groups(("ZZ", "ACMEMED"), 1000.0) == {"7"}
        assert repo.seen_groups(("ZZ", "ACMEMED"), 1000.5) == set()


def test_po_sent_once_and_late_ack_alerted(env: Any) -> None:
    project = env.project
    out = env.book([release(project)], "m-po", 1000.0)
    assert [o.destination for o in out] == ["vendors", "erp_po"]
    assert out[0].meta["filename"] == "850_acmemed_000000001.x12"
    assert env.book([release(project)], "m-po", 1001.0) == []
    four_hours = 4 * 3600
    assert env.flag_overdue(1000.0 + four_hours - 1) == 0
    assert env.flag_overdue(1000.0 + four_hours + 1) == 1
    assert env.flag_overdue(1000.0 + four_hours + 60) == 0  # alerted once
    assert env.open_work_items("ACK_OVERDUE") == 1
    env.record_ack("acmemed", 1, "accepted")
    env.flag_overdue(1000.0 + four_hours + 120)
    assert env.open_work_items("ACK_OVERDUE") == 0
    # resolved, it never comes back: the alert fires once per interchange, ever
    assert env.flag_overdue(1000.0 + four_hours + 180) == 0
    assert env.work_item_statuses("ACK_OVERDUE") == [("resolved",)]


def test_held_invoice_released_and_unmatched_receipts(env: Any) -> None:
    project = env.project
    env.book([release(project)], "m-po", 1000.0)
    asn = [
        ["BSN", "00", "S1", "20260116", "1400", "0001"],
        ["HL", "1", "", "S"],
        ["HL", "2", "1", "O"],
        ["PRF", "PO-1"],
        ["HL", "3", "2", "I"],
        ["LIN", "1", "VC", "X"],
        ["SN1", "1", "1", "BX"],
        ["CTT", "3"],
    ]
    out = env.book([inbound("856", "SH", asn, 5)], "m-asn", 2000.0)
    assert [o.destination for o in out] == ["erp_receipts"]  # no validation result: no acks
    with env.repository() as repo:  # the goods receipt's line waits for the ERP's answer
        assert repo.settle_receipt_postings(out[0].meta["idempotency_key"], "posted", None, 1) == 1
        assert repo.settle_receipt_postings("no such goods receipt", "posted", None, 1) == 0
    # 5 EA received, nothing invoiced: listed once older than a day
    assert env.unmatched_receipts(older_than=86400, now=2000.0 + 3600) == []
    (row,) = env.unmatched_receipts(older_than=86400, now=2000.0 + 2 * 86400)
    assert (row["po_number"], row["po_line"], row["uninvoiced"]) == ("PO-1", "1", "5")
    # an invoice for 2 BX (10 EA) when 1 BX came: held, QTY_REC
    inv = [
        ["BIG", "20260117", "INV-9", "", "PO-1"],
        ["IT1", "1", "2", "BX", "125", "PE"],
        ["TDS", "25000"],
        ["CTT", "1"],
    ]
    out = env.book([inbound("810", "IN", inv, 6)], "m-inv", 3000.0)
    assert "erp_ap" not in [o.destination for o in out]
    (held,) = env.invoices("held")
    assert [r["reason"] for r in held["reasons"]] == ["QTY_REC"]
    with pytest.raises(StoreError, match="no invoice 999"):
        env.reject(999, actor="x", note="", now=0)
    done = env.release(held["id"], actor="ap.clerk", note="ok", now=4000.0)
    assert done["status"] == "released"
    payload = env.released_to_ap("m-inv")
    assert b'"released_by": "ap.clerk"' in payload or b'"released_by":"ap.clerk"' in payload
    assert env.open_work_items("INVOICE_HELD") == 0
    if env.store is not None:
        audit = [e["action"] for e in env.store.audit_entries(10)]
        assert "invoice.release" in audit
    with pytest.raises(StoreError, match="is released"):
        env.release(held["id"], actor="x", note="", now=4001.0)
    # released counts as invoiced: nothing left unmatched for PO-1 line 1
    assert env.unmatched_receipts(older_than=0, now=10**6) == []


def test_a_held_invoice_rejected_by_a_person_is_closed_and_not_posted(env: Any) -> None:
    project = env.project
    env.book([release(project)], "m-po", 1000.0)
    env.book([inbound("810", "IN", INV_2BX, 6)], "m-inv", 2000.0)
    (held,) = env.invoices("held")
    done = env.reject(held["id"], actor="ap.clerk", note="ask for a credit", now=3000.0)
    assert done == {"invoice": "INV-7", "status": "rejected"}
    assert [i["status"] for i in env.invoices()] == ["rejected"]
    assert env.open_work_items("INVOICE_HELD") == 0
    # rejected, it is not matched again when the receipt comes
    out = env.book([inbound("856", "SH", ASN_1BX, 7)], "m-asn", 4000.0)
    assert [o.destination for o in out] == ["erp_receipts"]
    with pytest.raises(StoreError, match="is rejected"):
        env.reject(held["id"], actor="x", note="", now=4001.0)
    if env.store is not None:
        assert "invoice.reject" in [e["action"] for e in env.store.audit_entries(10)]


ASN_1BX = [
    ["BSN", "00", "S1", "20260116", "1400", "0001"],
    ["HL", "1", "", "S"],
    ["HL", "2", "1", "O"],
    ["PRF", "PO-1"],
    ["HL", "3", "2", "I"],
    ["LIN", "1", "VC", "X"],
    ["SN1", "1", "2", "BX"],
    ["CTT", "3"],
]
INV_2BX = [
    ["BIG", "20260117", "INV-7", "", "PO-1"],
    ["IT1", "1", "2", "BX", "125", "PE"],
    ["TDS", "25000"],
    ["CTT", "1"],
]


def test_invoice_before_receipt_is_held_then_matched_when_the_receipt_comes(env: Any) -> None:
    project = env.project
    env.book([release(project)], "m-po", 1000.0)
    out = env.book([inbound("810", "IN", INV_2BX, 6)], "m-inv", 2000.0)
    assert [o.destination for o in out] == []
    (held,) = env.invoices("held")
    assert [r["reason"] for r in held["reasons"]] == ["NO_RECEIPT"]
    out = env.book([inbound("856", "SH", ASN_1BX, 7)], "m-asn", 3000.0)
    # the receipt posts, and the invoice waiting for it goes to AP in the same commit
    assert [o.destination for o in out] == ["erp_receipts", "erp_ap"]
    assert env.invoices("held") == []
    assert [i["invoice_number"] for i in env.invoices("matched")] == ["INV-7"]
    assert env.work_item_statuses("INVOICE_HELD") == [("resolved",)]
    # the same invoice number again, in a new interchange: a duplicate for a person, not AP
    out = env.book([inbound("810", "IN", INV_2BX, 8)], "m-inv", 4000.0)
    assert [o.destination for o in out] == []
    assert env.open_work_items("INVOICE_DUPLICATE") == 1


def test_a_held_invoice_matched_again_short_keeps_one_work_item_with_the_new_reason(
    env: Any,
) -> None:
    """Held for want of a receipt, then 1 BX of 2 comes: still held, now for the quantity; the
    same INVOICE_HELD work item says so (no second one)."""
    project = env.project
    env.book([release(project)], "m-po", 1000.0)
    env.book([inbound("810", "IN", INV_2BX, 6)], "m-inv", 2000.0)
    (before,) = env.work_item_details("INVOICE_HELD", "open")
    assert before.startswith("NO_RECEIPT")
    short = [row if row[0] != "SN1" else ["SN1", "1", "1", "BX"] for row in ASN_1BX]
    out = env.book([inbound("856", "SH", short, 7)], "m-asn", 3000.0)
    assert [o.destination for o in out] == ["erp_receipts"]
    (held,) = env.invoices("held")
    assert [r["reason"] for r in held["reasons"]] == ["QTY_REC"]
    (after,) = env.work_item_details("INVOICE_HELD", "open")
    assert after.startswith("QTY_REC")
    assert env.work_item_statuses("INVOICE_HELD") == [("open",)]


def test_a_rejecting_999_opens_a_work_item(env: Any) -> None:
    from engine.domains.procurement.records import ReceivedAck

    project = env.project
    env.book([release(project)], "m-po", 1000.0)
    ic = InboundInterchange(
        "acmemed",
        ("ZZ", "ACMEMED"),
        ("ZZ", "GENHOSP"),
        "000000077",
        (("77", "999", "0001"),),
        received_acks=(ReceivedAck("999", "1", "R", ("IK3*PO1*7**8", "IK5*R*5")),),
    )
    env.book([ic], "m-asn", 2000.0)
    (detail, *_) = env.work_item_details("ACK_REJECTED", "open")
    assert "999 R for our 850" in detail and "IK3*PO1*7**8" in detail
    assert env.ack_statuses() == [("rejected",)]


def test_a_group_resent_under_a_new_isa13_is_not_applied_again(env: Any) -> None:
    project = env.project
    env.book([release(project)], "m-po", 1000.0)
    env.book([inbound("856", "SH", ASN_1BX, 7)], "m-asn", 2000.0)
    out = env.book([inbound("856", "SH", ASN_1BX, 8, gs06=7)], "m-asn", 2100.0)
    assert out == []  # re-enveloped: same sender and GS06, new ISA13
    assert env.count("receipts") == 1
    out = env.book([inbound("856", "SH", ASN_1BX, 9)], "m-asn", 2200.0)
    assert out == []  # a new group with the same shipment lines: the receipt keys hold


def test_an_erp_receipt_books_on_hand_and_releases_the_waiting_invoice(env: Any) -> None:
    from engine.domains.procurement.records import ErpReceipt, ErpReceiptLine

    project = env.project
    env.book([release(project)], "m-po", 1000.0)
    env.book([inbound("810", "IN", INV_2BX, 6)], "m-inv", 2000.0)
    assert [i["status"] for i in env.invoices()] == ["held"]
    receipt = ErpReceipt("GR-77", "PO-1", (ErpReceiptLine("1", Decimal(10), "EA", lot="L1"),))
    out = env.book([receipt], "m-asn", 3000.0)
    assert [o.destination for o in out] == ["erp_ap"]
    assert [i["status"] for i in env.invoices()] == ["matched"]
    assert env.onhand("LOC-OR-MAIN", "ITEM-100123") == ("10",)
    # the same receipt posted again: nothing more
    assert env.book([receipt], "m-asn", 3100.0) == []
    assert env.count("receipts") == 1
    unknown = ErpReceipt("GR-78", "PO-404", (ErpReceiptLine("1", Decimal(1), "EA"),))
    env.book([unknown], "m-asn", 3200.0)
    assert len(env.work_item_statuses("RECEIPT_UNMATCHED")) == 1


@pytest.mark.parametrize(
    ("sample", "answer"),
    [
        ("separator_component_equals_element.x12", b"*R*027"),
        ("isa_short_sender.x12", b"*R*006"),
        ("missing_iea_810_4010.x12", b"*R*023"),
        ("stray_segment_810_4010.x12", b"*R*024"),
        ("se_count_810_4010.x12", b"AK5*R*4"),
        ("invalid_date_810_4010.x12", b"AK4*1*373*8*20260231"),
        ("missing_segment_810_5010.x12", b"IK3*TDS*14**3"),
    ],
)
def test_broken_samples_through_the_channel_are_answered_and_not_applied(
    env: Any, sample: str, answer: bytes
) -> None:
    """The shipped x12_from_vendors channel, as the pipeline runs it (codec, x12_inbound, the
    book): each broken sample gets its TA1 or 997/999 for the vendor and changes nothing."""
    raw = (REPO / "samples/x12/broken" / sample).read_bytes()
    result = env.channel.process(raw, "m-inv", "m-inv")
    assert result.status == "sent", result.error
    out = env.book(result.events, "m-inv", 5000.0)
    files = b"".join(o.payload for o in out if o.destination == "vendors")
    assert answer in files, files
    assert [o.destination for o in out if o.destination != "vendors"] == []
    assert env.count("invoices") == 0
    assert env.count("receipts") == 0


def test_an_856_line_in_a_unit_the_partner_map_lacks_is_held_the_others_go_on(env: Any) -> None:
    project = env.project
    env.book([release(project)], "m-po", 1000.0)
    asn = [
        *ASN_1BX[:-1],
        ["HL", "4", "2", "I"],
        ["LIN", "1", "VC", "X"],
        ["SN1", "2", "1", "ZZ"],
        ["CTT", "4"],
    ]
    out = env.book([inbound("856", "SH", asn, 7)], "m-asn", 2000.0)
    assert [o.destination for o in out] == ["erp_receipts"]  # the good line posts
    assert env.count("receipts") == 1
    (detail, *_) = env.work_item_details("MISSING_MAPPING")
    assert "line 2" in detail and "'ZZ'" in detail and "acmemed" in detail


def test_wharf_invoices_and_receipts_commands(
    project_dir: Path, monkeypatch: Any, capsys: Any
) -> None:
    """`wharf invoices`, `wharf invoices release N` and `wharf receipts --unmatched` on the
    project's own store, as an AP clerk runs them."""
    from engine.cli import main

    db = project_dir / "var" / "cli.db"
    monkeypatch.setenv("WHARF_DB", str(db))
    project = load_project(project_dir)
    channel = Channel.of(project, "x12_from_vendors")
    store = open_store(db)
    book = SqliteBook(project, channel, store)
    book.book([release(project)], "m-po", 1000.0)
    book.book([inbound("856", "SH", ASN_1BX, 7)], "m-asn", 2000.0)
    inv = [
        ["BIG", "20260117", "INV-8", "", "PO-1"],
        ["IT1", "1", "2", "BX", "160", "PE"],
        ["TDS", "28000"],
        ["CTT", "1"],
    ]
    book.book([inbound("810", "IN", inv, 8)], "m-inv", 3000.0)
    store.close()
    assert main(["--root", str(project_dir), "invoices"]) == 0
    out = capsys.readouterr().out
    assert "INV-8" in out and "held" in out and "PRICE line 1" in out
    (invoice_id,) = [int(line.split()[0]) for line in out.splitlines() if "INV-8" in line]
    assert (
        main(
            [
                "--root",
                str(project_dir),
                "--user",
                "ap.clerk",
                "invoices",
                "release",
                str(invoice_id),
                "--note",
                "contract price",
            ]
        )
        == 0
    )
    assert "released" in capsys.readouterr().out
    assert main(["--root", str(project_dir), "invoices", "--status", "released"]) == 0
    assert "INV-8" in capsys.readouterr().out
    assert main(["--root", str(project_dir), "receipts", "--unmatched"]) == 0
    assert capsys.readouterr().out == ""  # received 10 EA, invoiced (released) 10 EA


def test_an_855_in_a_unit_the_partner_map_lacks_is_accepted_and_held_for_a_mapping(
    env: Any,
) -> None:
    """A third-party 4010 855 whose lines are in CS (case): the X12 maps accept it (997
    AK5*A), and since acmemed's uom map has no CS, a MISSING_MAPPING work item says so."""
    raw = (REPO / "samples/x12/855_4010.x12").read_bytes()
    raw = raw.replace(b"PO1*1*2*BX*", b"PO1*1*2*CS*").replace(b"ACK*IA*2*BX*", b"ACK*IA*2*CS*")
    result = env.channel.process(raw, "m-855", "m-855")
    assert result.status == "sent", result.error
    out = env.book(result.events, "m-855", 5000.0)
    answers = b"".join(o.payload for o in out if o.destination == "vendors")
    assert b"AK5*A~" in answers and b"AK9*A*1*1*1~" in answers, answers
    (detail,) = env.work_item_details("MISSING_MAPPING")
    assert "855 for PO 4500012345 line 1" in detail and "'CS'" in detail and "acmemed" in detail


def test_an_810_in_a_unit_the_partner_map_lacks_is_held_not_taken_on_trust(env: Any) -> None:
    """An 810 line in a unit acmemed's map lacks is held (UOM) with a MISSING_MAPPING work item
    naming the unit, never read as one of our own unit codes."""
    project = env.project
    env.book([release(project)], "m-po", 1000.0)
    env.book([inbound("856", "SH", ASN_1BX, 7)], "m-asn", 2000.0)
    inv = [
        ["BIG", "20260117", "INV-CS", "", "PO-1"],
        ["IT1", "1", "2", "CS", "125", "PE"],
        ["TDS", "25000"],
        ["CTT", "1"],
    ]
    out = env.book([inbound("810", "IN", inv, 8)], "m-inv", 3000.0)
    assert "erp_ap" not in [o.destination for o in out]
    (held,) = env.invoices("held")
    assert [r["reason"] for r in held["reasons"]] == ["UOM"]
    (detail,) = env.work_item_details("MISSING_MAPPING")
    assert "810 INV-CS line 1" in detail and "'CS'" in detail and "acmemed" in detail
