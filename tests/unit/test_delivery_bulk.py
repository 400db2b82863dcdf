"""The delivery worker's rate limits, 429 holds and bulk calls, over the real SQLite store and
the runtime's DeliveryBook (so a domain hook hears each row), driven by task.Clock.

No sockets, no sleeps: the store executor runs each call at once and time moves only when a
test advances the clock.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, task

from engine import model
from engine.delivery import DeliveryPolicy, DeliveryWorker
from engine.errors import DeliveryError
from engine.model import Bulk, Delivery, Inbound, ItemOutcome, Outbound
from engine.runtime.outcomes import DeliveryBook
from engine.store import SqliteStore


class SyncExecutor:
    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        try:
            return defer.succeed(fn(*args, **kwargs))
        except Exception:
            return defer.fail()


class Hearing:
    """A domain binding that records what it hears of each row."""

    destinations = ("erp",)

    def __init__(self) -> None:
        self.heard: list[tuple[str, str]] = []

    def settled(self, tx: Any, settled: Any, outcome: str, reason: Any, now: float) -> None:
        self.heard.append((settled.meta["item"], outcome))


class Erp:
    """A bulk destination whose ``script(rows, key)`` returns the item outcomes (or raises);
    records every call as (item names, key)."""

    def __init__(self, script: Callable[[list[Delivery], str], Any], max_items: int = 3) -> None:
        self.script = script
        self.bulk = Bulk(max_items=max_items, max_wait=0.5)
        self.calls: list[tuple[list[str], str, list[int]]] = []
        self.single: list[str] = []

    async def send(self, delivery: Delivery) -> bytes:
        self.single.append(delivery.meta["item"])
        return b"one"

    async def send_batch(self, deliveries: list[Delivery], key: str) -> list[ItemOutcome]:
        self.calls.append(
            ([d.meta["item"] for d in deliveries], key, [d.attempts for d in deliveries])
        )
        result = self.script(deliveries, key)
        if isinstance(result, defer.Deferred):
            return await result
        return result

    def close(self) -> None:
        return None


def all_ok(rows: list[Delivery], key: str) -> list[ItemOutcome]:
    return [ItemOutcome(response=f"ok {d.meta['item']}".encode()) for d in rows]


class Rig:
    def __init__(self, tmp_path: Path, destination: Any, **policy: Any) -> None:
        self.store = SqliteStore(tmp_path / "wharf.db").open()
        self.hearing = Hearing()
        self.book = DeliveryBook(self.store, lambda channel: [self.hearing])
        self.clock = task.Clock()
        policy.setdefault("jitter", 0)
        self.destination = destination
        self.worker = DeliveryWorker(
            channel="ch",
            name="erp",
            destination=destination,
            policy=DeliveryPolicy(**policy),
            store=self.book,
            executor=SyncExecutor(),
            clock=self.clock,
            rng=random.Random(0),
        )

    def add(self, *items: str) -> None:
        """One message queuing a delivery per item (meta ``item`` names it), due now."""
        now = self.clock.seconds()
        (result,) = self.store.ingest_batch(
            [Inbound("ch", "test", b"x" + items[0].encode(), "text/plain", now)], now
        )
        self.store.finish_processing(
            result.message_id,
            status=model.QUEUED,
            now=now,
            outbound=[
                Outbound("erp", f'{{"item": "{i}"}}'.encode(), meta={"item": i}) for i in items
            ],
        )

    def rows(self) -> dict[str, dict[str, Any]]:
        with self.store.reading() as tx:
            found = tx.connection.execute(
                "SELECT meta, status, attempts, batch_key, next_attempt_at, response "
                "FROM outbox ORDER BY id"
            ).fetchall()
        import json

        out = {}
        for meta, status, attempts, key, due, response in found:
            out[json.loads(meta)["item"]] = {
                "status": status,
                "attempts": attempts,
                "batch_key": key,
                "due": due,
                "response": response,
            }
        return out

    def status(self) -> dict[str, str]:
        return {k: v["status"] for k, v in self.rows().items()}


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path


def test_rows_go_in_calls_of_max_items_and_a_partial_call_waits_max_wait(tmp: Path) -> None:
    """Seven due rows and max_items 3: two full calls at once; the seventh row waits max_wait
    for company, then goes alone. Each call's key is the batch key of its rows."""
    erp = Erp(all_ok)
    rig = Rig(tmp, erp, concurrency=4)
    rig.add(*"abcdefg")
    rig.worker.start()
    assert [items for items, _, _ in erp.calls] == [["a", "b", "c"], ["d", "e", "f"]]
    assert rig.status()["g"] == model.INFLIGHT
    rig.clock.advance(0.4)
    assert len(erp.calls) == 2
    rig.clock.advance(0.1)
    assert [items for items, _, _ in erp.calls][2] == ["g"]
    assert set(rig.status().values()) == {model.DELIVERED}
    rows = rig.rows()
    first = [d for d in rows if d in "abc"]
    assert {rows[d]["batch_key"] for d in first} == {erp.calls[0][1]}
    assert rows["b"]["response"] == b"ok b"
    assert sorted(rig.hearing.heard) == [(i, "delivered") for i in "abcdefg"]


def test_a_partial_failure_fails_only_its_items(tmp: Path) -> None:
    """An answered call settles each row on its own: the 422 item is dead (and the domain
    hears it dead), the others are sent; a retryable item leaves the call and is retried
    later in a new call under a new key."""

    def script(rows: list[Delivery], key: str) -> list[ItemOutcome]:
        out = []
        for d in rows:
            item = d.meta["item"]
            if item == "b":
                out.append(
                    ItemOutcome(b'{"error": "bad"}', DeliveryError("HTTP 422", retryable=False))
                )
            elif item == "c" and d.attempts == 0:
                out.append(ItemOutcome(None, DeliveryError("HTTP 503", retryable=True)))
            else:
                out.append(ItemOutcome(b"ok"))
        return out

    erp = Erp(script)
    rig = Rig(tmp, erp, initial=2)
    rig.add("a", "b", "c")
    rig.worker.start()
    assert rig.status() == {"a": model.DELIVERED, "b": model.DEAD, "c": model.PENDING}
    rows = rig.rows()
    assert rows["c"]["batch_key"] is None and rows["c"]["attempts"] == 1
    assert rows["b"]["response"] == b'{"error": "bad"}'
    assert sorted(rig.hearing.heard) == [("a", "delivered"), ("b", "dead")]
    rig.clock.advance(2)
    rig.clock.advance(0.5)  # c waits max_wait for company, then goes alone
    assert rig.status()["c"] == model.DELIVERED
    assert erp.calls[1][0] == ["c"] and erp.calls[1][1] != erp.calls[0][1]


def test_a_call_that_failed_as_a_whole_is_resent_whole_under_the_same_key(tmp: Path) -> None:
    """A timeout after the call went out (ambiguous, idempotent destination): the rows stay
    pinned to the call; new rows that came meanwhile go in another call, and the resend
    carries exactly the first rows under the first key."""
    answers: list[Any] = [DeliveryError("timeout", ambiguous=True)]

    def script(rows: list[Delivery], key: str) -> Any:
        if answers and rows[0].meta["item"] == "a":
            raise answers.pop()
        return all_ok(rows, key)

    erp = Erp(script, max_items=3)
    rig = Rig(tmp, erp, initial=1)
    rig.add("a", "b")
    rig.worker.start()
    rig.clock.advance(0.5)  # a, b go after max_wait; the call times out
    first_key = erp.calls[0][1]
    assert rig.status() == {"a": model.PENDING, "b": model.PENDING}
    assert {r["batch_key"] for r in rig.rows().values()} == {first_key}
    rig.add("c")
    rig.worker.wake()
    rig.clock.advance(1)  # a, b due again; c's own call went after max_wait
    calls = {tuple(items): key for items, key, _ in erp.calls}
    assert calls[("a", "b")] == first_key
    assert calls[("c",)] != first_key
    assert [items for items, _, _ in erp.calls].count(["a", "b"]) == 2
    assert set(rig.status().values()) == {model.DELIVERED}


def test_rolled_back_items_are_sent_again_at_once_without_an_attempt(tmp: Path) -> None:
    """An all-or-nothing API refused the call for one item: that item is dead; the others
    were rolled back (requeue), go again at once in a new call and have no attempt counted."""

    def script(rows: list[Delivery], key: str) -> list[ItemOutcome]:
        if any(d.meta["item"] == "x" for d in rows):
            return [
                ItemOutcome(None, DeliveryError("HTTP 400 item x", retryable=False))
                if d.meta["item"] == "x"
                else ItemOutcome(requeue=True)
                for d in rows
            ]
        return all_ok(rows, key)

    erp = Erp(script)
    rig = Rig(tmp, erp)
    rig.add("a", "x", "b")
    rig.worker.start()
    rig.clock.advance(0.5)
    assert rig.status() == {"a": model.DELIVERED, "x": model.DEAD, "b": model.DELIVERED}
    assert [items for items, _, _ in erp.calls] == [["a", "x", "b"], ["a", "b"]]
    assert erp.calls[1][2] == [0, 0]  # the rolled-back attempt was not counted
    assert rig.rows()["a"]["attempts"] == 1


def test_a_429_holds_the_queue_until_retry_after_and_counts_no_attempt(tmp: Path) -> None:
    """A throttled call holds the destination: nothing is claimed nor sent until the peer's
    Retry-After; the rows stay pending with no attempt counted, then go."""
    answers = [DeliveryError("HTTP 429", throttled=True, retry_after=5)]

    def script(rows: list[Delivery], key: str) -> Any:
        if answers:
            raise answers.pop()
        return all_ok(rows, key)

    erp = Erp(script)
    rig = Rig(tmp, erp, max_attempts=1)
    rig.add("a", "b", "c")
    rig.worker.start()
    assert rig.status() == dict.fromkeys("abc", model.PENDING)
    assert {r["attempts"] for r in rig.rows().values()} == {0}
    assert rig.worker.reserve(3) == 0  # held: no room promised to new rows either
    rig.add("d")
    rig.worker.wake()
    rig.clock.advance(4.9)
    assert len(erp.calls) == 1
    rig.clock.advance(0.1)
    rig.clock.advance(0.5)
    assert erp.calls[1][0] == ["a", "b", "c"] and erp.calls[1][1] == erp.calls[0][1]
    assert set(rig.status().values()) == {model.DELIVERED}
    assert rig.worker.throttled == 1


def test_rate_limit_spaces_calls(tmp: Path) -> None:
    """2 calls a second, burst 1, concurrency 8: ten rows (one call each) go at 0, 0.5, 1.0 ...
    and the rows not yet allowed stay pending in the store."""
    sent: list[float] = []

    class One:
        async def send(self, delivery: Delivery) -> bytes:
            sent.append(rig.clock.seconds())
            return b"ok"

        def close(self) -> None:
            return None

    rig = Rig(tmp, One(), concurrency=8, rate_per_second=2, rate_burst=1)
    rig.add(*"abcdefghij")
    rig.worker.start()
    assert sent == [0.0]
    assert list(rig.status().values()).count(model.PENDING) == 9
    for _ in range(20):
        rig.clock.advance(0.25)
    assert sent == [i * 0.5 for i in range(10)]
    assert set(rig.status().values()) == {model.DELIVERED}


def test_429s_without_retry_after_never_dead_letter(tmp: Path) -> None:
    """Five 429s in a row without Retry-After: the hold grows (1, 2, 4, 8, 16 s) and the row
    is never dead, though max_attempts is 2; the success is its first counted attempt."""
    left = [5]
    sent: list[float] = []

    class Throttling:
        async def send(self, delivery: Delivery) -> bytes:
            sent.append(rig.clock.seconds())
            if left[0]:
                left[0] -= 1
                raise DeliveryError("HTTP 429", throttled=True)
            return b"ok"

        def close(self) -> None:
            return None

    rig = Rig(tmp, Throttling(), max_attempts=2, initial=1, multiplier=2)
    rig.add("a")
    rig.worker.start()
    for _ in range(40):
        rig.clock.advance(1)
    assert sent == [0, 1, 3, 7, 15, 31]
    assert rig.rows()["a"]["status"] == model.DELIVERED
    assert rig.rows()["a"]["attempts"] == 1


def test_rate_limit_and_bulk_config_mistakes_name_the_field(tmp: Path) -> None:
    """A rate limit with both (or neither of) per_second and per_minute, and bulk calls on an
    ordered destination, are lint errors naming the field; a good one parses into the policy's
    calls a second."""
    from engine.config.project import load_project
    from engine.delivery import rate_of
    from engine.errors import LintFailed

    (tmp / "channels").mkdir()
    (tmp / "routes.yaml").write_text("store: var/wharf.db\n")
    (tmp / "channels/c.yaml").write_text(
        "destinations:\n"
        "  - name: a\n    http: {url: 'http://erp/a'}\n"
        "    rate_limit: {per_second: 5, per_minute: 100}\n"
    )
    with pytest.raises(LintFailed) as failed:
        load_project(tmp)
    assert "c.yaml:4:17: destinations[0].rate_limit: expected exactly one of per_second, " in (
        str(failed.value)
    )
    (tmp / "channels/c.yaml").write_text(
        "destinations:\n"
        "  - name: b\n    http: {url: 'http://erp/b', bulk: {max_items: 5}}\n"
        "    ordered: true\n"
    )
    with pytest.raises(LintFailed) as failed:
        load_project(tmp)
    assert "destinations[0].http.bulk: bulk calls cannot keep an order per key" in str(failed.value)
    (tmp / "channels/c.yaml").write_text(
        "destinations:\n  - name: a\n    http: {url: 'http://erp/a'}\n"
        "    rate_limit: {per_minute: 120, burst: 3}\n"
    )
    (dest,) = load_project(tmp).channels["c"].config.destinations
    assert rate_of(dest.rate_limit) == (2.0, 3)


def test_rows_waiting_for_a_call_are_released_when_the_worker_stops(tmp: Path) -> None:
    """Two rows wait in the buffer for company (max_wait not over) when the worker stops: they
    go back to pending at once, nothing was sent, and a new worker sends them."""
    erp = Erp(all_ok)
    rig = Rig(tmp, erp)
    rig.add("a", "b")
    rig.worker.start()
    assert rig.status() == {"a": model.INFLIGHT, "b": model.INFLIGHT}
    stopped = rig.worker.stop()
    assert stopped.called
    assert rig.status() == {"a": model.PENDING, "b": model.PENDING}
    assert erp.calls == [] and rig.worker.inflight == 0
    rig.clock.advance(5)
    assert erp.calls == []
    rig.worker = DeliveryWorker(
        channel="ch",
        name="erp",
        destination=erp,
        policy=DeliveryPolicy(jitter=0),
        store=rig.book,
        executor=SyncExecutor(),
        clock=rig.clock,
    )
    rig.worker.start()
    rig.clock.advance(0.5)
    assert [items for items, _, _ in erp.calls] == [["a", "b"]]
    assert set(rig.status().values()) == {model.DELIVERED}


def test_a_replayed_dead_row_leaves_its_call(tmp: Path) -> None:
    """A row dead after a bulk call keeps that call's key (which call settled it); replayed by
    a person it goes again in a new call under a new key."""

    refused = [False]

    def script(rows: list[Delivery], key: str) -> list[ItemOutcome]:
        out = []
        for d in rows:
            if d.meta["item"] == "b" and not refused[0]:
                refused[0] = True
                out.append(ItemOutcome(None, DeliveryError("HTTP 422", retryable=False)))
            else:
                out.append(ItemOutcome(b"ok"))
        return out

    erp = Erp(script)
    rig = Rig(tmp, erp)
    rig.add("a", "b")
    rig.worker.start()
    rig.clock.advance(0.5)
    first_key = erp.calls[0][1]
    assert rig.rows()["b"]["status"] == model.DEAD
    assert rig.rows()["b"]["batch_key"] == first_key
    with rig.store.reading() as tx:
        (message_id,) = tx.connection.execute(
            "SELECT message_id FROM outbox WHERE status = 'dead'"
        ).fetchone()
    rig.store.replay(message_id, actor="test", now=0.5)
    rig.worker.wake()
    rig.clock.advance(0.5)
    assert rig.rows()["b"]["status"] == model.DELIVERED
    assert erp.calls[1][0] == ["b"] and erp.calls[1][1] != first_key


def test_a_429_sends_rows_waiting_for_a_call_back_to_pending(tmp: Path) -> None:
    """One call in flight (a, b) while c waits in the buffer; the call is throttled: c goes
    back to pending with a and b (nothing is kept in memory past the hold), and all three go
    when the hold ends."""
    pending: list[defer.Deferred[Any]] = []

    def script(rows: list[Delivery], key: str) -> Any:
        if not pending:
            pending.append(defer.Deferred())
            return pending[0]
        return all_ok(rows, key)

    erp = Erp(script, max_items=2)
    rig = Rig(tmp, erp, concurrency=2)
    rig.add("a", "b", "c")
    rig.worker.start()
    assert rig.status() == dict.fromkeys("abc", model.INFLIGHT)
    pending[0].errback(DeliveryError("HTTP 429", throttled=True, retry_after=10))
    assert rig.status() == dict.fromkeys("abc", model.PENDING)
    assert rig.worker.inflight == 0
    rig.clock.advance(10)
    rig.clock.advance(0.5)
    assert set(rig.status().values()) == {model.DELIVERED}
    assert [items for items, _, _ in erp.calls][1:] == [["a", "b"], ["c"]]
