"""FHIR SupplyRequest (R5 or R4B) → a requisition in the supply ledger, once per identifier.

An ``active`` SupplyRequest becomes a
:class:`~engine.domains.ledger.records.RequisitionRequest`: the
item (R5 ``item`` concept or reference, R4B ``itemCodeableConcept`` / ``itemReference``), the
quantity converted to the stocking unit, ``deliverTo`` through the locations table, the need-by
date from ``occurrence[x]``, ``priority`` and ``requester``. The ledger records it in its
requisitions table and sends it to the channel's requisition destination in the message's own
commit; the business key is the request's identifier (system|value), so a resend orders nothing
more. Other statuses book nothing and say so in the result.
"""

from __future__ import annotations

from typing import Any

from engine.domains.ledger.records import RequisitionRequest
from engine.errors import MissingField, TransformError
from engine.registry import transform
from engine.spec import Spec
from engine.transforming import TransformContext
from transforms._fhir import (
    FIELDS,
    Found,
    Resolver,
    business_identifier,
    iso_date,
    item_by_concept,
    item_by_device,
    location,
    occurrence,
    portable_ref,
    quantity,
    ref_value,
    self_ref,
)
from transforms._master import to_stock_unit

STATUSES = ("draft", "active", "suspended", "cancelled", "completed", "entered-in-error", "unknown")

SPEC = Spec(
    "fhir_supply_request_to_requisition",
    list(FIELDS),
    description=(
        "Books an `active` FHIR SupplyRequest (R5 or R4B; alone, or in a transaction or "
        "batch Bundle) as a requisition in the channel's ledger and sends it to "
        "`ledger.requisition`, once per request identifier (system|value). Item: R5 `item` "
        "(concept or Device reference), R4B `itemCodeableConcept` / `itemReference`, by our "
        "item id, charge code or GTIN coding (see `item_system`, `cdm_system`, "
        "`gtin_systems`) or a Device's UDI. `quantity` (required) is converted to the stocking "
        "unit; without a unit it is in the unit a GTIN coding names, else the stocking unit. "
        "`deliverTo` (required) goes through the locations table (point-of-care code, "
        "location id or GLN). Need-by: `occurrenceDateTime`, or a Period's end (else start). "
        "Other statuses book nothing (the result says why). Business keys: `supply_request`, "
        "`item`."
    ),
    example="transformer:\n  - transform: fhir_supply_request_to_requisition\nledger:\n"
    "  requisition: erp_requisitions",
)


def book_request(sr: dict[str, Any], resolver: Resolver, ctx: TransformContext) -> dict[str, Any]:
    """Book one SupplyRequest (``ctx.book``) when it is active; the result entry says what."""
    opts = ctx.options
    system, value = business_identifier(sr, opts.identifier_system)
    key = f"{system}|{value}"
    status = sr.get("status")
    if status not in STATUSES:
        raise TransformError(
            f"SupplyRequest.status: expected one of {', '.join(STATUSES)} (got {status!r})"
        )
    if status != "active":
        return {
            "supply_request": key,
            "status": status,
            "booked": False,
            "why": "only an active SupplyRequest is a requisition",
        }
    found = _item(ctx, sr, resolver)
    item = found.item
    if sr.get("quantity") is None:
        raise MissingField("SupplyRequest.quantity", "how much to order")
    qty, unit = quantity(
        ctx, sr["quantity"], "SupplyRequest.quantity", found.unit or item["stock_uom"]
    )
    loc = location(ctx, sr.get("deliverTo"), sr, resolver, "SupplyRequest.deliverTo")
    requester = sr.get("requester")
    req = RequisitionRequest(
        business_key=key,
        item_id=item["item_id"],
        location_id=loc["location_id"],
        quantity=to_stock_unit(ctx, qty, unit, item),
        uom=item["stock_uom"],
        order_quantity=qty,
        order_uom=unit,
        need_by=iso_date(occurrence(sr)),
        priority=sr.get("priority"),
        requester=_requester(requester, resolver.resolve(requester, sr)),
        reason=f"SupplyRequest {key}",
        source_ref=self_ref(sr, system, value),
    )
    ctx.book(req)
    ctx.key("supply_request", key)
    ctx.key("item", item["item_id"])
    return {
        "supply_request": key,
        "status": status,
        "booked": True,
        "item_id": req.item_id,
        "location_id": req.location_id,
        "quantity": str(req.quantity),
        "uom": req.uom,
    }


def _item(ctx: TransformContext, sr: dict[str, Any], resolver: Resolver) -> Found:
    version = ctx.options.version
    if "item" in sr:
        shape, item = "R5", sr["item"]
        concept = item.get("concept") if isinstance(item, dict) else None
        reference = item.get("reference") if isinstance(item, dict) else None
        where = "SupplyRequest.item"
    else:
        shape = "R4B"
        concept, reference = sr.get("itemCodeableConcept"), sr.get("itemReference")
        where = "SupplyRequest.item[x]"
    if version != "auto" and shape != version:
        wanted = "item" if version == "R5" else "itemCodeableConcept or itemReference"
        raise TransformError(f"{where}: expected the {version} shape, {wanted} (got {shape})")
    if concept is not None:
        return item_by_concept(ctx, concept, f"{where}.concept" if shape == "R5" else where)
    if reference is not None:
        target = resolver.resolve(reference, sr)
        if target is None or target.get("resourceType") != "Device":
            got = target.get("resourceType") if target else f"nothing for {reference!r}"
            raise TransformError(
                f"{where}: expected a reference to a contained Device or a Device in the same "
                f"transaction Bundle (got {got})"
            )
        return item_by_device(ctx, target, where)
    raise MissingField(where, "what to order")


def _requester(ref: Any, target: dict[str, Any] | None) -> str | None:
    if not isinstance(ref, dict):
        return None
    portable = portable_ref(ref, target, "Practitioner")
    if portable and portable.get("reference"):
        return str(portable["reference"])
    return ref_value(ref, target) or ref.get("display")


def _requests(msg: Any) -> list[tuple[dict[str, Any], Resolver]]:
    if not isinstance(msg, dict):
        raise TransformError(f"expected a FHIR resource (got {type(msg).__name__})")
    if msg.get("resourceType") == "SupplyRequest":
        return [(msg, Resolver())]
    if msg.get("resourceType") == "Bundle" and msg.get("type") in ("transaction", "batch"):
        shared = Resolver.for_bundle(msg) if msg.get("type") == "transaction" else None
        out = [
            (r, shared or Resolver())
            for r in Resolver.for_bundle(msg).entries
            if r.get("resourceType") == "SupplyRequest"
        ]
        if out:
            return out
    got = msg.get("resourceType")
    if got == "Bundle":
        got = f"a {msg.get('type')} Bundle without a SupplyRequest"
    raise TransformError(
        f"expected a SupplyRequest, or a transaction or batch Bundle of them (got {got})"
    )


@transform("fhir_supply_request_to_requisition", SPEC)
def run(msg: dict[str, Any], ctx: TransformContext) -> dict[str, Any]:
    return {"requests": [book_request(sr, resolver, ctx) for sr, resolver in _requests(msg)]}
