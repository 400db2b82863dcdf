"""Bill-only (consignment implant) case data on an 850: which REF, DTM, MAN and N1 carry
the lot, serial, case, patient, procedure date, surgeon and UDI (DOMAIN §3.3), per partner.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date

from engine.x12.documents.common import DateRef, Reference, _PartyBuilder

BILL_ONLY_FIELDS = (
    "lot",
    "serial",
    "case_id",
    "patient_id",
    "procedure_date",
    "physician",
    "physician_npi",
    "udi",
)


@dataclass(frozen=True)
class BillOnly:
    """Case data a bill-only / consignment implant line carries (DOMAIN §3.3)."""

    lot: str | None = None
    serial: str | None = None
    case_id: str | None = None
    patient_id: str | None = None
    procedure_date: date | None = None
    physician: str | None = None  # N1*72 name (the surgeon)
    physician_npi: str | None = None  # N1*72 N104 when N103 is XX
    udi: str | None = None


@dataclass(frozen=True)
class BillOnlyMap:
    """Which REF / DTM / MAN qualifiers carry bill-only fields (per partner; see defaults).

    Values are :data:`BILL_ONLY_FIELDS`. Defaults: ``REF*LT`` lot, ``REF*SE`` serial,
    ``REF*EA`` medical record number (patient_id), ``DTM*472`` (service) procedure date, the
    ``N1*72`` party (surgeon: name, NPI when N103 is ``XX``). Lot and serial also come from
    ``LT``/``SN`` product-id pairs on PO1.
    """

    refs: Mapping[str, str] = field(
        default_factory=lambda: {"LT": "lot", "SE": "serial", "EA": "patient_id"}
    )
    dates: Mapping[str, str] = field(default_factory=lambda: {"472": "procedure_date"})
    marks: Mapping[str, str] = field(default_factory=dict)
    physician_entity: str = "72"

    def __post_init__(self) -> None:
        for name, table in (("refs", self.refs), ("dates", self.dates), ("marks", self.marks)):
            for qualifier, target in table.items():
                if target not in BILL_ONLY_FIELDS:
                    raise ValueError(
                        f"BillOnlyMap.{name}[{qualifier!r}] must be one of "
                        f"{', '.join(BILL_ONLY_FIELDS)} (got {target!r})"
                    )
        for qualifier, target in self.dates.items():
            if target != "procedure_date":
                raise ValueError(
                    f"BillOnlyMap.dates[{qualifier!r}] must be 'procedure_date' (got {target!r})"
                )


def _bill_only(
    mapping: BillOnlyMap,
    refs: list[Reference],
    dates: list[DateRef],
    marks: list[tuple[str, str]],
    pairs: list[tuple[str, str]] | tuple[()] = (),
    base: BillOnly | None = None,
    parties: list[_PartyBuilder] | tuple[()] = (),
) -> BillOnly | None:
    values: dict[str, object] = {}
    for party in parties:
        if mapping.physician_entity and party.entity == mapping.physician_entity:
            if party.name:
                values.setdefault("physician", party.name)
            if party.id and party.id_qualifier == "XX":
                values.setdefault("physician_npi", party.id)
    for qual, value in pairs:
        if qual == "LT":
            values.setdefault("lot", value)
        elif qual == "SN":
            values.setdefault("serial", value)
    for ref in refs:
        target = mapping.refs.get(ref.qualifier)
        if target and ref.value:
            values.setdefault(target, ref.value)
    for dtm in dates:
        target = mapping.dates.get(dtm.qualifier)
        if target and dtm.date:
            values.setdefault(target, dtm.date)
    for qual, value in marks:
        target = mapping.marks.get(qual)
        if target and value:
            values.setdefault(target, value)
    if base is not None:
        for name in BILL_ONLY_FIELDS:
            inherited = getattr(base, name)
            if inherited is not None:
                values.setdefault(name, inherited)
    return BillOnly(**values) if values else None  # type: ignore[arg-type]
