"""FHIR SupplyDelivery (R5 or R4B) → one ConsumptionEvent per supplied item, booked in the
supply ledger that HL7 DFT^P03 usage also feeds.

Input: a SupplyDelivery; a transaction Bundle holding SupplyDeliveries with the Devices,
Procedures and other resources they reference; or a batch Bundle (each entry on its own). A
SupplyRequest (alone or in a Bundle) is booked as a requisition by
:func:`transforms.fhir_supply_request.book_request`, so one step serves a point-of-use channel.

Per SupplyDelivery:

* ``status``: ``completed`` is consumption. ``in-progress`` and ``abandoned`` (and no status)
  book nothing; the result lists them with the reason. ``entered-in-error`` books, per item, a
  credit whose key is the original's key + ``|CD`` and that reverses it, only when the original
  was booked (``reverses_if_booked``): stock goes back, a chargeable item gets a negative charge.
* Item, per ``suppliedItem`` (R5 a list, R4B one): ``itemCodeableConcept`` codings of our item
  id, the CDM or a GTIN; or ``itemReference`` to a Device (contained ``#id``, or an entry of the
  transaction Bundle by ``fullUrl`` or ``Device/id``) whose ``udiCarrier.deviceIdentifier`` (or
  the GTIN in ``carrierHRF``) is a GTIN of the items table. Lot, serial and expiry come from
  ``Device.lotNumber`` / ``serialNumber`` / ``expirationDate``, filled in from ``carrierHRF``.
* Quantity (required) with its unit (``{each}`` and the other `unit_codes`, or one of our unit
  codes such as the billing unit EA), converted to the stocking unit; without a unit it is in
  the pack level a GTIN names, else the billing unit (as HL7 FT1-10).
* ``occurrenceDateTime`` (or a Period's end/start) is the service date; ``destination`` is the
  location (reference id or identifier: point-of-care code, location id or GLN).
"""

from __future__ import annotations

from typing import Any

from engine.domains.ledger.records import ConsumptionEvent
from engine.errors import MissingField, MissingLotSerial, TransformError
from engine.registry import transform
from engine.spec import Field, Spec, Str
from engine.transforming import TransformContext
from transforms._fhir import (
    FIELDS,
    Found,
    Resolver,
    business_identifier,
    convert,
    device_detail,
    extension_ref,
    fhir_date,
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
from transforms.fhir_supply_request import book_request

ENCOUNTER_EXTENSION = "urn:wharf:extension:encounter"
ACCOUNT_EXTENSION = "urn:wharf:extension:account"
STATUSES = ("in-progress", "completed", "abandoned", "entered-in-error")
LOT_CARRIERS = "Device.lotNumber/serialNumber or udiCarrier.carrierHRF"

SPEC = Spec(
    "fhir_supply_to_ledger",
    [
        *FIELDS,
        Field(
            "encounter_extension",
            Str(),
            ENCOUNTER_EXTENSION,
            "URL of the SupplyDelivery extension whose valueReference is the Encounter "
            "(SupplyDelivery has no encounter element and the FHIR extensions pack defines "
            "none for it).",
        ),
        Field(
            "account_extension",
            Str(),
            ACCOUNT_EXTENSION,
            "URL of the SupplyDelivery extension whose valueReference is the Account the "
            "charge goes to (ChargeItem.account).",
        ),
    ],
    description=(
        "Books one consumption event per supplied item of each `completed` FHIR SupplyDelivery "
        "(R5 or R4B; alone, in a transaction Bundle with the Devices and Procedures it "
        "references, or in a batch Bundle) in the channel's ledger: stock issue, a ChargeItem "
        "or DFT for chargeable items, par check. A SupplyRequest in the same input is booked "
        "as a requisition (see `fhir_supply_request_to_requisition`). `in-progress`/`abandoned` "
        "book nothing (the result says so); `entered-in-error` books a credit reversing each "
        "item, only if the original was booked. Item: a coding of our item id, charge code or "
        "GTIN, or `itemReference` to a Device (contained or in the Bundle) whose UDI device "
        "identifier is a GTIN of the items table; lot/serial/expiry from the Device and its "
        "carrierHRF (lot/serial-controlled items without them are held: MissingLotSerial). "
        "Quantity (required) is converted to the stocking unit. Encounter: SupplyDelivery has "
        "no encounter element, so it is the `encounter_extension` on the SupplyDelivery, else "
        "the `encounter` of the Procedure in the same transaction Bundle that references the "
        "delivery's Device (`focalDevice.manipulated`, `used`/`usedReference`) or the delivery "
        "(`supportingInfo`), or of the Bundle's only Procedure. Patient: `patient`, else the "
        "Procedure's subject. Account: `account_extension`. The business key is the "
        "delivery's identifier (system|value) + item + service date (+ `|n` for the n-th line "
        "of the same item), so a resend, alone or in another Bundle, never books twice. "
        "Business keys: `supply_delivery`, `encounter`, `item`."
    ),
    example="transformer:\n  - transform: fhir_supply_to_ledger\nledger:\n  issue: erp\n"
    "  charge: billing\n  charge_format: fhir_r5",
)


def _inputs(msg: Any) -> list[tuple[dict[str, Any], Resolver]]:
    """(resource, resolver) pairs: a transaction shares one resolver, batch entries stand
    alone (FHIR batch entries may not reference each other)."""
    if not isinstance(msg, dict):
        raise TransformError(f"expected a FHIR resource (got {type(msg).__name__})")
    rtype = msg.get("resourceType")
    if rtype in ("SupplyDelivery", "SupplyRequest"):
        return [(msg, Resolver())]
    if rtype != "Bundle":
        raise TransformError(
            "expected a SupplyDelivery, a SupplyRequest, or a transaction or batch Bundle "
            f"of them (got {rtype})"
        )
    btype = msg.get("type")
    if btype not in ("transaction", "batch"):
        raise TransformError(f"Bundle.type: expected transaction or batch (got {btype!r})")
    bundle = Resolver.for_bundle(msg)
    wanted = [
        r for r in bundle.entries if r.get("resourceType") in ("SupplyDelivery", "SupplyRequest")
    ]
    if not wanted:
        raise TransformError(f"the {btype} Bundle holds no SupplyDelivery or SupplyRequest")
    return [(r, bundle if btype == "transaction" else Resolver()) for r in wanted]


def _procedure(
    sd: dict[str, Any], devices: list[dict[str, Any]], resolver: Resolver
) -> dict[str, Any] | None:
    """The Procedure of the same transaction that references this delivery's Devices or the
    delivery itself; else the Bundle's only Procedure; else None."""
    procedures = resolver.of_type("Procedure")
    for proc in procedures:
        refs = [fd.get("manipulated") for fd in proc.get("focalDevice") or []]
        refs += [u.get("reference") for u in proc.get("used") or [] if isinstance(u, dict)]
        refs += list(proc.get("usedReference") or [])
        refs += list(proc.get("supportingInfo") or [])
        for ref in refs:
            target = resolver.resolve(ref, proc)
            if target is not None and (target is sd or any(target is d for d in devices)):
                return proc
    return procedures[0] if len(procedures) == 1 else None


def _found(
    ctx: TransformContext, sd: dict[str, Any], line: dict[str, Any], where: str, resolver: Resolver
) -> Found:
    if line.get("itemCodeableConcept") is not None:
        return item_by_concept(ctx, line["itemCodeableConcept"], f"{where}.itemCodeableConcept")
    ref = line.get("itemReference")
    if ref is None:
        raise MissingField(f"{where}.item[x]", "what was used")
    target = resolver.resolve(ref, sd)
    if target is None:
        raise TransformError(
            f"{where}.itemReference: expected a contained Device or a Device entry of the same "
            f"transaction Bundle (got nothing for {ref.get('reference')!r})"
        )
    if target.get("resourceType") != "Device":
        raise TransformError(
            f"{where}.itemReference: expected a Device (got {target.get('resourceType')})"
        )
    return item_by_device(ctx, target, f"{where}.itemReference")


def _delivery(sd: dict[str, Any], resolver: Resolver, ctx: TransformContext) -> dict[str, Any]:
    opts = ctx.options
    system, value = business_identifier(sd, opts.identifier_system)
    delivery_key = f"{system}|{value}"
    status = sd.get("status")
    if status is not None and status not in STATUSES:
        raise TransformError(
            f"SupplyDelivery.status: expected one of {', '.join(STATUSES)} (got {status!r})"
        )
    if status not in ("completed", "entered-in-error"):
        return {
            "supply_delivery": delivery_key,
            "status": status,
            "booked": [],
            "why": "only a completed SupplyDelivery is consumption (nothing booked)",
        }
    supplied = sd.get("suppliedItem")
    shape = "R4B" if isinstance(supplied, dict) else "R5"
    if opts.version != "auto" and shape != opts.version:
        wanted = "a list" if opts.version == "R5" else "one object"
        raise TransformError(
            f"SupplyDelivery.suppliedItem: expected {wanted} ({opts.version}) (got {shape} shape)"
        )
    lines = [supplied] if isinstance(supplied, dict) else list(supplied or [])
    if not lines:
        raise MissingField("SupplyDelivery.suppliedItem", "nothing was supplied")
    service = fhir_date(occurrence(sd))
    if service is None:
        raise MissingField("SupplyDelivery.occurrence[x]", "the service date")
    loc = location(ctx, sd.get("destination"), sd, resolver, "SupplyDelivery.destination")
    found = []
    for n, line in enumerate(lines):
        where = "SupplyDelivery.suppliedItem" + (f"[{n}]" if shape == "R5" else "")
        if not isinstance(line, dict):
            raise TransformError(f"{where}: expected an object (got {type(line).__name__})")
        found.append((where, line, _found(ctx, sd, line, where, resolver)))
    devices = [f.device for _, _, f in found if f.device is not None]
    proc = _procedure(sd, devices, resolver)
    enc_ref = extension_ref(sd, opts.encounter_extension)
    enc_holder = sd
    if enc_ref is None and proc is not None and isinstance(proc.get("encounter"), dict):
        enc_ref, enc_holder = proc["encounter"], proc
    enc_target = resolver.resolve(enc_ref, enc_holder) if enc_ref else None
    encounter = ref_value(enc_ref, enc_target)
    if not encounter:
        raise MissingField(
            "SupplyDelivery encounter",
            f"expected the extension {opts.encounter_extension} or a Procedure in the same "
            "transaction Bundle with an encounter: usage is booked and charged against it",
        )
    pat_ref, pat_holder = sd.get("patient"), sd
    if pat_ref is None and proc is not None:
        pat_ref, pat_holder = proc.get("subject"), proc
    pat_target = resolver.resolve(pat_ref, pat_holder) if pat_ref else None
    acct_ref = extension_ref(sd, opts.account_extension)
    performer = None
    if proc is not None:
        actors = [p.get("actor") for p in proc.get("performer") or [] if isinstance(p, dict)]
        if actors:
            performer = ref_value(actors[0], resolver.resolve(actors[0], proc))
    proc_code = None
    if proc is not None:
        codings = (proc.get("code") or {}).get("coding") or []
        proc_code = next((c.get("code") for c in codings if c.get("code")), None)
    credit = status == "entered-in-error"
    seen: dict[str, int] = {}
    booked = []
    for n, (where, line, f) in enumerate(found):
        item = f.item
        qty, unit = quantity(
            ctx, line.get("quantity"), f"{where}.quantity", f.unit or item["billing_uom"]
        )
        billing_uom = f.charge.get("billing_uom") or item["billing_uom"]
        detail = device_detail(f)
        line_id = value if len(found) == 1 else f"{value}-{n + 1}"
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
                raise MissingLotSerial(item["item_id"], line_id, missing, LOT_CARRIERS)
        seen[item["item_id"]] = seen.get(item["item_id"], 0) + 1
        repeat = seen[item["item_id"]]
        original = f"{delivery_key}|{item['item_id']}|{service}" + (
            f"|{repeat}" if repeat > 1 else ""
        )
        device = f.device
        event = ConsumptionEvent(
            business_key=f"{original}|CD" if credit else original,
            kind="credit" if credit else "usage",
            item_id=item["item_id"],
            location_id=loc["location_id"],
            quantity=to_stock_unit(ctx, qty, unit, item),
            uom=item["stock_uom"],
            encounter=encounter,
            service_time=service,
            cost_center=loc.get("cost_center") or "",
            gl_account=item.get("gl_account") or "",
            chargeable=bool(item.get("chargeable")),
            charge_code=item.get("cdm_code") or None,
            billing_quantity=convert(ctx, qty, unit, billing_uom, item),
            billing_uom=billing_uom,
            revenue_code=f.charge.get("revenue_code") or item.get("revenue_code"),
            unit_price=f.charge.get("price"),
            hcpcs=f.charge.get("hcpcs") or None,
            patient=ref_value(pat_ref, pat_target),
            performer=performer,
            procedure=proc_code,
            source_line=line_id,
            reverses=original if credit else None,
            lot=detail.get("lot") or None,
            serial=detail.get("serial") or None,
            udi=detail.get("udi") or None,
            expiry=detail.get("expiry") or None,
            patient_ref=portable_ref(pat_ref, pat_target, "Patient") if pat_ref else None,
            encounter_ref=portable_ref(enc_ref, enc_target, "Encounter"),
            account=portable_ref(acct_ref, resolver.resolve(acct_ref, sd), "Account")
            if acct_ref
            else None,
            source_ref=self_ref(sd, system, value),
            procedure_ref=portable_ref({}, proc, "Procedure") if proc is not None else None,
            device_ref=portable_ref(line.get("itemReference"), device, "Device")
            if device is not None
            else None,
            reverses_if_booked=credit,
        )
        ctx.book(event)
        ctx.key("item", item["item_id"])
        booked.append(event.business_key)
    ctx.key("supply_delivery", delivery_key)
    ctx.key("encounter", encounter)
    return {
        "supply_delivery": delivery_key,
        "status": status,
        "encounter": encounter,
        "booked": booked,
        **({"why": "reverses each item, if it was booked"} if credit else {}),
    }


@transform("fhir_supply_to_ledger", SPEC)
def run(msg: dict[str, Any], ctx: TransformContext) -> dict[str, Any]:
    deliveries, requests = [], []
    for resource, resolver in _inputs(msg):
        if resource["resourceType"] == "SupplyDelivery":
            deliveries.append(_delivery(resource, resolver, ctx))
        else:
            requests.append(book_request(resource, resolver, ctx))
    out: dict[str, Any] = {"deliveries": deliveries}
    if requests:
        out["requests"] = requests
    return out
