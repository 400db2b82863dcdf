"""One writer thread for the store, with group commit for ingests.

The reactor thread never touches SQLite: it enqueues work (non-blocking) and gets a Deferred.
The writer thread takes every ingest waiting (up to ``max_batch``) and stores them with one
``ingest_batch`` call, i.e. one transaction and one fsync for many messages, then fires the
Deferreds through ``reactor.callFromThread``. Other store calls go through :meth:`submit`.

Writer turns: with a store that has ``turn()`` (:class:`~engine.store.SqliteStore`), the ingest
batch and every *merged* job waiting (:meth:`submit_merged`: pipeline results, delivery
bookkeeping, grouped completions) run in ONE transaction, each in its own savepoint (a failing
one undoes only its own writes), with one commit: one fsync for everything the turn holds
rather than one commit per kind of work. Deferreds fire only after that commit. A turn commits
with ``synchronous=FULL`` when it holds an ingest or a job submitted ``durable``.

Wake-ups: the writer thread is woken only when it waits (a busy writer looks at the queues
before it waits again). With ``coalesce_wakeups`` (the engine, on the real reactor), while
ingests come in batches (the last one held more than one), an ingest made on the reactor thread
wakes it at the end of the reactor's turn, once: every frame read in one poll of the sockets
then joins one batch (one commit), and the reactor does not hand the GIL to a writer that would
commit one message while the others are still being read. A lone sender (batches of one) wakes
it at once: for it the wait would only add a reactor turn.

After the Deferreds of a turn fired (one reactor callback), what asked with :meth:`after_fire`
runs once: the processor starts one pipeline batch for the messages of the whole commit.

Fairness: ingests and jobs carry one arrival sequence. The thread serves whichever queue has
the older head; an ingest batch also takes the ingests that arrived after that head (up to
``max_batch``), so a job waits behind at most one batch.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure
from twisted.python.threadable import isInIOThread

from engine.errors import Overloaded, StoreError
from engine.model import Inbound, IngestResult


class _Reactor(Protocol):
    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None: ...


class _BatchStore(Protocol):
    def ingest_batch(self, items: list[Inbound], now: float) -> list[IngestResult]: ...


_Ingest = tuple[int, Inbound, Deferred]


@dataclass
class _Job:
    seq: int
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    d: Deferred
    merged: bool = False  # may share a writer turn
    durable: bool = False  # (merged) the turn commits with synchronous=FULL
    group: bool = False  # fn returns [(Deferred, result or Failure)] to fire itself


#: Most merged jobs one writer turn takes (a turn's transaction stays short).
MAX_TURN_JOBS = 64


class StoreExecutor:
    """Run every store write on one dedicated daemon thread."""

    def __init__(
        self,
        store: _BatchStore,
        reactor: _Reactor,
        *,
        max_pending: int = 10000,
        max_batch: int = 256,
        clock: Callable[[], float] = time.time,
        coalesce_wakeups: bool = False,
    ) -> None:
        if max_pending < 1 or max_batch < 1:
            raise ValueError(
                f"max_pending and max_batch must be >= 1 (got {max_pending}, {max_batch})"
            )
        self.store = store
        self.reactor = reactor
        self.max_pending = max_pending
        self.max_batch = max_batch
        self.batches = 0  #: ingest_batch calls made (one transaction each)
        self.ingested = 0  #: inbound messages handed to ingest_batch
        self._clock = clock
        self._seq = itertools.count()
        self._ingests: deque[_Ingest] = deque()
        self._jobs: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._stopped: list[Deferred] = []
        self._groups: dict[Any, tuple[list[Any], list[Deferred]]] = {}
        self._held_groups: list[tuple[Any, tuple[list[Any], list[Deferred]]]] = []
        self._idle = False  # the writer thread waits on _cond (read and set under the lock)
        self._coalesce = coalesce_wakeups and hasattr(reactor, "callLater")
        self._wake_due = False  # a wake-up is scheduled for the end of the reactor's turn
        self._last_batch = 0  # ingests in the writer's last batch
        self._firing = False  # (reactor thread) a turn's Deferreds are being fired
        self._after_fire: list[Callable[[], Any]] = []

    # ------------------------------------------------------------------ reactor side

    @property
    def pending(self) -> int:
        """Ingests waiting for the writer thread (not yet in a batch)."""
        return len(self._ingests)

    def start(self) -> None:
        """Start the writer thread. Work queued before start() is kept and runs now."""
        with self._cond:
            if self._stopping:
                raise StoreError("StoreExecutor was stopped; make a new one")
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._run, name="wharf-store-writer", daemon=True
            )
            self._thread.start()

    def stop(self) -> Deferred:
        """Refuse new work, drain the queue, and fire when the writer thread has exited."""
        with self._cond:
            self._stopping = True
            held, self._held_groups = self._held_groups, []
            for fn_many, group in held:  # queued before stop: done before the thread exits
                self._queue_group(fn_many, group)
            if self._thread is None or not self._thread.is_alive():
                self._fail_leftovers()
                return succeed(None)
            d: Deferred = Deferred()
            self._stopped.append(d)
            self._cond.notify()
        return d

    def ingest(self, inbound: Inbound) -> Deferred:
        """Store one inbound message; fires with its :class:`IngestResult`.

        Fails at once with :class:`Overloaded` when ``max_pending`` ingests are waiting, and
        with :class:`StoreError` after :meth:`stop`.
        """
        with self._cond:
            if self._stopping:
                return fail(StoreError("store executor is stopped; ingest refused"))
            if len(self._ingests) >= self.max_pending:
                return fail(
                    Overloaded(
                        f"{len(self._ingests)} ingests are waiting (max_pending "
                        f"{self.max_pending}); refusing message for channel {inbound.channel!r}"
                    )
                )
            d: Deferred = Deferred()
            self._ingests.append((next(self._seq), inbound, d))
            if self._idle:
                if self._coalesce and self._last_batch > 1 and isInIOThread():
                    if not self._wake_due:
                        self._wake_due = True
                        self.reactor.callLater(0, self._wake)  # type: ignore[attr-defined]
                else:
                    self._cond.notify()
        return d

    def _wake(self) -> None:
        """The end of the reactor's turn: wake the writer for the ingests it queued."""
        with self._cond:
            self._wake_due = False
            self._cond.notify()

    def after_fire(self, fn: Callable[[], Any]) -> None:
        """(Reactor thread) Call ``fn()`` once the Deferreds now being fired all fired (at once
        when none are): what their callbacks queued is then taken together."""
        if not self._firing:
            fn()
        elif fn not in self._after_fire:
            self._after_fire.append(fn)

    def _fire(self, fired: list[tuple[Deferred, Any]]) -> None:
        self._firing = True
        try:
            _fire_all(fired)
        finally:
            self._firing = False
            after, self._after_fire = self._after_fire, []
            for fn in after:
                fn()

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred:
        """Run ``fn(*args, **kwargs)`` on the writer thread; fires with its result or failure."""
        with self._cond:
            if self._stopping:
                name = getattr(fn, "__name__", repr(fn))
                return fail(StoreError(f"store executor is stopped; {name}() refused"))
            d: Deferred = Deferred()
            self._jobs.append(_Job(next(self._seq), fn, args, kwargs, d))
            self._cond.notify()
        return d

    def submit_merged(
        self, fn: Callable[..., Any], *args: Any, durable: bool = False, **kwargs: Any
    ) -> Deferred:
        """:meth:`submit` for a write that may share a writer turn (one transaction, one
        commit) with the ingest batch and other merged jobs. ``fn`` must use the store's
        transactions (savepoints inside a turn) and have no effect outside the store: it may
        run inside a turn whose commit fails, and its Deferred then fails with it. ``durable``:
        its writes need ``synchronous=FULL``."""
        with self._cond:
            if self._stopping:
                name = getattr(fn, "__name__", repr(fn))
                return fail(StoreError(f"store executor is stopped; {name}() refused"))
            d: Deferred = Deferred()
            self._jobs.append(
                _Job(next(self._seq), fn, args, kwargs, d, merged=True, durable=durable)
            )
            self._cond.notify()
        return d

    def submit_grouped(self, fn_many: Callable[[list[Any]], Any], item: Any) -> Deferred:
        """Queue ``item`` for ``fn_many(items)``; fires (with None) once it is done.

        Items queued for the same ``fn_many`` while its call has not started yet join that
        call: one transaction for many (delivery completions under load), as ingests do. Called
        on the reactor thread, a new group waits for the end of the reactor's turn before it is
        queued, so what completes in one turn (two destinations answering together) always
        shares one commit.
        """
        with self._cond:
            if self._stopping:
                name = getattr(fn_many, "__name__", repr(fn_many))
                return fail(StoreError(f"store executor is stopped; {name}() refused"))
            d: Deferred = Deferred()
            group = self._groups.get(fn_many)
            if group is None:
                group = ([], [])
                self._groups[fn_many] = group
                later = getattr(self.reactor, "callLater", None)
                if later is None:
                    self._queue_group(fn_many, group)
                else:
                    self._held_groups.append((fn_many, group))
                    later(0, self._release_groups)
            group[0].append(item)
            group[1].append(d)
        return d

    def _queue_group(self, fn_many: Callable[[list[Any]], Any], group: tuple) -> None:
        """(Caller holds the lock.) The group's one call joins the jobs."""
        self._jobs.append(
            _Job(
                next(self._seq),
                self._run_group,
                (fn_many, group),
                {},
                Deferred(),
                True,
                False,
                True,
            )
        )
        self._cond.notify()

    def _release_groups(self) -> None:
        with self._cond:
            held, self._held_groups = self._held_groups, []
            for fn_many, group in held:
                self._queue_group(fn_many, group)

    def _detach(self, fn_many: Callable[[list[Any]], Any], group: tuple) -> tuple[list, list]:
        """A group's items and waiters, the group closed to new items (they start a new
        group). Whatever happens to its job after this (called, failed, its turn undone), its
        waiters are fired: a group left registered after its job is gone would take items
        whose Deferreds never fire."""
        with self._cond:
            if self._groups.get(fn_many) is group:
                del self._groups[fn_many]
            return list(group[0]), list(group[1])

    def _waiters(self, job: _Job) -> list[Deferred]:
        """Whom a job's outcome is for: a group job's callers, else its own Deferred."""
        return self._detach(*job.args)[1] if job.group else [job.d]

    def _run_group(self, fn_many: Callable[[list[Any]], Any], group: tuple) -> list[Any]:
        """The group's call; returns [(Deferred, None or Failure)] for the caller to fire."""
        items, waiters = self._detach(fn_many, group)
        try:
            fn_many(items)
        except Exception:
            if len(items) == 1:
                return [(waiters[0], Failure())]
            # One bad item must not fail the others: each alone, in its own transaction.
            fired: list[Any] = []
            for item, d in zip(items, waiters, strict=True):
                try:
                    fn_many([item])
                except Exception:
                    fired.append((d, Failure()))
                else:
                    fired.append((d, None))
            return fired
        return [(d, None) for d in waiters]

    # ------------------------------------------------------------------ writer thread

    def _run(self) -> None:
        while True:
            work = self._next_work()
            if work is None:
                break
            kind, ingests, jobs = work
            if kind == "turn":
                self._run_turn(ingests, jobs)
            elif kind == "ingest":
                self._run_batch(ingests)
            else:
                for job in jobs:
                    self._run_job(job)
        with self._cond:
            waiters, self._stopped = self._stopped, []
        for d in waiters:
            self.reactor.callFromThread(d.callback, None)

    def _next_work(self) -> tuple[str, list[_Ingest], list[_Job]] | None:
        """Block until there is work; None when stopping and everything is drained."""
        with self._cond:
            while not self._ingests and not self._jobs:
                if self._stopping:
                    return None
                self._idle = True
                self._cond.wait()
                self._idle = False
            ingest_head = self._ingests[0][0] if self._ingests else None
            job_head = self._jobs[0].seq if self._jobs else None
            turns = hasattr(self.store, "turn")
            if self._ingests:
                self._last_batch = min(self.max_batch, len(self._ingests))
            if ingest_head is not None and (job_head is None or ingest_head < job_head):
                count = min(self.max_batch, len(self._ingests))
                ingests = [self._ingests.popleft() for _ in range(count)]
                if not turns:
                    return "ingest", ingests, []
                return "turn", ingests, self._take_merged()
            if turns and self._jobs[0].merged:
                jobs = self._take_merged()
                count = min(self.max_batch, len(self._ingests))
                ingests = [self._ingests.popleft() for _ in range(count)]
                return "turn", ingests, jobs
            jobs = []
            while (
                self._jobs
                and not (turns and self._jobs[0].merged)
                and (ingest_head is None or self._jobs[0].seq < ingest_head)
            ):
                jobs.append(self._jobs.popleft())
            return "jobs", [], jobs

    def _take_merged(self) -> list[_Job]:
        """(Caller holds the lock.) The merged jobs at the head of the queue, in order."""
        jobs: list[_Job] = []
        while self._jobs and self._jobs[0].merged and len(jobs) < MAX_TURN_JOBS:
            jobs.append(self._jobs.popleft())
        return jobs

    def _run_turn(self, ingests: list[_Ingest], jobs: list[_Job]) -> None:
        """The ingest batch and the merged jobs in one transaction; fire after its commit."""
        fired: list[tuple[Deferred, Any]] = []
        durable = bool(ingests) or any(job.durable for job in jobs)
        if ingests:
            self.batches += 1
            self.ingested += len(ingests)
        try:
            with self.store.turn(durable):  # type: ignore[attr-defined]
                if ingests:
                    fired += self._ingest_results(ingests)
                for job in jobs:
                    try:
                        with self.store.savepoint(_name(job.fn)):  # type: ignore[attr-defined]
                            result = job.fn(*job.args, **job.kwargs)
                    except Exception:
                        failure = Failure()
                        fired += [(d, failure) for d in self._waiters(job)]
                    else:
                        if job.group:
                            fired += result
                        else:
                            fired.append((job.d, result))
        except Exception as exc:
            error = StoreError(f"writer turn failed: {exc}")
            error.__cause__ = exc
            waiters = [d for _, _, d in ingests]
            for job in jobs:  # (a group's: its callers, the group closed if it never ran)
                waiters += self._waiters(job)
            self.reactor.callFromThread(self._fire, [(d, Failure(error)) for d in waiters])
            return
        self.reactor.callFromThread(self._fire, fired)

    def _ingest_results(self, batch: list[_Ingest]) -> list[tuple[Deferred, Any]]:
        items = [inbound for _, inbound, _ in batch]
        try:
            results = self.store.ingest_batch(items, self._clock())
            if len(results) != len(items):
                raise StoreError(
                    f"ingest_batch must return one result per message "
                    f"(expected {len(items)}, got {len(results)})"
                )
        except Exception as exc:
            error = StoreError(f"ingest batch of {len(items)} message(s) failed: {exc}")
            error.__cause__ = exc
            return [(d, Failure(error)) for _, _, d in batch]
        return [(d, result) for (_, _, d), result in zip(batch, results, strict=True)]

    def _run_batch(self, batch: list[_Ingest]) -> None:
        self.batches += 1
        self.ingested += len(batch)
        # One hop back to the reactor for the whole batch (one wake-up, not one per message).
        self.reactor.callFromThread(self._fire, self._ingest_results(batch))

    def _run_job(self, job: _Job) -> None:
        try:
            result = job.fn(*job.args, **job.kwargs)
        except Exception:
            failure = Failure()
            self.reactor.callFromThread(_fire_all, [(d, failure) for d in self._waiters(job)])
            return
        if job.group:
            self.reactor.callFromThread(_fire_all, result)
        else:
            self.reactor.callFromThread(job.d.callback, result)

    def _fail_leftovers(self) -> None:
        """stop() without a running thread: fail whatever was queued (caller holds the lock)."""
        error = StoreError("store executor stopped before it was started")
        while self._ingests:
            self._ingests.popleft()[2].errback(Failure(error))
        while self._jobs:
            job = self._jobs.popleft()
            for d in self._waiters(job):  # (the lock is re-entrant: a Condition's RLock)
                d.errback(Failure(error))


def _name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def _fire_all(fired: list[tuple[Deferred, Any]]) -> None:
    for d, result in fired:
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)
