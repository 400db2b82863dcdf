"""One DFT^P03 from the MLLP source to the ERP issue and the billing charge: three commits
(ingest, processing, delivery), and the store never calls into a domain.

The message is sent by a real MLLP client to the shipped ``usage_ledger`` channel (its
requisition route left out, so the message has exactly the two effects). Every COMMIT the
store's SQLite connections run is counted with SQLite's own trace, and every Python call made
while the message goes through is watched: a call into ``engine.domains`` must come from the
runtime (the processor booking inside the commit it opened, the delivery book hearing the
outcome), never from ``engine.store``.

- With in-process destinations that answer together, the count is exactly 3: the ingest
  (group commit), the pipeline's result with the ledger's booking and both deliveries claimed
  for their workers, and both outcomes with the ledger's charge status.
- With the sandbox ERP (HTTP) and billing (MLLP) on real sockets, the two answers may come
  apart: each outcome is then its own commit, never a claim or a second processing commit.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, endpoints, reactor, task
from twisted.trial import unittest

from engine.net.mllp import MLLPClientProtocol
from engine.registry import REGISTRY, Registry
from engine.runtime import Engine
from engine.sandbox.service import SandboxService
from engine.spec import Spec

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "samples/hl7/dft_p03_stent_cath.hl7"


class CommitCounter:
    """COMMITs run by connections to one database file, by any thread."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.commits: list[str] = []
        self.real = sqlite3.connect

    def connect(self, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = self.real(*args, **kwargs)
        if str(args[0] if args else kwargs.get("database")) == self.path:

            def trace(sql: str) -> None:
                if sql.strip().upper().startswith("COMMIT"):
                    self.commits.append(threading.current_thread().name)

            conn.set_trace_callback(trace)
        return conn


class CallWatch:
    """Calls into ``engine.domains``, by the module of their caller (every thread)."""

    def __init__(self) -> None:
        self.callers: Counter[str] = Counter()

    def __call__(self, frame: Any, event: str, _arg: Any) -> None:
        if event != "call":
            return
        module = frame.f_globals.get("__name__", "")
        if module.startswith("engine.domains") and frame.f_back is not None:
            caller = frame.f_back.f_globals.get("__name__", "")
            if not caller.startswith("engine.domains"):
                self.callers[caller] += 1

    def start(self) -> None:
        threading.setprofile(self)
        sys.setprofile(self)

    def stop(self) -> None:
        threading.setprofile(None)  # type: ignore[arg-type]
        sys.setprofile(None)


class Gate:
    """A destination whose sends all finish when the test opens the gate."""

    opened: defer.Deferred | None = None
    sent: list[str] = []

    def __init__(self, options: Any, *, reactor: Any, channel: str, name: str, base_dir: Any):
        self.name = name

    async def send(self, delivery: Any) -> bytes | None:
        assert Gate.opened is not None
        Gate.sent.append(self.name)
        await Gate.opened
        return b"ok"

    def close(self) -> None:
        return None


def registry_with_gate() -> Registry:
    registry = Registry()
    for reg in REGISTRY.all():
        registry.register(reg.kind, reg.name, reg.spec, reg.factory)
    registry.register("destination", "test_gate", Spec("test_gate", []), Gate)
    registry._loaded = True
    return registry


def project(base: Path, *, gates: bool) -> Path:
    root = base / "project"
    (root / "channels").mkdir(parents=True)
    shutil.copytree(REPO / "mappings", root / "mappings")
    text = (REPO / "channels/usage_ledger.yaml").read_text()
    text = text.split("\ntests:")[0]
    text = text.replace("  requisition: erp_requisitions\n", "")
    requisitions = (
        "  - name: erp_requisitions\n"
        "    http: {url: '${ERP_URL:-http://127.0.0.1:8089}/requisitions'}\n"
        "    retry: {max_attempts: 20, initial: 1s, max_delay: 1m}\n"
    )
    assert requisitions in text, "the shipped channel's requisition destination changed"
    text = text.replace(requisitions, "")
    if gates:
        text = text.replace(
            "    http: {url: '${ERP_URL:-http://127.0.0.1:8089}/inventory/issues'}",
            "    test_gate: {}",
        )
        text = text.replace(
            "    mllp:\n      host: ${BILLING_HOST:-127.0.0.1}\n      port: ${BILLING_PORT:-2576}",
            "    test_gate: {}",
        )
    (root / "channels/usage_ledger.yaml").write_text(text)
    (root / "routes.yaml").write_text("store: var/wharf.db\nreload_interval: 0\n")
    return root


@pytest.mark.integration
class OneMessageCommits(unittest.TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.base, True)
        saved = {k: os.environ.get(k) for k in ("ERP_URL", "BILLING_PORT", "LEDGER_MLLP_PORT")}
        os.environ["LEDGER_MLLP_PORT"] = "0"

        def restore() -> None:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

        self.addCleanup(restore)

    async def run_one(self, root: Path, registry: Registry = REGISTRY) -> tuple[int, Any]:
        counter = CommitCounter(root / "var/wharf.db")
        self.patch(sqlite3, "connect", counter.connect)
        watch = CallWatch()
        watch.start()
        self.addCleanup(watch.stop)
        engine = Engine(root, reactor, registry=registry)
        await engine.start()
        self.addCleanup(lambda: defer.ensureDeferred(engine.stop()))
        await task.deferLater(reactor, 0.2, lambda: None)  # start-up work settles
        before = len(counter.commits)
        watch.callers.clear()
        port = engine.sources["usage_ledger"].port.getHost().port
        client = await endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port), MLLPClientProtocol()
        )
        self.addCleanup(client.transport.loseConnection)
        await client.ready
        ack = await client.send(SAMPLE.read_bytes())
        self.assertIn(b"MSA|AA|", ack)
        if Gate.opened is not None:
            for _ in range(200):
                if sorted(Gate.sent) == ["billing", "erp"]:
                    break
                await task.deferLater(reactor, 0.01, lambda: None)
            self.assertEqual(sorted(Gate.sent), ["billing", "erp"])
            Gate.opened.callback(None)
        row = None
        for _ in range(400):
            (row,) = await engine.executor.submit(engine.store.search, limit=5)
            if row.status == "sent":
                break
            await task.deferLater(reactor, 0.02, lambda: None)
        self.assertEqual(row.status, "sent", f"{row.error} at {row.error_location}")
        await task.deferLater(reactor, 0.3, lambda: None)  # nothing more may follow
        watch.stop()
        deliveries = await engine.executor.submit(engine.store.deliveries_for, row.id)
        self.assertEqual(sorted(d["destination"] for d in deliveries), ["billing", "erp"])

        def charge_status() -> str:
            with engine.store.reading() as rd:
                return rd.connection.execute("SELECT status FROM charges").fetchone()[0]

        self.assertEqual(await engine.executor.submit(charge_status), "accepted")
        store_calls = {c: n for c, n in watch.callers.items() if c.startswith("engine.store")}
        self.assertEqual(store_calls, {}, "the store called into a domain")
        self.assertTrue(watch.callers["engine.runtime.processor"], watch.callers)
        self.assertTrue(watch.callers["engine.runtime.outcomes"], watch.callers)
        return len(counter.commits) - before, counter

    @defer.inlineCallbacks
    def test_three_commits_when_both_destinations_answer_together(self) -> Any:
        Gate.opened, Gate.sent = defer.Deferred(), []
        self.addCleanup(setattr, Gate, "opened", None)
        root = project(self.base, gates=True)
        commits, _ = yield defer.ensureDeferred(self.run_one(root, registry_with_gate()))
        self.assertEqual(commits, 3)

    @defer.inlineCallbacks
    def test_real_peers_cost_one_commit_per_answer_at_most(self) -> Any:
        sandbox = SandboxService(
            self.base / "sandbox.db",
            http_port=0,
            mllp_port=0,
            reactor=reactor,
            seed=REPO / "mappings/onhand.csv",
        )
        sandbox.start()
        self.addCleanup(lambda: defer.ensureDeferred(sandbox.stop()))
        yield task.deferLater(reactor, 0.2, lambda: None)
        os.environ["ERP_URL"] = sandbox.http_url
        os.environ["BILLING_PORT"] = str(sandbox.mllp_port)
        root = project(self.base, gates=False)
        commits, _ = yield defer.ensureDeferred(self.run_one(root))
        self.assertIn(commits, (3, 4))  # ingest, processing, the outcomes (together or apart)
