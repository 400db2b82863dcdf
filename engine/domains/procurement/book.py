"""The procurement book: X12 records applied in the message's own commit.

The business rules only, over a
:class:`~engine.domains.procurement.repository.ProcurementRepository` (no SQL here, like the
supply ledger's :mod:`engine.domains.ledger.rules`). The runtime hands the book the SQLite
repository of the message's transaction, so a purchase order, its control numbers, the 850 in
the outbox, a receipt and the invoices it releases, an invoice and its match all commit together
with the message's result, or not at all. It returns the deliveries those effects need:

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

:func:`flag_overdue_acks` (procurement's periodic job) alerts once per interchange whose
997/999 is late and closes the alert when the answer comes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from engine.domains.procurement.ap import ap_invoice, ap_posting_key, line_sort
from engine.domains.procurement.identity import identity_problem, refusal_ta1, refusal_text
from engine.domains.procurement.match import (
    Converter,
    Reason,
    Receipt,
    invoice_key,
    match_invoice,
)
from engine.domains.procurement.numbers import ControlNumbers, ack_status_for
from engine.domains.procurement.partners import Partner, TradingPartners
from engine.domains.procurement.records import (
    ErpReceipt,
    ErpReturn,
    InboundInterchange,
    PoRelease,
    ReceivedAck,
)
from engine.domains.procurement.repository import (
    InvoiceLineRow,
    NewInvoice,
    NewPoChange,
    NewReceipt,
    ProcurementRepository,
    ack_overdue_subject,
)
from engine.errors import MappingMiss, UnmappedUnit
from engine.model import Outbound, effect_key, to_json_bytes
from engine.x12.documents import Invoice, PurchaseOrderAck, ShipNotice, read_invoice
from engine.x12.segments import Separators, TransactionSet
from engine.x12.writer import FunctionalGroup, write_interchange
from engine.x12.writer import TransactionSet as OutSet

X12 = "application/edi-x12"
DAY = 86400.0

#: BEG01/BAK01/BSN01/BIG08 (element 353) values Wharf applies; an 855/856/810 with another
#: purpose is acknowledged and held as an X12_NOT_APPLIED work item (docs/x12-code-lists.md).
APPLIED_PURPOSES = frozenset(("", "00", "06"))
#: What the purposes partners send mean, for the work item's text.
PURPOSES = {
    "01": "cancellation",
    "03": "delete",
    "04": "change",
    "05": "replace",
    "07": "duplicate",
    "15": "re-submission",
    "18": "reissue",
    "22": "information copy",
}


@dataclass(frozen=True)
class ProcurementRoutes:
    """Which destinations of the channel take each effect (None: not sent)."""

    partner_out: str | None = None  # X12 files to the partner (850, 997/999, TA1)
    po_status: str | None = None  # ERP: PO transmissions and 855 line statuses
    receipts: str | None = None  # ERP goods receipts
    ap: str | None = None  # ERP accounts payable
    duplicate_window: float = 30 * DAY
    ap_price_decimals: int = 4  # unit prices to AP are rounded to this many decimals


def book_x12(
    repo: ProcurementRepository,
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
    book = _Book(repo, channel, message_id, correlation_id, routes, partners, converter, now)
    for record in records:
        if isinstance(record, PoRelease):
            book.release(record)
        elif isinstance(record, InboundInterchange):
            book.inbound(record)
        elif isinstance(record, ErpReceipt):
            book.erp_receipt(record)
        elif isinstance(record, ErpReturn):
            book.erp_return(record)
        else:
            raise TypeError(f"procurement book: expected an X12 record (got {type(record)!r})")
    return book.out


class _Book:
    def __init__(
        self,
        repo: ProcurementRepository,
        channel: str,
        message_id: str,
        correlation_id: str,
        routes: ProcurementRoutes,
        partners: TradingPartners,
        converter: Callable[[Partner], Converter],
        now: float,
    ) -> None:
        self.repo = repo
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
        """One open work item per kind and subject, whichever message opened it."""
        self.repo.open_work_item(
            kind,
            subject,
            detail,
            self.message_id,
            self.correlation_id,
            self.now,
            once="while_open",
        )

    def _send_x12(
        self,
        partner: Partner,
        groups: list[tuple[str, str, tuple[tuple[Any, ...], ...]]],
        document: str,
        business_key: str,
        ack_within: float | None,
    ) -> ControlNumbers:
        """Allocate numbers (committed with this transaction, a full sync: never reused), write one
        interchange holding ``groups`` (functional id, set id, body) and send it."""
        numbers = self.repo.allocate_envelope(partner.id, sets=len(groups))
        gs06 = numbers.gs06
        header = partner.outbound_header()
        fgroups = []
        for i, (fid, set_id, body) in enumerate(groups):
            # One set per group (acks mirror each inbound group); extra groups take new GS06s.
            if i:
                (gs06,) = self.repo.allocate(partner.id, "gs06")
            fgroups.append(FunctionalGroup(fid, gs06, (OutSet(set_id, numbers.st02[i], body),)))
        data = write_interchange(
            header, numbers.isa13, fgroups, now=datetime.fromtimestamp(self.now)
        )
        self.repo.record_outbound(
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
        if self.repo.po_sent(po.po_number):
            return  # sent before: never a second 850 (nor new control numbers) for it
        partner = self.partners[po.partner]
        self.repo.add_po(po, self.message_id, self.correlation_id, self.now, self.channel)
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
        if partner is None:
            return
        if ic.unreadable:
            self._refuse_unreadable(partner, ic)
            return
        if ic.origin is not None:
            problem = identity_problem(partner, ic)
            res = ic.result
            if problem is not None and not ic.claimed and res is not None and res.ta1_ack == "R":
                # a broken envelope whose sender cannot be told: answered as the X12 rules
                # say (TA1 R with the envelope's own code), to the partner it came from
                (isa13,) = self.repo.allocate(partner.id, "isa13")
                when = datetime.fromtimestamp(self.now)
                answer = refusal_ta1(partner, ic, res.ta1_code, isa13, when)
                self._emit_file(partner, "TA1", isa13, answer)
                return
            if problem is not None:
                self._refuse_sender(partner, ic, *problem)
                return
        self._acknowledge(partner, ic)
        if ic.refused:
            return
        sender = (ic.sender[0], ic.sender[1].strip())
        window = self.routes.duplicate_window
        if self.repo.seen_interchange(sender, ic.isa13, window, self.now):
            return  # the same interchange again: acknowledged again, applied once
        # A group sent before under another ISA13 (a re-enveloped resend) is not applied again.
        seen_groups = self.repo.seen_groups(sender, self.now - window)
        receiver = (ic.receiver[0], ic.receiver[1].strip())
        for gs06, _st01, st02 in ic.sets or ((None, "", None),):
            self.repo.record_inbound(
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
            if getattr(doc, "purpose", "") not in APPLIED_PURPOSES:
                self._not_applied(partner, doc, ts)
                continue
            if isinstance(doc, PurchaseOrderAck):
                self._po_ack(partner, doc)
            elif isinstance(doc, ShipNotice):
                self._ship_notice(partner, doc)
            elif isinstance(doc, Invoice):
                self._match(partner, doc, None, _set_to_json(ts))

    def _not_applied(self, partner: Partner, doc: Any, ts: Any) -> None:
        """A document whose purpose (353) is not an original or a confirmation: accepted by
        the 997/999 (it is valid X12) and held for a person, who undoes or redoes by hand what
        it asks for (docs/x12-code-lists.md)."""
        key = getattr(doc, "po_number", "") if isinstance(doc, PurchaseOrderAck) else ""
        key = key or getattr(doc, "shipment_id", "") or getattr(doc, "invoice_number", "")
        meaning = PURPOSES.get(doc.purpose, "a purpose Wharf does not apply")
        self._work_item(
            "X12_NOT_APPLIED",
            f"{partner.id}:{ts.id}:{key}:{ts.control_number}",
            f"{ts.id} {key} (ST02 {ts.control_number}) has purpose {doc.purpose} ({meaning}); "
            "it was acknowledged but not applied: Wharf applies originals (00) and "
            "confirmations (06) only",
        )

    # ------------------------------------------------------------------ who may speak

    def _refuse_sender(self, partner: Partner, ic: InboundInterchange, code: str, why: str) -> None:
        """Nothing of it is booked: a TA1 R to the partner the credential speaks for, a
        SENDER_REFUSED work item and an audit record."""
        if ic.result is not None:
            (isa13,) = self.repo.allocate(partner.id, "isa13")
            when = datetime.fromtimestamp(self.now)
            self._emit_file(partner, "TA1", isa13, refusal_ta1(partner, ic, code, isa13, when))
        self._work_item(
            "SENDER_REFUSED",
            f"{partner.id}:{ic.origin}:{ic.isa13}",
            f"interchange {ic.isa13} refused (TA1 R {code}): {why}; nothing of it was booked",
        )
        self.repo.audit(
            str(ic.origin),
            "x12.sender_refused",
            self.message_id,
            {
                "partner": partner.id,
                "claimed": ic.claimed or None,
                "isa_sender": f"{ic.sender[0]}/{ic.sender[1].strip()}",
                "isa13": ic.isa13,
                "ta105": code,
                "reason": why,
                "sha256": ic.sha256,
            },
            self.now,
        )

    def _refuse_unreadable(self, partner: Partner, ic: InboundInterchange) -> None:
        """No envelope to answer with a TA1: a plain-words refusal in the partner's outbound
        (the way X12 files reach it) and an X12_REFUSED work item; nothing is booked."""
        self._emit(
            self.routes.partner_out,
            refusal_text(partner, ic, datetime.fromtimestamp(self.now)),
            "text/plain; charset=utf-8",
            f"{partner.id}:refused:{self.message_id}",
            "x12:refusal",
            partner=partner.id,
            filename=f"REFUSED_{partner.id}_{self.message_id}.txt",
        )
        self._work_item(
            "X12_REFUSED",
            f"{partner.id}:{self.message_id}",
            f"a file from {partner.id} ({ic.origin or 'no credential'}) is not a readable X12 "
            f"interchange: {ic.unreadable}; refused to the partner in plain words",
        )

    def _acknowledge(self, partner: Partner, ic: InboundInterchange) -> None:
        """TA1 (asked for by ISA14, wanted by the partner, or a broken envelope) and 997/999,
        in interchanges that mirror the inbound envelope, with our own control numbers."""
        from engine.x12 import ack as x12ack

        res = ic.result
        if res is None:
            return
        when = datetime.fromtimestamp(self.now)
        if res.ta1_sent or partner.ta1:
            (isa13,) = self.repo.allocate(partner.id, "isa13")
            self._emit_file(partner, "TA1", isa13, x12ack.ta1_interchange(res, isa13, when))
        allocated: list[int] = []

        def next_control() -> int:
            kind = "gs06" if allocated else "isa13"
            (n,) = self.repo.allocate(partner.id, kind)
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

    def _unmapped_units(
        self, partner: Partner, document: str, lines: Sequence[tuple[str, str]]
    ) -> None:
        """One MISSING_MAPPING work item per unit of ``lines`` ((line label, X12 unit code))
        that the partner's uom map lacks: which units a partner may send is its map's business
        (the X12 maps accept any well-formed unit code), never our own code taken on trust."""
        for label, unit in lines:
            if unit and unit not in partner.uom_in:
                miss = UnmappedUnit(partner.id, unit, "in", sorted(partner.uom_in))
                self._work_item(
                    "MISSING_MAPPING",
                    f"uom:{partner.id}:{unit}",
                    f"{document} line {label}: {miss}",
                )

    def _received_ack(self, partner: Partner, ack: ReceivedAck) -> None:
        try:
            number = int(ack.control_number)
        except ValueError:
            return
        if ack.kind == "TA1":
            rec = self.repo.record_ta1(partner.id, number, ack.code, *ack.details[:1])
            rejected = ack.code == "R"
        else:
            status = ack_status_for(ack.code)
            rec = self.repo.record_ack(partner.id, number, status, ack.details)
            rejected = status != "accepted"
        if rec is not None and rejected:
            self._work_item(
                "ACK_REJECTED",
                f"{partner.id}:{rec.document}:{rec.business_key}",
                f"{ack.kind} {ack.code} for our {rec.document} (ISA13 {rec.isa13:09d}, "
                f"GS06 {rec.gs06}): {'; '.join(ack.details) or 'no detail'}",
            )

    def _po_ack(self, partner: Partner, ack: PurchaseOrderAck) -> None:
        """Line statuses to the ERP with what the vendor acknowledged (quantity, unit, price,
        ship date) beside what was ordered; a line it changed is a proposal (``wharf po
        changes``) that a buyer accepts (it becomes the PO's basis for the match) or rejects."""
        self._unmapped_units(
            partner,
            f"855 for PO {ack.po_number}",
            [
                (line.line_number, unit)
                for line in ack.lines
                for unit in (line.unit, *(a.unit for a in line.acks))
            ],
        )
        order = self.repo.order(ack.po_number)
        ordered = {_line_key(ln.line_number): ln for ln in order.lines} if order else {}
        lines = []
        changed = []
        for line in ack.lines:
            kind = line.kind
            status = {
                "accepted": "accepted",
                "changed": "changed",
                "backordered": "backordered",
                "held": "held",
                "rejected": "rejected",
            }.get(kind, "acknowledged")
            qty, unit = _acknowledged(line)
            ours = _our_unit(partner, unit) if unit else None
            basis = ordered.get(_line_key(line.line_number))
            detail: dict[str, Any] = {
                "ack_code": line.status,
                "quantity": None if qty is None else str(qty),
                "unit": ours,
                "unit_price": None if line.unit_price is None else str(line.unit_price),
                "ship_date": line.ship_date.isoformat() if line.ship_date else None,
            }
            if basis is not None:
                detail.update(
                    ordered_quantity=str(basis.quantity),
                    ordered_unit=basis.unit,
                    ordered_price=None if basis.unit_price is None else str(basis.unit_price),
                )
            change_id = None
            if status == "changed" and basis is not None:
                change_id = self._propose(partner, ack, line, basis, qty, ours, detail)
                if change_id is not None:
                    detail["change_id"] = change_id
            self.repo.set_line_ack(ack.po_number, line.line_number, status, detail)
            lines.append({"line": line.line_number, "status": status, **detail})
            if status in ("changed", "backordered", "held", "rejected"):
                what = f"line {line.line_number} {status} ({line.status})"
                if change_id is not None:
                    what += (
                        f": proposes {detail['quantity'] or basis.quantity} "
                        f"{detail['unit'] or basis.unit} at "
                        f"{detail['unit_price'] or basis.unit_price} (change {change_id}, "
                        "wharf po changes)"
                    )
                changed.append(what)
        po_status = (
            "rejected" if ack.ack_type == "RJ" else ("changed" if changed else "acknowledged")
        )
        self.repo.set_po_status(ack.po_number, po_status, self.now)
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

    def _propose(
        self,
        partner: Partner,
        ack: PurchaseOrderAck,
        line: Any,
        basis: Any,
        qty: Decimal | None,
        unit: str | None,
        detail: dict[str, Any],
    ) -> int | None:
        """A proposal when the vendor acknowledged another quantity, unit, price or date than
        the PO's basis; None when nothing differs (or the same proposal is open already)."""
        price = line.unit_price
        differs = (
            (qty is not None and (qty != basis.quantity or (unit or basis.unit) != basis.unit))
            or (price is not None and basis.unit_price is not None and price != basis.unit_price)
            or line.status == "DR"
        )
        if not differs:
            return None
        return self.repo.add_po_change(
            NewPoChange(
                po_number=ack.po_number,
                line=basis.line_number,
                partner=partner.id,
                ack_code=line.status,
                ordered_quantity=basis.quantity,
                ordered_uom=basis.unit,
                ordered_price=basis.unit_price if basis.unit_price is not None else Decimal(0),
                quantity=qty,
                uom=unit,
                unit_price=price,
                ship_date=detail["ship_date"],
                message_id=self.message_id,
                correlation_id=self.correlation_id,
                created_at=self.now,
                channel=self.channel,
            )
        )

    # ------------------------------------------------------------------ 856 receipts

    def _ship_notice(self, partner: Partner, asn: ShipNotice) -> None:
        convert = self.converter(partner)
        posted: list[dict[str, Any]] = []
        received: list[str] = []  # the receipt lines' business keys
        touched: set[str] = set()
        for n, line in enumerate(asn.lines, 1):
            if not line.po_number or not line.po_line or line.quantity is None:
                self._work_item(
                    "ASN_UNMATCHED",
                    f"{partner.id}:{asn.shipment_id}:{n}",
                    f"856 {asn.shipment_id} line {n} names no PO line (PRF/LIN)",
                )
                continue
            row = self.repo.po_line(line.po_number, line.po_line)
            if row is None:
                self._work_item(
                    "ASN_UNMATCHED",
                    f"{partner.id}:{asn.shipment_id}:{n}",
                    f"856 {asn.shipment_id}: no PO line {line.po_number}/{line.po_line}",
                )
                continue
            item, base_uom, location = row.item_id, row.base_uom, row.location_id
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
            taken = self.repo.add_receipt(
                NewReceipt(
                    business_key=key,
                    po_number=line.po_number,
                    po_line=line.po_line,
                    item_id=item,
                    quantity=line.quantity,
                    uom=unit,
                    base_quantity=base,
                    lot=line.lot,
                    serial=line.serial,
                    expiry=line.expiry.isoformat() if line.expiry else None,
                    sscc=line.sscc,
                    source="asn" if partner.asn_is_receipt else "asn_expected",
                    message_id=self.message_id,
                    created_at=self.now,
                    channel=self.channel,
                )
            )
            if not taken:
                continue  # this ASN line was taken before
            received.append(key)
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
                self.repo.add_to_onhand(location, item, base, base_uom, self.now)
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
        gr = f"856:{partner.id}:{asn.shipment_id}:{self.message_id}"
        self._emit(self.routes.receipts, to_json_bytes(receipt), "application/json", gr, "receipt")
        if partner.asn_is_receipt and self.routes.receipts:
            # what the ERP acknowledges of each line (inventory-to-finance reconciliation)
            idem = effect_key(self.channel, self.routes.receipts, gr, "receipt")
            for business_key in received:
                self.repo.add_receipt_posting(
                    business_key, idem, self.routes.receipts, self.message_id, self.now
                )
        if partner.asn_is_receipt:
            for po_number in sorted(touched):
                self._retry_held(partner, po_number)

    def erp_receipt(self, receipt: ErpReceipt) -> None:
        """A receipt the ERP posted: receipt lines (once per receipt line), on-hand, and the
        invoices of that PO waiting for a receipt are matched again."""
        po = self.repo.purchase_order(receipt.po_number)
        if po is None:
            self._work_item(
                "RECEIPT_UNMATCHED",
                f"erp:{receipt.receipt_id}",
                f"ERP receipt {receipt.receipt_id} names PO {receipt.po_number}, which Wharf "
                "never sent",
            )
            return
        partner = self.partners[po.partner]
        convert = self.converter(partner)
        for n, line in enumerate(receipt.lines, 1):
            row = self.repo.po_line(receipt.po_number, line.po_line)
            if row is None:
                self._work_item(
                    "RECEIPT_UNMATCHED",
                    f"erp:{receipt.receipt_id}:{n}",
                    f"ERP receipt {receipt.receipt_id}: no PO line "
                    f"{receipt.po_number}/{line.po_line}",
                )
                continue
            item, base_uom = row.item_id, row.base_uom
            base = line.quantity * convert(item, line.uom, base_uom)
            taken = self.repo.add_receipt(
                NewReceipt(
                    business_key=f"erp|{receipt.receipt_id}|{n}",
                    po_number=receipt.po_number,
                    po_line=line.po_line,
                    item_id=item,
                    quantity=line.quantity,
                    uom=line.uom,
                    base_quantity=base,
                    lot=line.lot,
                    serial=line.serial,
                    expiry=line.expiry,
                    sscc=None,
                    source="erp",
                    message_id=self.message_id,
                    created_at=self.now,
                    channel=self.channel,
                )
            )
            if taken:
                self.repo.add_to_onhand(po.location_id, item, base, base_uom, self.now)
        self._retry_held(partner, receipt.po_number)

    def erp_return(self, rtv: ErpReturn) -> None:
        """Goods the ERP returned to the vendor: negative receipt lines (once per return line),
        off on-hand, and the PO's credit memos held for want of a return matched again."""
        po = self.repo.purchase_order(rtv.po_number)
        if po is None:
            self._work_item(
                "RECEIPT_UNMATCHED",
                f"erp-return:{rtv.return_id}",
                f"ERP return {rtv.return_id} names PO {rtv.po_number}, which Wharf never sent",
            )
            return
        partner = self.partners[po.partner]
        convert = self.converter(partner)
        for n, line in enumerate(rtv.lines, 1):
            row = self.repo.po_line(rtv.po_number, line.po_line)
            if row is None:
                self._work_item(
                    "RECEIPT_UNMATCHED",
                    f"erp-return:{rtv.return_id}:{n}",
                    f"ERP return {rtv.return_id}: no PO line {rtv.po_number}/{line.po_line}",
                )
                continue
            qty = abs(line.quantity)
            base = qty * convert(row.item_id, line.uom, row.base_uom)
            taken = self.repo.add_receipt(
                NewReceipt(
                    business_key=f"erp-return|{rtv.return_id}|{n}",
                    po_number=rtv.po_number,
                    po_line=line.po_line,
                    item_id=row.item_id,
                    quantity=-qty,
                    uom=line.uom,
                    base_quantity=-base,
                    lot=line.lot,
                    serial=line.serial,
                    expiry=line.expiry,
                    sscc=None,
                    source="erp_return",
                    message_id=self.message_id,
                    created_at=self.now,
                    channel=self.channel,
                )
            )
            if taken:
                self.repo.add_to_onhand(po.location_id, row.item_id, -base, row.base_uom, self.now)
        self._retry_held(partner, rtv.po_number)

    def _retry_held(self, partner: Partner, po_number: str) -> None:
        for invoice_id, body in self.repo.held_for_receipt(po_number, partner.id):
            self._match(partner, read_invoice(_set_from_json(body)), invoice_id, body)

    # ------------------------------------------------------------------ 810 match

    def _match(self, partner: Partner, invoice: Invoice, invoice_id: int | None, body: str) -> None:
        """Match an 810 (new, or held and matched again): its payable lines post to AP (all
        of them, or under a line-level hold those without an issue), the others stay held
        with their reasons in one INVOICE_HELD work item per invoice number."""
        vendor_key, inv_key = invoice_key(partner.id, invoice.invoice_number)
        self._unmapped_units(
            partner,
            f"810 {invoice.invoice_number}",
            [(line.line_number, line.unit) for line in invoice.lines],
        )
        subject = f"{partner.id}:{invoice.invoice_number}"
        if invoice_id is None:
            duplicate_of = self.repo.invoice_on_file(vendor_key, inv_key)
            if duplicate_of is not None:
                self._duplicate(partner, invoice, body, vendor_key, inv_key, duplicate_of)
                return
        order = self.repo.order(invoice.po_number)
        base_units = {ln.line_number: ln.base_unit for ln in order.lines} if order else {}
        receipts = [
            Receipt(po_line, qty, base_units.get(po_line, "EA"), str(rid))
            for rid, po_line, qty in self.repo.receipts_for(invoice.po_number)
        ]
        result = match_invoice(
            invoice,
            order,
            receipts,
            convert=_their_units(partner, self.converter(partner)),
            prior_invoiced=self.repo.invoiced(invoice.po_number, excluding=invoice_id),
            prior_credited=self.repo.credited(invoice.po_number, excluding=invoice_id),
            tolerance=partner.tolerance,
            vendors=partner.vendors,
        )
        posted = self.repo.posted_lines(invoice_id) if invoice_id is not None else set()
        if result.matched:
            payable = result.lines
        elif partner.hold == "line":
            payable = result.payable_lines
        else:
            payable = ()
        now_posting = [ln for ln in payable if ln.invoice_line not in posted]
        done = posted | {ln.invoice_line for ln in now_posting}
        complete = bool(result.lines) and all(ln.invoice_line in done for ln in result.lines)
        status = "matched" if result.matched or (complete and not result.held_whole) else "held"
        # what still holds it: the invoice-level reasons and the lines not posted
        reasons = [
            {"reason": str(i.reason), "line": i.line, "message": i.message}
            for i in result.all_issues
            if status != "matched" and (i.line is None or i.line not in done)
        ]
        if invoice_id is None:
            invoice_id = self.repo.add_invoice(
                NewInvoice(
                    partner=partner.id,
                    vendor_key=vendor_key,
                    invoice_key=inv_key,
                    invoice_number=invoice.invoice_number,
                    po_number=invoice.po_number,
                    status=status,
                    reasons=reasons,
                    retry_on_receipt=result.retry_on_receipt,
                    total=invoice.total,
                    body=body,
                    message_id=self.message_id,
                    correlation_id=self.correlation_id,
                    created_at=self.now,
                    channel=self.channel,
                )
            )
        else:
            self.repo.rematch_invoice(
                invoice_id, status, reasons, result.retry_on_receipt, self.now
            )
        credit = result.is_credit
        self.repo.set_invoice_lines(
            invoice_id,
            [
                InvoiceLineRow(
                    ln.invoice_line,
                    ln.po_line,
                    ln.quantity or Decimal(0),
                    ln.invoice_line in done,
                    credit,
                )
                for ln in result.lines
            ],
        )
        if now_posting:
            whole = not posted and len(now_posting) == len(result.lines)
            doc = ap_invoice(
                partner,
                invoice,
                result,
                self.correlation_id,
                lines=now_posting,
                with_header=not posted,
                decimals=self.routes.ap_price_decimals,
            )
            self._emit(
                self.routes.ap,
                to_json_bytes(doc),
                "application/json",
                ap_posting_key(subject, None if whole else now_posting),
                "ap_invoice",
                invoice_number=invoice.invoice_number,
            )
        if status == "matched":
            self.repo.resolve_work_items("INVOICE_HELD", subject=subject, now=self.now)
            return
        detail = "; ".join(
            f"{r['reason']}" + (f" line {r['line']}" if r["line"] else "") + f": {r['message']}"
            for r in reasons
        )
        if done and not result.held_whole:
            detail += f" (posted to AP: line(s) {', '.join(sorted(done, key=line_sort))})"
        # Matched again for other reasons (a receipt came, not enough): the same work item says
        # what is wrong now.
        self.repo.refresh_work_items("INVOICE_HELD", subject=subject, detail=detail, now=self.now)
        self._work_item("INVOICE_HELD", subject, detail)

    def _duplicate(
        self,
        partner: Partner,
        invoice: Invoice,
        body: str,
        vendor_key: str,
        inv_key: str,
        duplicate_of: str,
    ) -> None:
        """A vendor + invoice number seen before: filed as a duplicate with that one reason,
        and one INVOICE_DUPLICATE work item per invoice number however often it is resent."""
        message = f"invoice {invoice.invoice_number} was already received ({duplicate_of})"
        self.repo.add_invoice(
            NewInvoice(
                partner=partner.id,
                vendor_key=vendor_key,
                invoice_key=inv_key,
                invoice_number=invoice.invoice_number,
                po_number=invoice.po_number,
                status="duplicate",
                reasons=[{"reason": str(Reason.DUPLICATE), "line": None, "message": message}],
                retry_on_receipt=False,
                total=invoice.total,
                body=body,
                message_id=self.message_id,
                correlation_id=self.correlation_id,
                created_at=self.now,
                channel=self.channel,
            )
        )
        # one per invoice number on file, however the resends write it (``inv 0009``, ``INV-9``)
        self._work_item(
            "INVOICE_DUPLICATE", f"{partner.id}:{duplicate_of}", f"DUPLICATE: {message}"
        )


def _line_key(text: str) -> str:
    text = (text or "").strip()
    return (text.lstrip("0") or "0") if text.isdigit() else text


def _acknowledged(line: Any) -> tuple[Decimal | None, str]:
    """The quantity and unit code the vendor acknowledged for an 855 line: ACK02/ACK03 of the
    ACK that says the line's state (a change: the new quantity), else the PO1 echo."""
    for ack in line.acks:
        if ack.kind == line.kind and ack.quantity is not None:
            return ack.quantity, ack.unit or line.unit
    return line.quantity, line.unit


def _our_unit(partner: Partner, code: str) -> str:
    try:
        return partner.our_unit(code)
    except Exception:
        return code


def rematch_po(
    repo: ProcurementRepository,
    po_number: str,
    partner: Partner,
    *,
    routes: ProcurementRoutes,
    partners: TradingPartners,
    converter: Callable[[Partner], Converter],
    channel: str,
    now: float,
    message_of: Callable[[int], tuple[str, str]],
) -> list[tuple[str, str, list[Outbound]]]:
    """Match the PO's held invoices again (its basis changed: a buyer accepted a change), each
    as its own message would (``message_of(invoice id)``: its message and correlation id):
    (message id, correlation id, the deliveries it needs) per invoice."""
    out = []
    for invoice_id, body in repo.held_invoices(po_number, partner.id):
        message_id, correlation_id = message_of(invoice_id)
        book = _Book(repo, channel, message_id, correlation_id, routes, partners, converter, now)
        book._match(partner, read_invoice(_set_from_json(body)), invoice_id, body)
        out.append((message_id, correlation_id, book.out))
    return out


def flag_overdue_acks(repo: ProcurementRepository, now: float | None = None) -> int:
    """One ``ACK_OVERDUE`` work item per interchange of ours whose 997/999 is late (once ever:
    a resolved alert does not come back), and the open ones whose answer came late are resolved;
    the number of new ones (the caller alerts on them)."""
    now = time.time() if now is None else now
    new = 0
    for rec in repo.overdue_acks(now):
        late = (now - (rec.ack_due_at or now)) / 60
        detail = (
            f"no 997/999 from {rec.partner} for our {rec.document} "
            f"({rec.business_key}, ISA13 {rec.isa13:09d}, GS06 {rec.gs06}), due "
            f"{late:.0f} min ago"
        )
        subject = ack_overdue_subject(rec.partner, rec.document, rec.isa13)
        if repo.open_work_item(
            "ACK_OVERDUE", subject, detail, rec.message_id, None, now, once="ever"
        ):
            new += 1
    # An ack that came late closes its alert.
    for subject in repo.answered_overdue_alerts():
        repo.resolve_work_items("ACK_OVERDUE", subject=subject, now=now)
    return new


def _their_units(partner: Partner, convert: Converter) -> Converter:
    """The match sees the partner's unit codes on invoice lines: ours through the partner's
    uom map, then convert. A unit the map lacks is an :class:`UnmappedUnit` (the line is held
    with a UOM reason and a MISSING_MAPPING work item says what to add)."""

    def inner(item: str, from_unit: str, to_unit: str) -> Decimal:
        return convert(item, partner.our_unit(from_unit), to_unit)

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
    "ap_posting_key",
    "book_x12",
    "flag_overdue_acks",
    "rematch_po",
]
