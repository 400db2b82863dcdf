"""The procurement book on a real store: a PO sent once with control numbers that are never
reused, late 997/999 alerts, receipts, held invoices released or rejected by a person, and the
receipts nobody invoiced."""

from __future__ import annotations

import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from engine.channel import Channel
from engine.config.project import load_project
from engine.domains.procurement import desk
from engine.domains.procurement.book import book_x12, flag_overdue_acks
from engine.domains.procurement.control import record_ack
from engine.domains.procurement.po850 import segments_850
from engine.domains.procurement.records import InboundInterchange, PoLine, PoRelease
from engine.errors import StoreError
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


@pytest.fixture()
def env() -> Any:
    project = load_project(REPO, env={})
    channel = Channel.of(project, "x12_from_vendors")
    store = open_store(Path(tempfile.mkdtemp()) / "w.db")
    # the book runs inside a message's commit: give it messages to point at
    with store._write("seed") as conn:
        for mid in ("m-po", "m-asn", "m-inv"):
            conn.execute(
                "INSERT INTO messages (id, channel, source, content_type, received_at, "
                "updated_at, sha256, size, status) "
                "VALUES (?, 'x12_from_vendors', 'test', 'x', 0, 0, '', 0, 'sent')",
                (mid,),
            )
    yield project, channel, store
    store.close()


def book(store: Any, channel: Channel, project: Any, records: list, mid: str, now: float) -> list:
    with store._write("book") as conn:
        return book_x12(
            conn,
            records=records,
            channel=channel.name,
            message_id=mid,
            correlation_id=mid,
            routes=channel.bindings[0].routes,
            partners=project.extras["trading_partners"],
            converter=channel.bindings[0].converter,
            now=now,
        )


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


def test_po_sent_once_and_late_ack_alerted(env: Any) -> None:
    project, channel, store = env
    out = book(store, channel, project, [release(project)], "m-po", 1000.0)
    assert [o.destination for o in out] == ["vendors", "erp_po"]
    assert out[0].meta["filename"] == "850_acmemed_000000001.x12"
    assert book(store, channel, project, [release(project)], "m-po", 1001.0) == []
    four_hours = 4 * 3600
    assert flag_overdue_acks(store, 1000.0 + four_hours - 1) == 0
    assert flag_overdue_acks(store, 1000.0 + four_hours + 1) == 1
    assert flag_overdue_acks(store, 1000.0 + four_hours + 60) == 0  # alerted once
    conn = store._conn()
    assert conn.execute(
        "SELECT COUNT(*) FROM work_items WHERE kind = 'ACK_OVERDUE' AND status = 'open'"
    ).fetchone() == (1,)
    with store._write("ack") as c:
        record_ack(c, "acmemed", 1, "accepted")
    flag_overdue_acks(store, 1000.0 + four_hours + 120)
    assert conn.execute(
        "SELECT COUNT(*) FROM work_items WHERE kind = 'ACK_OVERDUE' AND status = 'open'"
    ).fetchone() == (0,)


def test_held_invoice_released_and_unmatched_receipts(env: Any) -> None:
    project, channel, store = env
    book(store, channel, project, [release(project)], "m-po", 1000.0)
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
    out = book(store, channel, project, [inbound("856", "SH", asn, 5)], "m-asn", 2000.0)
    assert [o.destination for o in out] == ["erp_receipts"]  # no validation result: no acks
    # 5 EA received, nothing invoiced: listed once older than a day
    assert desk.unmatched_receipts(store._conn(), older_than=86400, now=2000.0 + 3600) == []
    (row,) = desk.unmatched_receipts(store._conn(), older_than=86400, now=2000.0 + 2 * 86400)
    assert (row["po_number"], row["po_line"], row["uninvoiced"]) == ("PO-1", "1", "5")
    # an invoice for 2 BX (10 EA) when 1 BX came: held, QTY_REC
    inv = [
        ["BIG", "20260117", "INV-9", "", "PO-1"],
        ["IT1", "1", "2", "BX", "125", "PE"],
        ["TDS", "25000"],
        ["CTT", "1"],
    ]
    out = book(store, channel, project, [inbound("810", "IN", inv, 6)], "m-inv", 3000.0)
    assert "erp_ap" not in [o.destination for o in out]
    (held,) = desk.invoices(store._conn(), "held")
    assert [r["reason"] for r in held["reasons"]] == ["QTY_REC"]
    with pytest.raises(StoreError, match="no invoice 999"):
        desk.reject_invoice(store, 999, actor="x", note="", now=0)
    done = desk.release_invoice(store, project, held["id"], actor="ap.clerk", note="ok", now=4000.0)
    assert done["status"] == "released"
    conn = store._conn()
    (payload,) = conn.execute(
        "SELECT payload FROM outbox WHERE destination = 'erp_ap' AND message_id = 'm-inv'"
    ).fetchone()
    assert b'"released_by": "ap.clerk"' in payload or b'"released_by":"ap.clerk"' in payload
    assert conn.execute(
        "SELECT COUNT(*) FROM work_items WHERE kind = 'INVOICE_HELD' AND status = 'open'"
    ).fetchone() == (0,)
    audit = [e["action"] for e in store.audit_entries(10)]
    assert "invoice.release" in audit
    with pytest.raises(StoreError, match="is released"):
        desk.release_invoice(store, project, held["id"], actor="x", note="", now=4001.0)
    # released counts as invoiced: nothing left unmatched for PO-1 line 1
    assert desk.unmatched_receipts(store._conn(), older_than=0, now=10**6) == []


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
    project, channel, store = env
    book(store, channel, project, [release(project)], "m-po", 1000.0)
    out = book(store, channel, project, [inbound("810", "IN", INV_2BX, 6)], "m-inv", 2000.0)
    assert [o.destination for o in out] == []
    (held,) = desk.invoices(store._conn(), "held")
    assert [r["reason"] for r in held["reasons"]] == ["NO_RECEIPT"]
    out = book(store, channel, project, [inbound("856", "SH", ASN_1BX, 7)], "m-asn", 3000.0)
    # the receipt posts, and the invoice waiting for it goes to AP in the same commit
    assert [o.destination for o in out] == ["erp_receipts", "erp_ap"]
    assert desk.invoices(store._conn(), "held") == []
    assert [i["invoice_number"] for i in desk.invoices(store._conn(), "matched")] == ["INV-7"]
    conn = store._conn()
    assert conn.execute("SELECT status FROM work_items WHERE kind = 'INVOICE_HELD'").fetchall() == [
        ("resolved",)
    ]
    # the same invoice number again, in a new interchange: a duplicate for a person, not AP
    out = book(store, channel, project, [inbound("810", "IN", INV_2BX, 8)], "m-inv", 4000.0)
    assert [o.destination for o in out] == []
    assert conn.execute(
        "SELECT COUNT(*) FROM work_items WHERE kind = 'INVOICE_DUPLICATE' AND status = 'open'"
    ).fetchone() == (1,)


def test_a_rejecting_999_opens_a_work_item(env: Any) -> None:
    from engine.domains.procurement.records import ReceivedAck

    project, channel, store = env
    book(store, channel, project, [release(project)], "m-po", 1000.0)
    ic = InboundInterchange(
        "acmemed",
        ("ZZ", "ACMEMED"),
        ("ZZ", "GENHOSP"),
        "000000077",
        (("77", "999", "0001"),),
        received_acks=(ReceivedAck("999", "1", "R", ("IK3*PO1*7**8", "IK5*R*5")),),
    )
    book(store, channel, project, [ic], "m-asn", 2000.0)
    conn = store._conn()
    (detail,) = conn.execute(
        "SELECT detail FROM work_items WHERE kind = 'ACK_REJECTED' AND status = 'open'"
    ).fetchone()
    assert "999 R for our 850" in detail and "IK3*PO1*7**8" in detail
    assert conn.execute("SELECT ack_status FROM x12_outbound").fetchall() == [("rejected",)]


def test_a_group_resent_under_a_new_isa13_is_not_applied_again(env: Any) -> None:
    project, channel, store = env
    book(store, channel, project, [release(project)], "m-po", 1000.0)
    book(store, channel, project, [inbound("856", "SH", ASN_1BX, 7)], "m-asn", 2000.0)
    out = book(store, channel, project, [inbound("856", "SH", ASN_1BX, 8, gs06=7)], "m-asn", 2100.0)
    assert out == []  # re-enveloped: same sender and GS06, new ISA13
    assert store._conn().execute("SELECT COUNT(*) FROM receipts").fetchone() == (1,)
    out = book(store, channel, project, [inbound("856", "SH", ASN_1BX, 9)], "m-asn", 2200.0)
    assert out == []  # a new group with the same shipment lines: the receipt keys hold


def test_an_erp_receipt_books_on_hand_and_releases_the_waiting_invoice(env: Any) -> None:
    from engine.domains.procurement.records import ErpReceipt, ErpReceiptLine

    project, channel, store = env
    book(store, channel, project, [release(project)], "m-po", 1000.0)
    book(store, channel, project, [inbound("810", "IN", INV_2BX, 6)], "m-inv", 2000.0)
    assert [i["status"] for i in desk.invoices(store._conn())] == ["held"]
    receipt = ErpReceipt("GR-77", "PO-1", (ErpReceiptLine("1", Decimal(10), "EA", lot="L1"),))
    out = book(store, channel, project, [receipt], "m-asn", 3000.0)
    assert [o.destination for o in out] == ["erp_ap"]
    assert [i["status"] for i in desk.invoices(store._conn())] == ["matched"]
    conn = store._conn()
    assert conn.execute(
        "SELECT quantity FROM onhand WHERE location_id = 'LOC-OR-MAIN' AND item_id = 'ITEM-100123'"
    ).fetchone() == ("10",)
    # the same receipt posted again: nothing more
    assert book(store, channel, project, [receipt], "m-asn", 3100.0) == []
    assert conn.execute("SELECT COUNT(*) FROM receipts").fetchone() == (1,)
    unknown = ErpReceipt("GR-78", "PO-404", (ErpReceiptLine("1", Decimal(1), "EA"),))
    book(store, channel, project, [unknown], "m-asn", 3200.0)
    assert conn.execute(
        "SELECT COUNT(*) FROM work_items WHERE kind = 'RECEIPT_UNMATCHED'"
    ).fetchone() == (1,)


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
    project, channel, store = env
    raw = (REPO / "samples/x12/broken" / sample).read_bytes()
    result = channel.process(raw, "m-inv", "m-inv")
    assert result.status == "sent", result.error
    out = book(store, channel, project, result.events, "m-inv", 5000.0)
    files = b"".join(o.payload for o in out if o.destination == "vendors")
    assert answer in files, files
    assert [o.destination for o in out if o.destination != "vendors"] == []
    conn = store._conn()
    assert conn.execute("SELECT COUNT(*) FROM invoices").fetchone() == (0,)
    assert conn.execute("SELECT COUNT(*) FROM receipts").fetchone() == (0,)


def test_an_856_line_in_a_unit_the_partner_map_lacks_is_held_the_others_go_on(env: Any) -> None:
    project, channel, store = env
    book(store, channel, project, [release(project)], "m-po", 1000.0)
    asn = [
        *ASN_1BX[:-1],
        ["HL", "4", "2", "I"],
        ["LIN", "1", "VC", "X"],
        ["SN1", "2", "1", "ZZ"],
        ["CTT", "4"],
    ]
    out = book(store, channel, project, [inbound("856", "SH", asn, 7)], "m-asn", 2000.0)
    assert [o.destination for o in out] == ["erp_receipts"]  # the good line posts
    conn = store._conn()
    assert conn.execute("SELECT COUNT(*) FROM receipts").fetchone() == (1,)
    (detail,) = conn.execute(
        "SELECT detail FROM work_items WHERE kind = 'MISSING_MAPPING'"
    ).fetchone()
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
    with store._write("seed") as conn:
        for mid in ("m-po", "m-asn", "m-inv"):
            conn.execute(
                "INSERT INTO messages (id, channel, source, content_type, received_at, "
                "updated_at, sha256, size, status) "
                "VALUES (?, 'x12_from_vendors', 'test', 'x', 0, 0, '', 0, 'sent')",
                (mid,),
            )
    book(store, channel, project, [release(project)], "m-po", 1000.0)
    book(store, channel, project, [inbound("856", "SH", ASN_1BX, 7)], "m-asn", 2000.0)
    inv = [
        ["BIG", "20260117", "INV-8", "", "PO-1"],
        ["IT1", "1", "2", "BX", "160", "PE"],
        ["TDS", "28000"],
        ["CTT", "1"],
    ]
    book(store, channel, project, [inbound("810", "IN", inv, 8)], "m-inv", 3000.0)
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
