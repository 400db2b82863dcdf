"""HL7 DFT^P03 supply usage → an ERP inventory issue document (one line per FT1)."""

from __future__ import annotations

from typing import Any

from engine.codecs.hl7v2 import Hl7Message
from engine.errors import MissingField, TransformError
from engine.registry import transform
from engine.spec import Field, Spec, Str
from engine.transforming import TransformContext
from transforms._master import FIELDS, decimal_field, item_for_code, to_stock_unit

SPEC = Spec(
    "hl7_usage_to_issue",
    [
        *FIELDS,
        Field("item_field", Str(), "FT1-7.1", "Where the charge/item code is (per FT1)."),
    ],
    description=(
        "Turns each FT1 of a DFT^P03 into an inventory issue line: item, stocking unit, quantity, "
        "location and cost center, with the encounter (PV1-19) and the sender's line id (FT1-2). "
        "Business keys: `encounter`, `item`."
    ),
    example="transformer:\n  - transform: hl7_usage_to_issue\n    items: items",
)


@transform("hl7_usage_to_issue", SPEC)
def run(msg: Hl7Message, ctx: TransformContext) -> dict[str, Any]:
    opts = ctx.options
    if not isinstance(msg, Hl7Message):
        raise TransformError(f"expected an HL7 v2 message (got {type(msg).__name__})")
    encounter = msg.get("PV1-19.1")
    if not encounter:
        raise MissingField("PV1-19", "charges and issues are posted against the encounter")
    _, _, item_path = opts.item_field.partition("-")
    item_no, _, comp = item_path.partition(".")
    lines = []
    for i, ft1 in enumerate(msg.all("FT1"), start=1):
        code = ft1.get(int(item_no), int(comp or 1))
        if not code:
            raise MissingField(f"FT1[{i}]-{item_path}", "item or charge code")
        charge, item = item_for_code(ctx, code)
        point = ft1.get(16, 1) or msg.get("PV1-3.1") or ""
        location = ctx.lookup(opts.locations, point)
        billed = decimal_field(ft1.get(10) or "1", f"FT1[{i}]-10")
        qty = to_stock_unit(
            ctx, abs(billed), charge.get("billing_uom") or item["billing_uom"], item
        )
        if ft1.get(6) == "CD" or billed < 0:
            qty = -qty
        lines.append(
            {
                "line": i,
                "usage_id": ft1.get(2),
                "item_id": item["item_id"],
                "description": item["description"],
                "quantity": qty,
                "uom": item["stock_uom"],
                "location_id": location["location_id"],
                "cost_center": location["cost_center"],
                "gl_account": item["gl_account"],
                "service_date": ft1.get(4),
            }
        )
        ctx.key("item", item["item_id"])
    if not lines:
        raise MissingField("FT1", "a DFT^P03 needs at least one FT1 segment")
    ctx.key("encounter", encounter)
    return {
        "type": "inventory_issue",
        "source_message": msg.control_id,
        "correlation_id": ctx.correlation_id,
        "encounter": encounter,
        "lines": lines,
    }
