"""Running counters of one engine: what came in, what the pipeline made of it, what each
destination answered, and how long the answers took.

Kept in memory as the engine works (a scrape never counts rows of the store for them), in
prometheus-client collectors of the engine's own registry; the alert rules read the same
totals (:meth:`Metrics.totals`) to see rates over a window. Counters start at zero with the
process, as Prometheus expects of a counter.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram, disable_created_metrics
from prometheus_client import Counter as PromCounter

disable_created_metrics()  # a ``_created`` series per label set doubles a scrape for nothing

#: Seconds: from a few milliseconds (an ACK after a group commit) to minutes (a slow ERP).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Ingest outcomes that count as an error of the channel (its sender hears a refusal).
INGEST_ERRORS = ("rejected", "refused")
#: Delivery outcomes that count as a failed attempt.
DELIVERY_FAILURES = ("retry", "dead", "quarantined")


class Metrics:
    """The engine's counters and histograms (see the module docstring)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.ingested = PromCounter(
            "wharf_messages_received",
            "Messages a source handed in, by channel and outcome "
            "(stored, duplicate, conflict, rejected, refused).",
            ["channel", "outcome"],
            registry=r,
        )
        self.processed = PromCounter(
            "wharf_messages_processed",
            "Messages through the pipeline, by channel and its result (filtered, sent: handed to "
            "the destinations, error).",
            ["channel", "status"],
            registry=r,
        )
        self.deliveries = PromCounter(
            "wharf_delivery_attempts",
            "Delivery attempts by channel, destination and outcome "
            "(sent, retry, held, dead, quarantined).",
            ["channel", "destination", "outcome"],
            registry=r,
        )
        self.ack_latency = Histogram(
            "wharf_ack_latency_seconds",
            "From the bytes at the front door to the source's answer (after the commit).",
            ["channel"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.delivery_latency = Histogram(
            "wharf_delivery_latency_seconds",
            "One call to a destination, until its answer.",
            ["channel", "destination"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.canary_latency = Gauge(
            "wharf_canary_latency_seconds",
            "The last canary's end-to-end latency: sent until every delivery settled.",
            ["channel"],
            registry=r,
        )
        self.canary_last = Gauge(
            "wharf_canary_last_arrival_timestamp_seconds",
            "When the last canary of the channel came through (Unix time).",
            ["channel"],
            registry=r,
        )
        self._totals: Counter[tuple[str, ...]] = Counter()
        self._children: dict[tuple[Any, ...], Any] = {}

    # -- what the runtime reports --------------------------------------------------------------
    def ingest(self, channel: str, outcome: str, seconds: float) -> None:
        """A source's message met the front door; ``seconds`` until its answer."""
        self._child(self.ingested, channel, outcome).inc()
        self._child(self.ack_latency, channel).observe(max(seconds, 0.0))
        self._totals[("in", channel)] += 1
        if outcome in INGEST_ERRORS:
            self._totals[("error", channel)] += 1

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once (every message counts on the hot path)."""
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def process(self, channel: str, status: str) -> None:
        """The pipeline finished a message with ``status``."""
        self._child(self.processed, channel, status).inc()
        if status == "error":
            self._totals[("error", channel)] += 1

    def deliver(self, channel: str, destination: str, outcome: str, n: int, seconds: float) -> None:
        """``n`` deliveries had ``outcome`` after a call of ``seconds``."""
        self.deliveries.labels(channel, destination, outcome).inc(n)
        self.delivery_latency.labels(channel, destination).observe(max(seconds, 0.0))
        self._totals[("attempt", channel, destination)] += n
        if outcome in DELIVERY_FAILURES:
            self._totals[("failed", channel, destination)] += n
        if outcome in ("dead", "quarantined"):
            self._totals[("dead", channel, destination)] += n

    def canary(self, channel: str, seconds: float, at: float) -> None:
        """A canary of ``channel`` came through in ``seconds``."""
        self.canary_latency.labels(channel).set(seconds)
        self.canary_last.labels(channel).set(at)

    # -- what the alert rules read ---------------------------------------------------------------
    def totals(self) -> dict[tuple[str, ...], int]:
        """Running totals: ``("in", channel)``, ``("error", channel)``, ``("attempt", channel,
        destination)``, ``("failed", ...)``, ``("dead", ...)``; a copy."""
        return dict(self._totals)


def exposition(registry: Any) -> bytes:
    """The Prometheus text format of ``registry``."""
    from prometheus_client import generate_latest

    return generate_latest(registry)
