"""The supply ledger's rules: booking consumption events, and what follows from them.

:func:`book_events` runs inside the transaction the runtime opened for the message's result
(the same commit that enqueues the ERP issue, the billing charge and, past a reorder point, the
requisition) and returns the outbound deliveries its effects need. A business key already
booked is skipped: the same line, even in a new message, never moves stock, charges or orders
twice. Idempotency keys are derived from the event, not the message, so an ERP sees the same
key for the same effect whatever carried it. A :class:`RequisitionRequest` among the events (a
FHIR SupplyRequest) is booked in the requisitions and sent, once per its business key.

Every rule talks to a :class:`~engine.domains.ledger.repository.LedgerRepository`, never to
SQL: the store's SQLite repository in production, an in-memory one in the rules' unit tests.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal

from engine.domains.ledger.records import (
    ConsumptionEvent,
    HeldCredit,
    LedgerRoutes,
    ParPolicy,
    Posting,
    PostingOutcome,
    RequisitionRequest,
)
from engine.domains.ledger.repository import LedgerRepository
from engine.model import Outbound, effect_key, to_json_bytes
from engine.uom import round_up_to_pack

__all__ = [
    "book_events",
    "charge_outcome",
    "effect_key",
    "find_unbilled",
    "issue_outcome",
    "par_breaches",
    "par_sweep",
    "reject_credit",
    "release_credit",
    "round_up_to_pack",
    "seed_onhand",
]

ChargePayload = Callable[[ConsumptionEvent], tuple[bytes, str]]


def book_events(
    repo: LedgerRepository,
    *,
    message_id: str,
    correlation_id: str,
    channel: str,
    events: Sequence[ConsumptionEvent | RequisitionRequest],
    routes: LedgerRoutes,
    policies: Mapping[tuple[str, str], ParPolicy],
    charge_payload: ChargePayload | None = None,
    now: float | None = None,
    issue_max_lines: int = 500,
    orphan_credits: str = "hold",
) -> list[Outbound]:
    """Book ``events`` and return the deliveries their effects need.
    ``charge_payload(event) -> (bytes, content_type)`` builds the billing call; an ERP issue
    holds at most ``issue_max_lines`` lines (more make several documents). A credit for a line
    the ledger never booked is held as an ORPHAN_CREDIT for a person (``orphan_credits``
    ``hold``) or booked as it came (``book``: credits of charges posted before go-live)."""
    now = time.time() if now is None else now
    out: list[Outbound] = []
    issued: list[tuple[dict[str, object], ConsumptionEvent, int]] = []
    for ev in events:
        if isinstance(ev, RequisitionRequest):
            req = _book_request(repo, ev, message_id, correlation_id, now)
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
        if repo.event_booked(ev.business_key):
            continue  # already booked: no second stock move, charge or requisition
        if ev.reverses_if_booked and not repo.event_booked(ev.reverses or ""):
            continue  # nothing to reverse: the original was never booked
        if (
            ev.kind == "credit"
            and ev.reverses
            and orphan_credits == "hold"
            and not repo.event_booked(ev.reverses)
        ):
            _hold_credit(repo, ev, channel, message_id, correlation_id, now)
            continue
        event_id = repo.add_event(ev, message_id, correlation_id, now)
        delta = ev.quantity if ev.kind == "credit" else -ev.quantity
        on_hand = repo.move_stock(
            ev.location_id,
            ev.item_id,
            delta,
            ev.uom,
            now,
            event_id=event_id,
            message_id=message_id,
            correlation_id=correlation_id,
        )
        if routes.issue:
            issued.append((_issue_line(ev, delta), ev, event_id))
        if ev.chargeable and routes.charge and ev.charge_code:
            ttype = "CD" if ev.kind == "credit" else "CG"
            qty = ev.billing_quantity if ev.billing_quantity is not None else ev.quantity
            repo.add_charge(
                event_id, ev, qty, ttype, message_id, correlation_id, now, channel=channel
            )
            if charge_payload is not None:
                data, ctype = charge_payload(ev)
                out.append(
                    _outbound(
                        channel, routes.charge, ev, "charge", data, ctype, order_key=ev.encounter
                    )
                )
        if ev.kind == "usage" and routes.requisition:
            req = _par_check(repo, ev, on_hand, policies, event_id, message_id, correlation_id, now)
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
    if issued and routes.issue:
        # One ERP issue per message and encounter (a FHIR Bundle may carry several) with a
        # line per newly booked event (a resend books nothing, so it sends nothing), in parts
        # of at most issue_max_lines; each part's key is derived from its own events.
        groups: dict[str, tuple[list[dict[str, object]], list[tuple[ConsumptionEvent, int]]]] = {}
        for line, ev, event_id in issued:
            group = groups.setdefault(ev.encounter, ([], []))
            group[0].append(line)
            group[1].append((ev, event_id))
        issues = []
        step = max(1, issue_max_lines)
        for encounter, (group_lines, events_) in groups.items():
            parts = range(0, len(group_lines), step)
            for n, start in enumerate(parts, 1):
                issue: dict[str, object] = {
                    "type": "inventory_issue",
                    "encounter": encounter,
                    "correlation_id": correlation_id,
                    "lines": group_lines[start : start + step],
                }
                if len(parts) > 1:
                    issue["part"] = f"{n}/{len(parts)}"
                part = events_[start : start + step]
                outbound = _issue_outbound(
                    channel, routes.issue, [ev for ev, _ in part], to_json_bytes(issue)
                )
                issues.append(outbound)
                for (ev, event_id), line in zip(
                    part, group_lines[start : start + step], strict=True
                ):
                    # pending until the ERP answers (inventory-to-finance reconciliation)
                    repo.add_posting(
                        Posting(
                            event_id,
                            ev.business_key,
                            outbound.meta["idempotency_key"],
                            routes.issue,
                            ev.location_id,
                            ev.item_id,
                            Decimal(str(line["quantity"])),
                            ev.uom,
                            message_id,
                            now,
                        )
                    )
        out[:0] = issues
    return out


def _hold_credit(
    repo: LedgerRepository,
    ev: ConsumptionEvent,
    channel: str,
    message_id: str,
    correlation_id: str,
    now: float,
) -> None:
    """No stock back, no credit to billing: a person decides (``wharf credits``)."""
    if repo.hold_credit(ev, channel, message_id, correlation_id, now) is None:
        return  # held (or decided) already: a resend changes nothing
    repo.open_work_item(
        "ORPHAN_CREDIT",
        ev.business_key,
        f"credit of {ev.quantity} {ev.uom} {ev.item_id} at {ev.location_id} on encounter "
        f"{ev.encounter} reverses line {ev.reverses}, which the ledger never booked: held "
        "until a person releases it (wharf credits release ID) or rejects it",
        message_id,
        correlation_id,
        now,
    )


def release_credit(
    repo: LedgerRepository,
    credit: HeldCredit,
    *,
    routes: LedgerRoutes,
    policies: Mapping[tuple[str, str], ParPolicy],
    charge_payload: ChargePayload | None,
    now: float,
    issue_max_lines: int = 500,
) -> list[Outbound]:
    """Book a held credit as it came (a person vouches for it): stock back, the credit to
    billing; returns the deliveries, to queue on the message that carried it."""
    if credit.status != "held":
        raise ValueError(f"credit {credit.id} is {credit.status} (expected held)")
    out = book_events(
        repo,
        message_id=credit.message_id,
        correlation_id=credit.correlation_id,
        channel=credit.channel,
        events=[credit.event],
        routes=routes,
        policies=policies,
        charge_payload=charge_payload,
        now=now,
        issue_max_lines=issue_max_lines,
        orphan_credits="book",
    )
    repo.close_credit(credit.id, "released", now)
    return out


def reject_credit(repo: LedgerRepository, credit: HeldCredit, now: float) -> None:
    """Close a held credit without booking it."""
    if credit.status != "held":
        raise ValueError(f"credit {credit.id} is {credit.status} (expected held)")
    repo.close_credit(credit.id, "rejected", now)


def par_breaches(
    repo: LedgerRepository, policies: Mapping[tuple[str, str], ParPolicy]
) -> list[tuple[ParPolicy, Decimal, str]]:
    """The par'd locations and items below their reorder point with no open requisition,
    whatever brought them there (a starting figure, a count, an adjustment, a return)."""
    out = []
    for (location, item), policy in sorted(policies.items()):
        stock = repo.stock(location, item)
        if stock is None or stock[0] >= policy.reorder_point:
            continue
        if repo.has_open_requisition(location, item):
            continue
        out.append((policy, stock[0], stock[1]))
    return out


def par_sweep(
    repo: LedgerRepository,
    breaches: Sequence[tuple[ParPolicy, Decimal, str]],
    *,
    channel: str,
    destination: str,
    message_id: str,
    correlation_id: str,
    now: float,
) -> list[Outbound]:
    """One requisition per breach found by :func:`par_breaches`, carried by the sweep's own
    message; each keyed by its requisition."""
    out = []
    for policy, on_hand, uom in breaches:
        wanted = max(policy.order_qty, policy.par - on_hand)
        quantity = round_up_to_pack(wanted, policy.pack_size)
        req_id = repo.add_requisition(
            policy.location_id, policy.item_id, quantity, uom, message_id, correlation_id, now
        )
        doc = {
            "location_id": policy.location_id,
            "item_id": policy.item_id,
            "quantity": str(quantity),
            "uom": uom,
            "order_quantity": str(
                quantity / policy.pack_size if policy.pack_size > 1 else quantity
            ),
            "order_uom": policy.uom,
            "reason": f"on hand {on_hand} below reorder point {policy.reorder_point} (par sweep)",
            "correlation_id": correlation_id,
        }
        key = f"par-sweep|{policy.location_id}|{policy.item_id}|{req_id}"
        meta = {
            "idempotency_key": effect_key(channel, destination, key, "requisition"),
            "effect": "requisition",
        }
        out.append(Outbound(destination, to_json_bytes(doc), "application/json", None, meta))
    return out


def _issue_line(ev: ConsumptionEvent, delta: Decimal) -> dict[str, object]:
    return {
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


def _par_check(
    repo: LedgerRepository,
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
    if repo.has_open_requisition(ev.location_id, ev.item_id):
        return None
    wanted = max(policy.order_qty, policy.par - on_hand)
    quantity = round_up_to_pack(wanted, policy.pack_size)
    repo.add_requisition(
        ev.location_id,
        ev.item_id,
        quantity,
        ev.uom,
        message_id,
        correlation_id,
        now,
        event_id=event_id,
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
    repo: LedgerRepository,
    req: RequisitionRequest,
    message_id: str,
    correlation_id: str,
    now: float,
) -> dict[str, object] | None:
    """One open requisition per request business key; None when it was booked before."""
    if repo.requisition_requested(req.business_key):
        return None
    repo.add_requisition(
        req.location_id,
        req.item_id,
        req.quantity,
        req.uom,
        message_id,
        correlation_id,
        now,
        business_key=req.business_key,
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
    repo: LedgerRepository, rows: Sequence[tuple[str, str, Decimal, str]], now: float
) -> int:
    """Set the starting on-hand from a snapshot (location, item, quantity, uom); only where the
    ledger has no figure yet, so a restart never resets perpetual inventory."""
    return repo.seed_onhand(rows, now)


def charge_outcome(
    repo: LedgerRepository,
    meta: Mapping[str, object],
    status: str,
    reason: str | None,
    now: float,
    *,
    message_id: str,
    correlation_id: str,
) -> bool:
    """The billing system's answer to a charge updates the ledger: accepted, or rejected with a
    CHARGE_REJECTED work item for a person. Deliveries of other effects are left alone; True
    when it was a charge of a booked event."""
    if meta.get("effect") != "charge":
        return False
    key = str(meta.get("event_key") or "")
    if not repo.set_charge_status(key, status, now):
        return False
    if status == "rejected":
        repo.open_work_item("CHARGE_REJECTED", key, reason or "", message_id, correlation_id, now)
    return True


#: What an issue's delivery outcome makes of its lines in the ERP postings.
POSTING_STATUS = {"delivered": "posted", "dead": "dead", "quarantined": "dead"}


def posting_status(outcome: str, reason: str | None) -> str | None:
    """What the ERP did with a posting (a stock issue, a goods receipt) by its delivery's
    outcome: posted, dead (dead-lettered) or rejected (a permanent failure: the ERP refused
    it); None for a retry, which changes nothing."""
    status = POSTING_STATUS.get(outcome)
    if status == "dead" and (reason or "").startswith("permanent failure"):
        return "rejected"
    return status


def issue_outcome(
    repo: LedgerRepository,
    meta: Mapping[str, object],
    outcome: str,
    reason: str | None,
    response: bytes | None,
    now: float,
    unit_cost: Callable[[str], Decimal | None] | None = None,
) -> int:
    """The ERP's answer to a stock issue: its lines posted (with the document number the
    answer gives), dead-lettered, or rejected (a permanent failure: the ERP refused it). A
    retry changes nothing; how many lines."""
    status = posting_status(outcome, reason)
    if meta.get("effect") != "issue" or status is None:
        return 0
    return repo.settle_postings(
        str(meta.get("idempotency_key") or ""),
        PostingOutcome(
            status,
            now,
            document=document_number(response) if status == "posted" else None,
            reason=reason,
            unit_cost=unit_cost,
        ),
    )


#: Where ERPs put the number of the document they made of an issue (SAP's material document,
#: the sandbox's and most REST APIs' ``id``, Oracle's transaction id).
DOCUMENT_FIELDS = ("MaterialDocument", "documentNumber", "DocumentNumber", "TransactionId", "id")


def document_number(response: bytes | None) -> str | None:
    """The ERP's document number in its answer (a JSON object), or None."""
    try:
        answer = json.loads(response or b"")
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(answer, dict):
        return None
    for name in DOCUMENT_FIELDS:
        value = answer.get(name)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            year = answer.get("MaterialDocumentYear") if name == "MaterialDocument" else None
            return f"{value}/{year}" if year else str(value)
    return None


def find_unbilled(repo: LedgerRepository, *, older_than: float, now: float) -> int:
    """Open an UNBILLED_USAGE work item for each chargeable event older than ``older_than``
    seconds whose charge was never accepted (missing, pending or rejected). Returns how many."""
    rows = repo.unbilled(now - older_than)
    for row in rows:
        repo.open_work_item(
            "UNBILLED_USAGE",
            row.business_key,
            f"chargeable {row.item_id} on encounter {row.encounter}: charge {row.charge_status}",
            row.message_id,
            row.correlation_id,
            now,
        )
    return len(rows)
