"""The front door: what a source calls with the bytes it framed.

One message's way in: the channel's (or the listener's) codec decodes and validates it, the
store commits it (group commit on the store thread), and only then does the source answer;
the message then goes to the :class:`~engine.runtime.processor.Processor` in memory. An HL7
batch is split and each message stored on its own. For ``respond_from`` after_transform /
destinations_completed the answer waits for the pipeline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, task, threads
from twisted.logger import Logger

from engine import responder
from engine.codecs.hl7v2 import Hl7Codec, batch_ack, is_batch, split_batch
from engine.errors import CodecError, Overloaded, StoreError
from engine.model import Inbound
from engine.runtime.processor import Processor, Work, _load_many
from engine.sources import IngestOutcome, SourceServices

log = Logger(namespace="wharf.ingest")


class FrontDoor:
    """Decode, store, answer (see the module docstring)."""

    def __init__(
        self,
        *,
        reactor: Any,
        store: Any,
        executor: Any,
        pool: Any,
        processor: Processor,
        channels: Callable[[], Mapping[str, Any]],
        listeners: Callable[[], Mapping[str, Any]],
        sources: Callable[[], Mapping[str, Any]],
        metrics: Any = None,
    ) -> None:
        self.reactor = reactor
        self.metrics = metrics  # engine.runtime.metrics.Metrics (ingest outcomes, ACK latency)
        self.store = store
        self.executor = executor
        self.pool = pool
        self.processor = processor
        self.channels = channels
        self.listeners = listeners
        self.sources = sources

    # -- what sources are lent ---------------------------------------------------------------
    def source_services(self, name: str) -> SourceServices:
        """The codec, store reads and worker threads a source may use (see SourceServices)."""

        def codec() -> Any:
            channel = self.channels().get(name)
            return channel.codec if channel is not None else None

        def load(message_id: str) -> Any:
            d = self.executor.submit(_load_many, self.store, [message_id])
            return d.addCallback(lambda rows: rows[0])

        def run(fn: Any, *args: Any) -> Any:
            return threads.deferToThreadPool(self.reactor, self.pool, fn, *args)

        return SourceServices(codec=codec, load=load, run=run)

    def ingest_for(self, source_key: str) -> Callable[..., defer.Deferred]:
        """The ``ingest`` callable handed to the source registered under ``source_key``: the
        fast path when it applies (:meth:`_fast`), else the coroutine (:meth:`receive`)."""

        def ingest(raw: bytes, peer: str, **kw: Any) -> defer.Deferred:
            d = self._fast(source_key, raw, peer, kw)
            return (
                d
                if d is not None
                else defer.ensureDeferred(self.receive(source_key, raw, peer, **kw))
            )

        return ingest

    def _fast(
        self, source_key: str, raw: bytes, peer: str, kw: dict[str, Any]
    ) -> defer.Deferred | None:
        """One small message that decodes, routes and fits its channel's limits, stored with
        plain callbacks: no coroutine, no Deferred chain but the store's. The same steps as
        :meth:`receive` (:meth:`_prepare`, :meth:`_stored`, :meth:`_refused`); None for
        everything else (an HL7 batch, a large message, strict validation, a refusal or
        rejection before the store), which :meth:`receive` then takes from the start. ``kw``:
        the keywords of :meth:`receive`."""
        if len(raw) > 65536:
            return None
        source = None
        parsed = kw.get("parsed")
        try:
            if source_key.startswith("listener:"):
                name = source_key.removeprefix("listener:")
                listener = self.listeners().get(name)
                if listener is None or (isinstance(listener.codec, Hl7Codec) and is_batch(raw)):
                    return None
                parsed = listener.decode(raw)
                channel_name = listener.pick(parsed)
                if channel_name is None:
                    return None
                source = source_key
                channel = self.channels().get(channel_name)
            else:
                channel = self.channels().get(source_key)
                if channel is None or (isinstance(channel.codec, Hl7Codec) and is_batch(raw)):
                    return None
                if parsed is None:
                    parsed = channel.decode(raw)
        except CodecError:
            return None
        if channel is None or getattr(channel.codec, "strict_on_ack", False):
            return None
        started = time.monotonic()
        answers = self._answers(source_key)
        step = self._prepare(
            channel,
            raw,
            peer,
            parsed,
            source,
            answers,
            kw.get("min_dedup_window", 0.0),
            kw.get("origin"),
            kw.get("arrival"),
        )
        if isinstance(step, IngestOutcome):
            return None
        d = self.executor.ingest(step.inbound)
        d.addCallbacks(
            self._fast_stored,
            self._fast_refused,
            callbackArgs=(step, started),
            errbackArgs=(step, started),
        )
        return d

    def _fast_stored(self, result: Any, step: _Step, started: float) -> Any:
        outcome = self._stored(result, step)
        if outcome is None:
            later = defer.ensureDeferred(self._answer_later(result, step))
            return later.addCallback(self._counted, step.channel.name, started)
        return self._counted(outcome, step.channel.name, started)

    def _fast_refused(self, failure: Any, step: _Step, started: float) -> IngestOutcome:
        failure.trap(Overloaded, StoreError)
        return self._counted(self._refused(failure.value, step), step.channel.name, started)

    def _counted(self, outcome: IngestOutcome, channel_name: str, started: float) -> IngestOutcome:
        """The outcome, counted with the time until its answer."""
        if self.metrics is not None:
            self.metrics.ingest(channel_name, outcome.kind, time.monotonic() - started)
        return outcome

    def _answers(self, source_key: str) -> bool:
        """Whether this source replies to its sender (an MLLP listener does; a folder doesn't)."""
        return bool(getattr(self.sources().get(source_key), "answers", False))

    async def _decode(self, decode: Any, raw: bytes) -> Any:
        """Parse on the reactor when small (µs), on the pipeline pool when large."""
        if len(raw) > 65536:
            return await threads.deferToThreadPool(self.reactor, self.pool, decode, raw)
        return decode(raw)

    # -- the door ------------------------------------------------------------------------------
    async def receive(
        self,
        source_key: str,
        raw: bytes,
        peer: str,
        *,
        parsed: Any = None,
        min_dedup_window: float = 0.0,
        origin: str | None = None,
        arrival: str | None = None,
    ) -> IngestOutcome:
        """What a source calls: one message, or an HL7 batch split into its messages.

        ``parsed``, ``min_dedup_window``, ``origin``, ``arrival``: see
        :data:`engine.sources.Ingest` (``parsed`` and ``min_dedup_window`` are not used for
        listeners, which decode and route with their own codec)."""
        answers = self._answers(source_key)
        if source_key.startswith("listener:"):
            name = source_key.removeprefix("listener:")
            listener = self.listeners().get(name)
            codec = listener.codec if listener else None

            def one(data: bytes) -> Any:
                return self.route(name, data, peer, answers=answers, origin=origin, arrival=arrival)
        else:
            channel = self.channels().get(source_key)
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
                    origin=origin,
                    arrival=arrival,
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
            return rejected(exc, raw, answers)
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
        self,
        listener_name: str,
        raw: bytes,
        peer: str,
        *,
        answers: bool = False,
        origin: str | None = None,
        arrival: str | None = None,
    ) -> IngestOutcome:
        """Decode once with the listener's codec, pick the channel by its routes, store."""
        listener = self.listeners().get(listener_name)
        if listener is None:
            return IngestOutcome("refused", reason=f"listener '{listener_name}' is not running")
        try:
            parsed = await self._decode(listener.decode, raw)
        except CodecError as exc:
            return rejected(exc, raw, answers)
        channel = listener.pick(parsed)
        if channel is None:
            exc = CodecError(
                f"no route of listener '{listener_name}' takes this message "
                f"(type {parsed.message_type or 'unknown'})",
                location="MSH^1^9",
                code="unsupported_message_type",
            )
            return rejected(exc, raw, answers)
        return await self.ingest(
            channel,
            raw,
            peer,
            parsed=parsed,
            source=f"listener:{listener_name}",
            answers=answers,
            origin=origin,
            arrival=arrival,
        )

    async def ingest(self, channel_name: str, raw: bytes, peer: str, **kw: Any) -> IngestOutcome:
        """One message into a channel (see :meth:`_ingest`), counted with the time until its
        answer."""
        started = time.monotonic()
        return self._counted(
            await self._ingest(channel_name, raw, peer, **kw), channel_name, started
        )

    async def _ingest(
        self,
        channel_name: str,
        raw: bytes,
        peer: str,
        *,
        parsed: Any = None,
        source: str | None = None,
        answers: bool = False,
        min_dedup_window: float = 0.0,
        origin: str | None = None,
        arrival: str | None = None,
    ) -> IngestOutcome:
        """Decode, validate and durably store one inbound message; the source answers after.

        ``min_dedup_window``: duplicate detection for this message looks back at least this
        long, even on a channel whose ``dedup.window`` is shorter or 0 (a FHIR conditional
        create or Idempotency-Key asks for it).

        ``origin``: the credential the bytes came with (stored with the message, handed to the
        transforms). ``arrival``: this delivery of the bytes at the source; a codec whose
        duplicates are per arrival (``dedup_per_arrival``: X12, where a resend must be
        answered again) gets its dedup key scoped to it, so only the same arrival taken twice
        (a crash before the source let go) is a duplicate.

        ``answers``: the source replies to the sender (MLLP), so the outcome carries the reply
        bytes: built before the commit and stored with the message (replayed byte for byte to
        a resend), or, for ``respond_from`` after_transform / destinations_completed, built when
        the pipeline got that far.
        """
        channel = self.channels().get(channel_name)
        if channel is None:
            return not_running(channel_name, raw, parsed, answers)
        try:
            if parsed is None:
                parsed = await self._decode(channel.decode, raw)
            if getattr(channel.codec, "strict_on_ack", False):
                await threads.deferToThreadPool(
                    self.reactor, self.pool, channel.codec.validate_strict, raw
                )
        except CodecError as exc:
            return rejected(exc, raw, answers)
        step = self._prepare(
            channel, raw, peer, parsed, source, answers, min_dedup_window, origin, arrival
        )
        if isinstance(step, IngestOutcome):
            return step
        try:
            result = await self.executor.ingest(step.inbound)
        except (Overloaded, StoreError) as exc:
            return self._refused(exc, step)
        return self._stored(result, step) or await self._answer_later(result, step)

    # -- the steps of an ingest, shared by the coroutine and the fast path --------------------
    def _prepare(
        self,
        channel: Any,
        raw: bytes,
        peer: str,
        parsed: Any,
        source: str | None,
        answers: bool,
        min_dedup_window: float,
        origin: str | None,
        arrival: str | None,
    ) -> _Step | IngestOutcome:
        """The decoded message checked against the channel's limits and made an
        :class:`Inbound` (with its answer when it is known before the commit); or the
        rejection."""
        over = over_limits(channel, raw, parsed)
        if over is not None:
            return rejected(over, raw, answers)
        respond_from = channel.config.respond_from
        wait = answers and responder.waits_for_pipeline(parsed, respond_from)
        response = responder.commit_reply(parsed) if answers and not wait else None
        src = channel.config.source
        dedup_key = parsed.dedup_key
        if dedup_key and getattr(channel.codec, "dedup_per_arrival", False):
            dedup_key = f"{dedup_key}@{arrival}" if arrival else None
        inbound = Inbound(
            channel=channel.name,
            source=source or (src.name if src is not None else "api"),
            raw=raw,
            content_type=parsed.content_type,
            received_at=time.time(),
            peer=peer,
            control_id=parsed.control_id,
            dedup_key=dedup_key,
            dedup_window=max(channel.dedup_window, min_dedup_window),
            response=response,
            origin=origin,
        )
        return _Step(channel, parsed, inbound, answers, wait, response)

    def _refused(self, exc: Exception, step: _Step) -> IngestOutcome:
        """The store could not take the message (over capacity, unavailable)."""
        reason = "over capacity" if isinstance(exc, Overloaded) else "store unavailable"
        if not isinstance(exc, Overloaded):
            log.error(
                "store refused an ingest on {channel}: {error}",
                channel=step.channel.name,
                error=str(exc),
            )
        raw = step.inbound.raw
        reply = responder.refused(raw, step.parsed, reason) if step.answers else None
        return IngestOutcome("refused", reason=reason, response=reply)

    def _stored(self, result: Any, step: _Step) -> IngestOutcome | None:
        """After the commit: a new message goes to the pipeline (in memory); the outcome when
        it is known now, None when the answer needs more (:meth:`_answer_later`)."""
        inbound = step.inbound
        if result.outcome == "stored":
            work = Work(
                result.message_id,
                inbound.channel,
                result.correlation_id,
                inbound.raw,
                (step.channel, step.parsed),
                origin=inbound.origin,
            )
            self.processor.enqueue(work)
        if not step.answers:
            when = inbound.received_at if result.outcome == "stored" else None
            return IngestOutcome(
                result.outcome, result.message_id, result.response, received_at=when
            )
        if result.outcome == "conflict":
            return None
        if result.response is not None:  # a resend: the original's answer, byte for byte
            return IngestOutcome(result.outcome, result.message_id, result.response)
        if not step.wait and result.outcome == "stored":
            return IngestOutcome("stored", result.message_id, step.response)
        return None

    async def _answer_later(self, result: Any, step: _Step) -> IngestOutcome:
        """A conflict's answer (stored with it), or the answer the pipeline makes."""
        parsed, raw = step.parsed, step.inbound.raw
        if result.outcome == "conflict":
            reply = responder.conflict(parsed)
            await self.executor.submit(self.store.set_response, result.message_id, reply)
            return IngestOutcome("conflict", result.message_id, reply)
        config = step.channel.config
        reply = await self._await_answer(
            result.message_id, raw, parsed, config.respond_from, config.respond_timeout
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


@dataclass(frozen=True, slots=True)
class _Step:
    """One message between its decode and its commit."""

    channel: Any
    parsed: Any
    inbound: Inbound
    answers: bool
    wait: bool  # the answer waits for the pipeline (respond_from)
    response: bytes | None  # the answer known before the commit


def not_running(name: str, raw: bytes, parsed: Any, answers: bool) -> IngestOutcome:
    reply = responder.refused(raw, parsed, "channel not running") if answers else None
    return IngestOutcome("refused", reason=f"channel '{name}' is not running", response=reply)


def over_limits(channel: Any, raw: bytes, parsed: Any) -> CodecError | None:
    """The refusal for a message over its channel's ``limits`` (None when within them)."""
    limits = channel.config.limits
    if limits is None:
        return None
    where = f"limits in {channel.defn.file}"
    if limits.max_size is not None and len(raw) > limits.max_size:
        return CodecError(
            f"message is {len(raw)} bytes; channel {channel.name} takes at most "
            f"{limits.max_size} (max_size, {where}): split it",
            code="too_large",
        )
    count = getattr(channel.codec, "count_lines", None)
    if limits.max_lines is not None and count is not None:
        lines = count(parsed)
        if lines > limits.max_lines:
            return CodecError(
                f"message has {lines} lines; channel {channel.name} takes at most "
                f"{limits.max_lines} (max_lines, {where}): split it",
                code="too_large",
            )
    return None


def rejected(exc: CodecError, raw: bytes = b"", answers: bool = False) -> IngestOutcome:
    where = f" at {exc.location}" if exc.location else ""
    reply = responder.rejected(raw, exc) if answers else None
    return IngestOutcome("rejected", reason=f"{exc.code}{where}: {exc.message}", response=reply)


def _row_and_response(store: Any, message_id: str) -> tuple[Any, bytes | None]:
    return store.get_message(message_id), store.get_content(message_id, "response")


def _set_response_once(store: Any, message_id: str, reply: bytes) -> bytes:
    """Runs on the store thread: the first answer stored wins, so every resend gets it."""
    existing = store.get_content(message_id, "response")
    if existing is not None:
        return existing
    store.set_response(message_id, reply)
    return reply
