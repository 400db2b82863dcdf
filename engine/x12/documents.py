"""Readers from a tokenized transaction set to frozen documents: 850, 855, 856 and 810.

Numbers are :class:`decimal.Decimal`, never float, and read per element type (DOMAIN §3.2
"Decimal rule"): ``R`` elements (PO102, PO104, IT102, IT104, SN102, TXI02, AMT02…) carry their
own decimal point; ``N2`` elements (TDS01-04, SAC05, ITD08) are implied-decimal integers, so
``TDS*26500`` is 265.00 and a point inside an N2 element is an error, not a guess.

The readers accept what they do not use (an unknown segment is skipped) and missing optional
segments; a missing *required* segment (BEG, BAK, BSN, BIG) or a malformed number/date raises
:class:`engine.errors.X12DocumentError` naming the segment, its position in the set (ST = 1)
and the element, so a 997/999 AK3/AK4 can be built from it.

Product ids are kept as ``(qualifier, id)`` pairs in sending order (element 235 qualifiers:
``VC``/``VN``/``VP`` vendor, ``IN``/``BP`` buyer, ``UK`` GTIN-14, ``UP`` UPC, ``EN`` EAN,
``HI`` HIBC, ``N4`` NDC…). Lot (``LT``) and serial (``SN``) pairs are read into ``lot`` /
``serial`` and left out of ``product_ids``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal, InvalidOperation

from engine.errors import X12DocumentError
from engine.x12.segments import TransactionSet

__all__ = [
    "ACK_STATUS",
    "BILL_ONLY_FIELDS",
    "AckLine",
    "BillOnly",
    "BillOnlyMap",
    "Charge",
    "DateRef",
    "Invoice",
    "InvoiceLine",
    "LineAck",
    "Party",
    "PurchaseOrder",
    "PurchaseOrderAck",
    "PurchaseOrderLine",
    "Reference",
    "ShipLine",
    "ShipNotice",
    "Tax",
    "Terms",
    "gtin14",
    "read_document",
    "read_invoice",
    "read_po_ack",
    "read_purchase_order",
    "read_ship_notice",
    "sscc_of",
]

ProductIds = tuple[tuple[str, str], ...]
_LOT_SERIAL = ("LT", "SN")

# ACK01 line item status (element 668) → the PO line state it means.
ACK_STATUS: dict[str, str] = {
    "IA": "accepted",
    "AC": "accepted",  # accepted and shipped
    "AR": "accepted",  # accepted and released for shipment
    "IB": "backordered",
    "IC": "changed",
    "IP": "changed",  # price changed
    "IQ": "changed",  # quantity changed
    "DR": "changed",  # date rescheduled
    "IS": "changed",  # substitution
    "ID": "rejected",  # deleted
    "IR": "rejected",
    "R1": "rejected",
    "R2": "rejected",
    "R3": "rejected",
    "R4": "rejected",
}

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


# --------------------------------------------------------------------------- value helpers


def _err(ts: TransactionSet, i: int, message: str, element: int | None = None, code: str = ""):
    seg = ts.segments[i]
    return X12DocumentError(
        message,
        segment=seg[0],
        position=i + 1,
        element=element,
        offset=ts.offsets[i],
        code=code or "x12_document",
    )


def _el(seg: list[str], i: int) -> str:
    return seg[i] if i < len(seg) else ""


def _r(ts: TransactionSet, i: int, j: int) -> Decimal | None:
    """Element ``j`` of segment ``i`` as an R (explicit decimal) number, None when empty."""
    seg = ts.segments[i]
    text = seg[j] if j < len(seg) else ""
    if not text:
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        value = None
    if value is None or not value.is_finite() or "_" in text or text.strip() != text:
        raise _err(ts, i, f"{seg[0]}{j:02d} must be a decimal number (got {text!r})", j, "number")
    return value


def _n(ts: TransactionSet, i: int, j: int, decimals: int) -> Decimal | None:
    """Element ``j`` as an implied-decimal integer (N0, N2…), None when empty."""
    seg = ts.segments[i]
    text = seg[j] if j < len(seg) else ""
    if not text:
        return None
    digits = text[1:] if text[0] == "-" else text
    if not (digits.isascii() and digits.isdigit()):
        raise _err(
            ts,
            i,
            f"{seg[0]}{j:02d} must be an integer with {decimals} implied decimals "
            f"(type N{decimals}, got {text!r})",
            j,
            "number",
        )
    return Decimal(text).scaleb(-decimals) if decimals else Decimal(text)


def _date(ts: TransactionSet, i: int, j: int) -> date | None:
    """Element ``j`` as a date CCYYMMDD (or YYMMDD), None when empty."""
    seg = ts.segments[i]
    text = seg[j] if j < len(seg) else ""
    if not text:
        return None
    try:
        if len(text) == 8 and text.isdigit():
            return date(int(text[:4]), int(text[4:6]), int(text[6:]))
        if len(text) == 6 and text.isdigit():
            return date(2000 + int(text[:2]), int(text[2:4]), int(text[4:]))
    except ValueError:
        pass
    raise _err(ts, i, f"{seg[0]}{j:02d} must be a date CCYYMMDD (got {text!r})", j, "date")


def _pairs(seg: list[str], start: int) -> list[tuple[str, str]]:
    """Qualifier/id pairs from element ``start`` on; empty pairs are skipped."""
    out = []
    for k in range(start, len(seg) - 1, 2):
        q, v = seg[k], seg[k + 1]
        if q and v:
            out.append((q, v))
    return out


def gtin14(qualifier: str, value: str) -> str | None:
    """The GTIN-14 for a ``UK`` (GTIN-14), ``EN`` (EAN-13) or ``UP`` (UPC-A) id, else None."""
    if qualifier in ("UK", "EN", "UP") and value.isascii() and value.isdigit():
        if len(value) <= 14:
            return value.zfill(14)
    return None


class _Identified:
    """Product id look-ups shared by the line types (``product_ids`` field)."""

    product_ids: ProductIds

    def product_id(self, *qualifiers: str) -> str | None:
        """The first id sent under one of ``qualifiers`` (in the order given)."""
        for q in qualifiers:
            for qual, value in self.product_ids:
                if qual == q:
                    return value
        return None

    @property
    def vendor_item(self) -> str | None:
        return self.product_id("VC", "VN", "VP")

    @property
    def buyer_item(self) -> str | None:
        return self.product_id("IN", "BP")

    @property
    def gtin(self) -> str | None:
        for qual in ("UK", "EN", "UP"):
            value = self.product_id(qual)
            if value is not None:
                return gtin14(qual, value)
        return None


# --------------------------------------------------------------------------- shared parts


@dataclass(frozen=True)
class Reference:
    """REF: qualifier (element 128), value, description."""

    qualifier: str
    value: str
    description: str = ""


@dataclass(frozen=True)
class DateRef:
    """DTM: qualifier (element 374) and date."""

    qualifier: str
    date: date | None
    time: str = ""


@dataclass(frozen=True)
class Party:
    """An N1 loop: entity (BT, ST, VN, RE, SF…), name, id qualifier/id, address."""

    entity: str
    name: str = ""
    id_qualifier: str = ""
    id: str = ""
    address: tuple[str, ...] = ()
    city: str = ""
    state: str = ""
    postal_code: str = ""
    country: str = ""
    refs: tuple[Reference, ...] = ()

    @property
    def gln(self) -> str | None:
        """The GLN when N103 is ``UL``."""
        return self.id if self.id_qualifier == "UL" and self.id else None


@dataclass(frozen=True)
class Charge:
    """SAC: allowance (``A``), charge (``C``) or no charge (``N``); ``amount`` from N2 SAC05."""

    indicator: str
    code: str
    amount: Decimal | None = None
    percent: Decimal | None = None
    rate: Decimal | None = None
    quantity: Decimal | None = None
    unit: str = ""
    description: str = ""

    @property
    def signed_amount(self) -> Decimal:
        """What the charge adds to the invoice: + charge, − allowance, 0 otherwise."""
        amount = self.amount or Decimal(0)
        if self.indicator == "C":
            return amount
        if self.indicator == "A":
            return -amount
        return Decimal(0)


@dataclass(frozen=True)
class Tax:
    """TXI: tax type (element 963), amount (R), percent (R)."""

    type: str
    amount: Decimal | None = None
    percent: Decimal | None = None


@dataclass(frozen=True)
class Terms:
    """ITD: terms type, basis, discount percent/days/due date, net days/due date."""

    type: str = ""
    basis: str = ""
    discount_percent: Decimal | None = None
    discount_due: date | None = None
    discount_days: int | None = None
    net_due: date | None = None
    net_days: int | None = None
    discount_amount: Decimal | None = None
    description: str = ""


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


def _expect(ts: TransactionSet, set_id: str) -> None:
    if ts.id != set_id:
        raise X12DocumentError(
            f"expected transaction set {set_id} (got ST01 {ts.id!r})",
            segment="ST",
            position=1,
            element=1,
            offset=ts.offsets[0],
            code="x12_document",
        )


def _missing(ts: TransactionSet, segment: str, what: str) -> X12DocumentError:
    return X12DocumentError(
        f"transaction set {ts.id} {ts.control_number} must have a {segment} segment ({what})",
        segment=segment,
        position=None,
        offset=ts.offsets[0],
        code="missing_segment",
    )


def _ref(seg: list[str]) -> Reference:
    return Reference(_el(seg, 1), _el(seg, 2), _el(seg, 3))


def _dtm(ts: TransactionSet, i: int) -> DateRef:
    seg = ts.segments[i]
    return DateRef(_el(seg, 1), _date(ts, i, 2), _el(seg, 3))


def _charge(ts: TransactionSet, i: int) -> Charge:
    seg = ts.segments[i]
    return Charge(
        indicator=_el(seg, 1),
        code=_el(seg, 2),
        amount=_n(ts, i, 5, 2),
        percent=_r(ts, i, 7),
        rate=_r(ts, i, 8),
        quantity=_r(ts, i, 10),
        unit=_el(seg, 9),
        description=_el(seg, 15),
    )


def _tax(ts: TransactionSet, i: int) -> Tax:
    seg = ts.segments[i]
    return Tax(_el(seg, 1), _r(ts, i, 2), _r(ts, i, 3))


def _int(ts: TransactionSet, i: int, j: int) -> int | None:
    value = _n(ts, i, j, 0)
    return None if value is None else int(value)


def _description(seg: list[str]) -> str:
    """PID05 of a free-form (F) PID; for a structured PID, its code PID04."""
    return _el(seg, 5) or _el(seg, 4)


class _PartyBuilder:
    """Collects one N1 loop (N1, N2, N3, N4, REF, PER)."""

    def __init__(self, seg: list[str]) -> None:
        self.entity = _el(seg, 1)
        self.name = _el(seg, 2)
        self.id_qualifier = _el(seg, 3)
        self.id = _el(seg, 4)
        self.address: list[str] = []
        self.city = self.state = self.postal = self.country = ""
        self.refs: list[Reference] = []

    def take(self, seg: list[str]) -> bool:
        """Absorb an N2/N3/N4/REF/PER of the loop; False when ``seg`` is not part of it."""
        tag = seg[0]
        if tag == "N2":
            self.name = " ".join(x for x in (self.name, *seg[1:]) if x)
        elif tag == "N3":
            self.address.extend(x for x in seg[1:] if x)
        elif tag == "N4":
            self.city, self.state = _el(seg, 1), _el(seg, 2)
            self.postal, self.country = _el(seg, 3), _el(seg, 4)
        elif tag == "REF":
            self.refs.append(_ref(seg))
        elif tag != "PER":
            return False
        return True

    def build(self) -> Party:
        return Party(
            entity=self.entity,
            name=self.name,
            id_qualifier=self.id_qualifier,
            id=self.id,
            address=tuple(self.address),
            city=self.city,
            state=self.state,
            postal_code=self.postal,
            country=self.country,
            refs=tuple(self.refs),
        )


def _party(parties: tuple[Party, ...], entity: str) -> Party | None:
    for party in parties:
        if party.entity == entity:
            return party
    return None


# --------------------------------------------------------------------------- 850


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


class _LineBuilder:
    """Fields of a PO1/IT1 loop being read."""

    def __init__(self, ts: TransactionSet, i: int) -> None:
        seg = ts.segments[i]
        self.line_number = _el(seg, 1)
        self.quantity = _r(ts, i, 2)
        self.unit = _el(seg, 3)
        self.unit_price = _r(ts, i, 4)
        self.price_basis = _el(seg, 5)
        pairs = _pairs(seg, 6)
        self.pairs = pairs
        self.product_ids = tuple(p for p in pairs if p[0] not in _LOT_SERIAL)
        self.lot = next((v for q, v in pairs if q == "LT"), None)
        self.serial = next((v for q, v in pairs if q == "SN"), None)
        self.description: list[str] = []
        self.refs: list[Reference] = []
        self.dates: list[DateRef] = []
        self.marks: list[tuple[str, str]] = []
        self.charges: list[Charge] = []
        self.taxes: list[Tax] = []
        self.pack: Decimal | None = None
        self.pack_size: Decimal | None = None
        self.pack_unit = ""
        self.acks: list[LineAck] = []
        self.parties: list[_PartyBuilder] = []

    def take(self, ts: TransactionSet, i: int) -> None:
        seg = ts.segments[i]
        tag = seg[0]
        if tag == "PID":
            text = _description(seg)
            if text:
                self.description.append(text)
        elif tag == "REF":
            self.refs.append(_ref(seg))
        elif tag == "DTM":
            self.dates.append(_dtm(ts, i))
        elif tag == "MAN":
            self.marks.append((_el(seg, 1), _el(seg, 2)))
        elif tag == "PO4":
            self.pack = _n(ts, i, 1, 0)
            self.pack_size = _r(ts, i, 2)
            self.pack_unit = _el(seg, 3)
        elif tag == "SAC":
            self.charges.append(_charge(ts, i))
        elif tag == "TXI":
            self.taxes.append(_tax(ts, i))
        elif tag == "ACK":
            self.acks.append(
                LineAck(
                    status=_el(seg, 1),
                    quantity=_r(ts, i, 2),
                    unit=_el(seg, 3),
                    date_qualifier=_el(seg, 4),
                    date=_date(ts, i, 5),
                    product_ids=tuple(_pairs(seg, 7)),
                )
            )

    def lot_serial(self) -> tuple[str | None, str | None]:
        lot, serial = self.lot, self.serial
        for ref in self.refs:
            if ref.qualifier == "LT" and lot is None:
                lot = ref.value
            elif ref.qualifier == "SE" and serial is None:
                serial = ref.value
        return lot, serial


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


# --------------------------------------------------------------------------- 855


@dataclass(frozen=True)
class LineAck:
    """An ACK: line status (ACK01), quantity/unit and date it applies to."""

    status: str
    quantity: Decimal | None = None
    unit: str = ""
    date_qualifier: str = ""
    date: date | None = None
    product_ids: ProductIds = ()

    @property
    def kind(self) -> str:
        """``accepted`` | ``backordered`` | ``changed`` | ``rejected`` | ``unknown``."""
        return ACK_STATUS.get(self.status, "unknown")


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
        """The line state: rejected wins, then changed, backordered, accepted."""
        kinds = {a.kind for a in self.acks}
        for kind in ("rejected", "changed", "backordered", "accepted"):
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


# --------------------------------------------------------------------------- 856


@dataclass(frozen=True)
class ShipLine(_Identified):
    """One expected receipt line of an 856 (an I-level HL, split per serial / per pack)."""

    po_number: str | None
    po_line: str | None
    quantity: Decimal | None
    unit: str
    product_ids: ProductIds = ()
    lot: str | None = None
    serial: str | None = None
    expiry: date | None = None
    manufactured: date | None = None
    sscc: str | None = None
    description: str = ""
    ordered_quantity: Decimal | None = None  # SN104
    ordered_unit: str = ""  # SN105
    po_date: date | None = None
    hl_id: str = ""


@dataclass(frozen=True)
class ShipNotice:
    """An 856, its HL tree flattened into expected receipt lines."""

    shipment_id: str  # BSN02
    date: date | None = None
    time: str = ""
    purpose: str = ""
    structure: str = ""  # BSN05
    carrier: str = ""  # TD503 SCAC
    bill_of_lading: str = ""  # REF*BM
    tracking: str = ""  # REF*CN
    shipped: date | None = None  # DTM*011
    estimated_delivery: date | None = None  # DTM*017
    parties: tuple[Party, ...] = ()
    refs: tuple[Reference, ...] = ()
    lines: tuple[ShipLine, ...] = ()
    hl_count: int | None = None  # CTT01
    hash_total: Decimal | None = None  # CTT02
    control_number: str = ""

    @property
    def ship_to(self) -> Party | None:
        return _party(self.parties, "ST")

    @property
    def ship_from(self) -> Party | None:
        return _party(self.parties, "SF")

    @property
    def po_numbers(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for line in self.lines:
            if line.po_number:
                seen.setdefault(line.po_number)
        return tuple(seen)


class _Node:
    __slots__ = ("children", "id", "index", "level", "parent", "segs")

    def __init__(self, hl_id: str, parent: str, level: str, index: int) -> None:
        self.id = hl_id
        self.parent = parent
        self.level = level
        self.index = index
        self.segs: list[int] = []  # indexes into ts.segments
        self.children: list[_Node] = []


def sscc_of(number: str) -> str:
    """The 18-digit SSCC from a MAN*GM number, with or without its application identifier 00."""
    if len(number) == 20 and number.startswith("00") and number.isdigit():
        return number[2:]
    return number


def read_ship_notice(ts: TransactionSet) -> ShipNotice:
    """The 856 in ``ts``; HL parents are followed through HL02, not file order."""
    _expect(ts, "856")
    segments = ts.segments
    bsn_i: int | None = None
    heading: list[int] = []
    nodes: dict[str, _Node] = {}
    order: list[_Node] = []
    current: _Node | None = None
    hl_count = hash_total = None
    for i in range(1, len(segments) - 1):
        seg = segments[i]
        tag = seg[0]
        if tag == "HL":
            hl_id, parent, level = _el(seg, 1), _el(seg, 2), _el(seg, 3)
            if not hl_id:
                raise _err(ts, i, "HL01 (hierarchical id) is required but empty", 1)
            if hl_id in nodes:
                raise _err(ts, i, f"HL01 {hl_id!r} is used twice in the set", 1)
            if not level:
                raise _err(ts, i, "HL03 (level code S/O/T/P/I) is required but empty", 3)
            if not parent and level != "S" and current is not None:
                parent = current.id  # no HL02: assume the previous level is the parent
            current = _Node(hl_id, parent, level, i)
            nodes[hl_id] = current
            order.append(current)
        elif tag == "CTT":
            current = None
            hl_count = _int(ts, i, 1)
            hash_total = _r(ts, i, 2)
        elif current is not None:
            current.segs.append(i)
        elif tag == "BSN":
            bsn_i = i
        else:
            heading.append(i)
    if bsn_i is None:
        raise _missing(ts, "BSN", "BSN02 is the shipment id")
    bsn = segments[bsn_i]
    for node in order:
        if node.parent:
            parent = nodes.get(node.parent)
            if parent is None:
                raise _err(
                    ts, node.index, f"HL02 {node.parent!r} names no HL in this set", 2, "hl_parent"
                )
            parent.children.append(node)

    def ancestors(node: _Node):
        seen = 0
        while node.parent:
            node = nodes[node.parent]
            seen += 1
            if seen > len(nodes):
                raise _err(ts, node.index, f"HL {node.id!r} is its own ancestor (HL02 loop)", 2)
            yield node

    # Shipment-level data: heading segments and every S-level HL.
    shipment_segs = list(heading)
    for node in order:
        if node.level == "S":
            shipment_segs.extend(node.segs)
    carrier = bol = tracking = ""
    shipped = eta = None
    refs: list[Reference] = []
    parties: list[_PartyBuilder] = []
    party: _PartyBuilder | None = None
    for i in shipment_segs:
        seg = segments[i]
        tag = seg[0]
        if party is not None:
            if party.take(seg):
                continue
            party = None
        if tag == "TD5" and not carrier:
            carrier = _el(seg, 3)
        elif tag == "REF":
            ref = _ref(seg)
            refs.append(ref)
            if ref.qualifier == "BM" and not bol:
                bol = ref.value
            elif ref.qualifier == "CN" and not tracking:
                tracking = ref.value
        elif tag == "DTM":
            dtm = _dtm(ts, i)
            if dtm.qualifier == "011" and shipped is None:
                shipped = dtm.date
            elif dtm.qualifier == "017" and eta is None:
                eta = dtm.date
        elif tag == "N1":
            party = _PartyBuilder(seg)
            parties.append(party)

    def first(node: _Node, tag: str, qualifier: str | None = None) -> int | None:
        for i in node.segs:
            seg = segments[i]
            if seg[0] == tag and (qualifier is None or _el(seg, 1) == qualifier):
                return i
        return None

    def sscc(node: _Node) -> str | None:
        i = first(node, "MAN", "GM")
        return sscc_of(_el(segments[i], 2)) if i is not None else None

    lines: list[ShipLine] = []
    for node in order:
        if node.level != "I":
            continue
        po_number = po_date = None
        pack = sscc(node)
        for up in ancestors(node):
            if po_number is None and up.level == "O":
                prf = first(up, "PRF")
                if prf is not None:
                    po_number = _el(segments[prf], 1) or None
                    po_date = _date(ts, prf, 4)
            if pack is None and up.level in ("P", "T"):
                pack = sscc(up)
        if po_number is None:
            for i in shipment_segs:
                if segments[i][0] == "PRF":
                    po_number, po_date = _el(segments[i], 1) or None, _date(ts, i, 4)
                    break
        po_line = None
        pairs: list[tuple[str, str]] = []
        qty = ordered = None
        unit = ordered_unit = ""
        description: list[str] = []
        expiry = manufactured = None
        lots: list[str] = []
        serials: list[str] = []
        for i in node.segs:
            seg = segments[i]
            tag = seg[0]
            if tag == "LIN":
                po_line = po_line or _el(seg, 1) or None
                for q, v in _pairs(seg, 2):
                    if q == "LT":
                        lots.append(v)
                    elif q == "SN":
                        serials.append(v)
                    else:
                        pairs.append((q, v))
            elif tag == "SN1" and qty is None:
                qty = _r(ts, i, 2)
                unit = _el(seg, 3)
                ordered = _r(ts, i, 4)
                ordered_unit = _el(seg, 5)
            elif tag == "PID":
                text = _description(seg)
                if text:
                    description.append(text)
            elif tag == "DTM":
                dtm = _dtm(ts, i)
                if dtm.qualifier == "036" and expiry is None:
                    expiry = dtm.date
                elif dtm.qualifier in ("094", "405") and manufactured is None:
                    manufactured = dtm.date
            elif tag == "REF":
                ref = _ref(seg)
                if ref.qualifier == "LT" and ref.value not in lots:
                    lots.append(ref.value)
                elif ref.qualifier == "SE" and ref.value not in serials:
                    serials.append(ref.value)
        base = {
            "po_number": po_number,
            "po_line": po_line,
            "unit": unit,
            "product_ids": tuple(pairs),
            "expiry": expiry,
            "manufactured": manufactured,
            "description": " ".join(description),
            "ordered_quantity": ordered,
            "ordered_unit": ordered_unit,
            "po_date": po_date,
            "hl_id": node.id,
        }
        if len(serials) > 1:
            if qty is None or qty != len(serials):
                raise _err(
                    ts,
                    node.index,
                    f"HL {node.id}: {len(serials)} serials (SN) must ship {len(serials)} units "
                    f"in SN102 (got {qty})",
                    code="serial_count",
                )
            if len(lots) > 1 and len(lots) != len(serials):
                raise _err(
                    ts,
                    node.index,
                    f"HL {node.id}: {len(lots)} lots for {len(serials)} serials: send one lot "
                    "per serial or one I-level HL per lot",
                    code="lot_split",
                )
            for k, serial in enumerate(serials):
                lot = lots[k] if len(lots) > 1 else (lots[0] if lots else None)
                lines.append(
                    ShipLine(**base, quantity=Decimal(1), lot=lot, serial=serial, sscc=pack)
                )
            continue
        if len(lots) > 1:
            raise _err(
                ts,
                node.index,
                f"HL {node.id}: {len(lots)} lots (LT) share one SN1 quantity; send one I-level "
                "HL per lot so each lot has its quantity",
                code="lot_split",
            )
        lot = lots[0] if lots else None
        serial = serials[0] if serials else None
        packs = [c for c in node.children if c.level in ("P", "T") and sscc(c)]
        split = pack is None and len(packs) > 1
        if split and all(first(c, "SN1") is not None for c in packs):
            # Shipment/Order/Item/Pack: each pack under the item carries its own quantity.
            for c in packs:
                i = first(c, "SN1") or 0
                lines.append(
                    ShipLine(
                        **{**base, "unit": _el(segments[i], 3) or unit},
                        quantity=_r(ts, i, 2),
                        lot=lot,
                        serial=serial,
                        sscc=sscc(c),
                    )
                )
            continue
        if pack is None and len(packs) == 1:
            pack = sscc(packs[0])
        lines.append(ShipLine(**base, quantity=qty, lot=lot, serial=serial, sscc=pack))
    return ShipNotice(
        shipment_id=_el(bsn, 2),
        date=_date(ts, bsn_i, 3),
        time=_el(bsn, 4),
        purpose=_el(bsn, 1),
        structure=_el(bsn, 5),
        carrier=carrier,
        bill_of_lading=bol,
        tracking=tracking,
        shipped=shipped,
        estimated_delivery=eta,
        parties=tuple(p.build() for p in parties),
        refs=tuple(refs),
        lines=tuple(lines),
        hl_count=hl_count,
        hash_total=hash_total,
        control_number=ts.control_number,
    )


# --------------------------------------------------------------------------- 810


@dataclass(frozen=True)
class InvoiceLine(_Identified):
    """An IT1 loop."""

    line_number: str
    quantity: Decimal | None
    unit: str
    unit_price: Decimal | None = None
    price_basis: str = ""
    product_ids: ProductIds = ()
    description: str = ""
    po_line: str | None = None  # the PO line it bills: REF (see read_invoice), else IT101
    lot: str | None = None
    serial: str | None = None
    charges: tuple[Charge, ...] = ()
    taxes: tuple[Tax, ...] = ()
    refs: tuple[Reference, ...] = ()
    dates: tuple[DateRef, ...] = ()

    @property
    def amount(self) -> Decimal:
        """Quantity × unit price (0 when either is missing); negative for a credit line."""
        if self.quantity is None or self.unit_price is None:
            return Decimal(0)
        return self.quantity * self.unit_price

    @property
    def is_credit(self) -> bool:
        return self.quantity is not None and self.quantity < 0


@dataclass(frozen=True)
class Invoice:
    """An 810. ``total`` is TDS01 with its two implied decimals applied."""

    invoice_number: str
    invoice_date: date | None
    po_number: str = ""
    po_date: date | None = None
    release: str = ""  # BIG05
    transaction_type: str = ""  # BIG07: CR credit memo, DI debit invoice…
    currency: str = ""
    refs: tuple[Reference, ...] = ()
    dates: tuple[DateRef, ...] = ()
    parties: tuple[Party, ...] = ()
    terms: Terms | None = None
    lines: tuple[InvoiceLine, ...] = ()
    charges: tuple[Charge, ...] = ()  # heading and summary SAC
    taxes: tuple[Tax, ...] = ()  # summary TXI
    total: Decimal | None = None  # TDS01
    subject_to_discount: Decimal | None = None  # TDS02
    discounted_total: Decimal | None = None  # TDS03
    carrier: str = ""  # CAD04 SCAC
    routing: str = ""  # CAD05
    line_count: int | None = None  # CTT01
    control_number: str = ""

    @property
    def is_credit(self) -> bool:
        """A credit memo: BIG07 ``CR``, or every line has a negative quantity."""
        if self.transaction_type == "CR":
            return True
        return bool(self.lines) and all(line.is_credit for line in self.lines)

    @property
    def remit_to(self) -> Party | None:
        return _party(self.parties, "RE")

    @property
    def ship_to(self) -> Party | None:
        return _party(self.parties, "ST")

    @property
    def subtotal(self) -> Decimal:
        """Sum of line amounts (quantity × price), before charges and tax."""
        return sum((line.amount for line in self.lines), Decimal(0))

    @property
    def all_charges(self) -> tuple[Charge, ...]:
        """Heading/summary SACs followed by every line's SACs."""
        out = list(self.charges)
        for line in self.lines:
            out.extend(line.charges)
        return tuple(out)


def read_invoice(ts: TransactionSet, *, po_line_refs: tuple[str, ...] = ("LI",)) -> Invoice:
    """The 810 in ``ts``.

    ``po_line_refs``: REF qualifiers a partner uses inside IT1 to echo the PO line number; when
    one is present it is the line's ``po_line``, else IT101 is.
    """
    _expect(ts, "810")
    big: list[str] | None = None
    big_i = 0
    currency = carrier = routing = ""
    refs: list[Reference] = []
    dates: list[DateRef] = []
    parties: list[_PartyBuilder] = []
    party: _PartyBuilder | None = None
    terms: Terms | None = None
    lines: list[_LineBuilder] = []
    line: _LineBuilder | None = None
    charges: list[Charge] = []
    taxes: list[Tax] = []
    total = subject = discounted = None
    line_count = None
    segments = ts.segments
    for i in range(1, len(segments) - 1):
        seg = segments[i]
        tag = seg[0]
        if party is not None:
            if party.take(seg):
                continue
            party = None
        if tag == "IT1":
            line = _LineBuilder(ts, i)
            lines.append(line)
        elif tag == "TDS":
            line = None
            total = _n(ts, i, 1, 2)
            subject = _n(ts, i, 2, 2)
            discounted = _n(ts, i, 3, 2)
        elif tag in ("CTT", "CAD", "ISS"):
            line = None  # summary segments end the IT1 loop even without a TDS
            if tag == "CTT":
                line_count = _int(ts, i, 1)
            elif tag == "CAD":
                carrier, routing = _el(seg, 4), _el(seg, 5)
        elif line is not None:
            line.take(ts, i)
        elif tag == "SAC":
            charges.append(_charge(ts, i))
        elif tag == "TXI":
            taxes.append(_tax(ts, i))
        elif tag == "BIG":
            big, big_i = seg, i
        elif tag == "CUR":
            currency = _el(seg, 2)
        elif tag == "REF":
            refs.append(_ref(seg))
        elif tag == "DTM":
            dates.append(_dtm(ts, i))
        elif tag == "N1":
            party = _PartyBuilder(seg)
            parties.append(party)
        elif tag == "ITD":
            terms = Terms(
                type=_el(seg, 1),
                basis=_el(seg, 2),
                discount_percent=_r(ts, i, 3),
                discount_due=_date(ts, i, 4),
                discount_days=_int(ts, i, 5),
                net_due=_date(ts, i, 6),
                net_days=_int(ts, i, 7),
                discount_amount=_n(ts, i, 8, 2),
                description=_el(seg, 12),
            )
    if big is None:
        raise _missing(ts, "BIG", "BIG02 is the invoice number")
    if not _el(big, 2):
        raise _err(ts, big_i, "BIG02 (invoice number) is required but empty", 2, "missing_element")
    built = []
    for b in lines:
        lot, serial = b.lot_serial()
        po_line = next((r.value for r in b.refs if r.qualifier in po_line_refs and r.value), None)
        built.append(
            InvoiceLine(
                line_number=b.line_number,
                quantity=b.quantity,
                unit=b.unit,
                unit_price=b.unit_price,
                price_basis=b.price_basis,
                product_ids=b.product_ids,
                description=" ".join(b.description),
                po_line=po_line or b.line_number or None,
                lot=lot,
                serial=serial,
                charges=tuple(b.charges),
                taxes=tuple(b.taxes),
                refs=tuple(b.refs),
                dates=tuple(b.dates),
            )
        )
    return Invoice(
        invoice_number=_el(big, 2),
        invoice_date=_date(ts, big_i, 1),
        po_number=_el(big, 4),
        po_date=_date(ts, big_i, 3),
        release=_el(big, 5),
        transaction_type=_el(big, 7),
        currency=currency,
        refs=tuple(refs),
        dates=tuple(dates),
        parties=tuple(p.build() for p in parties),
        terms=terms,
        lines=tuple(built),
        charges=tuple(charges),
        taxes=tuple(taxes),
        total=total,
        subject_to_discount=subject,
        discounted_total=discounted,
        carrier=carrier,
        routing=routing,
        line_count=line_count,
        control_number=ts.control_number,
    )


_READERS = {
    "850": read_purchase_order,
    "855": read_po_ack,
    "856": read_ship_notice,
    "810": read_invoice,
}


def read_document(ts: TransactionSet) -> PurchaseOrder | PurchaseOrderAck | ShipNotice | Invoice:
    """The document in ``ts``, by ST01 (850, 855, 856 or 810)."""
    reader = _READERS.get(ts.id)
    if reader is None:
        raise X12DocumentError(
            f"no reader for transaction set {ts.id!r} (expected one of 810, 850, 855, 856)",
            segment="ST",
            position=1,
            element=1,
            offset=ts.offsets[0],
            code="unsupported_set",
        )
    return reader(ts)  # type: ignore[operator]
