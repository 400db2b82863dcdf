"""A domain job's findings are logged at the level the job gives them: business exceptions that
wait for a person at warn, a job's normal work at info; never error, which is for the engine's
own faults (an operator's log alerting pages on error)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from twisted.internet import defer
from twisted.logger import LogLevel, globalLogPublisher

from engine.domains.ledger.domain import LedgerDomain
from engine.interfaces import Job
from engine.runtime.services import domain_job


class Tx:
    def try_lock(self, name: str) -> bool:
        return True


class Store:
    @contextmanager
    def transaction(self, what: str, durable: bool = True) -> Iterator[Tx]:
        yield Tx()


class Executor:
    def submit(self, fn: Any, *args: Any) -> defer.Deferred:
        return defer.succeed(fn(*args))


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def levels(events: list[dict[str, Any]], text: str) -> list[LogLevel]:
    return [e["log_level"] for e in events if text in e.get("log_format", "")]


@pytest.mark.parametrize(
    ("level", "expected"),
    [("warn", LogLevel.warn), ("info", LogLevel.info), ("error", LogLevel.error)],
)
def test_a_jobs_findings_are_logged_at_its_level(
    logged: list[dict[str, Any]], level: str, expected: LogLevel
) -> None:
    job = Job("findings", 60.0, lambda tx, now: 3, alert="findings: {n} found", alert_level=level)
    assert domain_job(job, store=Store(), executor=Executor(), clock=None).run().result == 3
    assert levels(logged, "findings: {n} found") == [expected]


def test_nothing_found_is_not_logged(logged: list[dict[str, Any]]) -> None:
    job = Job("quiet", 60.0, lambda tx, now: 0, alert="quiet: {n} found")
    domain_job(job, store=Store(), executor=Executor(), clock=None).run()
    assert levels(logged, "quiet: {n} found") == []


def test_the_ledgers_jobs_warn_of_unbilled_usage_and_inform_of_a_par_sweep() -> None:
    class Settings:
        unbilled_after = 4 * 3600.0
        par_sweep = 300.0

    class Binding:
        class routes:
            requisition = "erp_requisitions"

        policies = {("LOC", "ITEM"): object()}

    jobs = {j.name: j for j in LedgerDomain().jobs(Settings(), {"usage_ledger": Binding()})}
    assert (jobs["unbilled usage"].alert_level, jobs["par sweep"].alert_level) == ("warn", "info")
