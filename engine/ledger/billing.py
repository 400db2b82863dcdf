"""The charge a billing system receives: an HL7 DFT^P03 with one FT1, built from an event."""

from __future__ import annotations

import hashlib
import time

from engine.codecs.hl7v2 import CONTENT_TYPE, Separators, escape
from engine.ledger.records import ConsumptionEvent

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
) -> tuple[bytes, str]:
    """A DFT^P03 posting ``event`` against its encounter, quantity in the billing unit."""
    e = lambda value: escape(str(value or ""), SEP)  # noqa: E731
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
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
    product, and the usage line as the identifier (so a resend is recognisable)."""
    import json

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


def _fhir_date(hl7: str) -> str:
    digits = "".join(ch for ch in hl7 if ch.isdigit())
    if len(digits) >= 8:
        return f"{digits[:4]}-{digits[4:6]}-{digits[6:8]}"
    return "1970-01-01"
