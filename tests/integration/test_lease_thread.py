"""Several nodes on PostgreSQL: a node's leases are taken, renewed and dropped on a thread and a
connection of their own, not behind the store writer's turns (engine/runtime/coordination.py).
Under load a renewal queued behind the writer reached the store after its lease had run out,
and another node took the folder or the destination while this one still worked on it."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

from engine.errors import StoreConflict
from engine.runtime.coordination import SharedCoordination
from engine.store import StoreExecutor, make_store

LIMIT = 60.0  # a generous bound for a wait that must end (not a speed)


class ThreadReactor:
    """Collects ``callFromThread`` calls; the test's thread runs them in :meth:`pump`."""

    def __init__(self) -> None:
        self.calls: queue.Queue[tuple[Callable[..., Any], tuple, dict]] = queue.Queue()

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.calls.put((f, args, kwargs))

    def pump(self, d: Deferred) -> Any:
        """Run the calls from other threads until ``d`` fired; its result (or raise)."""
        out: list[Any] = []
        d.addBoth(out.append)
        deadline = time.monotonic() + LIMIT
        while not out:
            left = deadline - time.monotonic()
            assert left > 0, "the call did not end"
            try:
                f, args, kwargs = self.calls.get(timeout=left)
            except queue.Empty:
                continue
            f(*args, **kwargs)
        if hasattr(out[0], "raiseException"):
            out[0].raiseException()
        return out[0]


def test_leases_are_written_while_the_store_writer_is_busy(pg_url: str) -> None:
    store = make_store(pg_url).open()
    reactor = ThreadReactor()
    executor = StoreExecutor(store, reactor)
    executor.start()
    coordination = SharedCoordination(store, executor, node="node-1", reactor=reactor)
    coordination.start()
    entered, gate = threading.Event(), threading.Event()

    def a_long_turn() -> str:
        entered.set()
        gate.wait(LIMIT)
        return "turn done"

    busy = executor.submit(a_long_turn)
    busy_result: list[Any] = []
    busy.addBoth(lambda r: busy_result.append(r) or r)
    try:
        assert entered.wait(LIMIT)
        # the writer is inside its turn until the gate opens: the lease calls do not wait
        assert reactor.pump(coordination.hold(["pickup:in/a", "pickup:in/b"], 30)) == {
            "pickup:in/a",
            "pickup:in/b",
        }
        rows = store.leases("pickup:")
        assert [(r["name"], r["holder"]) for r in rows] == [
            ("pickup:in/a", "node-1"),
            ("pickup:in/b", "node-1"),
        ]
        # the lease runs from when its row was written, for the time asked
        assert all(29.0 < r["until"] - r["renewed_at"] <= 30.0 for r in rows)
        assert reactor.pump(coordination.release(["pickup:in/a"])) == 1
        assert [r["name"] for r in store.leases("pickup:")] == ["pickup:in/b"]
        assert busy_result == []  # all of it while the writer's turn was still going on
    finally:
        gate.set()
    assert reactor.pump(busy) == "turn done"
    reactor.pump(executor.stop())
    coordination.stop()
    assert not [t for t in threading.enumerate() if t.name.startswith("wharf-leases")]
    store.close()


class Conflicting:
    """A store whose lease writes meet another node's transaction ``conflicts`` times."""

    def __init__(self, conflicts: int) -> None:
        self.conflicts = conflicts
        self.calls = 0

    def hold_leases(self, names: list[str], holder: str, seconds: float, now: float) -> list:
        self.calls += 1
        if self.calls <= self.conflicts:
            raise StoreConflict("could not serialize access due to concurrent update")
        return names


def test_a_lease_write_that_met_another_nodes_transaction_is_tried_again() -> None:
    reactor = ThreadReactor()
    store = Conflicting(conflicts=2)
    coordination = SharedCoordination(store, None, node="node-1", reactor=reactor)
    coordination.start()
    try:
        assert reactor.pump(coordination.hold(["pickup:a"], 10)) == {"pickup:a"}
        assert store.calls == 3
        store.conflicts, store.calls = 3, 0  # the third attempt fails too: the caller hears it
        try:
            reactor.pump(coordination.hold(["pickup:a"], 10))
        except StoreConflict as exc:
            assert "concurrent update" in str(exc)
        else:
            raise AssertionError("a third conflict was not reported")
        assert store.calls == SharedCoordination.ATTEMPTS == 3
    finally:
        coordination.stop()
