"""A channel's canary end to end through real sockets with the sandbox, and no real effect:
the ledger channel's canary goes in over its own MLLP port, is decoded, transformed and booked
by the ledger (then undone), and its ERP issue (HTTP, ``X-Wharf-Test: true``) and billing
charge (MLLP, MSH-11 = T) reach the sandbox, which checks and answers them and records
nothing. The ledger has no event, charge or stock move afterwards; the canary's latency is a
metric; when the ERP is gone the canary goes missing and a ``canary_missing`` rule fires once."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, reactor
from twisted.trial import unittest

from engine.runtime import Engine
from engine.runtime.canary import is_test, mark_test
from engine.sandbox.service import SandboxService
from tests.integration.observe_helpers import (
    ROOT,
    Recorder,
    get,
    get_json,
    listen,
    make_project,
    metric,
    serve_observability,
    url,
    wait_for,
)

CHANNEL = """\
source:
  mllp: {{listen: 'tcp:0:interface=127.0.0.1'}}
codec: {{hl7v2: {{}}}}
transformer:
  - transform: hl7_usage_to_ledger
ledger:
  issue: erp
  charge: billing
  onhand: onhand
destinations:
  - name: erp
    http: {{url: '{erp}/inventory/issues'}}
    retry: {{max_attempts: 3, initial: 50ms, max_delay: 100ms}}
  - name: billing
    mllp: {{host: 127.0.0.1, port: {billing}}}
    retry: {{max_attempts: 3, initial: 50ms, max_delay: 100ms}}
canary:
  every: 200ms
  input: samples/hl7/dft_p03_stent_cath.hl7
  expect_within: 2s
"""

ROUTES = """\
alerts:
  interval: 100ms
  notify: [{{webhook: {{url: '{hook}'}}}}]
  rules:
    - {{name: canaries, when: canary_missing}}
"""


@pytest.mark.integration
class CanaryTests(unittest.TestCase):
    def setUp(self) -> Any:
        self.base = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.base, True)
        self.sandbox = SandboxService(
            self.base / "sandbox.db",
            http_port=0,
            mllp_port=0,
            reactor=reactor,
            seed=ROOT / "mappings/onhand.csv",
        )
        self.sandbox.start()
        self.addCleanup(lambda: defer.ensureDeferred(self.sandbox.stop()))
        self.hook = Recorder(200)
        hook_port = listen(self.hook)
        self.addCleanup(hook_port.stopListening)
        channel = CHANNEL.format(erp=self.sandbox.http_url, billing=self.sandbox.mllp_port)
        root = make_project(
            self.base, ROUTES.format(hook=url(hook_port, "hook")), {"usage": channel}
        )
        self.engine = Engine(root, reactor)
        self.addCleanup(lambda: defer.ensureDeferred(self.engine.stop()))
        return defer.ensureDeferred(self.engine.start())

    def sandbox_counts(self) -> dict[str, Any]:
        return self.sandbox.state.counts()

    def ledger(self, sql: str) -> Any:
        with self.engine.store.reading() as rd:
            return rd.connection.execute(sql).fetchone()[0]

    @defer.inlineCallbacks
    def test_canaries_run_the_whole_path_and_leave_no_record(self) -> Any:
        before = self.sandbox_counts()
        admin = serve_observability(self.engine)
        self.addCleanup(admin.stopListening)
        canaries = self.engine.canaries
        yield defer.ensureDeferred(
            wait_for(
                lambda: (
                    canaries.seen.get("usage", {}).get("last_arrival")
                    and self.sandbox_counts().get("test_requests", 0) >= 6
                ),
                "three canaries through (six test requests at the sandbox)",
            )
        )
        after = self.sandbox_counts()
        changed = {k: (before.get(k), v) for k, v in after.items() if before.get(k) != v}
        self.assertEqual(set(changed), {"test_requests"}, changed)  # nothing else recorded
        # each canary was booked and undone: no event, charge or stock move in the ledger
        for table in ("consumption_events", "charges", "inventory_transactions"):
            self.assertEqual(self.ledger(f"SELECT COUNT(*) FROM {table}"), 0, table)
        # its deliveries went out marked test and were answered
        rows = self.engine.store.search(channel="usage", limit=3)
        self.assertTrue(all(r.peer.startswith("127.0.0.1") for r in rows), rows)  # over MLLP
        deliveries = self.engine.store.deliveries_for(rows[-1].id)
        self.assertEqual(
            sorted((d["destination"], d["status"], d["meta"].get("test")) for d in deliveries),
            [("billing", "sent", True), ("erp", "sent", True)],
        )
        erp = json.loads(
            deliveries[[d["destination"] for d in deliveries].index("erp")]["response"]
        )
        self.assertIn("id", erp)  # the sandbox's answer, as for a real issue
        _, text = yield defer.ensureDeferred(get(admin, "metrics"))
        self.assertGreater(metric(text, "wharf_canary_latency_seconds", channel="usage"), 0)
        self.assertEqual(self.hook.posts, [])  # nothing missing so far

        # the sandbox goes away: the canary stops arriving, the rule fires once
        yield defer.ensureDeferred(self.sandbox.stop())
        yield defer.ensureDeferred(
            wait_for(lambda: self.hook.posts, "the canary_missing alert", 10)
        )
        _, state = yield defer.ensureDeferred(get_json(admin, "api/alerts"))
        self.assertEqual(
            [(f["rule"], f["subject"]) for f in state["firing"]], [("canaries", "usage")]
        )
        evaluations = self.engine.alerts.evaluations  # failing canaries go on: no second post
        yield defer.ensureDeferred(
            wait_for(lambda: self.engine.alerts.evaluations >= evaluations + 10, "10 evaluations")
        )
        self.assertEqual(len(self.hook.posts), 1)
        body = json.loads(self.hook.posts[0]["body"])
        self.assertEqual(
            [(a["subject"], a["state"]) for a in body["alerts"]], [("usage", "firing")]
        )


def test_marks_and_recognises_test_messages() -> None:
    hl7 = (ROOT / "samples/hl7/dft_p03_stent_cath.hl7").read_bytes()
    assert not is_test(hl7)
    marked = mark_test(hl7, 7)
    assert is_test(marked)
    msh = marked.split(b"\r")[0].split(b"|")
    assert (msh[9], msh[10]) == (b"CANARY-7", b"T")
    x12 = (ROOT / "samples/x12/850_4010.x12").read_bytes()
    assert not is_test(x12)
    marked = mark_test(x12, 42)
    assert is_test(marked)
    isa = marked.split(b"~")[0].split(b"*")
    assert (isa[13], isa[15]) == (b"000000042", b"T")
    assert b"IEA*1*000000042" in marked
    fhir = next((ROOT / "samples/fhir").glob("*.json")).read_bytes()
    assert not is_test(fhir)
    doc = json.loads(mark_test(fhir, 3))
    assert {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HTEST"} in (
        doc["meta"]["tag"]
    )
    assert is_test(json.dumps(doc).encode())
