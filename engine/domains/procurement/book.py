"""The procurement book: X12 records applied in the message's own commit.

Runs inside the store's transaction for the message (like the supply ledger's
:func:`engine.domains.ledger.rules.book_events`), so a purchase order, its control numbers, the
850 in the outbox, a receipt and the invoices it releases, an invoice and its match all commit
together with the message's result, or not at all. It returns the deliveries those effects need:

- a :class:`~engine.domains.procurement.records.PoRelease` allocates ISA13/GS06/ST02 for the
  partner (never reused: a number is committed with the 850 that carries it), writes the 850,
  records it as awaiting its 997/999, and sends it to the partner (``partner_out``) and the
  transmission to the ERP (``po_status``) — once per PO number;
- an :class:`~engine.domains.procurement.records.InboundInterchange` is acknowledged (TA1 and/or
  997/999 in a new interchange with our own control numbers) and, unless an interchange with the
  same sender and ISA13 was applied within the duplicate window, its documents are applied: an
  855 updates the PO lines and sends them to the ERP (a change, backorder or rejection opens a
  ``PO_CHANGED`` work item); an 856 becomes receipt lines (posted to the ERP and added to the
  ledger's on-hand when the partner's ASN counts as the receipt) and re-tries invoices held for
  want of a receipt; an 810 is matched three ways and posted to AP, or held with its reasons as
  an ``INVOICE_HELD`` work item; a 997/999/TA1 records the partner's answer to our interchange
  (a rejection opens an ``ACK_REJECTED`` work item).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from engine.domains.ledger.domain import add_to_onhand
from engine.domains.procurement import control
from engine.domains.procurement.match import (
    Converter,
    MatchResult,
    Order,
    OrderLine,
    Receipt,
    invoice_key,
    match_invoice,
)
from engine.domains.procurement.partners import Partner, TradingPartners
from engine.domains.procurement.records import (
    ErpReceipt,
    InboundInterchange,
    PoRelease,
    ReceivedAck,
)
from engine.errors import MappingMiss
from engine.model import Outbound, effect_key, to_json_bytes
from engine.x12.documents import Invoice, PurchaseOrderAck, ShipNotice, read_invoice
from engine.x12.segments import Separators, TransactionSet
from engine.x12.writer import FunctionalGroup, write_interchange
from engine.x12.writer import TransactionSet as OutSet

X12 = "application/edi-x12"
DAY = 86400.0


@dataclass(frozen=True)
class ProcurementRoutes:
    """Which destinations of the channel take each effect (None: not sent)."""

    partner_out: str | None = None  # X12 files to the partner (850, 997/999, TA1)
    po_status: str | None = None  # ERP: PO transmissions and 855 line statuses
    receipts: str | None = None  # ERP goods receipts
    ap: str | None = None  # ERP accounts payable
    duplicate_window: float = 30 * DAY


def book_x12(
    conn: sqlite3.Connection,
    *,
    records: Sequence[Any],
    channel: str,
    message_id: str,
    correlation_id: str,
    routes: ProcurementRoutes,
    partners: TradingPartners,
    converter: Callable[[Partner], Converter],
    now: float | None = None,
) -> list[Outbound]:
    """Apply ``records`` in the caller's transaction; the deliveries they need."""
    now = time.time() if now is None else now
    book = _Book(conn, channel, message_id, correlation_id, routes, partners, converter, now)
    for record in records:
        if isinstance(record, PoRelease):
            book.release(record)
        elif isinstance(record, InboundInterchange):
            book.inbound(record)
        elif isinstance(record, ErpReceipt):
            book.erp_receipt(record)
        else:
            raise TypeError(f"procurement book: expected an X12 record (got {type(record)!r})")
    return book.out


class _Book:
    def __init__(
        self,
        conn: sqlite3.Connection,
        channel: str,
        message_id: str,
        correlation_id: str,
        routes: ProcurementRoutes,
        partners: TradingPartners,
        converter: Callable[[Partner], Converter],
        now: float,
    ) -> None:
        self.conn = conn
        self.channel = channel
        self.message_id = message_id
        self.correlation_id = correlation_id
        self.routes = routes
        self.partners = partners
        self.converter = converter
        self.now = now
        self.out: list[Outbound] = []

    # ------------------------------------------------------------------ helpers

    def _emit(
        self,
        destination: str | None,
        data: bytes,
        content_type: str,
        key: str,
        effect: str,
        **meta: Any,
    ) -> None:
        if destination is None:
            return
        idem = effect_key(self.channel, destination, key, effect)
        self.out.append(
            Outbound(
                destination,
                data,
                content_type,
                None,
                {"idempotency_key": idem, "effect": effect, **meta},
            )
        )

    def _work_item(self, kind: str, subject: str, detail: str) -> None:
        exists = self.conn.execute(
            "SELECT 1 FROM work_items WHERE kind = ? AND subject = ? AND status = 'open'",
            (kind, subject),
        ).fetchone()
        if not exists:
            self.conn.execute(
                "INSERT INTO work_items (kind, subject, detail, status, message_id, "
                "correlation_id, created_at, updated_at) VALUES (?, ?, ?, 'open', ?, ?, ?, ?)",
                (kind, subject, detail, self.message_id, self.correlation_id, self.now, self.now),
            )

    def _send_x12(
        self,
        partner: Partner,
        groups: list[tuple[str, str, tuple[tuple[Any, ...], ...]]],
        document: str,
        business_key: str,
        ack_within: float | None,
    ) -> control.ControlNumbers:
        """Allocate numbers (committed with this transaction, a full sync: never reused), write one
        interchange holding ``groups`` (functional id, set id, body) and send it."""
        numbers = control.allocate_envelope(self.conn, partner.id, sets=len(groups))
        gs06 = numbers.gs06
        header = partner.outbound_header()
        fgroups = []
        for i, (fid, set_id, body) in enumerate(groups):
            # One set per group (acks mirror each inbound group); extra groups take new GS06s.
            if i:
                (gs06,) = control.allocate(self.conn, partner.id, "gs06")
            fgroups.append(FunctionalGroup(fid, gs06, (OutSet(set_id, numbers.st02[i], body),)))
        data = write_interchange(
            header, numbers.isa13, fgroups, now=datetime.fromtimestamp(self.now)
        )
        control.record_outbound(
            self.conn,
            partner=partner.id,
            numbers=numbers,
            document=document,
            business_key=business_key,
            sent_at=self.now,
            ack_within=ack_within,
            message_id=self.message_id,
        )
        self._emit_file(partner, document, numbers.isa13, data)
        return numbers

    # ------------------------------------------------------------------ 850 out

    def release(self, po: PoRelease) -> None:
        if self.conn.execute(
            "SELECT 1 FROM purchase_orders WHERE po_number = ?", (po.po_number,)
        ).fetchone():
            return  # sent before: never a second 850 (nor new control numbers) for it
        partner = self.partners[po.partner]
        self.conn.execute(
            "INSERT INTO purchase_orders (po_number, partner, vendor, location_id, currency, "
            "status, message_id, correlation_id, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, 'sent', ?, ?, ?, ?)",
            (
                po.po_number,
                po.partner,
                po.vendor,
                po.location_id,
                po.currency,
                self.message_id,
                self.correlation_id,
                self.now,
                self.now,
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
        numbers = self._send_x12(
            partner,
            [("PO", "850", po.segments)],
            "850",
            po.business_key,
            partner.ack_within,
        )
        body = {
            "status": "sent",
            "partner": partner.id,
            "isa13": f"{numbers.isa13:09d}",
            "gs06": numbers.gs06,
            "st02": f"{numbers.st02[0]:04d}",
            "ack_due_in_seconds": partner.ack_within,
        }
        self._emit(
            self.routes.po_status,
            to_json_bytes(body),
            "application/json",
            po.business_key,
            "transmission",
            po_number=po.po_number,
            action="transmissions",
        )

    # ------------------------------------------------------------------ inbound

    def inbound(self, ic: InboundInterchange) -> None:
        partner = self.partners.get(ic.partner) if ic.partner else None
        if partner is not None:
            self._acknowledge(partner, ic)
        if ic.refused or partner is None:
            return
        sender = (ic.sender[0], ic.sender[1].strip())
        window = self.routes.duplicate_window
        if control.seen_inbound(self.conn, sender, ic.isa13, None, None, window, self.now):
            return  # the same interchange again: acknowledged again, applied once
        # A group sent before under another ISA13 (a re-enveloped resend) is not applied again.
        seen_groups = {
            row[0]
            for row in self.conn.execute(
                "SELECT DISTINCT gs06 FROM x12_inbound WHERE sender_qualifier = ? AND "
                "sender_id = ? AND received_at >= ? AND gs06 IS NOT NULL",
                (sender[0], sender[1], self.now - window),
            )
        }
        receiver = (ic.receiver[0], ic.receiver[1].strip())
        for gs06, _st01, st02 in ic.sets or ((None, "", None),):
            control.record_inbound(
                self.conn,
                sender,
                ic.isa13,
                gs06,
                st02,
                receiver=receiver,
                message_id=self.message_id,
                received_at=self.now,
            )
        for ack in ic.received_acks:
            self._received_ack(partner, ack)
        for doc, ts, gs06 in ic.documents:
            if gs06 in seen_groups:
                continue
            if isinstance(doc, PurchaseOrderAck):
                self._po_ack(partner, doc)
            elif isinstance(doc, ShipNotice):
                self._ship_notice(partner, doc)
            elif isinstance(doc, Invoice):
                self._match(partner, doc, None, _set_to_json(ts))

    def _acknowledge(self, partner: Partner, ic: InboundInterchange) -> None:
        """TA1 (asked for by ISA14, wanted by the partner, or a broken envelope) and 997/999,
        in interchanges that mirror the inbound envelope, with our own control numbers."""
        from engine.x12 import ack as x12ack

        res = ic.result
        if res is None:
            return
        when = datetime.fromtimestamp(self.now)
        if res.ta1_sent or partner.ta1:
            (isa13,) = control.allocate(self.conn, partner.id, "isa13")
            self._emit_file(partner, "TA1", isa13, x12ack.ta1_interchange(res, isa13, when))
        allocated: list[int] = []

        def next_control() -> int:
            kind = "gs06" if allocated else "isa13"
            (n,) = control.allocate(self.conn, partner.id, kind)
            allocated.append(n)
            return n

        kind = partner.ack if partner.ack in ("997", "999") else "997"
        doc = x12ack.functional_ack(res, kind=kind, next_control=next_control, now=when)
        if doc is not None:
            self._emit_file(partner, kind, allocated[0], doc)

    def _emit_file(self, partner: Partner, document: str, isa13: int, data: bytes) -> None:
        self._emit(
            self.routes.partner_out,
            data,
            X12,
            f"{partner.id}:{isa13}",
            f"x12:{document}",
            partner=partner.id,
            filename=f"{document}_{partner.id}_{isa13:09d}.x12",
            isa13=f"{isa13:09d}",
        )

    def _received_ack(self, partner: Partner, ack: ReceivedAck) -> None:
        try:
            number = int(ack.control_number)
        except ValueError:
            return
        if ack.kind == "TA1":
            rec = control.record_ta1(self.conn, partner.id, number, ack.code, *ack.details[:1])
            rejected = ack.code == "R"
        else:
            status = control.ack_status_for(ack.code)
            rec = control.record_ack(self.conn, partner.id, number, status, ack.details)
            rejected = status != "accepted"
        if rec is not None and rejected:
            self._work_item(
                "ACK_REJECTED",
                f"{partner.id}:{rec.document}:{rec.business_key}",
                f"{ack.kind} {ack.code} for our {rec.document} (ISA13 {rec.isa13:09d}, "
                f"GS06 {rec.gs06}): {'; '.join(ack.details) or 'no detail'}",
            )

    def _po_ack(self, partner: Partner, ack: PurchaseOrderAck) -> None:
        lines = []
        changed = []
        for line in ack.lines:
            kind = line.kind
            status = {
                "accepted": "accepted",
                "changed": "changed",
                "backordered": "backordered",
                "rejected": "rejected",
            }.get(kind, "acknowledged")
            detail = {
                "ack_code": line.status,
                "quantity": None if line.quantity is None else str(line.quantity),
                "unit": line.unit,
                "unit_price": None if line.unit_price is None else str(line.unit_price),
                "ship_date": line.ship_date.isoformat() if line.ship_date else None,
            }
            self.conn.execute(
                "UPDATE po_lines SET status = ?, ack_detail = ? WHERE po_number = ? AND line = ?",
                (status, json.dumps(detail), ack.po_number, line.line_number),
            )
            lines.append({"line": line.line_number, "status": status, **detail})
            if status in ("changed", "backordered", "rejected"):
                changed.append(f"line {line.line_number} {status} ({line.status})")
        po_status = (
            "rejected" if ack.ack_type == "RJ" else ("changed" if changed else "acknowledged")
        )
        self.conn.execute(
            "UPDATE purchase_orders SET status = ?, updated_at = ? WHERE po_number = ?",
            (po_status, self.now, ack.po_number),
        )
        if changed or ack.ack_type == "RJ":
            self._work_item(
                "PO_CHANGED",
                f"{partner.id}:{ack.po_number}",
                f"855 {ack.ack_type} for PO {ack.po_number}: "
                + ("; ".join(changed) or "rejected whole"),
            )
        body = {"status": po_status, "ack_type": ack.ack_type, "lines": lines}
        self._emit(
            self.routes.po_status,
            to_json_bytes(body),
            "application/json",
            f"855:{partner.id}:{ack.po_number}:{ack.control_number}:{self.message_id}",
            "po_ack",
            po_number=ack.po_number,
            action="acknowledgements",
        )

    # ------------------------------------------------------------------ 856 receipts

    def _ship_notice(self, partner: Partner, asn: ShipNotice) -> None:
        convert = self.converter(partner)
        posted: list[dict[str, Any]] = []
        touched: set[str] = set()
        for n, line in enumerate(asn.lines, 1):
            if not line.po_number or not line.po_line or line.quantity is None:
                self._work_item(
                    "ASN_UNMATCHED",
                    f"{partner.id}:{asn.shipment_id}:{n}",
                    f"856 {asn.shipment_id} line {n} names no PO line (PRF/LIN)",
                )
                continue
            row = self.conn.execute(
                "SELECT l.item_id, l.base_uom, p.location_id FROM po_lines l JOIN "
                "purchase_orders p USING (po_number) WHERE l.po_number = ? AND l.line = ?",
                (line.po_number, line.po_line),
            ).fetchone()
            if row is None:
                self._work_item(
                    "ASN_UNMATCHED",
                    f"{partner.id}:{asn.shipment_id}:{n}",
                    f"856 {asn.shipment_id}: no PO line {line.po_number}/{line.po_line}",
                )
                continue
            item, base_uom, location = row
            unit = line.unit or base_uom
            try:
                unit = partner.our_unit(line.unit) if line.unit else base_uom
                base = line.quantity * convert(item, unit, base_uom)
            except MappingMiss as exc:  # held for a person; the other lines go on
                self._work_item(
                    "MISSING_MAPPING",
                    f"uom:{partner.id}:{item}:{unit}->{base_uom}",
                    f"856 {asn.shipment_id} line {n}: {exc}",
                )
                continue
            key = "|".join(
                (
                    partner.id,
                    asn.shipment_id,
                    line.po_number,
                    line.po_line,
                    line.hl_id,
                    line.lot or "",
                    line.serial or "",
                    line.sscc or "",
                )
            )
            cur = self.conn.execute(
                "INSERT OR IGNORE INTO receipts (business_key, po_number, po_line, item_id, "
                "quantity, uom, base_quantity, lot, serial, expiry, sscc, source, message_id, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    line.po_number,
                    line.po_line,
                    item,
                    str(line.quantity),
                    unit,
                    str(base),
                    line.lot,
                    line.serial,
                    line.expiry.isoformat() if line.expiry else None,
                    line.sscc,
                    "asn" if partner.asn_is_receipt else "asn_expected",
                    self.message_id,
                    self.now,
                ),
            )
            if not cur.rowcount:
                continue  # this ASN line was taken before
            posted.append(
                {
                    "po_number": line.po_number,
                    "po_line": line.po_line,
                    "item_id": item,
                    "quantity": str(base),
                    "uom": base_uom,
                    "location_id": location,
                    "lot": line.lot,
                    "serial": line.serial,
                    "expiry": line.expiry.isoformat() if line.expiry else None,
                    "sscc": line.sscc,
                }
            )
            touched.add(line.po_number)
            if partner.asn_is_receipt:
                add_to_onhand(self.conn, location, item, base, base_uom, self.now)
        if not posted:
            return
        receipt = {
            "type": "goods_receipt" if partner.asn_is_receipt else "expected_receipt",
            "vendor": partner.id,
            "shipment_id": asn.shipment_id,
            "ship_date": asn.shipped.isoformat() if asn.shipped else None,
            "lines": posted,
            "correlation_id": self.correlation_id,
        }
        self._emit(
            self.routes.receipts,
            to_json_bytes(receipt),
            "application/json",
            f"856:{partner.id}:{asn.shipment_id}:{self.message_id}",
            "receipt",
        )
        if partner.asn_is_receipt:
            for po_number in sorted(touched):
                self._retry_held(partner, po_number)

    def erp_receipt(self, receipt: ErpReceipt) -> None:
        """A receipt the ERP posted: receipt lines (once per receipt line), on-hand, and the
        invoices of that PO waiting for a receipt are matched again."""
        po = self.conn.execute(
            "SELECT partner, location_id FROM purchase_orders WHERE po_number = ?",
            (receipt.po_number,),
        ).fetchone()
        if po is None:
            self._work_item(
                "RECEIPT_UNMATCHED",
                f"erp:{receipt.receipt_id}",
                f"ERP receipt {receipt.receipt_id} names PO {receipt.po_number}, which Wharf "
                "never sent",
            )
            return
        partner = self.partners[po[0]]
        convert = self.converter(partner)
        for n, line in enumerate(receipt.lines, 1):
            row = self.conn.execute(
                "SELECT item_id, base_uom FROM po_lines WHERE po_number = ? AND line = ?",
                (receipt.po_number, line.po_line),
            ).fetchone()
            if row is None:
                self._work_item(
                    "RECEIPT_UNMATCHED",
                    f"erp:{receipt.receipt_id}:{n}",
                    f"ERP receipt {receipt.receipt_id}: no PO line "
                    f"{receipt.po_number}/{line.po_line}",
                )
                continue
            item, base_uom = row
            base = line.quantity * convert(item, line.uom, base_uom)
            cur = self.conn.execute(
                "INSERT OR IGNORE INTO receipts (business_key, po_number, po_line, item_id, "
                "quantity, uom, base_quantity, lot, serial, expiry, sscc, source, message_id, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, 'erp', ?, ?)",
                (
                    f"erp|{receipt.receipt_id}|{n}",
                    receipt.po_number,
                    line.po_line,
                    item,
                    str(line.quantity),
                    line.uom,
                    str(base),
                    line.lot,
                    line.serial,
                    line.expiry,
                    self.message_id,
                    self.now,
                ),
            )
            if cur.rowcount:
                add_to_onhand(self.conn, po[1], item, base, base_uom, self.now)
        self._retry_held(partner, receipt.po_number)

    def _retry_held(self, partner: Partner, po_number: str) -> None:
        rows = self.conn.execute(
            "SELECT id, body FROM invoices WHERE po_number = ? AND partner = ? AND status = "
            "'held' AND retry_on_receipt = 1 ORDER BY id",
            (po_number, partner.id),
        ).fetchall()
        for invoice_id, body in rows:
            self._match(partner, read_invoice(_set_from_json(body)), invoice_id, body)

    # ------------------------------------------------------------------ 810 match

    def _match(self, partner: Partner, invoice: Invoice, invoice_id: int | None, body: str) -> None:
        vendor_key, inv_key = invoice_key(partner.id, invoice.invoice_number)
        duplicate_of = None
        if invoice_id is None:
            prior = self.conn.execute(
                "SELECT id, invoice_number FROM invoices WHERE vendor_key = ? AND invoice_key = ? "
                "AND status != 'duplicate'",
                (vendor_key, inv_key),
            ).fetchone()
            if prior is not None:
                duplicate_of = prior[1]
        order = order_from_store(self.conn, invoice.po_number)
        base_units = {ln.line_number: ln.base_unit for ln in order.lines} if order else {}
        receipts = [
            Receipt(po_line, Decimal(qty), base_units.get(po_line, "EA"), str(rid))
            for rid, po_line, qty in self.conn.execute(
                "SELECT id, po_line, base_quantity FROM receipts WHERE po_number = ? "
                "AND source IN ('asn', 'erp')",
                (invoice.po_number,),
            )
        ]
        prior_invoiced: dict[str, Decimal] = {}
        for po_line, qty in self.conn.execute(
            "SELECT l.po_line, l.base_quantity FROM invoice_lines l JOIN invoices i "
            "ON i.id = l.invoice_id WHERE i.po_number = ? AND i.status IN ('matched', "
            "'released') AND l.po_line IS NOT NULL AND i.id != ?",
            (invoice.po_number, invoice_id or -1),
        ):
            prior_invoiced[po_line] = prior_invoiced.get(po_line, Decimal(0)) + Decimal(qty)
        result = match_invoice(
            invoice,
            order,
            receipts,
            convert=_their_units(partner, self.converter(partner)),
            prior_invoiced=prior_invoiced,
            tolerance=partner.tolerance,
            duplicate_of=duplicate_of,
        )
        status = "matched" if result.matched else ("duplicate" if duplicate_of else "held")
        reasons = [
            {"reason": str(i.reason), "line": i.line, "message": i.message}
            for i in result.all_issues
        ]
        if invoice_id is None:
            cur = self.conn.execute(
                "INSERT INTO invoices (partner, vendor_key, invoice_key, invoice_number, "
                "po_number, status, reasons, retry_on_receipt, total, body, message_id, "
                "correlation_id, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    partner.id,
                    vendor_key,
                    inv_key,
                    invoice.invoice_number,
                    invoice.po_number,
                    status,
                    json.dumps(reasons),
                    int(result.retry_on_receipt),
                    None if invoice.total is None else str(invoice.total),
                    body,
                    self.message_id,
                    self.correlation_id,
                    self.now,
                    self.now,
                ),
            )
            invoice_id = int(cur.lastrowid or 0)
        else:
            self.conn.execute(
                "UPDATE invoices SET status = ?, reasons = ?, retry_on_receipt = ?, "
                "updated_at = ? WHERE id = ?",
                (status, json.dumps(reasons), int(result.retry_on_receipt), self.now, invoice_id),
            )
        self.conn.execute("DELETE FROM invoice_lines WHERE invoice_id = ?", (invoice_id,))
        self.conn.executemany(
            "INSERT INTO invoice_lines (invoice_id, line, po_line, base_quantity) "
            "VALUES (?, ?, ?, ?)",
            [
                (invoice_id, ln.invoice_line, ln.po_line, str(ln.quantity or 0))
                for ln in result.lines
            ],
        )
        subject = f"{partner.id}:{invoice.invoice_number}"
        if result.matched:
            self.conn.execute(
                "UPDATE work_items SET status = 'resolved', updated_at = ? WHERE kind = "
                "'INVOICE_HELD' AND subject = ? AND status = 'open'",
                (self.now, subject),
            )
            self._emit(
                self.routes.ap,
                to_json_bytes(ap_invoice(partner, invoice, result, self.correlation_id)),
                "application/json",
                f"810:{subject}",
                "ap_invoice",
                invoice_number=invoice.invoice_number,
            )
            return
        detail = "; ".join(
            f"{r['reason']}" + (f" line {r['line']}" if r["line"] else "") + f": {r['message']}"
            for r in reasons
        )
        if status == "duplicate":
            self._work_item("INVOICE_DUPLICATE", f"{subject}:{self.message_id}", detail)
            return
        self.conn.execute(
            "UPDATE work_items SET detail = ?, updated_at = ? WHERE kind = 'INVOICE_HELD' "
            "AND subject = ? AND status = 'open'",
            (detail, self.now, subject),
        )
        self._work_item("INVOICE_HELD", subject, detail)


def flag_overdue_acks(store: Any, now: float | None = None) -> int:
    """One ``ACK_OVERDUE`` work item per interchange of ours whose 997/999 is late; the number
    of new ones (the caller alerts on them)."""
    now = time.time() if now is None else now
    new = 0
    with store._write("flag_overdue_acks", durable=False) as conn:
        for rec in control.overdue_acks(conn, now):
            subject = f"{rec.partner}:{rec.document}:{rec.isa13:09d}"
            if conn.execute(
                "SELECT 1 FROM work_items WHERE kind = 'ACK_OVERDUE' AND subject = ?", (subject,)
            ).fetchone():
                continue
            late = (now - (rec.ack_due_at or now)) / 60
            conn.execute(
                "INSERT INTO work_items (kind, subject, detail, status, message_id, "
                "correlation_id, created_at, updated_at) VALUES "
                "('ACK_OVERDUE', ?, ?, 'open', ?, NULL, ?, ?)",
                (
                    subject,
                    f"no 997/999 from {rec.partner} for our {rec.document} "
                    f"({rec.business_key}, ISA13 {rec.isa13:09d}, GS06 {rec.gs06}), due "
                    f"{late:.0f} min ago",
                    rec.message_id,
                    now,
                    now,
                ),
            )
            new += 1
        # An ack that came late closes its alert.
        conn.execute(
            "UPDATE work_items SET status = 'resolved', updated_at = ? WHERE kind = "
            "'ACK_OVERDUE' AND status = 'open' AND subject IN (SELECT partner || ':' || "
            "document || ':' || printf('%09d', isa13) FROM x12_outbound WHERE ack_status != "
            "'none')",
            (now,),
        )
    return new


def order_from_store(conn: sqlite3.Connection, po_number: str) -> Order | None:
    """The PO as Wharf sent it (lines with item, unit, price, stocking unit), for the match."""
    rows = conn.execute(
        "SELECT line, item_id, quantity, uom, unit_price, base_uom, vendor_item, gtin, "
        "bill_only FROM po_lines WHERE po_number = ? ORDER BY rowid",
        (po_number,),
    ).fetchall()
    if not rows:
        return None
    vendor = conn.execute(
        "SELECT vendor FROM purchase_orders WHERE po_number = ?", (po_number,)
    ).fetchone()[0]
    lines = []
    for line, item, qty, uom, price, base_uom, vitem, gtin, bill_only in rows:
        ids = [("IN", item)]
        if vitem:
            ids.append(("VC", vitem))
        if gtin:
            ids.append(("UK", gtin))
        lines.append(
            OrderLine(
                line_number=line,
                item_id=item,
                quantity=Decimal(qty),
                unit=uom,
                unit_price=Decimal(price),
                base_unit=base_uom,
                product_ids=tuple(ids),
                receipt_required=not bill_only,
            )
        )
    return Order(po_number=po_number, lines=tuple(lines), vendor=vendor)


def ap_invoice(
    partner: Partner, invoice: Invoice, result: MatchResult, correlation_id: str
) -> dict[str, Any]:
    """The AP invoice the ERP gets for a matched 810."""
    return {
        "type": "ap_invoice",
        "vendor": partner.id,
        "invoice_number": invoice.invoice_number,
        "invoice_date": invoice.invoice_date.isoformat() if invoice.invoice_date else None,
        "po_number": invoice.po_number,
        "credit": result.is_credit,
        "currency": invoice.currency or "USD",
        "subtotal": str(result.subtotal),
        "charges": str(result.charges),
        "tax": str(result.tax),
        "total": str(result.total if result.total is not None else result.computed_total),
        "lines": [
            {
                "line": ln.invoice_line,
                "po_line": ln.po_line,
                "quantity": None if ln.quantity is None else str(ln.quantity),
                "uom": ln.base_unit,
                "unit_price": None if ln.price is None else str(ln.price),
            }
            for ln in result.lines
        ],
        "match": "three_way",
        "correlation_id": correlation_id,
    }


def _their_units(partner: Partner, convert: Converter) -> Converter:
    """The match sees the partner's unit codes on invoice lines: ours first, then convert."""

    def inner(item: str, from_unit: str, to_unit: str) -> Decimal:
        try:
            ours = partner.our_unit(from_unit)
        except Exception:
            ours = from_unit
        return convert(item, ours, to_unit)

    return inner


# A held invoice keeps its transaction set (segments and separators) to be read again when a
# receipt arrives.


def _set_to_json(ts: TransactionSet) -> str:
    seps = ts.separators
    return json.dumps(
        {
            "id": ts.id,
            "control": ts.control_number,
            "separators": [seps.element, seps.component, seps.segment, seps.repetition],
            "segments": [list(seg) for seg in ts.segments],
        }
    )


def _set_from_json(text: str) -> TransactionSet:
    doc = json.loads(text)
    segments = tuple(list(seg) for seg in doc["segments"])
    return TransactionSet(
        doc["id"], doc["control"], segments, (0,) * len(segments), Separators(*doc["separators"])
    )


__all__ = [
    "ProcurementRoutes",
    "ap_invoice",
    "book_x12",
    "flag_overdue_acks",
    "order_from_store",
]
