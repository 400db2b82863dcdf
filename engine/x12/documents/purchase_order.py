"""The 850 purchase order reader (:func:`read_purchase_order`) and its document types."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from engine.x12.documents.bill_only import BillOnly, BillOnlyMap, _bill_only
from engine.x12.documents.common import (
    DateRef,
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
    _party,
    _PartyBuilder,
    _r,
    _ref,
)
from engine.x12.segments import TransactionSet


@dataclass(frozen=True)
class PurchaseOrderLine(_Identified):
    """A PO1 loop."""

    line_number: str
    quantity: Decimal | None
    unit: str
    unit_price: Decimal | None = None
    price_basis: str = ""
    product_ids: ProductIds = ()
    description: str = ""
    pack: Decimal | None = None  # PO401: inner units per outer
    pack_size: Decimal | None = None  # PO402
    pack_unit: str = ""  # PO403
    lot: str | None = None
    serial: str | None = None
    refs: tuple[Reference, ...] = ()
    dates: tuple[DateRef, ...] = ()
    marks: tuple[tuple[str, str], ...] = ()  # MAN (qualifier, number)
    parties: tuple[Party, ...] = ()  # line-level N1 loops (line ship-to)
    bill_only: BillOnly | None = None

    @property
    def amount(self) -> Decimal | None:
        if self.quantity is None or self.unit_price is None:
            return None
        return self.quantity * self.unit_price


@dataclass(frozen=True)
class PurchaseOrder:
    """An 850."""

    po_number: str
    po_date: date | None
    purpose: str = ""  # BEG01
    po_type: str = ""  # BEG02
    release: str = ""  # BEG04
    contract: str = ""  # BEG06
    currency: str = ""
    refs: tuple[Reference, ...] = ()
    dates: tuple[DateRef, ...] = ()
    parties: tuple[Party, ...] = ()
    lines: tuple[PurchaseOrderLine, ...] = ()
    line_count: int | None = None  # CTT01
    hash_total: Decimal | None = None  # CTT02
    total_amount: Decimal | None = None  # AMT*TT
    bill_only: BillOnly | None = None  # heading-level case data
    control_number: str = ""  # ST02

    @property
    def ship_to(self) -> Party | None:
        return _party(self.parties, "ST")

    @property
    def bill_to(self) -> Party | None:
        return _party(self.parties, "BT")

    @property
    def vendor(self) -> Party | None:
        return _party(self.parties, "VN")

    @property
    def ship_to_gln(self) -> str | None:
        party = self.ship_to
        return party.gln if party else None

    @property
    def is_bill_only(self) -> bool:
        return self.bill_only is not None or any(line.bill_only for line in self.lines)


def read_purchase_order(
    ts: TransactionSet, *, bill_only_map: BillOnlyMap | None = None
) -> PurchaseOrder:
    """The 850 in ``ts``. ``bill_only_map``: where the partner puts implant case data."""
    _expect(ts, "850")
    mapping = bill_only_map or BillOnlyMap()
    beg: list[str] | None = None
    beg_i = 0
    currency = ""
    refs: list[Reference] = []
    dates: list[DateRef] = []
    marks: list[tuple[str, str]] = []
    parties: list[_PartyBuilder] = []
    party: _PartyBuilder | None = None
    lines: list[_LineBuilder] = []
    line: _LineBuilder | None = None
    line_count = hash_total = total = None
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
        elif tag in ("CTT", "AMT"):
            line = None
            if tag == "CTT":
                line_count = _int(ts, i, 1)
                hash_total = _r(ts, i, 2)
            elif _el(seg, 1) == "TT":
                total = _r(ts, i, 2)
        elif line is not None:
            if tag == "N1":  # a line-level N1 loop (line ship-to)
                party = _PartyBuilder(seg)
                line.parties.append(party)
            else:
                line.take(ts, i)
        elif tag == "BEG":
            beg, beg_i = seg, i
        elif tag == "CUR":
            currency = _el(seg, 2)
        elif tag == "REF":
            refs.append(_ref(seg))
        elif tag == "DTM":
            dates.append(_dtm(ts, i))
        elif tag == "MAN":
            marks.append((_el(seg, 1), _el(seg, 2)))
        elif tag == "N1":
            party = _PartyBuilder(seg)
            parties.append(party)
    if beg is None:
        raise _missing(ts, "BEG", "BEG03 is the PO number")
    po_number = _el(beg, 3)
    if not po_number:
        raise _err(ts, beg_i, "BEG03 (PO number) is required but empty", 3, "missing_element")
    header_bill_only = _bill_only(mapping, refs, dates, marks, parties=parties)
    built = []
    for b in lines:
        lot, serial = b.lot_serial()
        built.append(
            PurchaseOrderLine(
                line_number=b.line_number,
                quantity=b.quantity,
                unit=b.unit,
                unit_price=b.unit_price,
                price_basis=b.price_basis,
                product_ids=b.product_ids,
                description=" ".join(b.description),
                pack=b.pack,
                pack_size=b.pack_size,
                pack_unit=b.pack_unit,
                lot=lot,
                serial=serial,
                refs=tuple(b.refs),
                dates=tuple(b.dates),
                marks=tuple(b.marks),
                parties=tuple(p.build() for p in b.parties),
                bill_only=_bill_only(
                    mapping,
                    b.refs,
                    b.dates,
                    b.marks,
                    b.pairs,
                    base=header_bill_only,
                    parties=b.parties,
                ),
            )
        )
    return PurchaseOrder(
        po_number=po_number,
        po_date=_date(ts, beg_i, 5),
        purpose=_el(beg, 1),
        po_type=_el(beg, 2),
        release=_el(beg, 4),
        contract=_el(beg, 6),
        currency=currency,
        refs=tuple(refs),
        dates=tuple(dates),
        parties=tuple(p.build() for p in parties),
        lines=tuple(built),
        line_count=line_count,
        hash_total=hash_total,
        total_amount=total,
        bill_only=header_bill_only,
        control_number=ts.control_number,
    )
