"""The pipeline processor: stored messages through their channel, off the reactor thread, and
their results (with what the channel's domains book) recorded in one commit per batch.

Fresh ingests are handed over in memory (no store read); a sweep of the store finds what a
crash, a replay or an unloaded channel left in ``received``. Each batch is two store jobs at
most (load, for swept messages only; record, one commit for the whole batch). The deliveries a
batch queues are claimed in that same commit for the workers that promised room for them
(:meth:`~engine.delivery.DeliveryWorker.reserve`) and handed over in memory: a message costs
no claim commit of its own.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from engine.channel import Channel, Result
from engine.errors import StoreConflict
from engine.interfaces import Binding, Booking
from engine.model import ERROR, Outbound
from engine.runtime.canary import is_test

log = Logger(namespace="wharf.pipeline")

BATCH = 64


@dataclass(frozen=True)
class Work:
    """A stored message waiting for the pipeline."""

    id: str
    channel: str
    correlation_id: str
    raw: bytes
    parsed: Any = None  # the ingest's decode, reused when the channel did not change since
    origin: str | None = None  # the credential it came with (engine.model.Inbound.origin)
    config: str | None = None  # the configuration version a replay asked for (None: current)


@dataclass(frozen=True)
class Outcome:
    """One pipeline result to record, with the domain bookings that commit with it."""

    message_id: str
    status: str
    transformed: bytes | None = None
    outbound: Sequence[Outbound] = ()
    business_keys: Sequence[tuple[str, str]] = ()
    error: str | None = None
    error_location: str | None = None
    work_item: tuple[str, str, str] | None = None
    bookings: Sequence[tuple[Binding, list[Any]]] = field(default_factory=tuple)
    channel: str = ""
    correlation_id: str = ""
    durable: bool = False  # a booking allocated what must survive a power loss
    config_version: str | None = None  # the configuration that produced it
    test: bool = False  # test data (a canary): the domains' bookings are undone (see _finish)


def outcome_of(work: Work, channel: Channel, result: Result) -> Outcome:
    bookings = channel.bookings(result.events) if result.events else []
    test = bool(result.outbound or bookings) and is_test(work.raw)
    return Outcome(
        message_id=work.id,
        status=result.status,
        transformed=result.transformed,
        outbound=[_marked(o, work.id) for o in result.outbound] if test else result.outbound,
        business_keys=result.keys,
        error=result.error,
        error_location=result.error_location,
        work_item=result.work_item,
        bookings=bookings,
        channel=work.channel,
        correlation_id=work.correlation_id,
        durable=any(binding.domain.durable for binding, _ in bookings),
        config_version=channel.version,
        test=test,
    )


def _marked(out: Outbound, message_id: str) -> Outbound:
    """A test message's payload: its delivery carries the test flag, and an idempotency key
    of its own (a domain derives keys from business keys that its undone booking frees for
    the next canary)."""
    meta = {**out.meta, "test": True}
    if "idempotency_key" in meta:
        meta["idempotency_key"] = f"{meta['idempotency_key']}@test:{message_id}"
    return dataclasses.replace(out, meta=meta)


@dataclass(frozen=True)
class Claim:
    """Room a worker promised for rows this commit queues: at most ``limit``, leased so."""

    limit: int
    lease: float
    block_on_dead: bool = False


Claims = dict[tuple[str, str], Claim]
Claimed = dict[tuple[str, str], list[Any]]


def _finish(
    tx: Any,
    outcome: Outcome,
    now: float,
    claims: Claims | None = None,
    claimed: Claimed | None = None,
) -> None:
    """One result in an open transaction: the domains book first, their deliveries join the
    message's own, then the spine records it all and claims what the workers have room for."""
    outbound = list(outcome.outbound)
    if outcome.status != ERROR:
        booking = Booking(outcome.message_id, outcome.correlation_id, outcome.channel, now)
        for binding, records in outcome.bookings:
            if outcome.test:  # its payloads go out, marked test; the domains keep no record
                with tx.undone():
                    made = binding.book(tx, booking, records)
                outbound += [_marked(o, outcome.message_id) for o in made]
            else:
                outbound += binding.book(tx, booking, records)
    queued = tx.finish(
        outcome.message_id,
        status=outcome.status,
        now=now,
        transformed=outcome.transformed,
        outbound=outbound,
        business_keys=outcome.business_keys,
        error=outcome.error,
        error_location=outcome.error_location,
        work_item=outcome.work_item,
    )
    if outcome.config_version is not None:
        tx.set_config_versions([(outcome.message_id, outcome.config_version)])
    if not claims or claimed is None:
        return
    by_destination: dict[str, list[int]] = {}
    for destination, row_id in queued:
        by_destination.setdefault(destination, []).append(row_id)
    for destination, ids in by_destination.items():
        key = (outcome.channel, destination)
        claim = claims.get(key)
        taken = claimed.setdefault(key, [])
        if claim is not None and len(taken) < claim.limit:
            taken += tx.claim(
                ids,
                now,
                claim.lease,
                limit=claim.limit - len(taken),
                block_on_dead=claim.block_on_dead,
            )


def record(
    store: Any,
    outcomes: Sequence[Outcome],
    now: float,
    claims: Claims | None = None,
    *,
    final: bool = True,
) -> Claimed:
    """Runs on the store thread: one commit for the batch; if the store refuses it, record
    message by message, and put a message whose own result cannot be stored in error rather
    than retrying it forever. Returns the deliveries claimed for the workers (``claims``).
    Not ``final``: a :class:`StoreConflict` (another node's transaction in the way) is raised
    for the caller to record the batch again later, rather than putting it in error."""
    durable = any(o.durable for o in outcomes)
    claimed: Claimed = {}
    try:
        with store.transaction(f"finish_many({len(outcomes)})", durable=durable) as tx:
            for outcome in outcomes:
                _finish(tx, outcome, now, claims, claimed)
        return claimed
    except Exception as exc:
        if isinstance(exc, StoreConflict) and not final:
            raise  # inside a writer turn: tried again in a turn (a transaction) of its own
        if len(outcomes) == 1:
            failures = [(outcomes[0], exc)]
        else:
            log.warn(
                "a batch of {n} results was refused ({error}); recording them one by one",
                n=len(outcomes),
                error=f"{type(exc).__name__}: {exc}",
            )
            failures = []
            for outcome in outcomes:
                try:
                    with store.transaction(
                        f"finish_processing({outcome.message_id})", durable=outcome.durable
                    ) as tx:
                        _finish(tx, outcome, now)
                except Exception as one:
                    failures.append((outcome, one))
    for outcome, exc in failures:
        log.error(
            "message {id}: the store refused its result: {error}",
            id=outcome.message_id,
            error=f"{type(exc).__name__}: {exc}",
        )
        with store.transaction(f"finish_processing({outcome.message_id})") as tx:
            tx.finish(
                outcome.message_id,
                status=ERROR,
                now=now,
                error=f"the store refused this message's result: {exc}",
                error_location="pipeline",
            )
    return {}  # recorded one by one: the workers claim what was queued themselves


#: How many times the processor records a batch again when another node's transaction stood in
#: its way (a PostgreSQL deadlock or serialization failure between nodes booking the same
#: rows), each time in a writer turn of its own, before its messages go to error.
CONFLICT_RETRIES = 5


def record_each(store: Any, outcomes: Sequence[tuple[Outcome, float]]) -> None:
    """Results each recorded at its own time (an impact preview's replay, engine/preview):
    one commit for them all, or :func:`record` one by one when the store refuses it."""
    try:
        with store.transaction(f"finish_many({len(outcomes)})", durable=False) as tx:
            for outcome, now in outcomes:
                _finish(tx, outcome, now)
    except Exception:
        for outcome, now in outcomes:
            record(store, [outcome], now)


def _load_many(store: Any, ids: list[str]) -> list[tuple[Any, bytes | None]]:
    out = []
    for message_id in ids:
        row = store.get_message(message_id)
        out.append((row, store.get_content(message_id, "raw") if row else None))
    return out


def _process_all(jobs: list[tuple[Channel, Work]]) -> list[tuple[Work, Channel, Result]]:
    """Runs on a pipeline thread: the I/O-free part of each message, one after another."""
    out = []
    for channel, w in jobs:
        # A decode made by the same channel object at ingest is reused; after a reload, redo it.
        parsed = w.parsed[1] if w.parsed and w.parsed[0] is channel else None
        result = channel.process(w.raw, w.id, w.correlation_id, parsed=parsed, origin=w.origin)
        out.append((w, channel, result))
    return out


class Processor(service.Service):
    """Runs stored messages through their channel (see the module docstring).

    ``channels()`` gives the running channels by name (a reload swaps them);
    ``delivered(channel)`` is told when a batch queued deliveries for that channel.

    Fair to every channel: each has its own queue; a batch starts as soon as one of the
    ``parallel`` slots is free, taking the channels in turn, and one channel has at most
    ``per_channel`` batches on the pipeline threads at once. A channel busy with one huge
    message therefore leaves the other threads to the other channels' messages.
    """

    name = "processor"

    def __init__(
        self,
        *,
        reactor: Any,
        store: Any,
        executor: Any,
        pool: ThreadPool,
        parallel: int,
        channels: Callable[[], dict[str, Channel]],
        delivered: Callable[[str], None],
        workers: Callable[[str], dict[str, Any]] | None = None,
        per_channel: int | None = None,
        pinned: Callable[[str, str], Channel | None] | None = None,
        metrics: Any = None,
    ) -> None:
        """``pinned(channel, version)``: the channel as configuration ``version`` had it, for a
        replay "as originally processed" (None, or no ``pinned``: the running channel)."""
        self.reactor = reactor
        self.metrics = metrics  # engine.runtime.metrics.Metrics (statuses by channel)
        self.store = store
        self.executor = executor
        self.pool = pool
        self.parallel = max(1, parallel)
        threads = max(1, getattr(pool, "max", 2))
        self.per_channel = per_channel or max(1, threads - 1)
        self.channels = channels
        self.delivered = delivered
        self.workers = workers or (lambda channel: {})
        self.pinned = pinned or (lambda channel, version: None)
        self.inflight: set[str] = set()
        self.queues: dict[str, deque[Work]] = {}
        self._turn: deque[str] = deque()  # channels with queued work, in the order served
        self._busy: dict[str, int] = {}  # batches of a channel on the pipeline threads
        self._batches: set[defer.Deferred] = set()
        self._sweep = True  # the first pass is a recovery sweep
        self._sweeping: defer.Deferred | None = None
        self.stopped = True
        self.processed = 0

    # -- lifecycle -------------------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self.stopped = False
        self.wake()

    def stopService(self) -> defer.Deferred:
        super().stopService()
        return defer.ensureDeferred(self.stop())

    async def stop(self) -> None:
        self.stopped = True
        while self._batches or self._sweeping is not None:
            pending = list(self._batches)
            if self._sweeping is not None:
                pending.append(self._sweeping)
            await defer.DeferredList(pending)

    # -- work ------------------------------------------------------------------------------
    @property
    def queued(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def enqueue(self, work: Work) -> None:
        """A message just committed: process it without reading it back. The batch starts once
        the whole commit's Deferreds fired (the executor's ``after_fire``), so the messages of
        one ingest commit go to the pipeline threads as one batch: one hand-off and one result
        commit for them, not one each."""
        self.inflight.add(work.id)
        self._queue(work)
        after_fire = getattr(self.executor, "after_fire", None)
        if after_fire is None:
            self.wake()
        else:
            after_fire(self.wake)

    def _queue(self, work: Work) -> None:
        queue = self.queues.get(work.channel)
        if queue is None:
            queue = self.queues[work.channel] = deque()
        if not queue and work.channel not in self._turn:
            self._turn.append(work.channel)
        queue.append(work)

    def sweep(self) -> None:
        """Look in the store for messages still ``received`` (recovery, replays)."""
        self._sweep = True
        self.wake()

    def wake(self) -> None:
        """Start what the free slots allow: batches, or a sweep when nothing is queued."""
        if self.stopped:
            return
        while len(self._batches) < self.parallel:
            channel = self._next_channel()
            if channel is None:
                break
            queue = self.queues[channel]
            batch = [queue.popleft() for _ in range(min(BATCH, len(queue)))]
            if queue:
                self._turn.append(channel)  # its next batch waits for the others' turn
            self._busy[channel] = self._busy.get(channel, 0) + 1
            d = defer.ensureDeferred(self._batch(batch))
            if not d.called:
                self._batches.add(d)
                d.addBoth(self._batch_done, d)
        if self._sweep and self._sweeping is None and not self.queued:
            self._sweep = False
            self._sweeping = defer.ensureDeferred(self._swept())
            self._sweeping.addErrback(lambda f: log.failure("pipeline sweep failed", f))
            self._sweeping.addBoth(self._sweep_done)

    def _next_channel(self) -> str | None:
        """The first channel in turn with queued work and room under its own limit."""
        for _ in range(len(self._turn)):
            channel = self._turn.popleft()
            if not self.queues.get(channel):
                continue
            if self._busy.get(channel, 0) < self.per_channel:
                return channel
            self._turn.append(channel)  # at its limit: keep its place for later
        return None

    def _batch_done(self, result: Any, d: defer.Deferred) -> Any:
        self._batches.discard(d)
        self.wake()
        return None

    def _sweep_done(self, _: Any) -> None:
        self._sweeping = None
        self.wake()

    async def _swept(self) -> None:
        channels = self.channels()
        ids: list[str] = []
        for name in list(channels):
            ids += await self.executor.submit(self.store.received_ids, 256, name)
        ids = [i for i in ids if i not in self.inflight]
        if not ids:
            return
        self.inflight.update(ids)
        try:
            loaded = await self.executor.submit(_load_many, self.store, ids)
        except Exception:
            self.inflight.difference_update(ids)
            raise
        pins_of = getattr(self.store, "replay_pins", None)
        pins = await self.executor.submit(pins_of, ids) if pins_of is not None else {}
        for message_id, (row, raw) in zip(ids, loaded, strict=True):
            if row is not None and row.status == "received" and raw is not None:
                pin = pins.get(row.id)
                work = Work(row.id, row.channel, row.correlation_id, raw, origin=row.origin)
                self._queue(dataclasses.replace(work, config=pin) if pin else work)
            else:
                self.inflight.discard(message_id)
        if len(ids) == 256 * max(1, len(channels)):
            self._sweep = True  # more may wait

    def _reserve(self, results: list[tuple[Work, Channel, Result]]) -> dict[tuple[str, str], Any]:
        """Room promised by the workers of the destinations this batch sends to (before the
        commit, so the commit can claim the rows it queues for them)."""
        wanted: dict[tuple[str, str], int] = {}
        for w, _channel, r in results:
            if r.outbound or r.events:
                for name in self.workers(w.channel):
                    wanted[(w.channel, name)] = wanted.get((w.channel, name), 0) + BATCH
        promised: dict[tuple[str, str], Any] = {}
        for (channel, name), n in wanted.items():
            worker = self.workers(channel).get(name)
            if worker is None:
                continue
            granted = worker.reserve(n)
            if granted:
                policy = worker.policy
                block = policy.ordered and policy.on_poison == "block"
                promised[(channel, name)] = (worker, Claim(granted, policy.lease, block))
        return promised

    def _channel_for(self, work: Work, running: Channel) -> Channel:
        """The running channel, or the version a replay asked for when it can be rebuilt."""
        if work.config is None or work.config == running.version:
            return running
        pinned = self.pinned(work.channel, work.config)
        if pinned is None:
            log.warn(
                "message {id}: configuration {version} cannot be rebuilt; processed with the "
                "current configuration ({current})",
                id=work.id,
                version=work.config,
                current=running.version,
            )
            return running
        return pinned

    def _release(self, channel: str) -> None:
        """A batch of ``channel`` left the pipeline threads (its commit may still run)."""
        self._busy[channel] = max(0, self._busy.get(channel, 0) - 1)
        self.wake()

    async def _record(self, submit: Any, outcomes: list[Outcome], claims: Claims) -> Claimed:
        """:func:`record` in the writer's turn; a batch another node's transaction stood in the
        way of (:class:`StoreConflict`) is recorded again, in a turn of its own each time, the
        last time ``final`` (what still fails goes to error)."""
        durable = any(o.durable for o in outcomes)
        for attempt in range(CONFLICT_RETRIES + 1):
            final = attempt == CONFLICT_RETRIES
            try:
                claimed: Claimed = await submit(
                    record, self.store, outcomes, time.time(), claims, final=final, durable=durable
                )
                return claimed
            except StoreConflict as exc:
                log.info(
                    "{n} result(s) ran into another node's commit (try {attempt}): {error}; "
                    "recording them again",
                    n=len(outcomes),
                    attempt=attempt + 1,
                    error=str(exc),
                )
                await task.deferLater(self.reactor, 0.02 * (attempt + 1), lambda: None)
        raise AssertionError("unreachable: the final try does not raise StoreConflict")

    async def _batch(self, batch: list[Work]) -> None:
        """Process a batch on a pipeline thread, then record it in one commit."""
        released = False
        try:
            channels = self.channels()
            jobs = [
                (self._channel_for(w, channels[w.channel]), w)
                for w in batch
                if w.channel in channels
            ]
            # (a message of a channel not running now stays received for a later sweep)
            if not jobs:
                return
            try:
                results = await threads.deferToThreadPool(
                    self.reactor, self.pool, _process_all, jobs
                )
            finally:
                released = True
                self._release(batch[0].channel)
            outcomes = [outcome_of(w, channel, r) for w, channel, r in results]
            promised = self._reserve(results)
            claimed: Claimed = {}
            try:
                claims = {key: claim for key, (_, claim) in promised.items()}
                # one commit with the ingests and delivery bookkeeping of the writer's turn
                submit = getattr(self.executor, "submit_merged", None)
                if submit is None:
                    claimed = await self.executor.submit(
                        record, self.store, outcomes, time.time(), claims
                    )
                else:
                    claimed = await self._record(submit, outcomes, claims)
            finally:
                orphans = []
                for key, (worker, claim) in promised.items():
                    rows = claimed.get(key, [])
                    if worker.running:
                        worker.take(rows, claim.limit)
                    else:  # stopped meanwhile (a reload replaced it): back to pending now
                        worker.take([], claim.limit)
                        orphans += [d.id for d in rows]
                if orphans:
                    await getattr(self.executor, "submit_merged", self.executor.submit)(
                        self.store.release_claims, orphans, time.time()
                    )
            self.processed += len(results)
            woken: set[str] = set()
            for w, _, r in results:
                if self.metrics is not None:
                    self.metrics.process(w.channel, r.status)
                if r.work_item:
                    log.error(
                        "work item {kind} for message {id} on {channel}: {subject}",
                        kind=r.work_item[0],
                        id=w.id,
                        channel=w.channel,
                        correlation_id=w.correlation_id,
                        subject=r.work_item[1],
                    )
                elif r.error:
                    log.warn(
                        "message {id} on {channel}: {status} at {where}",
                        id=w.id,
                        channel=w.channel,
                        correlation_id=w.correlation_id,
                        status=r.status,
                        where=r.error_location,
                    )
                if (r.outbound or r.events) and w.channel not in woken:
                    woken.add(w.channel)
                    self.delivered(w.channel)
        finally:
            if not released:
                self._release(batch[0].channel)
            self.inflight.difference_update(w.id for w in batch)
