"""The three-way match: purchase order × receipts × invoice (DOMAIN §4). Pure functions, no I/O.

:func:`match_invoice` takes what the caller looked up (the PO, the cumulative receipts and
returns of its lines, what earlier invoices already billed and credited, whether the vendor
invoice number is a duplicate) and returns a :class:`MatchResult`: ``matched`` when nothing is
out of tolerance, else ``held`` with one :class:`Issue` per problem, each with a
:class:`Reason` code, on the invoice (header) or on a line. ``docs/ap-policy.md`` lists every
default and the ERP practice behind it.

Rules (all limits in :class:`Tolerance`; "at the limit" passes, one cent/unit over fails):

* Invoice lines find their PO line by number (``InvoiceLine.po_line``: the echoed PO101 in a
  REF, else IT101) when the item ids agree, else by item id (vendor part, buyer item, GTIN).
  None found, or the numbered line carries another item: ``ITEM``.
* Quantities are converted to the item's base (stocking) unit and compared *cumulatively*:
  prior invoiced + this invoice against received (``QTY_REC``: ``qty_received_pct``,
  ``qty_abs``) and ordered (``QTY_ORD``: ``qty_ordered_pct``, ``qty_abs``). Nothing received
  yet: ``NO_RECEIPT`` and ``retry_on_receipt``. Lines with ``receipt_required=False``
  (bill-only, evaluated receipts) match two-way.
* Price per base unit against the PO's (``PRICE``): over by at most ``price_pct`` % of the PO
  price and ``price_abs``. A limit left unset (None) allows any variance; with
  ``limits: all`` (the default, as Oracle Payables and SAP check them) a line passes only
  within *every* limit that is set, with ``limits: any`` within the larger. Billing *below* the
  PO price passes and is paid as billed (``price_below_po: pay``) unless
  ``price_below_po: hold`` checks the same limits below it.
* A unit with no conversion to the base unit: ``UOM`` (the line's other checks are skipped).
* Credits (a credit memo: BIG07 ``CR``, or only negative lines; or a negative line) reduce
  what was invoiced: the credited quantity must not exceed what earlier invoices billed for
  that PO line (``QTY_INV``); a credit memo's credited quantity must be covered by returns to
  the vendor (negative receipts from the ERP) not yet credited (``NO_RETURN``, unless
  ``credit_needs_return`` is off); the price is checked both ways; receipts are not consulted.
* ``NO_PO`` too when the PO is another vendor's than the sender's (``vendors``).
* Charges: freight codes up to ``max(freight_abs, freight_pct % of the subtotal)`` (or the PO's
  own ``freight_allowed``), other charge codes per ``sac_rules`` (``FREIGHT`` / ``SAC``).
* ``TOTAL``: TDS01 against lines + charges − allowances + tax, within ``total_abs``.
* ``DUPLICATE`` when the caller found the vendor + invoice number before: the only reason
  given then (nothing else of a duplicate is matched). ``NO_PO`` when there is no PO (or
  another PO number than BIG04).

Invoice-level reasons (DUPLICATE, NO_PO, FREIGHT, SAC, TOTAL, an invoice without lines) hold
the whole invoice; the others hold their line (:attr:`MatchResult.payable_lines`).

Arithmetic is exact Decimal: price limits are compared cross-multiplied by the conversion
factors, so nothing is divided before comparing.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from engine.errors import ConfigError, MappingMiss, UomConversionMissing
from engine.model import record_maker
from engine.x12.documents import Invoice, InvoiceLine, PurchaseOrder, PurchaseOrderLine, gtin14

__all__ = [
    "INVOICE_REASONS",
    "OPTIONAL_LIMITS",
    "Converter",
    "Issue",
    "LineResult",
    "MatchResult",
    "Order",
    "OrderLine",
    "Reason",
    "Receipt",
    "SacRule",
    "Tolerance",
    "converter_from_graph",
    "converter_from_table",
    "invoice_key",
    "match_invoice",
]

ZERO = Decimal(0)
ONE = Decimal(1)
HUNDRED = Decimal(100)
CENT = Decimal("0.01")

# (item_id, from_unit, to_unit) -> factor, meaning 1 from_unit = factor to_unit.
# Raises MappingMiss (UomConversionMissing) when the units do not convert.
Converter = Callable[[str, str, str], Decimal]


class Reason(enum.StrEnum):
    """Why a line or an invoice is held."""

    PRICE = "PRICE"  # unit price outside tolerance
    QTY_REC = "QTY_REC"  # invoiced (cumulative) more than received
    QTY_ORD = "QTY_ORD"  # invoiced (cumulative) more than ordered
    QTY_INV = "QTY_INV"  # a credit for more than earlier invoices billed
    NO_RECEIPT = "NO_RECEIPT"  # nothing received yet: retry when a receipt arrives
    UOM = "UOM"  # a unit without a conversion to the base unit
    ITEM = "ITEM"  # line matches no PO line, or its item differs
    DUPLICATE = "DUPLICATE"  # vendor + invoice number seen before: the only reason then
    DUP = "DUPLICATE"  # the former name of DUPLICATE (an alias)
    NO_RETURN = "NO_RETURN"  # a credit memo for more than was returned to the vendor
    NO_PO = "NO_PO"  # no PO, or a different PO number
    FREIGHT = "FREIGHT"  # freight over the rule
    SAC = "SAC"  # another charge not allowed or over its rule
    TOTAL = "TOTAL"  # TDS differs from lines + charges + tax


@dataclass(frozen=True)
class Issue:
    """One problem; ``line`` is the invoice line number (None: the invoice as a whole)."""

    reason: Reason
    message: str
    line: str | None = None


@dataclass(frozen=True)
class OrderLine:
    """A PO line as the ERP holds it.

    ``item_id``: the buyer's item, used for unit conversions (and as a buyer-item id when
    ``product_ids`` has no ``IN``/``BP``). ``base_unit``: the item's stocking unit.
    ``receipt_required=False``: a bill-only line with evaluated receipts (two-way match).
    """

    line_number: str
    item_id: str
    quantity: Decimal
    unit: str
    unit_price: Decimal | None
    base_unit: str = "EA"
    product_ids: tuple[tuple[str, str], ...] = ()
    receipt_required: bool = True

    @classmethod
    def from_x12(
        cls,
        line: PurchaseOrderLine,
        *,
        item_id: str | None = None,
        base_unit: str = "EA",
        receipt_required: bool = True,
    ) -> OrderLine:
        """From an 850 line; ``item_id`` defaults to its buyer item (IN/BP), else vendor item."""
        item = item_id or line.buyer_item or line.vendor_item or ""
        return cls(
            line_number=line.line_number,
            item_id=item,
            quantity=line.quantity if line.quantity is not None else ZERO,
            unit=line.unit,
            unit_price=line.unit_price,
            base_unit=base_unit,
            product_ids=line.product_ids,
            receipt_required=receipt_required,
        )


@dataclass(frozen=True)
class Order:
    """The PO to match against. ``freight_allowed``: contract freight; replaces the rule."""

    po_number: str
    lines: tuple[OrderLine, ...]
    vendor: str = ""
    freight_allowed: Decimal | None = None

    @classmethod
    def from_x12(
        cls,
        po: PurchaseOrder,
        *,
        item_id: Callable[[PurchaseOrderLine], str | None] | None = None,
        base_unit: Callable[[PurchaseOrderLine], str] | str = "EA",
        receipt_required: bool | None = None,
        vendor: str = "",
    ) -> Order:
        """From an 850. ``receipt_required`` None: False for bill-only lines, else True."""
        lines = []
        for line in po.lines:
            base = base_unit(line) if callable(base_unit) else base_unit
            required = receipt_required
            if required is None:
                required = line.bill_only is None
            lines.append(
                OrderLine.from_x12(
                    line,
                    item_id=item_id(line) if item_id else None,
                    base_unit=base,
                    receipt_required=required,
                )
            )
        return cls(po_number=po.po_number, lines=tuple(lines), vendor=vendor)


@dataclass(frozen=True)
class Receipt:
    """Quantity received against a PO line (negative: returned to the vendor)."""

    po_line: str
    quantity: Decimal
    unit: str
    receipt_id: str = ""


@dataclass(frozen=True)
class SacRule:
    """How much of one SAC charge code is accepted: ``max(max_amount, max_pct % of subtotal)``."""

    max_amount: Decimal = ZERO
    max_pct: Decimal = ZERO

    def limit(self, subtotal: Decimal) -> Decimal:
        return max(self.max_amount, abs(subtotal) * self.max_pct / HUNDRED)


def _decimal_fields() -> tuple[str, ...]:
    return (
        "price_pct",
        "price_abs",
        "qty_received_pct",
        "qty_ordered_pct",
        "qty_abs",
        "freight_abs",
        "freight_pct",
        "total_abs",
    )


#: Limits that may be left unset (None: any variance allowed, as an Oracle tolerance that is
#: active without a value).
OPTIONAL_LIMITS = frozenset(
    ("price_pct", "price_abs", "qty_received_pct", "qty_ordered_pct", "qty_abs")
)
_CHOICES = {"limits": ("all", "any"), "price_below_po": ("pay", "hold")}
_BOOLS = ("allow_other_charges", "require_po_unit", "credit_needs_return")

#: Reasons that hold the whole invoice; every other reason holds its line only.
INVOICE_REASONS = frozenset(("DUPLICATE", "NO_PO", "FREIGHT", "SAC", "TOTAL"))


@dataclass(frozen=True)
class Tolerance:
    """Match tolerances (``docs/ap-policy.md``: every default and the ERP practice behind it).
    Percentages are in percent (2 = 2 %); None leaves a limit unset (any variance allowed).

    ``price_pct``/``price_abs``: how far the invoice price per base unit may exceed the PO's
    (% of the PO price; money per base unit). ``qty_received_pct``/``qty_ordered_pct``: how
    far the cumulative invoiced quantity may exceed what was received/ordered (%);
    ``qty_abs``: base units, a limit on both. ``limits``: ``all`` (a line passes only within
    every limit that is set: Oracle Payables, SAP) or ``any`` (within the larger).
    ``price_below_po``: ``pay`` (billing below the PO price passes and is paid as billed) or
    ``hold`` (the same limits apply below it). Freight (``freight_codes``) is allowed up to
    ``max(freight_abs, freight_pct % of the line subtotal)``; other charge codes need a
    ``sac_rules`` entry unless ``allow_other_charges``. Allowances (SAC01 ``A``) are never
    held. ``credit_needs_return``: a credit memo is matched to returns to the vendor.
    """

    price_pct: Decimal | None = Decimal("2")
    price_abs: Decimal | None = None
    qty_received_pct: Decimal | None = ZERO
    qty_ordered_pct: Decimal | None = ZERO
    qty_abs: Decimal | None = None
    limits: str = "all"
    price_below_po: str = "pay"
    freight_abs: Decimal = Decimal("25.00")
    freight_pct: Decimal = Decimal("5")
    freight_codes: frozenset[str] = frozenset({"D240"})
    sac_rules: Mapping[str, SacRule] = field(default_factory=dict)
    allow_other_charges: bool = False
    total_abs: Decimal = CENT
    require_po_unit: bool = False  # hold (UOM) an invoice unit other than the PO's
    credit_needs_return: bool = True

    def __post_init__(self) -> None:
        for name in _decimal_fields():
            value = getattr(self, name)
            if value is None and name in OPTIONAL_LIMITS:
                continue
            if isinstance(value, bool) or not isinstance(value, Decimal | int):
                raise ConfigError(
                    f"'{name}' must be a Decimal >= 0 (got {value!r})", path=f"tolerance.{name}"
                )
            if not Decimal(value).is_finite() or value < 0:
                raise ConfigError(
                    f"'{name}' must be a number >= 0 (got {value})", path=f"tolerance.{name}"
                )
            object.__setattr__(self, name, Decimal(value))
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"'{name}' must be one of {', '.join(allowed)} (got {getattr(self, name)!r})",
                    path=f"tolerance.{name}",
                )
        object.__setattr__(self, "freight_codes", frozenset(self.freight_codes))

    def within(
        self, variance: Decimal, pct_base: Decimal, pct: Decimal | None, absolute: Any
    ) -> bool:
        """Whether ``variance`` is within the limits set: ``pct`` % of ``pct_base`` and
        ``absolute`` (both already in the caller's scale), per :attr:`limits`."""
        checks = []
        if pct is not None:
            checks.append(variance <= pct_base * pct / HUNDRED)
        if absolute is not None:
            checks.append(variance <= absolute)
        if not checks:
            return True
        return all(checks) if self.limits == "all" else any(checks)

    def qty_limit(self, base: Decimal, pct: Decimal | None) -> Decimal | None:
        """The most that may be invoiced against ``base`` (received or ordered) with ``pct`` and
        :attr:`qty_abs`, per :attr:`limits`; None when no limit is set."""
        limits = []
        if pct is not None:
            limits.append(base * (HUNDRED + pct) / HUNDRED)
        if self.qty_abs is not None:
            limits.append(base + self.qty_abs)
        if not limits:
            return None
        return min(limits) if self.limits == "all" else max(limits)

    def describe_price(self, unit: str) -> str:
        """The price limits in words: ``2% and 5.00 per EA``."""
        parts = []
        if self.price_pct is not None:
            parts.append(f"{self.price_pct}%")
        if self.price_abs is not None:
            parts.append(f"{self.price_abs} per {unit}")
        if not parts:
            return "no limit set"
        joiner = " and " if self.limits == "all" else " or "
        return joiner.join(parts)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, path: str = "tolerance") -> Tolerance:
        """From configuration (YAML): numbers as strings or ints, never floats."""
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            where = f"{path}.{key}"
            if key not in known:
                raise ConfigError(
                    f"field not recognised (expected one of {', '.join(sorted(known))})",
                    path=where,
                )
            if key in _decimal_fields():
                if value is None and key in OPTIONAL_LIMITS:
                    kwargs[key] = None
                else:
                    kwargs[key] = _config_decimal(value, where)
            elif key in _BOOLS:
                if not isinstance(value, bool):
                    raise ConfigError(f"must be true or false (got {value!r})", path=where)
                kwargs[key] = value
            elif key in _CHOICES:
                if value not in _CHOICES[key]:
                    raise ConfigError(
                        f"must be one of {', '.join(_CHOICES[key])} (got {value!r})", path=where
                    )
                kwargs[key] = value
            elif key == "freight_codes":
                if isinstance(value, str) or not isinstance(value, Iterable):
                    raise ConfigError(f"must be a list of SAC02 codes (got {value!r})", path=where)
                kwargs[key] = frozenset(str(v) for v in value)
            else:  # sac_rules
                if not isinstance(value, Mapping):
                    raise ConfigError(
                        f"must map SAC02 codes to {{max_amount, max_pct}} (got {value!r})",
                        path=where,
                    )
                rules = {}
                for code, rule in value.items():
                    rule = rule or {}
                    extra = set(rule) - {"max_amount", "max_pct"}
                    if extra:
                        raise ConfigError(
                            f"field not recognised: {sorted(extra)[0]!r} (expected max_amount, "
                            "max_pct)",
                            path=f"{where}.{code}",
                        )
                    rules[str(code)] = SacRule(
                        **{k: _config_decimal(v, f"{where}.{code}.{k}") for k, v in rule.items()}
                    )
                kwargs[key] = rules
        return cls(**kwargs)


def _config_decimal(value: object, where: str) -> Decimal:
    if isinstance(value, bool) or isinstance(value, float) or value is None:
        raise ConfigError(
            f"must be a number written as text or an integer, e.g. '2.5' (got {value!r})",
            path=where,
        )
    try:
        result = Decimal(str(value).strip())
    except InvalidOperation:
        raise ConfigError(f"must be a number >= 0 (got {value!r})", path=where) from None
    if not result.is_finite() or result < 0:
        raise ConfigError(f"must be a number >= 0 (got {value!r})", path=where)
    return result


@dataclass(frozen=True)
class LineResult:
    """The match of one invoice line. Quantities are in ``base_unit`` (None: not computed)."""

    invoice_line: str
    po_line: str | None
    issues: tuple[Issue, ...] = ()
    base_unit: str = ""
    quantity: Decimal | None = None  # this line, signed (credit < 0)
    ordered: Decimal | None = None
    received: Decimal | None = None
    invoiced_before: Decimal | None = None  # cumulative before this line
    invoiced_after: Decimal | None = None  # cumulative including this line
    price: Decimal | None = None  # invoice price per base unit
    po_price: Decimal | None = None  # PO price per base unit
    # the line as billed: quantity (signed, credit < 0), the vendor's unit code, unit price
    billed_quantity: Decimal | None = None
    billed_unit: str = ""
    billed_price: Decimal | None = None

    @property
    def reasons(self) -> tuple[Reason, ...]:
        return tuple(i.reason for i in self.issues)

    @property
    def amount(self) -> Decimal:
        """Billed quantity × billed unit price, exact (0 when either is missing)."""
        if self.billed_quantity is None or self.billed_price is None:
            return ZERO
        return self.billed_quantity * self.billed_price

    @property
    def matched(self) -> bool:
        return not self.issues


@dataclass(frozen=True)
class MatchResult:
    """The outcome. ``invoiced``: cumulative invoiced base quantity per PO line after this
    invoice (store it as the next ``prior_invoiced`` once the invoice is posted)."""

    status: str  # "matched" | "held"
    invoice_number: str
    po_number: str
    issues: tuple[Issue, ...]  # invoice-level
    lines: tuple[LineResult, ...]
    retry_on_receipt: bool = False
    is_credit: bool = False
    invoiced: Mapping[str, Decimal] = field(default_factory=dict)
    subtotal: Decimal = ZERO
    charges: Decimal = ZERO  # charges − allowances
    tax: Decimal = ZERO
    computed_total: Decimal = ZERO
    total: Decimal | None = None  # TDS01

    @property
    def matched(self) -> bool:
        return self.status == "matched"

    @property
    def all_issues(self) -> tuple[Issue, ...]:
        out = list(self.issues)
        for line in self.lines:
            out.extend(line.issues)
        return tuple(out)

    @property
    def reasons(self) -> frozenset[Reason]:
        return frozenset(i.reason for i in self.all_issues)

    @property
    def held_whole(self) -> bool:
        """An invoice-level reason holds every line (DUPLICATE, NO_PO, TOTAL, charges)."""
        return bool(self.issues)

    @property
    def payable_lines(self) -> tuple[LineResult, ...]:
        """The lines that may be posted on their own (line-level holds): none while an
        invoice-level reason holds the invoice, else every line without an issue."""
        if self.held_whole:
            return ()
        return tuple(line for line in self.lines if line.matched)


_new_line_result = record_maker(LineResult)  # one per invoice line: made by the ten thousand

# --------------------------------------------------------------------------- helpers


def invoice_key(vendor: str, invoice_number: str) -> tuple[str, str]:
    """The duplicate-detection key: vendor and invoice number without case, spaces, punctuation
    and leading zeros (``inv-00123`` and ``INV 123`` collide)."""
    text = "".join(c for c in invoice_number.upper() if c.isalnum())
    head = text.rstrip("0123456789")
    digits = text[len(head) :].lstrip("0")
    return vendor.strip().upper(), head + digits


def converter_from_graph(graph: Any, vendor: str | None = None) -> Converter:
    """A :data:`Converter` over an :class:`engine.uom.UomGraph` (factor = convert(1))."""

    def convert(item: str, from_unit: str, to_unit: str) -> Decimal:
        return graph.convert(Decimal(1), from_unit, to_unit, item, vendor)

    return convert


def converter_from_table(table: Mapping[tuple[str, str], Decimal]) -> Converter:
    """A :data:`Converter` from ``{(item, unit): factor to the item's base unit}``.

    Item ``""`` (or ``"*"``) applies to every item. Units convert through the base unit.
    """

    def to_base(item: str, unit: str) -> Decimal | None:
        for key in ((item, unit), ("", unit), ("*", unit)):
            if key in table:
                return table[key]
        return None

    def convert(item: str, from_unit: str, to_unit: str) -> Decimal:
        if from_unit == to_unit:
            return Decimal(1)
        a, b = to_base(item, from_unit), to_base(item, to_unit)
        if a is None or b is None:
            raise UomConversionMissing(item, from_unit, to_unit)
        return a / b

    return convert


_GROUPS = {"VC": "V", "VN": "V", "VP": "V", "IN": "B", "BP": "B", "UK": "G", "EN": "G", "UP": "G"}
_NOT_ITEM_IDS = frozenset(("LT", "SN", "PD"))  # lot, serial, description
_BUYER = frozenset(q for q, group in _GROUPS.items() if group == "B")


def _item_ids(product_ids: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Comparable item ids, each once, as (group, id): vendor part (V), buyer item (B),
    GTIN-14 (G), else the qualifier itself."""
    out: list[tuple[str, str]] = []
    for qual, value in product_ids:
        if qual in _NOT_ITEM_IDS:
            continue
        group = _GROUPS.get(qual, qual)
        if group == "G":
            norm = gtin14(qual, value.strip())
            if norm is None:
                continue
        else:
            norm = value.strip().upper()
        if norm and (group, norm) not in out:
            out.append((group, norm))
    return out


def _po_ids(line: OrderLine) -> list[tuple[str, str]]:
    """A PO line's comparable item ids; its ERP item id counts as the buyer's (B) when it
    sends none."""
    ids = _item_ids(line.product_ids)
    if line.item_id:
        for group, _value in ids:
            if group == "B":
                break
        else:
            ids.append(("B", line.item_id.strip().upper()))
    return ids


def _clash(theirs: list[tuple[str, str]], ours: list[tuple[str, str]]) -> bool:
    """Whether an id group both sides carry has no id in common (lists of a few ids: no sets
    are built)."""
    for group, _value in ours:
        carried = False
        for key in theirs:
            if key[0] == group:
                if key in ours:
                    break
                carried = True
        else:
            if carried:
                return True
    return False


def _covers(po: OrderLine, product_ids: Iterable[tuple[str, str]]) -> bool:
    """A quick proof that an invoice line's ``product_ids`` agree with PO line ``po``'s (no
    :func:`_clash`): every id the PO line sends is among them as it stands, so each group the
    PO line carries has an id in common with them, and they send no buyer item id (IN, BP)
    that the PO line's ERP item id would answer for. False proves nothing."""
    for pair in po.product_ids:
        if pair not in product_ids:
            return False
    for qual, _value in product_ids:
        if qual in _BUYER:
            return False
    return True


def _line_no(text: str | None) -> str:
    """A line number as compared: ``"001"`` and ``" 1"`` are line ``"1"``."""
    if not text:
        return ""
    if text[0] not in "0 \t" and text[-1] not in " \t":
        return text  # the common case, already normal
    text = text.strip()
    return (text.lstrip("0") or "0") if text.isdigit() else text


def _ids_text(ids: Iterable[tuple[str, str]]) -> str:
    return ", ".join(f"{q} {v}" for q, v in ids) or "no product ids"


# --------------------------------------------------------------------------- the match


class _Matcher:
    def __init__(
        self,
        order: Order,
        receipts: Iterable[Receipt],
        prior_invoiced: Mapping[str, Decimal],
        tolerance: Tolerance,
        convert: Converter,
        prior_credited: Mapping[str, Decimal] | None = None,
    ) -> None:
        self.order = order
        self.tol = tolerance
        self.convert = convert
        self.by_number: dict[str, OrderLine] = {}
        # The item ids of a PO line number (those of its first line, the one an invoice line
        # that names the number bills) are worked out when an invoice line needs them, and the
        # index by item id only when an invoice line does not bill the PO line its number
        # names: most invoices never need it.
        self._by_key: dict[tuple[str, str], list[OrderLine]] | None = None
        self.rank: dict[int, int] = {}
        for k, line in enumerate(order.lines):
            self.rank[id(line)] = k
            no = _line_no(line.line_number)
            self.by_number.setdefault(no, line)
        self.receipts: dict[str, list[Receipt]] = {}
        for receipt in receipts:
            self.receipts.setdefault(_line_no(receipt.po_line), []).append(receipt)
        self.received: dict[str, Decimal | MappingMiss] = {}
        self.returned: dict[str, Decimal | MappingMiss] = {}
        self.invoiced: dict[str, Decimal] = {
            _line_no(k): Decimal(v) for k, v in prior_invoiced.items()
        }
        self.credited: dict[str, Decimal] = {
            _line_no(k): Decimal(v) for k, v in (prior_credited or {}).items()
        }
        # quantity limits as multipliers, worked out once per invoice
        t = tolerance
        self.ord_mult = (
            None if t.qty_ordered_pct is None else (HUNDRED + t.qty_ordered_pct) / HUNDRED
        )
        self.rec_mult = (
            None if t.qty_received_pct is None else (HUNDRED + t.qty_received_pct) / HUNDRED
        )
        self.qty_abs = t.qty_abs
        self.all_limits = t.limits == "all"
        self.factors: dict[tuple[str, str, str], Decimal | MappingMiss] = {}
        self.retry = False

    def keys(self, no: str) -> list[tuple[str, str]]:
        """The comparable item ids of PO line number ``no`` (see :func:`_po_ids`); worked out
        per look-up, not kept (an invoice line bills its PO line once, as a rule)."""
        return _po_ids(self.by_number[no])

    @property
    def by_key(self) -> dict[tuple[str, str], list[OrderLine]]:
        """PO lines by (id group, id), in order."""
        if self._by_key is None:
            index: dict[tuple[str, str], list[OrderLine]] = {}
            for line in self.order.lines:
                for key in _po_ids(line):
                    index.setdefault(key, []).append(line)
            self._by_key = index
        return self._by_key

    def factor(self, item: str, unit: str, base: str) -> Decimal:
        if unit == base:
            return ONE
        key = (item, unit, base)
        found = self.factors.get(key)
        if found is None:
            try:
                found = self.convert(item, unit, base)
            except MappingMiss as exc:
                found = exc
            self.factors[key] = found
        if isinstance(found, MappingMiss):
            raise found
        return found

    def received_base(self, line: OrderLine, no: str | None = None) -> Decimal:
        """What was received on this PO line (net of returns), in base units; ``no``: its
        line number as compared, when the caller has it."""
        if no is None:
            no = _line_no(line.line_number)
        found = self.received.get(no)
        if found is None:
            total = ZERO
            try:
                for r in self.receipts.get(no, ()):
                    total += r.quantity * self.factor(line.item_id, r.unit, line.base_unit)
                found = total
            except MappingMiss as exc:
                found = exc
            self.received[no] = found
        if isinstance(found, MappingMiss):
            raise found
        return found

    def limit(self, base: Decimal, mult: Decimal | None) -> Decimal | None:
        """The most that may be invoiced against ``base`` (see :meth:`Tolerance.qty_limit`)."""
        pct = None if mult is None else base * mult
        if self.qty_abs is None:
            return pct
        absolute = base + self.qty_abs
        if pct is None:
            return absolute
        return min(pct, absolute) if self.all_limits else max(pct, absolute)

    def returned_base(self, line: OrderLine) -> Decimal:
        """What went back to the vendor on this PO line (negative receipts), in base units."""
        no = _line_no(line.line_number)
        found = self.returned.get(no)
        if found is None:
            total = ZERO
            try:
                for r in self.receipts.get(no, ()):
                    if r.quantity < 0:
                        total -= r.quantity * self.factor(line.item_id, r.unit, line.base_unit)
                found = total
            except MappingMiss as exc:
                found = exc
            self.returned[no] = found
        if isinstance(found, MappingMiss):
            raise found
        return found

    def find(self, inv: InvoiceLine) -> tuple[OrderLine | None, Issue | None]:
        no = _line_no(inv.po_line or inv.line_number)
        numbered = self.by_number.get(no)
        if numbered is not None and _covers(numbered, inv.product_ids):
            return numbered, None  # the common case, proved without normalising an id
        ids = _item_ids(inv.product_ids)
        if numbered is not None and not _clash(self.keys(no), ids):
            return numbered, None
        candidates: dict[int, OrderLine] = {}
        for key in ids:
            for line in self.by_key.get(key, ()):
                if not _clash(_po_ids(line), ids):
                    candidates.setdefault(id(line), line)
        if candidates:
            # Several PO lines for the same item: the first one not yet fully invoiced.
            ordered = sorted(candidates.values(), key=lambda line: self.rank[id(line)])
            for line in ordered:
                done = self.invoiced.get(_line_no(line.line_number), ZERO)
                try:
                    if done < line.quantity * self.factor(line.item_id, line.unit, line.base_unit):
                        return line, None
                except MappingMiss:
                    return line, None
            return ordered[0], None
        label = inv.line_number or "?"
        if numbered is not None:
            theirs = _ids_text(numbered.product_ids) if numbered.product_ids else numbered.item_id
            return None, Issue(
                Reason.ITEM,
                f"invoice line {label} bills PO line {numbered.line_number} but its item "
                f"({_ids_text(inv.product_ids)}) differs from the PO line's "
                f"({theirs})",
                inv.line_number,
            )
        return None, Issue(
            Reason.ITEM,
            f"invoice line {label} (PO line {inv.po_line or '-'}, {_ids_text(inv.product_ids)}) "
            f"matches no line of PO {self.order.po_number}",
            inv.line_number,
        )

    def line(self, inv: InvoiceLine, credit_memo: bool, is_credit: bool = False) -> LineResult:
        label = inv.line_number
        billed_qty = inv.quantity
        if credit_memo and billed_qty is not None and billed_qty > 0:
            billed_qty = -billed_qty
        billed_price = inv.unit_price
        if billed_price is not None and billed_price < 0:
            billed_price = -billed_price
        po, issue = self.find(inv)
        if po is None:
            return LineResult(
                label,
                None,
                (issue,) if issue else (),
                billed_quantity=billed_qty,
                billed_unit=inv.unit,
                billed_price=billed_price,
            )
        tol = self.tol
        issues: list[Issue] = []
        base = po.base_unit
        unit = inv.unit or po.unit
        if tol.require_po_unit and inv.unit and inv.unit != po.unit:
            issues.append(
                Issue(
                    Reason.UOM,
                    f"invoice line {label} is in {inv.unit}; PO line {po.line_number} orders "
                    f"in {po.unit}",
                    label,
                )
            )
        try:
            f_inv = self.factor(po.item_id, unit, base)
            f_po = self.factor(po.item_id, po.unit, base)
        except MappingMiss as exc:
            issues.append(
                Issue(
                    Reason.UOM,
                    f"invoice line {label}: item {po.item_id} has no conversion to its base "
                    f"unit {base} ({exc.key})",
                    label,
                )
            )
            return LineResult(
                label,
                po.line_number,
                tuple(issues),
                base,
                billed_quantity=billed_qty,
                billed_unit=inv.unit,
                billed_price=billed_price,
            )
        no = _line_no(po.line_number)
        qty = inv.quantity if inv.quantity is not None else ZERO
        if credit_memo and qty > 0:
            qty = -qty  # a credit memo may send positive quantities: they are credited
        q = qty * f_inv
        before = self.invoiced.get(no, ZERO)
        after = before + q
        ordered = po.quantity * f_po
        received = None
        if q < 0:
            if -q > before + (tol.qty_abs or ZERO):
                issues.append(
                    Issue(
                        Reason.QTY_INV,
                        f"invoice line {label} credits {-q} {base} of PO line {po.line_number} "
                        f"but earlier invoices billed {before} {base}",
                        label,
                    )
                )
            if is_credit and tol.credit_needs_return:
                issues += self._return_issue(po, label, -q, base)
        else:
            limit = self.limit(ordered, self.ord_mult)
            over_order = limit is not None and after > limit
            if over_order:
                issues.append(
                    Issue(
                        Reason.QTY_ORD,
                        f"invoice line {label}: {after} {base} invoiced in total for PO line "
                        f"{po.line_number}, over the {ordered} {base} ordered (limit {limit})",
                        label,
                    )
                )
            if po.receipt_required:
                try:
                    received = self.received_base(po, no)
                except MappingMiss as exc:
                    issues.append(
                        Issue(
                            Reason.UOM,
                            f"a receipt of PO line {po.line_number} is in a unit without a "
                            f"conversion to {base} ({exc.key})",
                            label,
                        )
                    )
                else:
                    if received <= 0 and q > 0:
                        self.retry = True
                        issues.append(
                            Issue(
                                Reason.NO_RECEIPT,
                                f"invoice line {label}: nothing received yet for PO line "
                                f"{po.line_number}; held until a receipt arrives",
                                label,
                            )
                        )
                    else:
                        limit = self.limit(received, self.rec_mult)
                        if limit is not None and after > limit:
                            if not over_order:
                                self.retry = True  # a further receipt can still clear it
                            issues.append(
                                Issue(
                                    Reason.QTY_REC,
                                    f"invoice line {label}: {after} {base} invoiced in total for "
                                    f"PO line {po.line_number}, over the {received} {base} "
                                    f"received (limit {limit})",
                                    label,
                                )
                            )
        self.invoiced[no] = after
        price = po_price = None
        if inv.unit_price is None:
            if q != 0:
                issues.append(Issue(Reason.PRICE, f"invoice line {label} has no price", label))
        elif po.unit_price is not None:
            inv_price = abs(inv.unit_price)
            # inv/f_inv − po/f_po against po/f_po × pct and abs, multiplied through by
            # f_inv × f_po: nothing is divided before comparing
            variance = inv_price * f_po - po.unit_price * f_inv
            price = inv_price / f_inv
            po_price = po.unit_price / f_po
            # billing below the PO price is paid as billed, unless the policy holds it; a
            # credit is checked both ways (crediting more than was paid is as wrong)
            if q < 0 or tol.price_below_po == "hold":
                variance = abs(variance)
            pct_base = po.unit_price * f_inv
            absolute = None if tol.price_abs is None else tol.price_abs * f_inv * f_po
            if variance > 0 and not tol.within(variance, pct_base, tol.price_pct, absolute):
                issues.append(
                    Issue(
                        Reason.PRICE,
                        f"invoice line {label}: {_money(price)} per {base} against "
                        f"{_money(po_price)} on PO line {po.line_number} (tolerance "
                        f"{tol.describe_price(base)})",
                        label,
                    )
                )
        return _new_line_result(
            invoice_line=label,
            po_line=po.line_number,
            issues=tuple(issues),
            base_unit=base,
            quantity=q,
            ordered=ordered,
            received=received,
            invoiced_before=before,
            invoiced_after=after,
            price=price,
            po_price=po_price,
            billed_quantity=billed_qty,
            billed_unit=inv.unit,
            billed_price=billed_price,
        )

    def _return_issue(self, po: OrderLine, label: str, credited: Decimal, base: str) -> list[Issue]:
        """NO_RETURN when a credit memo credits more of a PO line than went back to the vendor
        and was not credited before."""
        no = _line_no(po.line_number)
        before = self.credited.get(no, ZERO)
        self.credited[no] = before + credited
        try:
            returned = self.returned_base(po)
        except MappingMiss as exc:
            return [
                Issue(
                    Reason.UOM,
                    f"a return of PO line {po.line_number} is in a unit without a conversion to "
                    f"{base} ({exc.key})",
                    label,
                )
            ]
        allowed = returned + (self.tol.qty_abs or ZERO)
        if before + credited <= allowed:
            return []
        self.retry = True  # a return the ERP posts later can still cover it
        if returned <= 0:
            why = f"no return to the vendor is on file for PO line {po.line_number}"
        else:
            why = (
                f"{returned} {base} of PO line {po.line_number} went back to the vendor and "
                f"{before} {base} of it was credited before"
            )
        return [
            Issue(
                Reason.NO_RETURN,
                f"invoice line {label} credits {credited} {base}, but {why}: a credit needs "
                "a return (from the ERP) to match",
                label,
            )
        ]


def _money(value: Decimal) -> str:
    if value == value.quantize(CENT):
        return str(value.quantize(CENT))
    return str(value.normalize())


def _charges(
    invoice: Invoice, order: Order, tol: Tolerance, subtotal: Decimal
) -> tuple[Decimal, list[Issue]]:
    net = ZERO
    freight = ZERO
    per_code: dict[str, Decimal] = {}
    issues: list[Issue] = []
    for charge in invoice.all_charges:
        net += charge.signed_amount
        if charge.indicator != "C" or not charge.amount:
            continue
        if charge.code in tol.freight_codes:
            freight += charge.amount
        else:
            per_code[charge.code] = per_code.get(charge.code, ZERO) + charge.amount
    if invoice.is_credit:
        return net, issues  # a credit memo returns money: its charges are not held
    if freight:
        if order.freight_allowed is not None:
            limit, rule = order.freight_allowed, "the PO's contract freight"
        else:
            limit = max(tol.freight_abs, abs(subtotal) * tol.freight_pct / HUNDRED)
            rule = f"max({tol.freight_abs}, {tol.freight_pct}% of {_money(subtotal)})"
        if freight > limit:
            issues.append(
                Issue(
                    Reason.FREIGHT,
                    f"freight {_money(freight)} is over {_money(limit)} ({rule})",
                )
            )
    for code, amount in per_code.items():
        rule = tol.sac_rules.get(code)
        if rule is None:
            if not tol.allow_other_charges:
                issues.append(
                    Issue(
                        Reason.SAC,
                        f"charge {code} ({_money(amount)}) is not allowed without a rule "
                        "(tolerance sac_rules)",
                    )
                )
            continue
        limit = rule.limit(subtotal)
        if amount > limit:
            issues.append(
                Issue(Reason.SAC, f"charge {code} {_money(amount)} is over its limit {limit}")
            )
    return net, issues


def match_invoice(
    invoice: Invoice,
    order: Order | None,
    receipts: Iterable[Receipt] = (),
    *,
    convert: Converter,
    prior_invoiced: Mapping[str, Decimal] | None = None,
    tolerance: Tolerance | None = None,
    duplicate_of: str | None = None,
    prior_credited: Mapping[str, Decimal] | None = None,
    vendors: Iterable[str] | None = None,
) -> MatchResult:
    """Match ``invoice`` to ``order`` and the cumulative ``receipts`` of its lines (negative
    ones are returns to the vendor).

    ``prior_invoiced``: base quantity per PO line billed by earlier (posted) invoices, net of
    credits; ``prior_credited``: base quantity per PO line credited by earlier credit memos.
    ``duplicate_of``: the id of an earlier invoice with the same :func:`invoice_key` (the
    caller looks it up), None when there is none: then DUPLICATE is the one reason given.
    ``convert``: see :data:`Converter`. ``vendors``: the ERP vendor ids of the partner that
    sent the invoice; a PO of another vendor is NO_PO (None: not checked).
    """
    tol = tolerance or Tolerance()
    header: list[Issue] = []
    subtotal = invoice.subtotal
    if duplicate_of is not None:
        # a duplicate is one thing for a person: not matched again, so no other reasons
        return MatchResult(
            status="held",
            invoice_number=invoice.invoice_number,
            po_number=invoice.po_number,
            issues=(
                Issue(
                    Reason.DUPLICATE,
                    f"invoice {invoice.invoice_number} was already received ({duplicate_of})",
                ),
            ),
            lines=(),
            is_credit=invoice.is_credit,
            subtotal=subtotal,
            total=invoice.total,
        )
    tax = sum((t.amount or ZERO for t in invoice.taxes), ZERO)
    for inv_line in invoice.lines:
        if inv_line.taxes:  # most lines have none: adding nothing is skipped
            tax += sum((t.amount or ZERO for t in inv_line.taxes), ZERO)
    line_results: list[LineResult] = []
    retry = False
    invoiced: dict[str, Decimal] = {}
    allowed = None if vendors is None else set(vendors)
    if order is not None and allowed is not None and order.vendor not in allowed:
        header.append(
            Issue(
                Reason.NO_PO,
                f"invoice {invoice.invoice_number} bills PO {order.po_number} of vendor "
                f"{order.vendor}, not the sender's ({', '.join(sorted(allowed)) or 'none'})",
            )
        )
        charges = sum((c.signed_amount for c in invoice.all_charges), ZERO)
    elif order is None or (invoice.po_number and invoice.po_number != order.po_number):
        got = f"PO {order.po_number} was given" if order else "no such PO was found"
        header.append(
            Issue(
                Reason.NO_PO,
                f"invoice {invoice.invoice_number} bills PO {invoice.po_number or '(none)'} "
                f"but {got}",
            )
        )
        charges = sum((c.signed_amount for c in invoice.all_charges), ZERO)
    else:
        matcher = _Matcher(order, receipts, prior_invoiced or {}, tol, convert, prior_credited)
        credit_memo = invoice.transaction_type == "CR"
        is_credit = invoice.is_credit  # a property over every line: once, not per line
        for inv_line in invoice.lines:
            line_results.append(matcher.line(inv_line, credit_memo, is_credit))
        if not invoice.lines:
            header.append(
                Issue(Reason.ITEM, f"invoice {invoice.invoice_number} has no lines (IT1)")
            )
        retry = matcher.retry
        invoiced = matcher.invoiced
        charges, charge_issues = _charges(invoice, order, tol, subtotal)
        header.extend(charge_issues)
    computed = subtotal + charges + tax
    if invoice.total is None:
        header.append(Issue(Reason.TOTAL, "the invoice has no TDS01 total"))
    else:
        total, want = invoice.total, computed.quantize(CENT, ROUND_HALF_UP)
        if invoice.is_credit:
            total, want = abs(total), abs(want)
        if abs(total - want) > tol.total_abs:
            header.append(
                Issue(
                    Reason.TOTAL,
                    f"TDS01 {_money(invoice.total)} differs from lines {_money(subtotal)} + "
                    f"charges {_money(charges)} + tax {_money(tax)} = {_money(computed)} "
                    f"(tolerance {tol.total_abs})",
                )
            )
    held = bool(header) or any(r.issues for r in line_results)
    return MatchResult(
        status="held" if held else "matched",
        invoice_number=invoice.invoice_number,
        po_number=invoice.po_number,
        issues=tuple(header),
        lines=tuple(line_results),
        retry_on_receipt=retry,
        is_credit=invoice.is_credit,
        invoiced=invoiced,
        subtotal=subtotal,
        charges=charges,
        tax=tax,
        computed_total=computed,
        total=invoice.total,
    )
