"""An in-memory :class:`~engine.domains.ledger.repository.LedgerRepository`, for the rules'
unit tests: the same answers as the SQLite repository, kept in dicts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from engine.domains.ledger.records import ConsumptionEvent, HeldCredit, Posting, PostingOutcome
from engine.domains.ledger.repository import Unbilled, posted_figures


@dataclass
class _Event:
    id: int
    event: ConsumptionEvent
    message_id: str
    correlation_id: str
    created_at: float


@dataclass
class InMemoryLedgerRepository:
    """Events, stock moves, on-hand, charges, requisitions and work items in plain Python."""

    events: dict[str, _Event] = field(default_factory=dict)
    stock_moves: list[dict[str, Any]] = field(default_factory=list)
    stock_levels: dict[tuple[str, str], tuple[Decimal, str]] = field(default_factory=dict)
    charges: dict[int, dict[str, Any]] = field(default_factory=dict)
    requisitions: list[dict[str, Any]] = field(default_factory=list)
    work_items: list[dict[str, Any]] = field(default_factory=list)
    credits: dict[int, HeldCredit] = field(default_factory=dict)
    postings: dict[int, dict[str, Any]] = field(default_factory=dict)

    def event_booked(self, business_key: str) -> bool:
        return business_key in self.events

    def add_event(
        self, ev: ConsumptionEvent, message_id: str, correlation_id: str, now: float
    ) -> int:
        if ev.business_key in self.events:
            raise ValueError(f"event {ev.business_key!r} is already booked")
        event_id = len(self.events) + 1
        self.events[ev.business_key] = _Event(event_id, ev, message_id, correlation_id, now)
        return event_id

    def move_stock(
        self,
        location: str,
        item: str,
        delta: Decimal,
        uom: str,
        now: float,
        *,
        event_id: int | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
    ) -> Decimal:
        if event_id is not None:
            self.stock_moves.append(
                {"event_id": event_id, "location_id": location, "item_id": item, "delta": delta}
            )
        quantity = self.stock_levels.get((location, item), (Decimal(0), uom))[0] + delta
        self.stock_levels[(location, item)] = (quantity, uom)
        return quantity

    def add_charge(
        self,
        event_id: int,
        ev: ConsumptionEvent,
        quantity: Decimal,
        transaction_type: str,
        message_id: str,
        correlation_id: str,
        now: float,
        *,
        channel: str | None = None,
    ) -> None:
        self.charges[event_id] = {
            "encounter": ev.encounter,
            "charge_code": ev.charge_code,
            "quantity": quantity,
            "uom": ev.billing_uom or ev.uom,
            "transaction_type": transaction_type,
            "amount": None if ev.unit_price is None else ev.unit_price * quantity,
            "status": "pending",
            "channel": channel,
        }

    def has_open_requisition(self, location: str, item: str) -> bool:
        return any(
            r["location_id"] == location and r["item_id"] == item and r["status"] == "open"
            for r in self.requisitions
        )

    def charge_outcomes(
        self, since: float, until: float, within: float, limit: int
    ) -> list[tuple[float, bool]]:
        return []  # (the in-memory ledger of the channel tests keeps no booking times)

    def open_requisitions(self) -> int:
        return sum(1 for r in self.requisitions if r["status"] == "open")

    def requisition_requested(self, business_key: str) -> bool:
        return any(r["business_key"] == business_key for r in self.requisitions)

    def add_requisition(
        self,
        location: str,
        item: str,
        quantity: Decimal,
        uom: str,
        message_id: str,
        correlation_id: str,
        now: float,
        *,
        event_id: int | None = None,
        business_key: str | None = None,
    ) -> int:
        self.requisitions.append(
            {
                "location_id": location,
                "item_id": item,
                "quantity": quantity,
                "uom": uom,
                "status": "open",
                "event_id": event_id,
                "business_key": business_key,
            }
        )
        return len(self.requisitions)

    def stock(self, location: str, item: str) -> tuple[Decimal, str] | None:
        return self.stock_levels.get((location, item))

    def hold_credit(
        self, ev: ConsumptionEvent, channel: str, message_id: str, correlation_id: str, now: float
    ) -> int | None:
        if any(c.business_key == ev.business_key for c in self.credits.values()):
            return None
        credit_id = len(self.credits) + 1
        self.credits[credit_id] = HeldCredit(
            credit_id,
            ev.business_key,
            ev.reverses or "",
            channel,
            "held",
            message_id,
            correlation_id,
            ev,
            now,
        )
        return credit_id

    def held_credit(self, credit_id: int) -> HeldCredit | None:
        return self.credits.get(credit_id)

    def held_credits(self, status: str | None = "held") -> list[HeldCredit]:
        return [c for _, c in sorted(self.credits.items()) if status in (None, c.status)]

    def close_credit(self, credit_id: int, status: str, now: float) -> None:
        from dataclasses import replace

        self.credits[credit_id] = replace(self.credits[credit_id], status=status)

    def set_charge_status(self, event_key: str, status: str, now: float) -> bool:
        booked = self.events.get(event_key)
        if booked is None:
            return False
        if booked.id in self.charges:
            self.charges[booked.id]["status"] = status
        return True

    def seed_onhand(self, rows: Sequence[tuple[str, str, Decimal, str]], now: float) -> int:
        n = 0
        for location, item, quantity, uom in rows:
            if (location, item) not in self.stock_levels:
                self.stock_levels[(location, item)] = (Decimal(quantity), uom)
                n += 1
        return n

    def unbilled(self, created_before: float) -> list[Unbilled]:
        flagged = {
            w["subject"]
            for w in self.work_items
            if w["kind"] == "UNBILLED_USAGE" and w["status"] == "open"
        }
        out = []
        for key, booked in self.events.items():
            ev = booked.event
            status = self.charges.get(booked.id, {}).get("status", "none")
            if (
                ev.chargeable
                and ev.kind == "usage"
                and booked.created_at < created_before
                and status != "accepted"
                and key not in flagged
            ):
                out.append(
                    Unbilled(
                        key,
                        booked.message_id,
                        booked.correlation_id,
                        ev.encounter,
                        ev.item_id,
                        status,
                    )
                )
        return out

    def add_posting(self, posting: Posting) -> None:
        self.postings.setdefault(posting.event_id, {"posting": posting, "status": "pending"})

    def settle_postings(self, issue_key: str, outcome: PostingOutcome) -> int:
        rows = [p for p in self.postings.values() if p["posting"].issue_key == issue_key]
        for p in rows:
            posted, value = posted_figures(outcome, p["posting"].item_id, p["posting"].quantity)
            p.update(
                status=outcome.status,
                document=outcome.document,
                reason=outcome.reason,
                posted_quantity=posted,
                posted_value=value,
            )
        return len(rows)

    def prune(self, before: float, limit: int) -> int:
        """Drop up to ``limit`` events created before ``before`` whose charge is settled."""
        old = [
            key
            for key, booked in self.events.items()
            if booked.created_at < before
            and self.charges.get(booked.id, {}).get("status") != "pending"
        ][:limit]
        for key in old:
            booked = self.events.pop(key)
            self.charges.pop(booked.id, None)
            self.postings.pop(booked.id, None)
        return len(old)

    def onhand(self, location: str, item: str) -> Decimal | None:
        held = self.stock_levels.get((location, item))
        return None if held is None else held[0]

    def open_work_item(
        self,
        kind: str,
        subject: str,
        detail: str,
        message_id: str | None,
        correlation_id: str | None,
        now: float,
    ) -> None:
        if any(
            w["kind"] == kind
            and w["subject"] == subject
            and w["message_id"] == message_id
            and w["status"] == "open"
            for w in self.work_items
        ):
            return
        self.work_items.append(
            {
                "kind": kind,
                "subject": subject,
                "detail": detail,
                "message_id": message_id,
                "status": "open",
            }
        )
