"""The charge a billing system receives: an HL7 DFT^P03 with one FT1, built from an event."""

from __future__ import annotations

import hashlib
import time

from engine.codecs.hl7v2 import CONTENT_TYPE, Separators, escape
from engine.domains.ledger.records import ConsumptionEvent

SEP = Separators()


def charge_control_id(event: ConsumptionEvent) -> str:
    """MSH-10 derived from the event, so a resend of the same charge has the same id and the
    billing system's own duplicate check holds (20 characters)."""
    digest = hashlib.sha256(event.business_key.encode()).hexdigest()[:16]
    return f"CHG{'R' if event.kind == 'credit' else 'C'}{digest}"


def charge_dft(
    event: ConsumptionEvent,
    *,
    sending_application: str = "WHARF",
    sending_facility: str = "",
    receiving_application: str = "BILLING",
    receiving_facility: str = "",
    version: str = "2.5.1",
    now: float | None = None,
) -> tuple[bytes, str]:
    """A DFT^P03 posting ``event`` against its encounter, quantity in the billing unit,
    stamped at ``now`` (the booking's time; the clock's when None)."""
    e = lambda value: escape(str(value or ""), SEP)  # noqa: E731
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(now))
    qty = event.billing_quantity if event.billing_quantity is not None else event.quantity
    ttype = "CD" if event.kind == "credit" else "CG"
    ft1 = [
        "FT1",
        "1",
        e(event.source_line),
        "",
        e(event.service_time),
        stamp,
        ttype,
        f"{e(event.charge_code)}^^99CDM",
        "",
        "",
        str(qty),
        # Priced from the CDM when known (FT1-11 extended, FT1-12 unit); empty = billing prices.
        f"{event.unit_price * qty}^{event.currency}" if event.unit_price is not None else "",
        f"{event.unit_price}^{event.currency}" if event.unit_price is not None else "",
        "",
        "",
        "",
        e(event.location_id),
        "",
        "",
        "",
        e(event.performer),
        "",
        "",
        "",
        "",
        f"{e(event.hcpcs)}^^HCPCS" if event.hcpcs else "",
    ]
    segments = [
        "|".join(
            [
                "MSH",
                SEP.encoding_characters,
                sending_application,
                sending_facility,
                receiving_application,
                receiving_facility,
                stamp,
                "",
                "DFT^P03^DFT_P03",
                charge_control_id(event),
                "P",
                version,
            ]
        ),
        f"EVN|P03|{stamp}",
        f"PID|1||{e(event.patient)}",
        "|".join(["PV1", "1", "", e(event.location_id)] + [""] * 15 + [e(event.encounter)]),
        "|".join(ft1),
    ]
    if event.lot or event.serial:
        segments.append(f"ZUD|1|{e(event.udi)}||{e(event.lot)}|{e(event.serial)}|{e(event.expiry)}")
    return ("\r".join(segments) + "\r").encode(), CONTENT_TYPE


def charge_item(event: ConsumptionEvent, version: str = "R5") -> tuple[bytes, str]:
    """A FHIR ChargeItem (R5 or R4B shape) for ``event``, validated with fhir.resources: the
    CDM code, the patient, the encounter, the quantity in the billing unit, the item as the
    product, and the usage line as the identifier (so a resend is recognisable). An event from
    a FHIR SupplyDelivery (``source_ref`` set) gets :func:`_fhir_sourced_charge_item`."""
    import json

    if event.source_ref is not None:
        return _fhir_sourced_charge_item(event, version)
    qty = event.billing_quantity if event.billing_quantity is not None else event.quantity
    body: dict[str, object] = {
        "resourceType": "ChargeItem",
        "identifier": [{"system": "urn:wharf:usage-line", "value": event.business_key}],
        "status": "billable",
        "code": {"coding": [{"system": "urn:wharf:cdm", "code": event.charge_code}]},
        "subject": {"identifier": {"system": "urn:wharf:mrn", "value": event.patient or "unknown"}},
        "occurrenceDateTime": _fhir_date(event.service_time),
        "quantity": {
            "value": float(-qty if event.kind == "credit" else qty),
            "unit": event.billing_uom or event.uom,
        },
    }
    encounter = {"identifier": {"system": "urn:wharf:encounter", "value": event.encounter}}
    product = {"coding": [{"system": "urn:wharf:item", "code": event.item_id}]}
    if version == "R4B":
        from fhir.resources.R4B.chargeitem import ChargeItem

        body["context"] = encounter
        body["productCodeableConcept"] = product
    else:
        from fhir.resources.chargeitem import ChargeItem

        body["encounter"] = encounter
        body["product"] = [{"concept": product}]
    signed = -qty if event.kind == "credit" else qty
    ChargeItem.model_validate(  # raises on a shape the standard does not allow
        {**body, "quantity": {"value": signed, "unit": body["quantity"]["unit"]}}  # type: ignore[index]
    )
    # FHIR decimals are JSON numbers: write the Decimal's digits, never a float's.
    text = json.dumps(body).replace('"__QTY__"', str(signed))
    return text.encode(), "application/fhir+json"


HCPCS_SYSTEM = "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"


def _fhir_sourced_charge_item(event: ConsumptionEvent, version: str) -> tuple[bytes, str]:
    """The ChargeItem for an event from a FHIR SupplyDelivery: the sender's own references for
    subject, encounter (R4B ``context``) and ``account``; ``service`` back to the SupplyDelivery
    and the Procedure (R5 CodeableReference, R4B Reference); the Device as ``product`` when
    known (R5 with the item concept; R4B ``productReference``, else the item as
    ``productCodeableConcept``); the CDM and HCPCS codes; the billing quantity; and the CDM
    price: R5 ``unitPriceComponent`` / ``totalPriceComponent``, R4B ``priceOverride`` (the
    total). Decimals are written with their exact digits. A credit is a negative quantity and
    amount under its own identifier."""
    import json
    from decimal import Decimal

    qty = event.billing_quantity if event.billing_quantity is not None else event.quantity
    signed = -qty if event.kind == "credit" else qty
    numbers: dict[str, Decimal] = {}

    def number(value: Decimal) -> str:  # a placeholder, replaced by the digits at the end
        token = f"__WHARF_DECIMAL_{len(numbers)}__"
        numbers[token] = value
        return token

    codings = [{"system": "urn:wharf:cdm", "code": event.charge_code}]
    if event.hcpcs:
        codings.append({"system": HCPCS_SYSTEM, "code": event.hcpcs})
    body: dict[str, object] = {
        "resourceType": "ChargeItem",
        "identifier": [{"system": "urn:wharf:usage-line", "value": event.business_key}],
        "status": "billable",
        "code": {"coding": codings},
        "subject": event.patient_ref
        or {"identifier": {"system": "urn:wharf:mrn", "value": event.patient or "unknown"}},
        "occurrenceDateTime": _fhir_date(event.service_time),
        "quantity": {"value": number(signed), "unit": event.billing_uom or event.uom},
    }
    encounter = event.encounter_ref or {
        "identifier": {"system": "urn:wharf:encounter", "value": event.encounter}
    }
    concept = {"coding": [{"system": "urn:wharf:item", "code": event.item_id}]}
    services = [ref for ref in (event.source_ref, event.procedure_ref) if ref]
    total = None if event.unit_price is None else event.unit_price * signed
    if version == "R4B":
        from fhir.resources.R4B.chargeitem import ChargeItem

        body["context"] = encounter
        if total is not None:
            body["priceOverride"] = {"value": number(total), "currency": event.currency}
            body["overrideReason"] = "chargemaster price"
        if event.device_ref:
            body["productReference"] = event.device_ref
        else:
            body["productCodeableConcept"] = concept
        body["service"] = services
    else:
        from fhir.resources.chargeitem import ChargeItem

        body["encounter"] = encounter
        if event.cost_center:
            body["costCenter"] = {
                "type": "Organization",
                "identifier": {"system": "urn:wharf:cost-center", "value": event.cost_center},
            }
        if event.unit_price is not None and total is not None:
            body["unitPriceComponent"] = {
                "type": "base",
                "amount": {"value": number(event.unit_price), "currency": event.currency},
            }
            body["totalPriceComponent"] = {
                "type": "base",
                "amount": {"value": number(total), "currency": event.currency},
            }
        body["service"] = [{"reference": ref} for ref in services]
        product: dict[str, object] = {"concept": concept}
        if event.device_ref:
            product["reference"] = event.device_ref
        body["product"] = [product]
    if event.account:
        body["account"] = [event.account]
    text = json.dumps(body)

    def exact(obj: dict[str, object]) -> dict[str, object]:
        return {k: numbers.get(v, v) if isinstance(v, str) else v for k, v in obj.items()}

    # raises on a shape the standard does not allow
    ChargeItem.model_validate(json.loads(text, object_hook=exact))
    for token, value in numbers.items():  # FHIR decimals are JSON numbers: exact digits
        text = text.replace(f'"{token}"', format(value, "f"))
    return text.encode(), "application/fhir+json"


def _fhir_date(hl7: str) -> str:
    digits = "".join(ch for ch in hl7 if ch.isdigit())
    if len(digits) >= 8:
        return f"{digits[:4]}-{digits[4:6]}-{digits[6:8]}"
    return "1970-01-01"
