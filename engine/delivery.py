"""Delivery: the worker that drains one destination's outbox, with retry, backoff and ordering.

A :class:`DeliveryWorker` claims due outbox rows from the store (through the store executor),
hands each to its destination's ``send`` and records the outcome:

* success -> ``delivery_succeeded`` (the response body is stored);
* an *ambiguous* failure (sent, then timeout or reset) at a destination that is not
  idempotent -> ``delivery_quarantined``: a person decides, it is never retried blindly;
* a permanent failure (``DeliveryError(retryable=False)``) -> ``delivery_dead`` at once;
* a retryable failure -> ``delivery_retry`` after :func:`backoff` (or the peer's
  ``Retry-After`` when longer), until ``max_attempts`` or ``max_age`` is reached, then
  ``delivery_dead`` with a reason naming the limit.

Ordering (rows sharing an ``order_key`` go one at a time, oldest first) is enforced by the
store's claim; the policy only picks what a dead row does to its successors: ``park`` lets them
flow, ``block`` holds them until a person resolves the dead row.

Rate limits: at most ``concurrency`` calls in flight and, with ``rate_per_second``, no more
calls a second than that (a token bucket); rows that may not go yet stay pending in the store.
A *throttled* failure (HTTP 429) holds the whole queue until the peer's ``Retry-After`` (or a
backoff that grows while the 429s go on): the row goes back to pending and the attempt is not
counted, because a refusal for rate says nothing about the row and had no effect. So a long
throttle never dead-letters a row; ``max_age`` still applies when a row fails otherwise.

Bulk calls: a destination with a ``bulk`` attribute (:class:`~engine.model.Bulk`) and a
``send_batch`` method (:class:`~engine.interfaces.BulkDestination`) gets up to ``max_items``
rows in one call, or what came within ``max_wait`` of the first. Each call's rows are pinned to
its key (:func:`~engine.model.batch_key`) before it goes out: until the call is answered they
are claimed and resent together under that key. An answered call settles each row on its own
(:class:`~engine.model.ItemOutcome`): a failed item fails only itself and leaves the call
(a later attempt makes a new call with a new key). A call that failed as a whole (timeout,
5xx, 429) settles its rows alike, once for the call.

The placeholder templating shared by destinations lives in :mod:`engine.templating` (its names
are importable from here too).
Nothing here ever logs a payload or a response body.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from engine import model
from engine.errors import DeliveryError
from engine.model import Bulk, Delivery, ItemOutcome, Settlement
from engine.net.ratelimit import TokenBucket
from engine.spec import Context, Duration, Field, Float, Int, Spec
from engine.templating import (  # noqa: F401 (re-exported: the templating lived here)
    CORE_PLACEHOLDERS,
    check_template,
    render_template,
    template_values,
    url_quote,
)

log = Logger(namespace="wharf.delivery")

RETRY_SPEC = Spec(
    "retry",
    [
        Field(
            "max_attempts",
            Int(lo=1),
            10,
            "Attempts in all (the first one included) before a delivery is dead-lettered.",
            5,
        ),
        Field("initial", Duration(), 1.0, "Wait before the second attempt.", "2s"),
        Field(
            "multiplier",
            Float(lo=1),
            2.0,
            "Each further wait is the previous one times this factor.",
            3.0,
        ),
        Field("max_delay", Duration(), 300.0, "Upper bound of one wait (before jitter).", "10m"),
        Field(
            "jitter",
            Float(lo=0, hi=1),
            0.2,
            "Random spread of each wait, as a fraction: 0.2 means +/-20%.",
            0.1,
        ),
        Field(
            "max_age",
            Duration(),
            86400.0,
            "Give up on a delivery this long after it was queued; 0 means no age limit.",
            "12h",
        ),
    ],
    description=(
        "How a destination retries failed deliveries: exponential backoff with jitter, "
        "bounded by a number of attempts and an age. A server's `Retry-After` is honoured "
        "when it asks for a longer wait."
    ),
    example="""
retry:
  max_attempts: 8
  initial: 2s
  multiplier: 2
  max_delay: 10m
  jitter: 0.2
  max_age: 1d
""",
)


def _check_rate(config: Any, ctx: Context, node: Any, path: str) -> None:
    if (config.per_second is None) == (config.per_minute is None):
        ctx.error(
            node,
            path,
            "expected exactly one of per_second, per_minute "
            f"(got {'both' if config.per_second is not None else 'neither'})",
        )


RATE_LIMIT_SPEC = Spec(
    "rate_limit",
    [
        Field("per_second", Float(lo=0.001), None, "Calls started a second at most.", 10),
        Field("per_minute", Float(lo=0.001), None, "Calls started a minute at most.", 600),
        Field(
            "burst",
            Int(lo=1),
            1,
            "Calls that may start back to back after a quiet spell (the bucket's size).",
            5,
        ),
    ],
    description=(
        "The most calls a second (or a minute) this destination starts; a bulk call counts "
        "once. `concurrency` bounds the calls in flight. Rows that may not go yet stay "
        "pending. Whatever the limit, an HTTP 429 holds the queue until its `Retry-After`, "
        "without counting the attempt."
    ),
    example="rate_limit: {per_second: 5, burst: 5}",
    check=_check_rate,
)


def rate_of(config: Any) -> tuple[float, int]:
    """(calls a second, burst) of a parsed :data:`RATE_LIMIT_SPEC` config; (0, 1) for None."""
    if config is None:
        return 0.0, 1
    rate = config.per_second if config.per_second is not None else config.per_minute / 60.0
    return float(rate), int(config.burst)


ON_POISON = ("park", "block")


@dataclass(frozen=True)
class DeliveryPolicy:
    """Everything a :class:`DeliveryWorker` needs to know about retries, concurrency and order.

    Durations are seconds. ``max_age`` 0 means no age limit. ``idempotent``: the destination
    dedups on the ``Idempotency-Key`` so an ambiguous failure may be retried; when false it is
    quarantined. ``on_poison`` (``park`` or ``block``) only matters when ``ordered``.
    ``concurrency`` bounds the calls in flight (a bulk call counts once); ``rate_per_second``
    (with ``rate_burst``) the calls started a second.
    """

    max_attempts: int = 10
    initial: float = 1.0
    multiplier: float = 2.0
    max_delay: float = 300.0
    jitter: float = 0.2
    max_age: float = 86400.0
    concurrency: int = 4
    idempotent: bool = True
    ordered: bool = False
    on_poison: str = "park"
    lease: float = 300.0
    poll_interval: float = 1.0
    rate_per_second: float = 0.0  # calls a second; 0 = no limit
    rate_burst: int = 1

    def __post_init__(self) -> None:
        checks: list[tuple[str, bool, str]] = [
            ("max_attempts", self.max_attempts >= 1, "an integer >= 1"),
            ("initial", self.initial >= 0, "a duration >= 0"),
            ("multiplier", self.multiplier >= 1, "a number >= 1"),
            ("max_delay", self.max_delay >= 0, "a duration >= 0"),
            ("jitter", 0 <= self.jitter <= 1, "a number in 0..1"),
            ("max_age", self.max_age >= 0, "a duration >= 0 (0 = no limit)"),
            ("concurrency", self.concurrency >= 1, "an integer >= 1"),
            ("on_poison", self.on_poison in ON_POISON, "one of park, block"),
            ("lease", self.lease > 0, "a duration > 0"),
            ("poll_interval", self.poll_interval > 0, "a duration > 0"),
            ("rate_per_second", self.rate_per_second >= 0, "a number >= 0 (0 = no limit)"),
            ("rate_burst", self.rate_burst >= 1, "an integer >= 1"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"'{name}' must be {expected} (got {getattr(self, name)!r})")

    @classmethod
    def from_retry(cls, retry_config: Any, **others: Any) -> DeliveryPolicy:
        """A policy from a parsed :data:`RETRY_SPEC` config (or ``None`` for the defaults)
        plus the non-retry settings (``concurrency=``, ``idempotent=``, ``ordered=``...)."""
        values: dict[str, Any] = {}
        if retry_config is not None:
            for f in RETRY_SPEC.fields:
                values[f.name] = getattr(retry_config, f.name)
        values.update(others)
        return cls(**values)


def backoff(policy: DeliveryPolicy, attempts: int, rng: random.Random) -> float:
    """Seconds to wait after ``attempts`` failed attempts (``attempts`` >= 1).

    ``initial * multiplier ** (attempts - 1)``, capped at ``max_delay``, then spread by
    ``+/- jitter`` (a fraction of the capped value). Never negative.
    """
    exponent = max(attempts - 1, 0)
    try:
        raw = policy.initial * policy.multiplier**exponent
    except OverflowError:
        raw = policy.max_delay
    delay = min(raw, policy.max_delay)
    if policy.jitter:
        delay *= 1.0 + rng.uniform(-policy.jitter, policy.jitter)
    return max(delay, 0.0)


# --------------------------------------------------------------------------- the worker


class Destination(Protocol):
    """What a destination factory returns."""

    async def send(self, delivery: Delivery) -> bytes | None: ...

    def close(self) -> Deferred[Any] | None: ...


class Executor(Protocol):
    """Runs store calls on the store thread."""

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]: ...


def _settles_durably(settlements: Sequence[model.Settlement]) -> bool:
    """A bulk call's outcome is written durably when a row of it is given up on."""
    return any(s.kind in (model.SETTLE_DEAD, model.SETTLE_QUARANTINED) for s in settlements)


def _observe(d: Deferred[Any]) -> Deferred[None]:
    """A Deferred firing (with None) when ``d`` fires, leaving ``d``'s result untouched."""
    out: Deferred[None] = Deferred()

    def fired(result: Any) -> Any:
        out.callback(None)
        return result

    d.addBoth(fired)
    return out


class DeliveryWorker:
    """Drains the outbox of one destination of one channel.

    ``store`` provides ``claim_deliveries``, ``delivery_succeeded``, ``delivery_retry``,
    ``delivery_dead``, ``delivery_quarantined`` and ``next_due`` (and, for throttling and bulk
    calls, ``delivery_held``, ``pin_batch``, ``settle_batch`` and ``release_claims``); every
    call goes through ``executor.submit`` (writes through ``submit_merged`` when the executor
    has it: they share the writer's turn). ``clock`` is the reactor (or a ``task.Clock`` in
    tests); all times are ``clock.seconds()``. At most one claim cycle runs at a time and at
    most ``policy.concurrency`` calls are in flight.
    """

    def __init__(
        self,
        *,
        channel: str,
        name: str,
        destination: Destination,
        policy: DeliveryPolicy,
        store: Any,
        executor: Executor,
        clock: IReactorTime,
        rng: random.Random | None = None,
    ) -> None:
        self.channel = channel
        self.name = name
        self.destination = destination
        self.policy = policy
        self.store = store
        self.executor = executor
        self.clock = clock
        self.rng = rng if rng is not None else random.Random()
        # Store writes share the writer's turn (one commit with the ingests and the pipeline's
        # results) when the executor offers it.
        self._merged = getattr(executor, "submit_merged", None)
        self._running = False
        self._claiming = False
        self._again = False
        self._cycle: Deferred[None] | None = None
        self._timer: IDelayedCall | None = None
        self._inflight: dict[int, Deferred[None] | None] = {}
        self._reserved = 0  # slots promised to rows a pipeline commit is claiming for us
        # rate limits
        self.bucket = (
            TokenBucket(policy.rate_per_second, policy.rate_burst, clock)
            if policy.rate_per_second
            else None
        )
        self.held_until = 0.0  # a 429 holds the queue until then
        self._paused = False  # an operator holds the queue (the console's pause)
        self._throttles = 0  # 429s in a row (the hold grows with them)
        self.throttled = 0  # 429s in all (tests and logs)
        # bulk calls
        bulk = getattr(destination, "bulk", None)
        self.bulk: Bulk | None = (
            bulk if bulk is not None and hasattr(destination, "send_batch") else None
        )
        self._buffer: list[tuple[float, Delivery]] = []  # claimed, waiting to fill a call
        self._ready: list[tuple[list[Delivery], str]] = []  # pinned calls waiting for a slot
        self._calls = 0  # bulk calls in flight
        self._flush: IDelayedCall | None = None
        # health, read by /readyz and the alert rules
        self.observe: Callable[[str, str, str, int, float], None] | None = None
        self.failing_since: float | None = None  # first failed attempt since the last success
        self.consecutive_failures = 0
        self.last_success: float | None = None

    # ----------------------------------------------------------------- control

    @property
    def inflight(self) -> int:
        """Number of deliveries in flight (in bulk mode: claimed and not yet settled)."""
        return len(self._inflight)

    @property
    def running(self) -> bool:
        return self._running

    @property
    def paused(self) -> bool:
        """An operator holds this destination's queue: nothing is claimed or sent until it is
        resumed (rows stay pending in the store; the pause itself is kept by the store)."""
        return self._paused

    @paused.setter
    def paused(self, value: bool) -> None:
        was, self._paused = self._paused, bool(value)
        if was and not value:
            self._kick()

    def _held(self, now: float) -> bool:
        return self._paused or now < self.held_until

    def reserve(self, wanted: int) -> int:
        """Promise up to ``wanted`` send slots to rows that the pipeline's commit will claim
        for this worker (no claim of our own for them); returns how many were promised."""
        if not self._running or self._held(self.clock.seconds()):
            return 0
        if self.bulk is not None:
            free = self._bulk_room(self.policy.concurrency - self._calls)
        else:
            free = self.policy.concurrency - len(self._inflight) - self._reserved
            if self.bucket is not None:
                free = min(free, self.bucket.available() - self._reserved)
        granted = max(0, min(wanted, free))
        self._reserved += granted
        return granted

    def take(self, deliveries: list[Delivery], reserved: int) -> None:
        """Send rows claimed for us by a commit we reserved ``reserved`` slots for; the slots
        not used are given back (and a claim cycle looks for other due rows)."""
        self._reserved = max(0, self._reserved - reserved)
        if not self._running:
            return  # their leases expire and they are claimed again
        if self.bulk is not None:
            self._accept(deliveries)
            self._pump()
        else:
            for delivery in deliveries:
                self._launch(delivery)
        if len(deliveries) < reserved:
            self._kick()

    def start(self) -> None:
        """Begin claiming (an immediate claim, then as rows fall due)."""
        if self._running:
            return
        self._running = True
        self._kick()

    def wake(self) -> None:
        """New rows were enqueued: claim now instead of waiting for the timer."""
        self._kick()

    def stop(self) -> Deferred[None]:
        """Stop claiming; the Deferred fires once the running claim and every send finished
        (rows claimed for a bulk call that had not gone out are released)."""
        self._running = False
        self._cancel_timer()
        return defer.ensureDeferred(self._drain())

    async def _drain(self) -> None:
        if self._cycle is not None:
            await _observe(self._cycle)
        await self._release_unsent()
        while self._inflight:
            pending = [d for d in self._inflight.values() if d is not None]
            if not pending:
                break
            await defer.DeferredList([_observe(d) for d in pending])

    async def _release_unsent(self) -> None:
        """Rows claimed for a bulk call that has not gone out go back to pending (on stop,
        and while a 429 holds the queue: they must not outlive their lease in memory)."""
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
        self._flush = None
        unsent = [d for _, d in self._buffer] + [d for rows, _ in self._ready for d in rows]
        self._buffer, self._ready = [], []
        if not unsent:
            return
        for d in unsent:
            self._inflight.pop(d.id, None)
        try:
            await self._write(
                self.store.release_claims, [d.id for d in unsent], self.clock.seconds()
            )
        except Exception as e:  # their leases expire and they are claimed again then
            log.error(
                "destination {channel}/{destination}: could not release {n} claimed row(s): "
                "{error}",
                channel=self.channel,
                destination=self.name,
                n=len(unsent),
                error=f"{type(e).__name__}: {e}",
            )

    # ----------------------------------------------------------------- claim loop

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _kick(self) -> None:
        if not self._running:
            return
        if self._claiming:
            self._again = True
            return
        self._cancel_timer()
        self._claiming = True
        cycle = self._bulk_cycle() if self.bulk is not None else self._claim_cycle()
        d = defer.ensureDeferred(cycle)

        def done(result: Any) -> None:
            self._claiming = False
            self._cycle = None

        d.addBoth(done)
        if self._claiming:  # still running: keep it for stop()
            self._cycle = d

    def _allowance(self, now: float) -> tuple[int, float]:
        """Calls that may start now (beyond the slots) and, when none, when to look again."""
        if self._paused:
            return 0, self.policy.poll_interval
        if self._held(now):
            return 0, self.held_until - now
        if self.bucket is None:
            return self.policy.concurrency, 0.0
        n = self.bucket.available()
        return n, (0.0 if n > 0 else self.bucket.wait())

    async def _claim_cycle(self) -> None:
        try:
            while self._running:
                self._again = False
                room = self.policy.concurrency - len(self._inflight) - self._reserved
                if room <= 0:
                    return  # a finishing send kicks the loop again
                now = self.clock.seconds()
                allowed, wait = self._allowance(now)
                if self.bucket is not None and not self._held(now):
                    allowed -= self._reserved  # promised rows take their tokens when sent
                if allowed <= 0:
                    self._schedule_in(max(wait, 0.001))
                    return
                room = min(room, allowed)
                rows = await self._write(
                    self.store.claim_deliveries,
                    self.channel,
                    self.name,
                    room,
                    now,
                    self.policy.lease,
                    block_on_dead=self.policy.ordered and self.policy.on_poison == "block",
                )
                for row in rows:
                    self._launch(row)
                if not self._running:
                    return
                if self._again or len(rows) >= room:
                    continue
                due = await self.executor.submit(self.store.next_due, self.channel, self.name)
                if self._again:
                    continue
                self._schedule(due, self.clock.seconds())
                return
        except Exception as e:
            log.error(
                "destination {channel}/{destination}: claim failed: {error}",
                channel=self.channel,
                destination=self.name,
                error=f"{type(e).__name__}: {e}",
            )
            self._schedule(None, self.clock.seconds())

    def _schedule(self, due: float | None, now: float) -> None:
        """Arm the timer for the next claim: when the next row falls due, at most
        ``poll_interval`` from now. A due time already past means the due rows are blocked
        (ordering): poll again later rather than spin."""
        if not self._running:
            return
        delay = self.policy.poll_interval
        if due is not None and due > now:
            delay = min(due - now, delay)
        if self._held(now):
            delay = max(delay, self.held_until - now)
        self._schedule_in(delay)

    def _schedule_in(self, delay: float) -> None:
        if not self._running:
            return
        self._cancel_timer()
        self._timer = self.clock.callLater(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._kick()

    # ----------------------------------------------------------------- outcomes

    def _hold(self, error: DeliveryError, now: float) -> float:
        """A 429: hold the queue until the peer's Retry-After (or a backoff growing with the
        429s in a row); returns when the hold ends."""
        self._throttles += 1
        self.throttled += 1
        wait = error.retry_after or backoff(self.policy, self._throttles, self.rng)
        self.held_until = max(self.held_until, now + wait)
        return self.held_until

    def _decide(
        self, error: DeliveryError, attempt: int, created_at: float, now: float
    ) -> tuple[str, str, float | None]:
        """What a failed attempt does to its row: (kind, reason or error text, next attempt)
        with ``kind`` a ``SETTLE_*`` value (never held: see :meth:`_hold`)."""
        text = error.message or type(error).__name__
        if error.ambiguous and not self.policy.idempotent:
            reason = (
                f"ambiguous outcome at a non-idempotent destination, not retried "
                f"(check the receiver before resending): {text}"
            )
            return model.SETTLE_QUARANTINED, reason, None
        if not error.retryable:
            return model.SETTLE_DEAD, f"permanent failure: {text}", None
        if attempt >= self.policy.max_attempts:
            return model.SETTLE_DEAD, f"gave up after {attempt} attempts: {text}", None
        if self.policy.max_age and now - created_at >= self.policy.max_age:
            reason = (
                f"gave up after max_age {_seconds(self.policy.max_age)} "
                f"({attempt} attempts): {text}"
            )
            return model.SETTLE_DEAD, reason, None
        delay = max(backoff(self.policy, attempt, self.rng), error.retry_after or 0.0)
        return model.SETTLE_RETRY, text, now + delay

    # ----------------------------------------------------------------- one delivery

    def _launch(self, delivery: Delivery) -> None:
        if self.bucket is not None:
            self.bucket.take()
        self._inflight[delivery.id] = None
        d = defer.ensureDeferred(self._deliver(delivery))
        if delivery.id in self._inflight:  # not finished synchronously
            self._inflight[delivery.id] = d

    async def _deliver(self, delivery: Delivery) -> None:
        try:
            await self._attempt(delivery)
        except Exception as e:
            # Recording the outcome failed: the row stays inflight until its lease expires
            # and is claimed again then.
            log.error(
                "destination {channel}/{destination}: delivery {delivery_id}: could not record "
                "the outcome: {error}",
                channel=self.channel,
                destination=self.name,
                delivery_id=delivery.id,
                error=f"{type(e).__name__}: {e}",
            )
        finally:
            self._inflight.pop(delivery.id, None)
            self._kick()

    def failing_for(self, now: float) -> float:
        """Seconds every attempt has failed (0 while the last one succeeded)."""
        return 0.0 if self.failing_since is None else max(0.0, now - self.failing_since)

    def _outcome(self, kind: str, n: int, started: float) -> None:
        """Health and metrics of a settled call: ``n`` deliveries had ``kind``."""
        now = self.clock.seconds()
        if kind == model.SETTLE_SENT:
            self.failing_since, self.consecutive_failures = None, 0
            self.last_success = now
        elif kind != model.SETTLE_HELD:
            if self.failing_since is None:
                self.failing_since = now
            self.consecutive_failures += 1
        if self.observe is not None:
            self.observe(self.channel, self.name, kind, n, now - started)

    async def _attempt(self, delivery: Delivery) -> None:
        attempt = delivery.attempts + 1
        started = self.clock.seconds()
        try:
            response = await defer.ensureDeferred(self.destination.send(delivery))
        except DeliveryError as e:
            error = e
        except Exception as e:
            error = DeliveryError(f"{type(e).__name__}: {e}", retryable=True)
        else:
            self._throttles = 0
            now = self.clock.seconds()
            grouped = getattr(self.executor, "submit_grouped", None)
            many = getattr(self.store, "deliveries_succeeded", None)
            if grouped is not None and many is not None:  # one commit for many completions
                await grouped(many, (delivery.id, response, now))
            else:
                await self.executor.submit(
                    self.store.delivery_succeeded, delivery.id, response, now
                )
            self._outcome(model.SETTLE_SENT, 1, started)
            self._log(delivery, attempt, "sent")
            return

        now = self.clock.seconds()
        text = error.message or type(error).__name__
        logged = error.log_text or text  # the store keeps ``text``; the log may not
        if error.response is not None:
            # What the peer answered (an MLLP AE/AR, an HTTP error body) is kept with the row.
            await self._write(self.store.record_response, delivery.id, error.response)
        if error.throttled:
            until = self._hold(error, now)
            note = f"throttled, held (not counted as an attempt): {text}"
            await self._write(self.store.delivery_held, delivery.id, note, until, now)
            self._outcome(model.SETTLE_HELD, 1, started)
            self._log(delivery, attempt, f"held {until - now:.1f}s", logged)
            return
        kind, reason, next_at = self._decide(error, attempt, delivery.created_at, now)
        self._outcome(kind, 1, started)
        if kind == model.SETTLE_QUARANTINED:
            await self._write(
                self.store.delivery_quarantined, delivery.id, reason, now, durable=True
            )
            self._log(delivery, attempt, "quarantined", reason.replace(text, logged), level="warn")
        elif kind == model.SETTLE_DEAD:
            await self._write(self.store.delivery_dead, delivery.id, reason, now, durable=True)
            self._log(delivery, attempt, "dead", reason.replace(text, logged), level="warn")
        else:
            assert next_at is not None
            await self._write(self.store.delivery_retry, delivery.id, text, next_at, now)
            self._log(delivery, attempt, f"retry in {next_at - now:.1f}s", logged)

    def _write(
        self, fn: Callable[..., Any], *args: Any, durable: bool = False, **kwargs: Any
    ) -> Deferred[Any]:
        """A store call that may share the writer's turn (``submit_merged``)."""
        if self._merged is None:
            return self.executor.submit(fn, *args, **kwargs)
        return self._merged(fn, *args, durable=durable, **kwargs)

    # ----------------------------------------------------------------- bulk calls

    def _bulk_room(self, calls: int) -> int:
        """Rows that may still be claimed for ``calls`` more calls."""
        assert self.bulk is not None
        waiting = len(self._buffer) + sum(len(rows) for rows, _ in self._ready)
        return calls * self.bulk.max_items - waiting - self._reserved

    def _accept(self, rows: list[Delivery]) -> None:
        """Claimed rows: those of an earlier call go out again together, under its key; the
        others wait in the buffer for a call to fill."""
        now = self.clock.seconds()
        pinned: dict[str, list[Delivery]] = {}
        for row in rows:
            self._inflight[row.id] = None
            if row.batch_key:
                pinned.setdefault(row.batch_key, []).append(row)
            else:
                self._buffer.append((now, row))
        self._ready.extend((group, key) for key, group in pinned.items())

    async def _bulk_cycle(self) -> None:
        assert self.bulk is not None
        try:
            while self._running:
                self._again = False
                now = self.clock.seconds()
                self._pump()
                free = self.policy.concurrency - self._calls
                allowed, wait = self._allowance(now)
                room = self._bulk_room(min(free, max(allowed, 0)))
                if room <= 0:
                    if free > 0 and allowed <= 0:
                        self._schedule_in(max(wait, 0.001))
                    return  # a finishing call (or the timer) kicks the loop again
                rows = await self._write(
                    self.store.claim_deliveries,
                    self.channel,
                    self.name,
                    room,
                    now,
                    self.policy.lease,
                    complete_batches=True,
                )
                self._accept(rows)
                self._pump()
                if not self._running:
                    return
                if self._again or len(rows) >= room:
                    continue
                due = await self.executor.submit(self.store.next_due, self.channel, self.name)
                if self._again:
                    continue
                self._schedule(due, self.clock.seconds())
                return
        except Exception as e:
            log.error(
                "destination {channel}/{destination}: claim failed: {error}",
                channel=self.channel,
                destination=self.name,
                error=f"{type(e).__name__}: {e}",
            )
            self._schedule(None, self.clock.seconds())

    def _pump(self) -> None:
        """Start the calls that may go now: pinned calls first, then full calls from the
        buffer, then a partial one whose first row waited ``max_wait``."""
        assert self.bulk is not None
        if not self._running:
            return
        now = self.clock.seconds()
        while self._calls < self.policy.concurrency:
            allowed, wait = self._allowance(now)
            if allowed <= 0:
                if self._ready or self._buffer:
                    self._arm_flush(wait)
                return
            if self._ready:
                rows, key = self._ready.pop(0)
                self._launch_batch(rows, key)
                continue
            if not self._buffer:
                return
            oldest = self._buffer[0][0]
            full = len(self._buffer) >= self.bulk.max_items
            if not full and now < oldest + self.bulk.max_wait:
                self._arm_flush(oldest + self.bulk.max_wait - now)
                return
            batch = [d for _, d in self._buffer[: self.bulk.max_items]]
            del self._buffer[: self.bulk.max_items]
            self._launch_batch(batch, None)

    def _arm_flush(self, delay: float) -> None:
        if self._flush is not None and self._flush.active():
            if self._flush.getTime() <= self.clock.seconds() + delay:
                return
            self._flush.cancel()
        self._flush = self.clock.callLater(max(delay, 0.001), self._on_flush)

    def _on_flush(self) -> None:
        self._flush = None
        self._pump()
        self._kick()

    def _launch_batch(self, rows: list[Delivery], key: str | None) -> None:
        if self.bucket is not None:
            self.bucket.take()
        self._calls += 1
        d = defer.ensureDeferred(self._deliver_batch(rows, key))
        for row in rows:
            if row.id in self._inflight:  # not finished synchronously
                self._inflight[row.id] = d

    async def _deliver_batch(self, rows: list[Delivery], key: str | None) -> None:
        try:
            await self._attempt_batch(rows, key)
        except Exception as e:
            # Pinning or recording failed: the rows stay inflight until their leases expire
            # and are claimed again then (a pinned call with its key).
            log.error(
                "destination {channel}/{destination}: bulk call of {n} row(s) (first "
                "{delivery_id}): could not record the outcome: {error}",
                channel=self.channel,
                destination=self.name,
                n=len(rows),
                delivery_id=rows[0].id,
                error=f"{type(e).__name__}: {e}",
            )
        finally:
            for row in rows:
                self._inflight.pop(row.id, None)
            self._calls -= 1
            self._kick()

    async def _attempt_batch(self, rows: list[Delivery], key: str | None) -> None:
        send_batch = self.destination.send_batch  # type: ignore[attr-defined]
        if key is None:
            key = model.batch_key(rows)
            await self._write(self.store.pin_batch, [r.id for r in rows], key, self.clock.seconds())
        started = self.clock.seconds()
        try:
            outcomes = await defer.ensureDeferred(send_batch(rows, key))
        except DeliveryError as e:
            error = e
        except Exception as e:
            error = DeliveryError(f"{type(e).__name__}: {e}", retryable=True)
        else:
            if len(outcomes) == len(rows):
                await self._settle_items(rows, outcomes, key, started)
                return
            error = DeliveryError(
                f"bulk answer holds {len(outcomes)} result(s) for {len(rows)} item(s)",
                retryable=True,
                ambiguous=True,
            )
        await self._settle_call(rows, error, key, started)

    async def _settle_items(
        self, rows: list[Delivery], outcomes: list[ItemOutcome], key: str, started: float
    ) -> None:
        now = self.clock.seconds()
        settlements: list[Settlement] = []
        tally: dict[str, int] = {}
        for row, outcome in zip(rows, outcomes, strict=True):
            s = self._item_settlement(row, outcome, now)
            settlements.append(s)
            tally[s.kind] = tally.get(s.kind, 0) + 1
        if not any(o.error is not None and o.error.throttled for o in outcomes):
            self._throttles = 0
        for kind, n in sorted(tally.items(), key=lambda kv: kv[0] == model.SETTLE_SENT):
            self._outcome(kind, n, started)  # a call with any row sent ends healthy
        await self._write(
            self.store.settle_batch, settlements, now, durable=_settles_durably(settlements)
        )
        if self._held(self.clock.seconds()):
            await self._release_unsent()  # held: what waits for a call goes back to pending
        log.info(
            "destination {channel}/{destination}: bulk call {key} of {n} row(s): {tally}",
            channel=self.channel,
            destination=self.name,
            key=key,
            n=len(rows),
            tally=", ".join(f"{n} {kind}" for kind, n in sorted(tally.items())),
        )
        for row, outcome, settled in zip(rows, outcomes, settlements, strict=True):
            if settled.kind in (model.SETTLE_DEAD, model.SETTLE_QUARANTINED):
                error = outcome.error
                shown = settled.reason or ""
                if isinstance(error, DeliveryError) and error.log_text:
                    shown = shown.replace(error.message, error.log_text)
                self._log(row, row.attempts + 1, settled.kind, shown, level="warn")

    def _item_settlement(self, row: Delivery, outcome: ItemOutcome, now: float) -> Settlement:
        if outcome.requeue:
            note = "not applied: the call failed on another item; sent again in a new call"
            return Settlement(row.id, model.SETTLE_HELD, outcome.response, note, now, unpin=True)
        error = outcome.error
        if error is None:
            return Settlement(row.id, model.SETTLE_SENT, outcome.response)
        if not isinstance(error, DeliveryError):
            error = DeliveryError(f"{type(error).__name__}: {error}", retryable=True)
        response = outcome.response if outcome.response is not None else error.response
        if error.throttled:
            until = self._hold(error, now)
            note = f"throttled, held (not counted as an attempt): {error.message}"
            return Settlement(row.id, model.SETTLE_HELD, response, note, until, unpin=True)
        kind, reason, next_at = self._decide(error, row.attempts + 1, row.created_at, now)
        # A row that goes again leaves its call (a new call gets a new key); a settled one keeps
        # the key of the call that settled it.
        return Settlement(row.id, kind, response, reason, next_at, unpin=kind == model.SETTLE_RETRY)

    async def _settle_call(
        self, rows: list[Delivery], error: DeliveryError, key: str, started: float
    ) -> None:
        """A call that failed as a whole: its rows are settled alike, once for the call (they
        stay pinned: a resend is the same call under the same key)."""
        now = self.clock.seconds()
        text = error.message or type(error).__name__
        logged = error.log_text or text
        attempt = max(r.attempts for r in rows) + 1
        if error.throttled:
            until = self._hold(error, now)
            note = f"throttled, held (not counted as an attempt): {text}"
            kind, reason, next_at = model.SETTLE_HELD, note, until
            outcome = f"held {until - now:.1f}s"
        else:
            kind, reason, next_at = self._decide(
                error, attempt, min(r.created_at for r in rows), now
            )
            outcome = kind if next_at is None else f"retry in {next_at - now:.1f}s"
        settlements = [Settlement(r.id, kind, error.response, reason, next_at) for r in rows]
        self._outcome(kind, len(rows), started)
        await self._write(
            self.store.settle_batch, settlements, now, durable=_settles_durably(settlements)
        )
        if self._held(self.clock.seconds()):
            await self._release_unsent()  # held: what waits for a call goes back to pending
        level = "warn" if kind in (model.SETTLE_DEAD, model.SETTLE_QUARANTINED) else "info"
        getattr(log, level)(
            "destination {channel}/{destination}: bulk call {key} of {n} row(s) (first "
            "{delivery_id}) attempt {attempt}: {outcome}: {error}",
            channel=self.channel,
            destination=self.name,
            key=key,
            n=len(rows),
            delivery_id=rows[0].id,
            attempt=attempt,
            outcome=outcome,
            error=reason.replace(text, logged) if kind != model.SETTLE_RETRY else logged,
        )

    def _log(
        self, delivery: Delivery, attempt: int, outcome: str, error: str = "", level: str = "info"
    ) -> None:
        emit = getattr(log, level)
        emit(
            "destination {channel}/{destination}: delivery {delivery_id} attempt {attempt}: "
            "{outcome}{sep}{error}",
            channel=self.channel,
            destination=self.name,
            delivery_id=delivery.id,
            attempt=attempt,
            outcome=outcome,
            sep=": " if error else "",
            error=error,
            message_id=delivery.message_id,
            correlation_id=delivery.correlation_id,
        )


def _seconds(value: float) -> str:
    """``86400.0`` -> ``'1d'``, ``90.0`` -> ``'90s'``: a duration for error text."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if value >= size and value % size == 0:
            return f"{int(value // size)}{unit}"
    return f"{value:g}s"
