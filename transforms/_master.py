"""Master-data lookups shared by the usage transforms: charge code → CDM row → item, HL7 PL →
location, and unit conversion through the ``uom_conversions`` table (plain Python, no I/O)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from engine.errors import TransformError
from engine.spec import Field, TableName
from engine.transforming import TransformContext
from engine.uom import UomGraph, graph_of

FIELDS = [
    Field("items", TableName(), "items", "Item master keyed by item id."),
    Field("charge_codes", TableName(), "charge_codes", "CDM keyed by charge code (FT1-7.1)."),
    Field("locations", TableName(), "locations", "Locations keyed by PL point of care."),
    Field("uom_conversions", TableName(), "uom_conversions", "Unit conversions."),
]


def decimal_field(text: str, field: str) -> Decimal:
    """A numeric HL7 field as a Decimal; TransformError naming the field otherwise."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        value = None
    if value is None or not value.is_finite():
        raise TransformError(f"{field} must be a number (got {text!r})")
    return value


def item_for_code(ctx: TransformContext, code: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(CDM row, item row) for a charge code; MappingMiss names the table that lacks it."""
    charge = ctx.lookup(ctx.options.charge_codes, code)
    return charge, ctx.lookup(ctx.options.items, charge["item_id"])


def to_stock_unit(ctx: TransformContext, qty: Decimal, uom: str, item: dict[str, Any]) -> Decimal:
    """``qty`` in ``uom`` (the billing unit of FT1-10) in the item's stocking unit."""
    stock = item["stock_uom"]
    if uom == stock:
        return qty
    return _graph(ctx).convert(qty, uom, stock, item["item_id"])


def _graph(ctx: TransformContext) -> UomGraph:
    return graph_of(ctx.mappings.table(ctx.options.uom_conversions))
