"""Where procurement keeps its records: the repository its book and its AP desk talk to.

:class:`ProcurementRepository` is everything :mod:`engine.domains.procurement.book` (and
:mod:`~engine.domains.procurement.desk`) reads and writes: X12 control numbers, the
interchanges we sent and what came back for them, the inbound sets seen, purchase orders and
their lines, receipts, invoices and their match, goods added to the ledger's on-hand and work
items for people. :class:`SqliteProcurementRepository` keeps them in the store's SQLite file,
inside the transaction the runtime opened for the message (so control numbers, the 850 in the
outbox, a receipt and the invoices it releases commit with the message's result; the control
number SQL is :mod:`~engine.domains.procurement.control`), and
:class:`~engine.domains.procurement.memory.InMemoryProcurementRepository` keeps them in dicts
for the book's unit tests. Work items are the spine's: the SQLite repository hands them to the
transaction (``tx.open_work_item``...). Quantities cross this boundary as :class:`Decimal`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NamedTuple, Protocol

from engine.domains.ledger.domain import add_to_onhand
from engine.domains.procurement import control
from engine.domains.procurement.match import Order, OrderLine
from engine.domains.procurement.numbers import ControlNumbers, OutboundRecord
from engine.domains.procurement.records import PoRelease


@dataclass(frozen=True)
class PoHeader:
    """A purchase order Wharf sent: to which partner and vendor, for which location."""

    partner: str
    vendor: str
    location_id: str


@dataclass(frozen=True)
class PoLineRef:
    """What a receipt needs of a PO line: the item, its stocking unit, where it goes."""

    item_id: str
    base_uom: str
    location_id: str


@dataclass(frozen=True)
class NewReceipt:
    """One received line (an 856 line or an ERP receipt line), once per ``business_key``."""

    business_key: str
    po_number: str
    po_line: str
    item_id: str
    quantity: Decimal
    uom: str
    base_quantity: Decimal
    lot: str | None
    serial: str | None
    expiry: str | None
    sscc: str | None
    source: str  # asn | asn_expected | erp
    message_id: str
    created_at: float
    channel: str | None = None  # the channel whose message recorded it (console scopes)


@dataclass(frozen=True)
class NewInvoice:
    """An 810 as first matched: its keys, status and the reasons it is not matched."""

    partner: str
    vendor_key: str
    invoice_key: str
    invoice_number: str
    po_number: str
    status: str  # matched | held | duplicate
    reasons: list[dict[str, Any]]
    retry_on_receipt: bool
    total: Decimal | None
    body: str  # the transaction set as JSON, to be read again
    message_id: str
    correlation_id: str
    created_at: float
    channel: str | None = None  # the vendor's inbound channel (console scopes)


@dataclass(frozen=True)
class StoredInvoice:
    """An invoice as the AP desk sees it."""

    id: int
    partner: str
    invoice_number: str
    po_number: str
    status: str
    body: str
    message_id: str | None
    correlation_id: str | None
    channel: str | None = None  # the vendor's inbound channel (None: from before schema 4)


class InvoiceLineRow(NamedTuple):
    """An invoice line after the match: its PO line (None: none found), its quantity in the
    base unit (signed: a credit is negative), whether it was posted to AP (on its own, under a
    line-level hold, or with the whole invoice) and whether it is a credit memo's line."""

    line: str
    po_line: str | None
    base_quantity: Decimal
    posted: bool = False
    credit: bool = False


@dataclass(frozen=True)
class NewPoChange:
    """A change a vendor's 855 proposes for one PO line: what was ordered, what it acknowledged
    (quantity, unit, price, ship date; None where it said nothing)."""

    po_number: str
    line: str
    partner: str
    ack_code: str
    ordered_quantity: Decimal
    ordered_uom: str
    ordered_price: Decimal
    quantity: Decimal | None
    uom: str | None
    unit_price: Decimal | None
    ship_date: str | None
    message_id: str
    correlation_id: str
    created_at: float
    channel: str | None = None  # the vendor's inbound channel (console scopes)


def in_scope(channels: Sequence[str] | None, column: str = "channel") -> tuple[str, list[Any]]:
    """`` AND column IN (...)`` and its parameters for a channel scope (None: every row; a row
    without a channel, recorded before procurement schema 4 and not back-filled, is in no
    scope: only a person who sees every channel sees it)."""
    if channels is None:
        return "", []
    if not channels:
        return " AND 1 = 0", []
    return f" AND {column} IN ({', '.join('?' * len(channels))})", list(channels)


#: Sources of receipt rows that count as received (a return to the vendor is negative).
RECEIVED_SOURCES = ("asn", "erp", "erp_return")


def ack_overdue_subject(partner: str, document: str, isa13: int) -> str:
    """The subject of the ACK_OVERDUE work item of one interchange we sent."""
    return f"{partner}:{document}:{isa13:09d}"


class ProcurementRepository(Protocol):
    """Procurement's records, inside one store transaction (or a read-only handle)."""

    # -- control numbers and the interchanges we sent
    def allocate(self, partner: str, kind: str, n: int = 1) -> list[int]: ...

    def allocate_envelope(self, partner: str, sets: int = 1) -> ControlNumbers: ...

    def record_outbound(
        self,
        *,
        partner: str,
        numbers: ControlNumbers,
        document: str,
        business_key: str,
        sent_at: float,
        ack_within: float | None,
        message_id: str | None,
    ) -> int: ...

    def record_ack(
        self, partner: str, gs06: int, status: str, codes: Sequence[str] = ()
    ) -> OutboundRecord | None: ...

    def record_ta1(
        self, partner: str, isa13: int, ta104: str, ta105: str = "000"
    ) -> OutboundRecord | None: ...

    def overdue_acks(self, now: float) -> list[OutboundRecord]: ...

    # -- inbound sets seen
    def seen_interchange(
        self, sender: tuple[str, str], isa13: str, window: float, now: float
    ) -> bool: ...

    def seen_groups(self, sender: tuple[str, str], since: float) -> set[str]: ...

    def record_inbound(
        self,
        sender: tuple[str, str],
        isa13: str,
        gs06: str | None,
        st02: str | None,
        *,
        receiver: tuple[str, str],
        message_id: str,
        received_at: float,
    ) -> None: ...

    # -- purchase orders
    def po_sent(self, po_number: str) -> bool: ...

    def add_po(
        self, po: PoRelease, message_id: str, correlation_id: str, now: float, channel: str = ""
    ) -> None: ...

    def purchase_order(self, po_number: str) -> PoHeader | None: ...

    def po_line(self, po_number: str, line: str) -> PoLineRef | None: ...

    def order(self, po_number: str) -> Order | None: ...

    def set_line_ack(
        self, po_number: str, line: str, status: str, detail: dict[str, Any]
    ) -> None: ...

    def set_po_status(self, po_number: str, status: str, now: float) -> None: ...

    def set_po_line_basis(
        self,
        po_number: str,
        line: str,
        *,
        quantity: Decimal,
        uom: str,
        unit_price: Decimal,
        base_quantity: Decimal,
    ) -> None: ...

    # -- proposed PO changes (855)
    def add_po_change(self, change: NewPoChange) -> int | None: ...

    def po_changes(
        self,
        status: str | None = None,
        po_number: str | None = None,
        channels: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]: ...

    def po_change(self, change_id: int) -> dict[str, Any] | None: ...

    def decide_po_change(
        self, change_id: int, status: str, actor: str, note: str, now: float
    ) -> None: ...

    # -- receipts and on-hand
    def add_receipt(self, receipt: NewReceipt) -> bool: ...

    def receipts_for(self, po_number: str) -> list[tuple[int, str, Decimal]]: ...

    def received_lines(
        self, channels: Sequence[str] | None = None
    ) -> list[tuple[str, str, str, Decimal, float]]: ...

    def receipt_outcomes(
        self, since: float, until: float, within: float, limit: int
    ) -> list[tuple[float, bool]]: ...

    def add_to_onhand(
        self, location: str, item: str, quantity: Decimal, uom: str, now: float
    ) -> None: ...

    def add_receipt_posting(
        self, business_key: str, posting_key: str, destination: str, message_id: str, now: float
    ) -> None: ...

    def settle_receipt_postings(
        self, posting_key: str, status: str, reason: str | None, now: float
    ) -> int: ...

    # -- invoices
    def invoice_on_file(self, vendor_key: str, invoice_key: str) -> str | None: ...

    def invoiced(self, po_number: str, excluding: int | None) -> dict[str, Decimal]: ...

    def invoiced_lines(self) -> list[tuple[str, str, Decimal]]: ...

    def credited(self, po_number: str, excluding: int | None) -> dict[str, Decimal]: ...

    def posted_lines(self, invoice_id: int) -> set[str]: ...

    def mark_posted(self, invoice_id: int, lines: Sequence[str]) -> None: ...

    def held_invoices(self, po_number: str, partner: str) -> list[tuple[int, str]]: ...

    def add_invoice(self, invoice: NewInvoice) -> int: ...

    def rematch_invoice(
        self,
        invoice_id: int,
        status: str,
        reasons: list[dict[str, Any]],
        retry_on_receipt: bool,
        now: float,
    ) -> None: ...

    def set_invoice_lines(self, invoice_id: int, lines: Sequence[InvoiceLineRow]) -> None: ...

    def held_for_receipt(self, po_number: str, partner: str) -> list[tuple[int, str]]: ...

    def invoices(
        self, status: str | None = None, channels: Sequence[str] | None = None
    ) -> list[dict[str, Any]]: ...

    def invoice(self, invoice_id: int) -> StoredInvoice | None: ...

    def close_invoice(self, invoice_id: int, status: str, now: float) -> None: ...

    # -- work items (the spine's)
    def open_work_item(
        self,
        kind: str,
        subject: str,
        detail: str,
        message_id: str | None,
        correlation_id: str | None,
        now: float,
        *,
        once: str,
    ) -> bool: ...

    def refresh_work_items(self, kind: str, *, subject: str, detail: str, now: float) -> int: ...

    def resolve_work_items(self, kind: str, *, subject: str, now: float) -> int: ...

    def answered_overdue_alerts(self) -> list[str]: ...

    # -- the audit log (the spine's)
    def audit(
        self, actor: str, action: str, target: str, detail: dict[str, Any], now: float
    ) -> None: ...


class SqliteProcurementRepository:
    """:class:`ProcurementRepository` over the store's SQLite connection (tables: schema.py)."""

    def __init__(self, tx: Any) -> None:
        self.tx = tx
        self.conn = tx.connection

    # ------------------------------------------------------------------ control numbers

    def allocate(self, partner: str, kind: str, n: int = 1) -> list[int]:
        self._hold_numbers(partner)
        return control.allocate(self.conn, partner, kind, n)

    def allocate_envelope(self, partner: str, sets: int = 1) -> ControlNumbers:
        self._hold_numbers(partner)
        return control.allocate_envelope(self.conn, partner, sets=sets)

    def _hold_numbers(self, partner: str) -> None:
        """Nodes sharing one database allocate a partner's numbers one at a time (until this
        transaction ends): none read the same last number, none is reused."""
        lock = getattr(self.tx, "lock", None)
        if lock is not None:
            lock(f"x12-control:{partner}")

    def record_outbound(
        self,
        *,
        partner: str,
        numbers: ControlNumbers,
        document: str,
        business_key: str,
        sent_at: float,
        ack_within: float | None,
        message_id: str | None,
    ) -> int:
        return control.record_outbound(
            self.conn,
            partner=partner,
            numbers=numbers,
            document=document,
            business_key=business_key,
            sent_at=sent_at,
            ack_within=ack_within,
            message_id=message_id,
        )

    def record_ack(
        self, partner: str, gs06: int, status: str, codes: Sequence[str] = ()
    ) -> OutboundRecord | None:
        return control.record_ack(self.conn, partner, gs06, status, codes)

    def record_ta1(
        self, partner: str, isa13: int, ta104: str, ta105: str = "000"
    ) -> OutboundRecord | None:
        return control.record_ta1(self.conn, partner, isa13, ta104, ta105)

    def overdue_acks(self, now: float) -> list[OutboundRecord]:
        return control.overdue_acks(self.conn, now)

    # ------------------------------------------------------------------ inbound sets

    def seen_interchange(
        self, sender: tuple[str, str], isa13: str, window: float, now: float
    ) -> bool:
        return control.seen_inbound(self.conn, sender, isa13, None, None, window, now)

    def seen_groups(self, sender: tuple[str, str], since: float) -> set[str]:
        """The GS06 of every set received from ``sender`` since ``since``."""
        return {
            row[0]
            for row in self.conn.execute(
                "SELECT DISTINCT gs06 FROM x12_inbound WHERE sender_qualifier = ? AND "
                "sender_id = ? AND received_at >= ? AND gs06 IS NOT NULL",
                (sender[0], sender[1], since),
            )
        }

    def record_inbound(
        self,
        sender: tuple[str, str],
        isa13: str,
        gs06: str | None,
        st02: str | None,
        *,
        receiver: tuple[str, str],
        message_id: str,
        received_at: float,
    ) -> None:
        control.record_inbound(
            self.conn,
            sender,
            isa13,
            gs06,
            st02,
            receiver=receiver,
            message_id=message_id,
            received_at=received_at,
        )

    # ------------------------------------------------------------------ purchase orders

    def po_sent(self, po_number: str) -> bool:
        return (
            self.conn.execute(
                "SELECT 1 FROM purchase_orders WHERE po_number = ?", (po_number,)
            ).fetchone()
            is not None
        )

    def add_po(
        self, po: PoRelease, message_id: str, correlation_id: str, now: float, channel: str = ""
    ) -> None:
        self.conn.execute(
            "INSERT INTO purchase_orders (po_number, partner, vendor, location_id, currency, "
            "status, message_id, correlation_id, created_at, updated_at, channel) "
            "VALUES (?, ?, ?, ?, ?, 'sent', ?, ?, ?, ?, ?)",
            (
                po.po_number,
                po.partner,
                po.vendor,
                po.location_id,
                po.currency,
                message_id,
                correlation_id,
                now,
                now,
                channel or None,
            ),
        )
        self.conn.executemany(
            "INSERT INTO po_lines (po_number, line, item_id, quantity, uom, unit_price, "
            "base_quantity, base_uom, vendor_item, gtin, bill_only) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    po.po_number,
                    ln.line,
                    ln.item_id,
                    str(ln.quantity),
                    ln.uom,
                    str(ln.unit_price),
                    str(ln.base_quantity),
                    ln.base_uom,
                    ln.vendor_item,
                    ln.gtin,
                    int(ln.bill_only),
                )
                for ln in po.lines
            ],
        )

    def purchase_order(self, po_number: str) -> PoHeader | None:
        row = self.conn.execute(
            "SELECT partner, vendor, location_id FROM purchase_orders WHERE po_number = ?",
            (po_number,),
        ).fetchone()
        return None if row is None else PoHeader(*row)

    def po_line(self, po_number: str, line: str) -> PoLineRef | None:
        row = self.conn.execute(
            "SELECT l.item_id, l.base_uom, p.location_id FROM po_lines l JOIN "
            "purchase_orders p USING (po_number) WHERE l.po_number = ? AND l.line = ?",
            (po_number, line),
        ).fetchone()
        return None if row is None else PoLineRef(*row)

    def order(self, po_number: str) -> Order | None:
        """The PO as Wharf sent it (lines with item, unit, price, stocking unit), for the
        match."""
        rows = self.conn.execute(
            "SELECT line, item_id, quantity, uom, unit_price, base_uom, vendor_item, gtin, "
            "bill_only FROM po_lines WHERE po_number = ? ORDER BY rowid",
            (po_number,),
        ).fetchall()
        if not rows:
            return None
        vendor = self.conn.execute(
            "SELECT vendor FROM purchase_orders WHERE po_number = ?", (po_number,)
        ).fetchone()[0]
        lines = [
            order_line(line, item, Decimal(qty), uom, Decimal(price), base_uom, vitem, gtin, b)
            for line, item, qty, uom, price, base_uom, vitem, gtin, b in rows
        ]
        return Order(po_number=po_number, lines=tuple(lines), vendor=vendor)

    def set_line_ack(self, po_number: str, line: str, status: str, detail: dict[str, Any]) -> None:
        self.conn.execute(
            "UPDATE po_lines SET status = ?, ack_detail = ? WHERE po_number = ? AND line = ?",
            (status, json.dumps(detail), po_number, line),
        )

    def set_po_status(self, po_number: str, status: str, now: float) -> None:
        self.conn.execute(
            "UPDATE purchase_orders SET status = ?, updated_at = ? WHERE po_number = ?",
            (status, now, po_number),
        )

    def set_po_line_basis(
        self,
        po_number: str,
        line: str,
        *,
        quantity: Decimal,
        uom: str,
        unit_price: Decimal,
        base_quantity: Decimal,
    ) -> None:
        """An accepted change: the PO line's quantity, unit and price the match uses."""
        self.conn.execute(
            "UPDATE po_lines SET quantity = ?, uom = ?, unit_price = ?, base_quantity = ? "
            "WHERE po_number = ? AND line = ?",
            (str(quantity), uom, str(unit_price), str(base_quantity), po_number, line),
        )

    # ------------------------------------------------------------------ proposed PO changes

    _CHANGE_COLUMNS = (
        "id, po_number, line, partner, status, ack_code, ordered_quantity, ordered_uom, "
        "ordered_price, quantity, uom, unit_price, ship_date, message_id, correlation_id, "
        "created_at, decided_at, decided_by, note, channel"
    )

    def add_po_change(self, change: NewPoChange) -> int | None:
        """Record a proposal; None when the same one is already proposed for that line (a
        resent 855). An earlier, different proposal for the line is superseded."""
        c = change
        values = (
            None if c.quantity is None else str(c.quantity),
            c.uom,
            None if c.unit_price is None else str(c.unit_price),
            c.ship_date,
        )
        for row in self.conn.execute(
            "SELECT id, quantity, uom, unit_price, ship_date FROM po_changes WHERE "
            "po_number = ? AND line = ? AND status = 'proposed'",
            (c.po_number, c.line),
        ).fetchall():
            if tuple(row[1:]) == values:
                return None
            self.conn.execute(
                "UPDATE po_changes SET status = 'superseded', decided_at = ? WHERE id = ?",
                (c.created_at, row[0]),
            )
        cur = self.conn.execute(
            "INSERT INTO po_changes (po_number, line, partner, status, ack_code, "
            "ordered_quantity, ordered_uom, ordered_price, quantity, uom, unit_price, "
            "ship_date, message_id, correlation_id, created_at, channel) "
            "VALUES (?, ?, ?, 'proposed', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                c.po_number,
                c.line,
                c.partner,
                c.ack_code,
                str(c.ordered_quantity),
                c.ordered_uom,
                str(c.ordered_price),
                *values,
                c.message_id,
                c.correlation_id,
                c.created_at,
                c.channel,
            ),
        )
        return int(cur.lastrowid or 0)

    def po_changes(
        self,
        status: str | None = None,
        po_number: str | None = None,
        channels: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Proposed (or decided) PO changes, oldest first (of ``channels`` only, when given)."""
        scope, args = in_scope(channels)
        sql = f"SELECT {self._CHANGE_COLUMNS} FROM po_changes WHERE 1 = 1{scope}"
        if status:
            sql += " AND status = ?"
            args.append(status)
        if po_number:
            sql += " AND po_number = ?"
            args.append(po_number)
        return [self._change(row) for row in self.conn.execute(sql + " ORDER BY id", args)]

    def po_change(self, change_id: int) -> dict[str, Any] | None:
        row = self.conn.execute(
            f"SELECT {self._CHANGE_COLUMNS} FROM po_changes WHERE id = ?", (change_id,)
        ).fetchone()
        return None if row is None else self._change(row)

    def _change(self, row: Any) -> dict[str, Any]:
        out = dict(zip([c.strip() for c in self._CHANGE_COLUMNS.split(",")], row, strict=True))
        for key in ("ordered_quantity", "ordered_price", "quantity", "unit_price"):
            if out[key] is not None:
                out[key] = Decimal(out[key])
        return out

    def decide_po_change(
        self, change_id: int, status: str, actor: str, note: str, now: float
    ) -> None:
        self.conn.execute(
            "UPDATE po_changes SET status = ?, decided_at = ?, decided_by = ?, note = ? "
            "WHERE id = ?",
            (status, now, actor, note, change_id),
        )

    # ------------------------------------------------------------------ receipts

    def add_receipt(self, receipt: NewReceipt) -> bool:
        """Record a received line; False when its business key was taken before."""
        r = receipt
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO receipts (business_key, po_number, po_line, item_id, "
            "quantity, uom, base_quantity, lot, serial, expiry, sscc, source, message_id, "
            "created_at, channel) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                r.business_key,
                r.po_number,
                r.po_line,
                r.item_id,
                str(r.quantity),
                r.uom,
                str(r.base_quantity),
                r.lot,
                r.serial,
                r.expiry,
                r.sscc,
                r.source,
                r.message_id,
                r.created_at,
                r.channel,
            ),
        )
        return bool(cur.rowcount)

    def receipts_for(self, po_number: str) -> list[tuple[int, str, Decimal]]:
        """(id, PO line, quantity in the base unit) of the PO's receipts (ASN or ERP) and
        returns to the vendor (negative)."""
        return [
            (rid, po_line, Decimal(qty))
            for rid, po_line, qty in self.conn.execute(
                "SELECT id, po_line, base_quantity FROM receipts WHERE po_number = ? "
                "AND source IN ('asn', 'erp', 'erp_return')",
                (po_number,),
            )
        ]

    def receipt_outcomes(
        self, since: float, until: float, within: float, limit: int
    ) -> list[tuple[float, bool]]:
        """Receipts (ASN, ERP) recorded in (since, until], oldest first (at most ``limit``):
        when, and whether a matched or released invoice line for their PO line was on file
        within ``within`` seconds of the receipt."""
        rows = self.conn.execute(
            "SELECT r.created_at, EXISTS (SELECT 1 FROM invoices i JOIN invoice_lines l "
            "ON l.invoice_id = i.id WHERE i.po_number = r.po_number AND l.po_line = r.po_line "
            "AND i.status IN ('matched', 'released') AND i.updated_at <= r.created_at + ?) "
            "FROM receipts r WHERE r.created_at > ? AND r.created_at <= ? "
            "AND r.source IN ('asn', 'erp') ORDER BY r.created_at LIMIT ?",
            (within, since, until, limit),
        ).fetchall()
        return [(float(at), bool(good)) for at, good in rows]

    def received_lines(
        self, channels: Sequence[str] | None = None
    ) -> list[tuple[str, str, str, Decimal, float]]:
        """(PO, PO line, item, quantity in the base unit, when) of every receipt (ASN, ERP)
        and return to the vendor (negative); of ``channels`` only, when given."""
        scope, args = in_scope(channels)
        return [
            (po, line, item, Decimal(qty), at)
            for po, line, item, qty, at in self.conn.execute(
                "SELECT po_number, po_line, item_id, base_quantity, created_at FROM receipts "
                f"WHERE source IN ('asn', 'erp', 'erp_return'){scope}",
                args,
            )
        ]

    def add_to_onhand(
        self, location: str, item: str, quantity: Decimal, uom: str, now: float
    ) -> None:
        add_to_onhand(self.tx, location, item, quantity, uom, now)

    def add_receipt_posting(
        self, business_key: str, posting_key: str, destination: str, message_id: str, now: float
    ) -> None:
        """The receipt line ``business_key`` sent to the ERP in the goods receipt
        ``posting_key``: pending until that delivery settles (once per receipt line)."""
        self.conn.execute(
            "INSERT INTO receipt_postings (receipt_id, posting_key, destination, status, "
            "message_id, created_at, updated_at) SELECT id, ?, ?, 'pending', ?, ?, ? "
            "FROM receipts WHERE business_key = ? ON CONFLICT (receipt_id) DO NOTHING",
            (posting_key, destination, message_id, now, now, business_key),
        )

    def settle_receipt_postings(
        self, posting_key: str, status: str, reason: str | None, now: float
    ) -> int:
        """The ERP's answer to the goods receipt ``posting_key`` for each of its lines."""
        cur = self.conn.execute(
            "UPDATE receipt_postings SET status = ?, reason = ?, updated_at = ? "
            "WHERE posting_key = ?",
            (status, reason, now, posting_key),
        )
        return int(cur.rowcount)

    # ------------------------------------------------------------------ invoices

    def invoice_on_file(self, vendor_key: str, invoice_key: str) -> str | None:
        """The number of the invoice (not a duplicate) already filed under these keys."""
        row = self.conn.execute(
            "SELECT id, invoice_number FROM invoices WHERE vendor_key = ? AND invoice_key = ? "
            "AND status != 'duplicate'",
            (vendor_key, invoice_key),
        ).fetchone()
        return None if row is None else row[1]

    def invoiced(self, po_number: str, excluding: int | None) -> dict[str, Decimal]:
        """Quantity (base unit, net of credits) per PO line on the PO's invoice lines posted
        to AP (matched, released, or payable under a line-level hold), but ``excluding``."""
        out: dict[str, Decimal] = {}
        for po_line, qty in self.conn.execute(
            "SELECT l.po_line, l.base_quantity FROM invoice_lines l JOIN invoices i "
            "ON i.id = l.invoice_id WHERE i.po_number = ? AND l.posted = 1 "
            "AND i.status != 'duplicate' AND l.po_line IS NOT NULL AND i.id != ?",
            (po_number, excluding or -1),
        ):
            out[po_line] = out.get(po_line, Decimal(0)) + Decimal(qty)
        return out

    def credited(self, po_number: str, excluding: int | None) -> dict[str, Decimal]:
        """Quantity (base unit) per PO line credited by the PO's posted credit memos, but
        ``excluding`` (what returns to the vendor already covered)."""
        out: dict[str, Decimal] = {}
        for po_line, qty in self.conn.execute(
            "SELECT l.po_line, l.base_quantity FROM invoice_lines l JOIN invoices i "
            "ON i.id = l.invoice_id WHERE i.po_number = ? AND l.posted = 1 AND l.credit = 1 "
            "AND i.status != 'duplicate' AND l.po_line IS NOT NULL AND i.id != ?",
            (po_number, excluding or -1),
        ):
            out[po_line] = out.get(po_line, Decimal(0)) - Decimal(qty)
        return out

    def posted_lines(self, invoice_id: int) -> set[str]:
        """The lines of ``invoice_id`` already posted to AP."""
        return {
            row[0]
            for row in self.conn.execute(
                "SELECT line FROM invoice_lines WHERE invoice_id = ? AND posted = 1",
                (invoice_id,),
            )
        }

    def mark_posted(self, invoice_id: int, lines: Sequence[str]) -> None:
        """These lines of ``invoice_id`` went to AP (a person released them)."""
        self.conn.executemany(
            "UPDATE invoice_lines SET posted = 1 WHERE invoice_id = ? AND line = ?",
            [(invoice_id, line) for line in lines],
        )

    def invoiced_lines(self) -> list[tuple[str, str, Decimal]]:
        """(PO, PO line, quantity in the base unit) of every invoice line posted to AP."""
        return [
            (po, line, Decimal(qty))
            for po, line, qty in self.conn.execute(
                "SELECT i.po_number, l.po_line, l.base_quantity FROM invoice_lines l JOIN "
                "invoices i ON i.id = l.invoice_id WHERE l.posted = 1 "
                "AND i.status != 'duplicate' AND l.po_line IS NOT NULL"
            )
        ]

    def add_invoice(self, invoice: NewInvoice) -> int:
        v = invoice
        cur = self.conn.execute(
            "INSERT INTO invoices (partner, vendor_key, invoice_key, invoice_number, "
            "po_number, status, reasons, retry_on_receipt, total, body, message_id, "
            "correlation_id, created_at, updated_at, channel) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                v.partner,
                v.vendor_key,
                v.invoice_key,
                v.invoice_number,
                v.po_number,
                v.status,
                json.dumps(v.reasons),
                int(v.retry_on_receipt),
                None if v.total is None else str(v.total),
                v.body,
                v.message_id,
                v.correlation_id,
                v.created_at,
                v.created_at,
                v.channel,
            ),
        )
        return int(cur.lastrowid or 0)

    def rematch_invoice(
        self,
        invoice_id: int,
        status: str,
        reasons: list[dict[str, Any]],
        retry_on_receipt: bool,
        now: float,
    ) -> None:
        self.conn.execute(
            "UPDATE invoices SET status = ?, reasons = ?, retry_on_receipt = ?, "
            "updated_at = ? WHERE id = ?",
            (status, json.dumps(reasons), int(retry_on_receipt), now, invoice_id),
        )

    def set_invoice_lines(self, invoice_id: int, lines: Sequence[InvoiceLineRow]) -> None:
        self.conn.execute("DELETE FROM invoice_lines WHERE invoice_id = ?", (invoice_id,))
        rows = [InvoiceLineRow(*row) for row in lines]
        self.conn.executemany(
            "INSERT INTO invoice_lines (invoice_id, line, po_line, base_quantity, posted, "
            "credit) VALUES (?, ?, ?, ?, ?, ?)",
            [
                (invoice_id, r.line, r.po_line, str(r.base_quantity), int(r.posted), int(r.credit))
                for r in rows
            ],
        )

    def held_for_receipt(self, po_number: str, partner: str) -> list[tuple[int, str]]:
        """(id, body) of the partner's invoices for the PO held until a receipt comes."""
        return [
            (invoice_id, body)
            for invoice_id, body in self.conn.execute(
                "SELECT id, body FROM invoices WHERE po_number = ? AND partner = ? AND status = "
                "'held' AND retry_on_receipt = 1 ORDER BY id",
                (po_number, partner),
            ).fetchall()
        ]

    def held_invoices(self, po_number: str, partner: str) -> list[tuple[int, str]]:
        """(id, body) of the partner's held invoices for the PO (for any reason): matched
        again when the PO's basis changes (an accepted change)."""
        return [
            (invoice_id, body)
            for invoice_id, body in self.conn.execute(
                "SELECT id, body FROM invoices WHERE po_number = ? AND partner = ? AND status = "
                "'held' ORDER BY id",
                (po_number, partner),
            ).fetchall()
        ]

    def invoices(
        self, status: str | None = None, channels: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        """Every invoice (or those with ``status``; of ``channels`` only, when given) with its
        reasons and how many of its lines were posted to AP, oldest first."""
        scope, args = in_scope(channels)
        sql = (
            "SELECT id, partner, invoice_number, po_number, status, reasons, total, created_at, "
            "(SELECT COUNT(*) FROM invoice_lines l WHERE l.invoice_id = invoices.id), "
            "(SELECT COUNT(*) FROM invoice_lines l WHERE l.invoice_id = invoices.id "
            f"AND l.posted = 1), channel FROM invoices WHERE 1 = 1{scope}"
        )
        if status:
            sql += " AND status = ?"
            args.append(status)
        cols = (
            "id",
            "partner",
            "invoice_number",
            "po_number",
            "status",
            "reasons",
            "total",
            "at",
            "lines",
            "lines_posted",
            "channel",
        )
        out = []
        for row in self.conn.execute(sql + " ORDER BY id", args):
            item = dict(zip(cols, row, strict=True))
            item["reasons"] = json.loads(item["reasons"])
            out.append(item)
        return out

    def invoice(self, invoice_id: int) -> StoredInvoice | None:
        row = self.conn.execute(
            "SELECT id, partner, invoice_number, po_number, status, body, message_id, "
            "correlation_id, channel FROM invoices WHERE id = ?",
            (invoice_id,),
        ).fetchone()
        return None if row is None else StoredInvoice(*row)

    def close_invoice(self, invoice_id: int, status: str, now: float) -> None:
        self.conn.execute(
            "UPDATE invoices SET status = ?, retry_on_receipt = 0, updated_at = ? WHERE id = ?",
            (status, now, invoice_id),
        )

    # ------------------------------------------------------------------ work items

    def open_work_item(
        self,
        kind: str,
        subject: str,
        detail: str,
        message_id: str | None,
        correlation_id: str | None,
        now: float,
        *,
        once: str,
    ) -> bool:
        return self.tx.open_work_item(
            kind, subject, detail, message_id, correlation_id, now, once=once
        )

    def refresh_work_items(self, kind: str, *, subject: str, detail: str, now: float) -> int:
        return self.tx.refresh_work_items(kind, subject=subject, detail=detail, now=now)

    def resolve_work_items(self, kind: str, *, subject: str, now: float) -> int:
        return self.tx.resolve_work_items(kind, subject=subject, now=now)

    def audit(
        self, actor: str, action: str, target: str, detail: dict[str, Any], now: float
    ) -> None:
        self.tx.audit(actor, action, target, detail, now)

    def answered_overdue_alerts(self) -> list[str]:
        """Subjects of the open ACK_OVERDUE work items whose interchange has had its answer
        since (a 997/999, or a TA1 that rejected it)."""
        return [
            row[0]
            for row in self.conn.execute(
                "SELECT subject FROM work_items WHERE kind = 'ACK_OVERDUE' AND status = 'open' "
                "AND subject IN (SELECT partner || ':' || document || ':' || "
                "printf('%09d', isa13) FROM x12_outbound WHERE ack_status != 'none') "
                "ORDER BY id"
            )
        ]


def order_line(
    line: str,
    item: str,
    quantity: Decimal,
    uom: str,
    price: Decimal,
    base_uom: str,
    vendor_item: str | None,
    gtin: str | None,
    bill_only: Any,
) -> OrderLine:
    """A PO line as the match sees it (our item id, then the vendor's, then the GTIN)."""
    ids = [("IN", item)]
    if vendor_item:
        ids.append(("VC", vendor_item))
    if gtin:
        ids.append(("UK", gtin))
    return OrderLine(
        line_number=line,
        item_id=item,
        quantity=quantity,
        unit=uom,
        unit_price=price,
        base_unit=base_uom,
        product_ids=tuple(ids),
        receipt_required=not bill_only,
    )
