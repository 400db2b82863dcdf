"""The 810 invoice reader (:func:`read_invoice`) and its document types."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from engine.model import record_maker
from engine.x12.documents.common import (
    Charge,
    DateRef,
    Party,
    ProductIds,
    Reference,
    Tax,
    Terms,
    _charge,
    _date,
    _dtm,
    _el,
    _err,
    _expect,
    _Identified,
    _int,
    _LineBuilder,
    _missing,
    _n,
    _party,
    _PartyBuilder,
    _r,
    _ref,
    _tax,
)
from engine.x12.segments import TransactionSet


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
    purpose: str = ""  # BIG08 (353): empty or 00 for an original
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


_new_invoice_line = record_maker(InvoiceLine)  # one per IT1: made by the ten thousand


def _invoice_line(b: _LineBuilder, po_line_refs: tuple[str, ...]) -> InvoiceLine:
    lot, serial = b.lot_serial()
    po_line = None
    for ref in b.refs:
        if ref.value and ref.qualifier in po_line_refs:
            po_line = ref.value
            break
    return _new_invoice_line(
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
    built: list[InvoiceLine] = []  # each IT1 loop built as it ends (no builder outlives it)
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
            if line is not None:
                built.append(_invoice_line(line, po_line_refs))
            line = _LineBuilder(ts, i)
        elif tag == "TDS":
            if line is not None:
                built.append(_invoice_line(line, po_line_refs))
            line = None
            total = _n(ts, i, 1, 2)
            subject = _n(ts, i, 2, 2)
            discounted = _n(ts, i, 3, 2)
        elif tag in ("CTT", "CAD", "ISS"):
            if line is not None:
                built.append(_invoice_line(line, po_line_refs))
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
    if line is not None:
        built.append(_invoice_line(line, po_line_refs))
    if big is None:
        raise _missing(ts, "BIG", "BIG02 is the invoice number")
    if not _el(big, 2):
        raise _err(ts, big_i, "BIG02 (invoice number) is required but empty", 2, "missing_element")
    return Invoice(
        invoice_number=_el(big, 2),
        invoice_date=_date(ts, big_i, 1),
        po_number=_el(big, 4),
        po_date=_date(ts, big_i, 3),
        release=_el(big, 5),
        transaction_type=_el(big, 7),
        purpose=_el(big, 8),
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
