"""Booking consumption events inside the store's transaction.

:func:`book_events` runs on the store thread, in the same ``BEGIN IMMEDIATE`` transaction that
records the pipeline's result, and returns the outbound deliveries its effects need (ERP issue,
billing charge, requisition). A business key already booked is skipped: the same line, even in
a new message, never moves stock, charges or orders twice. Idempotency keys are derived from the
event, not the message, so an ERP sees the same key for the same effect whatever carried it.
A :class:`~engine.ledger.records.RequisitionRequest` among the events (a FHIR SupplyRequest) is
booked in the requisitions table and sent, once per its business key.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Mapping, Sequence
from decimal import Decimal

from engine.ledger.records import (
    ConsumptionEvent,
    LedgerRoutes,
    ParPolicy,
    RequisitionRequest,
)
from engine.model import Outbound, to_json_bytes
from engine.uom import round_up_to_pack

_NS = uuid.UUID("0b1c6f2e-5a9d-4c43-8d2b-6c6564676572")


def effect_key(channel: str, destination: str, business_key: str, effect: str) -> str:
    """The idempotency key of one effect of one event (stable across messages and replays)."""
    return str(uuid.uuid5(_NS, f"{channel}\x1f{destination}\x1f{business_key}\x1f{effect}"))


def book_events(
    conn: sqlite3.Connection,
    *,
    message_id: str,
    correlation_id: str,
    channel: str,
    events: Sequence[ConsumptionEvent | RequisitionRequest],
    routes: LedgerRoutes,
    policies: Mapping[tuple[str, str], ParPolicy],
    charge_payload: object = None,
    now: float | None = None,
) -> list[Outbound]:
    """Book ``events`` and return the deliveries their effects need. Runs in the caller's
    transaction. ``charge_payload(event) -> (bytes, content_type)`` builds the billing call."""
    now = time.time() if now is None else now
    out: list[Outbound] = []
    lines: list[dict[str, object]] = []
    issued: list[ConsumptionEvent] = []
    for ev in events:
        if isinstance(ev, RequisitionRequest):
            req = _book_request(conn, ev, message_id, correlation_id, now)
            if req is not None and routes.requisition:
                out.append(
                    _outbound(
                        channel,
                        routes.requisition,
                        ev,
                        "requisition",
                        to_json_bytes(req),
                        "application/json",
                    )
                )
            continue
        if conn.execute(
            "SELECT 1 FROM consumption_events WHERE business_key = ?", (ev.business_key,)
        ).fetchone():
            continue  # already booked: no second stock move, charge or requisition
        if (
            ev.reverses_if_booked
            and not conn.execute(
                "SELECT 1 FROM consumption_events WHERE business_key = ?", (ev.reverses,)
            ).fetchone()
        ):
            continue  # nothing to reverse: the original was never booked
        cur = conn.execute(
            "INSERT INTO consumption_events (business_key, kind, item_id, location_id, quantity, "
            "uom, chargeable, encounter, service_time, reverses, lot, serial, detail, message_id, "
            "correlation_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                ev.business_key,
                ev.kind,
                ev.item_id,
                ev.location_id,
                str(ev.quantity),
                ev.uom,
                int(ev.chargeable),
                ev.encounter,
                ev.service_time,
                ev.reverses,
                ev.lot,
                ev.serial,
                to_json_bytes(ev).decode(),
                message_id,
                correlation_id,
                now,
            ),
        )
        event_id = cur.lastrowid
        delta = ev.quantity if ev.kind == "credit" else -ev.quantity
        conn.execute(
            "INSERT INTO inventory_transactions (event_id, location_id, item_id, delta, uom, "
            "message_id, correlation_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                event_id,
                ev.location_id,
                ev.item_id,
                str(delta),
                ev.uom,
                message_id,
                correlation_id,
                now,
            ),
        )
        on_hand = _move_stock(conn, ev.location_id, ev.item_id, delta, ev.uom, now)
        if routes.issue:
            lines.append(
                {
                    "usage_id": ev.source_line,
                    "event_key": ev.business_key,
                    "item_id": ev.item_id,
                    "quantity": str(-delta),
                    "uom": ev.uom,
                    "location_id": ev.location_id,
                    "cost_center": ev.cost_center,
                    "gl_account": ev.gl_account,
                    "service_date": ev.service_time,
                    "lot": ev.lot,
                    "serial": ev.serial,
                }
            )
            issued.append(ev)
        if ev.chargeable and routes.charge and ev.charge_code:
            ttype = "CD" if ev.kind == "credit" else "CG"
            qty = ev.billing_quantity if ev.billing_quantity is not None else ev.quantity
            conn.execute(
                "INSERT INTO charges (event_id, encounter, charge_code, quantity, uom, "
                "transaction_type, amount, currency, status, message_id, correlation_id, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?)",
                (
                    event_id,
                    ev.encounter,
                    ev.charge_code,
                    str(qty),
                    ev.billing_uom or ev.uom,
                    ttype,
                    None if ev.unit_price is None else str(ev.unit_price * qty),
                    ev.currency if ev.unit_price is not None else None,
                    message_id,
                    correlation_id,
                    now,
                    now,
                ),
            )
            if charge_payload is not None:
                data, ctype = charge_payload(ev)  # type: ignore[operator]
                out.append(
                    _outbound(
                        channel, routes.charge, ev, "charge", data, ctype, order_key=ev.encounter
                    )
                )
        if ev.kind == "usage" and routes.requisition:
            req = _par_check(conn, ev, on_hand, policies, event_id, message_id, correlation_id, now)
            if req is not None:
                out.append(
                    _outbound(
                        channel,
                        routes.requisition,
                        ev,
                        "requisition",
                        to_json_bytes(req),
                        "application/json",
                    )
                )
    if lines and routes.issue:
        # One ERP issue per message and encounter (a FHIR Bundle may carry several) with a
        # line per newly booked event (a resend books nothing, so it sends nothing); its key
        # is derived from those events.
        groups: dict[str, tuple[list[dict[str, object]], list[ConsumptionEvent]]] = {}
        for line, ev in zip(lines, issued, strict=True):
            group = groups.setdefault(ev.encounter, ([], []))
            group[0].append(line)
            group[1].append(ev)
        for n, (encounter, (group_lines, events_)) in enumerate(groups.items()):
            issue = {
                "type": "inventory_issue",
                "encounter": encounter,
                "correlation_id": correlation_id,
                "lines": group_lines,
            }
            data = to_json_bytes(issue)
            out.insert(n, _issue_outbound(channel, routes.issue, events_, data))
    return out


def _issue_outbound(
    channel: str, destination: str, events: list[ConsumptionEvent], data: bytes
) -> Outbound:
    keys = ",".join(ev.business_key for ev in events)
    meta = {"idempotency_key": effect_key(channel, destination, keys, "issue"), "effect": "issue"}
    return Outbound(destination, data, "application/json", None, meta)


def _outbound(
    channel: str,
    destination: str,
    ev: ConsumptionEvent | RequisitionRequest,
    effect: str,
    data: bytes,
    content_type: str,
    order_key: str | None = None,
) -> Outbound:
    key = effect_key(channel, destination, ev.business_key, effect)
    meta = {"idempotency_key": key, "effect": effect, "event_key": ev.business_key}
    return Outbound(destination, data, content_type, order_key, meta)


def _move_stock(
    conn: sqlite3.Connection, location: str, item: str, delta: Decimal, uom: str, now: float
) -> Decimal:
    row = conn.execute(
        "SELECT quantity FROM onhand WHERE location_id = ? AND item_id = ?", (location, item)
    ).fetchone()
    quantity = (Decimal(row[0]) if row else Decimal(0)) + delta
    conn.execute(
        "INSERT INTO onhand (location_id, item_id, quantity, uom, updated_at) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (location_id, item_id) DO UPDATE SET "
        "quantity = excluded.quantity, updated_at = excluded.updated_at",
        (location, item, str(quantity), uom, now),
    )
    return quantity


def _par_check(
    conn: sqlite3.Connection,
    ev: ConsumptionEvent,
    on_hand: Decimal,
    policies: Mapping[tuple[str, str], ParPolicy],
    event_id: int,
    message_id: str,
    correlation_id: str,
    now: float,
) -> dict[str, str] | None:
    """One requisition per breach: none while one is open for the location and item."""
    policy = policies.get((ev.location_id, ev.item_id))
    if policy is None or on_hand >= policy.reorder_point:
        return None
    if conn.execute(
        "SELECT 1 FROM requisitions WHERE location_id = ? AND item_id = ? AND status = 'open'",
        (ev.location_id, ev.item_id),
    ).fetchone():
        return None
    wanted = max(policy.order_qty, policy.par - on_hand)
    quantity = round_up_to_pack(wanted, policy.pack_size)
    conn.execute(
        "INSERT INTO requisitions (location_id, item_id, quantity, uom, status, event_id, "
        "message_id, correlation_id, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, 'open', ?, ?, ?, ?, ?)",
        (
            ev.location_id,
            ev.item_id,
            str(quantity),
            ev.uom,
            event_id,
            message_id,
            correlation_id,
            now,
            now,
        ),
    )
    return {
        "location_id": ev.location_id,
        "item_id": ev.item_id,
        "quantity": str(quantity),
        "uom": ev.uom,  # the quantity is in the stocking unit, a whole number of packs
        "order_quantity": str(quantity / policy.pack_size if policy.pack_size > 1 else quantity),
        "order_uom": policy.uom,
        "reason": f"on hand {on_hand} below reorder point {policy.reorder_point}",
        "correlation_id": correlation_id,
    }


def _book_request(
    conn: sqlite3.Connection,
    req: RequisitionRequest,
    message_id: str,
    correlation_id: str,
    now: float,
) -> dict[str, object] | None:
    """One open requisition per request business key; None when it was booked before."""
    if conn.execute(
        "SELECT 1 FROM requisitions WHERE business_key = ?", (req.business_key,)
    ).fetchone():
        return None
    conn.execute(
        "INSERT INTO requisitions (location_id, item_id, quantity, uom, status, event_id, "
        "message_id, correlation_id, created_at, updated_at, business_key) "
        "VALUES (?, ?, ?, ?, 'open', NULL, ?, ?, ?, ?, ?)",
        (
            req.location_id,
            req.item_id,
            str(req.quantity),
            req.uom,
            message_id,
            correlation_id,
            now,
            now,
            req.business_key,
        ),
    )
    return {
        "location_id": req.location_id,
        "item_id": req.item_id,
        "quantity": str(req.quantity),
        "uom": req.uom,  # the stocking unit, as for a par requisition
        "order_quantity": str(req.order_quantity),
        "order_uom": req.order_uom,
        "reason": req.reason,
        "need_by": req.need_by,
        "priority": req.priority,
        "requester": req.requester,
        "request_key": req.business_key,
        "correlation_id": correlation_id,
    }


def seed_onhand(
    conn: sqlite3.Connection, rows: Sequence[tuple[str, str, Decimal, str]], now: float
) -> int:
    """Set the starting on-hand from a snapshot (location, item, quantity, uom); only where the
    ledger has no figure yet, so a restart never resets perpetual inventory."""
    n = 0
    for location, item, quantity, uom in rows:
        cur = conn.execute(
            "INSERT OR IGNORE INTO onhand (location_id, item_id, quantity, uom, updated_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (location, item, str(quantity), uom, now),
        )
        n += cur.rowcount
    return n


def charge_outcome(
    conn: sqlite3.Connection, delivery_id: int, status: str, reason: str | None, now: float
) -> None:
    """The billing system's answer to a charge updates the ledger: accepted, or rejected with a
    CHARGE_REJECTED work item for a person. Other deliveries are left alone."""
    row = conn.execute(
        "SELECT meta, message_id, correlation_id FROM outbox WHERE id = ?", (delivery_id,)
    ).fetchone()
    if row is None or '"effect":"charge"' not in row[0].replace(" ", ""):
        return
    meta = json.loads(row[0])
    event = conn.execute(
        "SELECT id FROM consumption_events WHERE business_key = ?", (meta.get("event_key"),)
    ).fetchone()
    if event is None:
        return
    conn.execute(
        "UPDATE charges SET status = ?, updated_at = ? WHERE event_id = ?",
        (status, now, event[0]),
    )
    if status == "rejected":
        conn.execute(
            "INSERT INTO work_items (kind, subject, detail, status, message_id, correlation_id, "
            "created_at, updated_at) VALUES ('CHARGE_REJECTED', ?, ?, 'open', ?, ?, ?, ?)",
            (meta.get("event_key"), reason or "", row[1], row[2], now, now),
        )


def work_items(
    conn: sqlite3.Connection,
    message_id: str,
    correlation_id: str,
    status: str,
    item: tuple[str, str, str] | None,
    now: float,
) -> None:
    """Open a work item for a message held for a person (MISSING_MAPPING ...), and resolve the
    message's open ones once it went through (after the mapping was added and it was replayed)."""
    if item is not None:
        kind, subject, detail = item
        exists = conn.execute(
            "SELECT 1 FROM work_items WHERE message_id = ? AND kind = ? AND subject = ? "
            "AND status = 'open'",
            (message_id, kind, subject),
        ).fetchone()
        if not exists:
            conn.execute(
                "INSERT INTO work_items (kind, subject, detail, status, message_id, "
                "correlation_id, created_at, updated_at) VALUES (?, ?, ?, 'open', ?, ?, ?, ?)",
                (kind, subject, detail, message_id, correlation_id, now, now),
            )
    elif status != "error":
        conn.execute(
            "UPDATE work_items SET status = 'resolved', updated_at = ? "
            "WHERE message_id = ? AND status = 'open' AND kind = 'MISSING_MAPPING'",
            (now, message_id),
        )


def open_work_items(conn: sqlite3.Connection, kind: str | None = None) -> list[dict[str, object]]:
    sql = (
        "SELECT id, kind, subject, detail, message_id, created_at FROM work_items "
        "WHERE status = 'open'"
    )
    args: tuple[str, ...] = ()
    if kind:
        sql += " AND kind = ?"
        args = (kind,)
    cols = ("id", "kind", "subject", "detail", "message_id", "created_at")
    return [dict(zip(cols, row, strict=True)) for row in conn.execute(sql + " ORDER BY id", args)]


def find_unbilled(conn: sqlite3.Connection, *, older_than: float, now: float) -> int:
    """Open an UNBILLED_USAGE work item for each chargeable event older than ``older_than``
    seconds whose charge was never accepted (missing, pending or rejected). Returns how many."""
    rows = conn.execute(
        "SELECT e.business_key, e.message_id, e.correlation_id, e.encounter, e.item_id, "
        "COALESCE(c.status, 'none') FROM consumption_events e "
        "LEFT JOIN charges c ON c.event_id = e.id "
        "WHERE e.chargeable = 1 AND e.kind = 'usage' AND e.created_at < ? "
        "AND COALESCE(c.status, 'none') != 'accepted' "
        "AND NOT EXISTS (SELECT 1 FROM work_items w WHERE w.kind = 'UNBILLED_USAGE' "
        "AND w.subject = e.business_key AND w.status = 'open')",
        (now - older_than,),
    ).fetchall()
    for key, message_id, correlation_id, encounter, item, status in rows:
        conn.execute(
            "INSERT INTO work_items (kind, subject, detail, status, message_id, correlation_id, "
            "created_at, updated_at) VALUES ('UNBILLED_USAGE', ?, ?, 'open', ?, ?, ?, ?)",
            (
                key,
                f"chargeable {item} on encounter {encounter}: charge {status}",
                message_id,
                correlation_id,
                now,
                now,
            ),
        )
    return len(rows)
