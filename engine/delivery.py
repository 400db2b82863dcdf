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

The placeholder templating shared by destinations lives in :mod:`engine.templating` (its names
are importable from here too).
Nothing here ever logs a payload or a response body.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from engine.errors import DeliveryError
from engine.model import Delivery
from engine.spec import Duration, Field, Float, Int, Spec
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

ON_POISON = ("park", "block")


@dataclass(frozen=True)
class DeliveryPolicy:
    """Everything a :class:`DeliveryWorker` needs to know about retries, concurrency and order.

    Durations are seconds. ``max_age`` 0 means no age limit. ``idempotent``: the destination
    dedups on the ``Idempotency-Key`` so an ambiguous failure may be retried; when false it is
    quarantined. ``on_poison`` (``park`` or ``block``) only matters when ``ordered``.
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
    ``delivery_dead``, ``delivery_quarantined`` and ``next_due``; every call goes through
    ``executor.submit``. ``clock`` is the reactor (or a ``task.Clock`` in tests); all times
    are ``clock.seconds()``. At most one claim cycle runs at a time and at most
    ``policy.concurrency`` sends are in flight.
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
        self._running = False
        self._claiming = False
        self._again = False
        self._cycle: Deferred[None] | None = None
        self._timer: IDelayedCall | None = None
        self._inflight: dict[int, Deferred[None] | None] = {}
        self._reserved = 0  # slots promised to rows a pipeline commit is claiming for us

    # ----------------------------------------------------------------- control

    @property
    def inflight(self) -> int:
        """Number of sends in flight."""
        return len(self._inflight)

    @property
    def running(self) -> bool:
        return self._running

    def reserve(self, wanted: int) -> int:
        """Promise up to ``wanted`` send slots to rows that the pipeline's commit will claim
        for this worker (no claim of our own for them); returns how many were promised."""
        if not self._running:
            return 0
        granted = max(
            0, min(wanted, self.policy.concurrency - len(self._inflight) - self._reserved)
        )
        self._reserved += granted
        return granted

    def take(self, deliveries: list[Delivery], reserved: int) -> None:
        """Send rows claimed for us by a commit we reserved ``reserved`` slots for; the slots
        not used are given back (and a claim cycle looks for other due rows)."""
        self._reserved = max(0, self._reserved - reserved)
        if not self._running:
            return  # their leases expire and they are claimed again
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
        """Stop claiming; the Deferred fires once the running claim and every send finished."""
        self._running = False
        self._cancel_timer()
        return defer.ensureDeferred(self._drain())

    async def _drain(self) -> None:
        if self._cycle is not None:
            await _observe(self._cycle)
        while self._inflight:
            pending = [d for d in self._inflight.values() if d is not None]
            if not pending:
                break
            await defer.DeferredList([_observe(d) for d in pending])

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
        d = defer.ensureDeferred(self._claim_cycle())

        def done(result: Any) -> None:
            self._claiming = False
            self._cycle = None

        d.addBoth(done)
        if self._claiming:  # still running: keep it for stop()
            self._cycle = d

    async def _claim_cycle(self) -> None:
        try:
            while self._running:
                self._again = False
                room = self.policy.concurrency - len(self._inflight) - self._reserved
                if room <= 0:
                    return  # a finishing send kicks the loop again
                now = self.clock.seconds()
                rows = await self.executor.submit(
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
        self._cancel_timer()
        self._timer = self.clock.callLater(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._kick()

    # ----------------------------------------------------------------- one delivery

    def _launch(self, delivery: Delivery) -> None:
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

    async def _attempt(self, delivery: Delivery) -> None:
        attempt = delivery.attempts + 1
        try:
            response = await defer.ensureDeferred(self.destination.send(delivery))
        except DeliveryError as e:
            error = e
        except Exception as e:
            error = DeliveryError(f"{type(e).__name__}: {e}", retryable=True)
        else:
            now = self.clock.seconds()
            grouped = getattr(self.executor, "submit_grouped", None)
            many = getattr(self.store, "deliveries_succeeded", None)
            if grouped is not None and many is not None:  # one commit for many completions
                await grouped(many, (delivery.id, response, now))
            else:
                await self.executor.submit(
                    self.store.delivery_succeeded, delivery.id, response, now
                )
            self._log(delivery, attempt, "sent")
            return

        now = self.clock.seconds()
        text = error.message or type(error).__name__
        logged = error.log_text or text  # the store keeps ``text``; the log may not
        if error.response is not None:
            # What the peer answered (an MLLP AE/AR, an HTTP error body) is kept with the row.
            await self.executor.submit(self.store.record_response, delivery.id, error.response)
        if error.ambiguous and not self.policy.idempotent:
            reason = (
                f"ambiguous outcome at a non-idempotent destination, not retried "
                f"(check the receiver before resending): {text}"
            )
            await self.executor.submit(self.store.delivery_quarantined, delivery.id, reason, now)
            self._log(delivery, attempt, "quarantined", reason.replace(text, logged), level="warn")
        elif not error.retryable:
            reason = f"permanent failure: {text}"
            await self.executor.submit(self.store.delivery_dead, delivery.id, reason, now)
            self._log(delivery, attempt, "dead", reason.replace(text, logged), level="warn")
        elif attempt >= self.policy.max_attempts:
            reason = f"gave up after {attempt} attempts: {text}"
            await self.executor.submit(self.store.delivery_dead, delivery.id, reason, now)
            self._log(delivery, attempt, "dead", reason.replace(text, logged), level="warn")
        elif self.policy.max_age and now - delivery.created_at >= self.policy.max_age:
            reason = (
                f"gave up after max_age {_seconds(self.policy.max_age)} "
                f"({attempt} attempts): {text}"
            )
            await self.executor.submit(self.store.delivery_dead, delivery.id, reason, now)
            self._log(delivery, attempt, "dead", reason.replace(text, logged), level="warn")
        else:
            delay = max(backoff(self.policy, attempt, self.rng), error.retry_after or 0.0)
            await self.executor.submit(
                self.store.delivery_retry, delivery.id, text, now + delay, now
            )
            self._log(delivery, attempt, f"retry in {delay:.1f}s", logged)

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
        )


def _seconds(value: float) -> str:
    """``86400.0`` -> ``'1d'``, ``90.0`` -> ``'90s'``: a duration for error text."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if value >= size and value % size == 0:
            return f"{int(value // size)}{unit}"
    return f"{value:g}s"
