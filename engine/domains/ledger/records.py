"""Ledger records. Quantities are Decimals with a unit; never floats."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any


@dataclass(frozen=True)
class ConsumptionEvent:
    """One supply line used (or credited) at a location, for an encounter."""

    business_key: str  # sender's line id (FT1-2) + item + service date: the same line is one event
    kind: str  # "usage" | "credit"
    item_id: str
    location_id: str
    quantity: Decimal  # in the stocking unit, positive; a credit puts stock back
    uom: str
    encounter: str
    service_time: str
    cost_center: str = ""
    gl_account: str = ""
    chargeable: bool = False
    charge_code: str | None = None
    billing_quantity: Decimal | None = None
    billing_uom: str | None = None
    unit_price: Decimal | None = None  # per billing unit, from the CDM: money is never a float
    currency: str = "USD"
    revenue_code: str | None = None
    hcpcs: str | None = None
    patient: str | None = None
    performer: str | None = None  # performing physician's id (FT1-20.1), never a name
    procedure: str | None = None
    orderer: str | None = None  # ordering physician's id (FT1-21.1)
    payer: str | None = None  # IN1-3 insurance company id, else PV1-20 financial class
    payer_kind: str | None = None  # "insurer" | "financial_class"
    source_line: str = ""
    reverses: str | None = None  # business key of the line a credit reverses
    lot: str | None = None
    serial: str | None = None
    udi: str | None = None
    expiry: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    # From a FHIR sender: FHIR References (``reference`` and/or ``identifier``) that the
    # ChargeItem carries back (subject, encounter, account, service, product). None for HL7.
    patient_ref: dict[str, Any] | None = None
    encounter_ref: dict[str, Any] | None = None
    account: dict[str, Any] | None = None
    source_ref: dict[str, Any] | None = None  # the SupplyDelivery the event comes from
    procedure_ref: dict[str, Any] | None = None
    device_ref: dict[str, Any] | None = None
    # A credit that only counts when the event it reverses was booked (a FHIR delivery marked
    # entered-in-error): without the original it books nothing.
    reverses_if_booked: bool = False


@dataclass(frozen=True)
class RequisitionRequest:
    """A requisition a sender asked for (a FHIR SupplyRequest), booked once per business key
    into the ledger's requisitions and sent to the requisition destination."""

    business_key: str  # the request's identifier, system|value
    item_id: str
    location_id: str
    quantity: Decimal  # in the stocking unit
    uom: str
    order_quantity: Decimal  # as asked for, in ``order_uom``
    order_uom: str
    need_by: str | None = None
    priority: str | None = None
    requester: str | None = None
    reason: str = ""
    source_ref: dict[str, Any] | None = None


@dataclass(frozen=True)
class ParPolicy:
    """When on-hand at a location falls below ``reorder_point``, order
    max(``order_qty``, par - on hand) in stocking units, rounded up to whole packs of
    ``pack_size`` stocking units; ``uom`` is the pack's unit (the order unit)."""

    location_id: str
    item_id: str
    par: Decimal
    reorder_point: Decimal
    order_qty: Decimal
    uom: str
    pack_size: int = 1


@dataclass(frozen=True)
class LedgerRoutes:
    """Which destinations of the channel take each effect (None: not sent)."""

    issue: str | None = None
    charge: str | None = None
    requisition: str | None = None


_DECIMALS = ("quantity", "billing_quantity", "unit_price")


def event_from_dict(data: dict[str, Any]) -> ConsumptionEvent:
    """A :class:`ConsumptionEvent` back from its JSON form (decimals were written as text)."""
    values = dict(data)
    for name in _DECIMALS:
        if values.get(name) is not None:
            values[name] = Decimal(str(values[name]))
    return ConsumptionEvent(**values)


@dataclass(frozen=True)
class HeldCredit:
    """A credit for a line the ledger never booked, waiting for a person (ORPHAN_CREDIT)."""

    id: int
    business_key: str
    reverses: str
    channel: str
    status: str  # held | released | rejected
    message_id: str
    correlation_id: str
    event: ConsumptionEvent
    created_at: float


@dataclass(frozen=True)
class Posting:
    """A stock issue (or return) line sent to an ERP in the issue document ``issue_key``: what
    the ERP is to post, pending until the delivery settles (inventory-to-finance
    reconciliation). ``quantity`` is issued quantity: a return is negative."""

    event_id: int
    event_key: str
    issue_key: str
    destination: str
    location_id: str
    item_id: str
    quantity: Decimal
    uom: str
    message_id: str
    created_at: float


@dataclass(frozen=True)
class PostingOutcome:
    """The ERP's answer to one issue document: ``posted`` (with the document number it gave),
    ``dead`` (dead-lettered) or ``rejected`` (refused by the ERP), with the reason; a posted
    line is valued at ``unit_cost(item)`` (the item master's) when that is known."""

    status: str
    at: float
    document: str | None = None
    reason: str | None = None
    unit_cost: Callable[[str], Decimal | None] | None = None
