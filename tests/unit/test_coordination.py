"""Leases of a pickup (engine/coordination.py): taken at a poll, renewed at half time or by the
renewal timer, given up at stop; alone (SQLite) every folder is held without a call."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock

from engine.coordination import Alone, Leases


class Rows:
    """A store's lease rows as one node sees them: ``others`` are held by another node."""

    shared = True
    node = "n1"

    def __init__(self) -> None:
        self.others: set[str] = set()
        self.calls: list[list[str]] = []
        self.released: list[list[str]] = []

    def hold(self, names: Sequence[str], seconds: float) -> defer.Deferred:
        self.calls.append(list(names))
        return defer.succeed({n for n in names if n not in self.others})

    def release(self, names: Sequence[str]) -> defer.Deferred:
        self.released.append(sorted(names))
        return defer.succeed(None)


def result(d: Any) -> Any:
    out: list[Any] = []
    defer.ensureDeferred(d).addBoth(out.append)
    (value,) = out
    if isinstance(value, BaseException):
        raise value
    return value


def test_a_lease_is_asked_for_at_a_poll_only_once_half_of_it_is_gone() -> None:
    rows, clock = Rows(), Clock()
    rows.others = {"b"}
    leases = Leases(rows, 10.0, clock)
    assert result(leases.held(["a", "b"])) == {"a"}
    clock.advance(4)
    assert result(leases.held(["a", "b"])) == {"a"}
    assert rows.calls == [["a", "b"], ["b"]]  # a is fresh: only b is asked for again
    clock.advance(2)  # a: 4 s left of 10
    rows.others = set()
    assert result(leases.held(["a", "b"])) == {"a", "b"}
    assert rows.calls[-1] == ["a", "b"]


def test_the_renewal_timer_renews_what_is_held_and_forgets_what_was_lost() -> None:
    rows, clock = Rows(), Clock()
    leases = Leases(rows, 9.0, clock)
    result(leases.held(["a", "b"]))
    rows.others = {"b"}  # (another node took b: this node was too slow)
    result(leases.renew())
    assert rows.calls[-1] == ["a", "b"]
    result(leases.release())
    assert rows.released == [["a"]]


def test_alone_every_folder_is_held_without_a_call() -> None:
    leases = Leases(Alone(), 10.0, Clock())
    assert result(leases.held(["a", "b"])) == {"a", "b"}
    result(leases.renew())
    result(leases.release())
