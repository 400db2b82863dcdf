"""What the X12 transforms hand to the procurement book (``ctx.book``), booked in the message's
own commit by :mod:`engine.domains.procurement.book`: a purchase order to send as an 850, and an
inbound interchange (its acknowledgement to send, the documents to apply, or the reason it is
refused).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any


@dataclass(frozen=True)
class PoLine:
    """A PO line as ordered, with its quantity also in the item's stocking (base) unit."""

    line: str
    item_id: str
    quantity: Decimal
    uom: str
    unit_price: Decimal
    base_quantity: Decimal
    base_uom: str
    vendor_item: str = ""
    gtin: str = ""
    bill_only: bool = False


@dataclass(frozen=True)
class PoRelease:
    """A released purchase order: its 850 segments (without envelope) go to ``partner``."""

    partner: str
    po_number: str
    vendor: str
    location_id: str
    currency: str
    lines: tuple[PoLine, ...]
    segments: tuple[tuple[Any, ...], ...]  # ST..SE body from po850.segments_850, no ST/SE
    business_key: str = ""

    def __post_init__(self) -> None:
        if not self.business_key:
            object.__setattr__(self, "business_key", f"po:{self.partner}:{self.po_number}")


@dataclass(frozen=True)
class InboundInterchange:
    """One inbound interchange, parsed and checked; applied by the book once per ISA13."""

    partner: str  # trading partner id ("" when the sender is unknown)
    sender: tuple[str, str]  # ISA05, ISA06
    receiver: tuple[str, str]  # ISA07, ISA08
    isa13: str
    sets: tuple[tuple[str, str, str], ...]  # (GS06, ST01, ST02) of every set
    # engine.x12.results.InterchangeResult: what the acknowledgements are written from
    result: Any = None
    # accepted documents with their set and group: (PurchaseOrderAck | ShipNotice | Invoice,
    # the TransactionSet, GS06)
    documents: tuple[tuple[Any, Any, str], ...] = ()
    refused: str = ""  # why nothing of it is applied (a broken envelope)
    received_acks: tuple[ReceivedAck, ...] = ()
    # the credential it came with (``sftp:ACCOUNT``, ``token:NAME``, ``tls:CN``; None: none,
    # a local folder) and the partner whose ISA id it carries ("" when none); with an origin,
    # ``partner`` is the partner bound to the origin, who gets the answers
    origin: str | None = None
    claimed: str = ""
    # the envelope could not be read at all (no ISA13 to answer with a TA1): why
    unreadable: str = ""
    sha256: str = ""  # of the whole file, named in a refusal


@dataclass(frozen=True)
class ReceivedAck:
    """A 997/999 or TA1 the partner sent about one of our interchanges."""

    kind: str  # "997" | "999" | "TA1"
    control_number: str  # AK102 (our GS06) or TA101 (our ISA13)
    code: str  # AK901/IK901 (A, E, P, R...) or TA104 (A, E, R)
    details: tuple[str, ...] = field(default_factory=tuple)  # AK3/AK4/IK3/IK4 or TA105 text


@dataclass(frozen=True)
class ErpReceiptLine:
    """One PO line received at the dock, in one of our units."""

    po_line: str
    quantity: Decimal
    uom: str
    lot: str | None = None
    serial: str | None = None
    expiry: str | None = None


@dataclass(frozen=True)
class ErpReceipt:
    """A goods receipt the ERP posted (for partners whose ASN is not the receipt)."""

    receipt_id: str
    po_number: str
    lines: tuple[ErpReceiptLine, ...]


@dataclass(frozen=True)
class ErpReturn:
    """Goods the ERP sent back to the vendor (a return to vendor, RTV) against a PO: they come
    off what was received and off on-hand, and a credit memo for them matches them."""

    return_id: str
    po_number: str
    lines: tuple[ErpReceiptLine, ...]
