"""Service level objectives (``routes.yaml`` ``slos:``): measured, with the error budget left and
the burn rate that ``slo_burn`` alert rules watch.

Each thing an objective counts is judged once, when its time is up (``within`` after it
started), in the order they started, from an index of start times: a message received (good
when it is ``sent``, every delivery settled, within ``within`` of ingest; filtered ones do not
count), a chargeable usage event booked in the ledger (good when its charge was accepted within
``within``: reconciliation completeness), a work item opened (good when closed or resolved
within ``within``). A job reads only what came due since its last turn (a cursor per
objective), so its cost follows the traffic, not the store; after a start the first turn
reads the objective's whole window once. Judgements are kept in memory in time buckets (their
good and total counts), over ``window``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from twisted.internet import threads
from twisted.logger import Logger

log = Logger(namespace="wharf.slos")

#: Rows read per query while catching up.
CHUNK = 5000
#: Buckets per burn window (the burn rate's resolution).
BUCKETS_PER_BURN_WINDOW = 12


class Objective:
    """One objective's judgements and what they add up to."""

    def __init__(self, config: Any, now: float) -> None:
        self.config = config
        self.cursor = now - config.window - config.within  # start times judged up to here
        self.bucket = config.burn_window / BUCKETS_PER_BURN_WINDOW
        self.buckets: deque[list[float]] = deque()  # [start, good, total], oldest first

    def add(self, due: float, good: bool) -> None:
        start = due - due % self.bucket
        if not self.buckets or self.buckets[-1][0] < start:
            self.buckets.append([start, 0.0, 0.0])
        entry = self.buckets[-1]  # (judged in start order: never before the newest bucket)
        entry[1] += 1.0 if good else 0.0
        entry[2] += 1.0

    def counts(self, since: float) -> tuple[float, float]:
        good = total = 0.0
        for start, g, t in reversed(self.buckets):
            if start + self.bucket <= since:
                break
            good, total = good + g, total + t
        return good, total

    def forget(self, now: float) -> None:
        while self.buckets and self.buckets[0][0] + self.bucket <= now - self.config.window:
            self.buckets.popleft()

    def report(self, now: float) -> dict[str, Any]:
        c = self.config
        good, total = self.counts(now - c.window)
        bgood, btotal = self.counts(now - c.burn_window)
        budget = 1.0 - c.objective
        measurement = good / total if total else None
        remaining = burn = None
        if total:
            remaining = 1.0 - ((total - good) / total) / budget if budget > 0 else None
        if btotal and budget > 0:
            burn = ((btotal - bgood) / btotal) / budget
        return {
            "name": c.name,
            "measure": c.measure,
            "objective": c.objective,
            "within": c.within,
            "window": c.window,
            "good": good,
            "total": total,
            "measurement": measurement,
            "error_budget_remaining": remaining,
            "burn_rate": burn,
            "fast_burn": c.fast_burn,
            "burn_window": c.burn_window,
        }


class Objectives:
    """Every objective of ``routes.yaml`` (the engine's ``slos``); ``measure()`` is its job.

    ``clock`` is the wall clock the objectives are judged against (when a thing's time is up,
    what the window and the burn window hold); tests hand in their own."""

    def __init__(
        self,
        configs: Any,
        store: Any,
        registry: Any,
        reactor: Any,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock
        now = clock()
        self.objectives = [Objective(c, now) for c in configs]
        self.store = store
        self.registry = registry
        self.reactor = reactor
        self.measured = 0

    @property
    def interval(self) -> float:
        """How often the job runs: a bucket of the finest burn window (a minute at most)."""
        return min([60.0] + [o.bucket for o in self.objectives])

    async def measure(self) -> int:
        """Judge what came due since the last turn (on a reactor thread); returns how many."""
        n = await threads.deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), self._judge_all, self.clock()
        )
        self.measured += 1
        return n

    def _judge_all(self, now: float) -> int:
        n = 0
        for objective in self.objectives:
            try:
                n += self._judge(objective, now)
            except Exception as exc:
                log.error(
                    "objective {name}: cannot measure: {error}",
                    name=objective.config.name,
                    error=f"{type(exc).__name__}: {exc}",
                )
            objective.forget(now)
        return n

    def _judge(self, objective: Objective, now: float) -> int:
        c = objective.config
        until = now - c.within
        n = 0
        while objective.cursor < until:
            rows = self._rows(c, objective.cursor, until)
            full = len(rows) >= CHUNK
            if full:  # stop before the last start time: its equals may be in the next chunk
                last = rows[-1][0]
                rows = [r for r in rows if r[0] < last]
            for at, subject, good in rows:
                if self._counts(c, subject):
                    objective.add(at + c.within, good)
                    n += 1
            if not full:
                objective.cursor = until
            elif rows:
                objective.cursor = rows[-1][0]
            else:  # a whole chunk at one instant: take it as it is
                objective.cursor = last
        return n

    def _rows(self, c: Any, since: float, until: float) -> list[tuple[float, str, bool]]:
        if c.measure == "event_latency":
            return self.store.judged_messages(since, until, c.within, CHUNK)
        if c.measure == "work_item_resolution":
            return self.store.judged_work_items(since, until, c.within, CHUNK)
        with self.store.reading() as tx:
            for domain in self.registry.domains():
                judged = getattr(domain, "judged", None)
                rows = judged(tx, c.measure, since, until, c.within, CHUNK) if judged else None
                if rows is not None:
                    return [(at, "", good) for at, good in rows]
        return []

    @staticmethod
    def _counts(c: Any, subject: str) -> bool:
        if c.measure == "event_latency" and c.channels:
            return subject in c.channels
        if c.measure == "work_item_resolution" and c.kinds:
            return subject in c.kinds
        return True

    def state(self, now: float | None = None) -> dict[str, Any]:
        now = self.clock() if now is None else now
        return {"slos": [o.report(now) for o in self.objectives], "measured": self.measured}

    async def report(self) -> dict[str, Any]:
        """For /api/slos."""
        return self.state()

    def metric_families(self) -> Iterator[Any]:
        reports = self.state()["slos"]
        names = {
            "objective": "The objective (the good share aimed at).",
            "measurement": "The good share measured over the objective's window.",
            "error_budget_remaining": "Share of the error budget left (negative: overspent).",
            "burn_rate": "Error share over the burn window divided by the budget.",
        }
        for key, text in names.items():
            family = GaugeMetricFamily(f"wharf_slo_{key}", text, labels=["slo"])
            for r in reports:
                if r[key] is not None:
                    family.add_metric([r["name"]], r[key])
            yield family
