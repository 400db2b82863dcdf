"""The supply ledger's reports for people (the console's supply-chain, revenue-cycle and
utilization pages): bounded reads of the ledger's own tables through the read handle a store
hands out (``store.reading()``); nothing here writes."""

from __future__ import annotations

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
