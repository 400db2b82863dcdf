"""The business totals of a preview run, read from its throw-away store.

Each section is a mapping of a key (a charge code and encounter, an item at a location, an
invoice...) to its measures; a section whose tables do not exist (a domain not registered)
is left out. Amounts and quantities are summed as ``Decimal`` and kept as text, exactly.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from decimal import Decimal
from typing import Any

Totals = dict[str, dict[str, Any]]

#: the report's words for each section, in the order it shows them
SECTIONS: dict[str, str] = {
    "charges": "charges by charge code and encounter (count, net quantity, net amount)",
    "charge_codes": "charges by charge code (count, amount)",
    "stock_issues": "stock moved by item and location (moves, quantity)",
    "onhand": "on-hand at the end by item and location",
    "requisitions": "requisitions by item and location (count, quantity)",
    "purchase_orders": "850s by trading partner (count)",
    "po_lines": "purchase order lines (quantity, unit, price)",
    "invoices": "invoices: match outcome (and the reasons held, by line)",
    "invoice_outcomes": "invoices by match outcome (count)",
    "invoice_holds": "invoice lines held (count)",
    "work_items": "work items by kind (count)",
}


def _d(value: Any) -> Decimal:
    return Decimal(str(value)) if value not in (None, "") else Decimal(0)


def _text(value: Decimal) -> str:
    return format(value.normalize(), "f") if value == value.to_integral() else str(value)


def _add(section: dict[str, Any], key: str, **measures: Any) -> None:
    row = section.setdefault(key, {})
    for name, value in measures.items():
        if isinstance(value, int):
            row[name] = row.get(name, 0) + value
        else:
            row[name] = _text(_d(row.get(name)) + _d(value))


def _charges(conn: sqlite3.Connection, out: Totals) -> None:
    by_pair: dict[str, Any] = {}
    by_code: dict[str, Any] = {}
    for code, encounter, qty, amount, ttype in conn.execute(
        "SELECT charge_code, encounter, quantity, amount, transaction_type FROM charges ORDER BY id"
    ):
        sign = -1 if ttype == "CD" else 1  # a credit takes back what its charge posted
        qty, amount = sign * _d(qty), sign * _d(amount)
        _add(by_pair, f"{code} | {encounter}", count=1, quantity=qty, amount=amount)
        _add(by_code, str(code), count=1, amount=amount)
    out["charges"], out["charge_codes"] = by_pair, by_code


def _stock(conn: sqlite3.Connection, out: Totals) -> None:
    moved: dict[str, Any] = {}
    for item, location, delta, uom in conn.execute(
        "SELECT item_id, location_id, delta, uom FROM inventory_transactions ORDER BY id"
    ):
        _add(moved, f"{item} @ {location} ({uom})", moves=1, quantity=delta)
    out["stock_issues"] = moved
    out["onhand"] = {
        f"{item} @ {location}": f"{_text(_d(qty))} {uom}"
        for location, item, qty, uom in conn.execute(
            "SELECT location_id, item_id, quantity, uom FROM onhand ORDER BY item_id, location_id"
        )
    }
    reqs: dict[str, Any] = {}
    for item, location, qty, uom in conn.execute(
        "SELECT item_id, location_id, quantity, uom FROM requisitions ORDER BY id"
    ):
        _add(reqs, f"{item} @ {location} ({uom})", count=1, quantity=qty)
    out["requisitions"] = reqs


def _procurement(conn: sqlite3.Connection, out: Totals) -> None:
    pos: dict[str, Any] = {}
    for (partner,) in conn.execute(
        "SELECT partner FROM x12_outbound WHERE document = '850' ORDER BY id"
    ):
        _add(pos, str(partner), count=1)
    out["purchase_orders"] = pos
    out["po_lines"] = {
        f"{po} line {line}": f"{_text(_d(qty))} {uom} at {price}"
        for po, line, qty, uom, price in conn.execute(
            "SELECT po_number, line, quantity, uom, unit_price FROM po_lines "
            "ORDER BY po_number, line"
        )
    }
    invoices: dict[str, Any] = {}
    outcomes: dict[str, Any] = {}
    for partner, number, status, reasons in conn.execute(
        "SELECT partner, invoice_number, status, reasons FROM invoices ORDER BY id"
    ):
        key = f"{partner} {number}"
        if key in invoices:  # a duplicate of one on file: its own entry
            key = f"{key} ({status})"
        invoices[key] = " ".join([str(status), *_reason_codes(reasons)])
        _add(outcomes, str(status), count=1)
    out["invoices"], out["invoice_outcomes"] = invoices, outcomes
    holds: dict[str, Any] = {}
    for partner, number in conn.execute(
        "SELECT i.partner, i.invoice_number FROM invoice_lines l JOIN invoices i "
        "ON i.id = l.invoice_id WHERE l.posted = 0 AND i.status IN ('held', 'matched')"
    ):
        _add(holds, f"{partner} {number}", count=1)
    out["invoice_holds"] = holds


def _reason_codes(reasons: str | None) -> list[str]:
    """The hold reasons' codes (PRICE, QTY_RECEIVED...), line by line: what the outcome is,
    without the message texts (they name the tolerance, which a tolerance change changes)."""
    try:
        parsed = json.loads(reasons or "[]")
    except ValueError:
        return [str(reasons)]
    out = []
    for r in parsed if isinstance(parsed, list) else [parsed]:
        if isinstance(r, dict):
            line = f" line {r['line']}" if r.get("line") else ""
            out.append(f"{r.get('reason', '?')}{line}")
        else:
            out.append(str(r))
    return out


def _work_items(conn: sqlite3.Connection, out: Totals) -> None:
    kinds: dict[str, Any] = {}
    for kind, n in conn.execute("SELECT kind, COUNT(*) FROM work_items GROUP BY kind"):
        kinds[str(kind)] = {"count": n}
    out["work_items"] = kinds


_READERS: list[Callable[[sqlite3.Connection, Totals], None]] = [
    _charges,
    _stock,
    _procurement,
    _work_items,
]


def business_totals(conn: sqlite3.Connection) -> Totals:
    """Every section whose tables exist in the store behind ``conn``."""
    out: Totals = {}
    for reader in _READERS:
        try:
            reader(conn, out)
        except sqlite3.OperationalError:  # a domain that is not registered: no tables
            continue
    return out
