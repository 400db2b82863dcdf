"""Element readers and the parts several X12 documents share.

Element readers: numbers per element type (``R`` with its own decimal point, ``N0``/``N2``
implied decimals), dates, qualifier/id pairs, GTIN-14; their errors name the segment, its
position in the set (ST = 1) and the element. Shared parts: REF, DTM, the N1 loop, SAC, TXI,
ITD, ACK, product ids, and the PO1/IT1 line being read (850, 855, 810).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from engine.errors import X12DocumentError
from engine.x12.segments import TransactionSet

ProductIds = tuple[tuple[str, str], ...]
_LOT_SERIAL = ("LT", "SN")

# ACK01 line item status (element 668) → the PO line state it means. Every code of the
# standard's list has one (the maps reject any other code: docs/x12-code-lists.md).
ACK_STATUS: dict[str, str] = {
    "IA": "accepted",
    "AC": "accepted",  # accepted and shipped
    "AR": "accepted",  # accepted and released for shipment
    "AA": "accepted",  # accepted, order forwarded to an alternate supplier location
    "IE": "accepted",  # accepted, price pending (the invoice's price is matched)
    "SP": "accepted",  # accepted, schedule date pending
    "IB": "backordered",
    "BP": "backordered",  # partial shipment, balance backordered
    "IC": "changed",
    "IP": "changed",  # price changed
    "IQ": "changed",  # quantity changed
    "DR": "changed",  # date rescheduled
    "IS": "changed",  # substitution
    "IF": "held",  # on hold, incomplete description
    "IH": "held",  # on hold
    "IW": "held",  # on hold, waiver required
    "ID": "rejected",  # deleted
    "IR": "rejected",
    **{f"R{n}": "rejected" for n in range(1, 9)},  # rejected: not a contract item...
}


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
        """``accepted`` | ``backordered`` | ``changed`` | ``held`` | ``rejected`` | ``unknown``."""
        return ACK_STATUS.get(self.status, "unknown")


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
    n = len(seg)
    return Reference(seg[1] if n > 1 else "", seg[2] if n > 2 else "", seg[3] if n > 3 else "")


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


class _LineBuilder:
    """Fields of a PO1/IT1 loop being read. The lists a loop seldom fills start as the shared
    empty tuple and become lists on their first entry (fewer objects per line of a big
    document)."""

    __slots__ = (
        "acks",
        "charges",
        "dates",
        "description",
        "line_number",
        "lot",
        "marks",
        "pack",
        "pack_size",
        "pack_unit",
        "pairs",
        "parties",
        "price_basis",
        "product_ids",
        "quantity",
        "refs",
        "serial",
        "taxes",
        "unit",
        "unit_price",
    )

    def __init__(self, ts: TransactionSet, i: int) -> None:
        seg = ts.segments[i]
        self.line_number = _el(seg, 1)
        self.quantity = _r(ts, i, 2)
        self.unit = _el(seg, 3)
        self.unit_price = _r(ts, i, 4)
        self.price_basis = _el(seg, 5)
        pairs = _pairs(seg, 6)
        self.pairs = pairs
        self.lot = self.serial = None
        for q, _v in pairs:
            if q in _LOT_SERIAL:
                self.product_ids = tuple(p for p in pairs if p[0] not in _LOT_SERIAL)
                self.lot = next((v for q, v in pairs if q == "LT"), None)
                self.serial = next((v for q, v in pairs if q == "SN"), None)
                break
        else:
            self.product_ids = tuple(pairs)  # the common case: no lot or serial number
        self.description: list[str] = []
        self.refs: list[Reference] = []
        self.dates: list[DateRef] | tuple[()] = ()
        self.marks: list[tuple[str, str]] | tuple[()] = ()
        self.charges: list[Charge] | tuple[()] = ()
        self.taxes: list[Tax] | tuple[()] = ()
        self.pack: Decimal | None = None
        self.pack_size: Decimal | None = None
        self.pack_unit = ""
        self.acks: list[LineAck] | tuple[()] = ()
        self.parties: list[_PartyBuilder] | tuple[()] = ()

    def _add(self, name: str, item: Any) -> None:
        have = getattr(self, name)
        if have == ():
            have = []
            setattr(self, name, have)
        have.append(item)

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
            self._add("dates", _dtm(ts, i))
        elif tag == "MAN":
            self._add("marks", (_el(seg, 1), _el(seg, 2)))
        elif tag == "PO4":
            self.pack = _n(ts, i, 1, 0)
            self.pack_size = _r(ts, i, 2)
            self.pack_unit = _el(seg, 3)
        elif tag == "SAC":
            self._add("charges", _charge(ts, i))
        elif tag == "TXI":
            self._add("taxes", _tax(ts, i))
        elif tag == "ACK":
            self._add(
                "acks",
                LineAck(
                    status=_el(seg, 1),
                    quantity=_r(ts, i, 2),
                    unit=_el(seg, 3),
                    date_qualifier=_el(seg, 4),
                    date=_date(ts, i, 5),
                    product_ids=tuple(_pairs(seg, 7)),
                ),
            )

    def lot_serial(self) -> tuple[str | None, str | None]:
        lot, serial = self.lot, self.serial
        for ref in self.refs:
            if ref.qualifier == "LT" and lot is None:
                lot = ref.value
            elif ref.qualifier == "SE" and serial is None:
                serial = ref.value
        return lot, serial
