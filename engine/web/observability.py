"""Health, metrics, alerts and SLOs over HTTP: the resources the admin listener mounts.

``resources(engine)`` maps a path to a twisted.web resource:

- ``healthz``: 200 while the process answers (alive);
- ``readyz``: 200 when every listener is bound, the store takes a write and no destination has
  failed every attempt for longer than ``destination_failing_limit``; else 503 naming what is
  not ready (JSON either way);
- ``metrics``: Prometheus text: the engine's running counters and histograms
  (``engine.runtime.metrics``), and gauges read at scrape time from the store's indexes (queue
  depth and oldest age per destination, open work items by kind and age, the business
  counters) and the engine's memory (listeners, failing destinations, firing alerts, SLOs);
- ``api/alerts``, ``api/slos``: JSON of the alert rules' state and the objectives.

Everything is read through the engine's and the store's public reads, never a table; store
reads run on a reactor thread, never the reactor's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.web import resource, server

from engine.runtime.nodes import node_view

log = Logger(namespace="wharf.web")

PROMETHEUS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
#: Business counters read from open work items, by the kind that holds them.
BUSINESS_WORK_ITEMS = {
    "unbilled_events": "UNBILLED_USAGE",
    "held_invoices": "INVOICE_HELD",
    "unmatched_receipts": "RECEIPT_UNMATCHED",
}


def resources(engine: Any) -> dict[str, resource.IResource]:
    """The observability resources of ``engine`` by path (see the module docstring)."""
    return {
        "healthz": Healthz(),
        "readyz": Readyz(engine),
        "metrics": MetricsPage(engine),
        "api/alerts": JsonState(lambda: _alerts_state(engine)),
        "api/slos": JsonState(lambda: _slos_state(engine)),
    }


class _Async(resource.Resource):
    """A leaf answering GET from a coroutine (``answer(request) -> (code, type, body)``)."""

    isLeaf = True

    def render_GET(self, request: server.Request) -> Any:
        gone = [False]
        request.notifyFinish().addErrback(lambda _: gone.__setitem__(0, True))

        def done(result: tuple[int, bytes, bytes]) -> None:
            if gone[0]:
                return
            code, ctype, body = result
            request.setResponseCode(code)
            request.setHeader(b"Content-Type", ctype)
            request.setHeader(b"Cache-Control", b"no-store")
            request.write(body)
            request.finish()

        def failed(f: Any) -> None:
            log.failure("{path} failed", f, path=request.path.decode("ascii", "replace"))
            done((500, b"application/json", _json({"error": f.getErrorMessage()})))

        defer.ensureDeferred(self.answer(request)).addCallbacks(done, failed)
        return server.NOT_DONE_YET

    async def answer(self, request: server.Request) -> tuple[int, bytes, bytes]:
        raise NotImplementedError


class Healthz(resource.Resource):
    """200 ``ok`` while the reactor answers."""

    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        return b"ok\n"


class Readyz(_Async):
    """200 when ready, 503 naming each check that failed (see the module docstring)."""

    def __init__(self, engine: Any) -> None:
        super().__init__()
        self.engine = engine

    async def answer(self, request: server.Request) -> tuple[int, bytes, bytes]:
        report = await readiness(self.engine)
        return (200 if report["ready"] else 503), b"application/json", _json(report)


async def readiness(engine: Any) -> dict[str, Any]:
    """``{"ready": bool, "problems": [...], "listeners": {...}, "store_writable": bool,
    "destinations": [...]}``."""
    problems = []
    listeners = engine.listener_states()
    for key, bound in sorted(listeners.items()):
        if not bound:
            problems.append(f"listener {key} is not bound")
    try:
        writable = bool(await engine.store_writable())
    except Exception as exc:
        writable = False
        problems.append(f"the store cannot be reached: {type(exc).__name__}: {exc}")
    else:
        if not writable:
            problems.append("the store does not take a write")
    limit = engine.project.settings.destination_failing_limit
    destinations = engine.destination_states()
    for d in destinations:
        if d["failing_for"] > limit:
            problems.append(
                f"destination {d['channel']}/{d['destination']} has failed every attempt for "
                f"{d['failing_for']:.0f}s (limit {limit:g}s)"
            )
    return {
        "ready": not problems,
        "problems": problems,
        "listeners": listeners,
        "store_writable": writable,
        "destinations": destinations,
    }


class MetricsPage(_Async):
    """Prometheus text: the running counters, then the gauges read now."""

    def __init__(self, engine: Any) -> None:
        super().__init__()
        self.engine = engine

    async def answer(self, request: server.Request) -> tuple[int, bytes, bytes]:
        return 200, PROMETHEUS_TYPE, await scrape(self.engine)


async def scrape(engine: Any) -> bytes:
    """One scrape of ``engine`` (the store's gauges read on a reactor thread)."""
    reactor = engine.reactor
    reads = await threads.deferToThreadPool(
        reactor, reactor.getThreadPool(), store_gauges, engine.store, engine.registry
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Gauges(list(_gauges(engine, reads, time.time()))))
    return generate_latest(engine.metrics.registry) + generate_latest(registry)


def store_gauges(store: Any, registry: Any) -> dict[str, Any]:
    """What a scrape reads from the store: queues, open work items, the domains' gauges. Each
    is an indexed read (bench/metrics_scrape.py)."""
    domains: dict[str, float] = {}
    with store.reading() as tx:
        for domain in registry.domains():
            gauges = getattr(domain, "gauges", None)
            if gauges is None:
                continue
            try:
                domains.update(gauges(tx))
            except Exception as exc:  # a domain's tables missing: its gauges left out
                log.warn(
                    "metrics: {domain} gauges failed: {error}", domain=domain.name, error=str(exc)
                )
    return {
        "queues": store.queue_stats(),
        "work_items": store.work_item_stats(),
        "domains": domains,
        "nodes": store.nodes(),
    }


def _gauges(engine: Any, reads: dict[str, Any], now: float) -> Any:
    depth = GaugeMetricFamily(
        "wharf_queue_depth",
        "Deliveries waiting (pending or in flight) per destination.",
        labels=["channel", "destination"],
    )
    oldest = GaugeMetricFamily(
        "wharf_queue_oldest_age_seconds",
        "Age of the oldest waiting delivery per destination.",
        labels=["channel", "destination"],
    )
    queues = reads["queues"]
    for (channel, dest), _ in sorted(engine.workers.items()):
        queues.setdefault((channel, dest), {"pending": 0, "inflight": 0, "oldest_at": None})
    for (channel, dest), q in sorted(queues.items()):
        depth.add_metric([channel, dest], q["pending"] + q["inflight"])
        age = now - q["oldest_at"] if q["oldest_at"] is not None else 0.0
        oldest.add_metric([channel, dest], max(0.0, age))
    yield depth
    yield oldest
    items = GaugeMetricFamily("wharf_work_items_open", "Open work items by kind.", labels=["kind"])
    item_age = GaugeMetricFamily(
        "wharf_work_items_oldest_age_seconds",
        "Age of the oldest open work item by kind.",
        labels=["kind"],
    )
    for kind, w in sorted(reads["work_items"].items()):
        items.add_metric([kind], w["open"])
        item_age.add_metric([kind], max(0.0, now - w["oldest_at"]) if w["oldest_at"] else 0.0)
    yield items
    yield item_age
    for name, kind in BUSINESS_WORK_ITEMS.items():
        w = reads["work_items"].get(kind)
        yield GaugeMetricFamily(
            f"wharf_{name}", f"Open {kind} work items.", value=w["open"] if w else 0
        )
    for name, value in sorted(reads["domains"].items()):
        yield GaugeMetricFamily(f"wharf_{name}", f"{name.replace('_', ' ')}.", value=value)
    up = GaugeMetricFamily(
        "wharf_listener_up", "1 while the listener is bound.", labels=["listener"]
    )
    for key, bound in sorted(engine.listener_states().items()):
        up.add_metric([key], 1.0 if bound else 0.0)
    yield up
    failing = GaugeMetricFamily(
        "wharf_destination_failing_seconds",
        "How long every attempt of the destination has failed (0 while healthy).",
        labels=["channel", "destination"],
    )
    for d in engine.destination_states():
        failing.add_metric([d["channel"], d["destination"]], d["failing_for"])
    yield failing
    firing = GaugeMetricFamily(
        "wharf_alerts_firing", "Subjects firing per alert rule.", labels=["rule"]
    )
    if engine.alerts is not None:
        counts: dict[str, int] = {r.name: 0 for r in engine.alerts.rules.rules}
        for rule, _subject in engine.alerts.rules.firing:
            counts[rule] = counts.get(rule, 0) + 1
        for rule, n in sorted(counts.items()):
            firing.add_metric([rule], n)
    yield firing
    yield from _node_families(reads["nodes"], now)
    if engine.slos is not None:
        yield from engine.slos.metric_families()


def _node_families(rows: list[dict[str, Any]], now: float) -> Any:
    """The node registry: one ``wharf_node_info`` per node (its configuration version, and
    whether it differs from the newest or missed its heartbeats) and its last-seen age."""
    info = GaugeMetricFamily(
        "wharf_node_info",
        "1 per node on this store: its configuration version; differs/stale 1 when flagged.",
        labels=["node", "config_version", "differs", "stale"],
    )
    seen = GaugeMetricFamily(
        "wharf_node_last_seen_seconds",
        "Seconds since the node's last heartbeat.",
        labels=["node"],
    )
    for n in node_view(rows, now):
        flags = [str(int(n["differs"])), str(int(n["stale"]))]
        info.add_metric([n["node"], n["config_version"], *flags], 1.0)
        seen.add_metric([n["node"]], n["age"])
    yield info
    yield seen


class _Gauges:
    """A collector of families made before the scrape (no store read inside collect)."""

    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> Any:
        return iter(self.families)


class JsonState(_Async):
    """JSON of ``state()`` (a value or a Deferred)."""

    def __init__(self, state: Callable[[], Any]) -> None:
        super().__init__()
        self.state = state

    async def answer(self, request: server.Request) -> tuple[int, bytes, bytes]:
        value = await defer.maybeDeferred(self.state)
        return 200, b"application/json", _json(value)


def _alerts_state(engine: Any) -> dict[str, Any]:
    if engine.alerts is None:
        return {"rules": [], "firing": [], "recent": [], "configured": False}
    return engine.alerts.state() | {"configured": True}


def _slos_state(engine: Any) -> Any:
    if engine.slos is None:
        return {"slos": [], "configured": False}
    return defer.ensureDeferred(engine.slos.report())


def _json(value: Any) -> bytes:
    return json.dumps(value, indent=1, sort_keys=True, default=str).encode() + b"\n"
