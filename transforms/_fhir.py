"""FHIR helpers shared by the supply transforms (plain Python, no I/O).

R5 and R4B shapes of SupplyDelivery / SupplyRequest; references resolved among ``contained``
resources or the entries of the same transaction Bundle; FHIR Quantities in our unit codes;
items found by coding (our item id, the CDM code or a GTIN) or by a Device's UDI; locations by
reference id or identifier (point-of-care code, location id or GLN).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from engine.errors import MappingMiss, MissingField, TransformError
from engine.spec import Enum, Field, ListOf, MapOf, Str
from engine.transforming import TransformContext
from engine.udi import Udi, parse_udi
from transforms._master import FIELDS as MASTER_FIELDS
from transforms._master import _graph, decimal_field, item_for_code

ITEM_SYSTEM = "urn:wharf:item"
CDM_SYSTEM = "urn:wharf:cdm"
GTIN_SYSTEMS = ("https://www.gs1.org/gtin", "urn:oid:1.3.160")
UNIT_CODES = {
    "{each}": "EA",
    "{ea}": "EA",
    "1": "EA",
    "each": "EA",
    "{pair}": "PR",
    "pair": "PR",
    "{box}": "BX",
    "box": "BX",
    "{pack}": "PK",
    "pack": "PK",
    "{case}": "CA",
    "case": "CA",
}

FIELDS = [
    *MASTER_FIELDS,
    Field(
        "version",
        Enum("auto", "R5", "R4B"),
        "auto",
        "FHIR version of the resources: `auto` reads either shape (R5 `suppliedItem` is a "
        "list and SupplyRequest has `item`; R4B has one `suppliedItem` and "
        "`itemCodeableConcept`/`itemReference`); R5 or R4B refuses the other shape.",
    ),
    Field(
        "item_system",
        Str(),
        ITEM_SYSTEM,
        "Coding system whose code is our item id (the `items` table key).",
    ),
    Field(
        "cdm_system",
        Str(),
        CDM_SYSTEM,
        "Coding system whose code is a charge code (the `charge_codes` table key).",
    ),
    Field(
        "gtin_systems",
        ListOf(Str(), scalar_ok=True),
        GTIN_SYSTEMS,
        "Coding systems whose code is a GTIN-14, found in the items table's `gtin_each`, "
        "`gtin_box` or `gtin_case` column (the column gives the unit when the quantity has "
        "none: the billing unit, BX or PK, CA).",
    ),
    Field(
        "unit_codes",
        MapOf(Str()),
        UNIT_CODES,
        "Quantity codes (UCUM annotations such as `{each}`, or unit words) and the unit code "
        "of our tables they mean; any other code (EA, BX...) is taken as one of ours.",
    ),
    Field(
        "identifier_system",
        Str(),
        None,
        "Which identifier is the business key (system|value): the one with this system; "
        "default: the first identifier with a value.",
    ),
]


# --------------------------------------------------------------------------- references


@dataclass
class Resolver:
    """Finds the resource a Reference points at: ``#id`` among the holder's contained
    resources, or an entry of the same transaction Bundle by ``fullUrl`` or ``Type/id``."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    by_url: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def for_bundle(cls, bundle: dict[str, Any] | None) -> Resolver:
        out = cls()
        for entry in (bundle or {}).get("entry") or []:
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(resource, dict):
                continue
            out.entries.append(resource)
            url = entry.get("fullUrl")
            if isinstance(url, str) and url:
                out.by_url[url] = resource
            rtype, rid = resource.get("resourceType"), resource.get("id")
            if rtype and rid:
                out.by_url.setdefault(f"{rtype}/{rid}", resource)
        return out

    def resolve(self, ref: Any, holder: dict[str, Any]) -> dict[str, Any] | None:
        text = ref.get("reference") if isinstance(ref, dict) else None
        if not isinstance(text, str) or not text:
            return None
        if text.startswith("#"):
            for res in holder.get("contained") or []:
                if isinstance(res, dict) and res.get("id") == text[1:]:
                    return res
            return None
        if text in self.by_url:
            return self.by_url[text]
        parts = text.rstrip("/").split("/")
        if len(parts) >= 2:  # an absolute URL: its Type/id tail
            return self.by_url.get("/".join(parts[-2:]))
        return None

    def of_type(self, rtype: str) -> list[dict[str, Any]]:
        return [r for r in self.entries if r.get("resourceType") == rtype]


def first_identifier(resource: dict[str, Any] | None) -> dict[str, Any] | None:
    for ident in (resource or {}).get("identifier") or []:
        if isinstance(ident, dict) and ident.get("value"):
            return ident
    return None


def business_identifier(resource: dict[str, Any], system: str | None) -> tuple[str, str]:
    """(system, value) of the identifier that is the business key; MissingField without one."""
    rtype = resource.get("resourceType", "resource")
    idents = resource.get("identifier") or []
    if isinstance(idents, dict):  # Bundle.identifier is 0..1
        idents = [idents]
    for ident in idents:
        if not isinstance(ident, dict) or not ident.get("value"):
            continue
        if system is None or ident.get("system") == system:
            return str(ident.get("system") or ""), str(ident["value"])
    wanted = f" with system {system}" if system else ""
    raise MissingField(
        f"{rtype}.identifier",
        f"an identifier{wanted} is the business key that keeps a resend from counting twice",
    )


def ref_value(ref: Any, target: dict[str, Any] | None) -> str | None:
    """The plain id of what ``ref`` names (an MRN, a visit number): the reference's own
    identifier, else the target's first identifier, else the id in the reference text
    (``Encounter/ENC-1``), else the target's id."""
    if not isinstance(ref, dict):
        return None
    ident = ref.get("identifier")
    if isinstance(ident, dict) and ident.get("value"):
        return str(ident["value"])
    own = first_identifier(target)
    if own is not None:
        return str(own["value"])
    text = ref.get("reference")
    if isinstance(text, str) and text and not text.startswith(("urn:", "#")):
        return text.rstrip("/").rsplit("/", 1)[-1]
    if target is not None and target.get("id"):
        return str(target["id"])
    return None


def portable_ref(ref: Any, target: dict[str, Any] | None, rtype: str) -> dict[str, Any] | None:
    """A Reference another system can use: the literal reference unless it only means
    something inside this Bundle (``urn:uuid:``, ``#contained``), plus an identifier."""
    out: dict[str, Any] = {}
    text = ref.get("reference") if isinstance(ref, dict) else None
    if isinstance(text, str) and text and not text.startswith(("urn:", "#")):
        out["reference"] = text
    ident = ref.get("identifier") if isinstance(ref, dict) else None
    if not (isinstance(ident, dict) and ident.get("value")):
        ident = first_identifier(target)
    if ident is not None:
        out["identifier"] = {k: ident[k] for k in ("system", "value") if ident.get(k)}
    if out and "reference" not in out:
        out["type"] = rtype
    return out or None


def self_ref(resource: dict[str, Any], system: str, value: str) -> dict[str, Any]:
    """A Reference to ``resource`` itself: ``Type/id`` when it has an id, and its identifier."""
    out: dict[str, Any] = {}
    if resource.get("id"):
        out["reference"] = f"{resource['resourceType']}/{resource['id']}"
    else:
        out["type"] = resource["resourceType"]
    ident = {"system": system, "value": value} if system else {"value": value}
    out["identifier"] = ident
    return out


def extension_ref(resource: dict[str, Any], url: str) -> dict[str, Any] | None:
    """The valueReference of ``resource``'s first extension with ``url``."""
    for ext in resource.get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == url:
            value = ext.get("valueReference")
            if isinstance(value, dict):
                return value
    return None


# --------------------------------------------------------------------------- values


def fhir_date(value: Any) -> str | None:
    """A FHIR date/dateTime (text or a parsed date) as ``YYYYMMDD``, the date as written."""
    if isinstance(value, datetime | date):
        value = value.isoformat()
    if not isinstance(value, str):
        return None
    digits = value[:10].replace("-", "")
    return digits if len(digits) == 8 and digits.isdigit() else None


def iso_date(value: Any) -> str | None:
    day = fhir_date(value)
    return f"{day[:4]}-{day[4:6]}-{day[6:]}" if day else None


def occurrence(resource: dict[str, Any]) -> Any:
    """occurrence[x]: the dateTime, a Period's end (else start), or a Timing's first event."""
    if resource.get("occurrenceDateTime"):
        return resource["occurrenceDateTime"]
    period = resource.get("occurrencePeriod")
    if isinstance(period, dict):
        return period.get("end") or period.get("start")
    timing = resource.get("occurrenceTiming")
    if isinstance(timing, dict) and timing.get("event"):
        return timing["event"][0]
    return None


def quantity(ctx: TransformContext, qty: Any, where: str, default_unit: str) -> tuple[Decimal, str]:
    """A FHIR Quantity as (positive Decimal, unit code of our tables)."""
    if not isinstance(qty, dict) or qty.get("value") is None:
        raise MissingField(f"{where}.value", "how much")
    value = qty["value"]
    if isinstance(value, bool):
        raise TransformError(f"{where}.value must be a number (got {value!r})")
    amount = decimal_field(str(value), f"{where}.value")
    if not amount.is_finite() or amount <= 0:
        raise TransformError(f"{where}.value must be a positive number (got {value})")
    token = qty.get("code") or qty.get("unit")
    if not token:
        return amount, default_unit
    codes = {k.lower(): v for k, v in ctx.options.unit_codes.items()}
    return amount, codes.get(str(token).strip().lower(), str(token).strip().upper())


def convert(
    ctx: TransformContext, qty: Decimal, uom: str, to: str, item: dict[str, Any]
) -> Decimal:
    """``qty`` in ``uom`` expressed in ``to`` for this item (MappingMiss without a path)."""
    if uom == to:
        return qty
    return _graph(ctx).convert(qty, uom, to, item["item_id"])


# --------------------------------------------------------------------------- items


@dataclass(frozen=True)
class Found:
    """An item found for a FHIR item element, with what came along."""

    item: dict[str, Any]
    charge: dict[str, Any]
    unit: str | None = None  # the pack level a GTIN names, when it named one
    device: dict[str, Any] | None = None
    udi: Udi | None = None
    udi_text: str | None = None


_lock = threading.Lock()
_indexes: dict[tuple[str, int], tuple[Any, dict[str, Any]]] = {}


def _index(ctx: TransformContext, table_name: str, kind: str, build: Any) -> dict[str, Any]:
    table = ctx.mappings.table(table_name)
    with _lock:
        cached = _indexes.get((kind, id(table)))
        if cached is None or cached[0] is not table:  # a reload makes a new table object
            cached = (table, build(table))
            _indexes[(kind, id(table))] = cached
        return cached[1]


def _gtin_index(table: Any) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for key, row in table.rows.items():
        for column in ("gtin_each", "gtin_box", "gtin_case"):
            gtin = row.get(column) if isinstance(row, dict) else None
            if gtin:
                out[str(gtin)] = (str(key), column)
    return out


def _charge_for(ctx: TransformContext, item: dict[str, Any]) -> dict[str, Any]:
    code = item.get("cdm_code")
    return ctx.lookup(ctx.options.charge_codes, code, {}) if code else {}


def item_by_gtin(ctx: TransformContext, gtin: str) -> Found:
    """The item whose gtin_each / gtin_box / gtin_case is ``gtin``, and that pack's unit."""
    index = _index(ctx, ctx.options.items, "gtin", _gtin_index)
    hit = index.get(str(gtin).strip())
    if hit is None:
        raise MappingMiss(ctx.options.items, f"GTIN {gtin}")
    item = ctx.lookup(ctx.options.items, hit[0])
    if hit[1] == "gtin_each":
        unit = item.get("billing_uom") or item["stock_uom"]
    elif hit[1] == "gtin_case":
        unit = "CA"
    else:  # the inner pack: PK where the item has PK rows, else BX
        unit = "PK" if _graph(ctx).path("PK", item["stock_uom"], item["item_id"]) else "BX"
    return Found(item, _charge_for(ctx, item), unit)


def item_by_concept(ctx: TransformContext, concept: Any, where: str) -> Found:
    """The item named by a CodeableConcept: codings of our item system, the CDM system or a
    GTIN system; all recognised codings must name the same item."""
    opts = ctx.options
    codings = concept.get("coding") if isinstance(concept, dict) else None
    found: list[tuple[str, Found]] = []
    for i, coding in enumerate(codings or []):
        system, code = coding.get("system"), coding.get("code")
        if not code:
            continue
        if system == opts.item_system:
            item = ctx.lookup(opts.items, code)
            found.append((f"coding[{i}]", Found(item, _charge_for(ctx, item))))
        elif system == opts.cdm_system:
            charge, item = item_for_code(ctx, code)
            found.append((f"coding[{i}]", Found(item, charge)))
        elif system in opts.gtin_systems:
            found.append((f"coding[{i}]", item_by_gtin(ctx, code)))
    if not found:
        systems = ", ".join(sorted({str(c.get("system")) for c in codings or []})) or "none"
        raise TransformError(
            f"{where}: expected a coding of {opts.item_system} (item id), {opts.cdm_system} "
            f"(charge code) or a GTIN system ({', '.join(opts.gtin_systems)}) (got systems: "
            f"{systems})"
        )
    ids = {f.item["item_id"] for _, f in found}
    if len(ids) > 1:
        named = ", ".join(f"{w} → {f.item['item_id']}" for w, f in found)
        raise TransformError(f"{where}: codings name different items ({named})")
    return found[0][1]


def item_by_device(ctx: TransformContext, device: dict[str, Any], where: str) -> Found:
    """The item of a Device: its UDI device identifier (a GTIN, also read from carrierHRF),
    else an identifier of our item system; lot, serial and expiry come along."""
    udi: Udi | None = None
    udi_text: str | None = None
    di: str | None = None
    for carrier in device.get("udiCarrier") or []:
        if not isinstance(carrier, dict):
            continue
        di = di or carrier.get("deviceIdentifier")
        hrf = carrier.get("carrierHRF")
        if hrf and udi is None:
            udi = parse_udi(hrf)  # GS1 or HIBC; TransformError says what is wrong
            udi_text = hrf
        udi_text = udi_text or carrier.get("deviceIdentifier")
    if di is None and udi is not None and udi.issuer == "GS1":
        di = udi.di
    if di:
        return _with_device(item_by_gtin(ctx, di), device, udi, udi_text)
    for ident in device.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("system") == ctx.options.item_system:
            item = ctx.lookup(ctx.options.items, ident.get("value"))
            return _with_device(Found(item, _charge_for(ctx, item)), device, udi, udi_text)
    raise MissingField(
        f"{where} Device.udiCarrier.deviceIdentifier",
        f"the device's GTIN (or an identifier of {ctx.options.item_system}) names the item",
    )


def _with_device(found: Found, device: dict[str, Any], udi: Udi | None, text: str | None) -> Found:
    return Found(found.item, found.charge, found.unit, device, udi, text)


def device_detail(found: Found) -> dict[str, str | None]:
    """Lot, serial and expiry (``YYYYMMDD``) from the Device, filled in from its UDI."""
    device = found.device or {}
    udi = found.udi
    expiry = fhir_date(device.get("expirationDate"))
    if expiry is None and udi is not None and udi.expiry is not None:
        expiry = udi.expiry.strftime("%Y%m%d")
    return {
        "lot": device.get("lotNumber") or (udi.lot if udi else None),
        "serial": device.get("serialNumber") or (udi.serial if udi else None),
        "expiry": expiry,
        "udi": found.udi_text,
    }


# --------------------------------------------------------------------------- locations


def _location_index(table: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, row in table.rows.items():
        if not isinstance(row, dict):
            continue
        for column in ("location_id", "gln"):
            if row.get(column):
                out.setdefault(str(row[column]), str(key))
    return out


def location(
    ctx: TransformContext, ref: Any, holder: dict[str, Any], resolver: Resolver, where: str
) -> dict[str, Any]:
    """The locations row for a Location reference: by the reference's identifier, the
    Location resource's identifiers, the id in the reference, or the resource's id; each tried
    as the table key (point-of-care code), a location_id or a GLN."""
    if not isinstance(ref, dict):
        raise MissingField(where, "stock moves at the location the supplies went to")
    target = resolver.resolve(ref, holder)
    candidates: list[str] = []
    ident = ref.get("identifier")
    if isinstance(ident, dict) and ident.get("value"):
        candidates.append(str(ident["value"]))
    for own in (target or {}).get("identifier") or []:
        if isinstance(own, dict) and own.get("value"):
            candidates.append(str(own["value"]))
    text = ref.get("reference")
    if isinstance(text, str) and text and not text.startswith(("urn:", "#")):
        candidates.append(text.rstrip("/").rsplit("/", 1)[-1])
    if target is not None and target.get("id"):
        candidates.append(str(target["id"]))
    if not candidates:
        raise MissingField(f"{where}.reference", "a Location id or identifier")
    table = ctx.options.locations
    index = _index(ctx, table, "location", _location_index)
    for candidate in candidates:
        row = ctx.lookup(table, candidate, None)
        if row is None and candidate in index:
            row = ctx.lookup(table, index[candidate])
        if row is not None:
            return row
    raise MappingMiss(table, candidates[0])
