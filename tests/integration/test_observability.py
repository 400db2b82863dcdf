"""/healthz, /readyz and /metrics of a running engine, served on a real loopback port: a
DFT^P03 over MLLP to an ERP that is a real HTTP server; the counters, histograms and queue
gauges move with it; a listener that stops and an ERP that fails every attempt past
``destination_failing_limit`` make /readyz answer 503 naming them."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, reactor
from twisted.trial import unittest

from engine.runtime import Engine
from tests.integration.observe_helpers import (
    CHANNEL,
    SAMPLE,
    Recorder,
    get,
    get_json,
    listen,
    make_project,
    metric,
    send_mllp,
    serve_observability,
    url,
    wait_for,
)


@pytest.mark.integration
class ObservabilityTests(unittest.TestCase):
    def setUp(self) -> Any:
        self.base = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.base, True)
        self.erp = Recorder(201)
        self.erp_port = listen(self.erp)
        self.addCleanup(self.erp_port.stopListening)

    async def start(self, routes: str = "", erp: str | None = None) -> Engine:
        channel = CHANNEL.format(erp=erp or url(self.erp_port).rstrip("/"), extra="")
        root = make_project(self.base, routes, {"usage": channel})
        engine = Engine(root, reactor)
        await engine.start()
        self.addCleanup(lambda: defer.ensureDeferred(engine.stop()))
        self.admin = serve_observability(engine)
        self.addCleanup(self.admin.stopListening)
        return engine

    def mllp_port(self, engine: Engine) -> int:
        return engine.sources["usage"].port.getHost().port

    @defer.inlineCallbacks
    def test_health_readiness_and_metrics_follow_a_message(self) -> Any:
        engine = yield defer.ensureDeferred(self.start())
        code, body = yield defer.ensureDeferred(get(self.admin, "healthz"))
        self.assertEqual((code, body), (200, b"ok\n"))
        code, ready = yield defer.ensureDeferred(get_json(self.admin, "readyz"))
        self.assertEqual(code, 200, ready)
        self.assertEqual(ready["listeners"], {"usage": True})
        self.assertTrue(ready["store_writable"])

        ack = yield defer.ensureDeferred(send_mllp(self.mllp_port(engine), SAMPLE))
        self.assertIn(b"MSA|AA", ack)
        yield defer.ensureDeferred(wait_for(lambda: self.erp.posts, "the ERP's POST"))

        async def settled() -> bytes | None:
            _, text = await get(self.admin, "metrics")
            sent = metric(text, "wharf_delivery_attempts_total", destination="erp", outcome="sent")
            return text if sent == 1.0 else None

        text = yield defer.ensureDeferred(wait_for(settled, "the delivery counted"))
        self.assertEqual(
            metric(text, "wharf_messages_received_total", channel="usage", outcome="stored"), 1.0
        )
        self.assertEqual(
            metric(text, "wharf_messages_processed_total", channel="usage", status="sent"), 1.0
        )
        self.assertEqual(metric(text, "wharf_ack_latency_seconds_count", channel="usage"), 1.0)
        self.assertEqual(
            metric(text, "wharf_delivery_latency_seconds_count", destination="erp"), 1.0
        )
        self.assertEqual(metric(text, "wharf_queue_depth", destination="erp"), 0.0)
        self.assertEqual(metric(text, "wharf_listener_up", listener="usage"), 1.0)
        for name in (
            "wharf_unbilled_events",
            "wharf_held_invoices",
            "wharf_unmatched_receipts",
            "wharf_open_requisitions",
        ):
            self.assertEqual(metric(text, name), 0.0, name)

        # the listener stops: not ready, and the gauge says so
        yield defer.ensureDeferred(engine.sources["usage"].stop())
        code, ready = yield defer.ensureDeferred(get_json(self.admin, "readyz"))
        self.assertEqual(code, 503)
        self.assertEqual(ready["problems"], ["listener usage is not bound"])
        _, text = yield defer.ensureDeferred(get(self.admin, "metrics"))
        self.assertEqual(metric(text, "wharf_listener_up", listener="usage"), 0.0)

    @defer.inlineCallbacks
    def test_a_destination_failing_past_its_limit_is_not_ready_and_queues_age(self) -> Any:
        self.erp.code = 503
        engine = yield defer.ensureDeferred(self.start("destination_failing_limit: 300ms\n"))
        yield defer.ensureDeferred(send_mllp(self.mllp_port(engine), SAMPLE))

        async def not_ready() -> Any:
            code, ready = await get_json(self.admin, "readyz")
            return ready if code == 503 else None

        ready = yield defer.ensureDeferred(wait_for(not_ready, "/readyz to answer 503"))
        (problem,) = ready["problems"]
        self.assertIn("destination usage/erp has failed every attempt for", problem)
        self.assertIn("(limit 0.3s)", problem)
        self.assertGreaterEqual(len(self.erp.posts), 2)
        _, text = yield defer.ensureDeferred(get(self.admin, "metrics"))
        self.assertEqual(metric(text, "wharf_queue_depth", destination="erp"), 1.0)
        self.assertGreater(metric(text, "wharf_queue_oldest_age_seconds", destination="erp"), 0)
        self.assertGreaterEqual(
            metric(text, "wharf_delivery_attempts_total", destination="erp", outcome="retry"), 2
        )
        # the ERP is back: ready again
        self.erp.code = 201

        async def ready_again() -> bool:
            code, _ = await get_json(self.admin, "readyz")
            return code == 200

        yield defer.ensureDeferred(wait_for(ready_again, "/readyz to answer 200 again"))

    @defer.inlineCallbacks
    def test_objectives_are_measured_and_served(self) -> Any:
        """An event-latency objective (90% settled within 1h), judged against the objectives'
        own clock, moved by the test past the hour: a message the ERP took is good, one the
        ERP answered 503 is still waiting and is bad; /api/slos and the metrics show the
        measurement, the budget overspent and the burn rate. No real elapsed time decides a
        judgement: each is the arithmetic of stored times against the objective."""
        routes = (
            "slos:\n  - {name: delivery, measure: event_latency, objective: 0.9, within: 1h,"
            " window: 2h, burn_window: 2h, fast_burn: 2}\n"
        )
        engine = yield defer.ensureDeferred(self.start(routes))
        shift = [0.0]
        engine.slos.clock = lambda: time.time() + shift[0]
        port = self.mllp_port(engine)
        yield defer.ensureDeferred(send_mllp(port, SAMPLE))
        yield defer.ensureDeferred(wait_for(lambda: self.erp.posts, "the ERP's POST"))

        def sent() -> bool:
            return engine.store.message_counters().get("usage", {}).get("sent", 0) == 1

        yield defer.ensureDeferred(wait_for(sent, "the first message settled"))
        self.erp.code = 503
        ack = yield defer.ensureDeferred(send_mllp(port, SAMPLE.replace(b"CATH-55001", b"CATH-2")))
        self.assertIn(b"MSA|AA", ack)
        # before their hour is up nothing is judged, however long the deliveries took
        yield defer.ensureDeferred(engine.slos.measure())
        (slo,) = engine.slos.state()["slos"]
        self.assertEqual((slo["good"], slo["total"], slo["measurement"]), (0, 0, None))

        shift[0] = 3600.0 + 60.0  # both messages' hour is up
        judged = yield defer.ensureDeferred(engine.slos.measure())
        self.assertEqual(judged, 2)
        _, body = yield defer.ensureDeferred(get_json(self.admin, "api/slos"))
        (slo,) = body["slos"]
        self.assertEqual((slo["good"], slo["total"], slo["measurement"]), (1, 2, 0.5))
        self.assertAlmostEqual(slo["error_budget_remaining"], 1 - 0.5 / 0.1)
        self.assertAlmostEqual(slo["burn_rate"], 0.5 / 0.1)
        # judged once: another turn at the same time adds nothing
        again = yield defer.ensureDeferred(engine.slos.measure())
        self.assertEqual(again, 0)
        _, text = yield defer.ensureDeferred(get(self.admin, "metrics"))
        self.assertEqual(metric(text, "wharf_slo_measurement", slo="delivery"), 0.5)
        self.assertEqual(metric(text, "wharf_slo_objective", slo="delivery"), 0.9)
        self.assertAlmostEqual(metric(text, "wharf_slo_burn_rate", slo="delivery"), 5.0)
