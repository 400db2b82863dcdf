"""One writer thread for the store, with group commit for ingests.

The reactor thread never touches SQLite: it enqueues work (non-blocking) and gets a Deferred.
The writer thread takes every ingest waiting (up to ``max_batch``) and stores them with one
``ingest_batch`` call, i.e. one transaction and one fsync for many messages, then fires the
Deferreds through ``reactor.callFromThread``. Other store calls go through :meth:`submit`.

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
from typing import Any, Protocol

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from engine.errors import Overloaded, StoreError
from engine.model import Inbound, IngestResult


class _Reactor(Protocol):
    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None: ...


class _BatchStore(Protocol):
    def ingest_batch(self, items: list[Inbound], now: float) -> list[IngestResult]: ...


_Ingest = tuple[int, Inbound, Deferred]
_Job = tuple[int, Callable[..., Any], tuple[Any, ...], dict[str, Any], Deferred]


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
            self._cond.notify()
        return d

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred:
        """Run ``fn(*args, **kwargs)`` on the writer thread; fires with its result or failure."""
        with self._cond:
            if self._stopping:
                name = getattr(fn, "__name__", repr(fn))
                return fail(StoreError(f"store executor is stopped; {name}() refused"))
            d: Deferred = Deferred()
            self._jobs.append((next(self._seq), fn, args, kwargs, d))
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
        self._jobs.append((next(self._seq), self._run_group, (fn_many, group), {}, Deferred()))
        self._cond.notify()

    def _release_groups(self) -> None:
        with self._cond:
            held, self._held_groups = self._held_groups, []
            for fn_many, group in held:
                self._queue_group(fn_many, group)

    def _run_group(self, fn_many: Callable[[list[Any]], Any], group: tuple) -> None:
        with self._cond:
            if self._groups.get(fn_many) is group:
                del self._groups[fn_many]
            items, waiters = list(group[0]), list(group[1])
        try:
            fn_many(items)
        except Exception:
            if len(items) == 1:
                self.reactor.callFromThread(waiters[0].errback, Failure())
                return
            # One bad item must not fail the others: each alone, in its own transaction.
            for item, d in zip(items, waiters, strict=True):
                try:
                    fn_many([item])
                except Exception:
                    self.reactor.callFromThread(d.errback, Failure())
                else:
                    self.reactor.callFromThread(d.callback, None)
            return
        self.reactor.callFromThread(_fire_all, [(d, None) for d in waiters])

    # ------------------------------------------------------------------ writer thread

    def _run(self) -> None:
        while True:
            work = self._next_work()
            if work is None:
                break
            kind, items = work
            if kind == "ingest":
                self._run_batch(items)
            else:
                for job in items:
                    self._run_job(job)
        with self._cond:
            waiters, self._stopped = self._stopped, []
        for d in waiters:
            self.reactor.callFromThread(d.callback, None)

    def _next_work(self) -> tuple[str, list[Any]] | None:
        """Block until there is work; None when stopping and everything is drained."""
        with self._cond:
            while not self._ingests and not self._jobs:
                if self._stopping:
                    return None
                self._cond.wait()
            ingest_head = self._ingests[0][0] if self._ingests else None
            job_head = self._jobs[0][0] if self._jobs else None
            if ingest_head is not None and (job_head is None or ingest_head < job_head):
                count = min(self.max_batch, len(self._ingests))
                return "ingest", [self._ingests.popleft() for _ in range(count)]
            jobs = []
            while self._jobs and (ingest_head is None or self._jobs[0][0] < ingest_head):
                jobs.append(self._jobs.popleft())
            return "jobs", jobs

    def _run_batch(self, batch: list[_Ingest]) -> None:
        self.batches += 1
        self.ingested += len(batch)
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
            for _, _, d in batch:
                self.reactor.callFromThread(d.errback, Failure(error))
            return
        # One hop back to the reactor for the whole batch (one wake-up, not one per message).
        fired = [(d, result) for (_, _, d), result in zip(batch, results, strict=True)]
        self.reactor.callFromThread(_fire_all, fired)

    def _run_job(self, job: _Job) -> None:
        _, fn, args, kwargs, d = job
        try:
            result = fn(*args, **kwargs)
        except Exception:
            self.reactor.callFromThread(d.errback, Failure())
            return
        self.reactor.callFromThread(d.callback, result)

    def _fail_leftovers(self) -> None:
        """stop() without a running thread: fail whatever was queued (caller holds the lock)."""
        error = StoreError("store executor stopped before it was started")
        while self._ingests:
            self._ingests.popleft()[2].errback(Failure(error))
        while self._jobs:
            self._jobs.popleft()[4].errback(Failure(error))


def _fire_all(fired: list[tuple[Deferred, Any]]) -> None:
    for d, result in fired:
        d.callback(result)
