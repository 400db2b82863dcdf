"""The 855 purchase order acknowledgment reader (:func:`read_po_ack`) and its types."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from engine.x12.documents.common import (
    DateRef,
    LineAck,
    Party,
    ProductIds,
    Reference,
    _date,
    _dtm,
    _el,
    _err,
    _expect,
    _Identified,
    _int,
    _LineBuilder,
    _missing,
    _PartyBuilder,
    _ref,
)
from engine.x12.segments import TransactionSet


@dataclass(frozen=True)
class AckLine(_Identified):
    """A PO1 loop of an 855: the echoed line and its ACK statuses."""

    line_number: str
    quantity: Decimal | None
    unit: str
    unit_price: Decimal | None = None
    price_basis: str = ""
    product_ids: ProductIds = ()
    description: str = ""
    acks: tuple[LineAck, ...] = ()

    @property
    def status(self) -> str:
        """ACK01 of the first ACK, ``""`` when the line has none."""
        return self.acks[0].status if self.acks else ""

    @property
    def kind(self) -> str:
        """The line state: rejected wins, then changed, held, backordered, accepted."""
        kinds = {a.kind for a in self.acks}
        for kind in ("rejected", "changed", "held", "backordered", "accepted"):
            if kind in kinds:
                return kind
        return "unknown" if self.acks else "none"

    @property
    def ship_date(self) -> date | None:
        """The scheduled ship (068) or delivery (067) date of the first ACK carrying one."""
        for ack in self.acks:
            if ack.date is not None and ack.date_qualifier in ("068", "067", "017", "002"):
                return ack.date
        return None


@dataclass(frozen=True)
class PurchaseOrderAck:
    """An 855."""

    po_number: str
    ack_type: str  # BAK02: AC, AD, AE, AK, AT, RD, RJ…
    purpose: str = ""
    po_date: date | None = None
    seller_order: str = ""
    ack_date: date | None = None
    refs: tuple[Reference, ...] = ()
    dates: tuple[DateRef, ...] = ()
    parties: tuple[Party, ...] = ()
    lines: tuple[AckLine, ...] = ()
    line_count: int | None = None
    control_number: str = ""

    @property
    def rejected(self) -> bool:
        """BAK02 says the whole PO is rejected."""
        return self.ack_type in ("RD", "RF", "RJ", "RO", "RV")


def read_po_ack(ts: TransactionSet) -> PurchaseOrderAck:
    """The 855 in ``ts``."""
    _expect(ts, "855")
    bak: list[str] | None = None
    bak_i = 0
    refs: list[Reference] = []
    dates: list[DateRef] = []
    parties: list[_PartyBuilder] = []
    party: _PartyBuilder | None = None
    lines: list[_LineBuilder] = []
    line: _LineBuilder | None = None
    line_count = None
    segments = ts.segments
    for i in range(1, len(segments) - 1):
        seg = segments[i]
        tag = seg[0]
        if party is not None:
            if party.take(seg):
                continue
            party = None
        if tag == "PO1":
            line = _LineBuilder(ts, i)
            lines.append(line)
        elif tag == "CTT":
            line = None
            line_count = _int(ts, i, 1)
        elif line is not None:
            line.take(ts, i)
        elif tag == "BAK":
            bak, bak_i = seg, i
        elif tag == "REF":
            refs.append(_ref(seg))
        elif tag == "DTM":
            dates.append(_dtm(ts, i))
        elif tag == "N1":
            party = _PartyBuilder(seg)
            parties.append(party)
    if bak is None:
        raise _missing(ts, "BAK", "BAK03 is the PO number")
    if not _el(bak, 3):
        raise _err(ts, bak_i, "BAK03 (PO number) is required but empty", 3, "missing_element")
    return PurchaseOrderAck(
        po_number=_el(bak, 3),
        ack_type=_el(bak, 2),
        purpose=_el(bak, 1),
        po_date=_date(ts, bak_i, 4),
        seller_order=_el(bak, 8),
        ack_date=_date(ts, bak_i, 9),
        refs=tuple(refs),
        dates=tuple(dates),
        parties=tuple(p.build() for p in parties),
        lines=tuple(
            AckLine(
                line_number=b.line_number,
                quantity=b.quantity,
                unit=b.unit,
                unit_price=b.unit_price,
                price_basis=b.price_basis,
                product_ids=b.product_ids,
                description=" ".join(b.description),
                acks=tuple(b.acks),
            )
            for b in lines
        ),
        line_count=line_count,
        control_number=ts.control_number,
    )
