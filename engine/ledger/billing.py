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
        "",
        "",
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
