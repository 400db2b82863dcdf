"""Delivery outcomes recorded with what the channel's domains make of them.

:class:`DeliveryBook` is the store as a :class:`~engine.delivery.DeliveryWorker` sees it:
claims and due times go straight to the store; each outcome (sent, dead, quarantined) is
recorded in one transaction together with the hooks of the domains bound to the delivery's
channel (the ledger marks a charge accepted or rejected), so an outcome and its business
effect commit together. One book serves every worker, so completions queued at the same time
share one commit (the store executor groups them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from engine import model
from engine.interfaces import Binding

DELIVERED, RETRY, DEAD, QUARANTINED = "delivered", "retry", "dead", "quarantined"


class DeliveryBook:
    """See the module docstring. ``bindings(channel)``: the domain bindings of a channel now."""

    def __init__(self, store: Any, bindings: Callable[[str], Sequence[Binding]]) -> None:
        self.store = store
        self.bindings = bindings

    # -- what the worker reads (straight to the store) ---------------------------------------
    def claim_deliveries(self, *args: Any, **kwargs: Any) -> list[model.Delivery]:
        return self.store.claim_deliveries(*args, **kwargs)

    def next_due(self, channel: str, destination: str) -> float | None:
        return self.store.next_due(channel, destination)

    def record_response(self, delivery_id: int, response: bytes) -> None:
        self.store.record_response(delivery_id, response)

    def pin_batch(self, ids: Sequence[int], key: str, now: float) -> None:
        self.store.pin_batch(ids, key, now)

    def release_claims(self, ids: Sequence[int], now: float) -> int:
        return self.store.release_claims(ids, now)

    # -- outcomes ------------------------------------------------------------------------------
    def _settle(self, tx: Any, settled: Any, outcome: str, reason: str | None, now: float) -> None:
        if settled.meta.get("test"):
            return  # test data (a canary): no domain booked it, none hears its outcome
        for binding in self.bindings(settled.channel):
            if settled.destination in binding.destinations:
                binding.settled(tx, settled, outcome, reason, now)

    def deliveries_succeeded(self, done: Sequence[tuple[int, bytes | None, float]]) -> None:
        with self.store.transaction(f"deliveries_succeeded({len(done)})", durable=False) as tx:
            for delivery_id, response, now in done:
                settled = tx.delivery_succeeded(delivery_id, response, now)
                self._settle(tx, settled, DELIVERED, None, now)

    def delivery_succeeded(self, delivery_id: int, response: bytes | None, now: float) -> None:
        self.deliveries_succeeded([(delivery_id, response, now)])

    def delivery_retry(
        self, delivery_id: int, error: str, next_attempt_at: float, now: float
    ) -> None:
        with self.store.transaction(f"delivery_retry({delivery_id})", durable=False) as tx:
            tx.delivery_retry(delivery_id, error, next_attempt_at, now)

    def delivery_held(
        self, delivery_id: int, note: str, next_attempt_at: float, now: float
    ) -> None:
        with self.store.transaction(f"delivery_held({delivery_id})", durable=False) as tx:
            tx.delivery_held(delivery_id, note, next_attempt_at, now)

    def settle_batch(self, settlements: Sequence[model.Settlement], now: float) -> None:
        """The outcomes of one bulk call, row by row, in one transaction: each row that is
        settled (sent, dead, quarantined) is heard by its channel's domains on its own, so a
        partial failure fails only its own rows' business effects."""
        durable = any(s.kind in (model.SETTLE_DEAD, model.SETTLE_QUARANTINED) for s in settlements)
        with self.store.transaction(f"settle_batch({len(settlements)})", durable=durable) as tx:
            for settlement in settlements:
                settled, outcome = tx.settle(settlement, now)
                if outcome is not None:
                    self._settle(tx, settled, outcome, settlement.reason, now)

    def delivery_dead(self, delivery_id: int, reason: str, now: float) -> None:
        self._failed(delivery_id, reason, now, model.DEAD, "dead", DEAD)

    def delivery_quarantined(self, delivery_id: int, reason: str, now: float) -> None:
        self._failed(delivery_id, reason, now, model.QUARANTINED, "quarantine", QUARANTINED)

    def _failed(
        self, delivery_id: int, reason: str, now: float, status: str, kind: str, outcome: str
    ) -> None:
        with self.store.transaction(f"delivery_{kind}({delivery_id})") as tx:
            settled = tx.delivery_failed(delivery_id, reason, now, status=status, kind=kind)
            self._settle(tx, settled, outcome, reason, now)
