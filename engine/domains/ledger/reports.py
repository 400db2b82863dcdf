"""The supply ledger's reports for people (the console's supply-chain, revenue-cycle and
utilization pages): bounded reads of the ledger's own tables through the read handle a store
hands out (``store.reading()``); nothing here writes."""

from __future__ import annotations

import json
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


#: How the utilization report groups usage: its group columns for each grouping.
UTILIZATION_GROUPS: dict[str, tuple[str, ...]] = {
    "item": ("location", "item", "uom"),
    "location": ("location",),
    "procedure": ("procedure",),
    "physician": ("physician",),
    "ordering_physician": ("ordering_physician",),
    "payer": ("payer", "payer_kind"),
}
#: The figures of each utilization row (decimal text but ``events``).
UTILIZATION_FIGURES = (
    "events",
    "quantity",
    "billable_quantity",
    "non_billable_quantity",
    "charged",
    "supply_cost",
    "margin",
)
#: What a group shows when the messages did not say (a FHIR SupplyDelivery names no payer).
NOT_GIVEN = "not given"


def _group_key(r: dict[str, Any], by: str) -> tuple[str, ...]:
    if by == "procedure":
        detail = json.loads(r["detail"]) if r["detail"] else {}
        return (detail.get("procedure") or NOT_GIVEN,)
    values = {
        "location": r["location"],
        "item": r["item"],
        "uom": r["uom"],
        "physician": r["performer"],
        "ordering_physician": r["orderer"],
        "payer": r["payer"],
        "payer_kind": r["payer_kind"],
    }
    return tuple(values[c] or NOT_GIVEN for c in UTILIZATION_GROUPS[by])


def utilization(
    tx: Any,
    since: float,
    limit: int = 1000,
    *,
    by: str = "item",
    cost: Callable[[str], Decimal | None] | None = None,
) -> list[dict[str, Any]]:
    """Usage booked since ``since`` grouped ``by`` one of :data:`UTILIZATION_GROUPS` (location
    and item; location; procedure; performing or ordering physician, by id; payer): events,
    quantity, how much of it was billable, the amount charged, the supply cost at the item
    master's cost (``cost(item)``) and the margin (charged less cost). Non-billable usage is
    kept for exactly this reporting; what the messages did not give shows as ``not given``."""
    if by not in UTILIZATION_GROUPS:
        raise ValueError(f"by: expected one of {', '.join(UTILIZATION_GROUPS)} (got {by!r})")
    rows = _rows(
        tx,
        "SELECT e.location_id AS location, e.item_id AS item, e.chargeable, e.quantity, "
        "e.uom, e.kind, e.performer, e.orderer, e.payer, e.payer_kind, "
        f"{'e.detail' if by == 'procedure' else 'NULL AS detail'}, "
        "c.amount, c.status AS charge_status FROM consumption_events AS e "
        "LEFT JOIN charges AS c ON c.event_id = e.id "
        "WHERE e.created_at >= ? ORDER BY e.id DESC LIMIT ?",
        (since, limit * 20),
    )
    columns = UTILIZATION_GROUPS[by]
    costs: dict[str, Decimal | None] = {}
    out: dict[tuple[str, ...], dict[str, Any]] = {}
    for r in rows:
        key = _group_key(r, by)
        agg = out.get(key)
        if agg is None:
            agg = out[key] = dict(zip(columns, key, strict=True))
            agg.update({f: Decimal(0) for f in UTILIZATION_FIGURES}, events=0)
        qty = _dec(r["quantity"])
        if r["kind"] == "credit":
            qty = -qty  # a credit takes its usage back
        agg["events"] += 1
        agg["quantity"] += qty
        agg["billable_quantity" if r["chargeable"] else "non_billable_quantity"] += qty
        if r["amount"] and r["charge_status"] != "rejected":
            agg["charged"] += _dec(r["amount"])
        if cost is not None:
            if r["item"] not in costs:
                costs[r["item"]] = cost(r["item"])
            unit = costs[r["item"]]
            agg["supply_cost"] += qty * unit if unit is not None else 0
    listed = sorted(out.values(), key=lambda a: tuple(a[c] for c in columns))[:limit]
    for a in listed:
        a["margin"] = a["charged"] - a["supply_cost"]
        for k in UTILIZATION_FIGURES[1:]:
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
