"""An in-memory :class:`~engine.domains.procurement.repository.ProcurementRepository`, for the
book's unit tests: the same answers as the SQLite repository, kept in dicts and lists.

It counts control numbers, logs the interchanges sent and the inbound sets seen, and keeps its
own work items (with the spine's ``once`` rules) and on-hand, so the book runs without a store.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from engine.domains.procurement.match import Order
from engine.domains.procurement.numbers import (
    ControlNumbers,
    OutboundRecord,
    check_ack_status,
    check_count,
    check_kind,
    check_ta1,
    control_key,
    next_numbers,
)
from engine.domains.procurement.records import PoRelease
from engine.domains.procurement.repository import (
    RECEIVED_SOURCES,
    InvoiceLineRow,
    NewInvoice,
    NewPoChange,
    NewReceipt,
    PoHeader,
    PoLineRef,
    StoredInvoice,
    ack_overdue_subject,
    order_line,
)

ONCE = ("per_message", "while_open", "ever")


@dataclass
class _Inbound:
    sender: tuple[str, str]
    receiver: tuple[str, str]
    isa13: str | None
    gs06: str | None
    st02: str | None
    received_at: float
    message_id: str


@dataclass
class InMemoryProcurementRepository:
    """Control numbers, interchanges, purchase orders, receipts, invoices, on-hand and work
    items in plain Python."""

    counters: dict[tuple[str, str], int] = field(default_factory=dict)
    outbound: list[OutboundRecord] = field(default_factory=list)
    inbound: list[_Inbound] = field(default_factory=list)
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    po_lines: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    receipts: dict[str, dict[str, Any]] = field(default_factory=dict)
    receipt_postings: dict[str, dict[str, Any]] = field(default_factory=dict)
    invoice_rows: dict[int, dict[str, Any]] = field(default_factory=dict)
    invoice_lines: dict[int, list[InvoiceLineRow]] = field(default_factory=dict)
    onhand: dict[tuple[str, str], tuple[Decimal, str]] = field(default_factory=dict)
    work_items: list[dict[str, Any]] = field(default_factory=list)
    changes: dict[int, dict[str, Any]] = field(default_factory=dict)
    audit_log: list[dict[str, Any]] = field(default_factory=list)

    # ------------------------------------------------------------------ control numbers

    def allocate(self, partner: str, kind: str, n: int = 1) -> list[int]:
        check_kind(kind)
        check_count("n", n)
        numbers = next_numbers(self.counters.get((partner, kind), 0), n)
        self.counters[(partner, kind)] = numbers[-1]
        return numbers

    def allocate_envelope(self, partner: str, sets: int = 1) -> ControlNumbers:
        check_count("sets", sets)
        (isa13,) = self.allocate(partner, "isa13")
        (gs06,) = self.allocate(partner, "gs06")
        return ControlNumbers(isa13, gs06, tuple(self.allocate(partner, "st02", sets)))

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
        row_id = len(self.outbound) + 1
        self.outbound.append(
            OutboundRecord(
                id=row_id,
                partner=partner,
                isa13=numbers.isa13,
                gs06=numbers.gs06,
                st02=tuple(numbers.st02),
                document=document,
                business_key=business_key,
                message_id=message_id,
                sent_at=sent_at,
                ack_due_at=None if ack_within is None else sent_at + ack_within,
                ack_status="none",
                ack_codes=(),
                ack_at=None,
                ta1_status=None,
                ta1_code=None,
                ta1_at=None,
            )
        )
        return row_id

    def _latest(self, partner: str, column: str, value: int) -> int | None:
        """The index in ``outbound`` of our interchange with that number. After a wrap two
        may share it: the latest sent is the one acknowledged."""
        found = [
            (r.sent_at, r.id, i)
            for i, r in enumerate(self.outbound)
            if r.partner == partner and getattr(r, column) == int(value)
        ]
        return max(found)[2] if found else None

    def record_ack(
        self, partner: str, gs06: int, status: str, codes: Sequence[str] = ()
    ) -> OutboundRecord | None:
        check_ack_status(status)
        at = time.time()
        i = self._latest(partner, "gs06", gs06)
        if i is None:
            return None
        codes = tuple(str(c) for c in codes)
        self.outbound[i] = replace(self.outbound[i], ack_status=status, ack_codes=codes, ack_at=at)
        return self.outbound[i]

    def record_ta1(
        self, partner: str, isa13: int, ta104: str, ta105: str = "000"
    ) -> OutboundRecord | None:
        check_ta1(ta104)
        at = time.time()
        i = self._latest(partner, "isa13", isa13)
        if i is None:
            return None
        rec = replace(self.outbound[i], ta1_status=ta104, ta1_code=ta105, ta1_at=at)
        if ta104 == "R" and rec.ack_status == "none":
            rec = replace(rec, ack_status="rejected", ack_codes=(f"TA1:{ta105}",), ack_at=at)
        self.outbound[i] = rec
        return rec

    def overdue_acks(self, now: float) -> list[OutboundRecord]:
        due = [
            r
            for r in self.outbound
            if r.ack_status == "none" and r.ack_due_at is not None and r.ack_due_at <= now
        ]
        return sorted(due, key=lambda r: (r.ack_due_at or 0.0, r.id))

    # ------------------------------------------------------------------ inbound sets

    def seen_interchange(
        self, sender: tuple[str, str], isa13: str, window: float, now: float
    ) -> bool:
        key = (sender[0].strip(), sender[1].strip())
        return any(
            s.sender == key and s.isa13 == control_key(isa13) and s.received_at >= now - window
            for s in self.inbound
        )

    def seen_groups(self, sender: tuple[str, str], since: float) -> set[str]:
        return {
            s.gs06
            for s in self.inbound
            if s.sender == (sender[0], sender[1]) and s.received_at >= since and s.gs06 is not None
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
        self.inbound.append(
            _Inbound(
                (sender[0].strip(), sender[1].strip()),
                (receiver[0].strip(), receiver[1].strip()),
                control_key(isa13),
                control_key(gs06),
                control_key(st02),
                received_at,
                message_id,
            )
        )

    # ------------------------------------------------------------------ purchase orders

    def po_sent(self, po_number: str) -> bool:
        return po_number in self.orders

    def add_po(
        self, po: PoRelease, message_id: str, correlation_id: str, now: float, channel: str = ""
    ) -> None:
        if po.po_number in self.orders:
            raise ValueError(f"PO {po.po_number!r} is already on file")
        keys = [(po.po_number, ln.line) for ln in po.lines]
        if len(set(keys)) != len(keys) or any(k in self.po_lines for k in keys):
            raise ValueError(f"PO {po.po_number!r} repeats a line number")
        self.orders[po.po_number] = {
            "partner": po.partner,
            "vendor": po.vendor,
            "location_id": po.location_id,
            "currency": po.currency,
            "status": "sent",
            "message_id": message_id,
            "correlation_id": correlation_id,
            "updated_at": now,
            "channel": channel or None,
        }
        for ln in po.lines:
            self.po_lines[(po.po_number, ln.line)] = {
                "line": ln.line,
                "item_id": ln.item_id,
                "quantity": ln.quantity,
                "uom": ln.uom,
                "unit_price": ln.unit_price,
                "base_quantity": ln.base_quantity,
                "base_uom": ln.base_uom,
                "vendor_item": ln.vendor_item,
                "gtin": ln.gtin,
                "bill_only": ln.bill_only,
                "status": "ordered",
                "ack_detail": None,
            }

    def purchase_order(self, po_number: str) -> PoHeader | None:
        po = self.orders.get(po_number)
        return None if po is None else PoHeader(po["partner"], po["vendor"], po["location_id"])

    def po_line(self, po_number: str, line: str) -> PoLineRef | None:
        row, po = self.po_lines.get((po_number, line)), self.orders.get(po_number)
        if row is None or po is None:
            return None
        return PoLineRef(row["item_id"], row["base_uom"], po["location_id"])

    def order(self, po_number: str) -> Order | None:
        rows = [row for (po, _), row in self.po_lines.items() if po == po_number]
        if not rows:
            return None
        lines = [
            order_line(
                r["line"],
                r["item_id"],
                r["quantity"],
                r["uom"],
                r["unit_price"],
                r["base_uom"],
                r["vendor_item"],
                r["gtin"],
                r["bill_only"],
            )
            for r in rows
        ]
        return Order(
            po_number=po_number, lines=tuple(lines), vendor=self.orders[po_number]["vendor"]
        )

    def set_line_ack(self, po_number: str, line: str, status: str, detail: dict[str, Any]) -> None:
        row = self.po_lines.get((po_number, line))
        if row is not None:
            row.update(status=status, ack_detail=dict(detail))

    def set_po_status(self, po_number: str, status: str, now: float) -> None:
        po = self.orders.get(po_number)
        if po is not None:
            po.update(status=status, updated_at=now)

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
        row = self.po_lines.get((po_number, line))
        if row is not None:
            row.update(
                quantity=quantity, uom=uom, unit_price=unit_price, base_quantity=base_quantity
            )

    # ------------------------------------------------------------------ proposed PO changes

    def add_po_change(self, change: NewPoChange) -> int | None:
        c = change
        values = (c.quantity, c.uom, c.unit_price, c.ship_date)
        for row in self.changes.values():
            if (row["po_number"], row["line"], row["status"]) != (c.po_number, c.line, "proposed"):
                continue
            if (row["quantity"], row["uom"], row["unit_price"], row["ship_date"]) == values:
                return None
            row.update(status="superseded", decided_at=c.created_at)
        change_id = len(self.changes) + 1
        self.changes[change_id] = {
            "id": change_id,
            **vars(c),
            "status": "proposed",
            "decided_at": None,
            "decided_by": None,
            "note": None,
        }
        return change_id

    def po_changes(
        self,
        status: str | None = None,
        po_number: str | None = None,
        channels: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        return [
            dict(row)
            for _, row in sorted(self.changes.items())
            if status in (None, "", row["status"])
            and po_number in (None, "", row["po_number"])
            and _scoped(row.get("channel"), channels)
        ]

    def po_change(self, change_id: int) -> dict[str, Any] | None:
        row = self.changes.get(change_id)
        return None if row is None else dict(row)

    def decide_po_change(
        self, change_id: int, status: str, actor: str, note: str, now: float
    ) -> None:
        row = self.changes.get(change_id)
        if row is not None:
            row.update(status=status, decided_at=now, decided_by=actor, note=note)

    # ------------------------------------------------------------------ receipts

    def add_receipt(self, receipt: NewReceipt) -> bool:
        if receipt.business_key in self.receipts:
            return False
        self.receipts[receipt.business_key] = {
            "id": len(self.receipts) + 1,
            **vars(receipt),
        }
        return True

    def receipts_for(self, po_number: str) -> list[tuple[int, str, Decimal]]:
        return [
            (r["id"], r["po_line"], r["base_quantity"])
            for r in self.receipts.values()
            if r["po_number"] == po_number and r["source"] in RECEIVED_SOURCES
        ]

    def receipt_outcomes(
        self, since: float, until: float, within: float, limit: int
    ) -> list[tuple[float, bool]]:
        return []  # (the in-memory book of the channel tests keeps no receipt times)

    def received_lines(
        self, channels: Sequence[str] | None = None
    ) -> list[tuple[str, str, str, Decimal, float]]:
        return [
            (r["po_number"], r["po_line"], r["item_id"], r["base_quantity"], r["created_at"])
            for r in self.receipts.values()
            if r["source"] in RECEIVED_SOURCES and _scoped(r.get("channel"), channels)
        ]

    def add_to_onhand(
        self, location: str, item: str, quantity: Decimal, uom: str, now: float
    ) -> None:
        held = self.onhand.get((location, item), (Decimal(0), uom))[0]
        self.onhand[(location, item)] = (held + quantity, uom)

    def add_receipt_posting(
        self, business_key: str, posting_key: str, destination: str, message_id: str, now: float
    ) -> None:
        if business_key not in self.receipts or business_key in self.receipt_postings:
            return  # (as the SQL one: a receipt line's first goods receipt only)
        self.receipt_postings[business_key] = {
            "posting_key": posting_key,
            "destination": destination,
            "status": "pending",
            "reason": None,
            "message_id": message_id,
            "created_at": now,
            "updated_at": now,
        }

    def settle_receipt_postings(
        self, posting_key: str, status: str, reason: str | None, now: float
    ) -> int:
        rows = [r for r in self.receipt_postings.values() if r["posting_key"] == posting_key]
        for r in rows:
            r.update(status=status, reason=reason, updated_at=now)
        return len(rows)

    # ------------------------------------------------------------------ invoices

    def invoice_on_file(self, vendor_key: str, invoice_key: str) -> str | None:
        for row in self.invoice_rows.values():
            if (
                row["vendor_key"] == vendor_key
                and row["invoice_key"] == invoice_key
                and row["status"] != "duplicate"
            ):
                return row["invoice_number"]
        return None

    def invoiced(self, po_number: str, excluding: int | None) -> dict[str, Decimal]:
        out: dict[str, Decimal] = {}
        for po, po_line, qty, _credit in self._posted(excluding):
            if po == po_number:
                out[po_line] = out.get(po_line, Decimal(0)) + qty
        return out

    def credited(self, po_number: str, excluding: int | None) -> dict[str, Decimal]:
        out: dict[str, Decimal] = {}
        for po, po_line, qty, credit in self._posted(excluding):
            if po == po_number and credit:
                out[po_line] = out.get(po_line, Decimal(0)) - qty
        return out

    def posted_lines(self, invoice_id: int) -> set[str]:
        return {r.line for r in self.invoice_lines.get(invoice_id, ()) if r.posted}

    def mark_posted(self, invoice_id: int, lines: Sequence[str]) -> None:
        wanted = set(lines)
        self.invoice_lines[invoice_id] = [
            r._replace(posted=True) if r.line in wanted else r
            for r in self.invoice_lines.get(invoice_id, ())
        ]

    def invoiced_lines(self) -> list[tuple[str, str, Decimal]]:
        return [(po, line, qty) for po, line, qty, _ in self._posted(None)]

    def _posted(self, excluding: int | None) -> list[tuple[str, str, Decimal, bool]]:
        return [
            (row["po_number"], r.po_line, r.base_quantity, r.credit)
            for invoice_id, row in self.invoice_rows.items()
            if row["status"] != "duplicate" and invoice_id != excluding
            for r in self.invoice_lines.get(invoice_id, ())
            if r.po_line is not None and r.posted
        ]

    def add_invoice(self, invoice: NewInvoice) -> int:
        if invoice.status != "duplicate" and self.invoice_on_file(
            invoice.vendor_key, invoice.invoice_key
        ):
            raise ValueError(f"invoice {invoice.invoice_number!r} is already on file")
        invoice_id = len(self.invoice_rows) + 1
        self.invoice_rows[invoice_id] = {
            **vars(invoice),
            "reasons": [dict(r) for r in invoice.reasons],
            "updated_at": invoice.created_at,
        }
        return invoice_id

    def rematch_invoice(
        self,
        invoice_id: int,
        status: str,
        reasons: list[dict[str, Any]],
        retry_on_receipt: bool,
        now: float,
    ) -> None:
        row = self.invoice_rows.get(invoice_id)
        if row is not None:
            row.update(
                status=status,
                reasons=[dict(r) for r in reasons],
                retry_on_receipt=retry_on_receipt,
                updated_at=now,
            )

    def set_invoice_lines(self, invoice_id: int, lines: Sequence[InvoiceLineRow]) -> None:
        rows = [InvoiceLineRow(*row) for row in lines]
        numbers = [r.line for r in rows]
        if len(set(numbers)) != len(numbers):
            raise ValueError(f"invoice {invoice_id} repeats a line number")
        self.invoice_lines[invoice_id] = [
            r._replace(base_quantity=Decimal(r.base_quantity)) for r in rows
        ]

    def held_for_receipt(self, po_number: str, partner: str) -> list[tuple[int, str]]:
        return [
            (invoice_id, row["body"])
            for invoice_id, row in sorted(self.invoice_rows.items())
            if row["po_number"] == po_number
            and row["partner"] == partner
            and row["status"] == "held"
            and row["retry_on_receipt"]
        ]

    def held_invoices(self, po_number: str, partner: str) -> list[tuple[int, str]]:
        return [
            (invoice_id, row["body"])
            for invoice_id, row in sorted(self.invoice_rows.items())
            if row["po_number"] == po_number
            and row["partner"] == partner
            and row["status"] == "held"
        ]

    def invoices(
        self, status: str | None = None, channels: Sequence[str] | None = None
    ) -> list[dict[str, Any]]:
        return [
            {
                "id": invoice_id,
                "partner": row["partner"],
                "invoice_number": row["invoice_number"],
                "po_number": row["po_number"],
                "status": row["status"],
                "reasons": [dict(r) for r in row["reasons"]],
                "total": None if row["total"] is None else str(row["total"]),
                "at": row["created_at"],
                "lines": len(self.invoice_lines.get(invoice_id, ())),
                "lines_posted": len(self.posted_lines(invoice_id)),
                "channel": row.get("channel"),
            }
            for invoice_id, row in sorted(self.invoice_rows.items())
            if (not status or row["status"] == status) and _scoped(row.get("channel"), channels)
        ]

    def invoice(self, invoice_id: int) -> StoredInvoice | None:
        row = self.invoice_rows.get(invoice_id)
        if row is None:
            return None
        return StoredInvoice(
            invoice_id,
            row["partner"],
            row["invoice_number"],
            row["po_number"],
            row["status"],
            row["body"],
            row["message_id"],
            row["correlation_id"],
            row.get("channel"),
        )

    def close_invoice(self, invoice_id: int, status: str, now: float) -> None:
        row = self.invoice_rows.get(invoice_id)
        if row is not None:
            row.update(status=status, retry_on_receipt=False, updated_at=now)

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
        if once not in ONCE:
            raise ValueError(f"'once' must be per_message, while_open or ever (got {once!r})")
        same = [w for w in self.work_items if w["kind"] == kind and w["subject"] == subject]
        if once != "ever":
            same = [w for w in same if w["status"] == "open"]
        if once == "per_message" and message_id is not None:
            same = [w for w in same if w["message_id"] == message_id]
        if same:
            return False
        self.work_items.append(
            {
                "id": len(self.work_items) + 1,
                "kind": kind,
                "subject": subject,
                "detail": detail,
                "status": "open",
                "message_id": message_id,
                "correlation_id": correlation_id,
                "updated_at": now,
            }
        )
        return True

    def _open(self, kind: str, subject: str) -> list[dict[str, Any]]:
        return [
            w
            for w in self.work_items
            if w["kind"] == kind and w["subject"] == subject and w["status"] == "open"
        ]

    def refresh_work_items(self, kind: str, *, subject: str, detail: str, now: float) -> int:
        found = self._open(kind, subject)
        for w in found:
            w.update(detail=detail, updated_at=now)
        return len(found)

    def resolve_work_items(self, kind: str, *, subject: str, now: float) -> int:
        found = self._open(kind, subject)
        for w in found:
            w.update(status="resolved", updated_at=now)
        return len(found)

    def answered_overdue_alerts(self) -> list[str]:
        answered = {
            ack_overdue_subject(r.partner, r.document, r.isa13)
            for r in self.outbound
            if r.ack_status != "none"
        }
        return [
            w["subject"]
            for w in self.work_items
            if w["kind"] == "ACK_OVERDUE" and w["status"] == "open" and w["subject"] in answered
        ]

    # ------------------------------------------------------------------ audit

    def audit(
        self, actor: str, action: str, target: str, detail: dict[str, Any], now: float
    ) -> None:
        self.audit_log.append(
            {"actor": actor, "action": action, "target": target, "detail": dict(detail), "at": now}
        )


def _scoped(channel: str | None, channels: Sequence[str] | None) -> bool:
    """Whether a row of ``channel`` is in a channel scope (None: every row)."""
    return channels is None or channel in channels
