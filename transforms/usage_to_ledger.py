"""HL7 DFT^P03 (2.3 to 2.8.2) → one ConsumptionEvent per FT1, booked in the supply ledger.

Item from FT1-7.1 (charge code) through the item table; location from FT1-16.1 or PV1-3.1
through the location table; quantity FT1-10 in the billing unit, converted to the stocking unit
with the item's ``pack_qty``; encounter PV1-19.1; performing physician FT1-20.1 and ordering
physician FT1-21.1 (ids only); payer IN1-3.1 (insurance company id) or else PV1-20.1 (financial
class); procedure FT1-25 or PR1-3; service date FT1-4. A credit is FT1-6 = CD or a negative
quantity. Implant lot, serial and UDI come from a Z-segment (``ZUD``: ZUD-2 UDI, ZUD-4 lot,
ZUD-5 serial, ZUD-6 expiry) or the 2.8.2 PRT segment (PRT-10 UDI, PRT-16 expiry, PRT-17 lot,
PRT-18 serial) after the FT1.
"""

from __future__ import annotations

from typing import Any

from engine.codecs.hl7v2 import Hl7Message, Segment
from engine.domains.ledger.records import ConsumptionEvent
from engine.errors import MissingField, MissingLotSerial, TransformError
from engine.registry import transform
from engine.spec import Enum, Field, MapOf, Spec, Str
from engine.transforming import TransformContext
from engine.udi import parse_udi
from transforms._master import FIELDS, decimal_field, item_for_code, to_stock_unit

SPEC = Spec(
    "hl7_usage_to_ledger",
    [
        *FIELDS,
        Field(
            "implant_detail",
            Enum("auto", "zsegment", "prt", "obx", "none"),
            "auto",
            "Where lot/serial/UDI are: a Z-segment (see `zsegment`), the PRT segment (2.8.2), "
            "OBX segments (see `obx_codes`), or whichever is present.",
        ),
        Field(
            "zsegment",
            MapOf(Str()),
            {"segment": "ZUD", "udi": "2", "lot": "4", "serial": "5", "expiry": "6"},
            "The site's Z-segment: its name and the field numbers of udi, lot, serial, expiry.",
        ),
        Field(
            "obx_codes",
            MapOf(Str()),
            {"udi": "UDI", "lot": "LOT", "serial": "SERIAL", "expiry": "EXPIRY"},
            "OBX-3.1 codes whose OBX-5 carries udi, lot, serial and expiry.",
        ),
        Field(
            "item_field",
            Str(),
            "FT1-7.1",
            "Where the item is: FT1-7.1 (charge code, through the CDM) or FT1-34.1 (2.8+ item "
            "number, an item id) or another FT1 field.",
        ),
    ],
    description=(
        "Books one consumption event per FT1 of a DFT^P03 in the channel's ledger (stock "
        "issue, charge for chargeable items, par check). The business key is FT1-2 + item + "
        "FT1-4 date, so a resent line never counts twice. Business keys: `encounter`, `item`."
    ),
    example="transformer:\n  - transform: hl7_usage_to_ledger\nledger:\n  issue: erp\n"
    "  charge: billing",
)


def _detail_after(msg: Hl7Message, ft1: Segment, opts: Any) -> dict[str, str | None]:
    """Implant detail in the segments that follow this FT1 (up to the next FT1)."""
    mode = opts.implant_detail
    zmap = opts.zsegment
    segs = msg.segments
    start = msg.positions[id(ft1)] + 1
    found: dict[str, str | None] = {}
    for seg in segs[start:]:
        if seg.name == "FT1":
            break
        if seg.name == zmap.get("segment", "ZUD") and mode in ("auto", "zsegment"):
            return {
                k: seg.get(int(zmap[k])) for k in ("udi", "lot", "serial", "expiry") if k in zmap
            }
        if seg.name == "PRT" and mode in ("auto", "prt"):
            return {
                "udi": seg.get(10),
                "expiry": seg.get(16),
                "lot": seg.get(17),
                "serial": seg.get(18),
            }
        if seg.name == "OBX" and mode in ("auto", "obx"):
            code = seg.get(3)
            for key, wanted in opts.obx_codes.items():
                if code == wanted:
                    found[key] = seg.get(5)
    return found


def payer_of(msg: Hl7Message) -> tuple[str | None, str | None]:
    """The payer: the first IN1's insurance company id (IN1-3.1), else the visit's financial
    class (PV1-20.1); with which it is (``insurer``, ``financial_class``)."""
    insurer = msg.get("IN1-3.1")
    if insurer:
        return insurer, "insurer"
    fc = msg.get("PV1-20.1")
    return (fc, "financial_class") if fc else (None, None)


@transform("hl7_usage_to_ledger", SPEC)
def run(msg: Hl7Message, ctx: TransformContext) -> dict[str, Any]:
    opts = ctx.options
    if not isinstance(msg, Hl7Message):
        raise TransformError(f"expected an HL7 v2 message (got {type(msg).__name__})")
    encounter = msg.get("PV1-19.1")
    if not encounter:
        raise MissingField("PV1-19", "usage is booked and charged against the encounter")
    ft1s = msg.all("FT1")
    if not ft1s:
        raise MissingField("FT1", "a DFT^P03 needs at least one FT1 segment")
    booked = []
    default_point = msg.get("PV1-3.1") or ""
    patient = msg.get("PID-3.1")
    message_procedure = msg.get("PR1-3.1")
    sent = msg.msh.get(7)
    payer, payer_kind = payer_of(msg)
    for i, ft1 in enumerate(ft1s, start=1):
        field_no, _, comp = opts.item_field.removeprefix("FT1-").partition(".")
        code = ft1.get(int(field_no), int(comp or 1))
        if not code:
            raise MissingField(f"FT1[{i}]-{opts.item_field.removeprefix('FT1-')}", "item")
        line_id = ft1.get(2)
        if not line_id:
            raise MissingField(
                f"FT1[{i}]-2", "the sender's line id keeps a resend from counting twice"
            )
        if field_no == "7":
            charge, item = item_for_code(ctx, code)
        else:  # an item number: the item master, then its charge code
            item = ctx.lookup(opts.items, code)
            charge = (
                ctx.lookup(opts.charge_codes, item["cdm_code"], {}) if item.get("cdm_code") else {}
            )
            code = item.get("cdm_code") or code
        point = ft1.get(16) or default_point
        location = ctx.lookup(opts.locations, point)
        qty = decimal_field(ft1.get(10) or "1", f"FT1[{i}]-10")
        credit = ft1.get(6) == "CD" or qty < 0
        qty = abs(qty)
        billing_uom = charge.get("billing_uom") or item["billing_uom"]
        service = (ft1.get(4) or sent)[:8]
        detail = _detail_after(msg, ft1, opts)
        if detail.get("udi"):
            udi = parse_udi(detail["udi"])  # GS1 or HIBC; fills what the segment left empty
            detail["lot"] = detail.get("lot") or udi.lot
            detail["serial"] = detail.get("serial") or udi.serial
            if not detail.get("expiry") and udi.expiry:
                detail["expiry"] = udi.expiry.strftime("%Y%m%d")
        if not credit:
            missing = [
                name
                for name, needed in (
                    ("lot", item.get("lot_controlled")),
                    ("serial", item.get("serial_controlled")),
                )
                if needed and not detail.get(name)
            ]
            if missing:
                raise MissingLotSerial(item["item_id"], line_id, missing)
        # A credit carries the line id of the charge it reverses (the usual convention), so its
        # own key is distinct and it points at the original.
        original = f"{line_id}|{item['item_id']}|{service}"
        event = ConsumptionEvent(
            business_key=f"{original}|CD" if credit else original,
            kind="credit" if credit else "usage",
            item_id=item["item_id"],
            location_id=location["location_id"],
            quantity=to_stock_unit(ctx, qty, billing_uom, item),
            uom=item["stock_uom"],
            encounter=encounter,
            service_time=service,
            cost_center=location.get("cost_center") or "",
            gl_account=item.get("gl_account") or "",
            chargeable=bool(item.get("chargeable")),
            charge_code=code,
            billing_quantity=qty,
            billing_uom=billing_uom,
            revenue_code=charge.get("revenue_code"),
            unit_price=charge.get("price"),
            hcpcs=ft1.get(25) or charge.get("hcpcs") or None,
            patient=patient,
            performer=ft1.get(20) or None,
            orderer=ft1.get(21) or None,
            payer=payer,
            payer_kind=payer_kind,
            procedure=ft1.get(25) or message_procedure,
            source_line=line_id,
            reverses=original if credit else None,
            lot=detail.get("lot") or None,
            serial=detail.get("serial") or None,
            udi=detail.get("udi") or None,
            expiry=detail.get("expiry") or None,
        )
        ctx.book(event)
        ctx.key("item", item["item_id"])
        booked.append(event.business_key)
    ctx.key("encounter", encounter)
    return {"encounter": encounter, "events": booked}
