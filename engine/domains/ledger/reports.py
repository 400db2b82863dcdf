"""The supply ledger's reports for people (the console's supply-chain, revenue-cycle and
utilization pages): bounded reads of the ledger's own tables through the read handle a store
hands out (``store.reading()``); nothing here writes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

#: Most rows any list of a report returns (newest or oldest first, as each says).
LIMIT = 200


def _rows(tx: Any, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    cur = tx.connection.execute(sql, params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def _in_scope(channels: Sequence[str] | None, column: str = "channel") -> tuple[str, list[str]]:
    """The ``AND column IN (...)`` of a person's channels and its arguments (None: every
    channel, no condition; an empty scope: nothing)."""
    if channels is None:
        return "", []
    marks = ", ".join("?" * len(channels)) or "NULL"
    return f" AND {column} IN ({marks})", list(channels)


def open_requisitions(
    tx: Any, limit: int = LIMIT, channels: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Requisitions raised at a reorder point and still open, oldest first (par breaches); of
    ``channels`` only (the channel that raised them), when given. One raised before the
    channel was recorded, whose message is gone, is in no scope."""
    scope, args = _in_scope(channels)
    return _rows(
        tx,
        "SELECT id, location_id, item_id, quantity, uom, status, message_id, created_at, "
        f"channel FROM requisitions WHERE status = 'open'{scope} ORDER BY created_at LIMIT ?",
        (*args, limit),
    )


def charges_in(
    tx: Any, status: str, limit: int = LIMIT, channels: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Charges in one status (``rejected``...), newest first; of ``channels`` only (the
    channel that booked them), when given. One booked before the channel was recorded and
    not back-filled (ledger migration 10) is in no scope."""
    scope, args = _in_scope(channels, "c.channel")
    return _rows(
        tx,
        "SELECT c.id, c.encounter, c.charge_code, c.quantity, c.uom, c.amount, c.status, "
        "c.message_id, c.created_at, c.channel, e.item_id, e.location_id FROM charges AS c "
        f"JOIN consumption_events AS e ON e.id = c.event_id WHERE c.status = ?{scope} "
        "ORDER BY c.created_at DESC LIMIT ?",
        (status, *args, limit),
    )


def held_credits(
    tx: Any, limit: int = LIMIT, channels: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Credits held for want of the line they reverse (orphan credits), oldest first; of
    ``channels`` only (the channel that carried them), when given."""
    scope, args = _in_scope(channels)
    return _rows(
        tx,
        "SELECT id, business_key, reverses, channel, status, message_id, created_at "
        f"FROM held_credits WHERE status = 'held'{scope} ORDER BY created_at LIMIT ?",
        (*args, limit),
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


#: The running totals' column behind each group column of the utilization report.
_GROUP_COLUMNS = {
    "location": "location_id",
    "item": "item_id",
    "uom": "uom",
    "procedure": "procedure",
    "physician": "performer",
    "ordering_physician": "orderer",
    "payer": "payer",
    "payer_kind": "payer_kind",
}
DAY = 86400


def day_of(when: float) -> int:
    """The UTC day (days since 1970-01-01) of a time: the running totals' bucket."""
    return int(when // DAY)


def utilization(
    tx: Any,
    since: float,
    limit: int = 1000,
    *,
    by: str = "item",
    cost: Callable[[str], Decimal | None] | None = None,
    billable: bool | None = None,
) -> list[dict[str, Any]]:
    """Usage booked since the UTC day of ``since``, every event of it, grouped ``by`` one of
    :data:`UTILIZATION_GROUPS` (location and item; location; procedure; performing or ordering
    physician, by id; payer): events, quantity, how much of it was billable, the amount
    charged, the supply cost at the item master's cost (``cost(item)``) and the margin
    (charged less cost); ``billable`` True or False keeps billable or non-billable usage only
    (None: both); the first ``limit`` groups. Non-billable usage is kept for exactly this
    reporting; a credit takes its usage back; what the messages did not give shows as ``not
    given``. Summed in the database from the ledger's running totals by day (``usage_daily``,
    a few rows a day and group, never every event; see :func:`reconciliation` for the
    precision)."""
    if by not in UTILIZATION_GROUPS:
        raise ValueError(f"by: expected one of {', '.join(UTILIZATION_GROUPS)} (got {by!r})")
    columns = UTILIZATION_GROUPS[by]
    grouped = ", ".join(f"{_GROUP_COLUMNS[c]} AS {c}" for c in columns)
    chargeable = " AND chargeable = ?" if billable is not None else ""
    rows = _rows(
        tx,
        f"SELECT {grouped}, item_id AS costed, kind, chargeable, SUM(events) AS events, "
        "SUM(quantity) AS quantity, SUM(charged) AS charged FROM usage_daily "
        f"WHERE day >= ?{chargeable} "
        f"GROUP BY {', '.join(_GROUP_COLUMNS[c] for c in columns)}, item_id, kind, chargeable",
        (day_of(since), *([int(billable)] if billable is not None else [])),
    )
    out: dict[tuple[str, ...], dict[str, Any]] = {}
    for r in rows:
        key = tuple(r[c] or NOT_GIVEN for c in columns)
        agg = out.get(key)
        if agg is None:
            agg = out[key] = dict(zip(columns, key, strict=True))
            agg.update({f: Decimal(0) for f in UTILIZATION_FIGURES}, events=0)
        qty = _sum(r["quantity"]) * (-1 if r["kind"] == "credit" else 1)
        agg["events"] += int(r["events"])
        agg["quantity"] += qty
        agg["billable_quantity" if r["chargeable"] else "non_billable_quantity"] += qty
        agg["charged"] += _sum(r["charged"])
        unit = cost(r["costed"]) if cost is not None else None
        if unit is not None:
            agg["supply_cost"] += qty * unit
    listed = sorted(out.values(), key=lambda a: tuple(a[c] for c in columns))[:limit]
    for a in listed:
        a["margin"] = a["charged"] - a["supply_cost"]
        for k in UTILIZATION_FIGURES[1:]:
            a[k] = str(money(a[k]) if k in ("charged", "supply_cost", "margin") else a[k])
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


#: The service month (``YYYY-MM``) of an event, from its HL7 (``YYYYMMDD``) or ISO 8601 date.
_PERIOD = (
    "CASE WHEN substr(e.service_time, 5, 1) = '-' THEN substr(e.service_time, 1, 7) "
    "ELSE substr(e.service_time, 1, 4) || '-' || substr(e.service_time, 5, 2) END"
)


def reconciliation(
    tx: Any,
    since: float,
    cost: Callable[[str], Decimal | None],
    *,
    limit: int = 1000,
    drill: int = 10,
) -> dict[str, Any]:
    """Inventory-to-finance reconciliation of the usage booked since the UTC day of ``since``,
    every event of it: by location, item and period (service month), the ledger's issued
    quantity (usage less returns) and its value at the item master's cost (``cost(item)``)
    against what the ERP acknowledged posting (``erp_postings``); the difference, its reasons
    (``DIFFERENCE_REASONS``: quantity by reason) and the newest messages behind it (up to
    ``drill`` a row); totals per period; the first ``limit`` rows. Summed in the database from
    the ledger's running totals by day (``issue_daily``), never every event: exact decimals on
    PostgreSQL; on SQLite quantities are summed as binary floating point and rounded to 6
    places."""
    groups = _rows(
        tx,
        "SELECT location_id AS location, item_id AS item, period, uom, kind, status, "
        "SUM(events) AS events, SUM(quantity) AS quantity, SUM(posted) AS posted, "
        "SUM(posted_value) AS posted_value, SUM(unvalued) AS unvalued FROM issue_daily "
        "WHERE day >= ? GROUP BY location_id, item_id, period, uom, kind, status",
        (day_of(since),),
    )
    zero = Decimal(0)
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in groups:
        if not r["events"]:
            continue  # every event of it moved on to another status
        key = (r["location"], r["item"], _period(r["period"]))
        agg = out.get(key)
        if agg is None:
            agg = out[key] = {
                "location": key[0],
                "item": key[1],
                "period": key[2],
                "uom": r["uom"],
                **{k: zero for k in RECONCILIATION_FIGURES},
                "reasons": {},
                "messages": [],
                "_cost": cost(key[1]),
            }
        unit = agg["_cost"]
        qty = _sum(r["quantity"]) * (-1 if r["kind"] == "credit" else 1)
        agg["ledger_quantity"] += qty
        agg["ledger_value"] += qty * unit if unit is not None else zero
        if r["status"] == "posted":
            agg["posted_quantity"] += _sum(r["posted"])
            agg["posted_value"] += _sum(r["posted_value"])
            if unit is not None:
                agg["posted_value"] += _sum(r["unvalued"]) * unit
            continue
        reason = DIFFERENCE_REASONS.get(r["status"], DIFFERENCE_REASONS[None])
        agg["reasons"][reason] = agg["reasons"].get(reason, zero) + qty
    listed = sorted(out.values(), key=lambda a: (a["period"], a["location"], a["item"]))[:limit]
    for a in listed:
        del a["_cost"]
    return reconciled(
        listed,
        RECONCILIATION_FIGURES,
        lambda a: _behind(tx, a, since, drill) if a["reasons"] else [],
    )


def reconciled(
    rows: list[dict[str, Any]],
    figures: Sequence[str],
    messages: Callable[[dict[str, Any]], list[str]],
    quantity: Callable[[Decimal], Decimal] = lambda q: q,
) -> dict[str, Any]:
    """Reconciliation ``rows`` (by period, location and item, the first two ``figures`` what
    was booked, quantity then value, against ``posted_quantity`` and ``posted_value``, with
    ``reasons``: quantity by reason) finished: the differences, the messages behind each row
    (``messages(row)``), the figures as decimal text (values to the cent, quantities as
    ``quantity`` writes them) and the totals per period."""
    booked = figures[1]
    zero = Decimal(0)
    totals: dict[str, dict[str, Decimal]] = {}
    for a in rows:
        a["messages"] = messages(a)
        a["difference_quantity"] = a[figures[0]] - a["posted_quantity"]
        a["difference_value"] = a[booked] - a["posted_value"]
        t = totals.setdefault(
            a["period"], {booked: zero, "posted_value": zero, "difference_value": zero}
        )
        for k in t:
            t[k] += a[k]
        for k in figures:
            a[k] = str(money(a[k]) if k.endswith("_value") else quantity(a[k]))
        a["reasons"] = {k: str(quantity(v)) for k, v in sorted(a["reasons"].items())}
        a["reason"] = "; ".join(f"{k} {v}" for k, v in a["reasons"].items())
    return {
        "rows": rows,
        "periods": [
            {"period": p, **{k: str(money(v)) for k, v in t.items()}}
            for p, t in sorted(totals.items())
        ],
    }


def _behind(tx: Any, row: dict[str, Any], since: float, drill: int) -> list[str]:
    """The newest messages (up to ``drill``) of a reconciliation row's events the ERP has not
    posted: from the index of an item's events at a location by booking time."""
    found: list[str] = []
    for r in _rows(
        tx,
        f"SELECT e.message_id, {_PERIOD} AS period FROM consumption_events AS e "
        "LEFT JOIN erp_postings AS p ON p.event_id = e.id WHERE e.item_id = ? "
        "AND e.location_id = ? AND e.created_at >= ? "
        "AND (p.status IS NULL OR p.status != 'posted') ORDER BY e.created_at DESC LIMIT ?",
        (row["item"], row["location"], day_of(since) * DAY, drill * 5),
    ):
        if _period(r["period"]) == row["period"] and r["message_id"] not in found:
            found.append(r["message_id"])
            if len(found) == drill:
                break
    return found


def _period(text: str | None) -> str:
    """A ``YYYY-MM`` period as is; anything else (no service date): ``not given``."""
    text = text or ""
    return (
        text if len(text) == 7 and text[4] == "-" and text.replace("-", "").isdigit() else NOT_GIVEN
    )


def money(value: Decimal) -> Decimal:
    """An amount to the cent (half up), as finance reads it."""
    return value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def _sum(value: Any) -> Decimal:
    """A database sum as a Decimal: exact from PostgreSQL's numeric, a float from SQLite
    rounded to 6 places (then without trailing zeros)."""
    if value is None:
        return Decimal(0)
    if isinstance(value, float):
        return Decimal(repr(round(value, 6))).normalize() + 0
    return Decimal(str(value))
