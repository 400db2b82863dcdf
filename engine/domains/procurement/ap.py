"""What accounts payable gets for a matched invoice: the AP document and its posting key.

:func:`ap_invoice` writes the lines as billed (quantity, unit and price as the vendor billed
them, with the stocking-unit conversion beside them), unit prices rounded to the AP system's
precision and amounts that tie exactly to the total; :func:`ap_posting_key` names one posting
(the whole invoice, or the lines a line-level hold let through), so AP never gets the same
lines twice, whoever posts them (the book, or a person releasing a held invoice).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from engine.domains.procurement.match import CENT, LineResult, MatchResult
from engine.domains.procurement.partners import Partner
from engine.x12.documents import Invoice


def line_sort(line: str) -> tuple[int, str]:
    return (0, f"{int(line):09d}") if line.isdigit() else (1, line)


def ap_posting_key(subject: str, lines: Sequence[Any] | None) -> str:
    """The business key of one AP posting of an invoice (``subject`` = partner:number): the
    whole invoice (``lines`` None; the same key whoever posts it, the book or a person's
    release), or the lines posted on their own under a line-level hold."""
    if lines is None:
        return f"810:{subject}"
    numbers = sorted((getattr(ln, "invoice_line", ln) for ln in lines), key=line_sort)
    return f"810:{subject}:lines:{','.join(numbers)}"


def ap_invoice(
    partner: Partner,
    invoice: Invoice,
    result: MatchResult,
    correlation_id: str,
    *,
    lines: Sequence[LineResult] | None = None,
    with_header: bool = True,
    decimals: int = 4,
) -> dict[str, Any]:
    """The AP invoice the ERP gets for a matched 810 (or the lines of it that post now).

    Lines go as billed: quantity, unit (ours for the vendor's code; ``vendor_uom`` when it
    differs) and unit price, with the stocking-unit conversion beside them (``stock_*``). Unit
    prices are rounded to ``decimals`` (what the AP system takes); each line's ``amount`` is
    billed quantity × billed price rounded to the cent, and ``subtotal`` + ``charges`` +
    ``tax`` (+ ``adjustment``, the cent of rounding the vendor's TDS01 carries) = ``total``
    exactly. A credit posts negative amounts. ``with_header``: this posting carries the
    invoice's charges and tax (the first one does; lines released later go on their own)."""
    chosen = list(result.lines if lines is None else lines)
    unit = Decimal(1).scaleb(-decimals)
    sign = -1 if result.is_credit else 1
    out_lines = []
    subtotal = Decimal("0.00")
    for ln in chosen:
        amount = ln.amount.quantize(CENT, ROUND_HALF_UP)
        if result.is_credit:
            amount = -abs(amount)
        subtotal += amount
        billed = ln.billed_unit
        try:
            ours = partner.our_unit(billed) if billed else ln.base_unit
        except Exception:
            ours = billed
        entry: dict[str, Any] = {
            "line": ln.invoice_line,
            "po_line": ln.po_line,
            "quantity": None if ln.billed_quantity is None else _text(ln.billed_quantity),
            "uom": ours,
            "unit_price": None if ln.billed_price is None else str(ln.billed_price.quantize(unit)),
            "amount": str(amount),
        }
        if billed and billed != ours:
            entry["vendor_uom"] = billed
        if ln.quantity is not None and ln.base_unit:
            entry["stock_quantity"] = _text(ln.quantity)
            entry["stock_uom"] = ln.base_unit
            if ln.price is not None:
                entry["stock_unit_price"] = str(ln.price.quantize(unit, ROUND_HALF_UP))
        out_lines.append(entry)
    charges = tax = Decimal("0.00")
    if with_header:
        charges = result.charges.quantize(CENT, ROUND_HALF_UP)
        tax = result.tax.quantize(CENT, ROUND_HALF_UP)
        if result.is_credit:
            charges, tax = -abs(charges), -abs(tax)
    computed = subtotal + charges + tax
    total = computed
    whole = with_header and len(chosen) == len(result.lines)
    if whole and result.total is not None:
        total = sign * abs(result.total) if result.is_credit else result.total
    doc: dict[str, Any] = {
        "type": "ap_invoice",
        "vendor": partner.id,
        "invoice_number": invoice.invoice_number,
        "invoice_date": invoice.invoice_date.isoformat() if invoice.invoice_date else None,
        "po_number": invoice.po_number,
        "credit": result.is_credit,
        "currency": invoice.currency or "USD",
        "subtotal": str(subtotal),
        "charges": str(charges),
        "tax": str(tax),
        "total": str(total),
        "lines": out_lines,
        "match": "three_way",
        "correlation_id": correlation_id,
    }
    if total != computed:
        doc["adjustment"] = str(total - computed)
    if not whole:
        doc["part"] = {
            "lines": [ln.invoice_line for ln in chosen],
            "of_lines": len(result.lines),
            "with_header": with_header,
        }
    return doc


def _text(value: Decimal) -> str:
    """A quantity as written, without exponent or trailing zeros (``10``, ``2.5``)."""
    if value == value.to_integral_value():
        return str(value.quantize(Decimal(1)))
    return format(value.normalize(), "f")


__all__ = ["ap_invoice", "ap_posting_key", "line_sort"]
