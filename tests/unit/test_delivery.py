"""DeliveryWorker, DeliveryPolicy and backoff, driven by task.Clock and an in-memory store.

No sockets, no sleeps: the store executor is synchronous and time only moves when a test
advances the clock.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml
from twisted.internet import defer, task
from twisted.trial import unittest

from engine.delivery import (
    RETRY_SPEC,
    DeliveryPolicy,
    DeliveryWorker,
    backoff,
    render_template,
    template_values,
)
from engine.errors import DeliveryError
from engine.model import DEAD, DELIVERED, INFLIGHT, PENDING, QUARANTINED, Delivery
from engine.spec import Context


@dataclass
class Row:
    delivery: Delivery
    status: str = PENDING
    next_attempt_at: float = 0.0
    attempts: int = 0
    error: str | None = None
    response: bytes | None = None
    lease_until: float = 0.0
    history: list[str] = field(default_factory=list)


class FakeStore:
    """The store methods the worker uses, in memory, with the SqliteStore semantics: only
    pending rows due now are claimed, oldest first; a row with an order_key waits while an
    older row with the same key is pending or inflight (and, with block_on_dead, dead or
    quarantined)."""

    def __init__(self) -> None:
        self.rows: dict[int, Row] = {}
        self.claims = 0

    def add(
        self,
        id: int,
        *,
        order_key: str | None = None,
        created_at: float = 0.0,
        due: float = 0.0,
        channel: str = "ch",
        destination: str = "dest",
    ) -> None:
        self.rows[id] = Row(
            Delivery(
                id=id,
                message_id=f"m-{id}",
                channel=channel,
                destination=destination,
                payload=b"{}",
                content_type="application/json",
                idempotency_key=f"k-{id}",
                correlation_id=f"c-{id}",
                order_key=order_key,
                attempts=0,
                created_at=created_at,
                meta={},
            ),
            next_attempt_at=due,
        )

    def _blocked(self, row: Row, block_on_dead: bool) -> bool:
        key = row.delivery.order_key
        if key is None:
            return False
        blocking = {PENDING, INFLIGHT} | ({DEAD, QUARANTINED} if block_on_dead else set())
        return any(
            other.delivery.id < row.delivery.id
            and other.delivery.order_key == key
            and other.delivery.channel == row.delivery.channel
            and other.delivery.destination == row.delivery.destination
            and other.status in blocking
            for other in self.rows.values()
        )

    def claim_deliveries(
        self,
        channel: str,
        destination: str,
        limit: int,
        now: float,
        lease: float,
        block_on_dead: bool = False,
    ) -> list[Delivery]:
        self.claims += 1
        out = []
        for id in sorted(self.rows):
            row = self.rows[id]
            d = row.delivery
            if len(out) >= limit:
                break
            if d.channel != channel or d.destination != destination:
                continue
            if row.status != PENDING or row.next_attempt_at > now:
                continue
            if self._blocked(row, block_on_dead):
                continue
            row.status = INFLIGHT
            row.lease_until = now + lease
            out.append(Delivery(**{**d.__dict__, "attempts": row.attempts}))
        return out

    def _inflight(self, id: int) -> Row:
        row = self.rows[id]
        assert row.status == INFLIGHT, f"row {id} is {row.status}, not inflight"
        row.attempts += 1
        return row

    def record_response(self, id: int, response: bytes) -> None:
        self.rows[id].response = response

    def delivery_succeeded(self, id: int, response: bytes | None, now: float) -> None:
        row = self._inflight(id)
        row.status, row.response = DELIVERED, response
        row.history.append(f"sent@{now:g}")

    def delivery_retry(self, id: int, error: str, next_attempt_at: float, now: float) -> None:
        row = self._inflight(id)
        row.status, row.error, row.next_attempt_at = PENDING, error, next_attempt_at
        row.history.append(f"retry@{now:g}->{next_attempt_at:g}")

    def delivery_dead(self, id: int, reason: str, now: float) -> None:
        row = self._inflight(id)
        row.status, row.error = DEAD, reason
        row.history.append(f"dead@{now:g}")

    def delivery_quarantined(self, id: int, reason: str, now: float) -> None:
        row = self._inflight(id)
        row.status, row.error = QUARANTINED, reason
        row.history.append(f"quarantined@{now:g}")

    def next_due(self, channel: str, destination: str) -> float | None:
        due = [
            r.next_attempt_at
            for r in self.rows.values()
            if r.status == PENDING
            and r.delivery.channel == channel
            and r.delivery.destination == destination
        ]
        return min(due) if due else None


class SyncExecutor:
    """Runs each store call at once on the calling thread."""

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        try:
            return defer.succeed(fn(*args, **kwargs))
        except Exception:
            return defer.fail()


class ScriptedDestination:
    """``script(delivery)`` decides each outcome: return bytes/None, raise, or return a
    Deferred. Records the (id, attempts) of every send."""

    def __init__(self, script: Callable[[Delivery], Any] | None = None) -> None:
        self.script = script or (lambda d: b"ok")
        self.sent: list[tuple[int, int]] = []

    async def send(self, delivery: Delivery) -> bytes | None:
        self.sent.append((delivery.id, delivery.attempts))
        result = self.script(delivery)
        if isinstance(result, defer.Deferred):
            return await result
        return result

    def close(self) -> None:
        return None


def fail_with(err: Exception) -> Callable[[Delivery], Any]:
    def script(d: Delivery) -> Any:
        raise err

    return script


class BackoffTests(unittest.SynchronousTestCase):
    def test_grows_geometrically_and_is_capped(self) -> None:
        """Without jitter the wait is initial * multiplier**(n-1), capped at max_delay, even
        for huge attempt numbers."""
        p = DeliveryPolicy(initial=1, multiplier=2, max_delay=60, jitter=0)
        rng = random.Random(1)
        self.assertEqual([backoff(p, n, rng) for n in range(1, 9)], [1, 2, 4, 8, 16, 32, 60, 60])
        self.assertEqual(backoff(p, 100_000, rng), 60)

    def test_jitter_stays_within_bounds(self) -> None:
        """With jitter 0.2 every wait lies within +/-20% of the un-jittered value, and the
        spread is actually used."""
        p = DeliveryPolicy(initial=10, multiplier=2, max_delay=300, jitter=0.2)
        rng = random.Random(7)
        values = [backoff(p, 2, rng) for _ in range(500)]
        self.assertTrue(all(16 <= v <= 24 for v in values))
        self.assertLess(min(values), 17)
        self.assertGreater(max(values), 23)

    def test_policy_from_retry_config_and_validation(self) -> None:
        """from_retry takes the retry spec's fields plus the other settings; bad values are
        rejected with the field named."""
        ctx = Context("<test>")
        retry = RETRY_SPEC.parse(
            yaml.compose("{max_attempts: 3, initial: 2s, max_age: 0}"), ctx, ""
        )
        self.assertEqual(ctx.errors, [])
        p = DeliveryPolicy.from_retry(retry, concurrency=2, idempotent=False)
        self.assertEqual((p.max_attempts, p.initial, p.max_age), (3, 2.0, 0.0))
        self.assertEqual((p.multiplier, p.max_delay, p.jitter), (2.0, 300.0, 0.2))
        self.assertEqual((p.concurrency, p.idempotent, p.on_poison), (2, False, "park"))
        self.assertEqual(DeliveryPolicy.from_retry(None), DeliveryPolicy())
        with self.assertRaisesRegex(ValueError, r"'on_poison' must be one of park, block"):
            DeliveryPolicy(on_poison="drop")
        with self.assertRaisesRegex(ValueError, r"'jitter' must be a number in 0..1 \(got 2\)"):
            DeliveryPolicy(jitter=2)

    def test_retry_spec_rejects_bad_values(self) -> None:
        """The retry spec reports out-of-range values with the field path."""
        ctx = Context("<test>")
        RETRY_SPEC.parse(yaml.compose("{max_attempts: 0, jitter: 1.5}"), ctx, "retry")
        text = "\n".join(str(e) for e in ctx.errors)
        self.assertIn("retry.max_attempts: must be an integer >= 1 (got 0)", text)
        self.assertIn("retry.jitter: must be a number in 0..1 (got 1.5)", text)


class TemplateTests(unittest.SynchronousTestCase):
    def test_unknown_and_unsafe_placeholders_are_permanent(self) -> None:
        """Unknown names and attribute/index access are permanent errors naming the field."""
        store = FakeStore()
        store.add(1)
        values = template_values(store.rows[1].delivery)
        self.assertEqual(render_template("{channel}/{idempotency_key}", values, what="x"), "ch/k-1")
        for bad, expected in (("{nope}", "{nope}"), ("{channel.__class__}", "not allowed")):
            with self.assertRaises(DeliveryError) as cm:
                render_template(bad, values, what="url")
            self.assertFalse(cm.exception.retryable)
            self.assertIn(expected, cm.exception.message)


class WorkerTests(unittest.SynchronousTestCase):
    def make(
        self, script: Callable[[Delivery], Any] | None = None, **policy: Any
    ) -> DeliveryWorker:
        policy.setdefault("jitter", 0)
        self.clock = task.Clock()
        self.store = getattr(self, "store", None) or FakeStore()
        self.dest = ScriptedDestination(script)
        self.worker = DeliveryWorker(
            channel="ch",
            name="dest",
            destination=self.dest,
            policy=DeliveryPolicy(**policy),
            store=self.store,
            executor=SyncExecutor(),
            clock=self.clock,
            rng=random.Random(0),
        )
        return self.worker

    def setUp(self) -> None:
        self.store = FakeStore()

    def status(self, id: int) -> str:
        return self.store.rows[id].status

    def test_success_is_recorded_with_response(self) -> None:
        """A successful send marks the row sent and stores the returned body."""
        self.store.add(1)
        self.make().start()
        self.assertEqual(self.status(1), DELIVERED)
        self.assertEqual(self.store.rows[1].response, b"ok")

    def test_success_after_failures_with_backoff(self) -> None:
        """Retryable failures are retried after initial, initial*2, ... and the row is sent
        on the third attempt."""
        outcomes = [DeliveryError("HTTP 503"), DeliveryError("HTTP 503"), None]

        def script(d: Delivery) -> Any:
            err = outcomes.pop(0)
            if err:
                raise err
            return b"done"

        self.store.add(1)
        self.make(script, initial=1, multiplier=2).start()
        self.assertEqual(self.store.rows[1].history, ["retry@0->1"])
        self.clock.advance(1)
        self.assertEqual(self.store.rows[1].history[-1], "retry@1->3")
        self.clock.advance(1.5)
        self.assertEqual(self.status(1), PENDING)  # not due yet
        self.clock.advance(0.5)
        self.assertEqual(self.status(1), DELIVERED)
        self.assertEqual(self.dest.sent, [(1, 0), (1, 1), (1, 2)])
        self.assertEqual(self.store.rows[1].error, "HTTP 503")

    def test_retry_after_is_honoured_when_longer(self) -> None:
        """A Retry-After longer than the backoff sets the next attempt; a shorter one does
        not shorten the backoff."""
        self.store.add(1)
        self.store.add(2)

        def script(d: Delivery) -> Any:
            raise DeliveryError("HTTP 429", retry_after=30 if d.id == 1 else 0.1)

        self.make(script, initial=5).start()
        self.assertEqual(self.store.rows[1].next_attempt_at, 30)
        self.assertEqual(self.store.rows[2].next_attempt_at, 5)

    def test_dead_after_max_attempts(self) -> None:
        """After max_attempts retryable failures the row is dead, naming the limit and the
        last error."""
        self.store.add(1)
        self.make(fail_with(DeliveryError("HTTP 500")), max_attempts=3, initial=1).start()
        self.clock.pump([1, 2, 4, 8])
        self.assertEqual(self.status(1), DEAD)
        self.assertEqual(self.store.rows[1].error, "gave up after 3 attempts: HTTP 500")
        self.assertEqual(len(self.dest.sent), 3)

    def test_the_peer_s_free_text_is_stored_not_logged(self) -> None:
        """An error quoting the peer's own text (an MLLP ERR-8 could name the patient) is kept
        whole with the row; the log lines get the error's log_text instead."""
        from twisted.logger import globalLogPublisher

        lines: list[str] = []

        def observe(event: dict) -> None:
            from twisted.logger import formatEvent

            lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        self.store.add(1)
        self.store.add(2)
        peer = "billing:2576 answered AE: ERR-3 207 patient DOE^JANE MRN12345 unknown"
        logged = "billing:2576 answered AE (its error text is kept with the delivery)"

        def script(d: Delivery) -> Any:
            raise DeliveryError(peer, retryable=d.id == 2, log_text=logged)

        self.make(script, max_attempts=5).start()
        self.assertEqual(self.store.rows[1].error, f"permanent failure: {peer}")
        self.assertEqual(self.store.rows[2].error, peer)  # retry, the full text kept
        text = "\n".join(lines)
        self.assertIn(logged, text)
        self.assertNotIn("DOE^JANE", text)
        self.assertNotIn("MRN12345", text)

    def test_dead_after_max_age(self) -> None:
        """A row older than max_age is dead at its next failure, with a reason naming max_age."""
        self.store.add(1, created_at=0)
        self.make(fail_with(DeliveryError("HTTP 502")), initial=60, max_age=100).start()
        self.clock.advance(60)
        self.assertEqual(self.status(1), PENDING)
        self.clock.advance(120)
        self.assertEqual(self.status(1), DEAD)
        self.assertIn("gave up after max_age 100s", self.store.rows[1].error)

    def test_permanent_error_is_dead_at_once(self) -> None:
        """A non-retryable error (a 4xx) dead-letters the row on the first attempt."""
        self.store.add(1)
        self.make(fail_with(DeliveryError("HTTP 400", retryable=False))).start()
        self.assertEqual(self.status(1), DEAD)
        self.assertEqual(self.store.rows[1].error, "permanent failure: HTTP 400")

    def test_the_peers_answer_to_a_failure_is_kept(self) -> None:
        """An AE (or an HTTP error body) that came with the failure is stored with the row."""
        self.store.add(1)
        ae = b"MSH|^~\\&|B|B|A|A|20260101||ACK|X|P|2.5.1\rMSA|AE|M1\r"
        self.make(fail_with(DeliveryError("AE", retryable=False, response=ae))).start()
        self.assertEqual(self.status(1), DEAD)
        self.assertEqual(self.store.rows[1].response, ae)

    def test_ambiguous_at_non_idempotent_destination_is_quarantined(self) -> None:
        """An ambiguous failure at a non-idempotent destination is quarantined, not retried."""
        self.store.add(1)
        self.make(fail_with(DeliveryError("timeout", ambiguous=True)), idempotent=False).start()
        self.clock.advance(1000)
        self.assertEqual(self.status(1), QUARANTINED)
        self.assertIn("non-idempotent", self.store.rows[1].error)
        self.assertEqual(len(self.dest.sent), 1)

    def test_ambiguous_at_idempotent_destination_is_retried(self) -> None:
        """An ambiguous failure at an idempotent destination is retried like any other."""
        self.store.add(1)
        self.make(fail_with(DeliveryError("timeout", ambiguous=True)), idempotent=True).start()
        self.assertEqual(self.status(1), PENDING)
        self.assertEqual(self.store.rows[1].history, ["retry@0->1"])

    def test_unexpected_exception_is_retryable_with_type_and_message(self) -> None:
        """Any other exception from send is a retryable error naming its type."""
        self.store.add(1)
        self.make(fail_with(RuntimeError("boom"))).start()
        self.assertEqual(self.status(1), PENDING)
        self.assertEqual(self.store.rows[1].error, "RuntimeError: boom")

    def test_concurrency_limit(self) -> None:
        """No more than concurrency sends are in flight; finishing one starts the next."""
        pending: list[defer.Deferred[bytes]] = []

        def script(d: Delivery) -> Any:
            pending.append(defer.Deferred())
            return pending[-1]

        for i in range(1, 6):
            self.store.add(i)
        worker = self.make(script, concurrency=2)
        worker.start()
        self.assertEqual([i for i, _ in self.dest.sent], [1, 2])
        self.assertEqual(worker.inflight, 2)
        self.clock.advance(10)  # polling does not exceed the limit
        self.assertEqual(len(self.dest.sent), 2)
        pending[0].callback(b"ok")
        self.assertEqual([i for i, _ in self.dest.sent], [1, 2, 3])
        self.assertEqual(worker.inflight, 2)
        for d in pending[1:]:
            d.callback(b"ok")
        for d in pending[3:]:
            d.callback(b"ok")
        self.assertEqual({self.status(i) for i in range(1, 6)}, {DELIVERED})

    def test_reserved_room_is_kept_for_rows_a_commit_claims_for_the_worker(self) -> None:
        """Room promised to a pipeline commit is not claimed by the worker meanwhile; the rows
        handed over are sent; what was promised and not used is given back."""
        pending: list[defer.Deferred[bytes]] = []

        def script(d: Delivery) -> Any:
            pending.append(defer.Deferred())
            return pending[-1]

        worker = self.make(script, concurrency=3)
        self.assertEqual(worker.reserve(5), 0)  # not running: nothing promised
        worker.start()
        self.assertEqual(worker.reserve(2), 2)
        self.assertEqual(worker.reserve(5), 1)  # 3 in all
        self.assertEqual(worker.reserve(1), 0)
        for i in (1, 2):
            self.store.add(i)
        worker.wake()
        self.assertEqual(self.dest.sent, [])  # the room is promised: no claim of its own
        handed = self.store.claim_deliveries("ch", "dest", 1, self.clock.seconds(), 30)
        # the first commit claimed one row for its two slots: the spare slot goes back and
        # the worker claims row 2 with it; the second commit's slot is still promised
        worker.take(handed, 2)
        self.assertEqual([i for i, _ in self.dest.sent], [1, 2])
        self.store.add(3)
        worker.wake()
        self.assertEqual(len(self.dest.sent), 2)  # 2 in flight + 1 promised = concurrency 3
        worker.take([], 1)  # the second commit queued nothing for us: row 3 goes now
        self.assertEqual([i for i, _ in self.dest.sent], [1, 2, 3])
        self.assertEqual(worker.inflight, 3)
        for d in pending:
            d.callback(b"ok")
        self.assertEqual({self.status(i) for i in (1, 2, 3)}, {DELIVERED})

    def test_ordered_key_waits_for_retrying_head_other_keys_flow(self) -> None:
        """While A (key p1) is retrying, B (key p1) is not sent; C (key p2) flows. Once A
        succeeds, B goes."""
        self.store.add(1, order_key="p1")
        self.store.add(2, order_key="p1")
        self.store.add(3, order_key="p2")
        fails = {1: 2}

        def script(d: Delivery) -> Any:
            if fails.get(d.id):
                fails[d.id] -= 1
                raise DeliveryError("HTTP 503")
            return b"ok"

        self.make(script, ordered=True, initial=1).start()
        self.assertEqual([i for i, _ in self.dest.sent], [1, 3])
        self.assertEqual(self.status(2), PENDING)
        self.clock.advance(1)
        self.assertEqual([i for i, _ in self.dest.sent], [1, 3, 1])
        self.clock.advance(2)
        self.assertEqual([i for i, _ in self.dest.sent], [1, 3, 1, 1, 2])
        self.assertEqual({self.status(i) for i in (1, 2, 3)}, {DELIVERED})

    def test_park_lets_successors_flow_after_dead_head(self) -> None:
        """on_poison park: once A is dead, B with the same key is delivered."""
        self.store.add(1, order_key="p1")
        self.store.add(2, order_key="p1")

        def script(d: Delivery) -> Any:
            if d.id == 1:
                raise DeliveryError("HTTP 400", retryable=False)
            return b"ok"

        self.make(script, ordered=True, on_poison="park").start()
        self.clock.advance(1)
        self.assertEqual((self.status(1), self.status(2)), (DEAD, DELIVERED))

    def test_block_holds_successors_behind_dead_head(self) -> None:
        """on_poison block: once A is dead, B with the same key stays pending; other keys
        still flow."""
        self.store.add(1, order_key="p1")
        self.store.add(2, order_key="p1")
        self.store.add(3, order_key="p2")

        def script(d: Delivery) -> Any:
            if d.id == 1:
                raise DeliveryError("HTTP 400", retryable=False)
            return b"ok"

        self.make(script, ordered=True, on_poison="block").start()
        self.clock.advance(60)
        self.assertEqual(
            (self.status(1), self.status(2), self.status(3)), (DEAD, PENDING, DELIVERED)
        )

    def test_idle_worker_polls_and_wake_claims_at_once(self) -> None:
        """An idle worker claims again after poll_interval; wake() claims at once; the timer
        is not doubled by wake."""
        worker = self.make(poll_interval=5)
        worker.start()
        self.assertEqual(self.store.claims, 1)
        self.store.add(1)
        worker.wake()
        self.assertEqual(self.status(1), DELIVERED)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        claims = self.store.claims
        self.clock.advance(5)
        self.assertEqual(self.store.claims, claims + 1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_timer_targets_next_due_row(self) -> None:
        """With a row due sooner than poll_interval the next claim is scheduled for it."""
        self.store.add(1, due=2.5)
        self.make(poll_interval=10).start()
        [call] = self.clock.getDelayedCalls()
        self.assertEqual(call.getTime(), 2.5)
        self.clock.advance(2.5)
        self.assertEqual(self.status(1), DELIVERED)

    def test_stop_waits_for_inflight_and_claims_no_more(self) -> None:
        """stop() fires only after in-flight sends finished; no claim happens afterwards."""
        gate: defer.Deferred[bytes] = defer.Deferred()
        self.store.add(1)
        worker = self.make(lambda d: gate)
        worker.start()
        stopped = worker.stop()
        self.assertNoResult(stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.store.add(2)
        gate.callback(b"ok")
        self.successResultOf(stopped)
        self.assertEqual((self.status(1), self.status(2)), (DELIVERED, PENDING))
        self.clock.advance(100)
        self.assertEqual(self.status(2), PENDING)

    def test_store_failure_on_claim_is_retried_after_poll(self) -> None:
        """A failing claim is logged and retried after poll_interval."""
        self.store.add(1)
        worker = self.make(poll_interval=3)
        real = self.store.claim_deliveries
        calls = []

        def flaky(*a: Any, **kw: Any) -> Any:
            calls.append(1)
            if len(calls) == 1:
                raise OSError("disk I/O error")
            return real(*a, **kw)

        self.store.claim_deliveries = flaky  # type: ignore[method-assign]
        worker.start()
        self.assertEqual(self.status(1), PENDING)
        self.assertEqual(len(self.flushLoggedErrors()), 0)
        self.clock.advance(3)
        self.assertEqual(self.status(1), DELIVERED)
