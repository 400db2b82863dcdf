"""StoreExecutor: one writer thread, group commit, back-pressure, failure fan-out."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from engine import model
from engine.errors import Overloaded, StoreError
from engine.model import Inbound, IngestResult
from engine.store import SqliteStore, StoreExecutor, make_store

T0 = 1_700_000_000.0
TIMEOUT = 10.0


class FakeReactor:
    """Collects callFromThread calls; the test thread runs them with :meth:`pump`."""

    def __init__(self) -> None:
        self.calls: queue.Queue[tuple[Callable[..., Any], tuple, dict]] = queue.Queue()
        self.thread = threading.current_thread()

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.calls.put((f, args, kwargs))

    def pump(self, done: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        """Run queued calls in this thread until ``done()`` is true (or fail on timeout)."""
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("timed out waiting for the executor")
            try:
                f, args, kwargs = self.calls.get(timeout=remaining)
            except queue.Empty:
                continue
            assert threading.current_thread() is self.thread
            f(*args, **kwargs)


class Outcome:
    """Records how a Deferred fired."""

    def __init__(self, d: Deferred) -> None:
        self.result: Any = None
        self.failure: Failure | None = None
        self.fired = False
        d.addCallbacks(self._ok, self._err)

    def _ok(self, value: Any) -> None:
        self.fired, self.result = True, value

    def _err(self, failure: Failure) -> None:
        self.fired, self.failure = True, failure


def wait_all(reactor: FakeReactor, outcomes: list[Outcome]) -> None:
    reactor.pump(lambda: all(o.fired for o in outcomes))


def inbound(n: int = 0, **kw: Any) -> Inbound:
    fields: dict[str, Any] = {
        "channel": "adt",
        "source": "mllp",
        "raw": f"MSH|{n}".encode(),
        "content_type": "application/hl7-v2",
        "received_at": T0,
    }
    fields.update(kw)
    return Inbound(**fields)


class GatedStore:
    """Wraps a store; the first ingest_batch waits until the test opens the gate."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.batch_sizes: list[int] = []

    def ingest_batch(self, items: list[Inbound], now: float) -> list[IngestResult]:
        self.entered.set()
        assert self.gate.wait(TIMEOUT), "gate never opened"
        self.batch_sizes.append(len(items))
        return self.inner.ingest_batch(items, now)


@pytest.fixture
def store(store_location: Path | str) -> SqliteStore:
    """SQLite, then PostgreSQL (tests/conftest.py)."""
    s = make_store(store_location).open()
    yield s
    s.close()


@pytest.fixture
def reactor() -> FakeReactor:
    return FakeReactor()


def stop(executor: StoreExecutor, reactor: FakeReactor) -> None:
    done = Outcome(executor.stop())
    wait_all(reactor, [done])
    assert done.failure is None


def test_ingest_stores_and_fires_in_reactor_thread(
    store: SqliteStore, reactor: FakeReactor
) -> None:
    """One ingest is stored by the writer thread; its Deferred fires with the IngestResult."""
    executor = StoreExecutor(store, reactor)
    executor.start()
    out = Outcome(executor.ingest(inbound(1)))
    wait_all(reactor, [out])
    assert out.failure is None and out.result.outcome == "stored"
    assert store.get_content(out.result.message_id, "raw") == b"MSH|1"
    stop(executor, reactor)


def test_500_concurrent_ingests_use_few_transactions(
    store: SqliteStore, reactor: FakeReactor
) -> None:
    """500 ingests arriving while a commit is under way are stored in a handful of batches."""
    gated = GatedStore(store)
    executor = StoreExecutor(gated, reactor, max_batch=256)
    executor.start()
    outcomes = [Outcome(executor.ingest(inbound(0)))]
    assert gated.entered.wait(TIMEOUT)
    outcomes += [Outcome(executor.ingest(inbound(n))) for n in range(1, 500)]
    gated.gate.set()
    wait_all(reactor, outcomes)

    assert all(o.failure is None for o in outcomes)
    assert len({o.result.message_id for o in outcomes}) == 500
    assert executor.batches == len(gated.batch_sizes) <= 3
    assert gated.batch_sizes == [1, 256, 243]
    assert store.counts()["messages"] == {model.RECEIVED: 500}
    stop(executor, reactor)


def test_work_queued_before_start_is_batched(store: SqliteStore, reactor: FakeReactor) -> None:
    """Ingests queued before start() are taken max_batch at a time: 500 -> 2 transactions."""
    executor = StoreExecutor(store, reactor, max_batch=256)
    outcomes = [Outcome(executor.ingest(inbound(n))) for n in range(500)]
    executor.start()
    wait_all(reactor, outcomes)
    assert executor.batches == 2 and executor.ingested == 500
    stop(executor, reactor)


def test_overloaded_when_queue_full(store: SqliteStore, reactor: FakeReactor) -> None:
    """With max_pending ingests waiting, the next ingest fails at once with Overloaded."""
    gated = GatedStore(store)
    executor = StoreExecutor(gated, reactor, max_pending=5, max_batch=1)
    executor.start()
    taken = Outcome(executor.ingest(inbound(0)))
    assert gated.entered.wait(TIMEOUT)
    waiting = [Outcome(executor.ingest(inbound(n))) for n in range(1, 6)]
    refused = Outcome(executor.ingest(inbound(99)))
    assert refused.fired and refused.failure is not None
    assert refused.failure.check(Overloaded)
    assert "max_pending 5" in str(refused.failure.value)
    assert executor.pending == 5

    gated.gate.set()
    wait_all(reactor, [taken, *waiting])
    assert all(o.failure is None for o in [taken, *waiting])
    assert store.counts()["messages"] == {model.RECEIVED: 6}  # the refused one is not stored
    stop(executor, reactor)


class FailingStore:
    """ingest_batch fails for the first call, then works."""

    def __init__(self, inner: SqliteStore) -> None:
        self.inner = inner
        self.calls = 0

    def ingest_batch(self, items: list[Inbound], now: float) -> list[IngestResult]:
        self.calls += 1
        if self.calls == 1:
            raise OSError("disk full")
        return self.inner.ingest_batch(items, now)


def test_failing_batch_fails_every_deferred(store: SqliteStore, reactor: FakeReactor) -> None:
    """When ingest_batch raises, every Deferred of that batch fails with a chained StoreError."""
    failing = FailingStore(store)
    executor = StoreExecutor(failing, reactor)
    batch = [Outcome(executor.ingest(inbound(n))) for n in range(3)]
    executor.start()
    wait_all(reactor, batch)
    for o in batch:
        assert o.failure is not None and o.failure.check(StoreError)
        assert isinstance(o.failure.value.__cause__, OSError)
        assert "batch of 3 message(s) failed: disk full" in str(o.failure.value)
    assert store.counts()["messages"] == {}

    later = Outcome(executor.ingest(inbound(9)))
    wait_all(reactor, [later])
    assert later.failure is None and later.result.outcome == "stored"
    stop(executor, reactor)


def test_submit_returns_result_and_failure(store: SqliteStore, reactor: FakeReactor) -> None:
    """submit() runs the call on the writer thread and passes back its result or exception."""
    executor = StoreExecutor(store, reactor)
    executor.start()
    threads: list[str] = []

    def where() -> str:
        threads.append(threading.current_thread().name)
        return "ok"

    ok = Outcome(executor.submit(where))
    bad = Outcome(executor.submit(store.delivery_succeeded, 12345, None, now=T0))
    wait_all(reactor, [ok, bad])
    assert ok.result == "ok" and threads == ["wharf-store-writer"]
    assert bad.failure is not None and bad.failure.check(StoreError)
    assert "no outbox row with id 12345" in str(bad.failure.value)
    stop(executor, reactor)


def test_jobs_and_ingests_run_in_arrival_order(reactor: FakeReactor) -> None:
    """A job queued before ingests runs before them; one queued after runs after the batch."""
    log: list[str] = []

    class LoggingStore:
        def ingest_batch(self, items: list[Inbound], now: float) -> list[IngestResult]:
            log.append(f"batch:{len(items)}")
            return [IngestResult(f"m{i}", "stored", "received", f"m{i}") for i in range(len(items))]

    executor = StoreExecutor(LoggingStore(), reactor)
    outcomes = [Outcome(executor.submit(log.append, "job-1"))]
    outcomes += [Outcome(executor.ingest(inbound(n))) for n in range(3)]
    outcomes += [Outcome(executor.submit(log.append, "job-2"))]
    outcomes += [Outcome(executor.ingest(inbound(9)))]
    executor.start()
    wait_all(reactor, outcomes)
    assert log == ["job-1", "batch:4", "job-2"]
    stop(executor, reactor)


def test_stop_drains_then_refuses(store: SqliteStore, reactor: FakeReactor) -> None:
    """stop() fires after queued work is done; later calls fail with StoreError."""
    executor = StoreExecutor(store, reactor)
    executor.start()
    queued = [Outcome(executor.ingest(inbound(n))) for n in range(20)]
    stopped = Outcome(executor.stop())
    wait_all(reactor, [*queued, stopped])
    assert all(o.failure is None for o in queued)
    assert executor._thread is not None and not executor._thread.is_alive()

    late_ingest = Outcome(executor.ingest(inbound(1)))
    late_job = Outcome(executor.submit(store.counts))
    for late in (late_ingest, late_job):
        assert late.fired and late.failure is not None and late.failure.check(StoreError)
        assert "stopped" in str(late.failure.value)


def test_stop_without_start_fails_queued_work(reactor: FakeReactor) -> None:
    """Stopping an executor that never started fires at once and fails what was queued."""
    executor = StoreExecutor(object(), reactor)  # type: ignore[arg-type]
    queued = Outcome(executor.ingest(inbound(1)))
    stopped = Outcome(executor.stop())
    assert stopped.fired and stopped.failure is None
    assert queued.fired and queued.failure is not None and queued.failure.check(StoreError)


def test_grouped_items_share_one_call_and_a_bad_one_fails_alone() -> None:
    """Items queued for the same function while its call waits go in one call; when that call
    fails, each item is tried alone so only the bad one fails."""
    import threading as _threading

    from twisted.internet.defer import Deferred as _Deferred

    calls: list[list[int]] = []
    gate = _threading.Event()

    class Store:
        def ingest_batch(self, items, now):
            return []

    def many(items: list[int]) -> None:
        gate.wait(5)
        calls.append(list(items))
        if 13 in items:
            raise ValueError("bad item")

    class Reactor:
        def callFromThread(self, f, *a, **kw):
            f(*a, **kw)

    ex = StoreExecutor(Store(), Reactor())
    blocker = ex.submit(gate.wait, 5)  # holds the writer thread while the items queue up
    ex.start()
    results: dict[int, str] = {}
    ds: list[_Deferred] = []
    for i in (1, 2, 13, 4):
        d = ex.submit_grouped(many, i)
        d.addCallbacks(
            lambda _, i=i: results.__setitem__(i, "ok"),
            lambda f, i=i: results.__setitem__(i, f.getErrorMessage()),
        )
        ds.append(d)
    gate.set()
    stopped = ex.stop()
    for _ in range(500):
        if stopped.called:
            break
        import time as _time

        _time.sleep(0.01)
    assert blocker.called
    assert calls[0] == [1, 2, 13, 4]  # one call for all four
    assert calls[1:] == [[1], [2], [13], [4]]  # then each alone after the failure
    assert results == {1: "ok", 2: "ok", 13: "bad item", 4: "ok"}


# ---------------------------------------------------------------------- writer turns


def _gate(executor: StoreExecutor) -> threading.Event:
    """Hold the writer thread (a plain job) until the returned event is set."""
    gate = threading.Event()
    executor.submit(gate.wait, TIMEOUT)
    return gate


def _queued(store: SqliteStore, outbound: bool = True) -> str:
    (result,) = store.ingest_batch([inbound(99)], T0)
    store.finish_processing(
        result.message_id,
        status=model.QUEUED,
        now=T0,
        outbound=[model.Outbound("erp", b"{}")] if outbound else [],
    )
    return result.message_id


def test_a_turn_commits_ingests_and_merged_jobs_once(
    store: SqliteStore, reactor: FakeReactor
) -> None:
    """Ingests, pipeline results and delivery bookkeeping queued together: one commit."""
    message_id = _queued(store)
    (row,) = store.claim_deliveries("adt", "erp", 10, T0, 30.0)
    received = [r.message_id for r in store.ingest_batch([inbound(n) for n in (1, 2)], T0)]
    executor = StoreExecutor(store, reactor)
    gate = _gate(executor)
    executor.start()
    outcomes = [Outcome(executor.ingest(inbound(n))) for n in range(10, 15)]
    outcomes += [
        Outcome(executor.submit_merged(store.finish_processing, mid, status="filtered", now=T0))
        for mid in received
    ]
    outcomes.append(
        Outcome(executor.submit_grouped(store.deliveries_succeeded, (row.id, b"ok", T0)))
    )
    before = store.commits
    gate.set()
    wait_all(reactor, outcomes)
    assert all(o.failure is None for o in outcomes), [o.failure for o in outcomes if o.failure]
    assert store.commits - before == 1
    assert store.counts()["messages"] == {
        model.RECEIVED: 5,
        model.FILTERED: 2,
        model.SENT: 1,
    }
    assert store.get_message(message_id).status == model.SENT
    stop(executor, reactor)


def test_a_failing_merged_job_undoes_only_its_own_writes(
    store: SqliteStore, reactor: FakeReactor
) -> None:
    executor = StoreExecutor(store, reactor)
    gate = _gate(executor)
    executor.start()

    def half_then_fail() -> None:
        with store.transaction("half") as tx:
            tx.audit("tester", "half", "x", {}, T0)
        store.ingest_batch([inbound(500)], T0)  # written, then undone with the job
        raise ValueError("the job changed its mind")

    good = Outcome(executor.ingest(inbound(1)))
    bad = Outcome(executor.submit_merged(half_then_fail))
    later = Outcome(executor.submit_merged(store.audit, "tester", "later", "y", {}, T0))
    before = store.commits
    gate.set()
    wait_all(reactor, [good, bad, later])
    assert store.commits - before == 1
    assert good.failure is None and later.failure is None
    assert bad.failure is not None and bad.failure.check(ValueError)
    assert store.counts()["messages"] == {model.RECEIVED: 1}
    actions = [e["action"] for e in store.audit_entries()]
    assert "later" in actions and "half" not in actions
    stop(executor, reactor)


def test_when_a_turn_cannot_commit_every_waiter_fails_and_nothing_is_kept(
    store: SqliteStore, reactor: FakeReactor, monkeypatch: pytest.MonkeyPatch
) -> None:
    message_id = _queued(store)
    (row,) = store.claim_deliveries("adt", "erp", 10, T0, 30.0)
    executor = StoreExecutor(store, reactor)
    gate = _gate(executor)
    executor.start()
    outcomes = [Outcome(executor.ingest(inbound(n))) for n in range(3)]
    outcomes.append(Outcome(executor.submit_merged(store.audit, "tester", "x", "y", {}, T0)))
    outcomes.append(Outcome(executor.submit_grouped(store.deliveries_succeeded, (row.id, b"", T0))))
    real_turn = store.turn

    from contextlib import contextmanager

    @contextmanager
    def turn_that_fails_at_commit(durable: bool):
        with real_turn(durable):
            yield
            raise StoreError("disk I/O error at commit")

    monkeypatch.setattr(store, "turn", turn_that_fails_at_commit)
    gate.set()
    wait_all(reactor, outcomes)
    assert all(o.failure is not None and o.failure.check(StoreError) for o in outcomes)
    assert all("writer turn failed" in str(o.failure.value) for o in outcomes)
    # nothing of the turn was kept: the ACKs were never sent, the delivery is still inflight
    assert store.counts()["messages"] == {model.QUEUED: 1}
    assert store.get_message(message_id).status == model.QUEUED
    stop(executor, reactor)


def test_a_turn_of_bookkeeping_only_commits_without_fsync_unless_asked(
    store: SqliteStore, reactor: FakeReactor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A turn without ingests commits at synchronous=NORMAL; a job submitted durable makes it
    FULL; a durable write inside a non-durable turn has the WAL fsync'd after the commit."""
    levels: list[bool] = []
    synced: list[str] = []
    real_turn = store.turn

    from contextlib import contextmanager

    @contextmanager
    def spy_turn(durable: bool):
        levels.append(durable)
        with real_turn(durable):
            yield

    monkeypatch.setattr(store, "turn", spy_turn)
    monkeypatch.setattr(store, "_sync_wal", lambda what: synced.append(what))
    executor = StoreExecutor(store, reactor)
    executor.start()

    def note(action: str) -> None:
        with store.transaction(action, durable=False) as tx:
            tx.audit("t", action, "x", {}, T0)

    for durable in (False, True):
        out = Outcome(executor.submit_merged(note, f"a{durable}", durable=durable))
        wait_all(reactor, [out])
    assert levels == [False, True] and synced == []

    def durable_write() -> None:
        with store.transaction("must last", durable=True) as tx:
            tx.audit("t", "b", "x", {}, T0)

    out = Outcome(executor.submit_merged(durable_write))  # (not declared durable)
    wait_all(reactor, [out])
    assert out.failure is None
    assert levels[-1] is False and synced == ["writer turn"]
    stop(executor, reactor)


def test_merged_jobs_do_not_overtake_an_older_plain_job(reactor: FakeReactor, store) -> None:
    log: list[str] = []
    executor = StoreExecutor(store, reactor)
    gate = _gate(executor)
    executor.start()
    outcomes = [
        Outcome(executor.submit_merged(log.append, "merged-1")),
        Outcome(executor.submit(log.append, "plain")),
        Outcome(executor.submit_merged(log.append, "merged-2")),
    ]
    gate.set()
    wait_all(reactor, outcomes)
    assert log == ["merged-1", "plain", "merged-2"]
    stop(executor, reactor)


def test_a_turn_that_cannot_begin_leaves_no_group_behind(
    store: SqliteStore, reactor: FakeReactor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store unreachable when a turn begins (PostgreSQL down): the grouped completions it
    held fail, and completions grouped after it form a new call that runs (issue 15: they
    joined the failed turn's group, which was never called again, and their Deferreds never
    fired: a delivery worker's slots stayed taken forever)."""
    ids = []
    for _ in range(2):
        _queued(store)
        ids += [row.id for row in store.claim_deliveries("adt", "erp", 10, T0, 30.0)]
    executor = StoreExecutor(store, reactor)
    gate = _gate(executor)
    executor.start()
    real_turn = store.turn
    turns: list[bool] = []

    from contextlib import contextmanager

    @contextmanager
    def first_turn_unreachable(durable: bool):
        turns.append(durable)
        if len(turns) == 1:
            raise StoreError("cannot reach store: connection refused")
        with real_turn(durable):
            yield

    monkeypatch.setattr(store, "turn", first_turn_unreachable)
    first = Outcome(executor.submit_grouped(store.deliveries_succeeded, (ids[0], b"", T0)))
    gate.set()
    wait_all(reactor, [first])
    assert first.failure is not None and first.failure.check(StoreError)
    second = Outcome(executor.submit_grouped(store.deliveries_succeeded, (ids[1], b"ok", T0)))
    wait_all(reactor, [second])
    assert second.failure is None
    statuses = {d["id"]: d["status"] for m in store.search() for d in store.deliveries_for(m.id)}
    assert statuses == {ids[0]: model.INFLIGHT, ids[1]: model.SENT}
    stop(executor, reactor)


def test_a_grouped_call_whose_savepoint_fails_fails_its_waiters(
    store: SqliteStore, reactor: FakeReactor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection lost just as a grouped call's savepoint opens: every caller of the
    group gets the failure (not only the group's own bookkeeping Deferred), and the next
    grouped call runs."""
    _queued(store)
    (row,) = store.claim_deliveries("adt", "erp", 10, T0, 30.0)
    executor = StoreExecutor(store, reactor)
    gate = _gate(executor)
    executor.start()
    real_savepoint = store.savepoint
    broken = [True]

    from contextlib import contextmanager

    @contextmanager
    def savepoint(what: str):
        if broken[0]:
            broken[0] = False
            raise StoreError(f"{what}: the connection is closed")
        with real_savepoint(what):
            yield

    monkeypatch.setattr(store, "savepoint", savepoint)
    first = Outcome(executor.submit_grouped(store.deliveries_succeeded, (row.id, b"", T0)))
    gate.set()
    wait_all(reactor, [first])
    assert first.failure is not None and first.failure.check(StoreError)
    second = Outcome(executor.submit_grouped(store.deliveries_succeeded, (row.id, b"ok", T0)))
    wait_all(reactor, [second])
    assert second.failure is None
    (delivery,) = [d for m in store.search() for d in store.deliveries_for(m.id)]
    assert delivery["status"] == model.SENT


class TurnReactor(FakeReactor):
    """FakeReactor with callLater(0): the calls wait for the end of the reactor's turn."""

    def __init__(self) -> None:
        super().__init__()
        self.later: list[Callable[[], Any]] = []

    def callLater(self, delay: float, f: Callable[..., Any], *args: Any) -> None:
        self.later.append(lambda: f(*args))

    def end_turn(self) -> None:
        later, self.later = self.later, []
        for f in later:
            f()


def test_ingests_of_one_reactor_turn_wake_the_writer_once(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With coalesce_wakeups, while ingests come in batches, the ingests made on the reactor
    thread while the writer waits wake it once, at the end of the reactor's turn: they are one
    batch, one commit. A lone sender's ingest (the last batch held one) wakes it at once."""
    from twisted.python import threadable

    monkeypatch.setattr(threadable, "ioThread", threadable.getThreadID())
    reactor = TurnReactor()
    executor = StoreExecutor(store, reactor, coalesce_wakeups=True)
    outcomes = [Outcome(executor.ingest(inbound(n))) for n in range(2)]  # one batch of two
    executor.start()
    wait_all(reactor, outcomes)

    def wait_idle() -> None:
        deadline = time.monotonic() + TIMEOUT
        while not executor._idle:  # the writer waits for work
            assert time.monotonic() < deadline, "the writer never waited"
            time.sleep(0.001)

    wait_idle()
    outcomes = [Outcome(executor.ingest(inbound(n))) for n in range(2, 7)]
    assert len(reactor.later) == 1  # one wake-up scheduled for the five
    time.sleep(0.05)
    assert executor.batches == 1  # nobody woke the writer yet
    reactor.end_turn()
    wait_all(reactor, outcomes)
    assert executor.batches == 2 and executor.ingested == 7
    assert [o.result.outcome for o in outcomes] == ["stored"] * 5
    wait_idle()
    one = Outcome(executor.ingest(inbound(7)))  # after a batch of five: waits for the turn
    assert len(reactor.later) == 1
    reactor.end_turn()
    wait_all(reactor, [one])
    for n in range(8, 10):  # after a batch of one: woken at once, no wait for the turn
        wait_idle()
        one = Outcome(executor.ingest(inbound(n)))
        assert reactor.later == []
        wait_all(reactor, [one])
    assert executor.batches == 5
    stop(executor, reactor)


def test_after_fire_runs_once_when_a_turn_fired(store: SqliteStore) -> None:
    """What a callback asks for with after_fire runs once, after every Deferred of the turn
    fired; outside a firing it runs at once."""
    reactor = FakeReactor()
    executor = StoreExecutor(store, reactor)
    calls: list[int] = []
    seen: list[int] = []

    def later() -> None:
        calls.append(len(seen))

    def fired(result: Any) -> None:
        seen.append(1)
        executor.after_fire(later)

    outcomes = []
    for n in range(3):
        d = executor.ingest(inbound(n))
        d.addCallback(fired)
        outcomes.append(Outcome(d))
    executor.start()
    wait_all(reactor, outcomes)
    assert executor.batches == 1 and calls == [3]
    executor.after_fire(later)
    assert calls == [3, 3]
    stop(executor, reactor)
