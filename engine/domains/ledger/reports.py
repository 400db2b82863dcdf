"""The supply ledger's reports for people (the console's supply-chain, revenue-cycle and
utilization pages): bounded reads of the ledger's own tables through the read handle a store
hands out (``store.reading()``); nothing here writes."""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

#: Most rows any list of a report returns (newest or oldest first, as each says).
LIMIT = 200


def _rows(tx: Any, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    cur = tx.connection.execute(sql, params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def open_requisitions(tx: Any, limit: int = LIMIT) -> list[dict[str, Any]]:
    """Requisitions raised at a reorder point and still open, oldest first (par breaches)."""
    return _rows(
        tx,
        "SELECT id, location_id, item_id, quantity, uom, status, message_id, created_at "
        "FROM requisitions WHERE status = 'open' ORDER BY created_at LIMIT ?",
        (limit,),
    )


def charges_in(tx: Any, status: str, limit: int = LIMIT) -> list[dict[str, Any]]:
    """Charges in one status (``rejected``...), newest first."""
    return _rows(
        tx,
        "SELECT c.id, c.encounter, c.charge_code, c.quantity, c.uom, c.amount, c.status, "
        "c.message_id, c.created_at, e.item_id, e.location_id FROM charges AS c "
        "JOIN consumption_events AS e ON e.id = c.event_id WHERE c.status = ? "
        "ORDER BY c.created_at DESC LIMIT ?",
        (status, limit),
    )


def held_credits(tx: Any, limit: int = LIMIT) -> list[dict[str, Any]]:
    """Credits held for want of the line they reverse (orphan credits), oldest first."""
    return _rows(
        tx,
        "SELECT id, business_key, reverses, channel, status, message_id, created_at "
        "FROM held_credits WHERE status = 'held' ORDER BY created_at LIMIT ?",
        (limit,),
    )


def utilization(tx: Any, since: float, limit: int = 1000) -> list[dict[str, Any]]:
    """Usage booked since ``since`` by location and item: events, quantity, how much of it was
    billable, and the amount charged (non-billable usage kept for exactly this reporting)."""
    rows = _rows(
        tx,
        "SELECT e.location_id AS location, e.item_id AS item, e.chargeable, e.quantity, "
        "e.uom, c.amount, c.status AS charge_status FROM consumption_events AS e "
        "LEFT JOIN charges AS c ON c.event_id = e.id "
        "WHERE e.created_at >= ? ORDER BY e.id DESC LIMIT ?",
        (since, limit * 20),
    )
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        agg = out.setdefault(
            (r["location"], r["item"]),
            {
                "location": r["location"],
                "item": r["item"],
                "uom": r["uom"],
                "events": 0,
                "quantity": Decimal(0),
                "billable_quantity": Decimal(0),
                "non_billable_quantity": Decimal(0),
                "charged": Decimal(0),
            },
        )
        qty = _dec(r["quantity"])
        agg["events"] += 1
        agg["quantity"] += qty
        agg["billable_quantity" if r["chargeable"] else "non_billable_quantity"] += qty
        if r["amount"] and r["charge_status"] != "rejected":
            agg["charged"] += _dec(r["amount"])
    listed = sorted(out.values(), key=lambda a: (a["location"], a["item"]))[:limit]
    for a in listed:
        for k in ("quantity", "billable_quantity", "non_billable_quantity", "charged"):
            a[k] = str(a[k])
    return listed


def _dec(text: Any) -> Decimal:
    try:
        return Decimal(str(text))
    except (InvalidOperation, ValueError):
        return Decimal(0)


#: Why the ledger and the ERP differ for a line the ERP has not posted, by its posting's state.
DIFFERENCE_REASONS = {
    "pending": "pending delivery",
    "dead": "dead-lettered",
    "rejected": "rejected by the ERP",
    None: "not sent",
}


#: The figures of a reconciliation row (decimal text).
RECONCILIATION_FIGURES = (
    "ledger_quantity",
    "ledger_value",
    "posted_quantity",
    "posted_value",
    "difference_quantity",
    "difference_value",
)


def period_of(service_time: str, created_at: float) -> str:
    """The month (``YYYY-MM``) of a service date (HL7 ``YYYYMMDD...`` or ISO 8601), else of
    the booking."""
    digits = "".join(c for c in (service_time or "")[:10] if c.isdigit())
    if len(digits) >= 6:
        return f"{digits[:4]}-{digits[4:6]}"
    return time.strftime("%Y-%m", time.gmtime(created_at))


def reconciliation(
    tx: Any,
    since: float,
    cost: Callable[[str], Decimal | None],
    *,
    limit: int = 1000,
    drill: int = 10,
) -> dict[str, Any]:
    """Inventory-to-finance reconciliation of the usage booked since ``since``: by location,
    item and period (service month), the ledger's issued quantity (usage less returns) and its
    value at the item master's cost (``cost(item)``) against what the ERP acknowledged posting
    (``erp_postings``); the difference, its reasons (``DIFFERENCE_REASONS``: quantity by
    reason) and the messages behind it (up to ``drill`` a row); totals per period."""
    rows = _rows(
        tx,
        "SELECT e.kind, e.location_id, e.item_id, e.quantity, e.uom, e.service_time, "
        "e.message_id, e.created_at, p.status, p.posted_quantity, p.posted_value, p.document "
        "FROM consumption_events AS e LEFT JOIN erp_postings AS p ON p.event_id = e.id "
        "WHERE e.created_at >= ? ORDER BY e.id LIMIT ?",
        (since, limit * 20),
    )
    zero = Decimal(0)
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in rows:
        period = period_of(r["service_time"], r["created_at"])
        key = (r["location_id"], r["item_id"], period)
        agg = out.setdefault(
            key,
            {
                "location": key[0],
                "item": key[1],
                "period": period,
                "uom": r["uom"],
                "ledger_quantity": zero,
                "ledger_value": zero,
                "posted_quantity": zero,
                "posted_value": zero,
                "reasons": {},
                "messages": [],
                "documents": [],
                "_cost": cost(key[1]),
            },
        )
        unit = agg["_cost"]
        sign = -1 if r["kind"] == "credit" else 1
        qty = sign * _dec(r["quantity"])
        agg["ledger_quantity"] += qty
        agg["ledger_value"] += qty * unit if unit is not None else zero
        if r["status"] == "posted":
            posted = _dec(r["posted_quantity"])
            agg["posted_quantity"] += posted
            if r["posted_value"] is not None:
                agg["posted_value"] += _dec(r["posted_value"])
            elif unit is not None:
                agg["posted_value"] += posted * unit
            if r["document"] and r["document"] not in agg["documents"]:
                agg["documents"].append(r["document"])
            continue
        reason = DIFFERENCE_REASONS.get(r["status"], DIFFERENCE_REASONS[None])
        agg["reasons"][reason] = agg["reasons"].get(reason, zero) + qty
        if len(agg["messages"]) < drill and r["message_id"] not in agg["messages"]:
            agg["messages"].append(r["message_id"])
    listed = sorted(out.values(), key=lambda a: (a["period"], a["location"], a["item"]))[:limit]
    totals: dict[str, dict[str, Decimal]] = {}
    for a in listed:
        del a["_cost"]
        a["difference_quantity"] = a["ledger_quantity"] - a["posted_quantity"]
        a["difference_value"] = a["ledger_value"] - a["posted_value"]
        t = totals.setdefault(
            a["period"], {"ledger_value": zero, "posted_value": zero, "difference_value": zero}
        )
        for k in t:
            t[k] += a[k]
        for k in RECONCILIATION_FIGURES:
            a[k] = str(a[k])
        a["reasons"] = {k: str(v) for k, v in sorted(a["reasons"].items())}
        a["reason"] = "; ".join(f"{k} {v}" for k, v in a["reasons"].items())
    return {
        "rows": listed,
        "periods": [
            {"period": p, **{k: str(v) for k, v in t.items()}} for p, t in sorted(totals.items())
        ],
    }
