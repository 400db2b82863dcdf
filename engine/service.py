"""The engine's lifecycle: store, channels, sources, the pipeline processor, delivery workers,
recovery on start, and hot reload of channels and mappings.

One message's way: a source hands bytes to :meth:`Engine.ingest`; the channel's codec decodes
and validates them; the store commits them (group commit on the store thread); only then does the
source answer. The :class:`Processor` later runs filters and transforms on a worker thread and
commits the result together with the outbox rows; delivery workers drain the outbox.
"""

from __future__ import annotations

import inspect
import time
from collections import deque
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from twisted.internet import defer, task, threads
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from engine import responder
from engine.channel import Channel, Result
from engine.codecs.hl7v2 import Hl7Codec, batch_ack, is_batch, split_batch
from engine.config.project import Project, fingerprint, load_project
from engine.delivery import DeliveryPolicy, DeliveryWorker
from engine.errors import CodecError, LintFailed, Overloaded, StoreError
from engine.ledger.book import book_events
from engine.model import Inbound
from engine.registry import REGISTRY
from engine.resources import Resources, snapshot_of
from engine.router import Listener
from engine.sources import IngestOutcome, SourceServices
from engine.store import SqliteStore, StoreExecutor

log = Logger()


@dataclass(frozen=True)
class Work:
    """A stored message waiting for the pipeline."""

    id: str
    channel: str
    correlation_id: str
    raw: bytes
    parsed: Any = None  # the ingest's decode, reused when the channel did not change since


class Processor:
    """Runs stored messages through their channel, off the reactor thread.

    Fresh ingests are handed over in memory (no store read); a sweep of the store finds what a
    crash, a replay or an unloaded channel left in ``received``. Each batch is two store jobs at
    most (load, for swept messages only; record, one commit for the whole batch).
    """

    def __init__(self, engine: Engine, pool: ThreadPool, parallel: int) -> None:
        self.engine = engine
        self.pool = pool
        self.parallel = parallel
        self.inflight: set[str] = set()
        self.queue: deque[Work] = deque()
        self._sweep = True  # the first pass is a recovery sweep
        self._running: defer.Deferred | None = None
        self._again = False
        self.stopped = False
        self.processed = 0

    def enqueue(self, work: Work) -> None:
        """A message just committed: process it without reading it back."""
        self.inflight.add(work.id)
        self.queue.append(work)
        self.wake()

    def sweep(self) -> None:
        """Look in the store for messages still ``received`` (recovery, replays)."""
        self._sweep = True
        self.wake()

    def wake(self) -> None:
        if self.stopped:
            return
        if self._running is not None:
            self._again = True
            return
        self._running = defer.ensureDeferred(self._run())
        self._running.addErrback(lambda f: log.failure("pipeline pass failed", f))
        self._running.addBoth(self._finished)

    def _finished(self, _: Any) -> None:
        self._running = None
        if self._again and not self.stopped:
            self._again = False
            self.wake()

    async def _run(self) -> None:
        while not self.stopped:
            self._again = False
            batches: list[list[Work]] = []
            while self.queue and len(batches) < self.parallel:
                n = min(BATCH, len(self.queue))
                batches.append([self.queue.popleft() for _ in range(n)])
            if not batches and self._sweep:
                self._sweep = False
                batches = await self._swept()
            if not batches:
                return
            work = [defer.ensureDeferred(self._batch(b)) for b in batches]
            await defer.gatherResults(work, consumeErrors=True)

    async def _swept(self) -> list[list[Work]]:
        executor, store = self.engine.executor, self.engine.store
        ids: list[str] = []
        for name in list(self.engine.channels):
            ids += await executor.submit(store.received_ids, 256, name)
        ids = [i for i in ids if i not in self.inflight]
        if not ids:
            return []
        self.inflight.update(ids)
        try:
            loaded = await executor.submit(_load_many, store, ids)
        except Exception:
            self.inflight.difference_update(ids)
            raise
        found = []
        for message_id, (row, raw) in zip(ids, loaded, strict=True):
            if row is not None and row.status == "received" and raw is not None:
                found.append(Work(row.id, row.channel, row.correlation_id, raw))
            else:
                self.inflight.discard(message_id)
        if len(ids) == 256 * max(1, len(self.engine.channels)):
            self._sweep = True  # more may wait
        return [found[i : i + BATCH] for i in range(0, len(found), BATCH)]

    async def _batch(self, batch: list[Work]) -> None:
        """Process a batch on a pipeline thread, then record it in one commit."""
        try:
            jobs = []
            for w in batch:
                channel = self.engine.channels.get(w.channel)
                if channel is not None:
                    jobs.append((channel, w))
                # else: the channel is not running now; the message stays received for a sweep
            if not jobs:
                return
            results: list[tuple[Work, Result]] = await threads.deferToThreadPool(
                self.engine.reactor, self.pool, _process_all, jobs
            )
            channels = {c.name: c for c, _ in jobs}
            records = [
                dict(
                    message_id=w.id,
                    status=r.status,
                    transformed=r.transformed,
                    outbound=r.outbound,
                    business_keys=r.keys,
                    error=r.error,
                    error_location=r.error_location,
                    book=_booker(channels[w.channel], w, r.events) if r.events else None,
                    work_item=r.work_item,
                    durable=bool(r.events) and channels[w.channel].procurement is not None,
                )
                for w, r in results
            ]
            await self.engine.executor.submit(_record, self.engine.store, records, time.time())
            self.processed += len(results)
            woken: set[str] = set()
            for w, r in results:
                if r.work_item:
                    log.error(
                        "work item {kind} for message {id} on {channel}: {subject}",
                        kind=r.work_item[0],
                        id=w.id,
                        channel=w.channel,
                        subject=r.work_item[1],
                    )
                elif r.error:
                    log.warn(
                        "message {id} on {channel}: {status} at {where}",
                        id=w.id,
                        channel=w.channel,
                        status=r.status,
                        where=r.error_location,
                    )
                if (r.outbound or r.events) and w.channel not in woken:
                    woken.add(w.channel)
                    self.engine.wake_destinations(w.channel)
        finally:
            self.inflight.difference_update(w.id for w in batch)

    async def stop(self) -> None:
        self.stopped = True
        while self._running is not None:
            await self._running


BATCH = 64


def _record(store: SqliteStore, records: list[dict[str, Any]], now: float) -> None:
    """One commit for the batch; if the store refuses it, record message by message, and put
    a message whose own result cannot be stored in error rather than retrying it forever."""
    try:
        store.finish_many(records, now)
        return
    except Exception:
        pass
    for record in records:
        try:
            store.finish_processing(**record, now=now)
        except Exception as exc:
            store.finish_processing(
                record["message_id"],
                status="error",
                now=now,
                error=f"the store refused this message's result: {exc}",
                error_location="pipeline",
            )


def _booker(channel: Channel, work: Work, events: list[Any]) -> Any:
    """The ledger booking of one message, run by the store inside that message's commit."""

    if channel.procurement is not None:
        from engine.domains.procurement.book import book_x12

        def book_procurement(conn: Any) -> list[Any]:
            return book_x12(
                conn,
                records=events,
                channel=channel.name,
                message_id=work.id,
                correlation_id=work.correlation_id,
                routes=channel.procurement_routes,
                partners=channel.mappings.partners,
                converter=channel.converter,
            )

        return book_procurement

    def book(conn: Any) -> list[Any]:
        return book_events(
            conn,
            message_id=work.id,
            correlation_id=work.correlation_id,
            channel=channel.name,
            events=events,
            routes=channel.ledger_routes,
            policies=channel.par_policies,
            charge_payload=channel.charge_payload,
        )

    return book


def _load_many(store: SqliteStore, ids: list[str]) -> list[tuple[Any, bytes | None]]:
    out = []
    for message_id in ids:
        row = store.get_message(message_id)
        out.append((row, store.get_content(message_id, "raw") if row else None))
    return out


def _process_all(jobs: list[tuple[Channel, Work]]) -> list[tuple[Work, Result]]:
    """Runs on a pipeline thread: the I/O-free part of each message, one after another."""
    out = []
    for channel, w in jobs:
        # A decode made by the same channel object at ingest is reused; after a reload, redo it.
        parsed = w.parsed[1] if w.parsed and w.parsed[0] is channel else None
        out.append((w, channel.process(w.raw, w.id, w.correlation_id, parsed=parsed)))
    return out


class Engine:
    """Wharf running one project. ``await start()``, ``await stop()``."""

    def __init__(self, root: Path | str, reactor: Any, *, project: Project | None = None) -> None:
        self.root = Path(root).resolve()
        self.reactor = reactor
        self.project = project or load_project(self.root)
        self.store = SqliteStore(self.root / self.project.settings.store)
        self.executor = StoreExecutor(self.store, reactor)
        self.resources = Resources.of_project(self.project)
        self.channels: dict[str, Channel] = {}
        self.sources: dict[str, Any] = {}
        self.listeners: dict[str, Listener] = {}
        self.workers: dict[tuple[str, str], DeliveryWorker] = {}
        self.pool = ThreadPool(1, self.project.settings.pipeline_threads, name="wharf-pipeline")
        self.processor = Processor(self, self.pool, self.project.settings.pipeline_threads * 2)
        self._reload_call: Any = None
        self._reloading = False
        self._sweep: task.LoopingCall | None = None
        self._unbilled: task.LoopingCall | None = None
        self._acks: task.LoopingCall | None = None
        self._leases: task.LoopingCall | None = None
        self.sftp: Any = None
        self.rejected_fingerprint: dict[str, Any] | None = None

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        self.store.open()
        self.executor.start()
        self.pool.start()
        counts = await self.executor.submit(self.store.recover, time.time())
        log.info("recovery: {counts}", counts=counts)
        await self.executor.submit(
            self.store.audit,
            "wharf",
            "start",
            str(self.root),
            {"channels": sorted(self.project.channels)},
            time.time(),
        )
        for defn in self.project.channels.values():
            if defn.config.enabled:
                self._start_channel(Channel(defn, self.project.mappings, REGISTRY))
        await self._seed_onhand()
        for config in self.project.settings.listeners:
            self._start_listener(config)
        if self.project.settings.sftp_server is not None:
            from engine.sftp.service import SftpServerService

            self.sftp = SftpServerService(
                self.project.settings.sftp_server,
                root=self.root,
                reactor=self.reactor,
                audit=self._audit,
                uploads=self.resources.uploads,
            )
            await self.sftp.start()
        self.processor.wake()
        self._sweep = task.LoopingCall(self.processor.sweep)  # picks up CLI replays
        self._sweep.clock = self.reactor
        self._sweep.start(2.0, now=False)
        self._leases = task.LoopingCall(lambda: defer.ensureDeferred(self._release_expired()))
        self._leases.clock = self.reactor
        self._leases.start(30.0, now=False)
        self._acks = task.LoopingCall(lambda: defer.ensureDeferred(self._overdue_acks()))
        self._acks.clock = self.reactor
        self._acks.start(60.0, now=False)
        if self.project.settings.unbilled_after:
            self._unbilled = task.LoopingCall(lambda: defer.ensureDeferred(self._find_unbilled()))
            self._unbilled.clock = self.reactor
            self._unbilled.start(60.0, now=False)
        interval = self.project.settings.reload_interval
        if interval:
            self._reload_call = self.reactor.callLater(interval, self._reload_tick)

    def _audit(self, actor: str, action: str, target: str, detail: dict[str, Any]) -> Any:
        """Audit from a component (the SFTP server): written through the store thread."""
        return self.executor.submit(self.store.audit, actor, action, target, detail, time.time())

    async def stop(self) -> None:
        if self.sftp is not None:
            await self.sftp.stop()
            self.sftp = None
        if self._reload_call is not None and self._reload_call.active():
            self._reload_call.cancel()
        self._reload_call = None
        if self._sweep is not None and self._sweep.running:
            self._sweep.stop()
        if self._unbilled is not None and self._unbilled.running:
            self._unbilled.stop()
        if self._acks is not None and self._acks.running:
            self._acks.stop()
        if self._leases is not None and self._leases.running:
            self._leases.stop()
        for name in list(self.listeners):
            await self._stop_listener(name)
        for name in list(self.channels):
            await self._stop_channel(name)
        await self.processor.stop()
        await self.executor.stop()
        self.pool.stop()
        self.store.close()

    async def _seed_onhand(self) -> None:
        """Starting on-hand from each ledger's snapshot table, where the ledger has none yet."""
        rows = []
        for channel in self.channels.values():
            table = channel.ledger.onhand if channel.ledger else None
            if table:
                for row in self.project.mappings.table(table).rows.values():
                    rows.append(
                        (
                            str(row["location_id"]),
                            str(row["item_id"]),
                            Decimal(str(row["on_hand"])),
                            str(row.get("uom") or "EA"),
                        )
                    )
        if rows:
            n = await self.executor.submit(self.store.seed_onhand, rows, time.time())
            log.info("ledger: {n} on-hand figure(s) seeded from the snapshot", n=n)

    async def _release_expired(self) -> int:
        """Deliveries claimed longer than their lease go back to pending (same key)."""
        n = await self.executor.submit(self.store.release_expired, time.time())
        if n:
            log.warn("{n} delivery lease(s) expired; queued again", n=n)
            for channel in list(self.channels):
                self.wake_destinations(channel)
        return n

    async def _overdue_acks(self) -> int:
        """The X12 acknowledgement watch: an 850 without its 997/999 in time is an alert."""
        from engine.domains.procurement.book import flag_overdue_acks

        n = await self.executor.submit(flag_overdue_acks, self.store, time.time())
        if n:
            log.error("x12: {n} interchange(s) without their 997/999 in time (ACK_OVERDUE)", n=n)
        return n

    async def _find_unbilled(self) -> int:
        """The unbilled-usage job: chargeable events without an accepted charge, too old."""
        n = await self.executor.submit(
            self.store.find_unbilled,
            older_than=self.project.settings.unbilled_after,
            now=time.time(),
        )
        if n:
            log.error("unbilled usage: {n} new UNBILLED_USAGE work item(s)", n=n)
        return n

    def _start_channel(self, channel: Channel) -> None:
        self.channels[channel.name] = channel
        for dest in channel.config.destinations:
            self._start_worker(channel.name, dest)
        if channel.config.source is not None:
            self._start_source(channel)

    def _start_source(self, channel: Channel) -> None:
        src = channel.config.source
        factory = REGISTRY.get("source", src.name).factory
        extra: dict[str, Any] = {}
        params = inspect.signature(factory).parameters
        if "services" in params:
            extra["services"] = self._source_services(channel.name)
        if "resources" in params:
            extra["resources"] = self.resources
        source = factory(
            src.options,
            reactor=self.reactor,
            channel=channel.name,
            base_dir=self.root,
            ingest=lambda raw, peer, c=channel.name, **kw: defer.ensureDeferred(
                self.receive(c, raw, peer, **kw)
            ),
            **extra,
        )
        self.sources[channel.name] = source
        source.start()

    def _start_listener(self, config: Any) -> None:
        listener = Listener(config, REGISTRY)
        self.listeners[config.name] = listener
        factory = REGISTRY.get("source", config.source.name).factory
        extra: dict[str, Any] = {}
        if "resources" in inspect.signature(factory).parameters:
            extra["resources"] = self.resources
        source = factory(
            config.source.options,
            reactor=self.reactor,
            channel=f"listener:{config.name}",
            base_dir=self.root,
            ingest=lambda raw, peer, n=config.name: defer.ensureDeferred(
                self.receive(f"listener:{n}", raw, peer)
            ),
            **extra,
        )
        self.sources[f"listener:{config.name}"] = source
        source.start()

    def _source_services(self, name: str) -> SourceServices:
        """The codec, store reads and worker threads a source may use (see SourceServices)."""

        def codec() -> Any:
            channel = self.channels.get(name)
            return channel.codec if channel is not None else None

        def load(message_id: str) -> Any:
            d = self.executor.submit(_load_many, self.store, [message_id])
            return d.addCallback(lambda rows: rows[0])

        def run(fn: Any, *args: Any) -> Any:
            return threads.deferToThreadPool(self.reactor, self.pool, fn, *args)

        return SourceServices(codec=codec, load=load, run=run)

    def _answers(self, source_key: str) -> bool:
        """Whether this source replies to its sender (an MLLP listener does; a folder doesn't)."""
        return bool(getattr(self.sources.get(source_key), "answers", False))

    async def _stop_listener(self, name: str) -> None:
        await self._stop_source(f"listener:{name}")
        self.listeners.pop(name, None)

    def _start_worker(self, channel: str, dest: Any) -> None:
        comp = dest.component
        destination = REGISTRY.get("destination", comp.name).factory(
            comp.options, reactor=self.reactor, channel=channel, name=dest.name, base_dir=self.root
        )
        policy = DeliveryPolicy.from_retry(
            dest.retry,
            concurrency=dest.concurrency,
            idempotent=dest.idempotent,
            ordered=dest.ordered,
            on_poison=dest.on_poison,
            lease=dest.lease,
        )
        worker = DeliveryWorker(
            channel=channel,
            name=dest.name,
            destination=destination,
            policy=policy,
            store=self.store,
            executor=self.executor,
            clock=self.reactor,
        )
        worker.config = dest  # type: ignore[attr-defined]
        self.workers[(channel, dest.name)] = worker
        worker.start()

    async def _stop_worker(self, key: tuple[str, str]) -> None:
        worker = self.workers.pop(key)
        await worker.stop()
        closing = worker.destination.close()
        if closing is not None:
            await closing

    async def _stop_source(self, name: str) -> None:
        source = self.sources.pop(name, None)
        if source is not None:
            await defer.ensureDeferred(source.stop())

    async def _stop_channel(self, name: str) -> None:
        await self._stop_source(name)
        for key in [k for k in self.workers if k[0] == name]:
            await self._stop_worker(key)
        self.channels.pop(name, None)

    def wake_destinations(self, channel: str) -> None:
        for (ch, _), worker in self.workers.items():
            if ch == channel:
                worker.wake()

    # -- ingest ---------------------------------------------------------------------------
    async def _decode(self, decode: Any, raw: bytes) -> Any:
        """Parse on the reactor when small (µs), on the pipeline pool when large."""
        if len(raw) > 65536:
            return await threads.deferToThreadPool(self.reactor, self.pool, decode, raw)
        return decode(raw)

    async def receive(
        self,
        source_key: str,
        raw: bytes,
        peer: str,
        *,
        parsed: Any = None,
        min_dedup_window: float = 0.0,
    ) -> IngestOutcome:
        """What a source calls: one message, or an HL7 batch split into its messages.

        ``parsed``, ``min_dedup_window``: see :data:`engine.sources.Ingest` (not used for
        listeners, which decode and route with their own codec)."""
        answers = self._answers(source_key)
        if source_key.startswith("listener:"):
            name = source_key.removeprefix("listener:")
            listener = self.listeners.get(name)
            codec = listener.codec if listener else None

            def one(data: bytes) -> Any:
                return self.route(name, data, peer, answers=answers)
        else:
            channel = self.channels.get(source_key)
            codec = channel.codec if channel else None

            def one(data: bytes) -> Any:
                given = parsed if data is raw else None
                return self.ingest(
                    source_key,
                    data,
                    peer,
                    parsed=given,
                    answers=answers,
                    min_dedup_window=min_dedup_window,
                )

        if isinstance(codec, Hl7Codec) and is_batch(raw):
            return await self._receive_batch(raw, one, answers)
        return await one(raw)

    async def _receive_batch(self, raw: bytes, one: Any, answers: bool) -> IngestOutcome:
        """Each message of a batch is stored on its own (one group commit); one batch reply.

        A batch with a refused message is refused whole (the sender resends; what was stored
        is then a duplicate); one with a rejected message is rejected naming which, after the
        good ones were stored, so a corrected resend adds only what was missing.
        """
        try:
            envelope, messages = split_batch(raw)
        except CodecError as exc:
            return _rejected(exc, raw, answers)
        outcomes = await defer.gatherResults(
            [defer.ensureDeferred(one(m)) for m in messages], consumeErrors=True
        )
        reply = None
        if answers:
            reply = batch_ack(envelope, [o.response for o in outcomes if o.response])
        problems = [
            f"message {i} of {len(outcomes)}: {o.reason}"
            for i, o in enumerate(outcomes, 1)
            if not o.accepted
        ]
        if any(o.kind == "refused" for o in outcomes):
            return IngestOutcome("refused", reason="; ".join(problems), response=reply)
        if problems:
            return IngestOutcome("rejected", reason="; ".join(problems), response=reply)
        return IngestOutcome("stored", reason=f"batch of {len(outcomes)}", response=reply)

    async def route(
        self, listener_name: str, raw: bytes, peer: str, *, answers: bool = False
    ) -> IngestOutcome:
        """Decode once with the listener's codec, pick the channel by its routes, store."""
        listener = self.listeners.get(listener_name)
        if listener is None:
            return IngestOutcome("refused", reason=f"listener '{listener_name}' is not running")
        try:
            parsed = await self._decode(listener.decode, raw)
        except CodecError as exc:
            return _rejected(exc, raw, answers)
        channel = listener.pick(parsed)
        if channel is None:
            exc = CodecError(
                f"no route of listener '{listener_name}' takes this message "
                f"(type {parsed.message_type or 'unknown'})",
                location="MSH^1^9",
                code="unsupported_message_type",
            )
            return _rejected(exc, raw, answers)
        return await self.ingest(
            channel, raw, peer, parsed=parsed, source=f"listener:{listener_name}", answers=answers
        )

    async def ingest(
        self,
        channel_name: str,
        raw: bytes,
        peer: str,
        *,
        parsed: Any = None,
        source: str | None = None,
        answers: bool = False,
        min_dedup_window: float = 0.0,
    ) -> IngestOutcome:
        """Decode, validate and durably store one inbound message; the source answers after.

        ``min_dedup_window``: duplicate detection for this message looks back at least this
        long, even on a channel whose ``dedup.window`` is shorter or 0 (a FHIR conditional
        create or Idempotency-Key asks for it).

        ``answers``: the source replies to the sender (MLLP), so the outcome carries the reply
        bytes: built before the commit and stored with the message (replayed byte for byte to
        a resend), or, for ``respond_from`` after_transform / destinations_completed, built when
        the pipeline got that far.
        """
        channel = self.channels.get(channel_name)
        if channel is None:
            reply = responder.refused(raw, parsed, "channel not running") if answers else None
            return IngestOutcome(
                "refused", reason=f"channel '{channel_name}' is not running", response=reply
            )
        try:
            if parsed is None:
                parsed = await self._decode(channel.decode, raw)
            if getattr(channel.codec, "strict_on_ack", False):
                await threads.deferToThreadPool(
                    self.reactor, self.pool, channel.codec.validate_strict, raw
                )
        except CodecError as exc:
            return _rejected(exc, raw, answers)
        respond_from = channel.config.respond_from
        wait = answers and responder.waits_for_pipeline(parsed, respond_from)
        response = responder.commit_reply(parsed) if answers and not wait else None
        src = channel.config.source
        inbound = Inbound(
            channel=channel_name,
            source=source or (src.name if src is not None else "api"),
            raw=raw,
            content_type=parsed.content_type,
            received_at=time.time(),
            peer=peer,
            control_id=parsed.control_id,
            dedup_key=parsed.dedup_key,
            dedup_window=max(channel.dedup_window, min_dedup_window),
            response=response,
        )
        try:
            result = await self.executor.ingest(inbound)
        except (Overloaded, StoreError) as exc:
            reason = "over capacity" if isinstance(exc, Overloaded) else "store unavailable"
            if not isinstance(exc, Overloaded):
                log.error(
                    "store refused an ingest on {channel}: {error}",
                    channel=channel_name,
                    error=str(exc),
                )
            reply = responder.refused(raw, parsed, reason) if answers else None
            return IngestOutcome("refused", reason=reason, response=reply)
        if result.outcome == "stored":
            work = Work(
                result.message_id, channel_name, result.correlation_id, raw, (channel, parsed)
            )
            self.processor.enqueue(work)
        if not answers:
            when = inbound.received_at if result.outcome == "stored" else None
            return IngestOutcome(
                result.outcome, result.message_id, result.response, received_at=when
            )
        if result.outcome == "conflict":
            reply = responder.conflict(parsed)
            await self.executor.submit(self.store.set_response, result.message_id, reply)
            return IngestOutcome("conflict", result.message_id, reply)
        if result.response is not None:  # a resend: the original's answer, byte for byte
            return IngestOutcome(result.outcome, result.message_id, result.response)
        if not wait and result.outcome == "stored":
            return IngestOutcome("stored", result.message_id, response)
        reply = await self._await_answer(
            result.message_id, raw, parsed, respond_from, channel.config.respond_timeout
        )
        return IngestOutcome(result.outcome, result.message_id, reply)

    async def _await_answer(
        self, message_id: str, raw: bytes, parsed: Any, respond_from: str, timeout: float
    ) -> bytes:
        """Poll until the pipeline reached ``respond_from``; store and return the final ACK."""
        deadline = self.reactor.seconds() + timeout
        delay = 0.002
        done = ("filtered", "sent", "error", "conflict")
        while True:
            row, stored = await self.executor.submit(_row_and_response, self.store, message_id)
            if stored is not None:
                return stored
            if row is not None and (
                row.status in done or (respond_from == "after_transform" and row.status == "queued")
            ):
                reply = responder.final(parsed, row.status, row.error, row.error_location)
                return await self.executor.submit(_set_response_once, self.store, message_id, reply)
            if self.reactor.seconds() >= deadline:
                return responder.pending(raw, parsed, timeout)
            await task.deferLater(self.reactor, delay, lambda: None)
            delay = min(delay * 2, 0.1)

    # -- hot reload ----------------------------------------------------------------------
    def _reload_tick(self) -> None:
        d = defer.ensureDeferred(self.reload_if_changed())
        d.addErrback(lambda f: log.failure("reload check failed", f))

        def again(_: Any) -> None:
            if self._reload_call is not None:
                self._reload_call = self.reactor.callLater(
                    self.project.settings.reload_interval, self._reload_tick
                )

        d.addBoth(again)

    async def reload_if_changed(self) -> bool:
        """Lint and swap in changed channels and mappings; a change that fails lint is refused."""
        if self._reloading:
            return False
        self._reloading = True
        try:
            pool = self.reactor.getThreadPool()
            current = await threads.deferToThreadPool(self.reactor, pool, fingerprint, self.root)
            if current == self.project.fingerprint or current == self.rejected_fingerprint:
                return False
            try:
                project = await threads.deferToThreadPool(
                    self.reactor, pool, load_project, self.root
                )
            except LintFailed as exc:
                self.rejected_fingerprint = current
                log.error(
                    "reload refused; the running configuration stays:\n{errors}", errors=str(exc)
                )
                return False
            await self.apply(project)
            return True
        finally:
            self._reloading = False

    async def apply(self, project: Project) -> None:
        old = self.project
        self.project = project
        self.resources.refresh(snapshot_of(project))
        self.rejected_fingerprint = None
        wanted = {n: d for n, d in project.channels.items() if d.config.enabled}
        new_listeners = {c.name: c for c in project.settings.listeners}
        for name, listener in list(self.listeners.items()):
            if name not in new_listeners or _strip(listener.config) != _strip(new_listeners[name]):
                await self._stop_listener(name)
        for name in list(self.channels):
            if name not in wanted:
                await self._stop_channel(name)
        for name, defn in wanted.items():
            new = Channel(defn, project.mappings, REGISTRY)
            prev = self.channels.get(name)
            if prev is None:
                self._start_channel(new)
                continue
            self.channels[name] = new  # messages processed from now on use the new version
            if _strip(prev.config.source) != _strip(new.config.source):
                await self._stop_source(name)
                if new.config.source is not None:
                    self._start_source(new)
            old_dests = {d.name: d for d in prev.config.destinations}
            new_dests = {d.name: d for d in new.config.destinations}
            for dname, dcfg in old_dests.items():
                if dname not in new_dests or _strip(dcfg) != _strip(new_dests[dname]):
                    await self._stop_worker((name, dname))
            for dname, dcfg in new_dests.items():
                if (name, dname) not in self.workers:
                    self._start_worker(name, dcfg)
        for lname, lconfig in new_listeners.items():
            if lname not in self.listeners:
                self._start_listener(lconfig)
        await self.executor.submit(
            self.store.audit,
            "wharf",
            "reload",
            str(self.root),
            {"channels": sorted(wanted), "changed": _changed(old.fingerprint, project.fingerprint)},
            time.time(),
        )
        log.info("reloaded: {n} channel(s) running", n=len(self.channels))
        self.processor.wake()


def _rejected(exc: CodecError, raw: bytes = b"", answers: bool = False) -> IngestOutcome:
    where = f" at {exc.location}" if exc.location else ""
    reply = responder.rejected(raw, exc) if answers else None
    return IngestOutcome("rejected", reason=f"{exc.code}{where}: {exc.message}", response=reply)


def _row_and_response(store: SqliteStore, message_id: str) -> tuple[Any, bytes | None]:
    return store.get_message(message_id), store.get_content(message_id, "response")


def _set_response_once(store: SqliteStore, message_id: str, reply: bytes) -> bytes:
    """Runs on the store thread: the first answer stored wins, so every resend gets it."""
    existing = store.get_content(message_id, "response")
    if existing is not None:
        return existing
    store.set_response(message_id, reply)
    return reply


def _changed(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def _strip(config: Any) -> Any:
    """A config without its source positions, so moving lines is not a change."""
    import dataclasses

    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return tuple(
            (f.name, _strip(getattr(config, f.name)))
            for f in dataclasses.fields(config)
            if f.name not in ("where", "positions")
        )
    if isinstance(config, tuple | list):
        return tuple(_strip(c) for c in config)
    if isinstance(config, dict):
        return tuple(sorted((k, _strip(v)) for k, v in config.items()))
    return config
