"""Three-way match (DOMAIN §4): every reason code, both sides of every tolerance, credits,
partial receipts, invoice before receipt, unit conversion, and a 10,000-line invoice."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

import pytest

from engine.domains.procurement.match import (
    MatchResult,
    Order,
    OrderLine,
    Reason,
    Receipt,
    SacRule,
    Tolerance,
    converter_from_graph,
    converter_from_table,
    invoice_key,
    match_invoice,
)
from engine.errors import ConfigError
from engine.uom import UomGraph
from engine.x12.documents import (
    Charge,
    Invoice,
    InvoiceLine,
    read_invoice,
    read_purchase_order,
    read_ship_notice,
)
from engine.x12.segments import transaction_sets
from tests.steps import count_steps

D = Decimal
PO = "4500012345"

# Line 1: bone screws ordered in boxes of 10 (base EA); line 2: gloves ordered in EA (a box is
# 10 EA); line 3: a bill-only implant (evaluated receipt, two-way match).
ORDER = Order(
    po_number=PO,
    lines=(
        OrderLine("1", "SCREW", D(2), "BX", D("125.00"), "EA", (("VC", "ORTH-SCR-35"), ("IN", "100234"))),
        OrderLine("2", "GLOVE", D(100), "EA", D("1.00"), "EA", (("VC", "GLV-7"), ("IN", "100777"))),
        OrderLine("3", "KNEE", D(1), "EA", D("950.00"), "EA", (("VC", "KNEE-1"),), receipt_required=False),
    ),
)  # fmt: skip
CONVERT = converter_from_table({("SCREW", "BX"): D(10), ("GLOVE", "BX"): D(10), ("", "EA"): D(1)})
VC = {"1": "ORTH-SCR-35", "2": "GLV-7", "3": "KNEE-1"}
FULL = [Receipt("1", D(2), "BX"), Receipt("2", D(100), "EA")]


def L(no: str, qty: str, unit: str, price: str, vc: str | None = None) -> InvoiceLine:
    """An invoice line billing PO line ``no`` (IT101 = PO line) for vendor part ``vc``."""
    return InvoiceLine(
        line_number=no,
        quantity=D(qty),
        unit=unit,
        unit_price=D(price),
        product_ids=(("VC", vc or VC.get(no, "UNKNOWN")),),
        po_line=no,
    )


def C(code: str, amount: str, indicator: str = "C") -> Charge:
    return Charge(indicator=indicator, code=code, amount=D(amount))


def invoice(
    lines: list[InvoiceLine],
    charges: list[Charge] = (),  # type: ignore[assignment]
    *,
    total_delta: str = "0",
    credit: bool = False,
    po: str = PO,
) -> Invoice:
    """An invoice whose TDS is lines + charges (+ ``total_delta``), as a vendor would send."""
    total = sum((x.amount for x in lines), D(0)) + sum((c.signed_amount for c in charges), D(0))
    return Invoice(
        invoice_number="INV-1",
        invoice_date=None,
        po_number=po,
        transaction_type="CR" if credit else "DI",
        lines=tuple(lines),
        charges=tuple(charges),
        total=total.quantize(D("0.01")) + D(total_delta),
    )


@dataclass
class Case:
    id: str
    lines: list[InvoiceLine]
    reasons: set[Reason] = field(default_factory=set)
    receipts: list[Receipt] = field(default_factory=lambda: list(FULL))
    prior: dict[str, Decimal] = field(default_factory=dict)
    tol: dict[str, object] = field(default_factory=dict)
    charges: list[Charge] = field(default_factory=list)
    total_delta: str = "0"
    duplicate: str | None = None
    credit: bool = False
    order: Order | None = ORDER
    po: str = PO
    retry: bool = False


EXACT = dict(price_abs=None)  # price tolerance by percentage only (no absolute limit set)
PCT0 = dict(price_pct=None)  # price tolerance by absolute amount only (no percentage set)
ANY = dict(limits="any")  # within the larger limit (Wharf's rule before issue 18)
HOLD_BELOW = dict(price_below_po="hold")  # billing below the PO price is checked too

CASES = [
    Case("exact-match", [L("1", "2", "BX", "125.00"), L("2", "100", "EA", "1.00")]),
    # PRICE: max(po × pct, abs) per base unit; at the limit passes, just over fails.
    Case("price-pct-at-limit-high", [L("2", "100", "EA", "1.02")], tol=EXACT),
    Case("price-pct-over-high", [L("2", "100", "EA", "1.0201")], {Reason.PRICE}, tol=EXACT),
    Case("price-pct-at-limit-low", [L("2", "100", "EA", "0.98")], tol={**EXACT, **HOLD_BELOW}),
    Case("price-pct-over-low", [L("2", "100", "EA", "0.9799")], {Reason.PRICE}, tol={**EXACT, **HOLD_BELOW}),
    Case("price-abs-at-limit", [L("2", "100", "EA", "1.05")], tol={**PCT0, "price_abs": D("0.05")}),
    Case("price-abs-over", [L("2", "100", "EA", "1.0501")], {Reason.PRICE}, tol={**PCT0, "price_abs": D("0.05")}),
    Case("price-abs-wider-than-pct", [L("2", "100", "EA", "1.05")], tol={"price_abs": D("0.05"), **ANY}),
    Case("price-abs-wider-over", [L("2", "100", "EA", "1.06")], {Reason.PRICE}, tol={"price_abs": D("0.05"), **ANY}),
    # the default before issue 18 (2 % or $1/EA, the larger), now written out: 13.00/EA passes
    Case("price-default-tolerance", [L("1", "2", "BX", "130.00")], tol={"price_abs": D("1.00"), **ANY}),
    Case("price-per-base-bx-at-limit", [L("1", "2", "BX", "127.50")], tol=EXACT),
    Case("price-per-base-bx-over", [L("1", "2", "BX", "127.51")], {Reason.PRICE}, tol=EXACT),
    Case("price-invoiced-in-ea-at-limit", [L("1", "20", "EA", "12.75")], tol=EXACT),
    Case("price-invoiced-in-ea-over", [L("1", "20", "EA", "12.76")], {Reason.PRICE}, tol=EXACT),
    # QTY_REC: cumulative invoiced vs cumulative received.
    Case("qty-rec-at-limit", [L("2", "50", "EA", "1.00")], receipts=[Receipt("2", D(50), "EA")]),
    Case("qty-rec-over", [L("2", "51", "EA", "1.00")], {Reason.QTY_REC}, receipts=[Receipt("2", D(50), "EA")], retry=True),
    Case("qty-rec-pct-at-limit", [L("2", "55", "EA", "1.00")], receipts=[Receipt("2", D(50), "EA")], tol={"qty_received_pct": D(10)}),
    Case("qty-rec-pct-over", [L("2", "56", "EA", "1.00")], {Reason.QTY_REC}, receipts=[Receipt("2", D(50), "EA")], tol={"qty_received_pct": D(10)}, retry=True),
    Case("qty-abs-at-limit", [L("2", "52", "EA", "1.00")], receipts=[Receipt("2", D(50), "EA")], tol={"qty_abs": D(2), **ANY}),
    Case("qty-abs-over", [L("2", "53", "EA", "1.00")], {Reason.QTY_REC}, receipts=[Receipt("2", D(50), "EA")], tol={"qty_abs": D(2), **ANY}, retry=True),
    Case("partial-receipts-sum", [L("2", "50", "EA", "1.00")], receipts=[Receipt("2", D(20), "EA"), Receipt("2", D(30), "EA")]),
    Case("partial-receipt-not-enough", [L("2", "50", "EA", "1.00")], {Reason.QTY_REC}, receipts=[Receipt("2", D(20), "EA")], retry=True),
    Case("receipt-in-boxes", [L("2", "50", "EA", "1.00")], receipts=[Receipt("2", D(5), "BX")]),
    Case("return-reduces-received", [L("2", "50", "EA", "1.00")], {Reason.QTY_REC}, receipts=[Receipt("2", D(50), "EA"), Receipt("2", D(-1), "EA")], retry=True),
    Case("cumulative-prior-at-limit", [L("2", "10", "EA", "1.00")], receipts=[Receipt("2", D(50), "EA")], prior={"2": D(40)}),
    Case("cumulative-prior-over", [L("2", "10", "EA", "1.00")], {Reason.QTY_REC}, receipts=[Receipt("2", D(50), "EA")], prior={"2": D(41)}, retry=True),
    Case("two-lines-one-po-line", [L("2", "30", "EA", "1.00"), L("2", "30", "EA", "1.00")], {Reason.QTY_REC}, receipts=[Receipt("2", D(50), "EA")], retry=True),
    # QTY_ORD: cumulative invoiced vs ordered (over-receipt does not make over-billing right).
    Case("qty-ord-over", [L("2", "101", "EA", "1.00")], {Reason.QTY_ORD}, receipts=[Receipt("2", D(120), "EA")]),
    Case("qty-ord-pct-at-limit", [L("2", "105", "EA", "1.00")], receipts=[Receipt("2", D(120), "EA")], tol={"qty_ordered_pct": D(5)}),
    Case("qty-ord-pct-over", [L("2", "106", "EA", "1.00")], {Reason.QTY_ORD}, receipts=[Receipt("2", D(120), "EA")], tol={"qty_ordered_pct": D(5)}),
    Case("qty-ord-and-rec", [L("2", "101", "EA", "1.00")], {Reason.QTY_ORD, Reason.QTY_REC}),
    # NO_RECEIPT, and the two-way bill-only line.
    Case("no-receipt", [L("2", "10", "EA", "1.00")], {Reason.NO_RECEIPT}, receipts=[], retry=True),
    Case("bill-only-needs-no-receipt", [L("3", "1", "EA", "950.00")], receipts=[]),
    # UOM
    Case("uom-invoice-unit-unknown", [L("2", "10", "CS", "10.00")], {Reason.UOM}),
    Case("uom-receipt-unit-unknown", [L("2", "10", "EA", "1.00")], {Reason.UOM}, receipts=[Receipt("2", D(1), "PK")]),
    Case("uom-bx-of-10-against-ea", [L("2", "10", "BX", "10.00")]),
    Case("uom-bx-of-10-price-over", [L("2", "10", "BX", "10.30")], {Reason.PRICE}, tol=EXACT),
    Case("uom-bx-of-10-qty-over", [L("2", "11", "BX", "10.00")], {Reason.QTY_ORD, Reason.QTY_REC}),
    Case("uom-require-po-unit", [L("2", "10", "BX", "10.00")], {Reason.UOM}, tol={"require_po_unit": True}),
    # ITEM
    Case("item-no-such-line", [L("9", "1", "EA", "1.00", vc="NOPE")], {Reason.ITEM}),
    Case("item-differs-on-line", [L("1", "2", "BX", "125.00", vc="OTHER-9")], {Reason.ITEM}),
    Case("item-found-by-id", [L("7", "2", "BX", "125.00", vc="ORTH-SCR-35")]),
    # DUP, NO_PO
    Case("dup", [L("2", "100", "EA", "1.00")], {Reason.DUP}, duplicate="invoice 17 of 2026-01-10"),
    Case("no-po", [L("2", "100", "EA", "1.00")], {Reason.NO_PO}, order=None),
    Case("other-po", [L("2", "100", "EA", "1.00")], {Reason.NO_PO}, po="4500099999"),
    # FREIGHT: max(freight_abs 25.00, 5 % of the 350.00 subtotal) = 25.00 by default.
    Case("freight-abs-at-limit", [L("1", "2", "BX", "125.00"), L("2", "100", "EA", "1.00")], charges=[C("D240", "25.00")]),
    Case("freight-abs-over", [L("1", "2", "BX", "125.00"), L("2", "100", "EA", "1.00")], {Reason.FREIGHT}, charges=[C("D240", "25.01")]),
    Case("freight-pct-at-limit", [L("1", "2", "BX", "125.00"), L("2", "100", "EA", "1.00")], charges=[C("D240", "35.00")], tol={"freight_abs": D(0), "freight_pct": D(10)}),
    Case("freight-pct-over", [L("1", "2", "BX", "125.00"), L("2", "100", "EA", "1.00")], {Reason.FREIGHT}, charges=[C("D240", "35.01")], tol={"freight_abs": D(0), "freight_pct": D(10)}),
    Case("freight-summed", [L("2", "100", "EA", "1.00")], {Reason.FREIGHT}, charges=[C("D240", "20.00"), C("D240", "5.01")]),
    Case("freight-po-contract-at-limit", [L("2", "100", "EA", "1.00")], charges=[C("D240", "10.00")], order=replace(ORDER, freight_allowed=D(10))),
    Case("freight-po-contract-over", [L("2", "100", "EA", "1.00")], {Reason.FREIGHT}, charges=[C("D240", "10.01")], order=replace(ORDER, freight_allowed=D(10))),
    # SAC: other charges need a rule; allowances are never held.
    Case("sac-without-rule", [L("2", "100", "EA", "1.00")], {Reason.SAC}, charges=[C("H090", "5.00")]),
    Case("sac-rule-at-limit", [L("2", "100", "EA", "1.00")], charges=[C("H090", "5.00")], tol={"sac_rules": {"H090": SacRule(max_amount=D(5))}}),
    Case("sac-rule-over", [L("2", "100", "EA", "1.00")], {Reason.SAC}, charges=[C("H090", "5.01")], tol={"sac_rules": {"H090": SacRule(max_amount=D(5))}}),
    Case("sac-rule-pct-at-limit", [L("2", "100", "EA", "1.00")], charges=[C("H090", "3.00")], tol={"sac_rules": {"H090": SacRule(max_pct=D(3))}}),
    Case("sac-rule-pct-over", [L("2", "100", "EA", "1.00")], {Reason.SAC}, charges=[C("H090", "3.01")], tol={"sac_rules": {"H090": SacRule(max_pct=D(3))}}),
    Case("sac-allowed-by-policy", [L("2", "100", "EA", "1.00")], charges=[C("H090", "99.00")], tol={"allow_other_charges": True}),
    Case("allowance-not-held", [L("2", "100", "EA", "1.00")], charges=[C("C310", "10.00", indicator="A")]),
    # TOTAL: TDS against lines + charges, tolerance one cent by default.
    Case("total-at-limit", [L("2", "100", "EA", "1.00")], total_delta="0.01"),
    Case("total-over", [L("2", "100", "EA", "1.00")], {Reason.TOTAL}, total_delta="0.02"),
    Case("total-under", [L("2", "100", "EA", "1.00")], {Reason.TOTAL}, total_delta="-0.02"),
    Case("total-exact-required", [L("2", "100", "EA", "1.00")], {Reason.TOTAL}, total_delta="0.01", tol={"total_abs": D(0)}),
    Case("total-with-allowance", [L("2", "100", "EA", "1.00")], {Reason.TOTAL}, charges=[C("C310", "10.00", indicator="A")], total_delta="10.00"),
    # Credits: reduce what was invoiced; no receipt needed; cannot credit more than billed. A
    # credit memo credits goods that went back to the vendor (negative receipts: returns).
    Case("credit-memo", [L("2", "20", "EA", "1.00")], receipts=[Receipt("2", D(-20), "EA")], prior={"2": D(50)}, credit=True),
    Case("credit-memo-at-limit", [L("2", "50", "EA", "1.00")], receipts=[Receipt("2", D(-50), "EA")], prior={"2": D(50)}, credit=True),
    Case("credit-memo-over-invoiced", [L("2", "51", "EA", "1.00")], {Reason.QTY_INV}, receipts=[Receipt("2", D(-51), "EA")], prior={"2": D(50)}, credit=True),
    Case("credit-memo-nothing-invoiced", [L("1", "1", "BX", "125.00")], {Reason.QTY_INV}, receipts=[Receipt("1", D(-1), "BX")], credit=True),
    Case("credit-memo-price", [L("2", "20", "EA", "1.50")], {Reason.PRICE}, receipts=[Receipt("2", D(-20), "EA")], prior={"2": D(50)}, credit=True, tol=EXACT),
    Case("credit-memo-freight-not-held", [L("2", "20", "EA", "1.00")], receipts=[Receipt("2", D(-20), "EA")], prior={"2": D(50)}, credit=True, charges=[C("D240", "99.00")]),
    Case("negative-qty-line", [L("2", "100", "EA", "1.00"), L("2", "-5", "EA", "1.00")]),
    Case("negative-qty-over-invoiced", [L("2", "-5", "EA", "1.00")], {Reason.QTY_INV}, receipts=[*FULL, Receipt("2", D(-5), "EA")]),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_match_table(case: Case) -> None:
    """Each row: the reasons the match must give (none: matched) and the retry flag."""
    inv = invoice(
        case.lines, case.charges, total_delta=case.total_delta, credit=case.credit, po=case.po
    )
    result = match_invoice(
        inv,
        case.order,
        case.receipts,
        convert=CONVERT,
        prior_invoiced=case.prior,
        tolerance=Tolerance(**case.tol),  # type: ignore[arg-type]
        duplicate_of=case.duplicate,
    )
    assert result.reasons == case.reasons, [i.message for i in result.all_issues]
    assert result.status == ("held" if case.reasons else "matched")
    assert result.matched is not bool(case.reasons)
    assert result.retry_on_receipt is case.retry
    for issue in result.all_issues:
        assert issue.message  # every hold says what was expected and what came


def test_invoice_before_receipt_is_held_then_matches() -> None:
    """DOMAIN §4.2.4: an invoice that arrives first is held (NO_RECEIPT, retry) and matches
    when the receipt arrives."""
    inv = invoice([L("1", "2", "BX", "125.00")])
    first = match_invoice(inv, ORDER, [], convert=CONVERT)
    assert first.status == "held" and first.retry_on_receipt
    assert first.lines[0].reasons == (Reason.NO_RECEIPT,)
    assert "nothing received yet for PO line 1" in first.lines[0].issues[0].message
    half = match_invoice(inv, ORDER, [Receipt("1", D(1), "BX")], convert=CONVERT)
    assert half.reasons == {Reason.QTY_REC} and half.retry_on_receipt
    done = match_invoice(
        inv, ORDER, [Receipt("1", D(1), "BX"), Receipt("1", D(10), "EA")], convert=CONVERT
    )
    assert done.status == "matched" and not done.retry_on_receipt


def test_line_result_figures_are_in_the_base_unit() -> None:
    """Quantities and prices are reported per base unit; ``invoiced`` is the new cumulative."""
    inv = invoice([L("1", "1", "BX", "126.00")])
    result = match_invoice(
        inv, ORDER, FULL, convert=CONVERT, prior_invoiced={"1": D(10), "2": D(7)}
    )
    (line,) = result.lines
    assert (line.po_line, line.base_unit) == ("1", "EA")
    assert (line.quantity, line.ordered, line.received) == (D(10), D(20), D(20))
    assert (line.invoiced_before, line.invoiced_after) == (D(10), D(20))
    assert (line.price, line.po_price) == (D("12.6"), D("12.5"))
    assert dict(result.invoiced) == {"1": D(20), "2": D(7)}
    assert result.subtotal == D("126.00") and result.computed_total == D("126.00")


def test_credit_reduces_cumulative_invoiced() -> None:
    """A credit memo's lines lower the PO line's invoiced quantity for the next match."""
    inv = invoice([L("2", "20", "EA", "1.00")], credit=True)
    returned = [Receipt("2", D(-20), "EA")]  # the 20 EA went back to the vendor
    result = match_invoice(inv, ORDER, returned, convert=CONVERT, prior_invoiced={"2": D(50)})
    assert result.is_credit and result.matched
    assert result.invoiced["2"] == D(30) and result.lines[0].quantity == D(-20)


def test_price_hold_message_names_both_prices() -> None:
    """The PRICE message says what the PO had and what came, per base unit."""
    result = match_invoice(invoice([L("1", "2", "BX", "140.00")]), ORDER, FULL, convert=CONVERT)
    (issue,) = result.all_issues
    assert issue.reason is Reason.PRICE and issue.line == "1"
    assert "14.00 per EA against 12.50 on PO line 1" in issue.message


def test_line_numbers_with_leading_zeros_match() -> None:
    """IT101 '001' bills PO line '1'."""
    result = match_invoice(
        invoice([L("001", "2", "BX", "125.00", vc="ORTH-SCR-35")]), ORDER, FULL, convert=CONVERT
    )
    assert result.matched and result.lines[0].po_line == "1"


def test_po_line_numbers_equal_but_for_leading_zeros_bill_the_line_of_the_item() -> None:
    """PO lines '1' (screws) and '01' (gloves) are the same number once compared; an invoice
    line naming 1 for the gloves bills the gloves' line, not the screws' (the ids of the
    number's last line were compared, its first line returned)."""
    order = Order(
        PO,
        (
            OrderLine("1", "SCREW", D(2), "BX", D("125.00"), "EA", (("VC", "ORTH-SCR-35"),)),
            OrderLine("01", "GLOVE", D(100), "EA", D("1.00"), "EA", (("VC", "GLV-7"),)),
        ),
    )
    receipts = [Receipt("1", D(2), "BX"), Receipt("01", D(100), "EA")]
    gloves = invoice([L("1", "100", "EA", "1.00", vc="GLV-7")])
    result = match_invoice(gloves, order, receipts, convert=CONVERT)
    assert result.lines[0].po_line == "01"
    screws = invoice([L("1", "2", "BX", "125.00", vc="ORTH-SCR-35")])
    assert match_invoice(screws, order, receipts, convert=CONVERT).lines[0].po_line == "1"


def test_same_item_on_two_po_lines_fills_the_first_open_one() -> None:
    """Matched by item with two PO lines of it: the first not yet fully invoiced is used."""
    order = Order(
        PO,
        (
            OrderLine("1", "GLOVE", D(10), "EA", D("1.00"), product_ids=(("VC", "GLV-7"),)),
            OrderLine("2", "GLOVE", D(10), "EA", D("1.00"), product_ids=(("VC", "GLV-7"),)),
        ),
    )
    receipts = [Receipt("1", D(10), "EA"), Receipt("2", D(10), "EA")]
    inv = invoice([L("x", "10", "EA", "1.00", vc="GLV-7")])
    result = match_invoice(inv, order, receipts, convert=CONVERT, prior_invoiced={"1": D(10)})
    assert result.matched and result.lines[0].po_line == "2"


def test_gtin_forms_compare_equal() -> None:
    """A UPC-12 on the invoice matches the PO line's GTIN-14 (the same number)."""
    order = Order(
        PO, (OrderLine("1", "PAD", D(5), "EA", D("2.00"), product_ids=(("UK", "00614141999996"),)),)
    )
    line = replace(L("8", "5", "EA", "2.00"), product_ids=(("UP", "614141999996"),))
    result = match_invoice(invoice([line]), order, [Receipt("1", D(5), "EA")], convert=CONVERT)
    assert result.matched and result.lines[0].po_line == "1"


@pytest.mark.parametrize(("buyer_item", "reasons"), [("ITEM-7", set()), ("ITEM-8", {Reason.ITEM})])
def test_invoice_buyer_item_is_compared_with_the_po_lines_erp_item(
    buyer_item: str, reasons: set[Reason]
) -> None:
    """The invoice echoes the PO line's vendor part and adds a buyer item (IN) the PO line
    does not send: it is compared with the line's ERP item id (the same: matched; another:
    ITEM), though every id the PO line sends is on the invoice."""
    order = Order(
        PO, (OrderLine("1", "item-7", D(5), "EA", D("2.00"), product_ids=(("VC", "PAD-1"),)),)
    )
    line = replace(L("1", "5", "EA", "2.00"), product_ids=(("VC", "PAD-1"), ("IN", buyer_item)))
    result = match_invoice(invoice([line]), order, [Receipt("1", D(5), "EA")], convert=CONVERT)
    assert set(result.lines[0].reasons) == reasons


EX_850 = """\
ISA*00*          *00*          *ZZ*HOSPITALID     *ZZ*VENDORID       *260115*1030*U*00401*000000001*1*P*>~
GS*PO*HOSPITALID*VENDORID*20260115*1030*1*X*004010~
ST*850*0001~
BEG*00*SA*4500012345**20260115~
N1*ST*GENERAL HOSPITAL OR DOCK*UL*0614141000029~
PO1*1*2*BX*125.00*PE*VC*ORTH-SCR-35*UK*10614141999993*IN*100234~
PID*F****BONE SCREW 3.5MM BX/10~
PO4*10*1*EA~
PO1*2*5*EA*12.50*PE*VC*GLV-7*IN*100777~
CTT*2*7~
SE*10*0001~
GE*1*1~
IEA*1*000000001~
"""
EX_856 = """\
ISA*00*          *00*          *ZZ*VENDORID       *ZZ*HOSPITALID     *260115*1030*U*00401*000000001*1*P*>~
GS*SH*VENDORID*HOSPITALID*20260115*1030*1*X*004010~
ST*856*0001~
BSN*00*SHP778899*20260116*1400*0001~
HL*1**S~
HL*2*1*O~
PRF*4500012345***20260115~
HL*3*2*P~
MAN*GM*00106141411234567897~
HL*4*3*I~
LIN*1*VC*ORTH-SCR-35*UK*10614141999993*LT*LOT2025A~
SN1*1*2*BX~
DTM*036*20290630~
CTT*4*2~
SE*14*0001~
GE*1*1~
IEA*1*000000001~
"""
EX_810 = """\
ISA*00*          *00*          *ZZ*VENDORID       *ZZ*HOSPITALID     *260115*1030*U*00401*000000001*1*P*>~
GS*IN*VENDORID*HOSPITALID*20260115*1030*1*X*004010~
ST*810*0001~
BIG*20260117*INV-55501*20260115*4500012345~
IT1*1*2*BX*125.00*PE*VC*ORTH-SCR-35*IN*100234~
TDS*26500~
SAC*C*D240***1500**********FREIGHT~
CTT*1~
SE*7*0001~
GE*1*1~
IEA*1*000000001~
"""


def read(text: str):
    (_, _, ts) = next(transaction_sets(text))
    return ts


def test_domain_example_850_856_810_with_a_uom_graph() -> None:
    """The §3.4 documents end to end: PO in BX, ASN as receipt, invoice with 15.00 freight;
    conversions from engine.uom; stricter freight (5 % of 250.00 = 12.50) holds it."""
    po = read_purchase_order(read(EX_850))
    asn = read_ship_notice(read(EX_856))
    inv = read_invoice(read(EX_810))
    graph = UomGraph.from_rows(
        [
            {
                "id": "r1",
                "item_id": "100234",
                "vendor": "",
                "from_uom": "BX",
                "to_uom": "EA",
                "factor": D(10),
            }
        ]
    )
    convert = converter_from_graph(graph)
    order = Order.from_x12(po)
    receipts = [Receipt(x.po_line or "", x.quantity or D(0), x.unit) for x in asn.lines]
    result = match_invoice(inv, order, receipts, convert=convert)
    assert result.status == "matched", [i.message for i in result.all_issues]
    assert result.total == result.computed_total == D("265.00")
    assert result.lines[0].received == D(20)
    strict = Tolerance(freight_abs=D(0), freight_pct=D(5))
    held = match_invoice(inv, order, receipts, convert=convert, tolerance=strict)
    assert held.reasons == {Reason.FREIGHT}
    assert "freight 15.00 is over 12.50" in held.issues[0].message
    # Item 100777 (line 2) has no BX row: billing gloves in boxes is a UOM hold.
    gloves = replace(
        inv, lines=(replace(inv.lines[0], po_line="2", product_ids=(("VC", "GLV-7"),)),)
    )
    assert match_invoice(gloves, order, receipts, convert=convert).reasons >= {Reason.UOM}


def test_tolerance_from_configuration() -> None:
    """Tolerances load from YAML-like mappings: text or int numbers, never floats."""
    tol = Tolerance.from_mapping(
        {
            "price_pct": "1.5",
            "price_abs": 0,
            "freight_codes": ["D240", "G830"],
            "sac_rules": {"H090": {"max_amount": "5.00"}},
            "allow_other_charges": False,
        }
    )
    assert tol.price_pct == D("1.5") and tol.price_abs == D(0)
    assert tol.freight_codes == frozenset({"D240", "G830"})
    assert tol.sac_rules["H090"] == SacRule(max_amount=D("5.00"))
    assert tol.qty_received_pct == D(0)  # defaults kept


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"price_pc": "2"}, "field not recognised"),
        ({"price_pct": 2.5}, "(got 2.5)"),
        ({"qty_abs": "-1"}, "must be a number >= 0"),
        ({"allow_other_charges": "yes"}, "true or false"),
        ({"sac_rules": {"H090": {"max": "1"}}}, "field not recognised: 'max'"),
        ({"freight_codes": "D240"}, "list of SAC02 codes"),
    ],
    ids=["unknown-key", "float", "negative", "not-bool", "sac-rule-key", "codes-not-list"],
)
def test_tolerance_configuration_errors(data: dict, words: str) -> None:
    """A wrong tolerance setting is a ConfigError with the dotted path and what came."""
    with pytest.raises(ConfigError) as info:
        Tolerance.from_mapping(data)
    assert words in str(info.value)
    assert info.value.path.startswith("tolerance.")


def test_tolerance_refuses_floats_directly() -> None:
    """Decimal-only: a float tolerance is refused at construction."""
    with pytest.raises(ConfigError, match="price_pct"):
        Tolerance(price_pct=2.0)  # type: ignore[arg-type]


def test_missing_conversion_from_the_converter() -> None:
    """converter_from_table raises UomConversionMissing, which the match reports as UOM."""
    from engine.errors import MappingMiss, UomConversionMissing

    with pytest.raises(UomConversionMissing) as info:
        CONVERT("SCREW", "CA", "EA")
    assert isinstance(info.value, MappingMiss) and info.value.key == "SCREW:CA->EA"


@pytest.mark.parametrize(
    ("a", "b"),
    [(("acme", "INV-00123"), ("ACME ", "inv 123")), (("v", "0042"), ("V", "42"))],
)
def test_invoice_key_normalises(a: tuple[str, str], b: tuple[str, str]) -> None:
    """Duplicate detection key ignores case, spaces, punctuation and leading zeros."""
    assert invoice_key(*a) == invoice_key(*b)
    assert invoice_key("acme", "INV-124") != invoice_key("acme", "INV-123")


def _big_match(n: int) -> tuple[Any, Order, list[Receipt], Any]:
    lines = tuple(
        OrderLine(str(k), f"I{k}", D(3), "BX", D("12.50"), "EA", (("VC", f"V{k}"),))
        for k in range(1, n + 1)
    )
    order = Order(PO, lines)
    receipts = [Receipt(str(k), D(30), "EA") for k in range(1, n + 1)]
    inv_lines = [
        # odd lines echo the PO line; even lines carry another number and match by item
        L(str(k) if k % 2 else f"X{k}", "3", "BX", "12.50", vc=f"V{k}")
        for k in range(1, n + 1)
    ]
    convert = converter_from_table({("", "BX"): D(10), ("", "EA"): D(1)})
    return invoice(inv_lines), order, receipts, convert


def test_matches_a_10000_line_invoice_with_work_linear_in_the_lines() -> None:
    """Dict indexes, no quadratic loops: 10,000 lines (half by item id) all match; the work
    (Python lines executed in engine/, counted, not timed: speed is bench/x12_invoice.py's)
    grows with the number of lines, not with its square: 10 times the lines, at most 12
    times the steps (a loop over every PO line per invoice line would make it ~100)."""
    n = 10_000
    inv, order, receipts, convert = _big_match(n)
    result: MatchResult = match_invoice(inv, order, receipts, convert=convert)
    assert result.matched and len(result.lines) == n
    assert result.lines[1].po_line == "2"
    steps = {}
    for size in (200, 2000):
        inv, order, receipts, convert = _big_match(size)
        small, steps[size] = count_steps(match_invoice, inv, order, receipts, convert=convert)
        assert small.matched and len(small.lines) == size
    assert steps[2000] <= 12 * steps[200], steps
