"""X12 transforms: a released ERP purchase order → an 850 for its vendor, and an inbound X12
file (855, 856, 810, 997/999, TA1) → acknowledgements and documents for the procurement book.

Both only read and check; what they produce is booked by the channel's ``procurement:``
section in the message's own commit (:mod:`engine.domains.procurement.book`): control numbers,
the 850 and the answers, PO statuses, receipts, the three-way match.
"""

from __future__ import annotations

import hashlib
from typing import Any

from engine.domains.procurement.po850 import segments_850
from engine.domains.procurement.records import (
    ErpReceipt,
    ErpReceiptLine,
    ErpReturn,
    InboundInterchange,
    PoLine,
    PoRelease,
    ReceivedAck,
)
from engine.errors import MappingMiss, TransformError, X12Error
from engine.registry import transform
from engine.spec import Field, Spec, TableName
from engine.transforming import TransformContext
from engine.uom import graph_of
from engine.x12.documents import read_invoice, read_po_ack, read_ship_notice
from engine.x12.scan import scan
from engine.x12.segments import element
from engine.x12.validate import validate
from transforms._master import decimal_field

PARTNERS = "trading_partners"
CODELISTS = "x12_codelists"

PO_SPEC = Spec(
    "erp_po_to_850",
    [
        Field("items", TableName(), "items", "Item master (stocking unit of each item)."),
        Field("locations", TableName(), "locations", "Locations (ship-to GLN → location)."),
        Field("uom_conversions", TableName(), "uom_conversions", "Unit conversions."),
    ],
    description=(
        "A purchase order released by the ERP (JSON: po_number, vendor, ship_to, lines, "
        "optional bill_only; see engine/domains/procurement/po850.py) becomes an X12 850 for "
        "the trading partner serving its vendor (`mappings/trading_partners.yaml`): units "
        "through the partner's map, ship-to by GLN, bill-only case data as the partner wants "
        "it. Every field is checked here, so a PO that cannot be written is held naming the "
        "field; the procurement book allocates the control numbers and sends it once per PO number."
    ),
    example="transformer:\n  - transform: erp_po_to_850\nprocurement:\n  partner_out: vendors",
)

INBOUND_SPEC = Spec(
    "x12_inbound",
    [],
    description=(
        "Validates an X12 file with pyx12 against Wharf's maps (engine/x12/maps, with the "
        "complete code lists an installation drops in mappings/x12/codelists/: "
        "docs/x12-code-lists.md), finds the "
        "trading partner by ISA05/ISA06, and books the interchange: its TA1 and 997/999 (per "
        "partner: 997 or 999, mirroring the inbound envelope and GS08), and the documents of "
        "the accepted sets: 855 (PO line statuses), 856 (receipt lines), 810 (three-way "
        "match), and 997/999/TA1 answering our own interchanges. A message that came with a "
        "credential (an SFTP account, a bearer token, a client certificate: its origin) is "
        "answered to the partner bound to it, and refused unless it carries that partner's "
        "ISA and GS ids; bytes whose envelope cannot be read are refused to that partner in "
        "plain words. Without a credential, a sender that is no trading partner holds the "
        "message with a MISSING_MAPPING work item, as does a credential bound to no partner."
    ),
    example="codec:\n  x12: {}\ntransformer:\n  - transform: x12_inbound",
)


def _location(ctx: TransformContext, ship_to: dict[str, Any]) -> str:
    if ship_to.get("location_id"):
        return str(ship_to["location_id"])
    gln = ship_to.get("gln")
    table = ctx.mappings.table(ctx.options.locations)
    for row in table.rows.values():
        if gln and row.get("gln") == gln:
            return str(row["location_id"])
    raise MappingMiss(ctx.options.locations, f"gln {gln}")


@transform("erp_po_to_850", PO_SPEC)
def po_to_850(po: Any, ctx: TransformContext) -> dict[str, Any]:
    if not isinstance(po, dict):
        raise TransformError(f"expected the ERP's purchase order as JSON (got {type(po).__name__})")
    partners = ctx.resource(PARTNERS)
    vendor = str(po.get("vendor") or "")
    partner = partners.by_vendor(vendor) if partners is not None else None
    if partner is None:
        raise MappingMiss(PARTNERS, f"vendor {vendor}")
    segments = tuple(tuple(s) for s in segments_850(po, partner))  # checks every field
    graph = graph_of(ctx.mappings.table(ctx.options.uom_conversions))
    lines = []
    for i, line in enumerate(po.get("lines") or []):
        item = ctx.lookup(ctx.options.items, line["item_id"])
        qty = decimal_field(str(line.get("qty")), f"lines[{i}].qty")
        base_uom = item["stock_uom"]
        base = (
            qty
            if line["uom"] == base_uom
            else graph.convert(qty, line["uom"], base_uom, item["item_id"], vendor)
        )
        lines.append(
            PoLine(
                line=str(line["line"]),
                item_id=item["item_id"],
                quantity=qty,
                uom=line["uom"],
                unit_price=decimal_field(str(line.get("unit_price")), f"lines[{i}].unit_price"),
                base_quantity=base,
                base_uom=base_uom,
                vendor_item=str(line.get("vendor_catalog") or ""),
                gtin=str(line.get("gtin") or ""),
                bill_only=bool(po.get("bill_only")),
            )
        )
    ship_to = po.get("ship_to") or {}
    ctx.book(
        PoRelease(
            partner=partner.id,
            po_number=str(po["po_number"]),
            vendor=vendor,
            location_id=_location(ctx, ship_to),
            currency=str(po.get("currency") or "USD"),
            lines=tuple(lines),
            segments=segments,
        )
    )
    ctx.key("po_number", po["po_number"])
    return {"po_number": po["po_number"], "partner": partner.id, "lines": len(lines)}


def _received_acks(ic: Any) -> list[ReceivedAck]:
    """The partner's 997/999 and TA1 about our interchanges, found in this interchange."""
    out = [
        ReceivedAck("TA1", element(ta1, 1), element(ta1, 4), (element(ta1, 5),)) for ta1 in ic.ta1s
    ]
    for _group, ts in ic.sets():
        if ts.id not in ("997", "999"):
            continue
        acked, code, details = "", "", []
        for seg in ts.segments:
            tag = seg[0]
            if tag == "AK1":
                acked = element(seg, 2)
            elif tag == "AK9":
                code = element(seg, 1)
                details += [c for c in seg[5:] if c]
            elif tag in ("AK3", "IK3", "AK4", "IK4", "AK5", "IK5"):
                details.append("*".join(seg))
        if acked and code:
            out.append(ReceivedAck(ts.id, acked, code, tuple(details)))
    return out


_READERS = {"855": read_po_ack, "856": read_ship_notice, "810": read_invoice}


def _readable(res: Any) -> bool:
    """Whether the envelope can be answered with a TA1: an ISA13 and a sender were read."""
    return len(res.control_number) == 9 and res.control_number.isdigit() and bool(res.sender[1])


@transform("x12_inbound", INBOUND_SPEC)
def x12_inbound(raw: Any, ctx: TransformContext) -> dict[str, Any]:
    if not isinstance(raw, bytes | str):
        raise TransformError(f"expected X12 bytes (codec x12) (got {type(raw).__name__})")
    partners = ctx.resource(PARTNERS)
    # the partner the credential it came with speaks for: it gets the answers, and the
    # interchange must carry its ids (the procurement book refuses it otherwise)
    bound = None
    if ctx.origin:
        bound = partners.by_origin(ctx.origin) if partners is not None else None
        if bound is None:
            raise MappingMiss(PARTNERS, f"origin {ctx.origin}")
    digest = hashlib.sha256(raw if isinstance(raw, bytes) else raw.encode()).hexdigest()
    scanned = scan(raw)  # decoded and tokenized once, for pyx12 and for the readers
    # complete code lists the installation dropped in (mappings/x12/codelists/), if any
    codelists = ctx.resource(CODELISTS)
    checked = validate(scanned, map_path=codelists.map_path() if codelists else None)
    try:
        parsed = {(ic.sender_id.strip(), ic.control_number): ic for ic in scanned.interchanges}
        problem = ""
    except X12Error as exc:  # an envelope pyx12 let through with a TA1 E: acknowledge only
        parsed, problem = {}, f"envelope: {exc.message}"
    summary: list[dict[str, Any]] = []
    for res in checked.interchanges:
        claimed = partners.by_isa(*res.sender) if partners is not None else None
        partner = bound or claimed
        if partner is None and not _readable(res):
            issue = next((i.message for i in res.issues), "") or problem
            raise TransformError(
                f"not a readable X12 interchange ({issue or 'no ISA'}), and it came with no "
                "credential that names its trading partner: nobody to answer"
            )
        if partner is None:
            raise MappingMiss(PARTNERS, f"ISA {res.sender[0]}/{res.sender[1]}")
        ic = parsed.get((res.sender[1], res.control_number))
        refused = unreadable = ""
        if not _readable(res):
            issue = next((i.message for i in res.issues), "") or problem
            unreadable = issue or "no X12 interchange could be read"
            refused = f"the envelope could not be read: {unreadable}"
        elif res.ta1_ack == "R":
            refused = f"interchange rejected (TA1 {res.ta1_code})"
        elif ic is None:
            refused = problem or "interchange could not be read"
        elif claimed is not partner:
            refused = "the sender is not the partner bound to the credential it came with"
        ok_sets = {
            (g.control_number, s.control_number)
            for g in res.groups
            for s in g.sets
            if s.ok and g.ack_code in ("A", "E", "P")
        }
        documents: list[tuple[Any, Any, str]] = []
        sets: list[tuple[str, str, str]] = []
        if not refused and ic is not None:
            for group, ts in ic.sets():
                sets.append((group.control_number, ts.id, ts.control_number))
                reader = _READERS.get(ts.id)
                if reader is None or (group.control_number, ts.control_number) not in ok_sets:
                    continue
                try:
                    doc = reader(ts)
                except X12Error as exc:
                    # pyx12 accepted it but the content cannot be used: held for a person.
                    raise TransformError(
                        f"{ts.id} {ts.control_number}: {exc.message} at {exc.location}"
                    ) from exc
                documents.append((doc, ts, group.control_number))
                for name in ("po_number", "invoice_number", "shipment_id"):
                    value = getattr(doc, name, None)
                    if value:
                        ctx.key(name, value)
        ctx.book(
            InboundInterchange(
                partner=partner.id,
                sender=res.sender,
                receiver=res.receiver,
                isa13=res.control_number,
                sets=tuple(sets),
                result=res,
                documents=tuple(documents),
                refused=refused,
                received_acks=tuple(_received_acks(ic)) if ic is not None and not refused else (),
                origin=ctx.origin,
                claimed=claimed.id if claimed is not None else "",
                unreadable=unreadable,
                sha256=digest,
            )
        )
        ctx.key("isa13", f"{res.sender[1]}:{res.control_number}")
        summary.append(
            {
                "partner": partner.id,
                "isa13": res.control_number,
                "ta1": res.ta1_code,
                "groups": [
                    {"gs06": g.control_number, "ack": g.ack_code, "sets": len(g.sets)}
                    for g in res.groups
                ],
                "applied": [type(d).__name__ for d, _, _ in documents],
                "refused": refused,
            }
        )
    return {"interchanges": summary}


RECEIPT_SPEC = Spec(
    "erp_receipt",
    [],
    description=(
        "A goods receipt the ERP posts (JSON: receipt_id, po_number, lines of po_line, qty, "
        "uom in our units, optional lot, serial, expiry) for a PO Wharf sent: receipt lines "
        "(once per receipt line), on-hand at the PO's ship-to location, and the invoices of "
        "that PO held for want of a receipt matched again. For partners whose 856 is not the "
        "receipt (`asn_is_receipt: false`). A document with `return_id` instead of "
        "`receipt_id` is a return to the vendor (RTV): the lines come off what was received "
        "and off on-hand, and the PO's credit memos held for want of a return are matched "
        "again."
    ),
    example="transformer:\n  - transform: erp_receipt\nprocurement:\n  ap: erp_ap",
)


@transform("erp_receipt", RECEIPT_SPEC)
def erp_receipt(doc: Any, ctx: TransformContext) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise TransformError(f"expected the ERP's goods receipt as JSON (got {type(doc).__name__})")
    kind = "return_id" if "return_id" in doc else "receipt_id"
    for key in (kind, "po_number", "lines"):
        if not doc.get(key):
            raise TransformError(f"{key}: required (got {doc.get(key)!r})")
    lines = []
    for i, line in enumerate(doc["lines"]):
        if not isinstance(line, dict) or not line.get("po_line") or not line.get("uom"):
            raise TransformError(f"lines[{i}]: expected po_line, qty and uom")
        lines.append(
            ErpReceiptLine(
                po_line=str(line["po_line"]),
                quantity=decimal_field(str(line.get("qty")), f"lines[{i}].qty"),
                uom=str(line["uom"]),
                lot=line.get("lot"),
                serial=line.get("serial"),
                expiry=line.get("expiry"),
            )
        )
    record = ErpReturn if kind == "return_id" else ErpReceipt
    ctx.book(record(str(doc[kind]), str(doc["po_number"]), tuple(lines)))
    ctx.key("po_number", doc["po_number"])
    return {kind: doc[kind], "lines": len(lines)}
