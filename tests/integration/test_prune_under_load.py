"""Retention without an outage: `wharf prune` on a store of 200,000 old messages while the
engine takes MLLP messages the whole time.

The store is filled through SQL (as a year of traffic would have left it), the engine runs on
it, and `wharf prune` runs as a person would (another process). A sender sends one DFT^P03
after another, about a hundred a second (a busy hospital feed), while the prune runs: every one
is answered AA (stored; none refused for a locked database), the 200,000 old ones are gone, the
new ones are kept, and the footprint on disk went down, not up. (A sender with no pause at all
stores, on 2 cores, about as much as the prune frees while it yields to it: the footprint then
says more about the race than about the prune. bench/prune.py measures that sender's p99.)
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, endpoints, reactor, task, threads
from twisted.trial import unittest

from engine.codecs.hl7v2 import tokenize
from engine.net.mllp import MLLPClientProtocol
from engine.runtime import Engine
from engine.runtime.store import open_store

WHARF = Path(sys.executable).parent / "wharf"
OLD = 200_000
PACE = 0.002  # seconds between an ACK and the next message

CHANNEL = """\
source:
  mllp: {listen: "tcp:0:interface=127.0.0.1"}
codec: {hl7v2: {}}
"""


def dft(n: int) -> bytes:
    return (
        f"MSH|^~\\&|POU|GENHOSP|WHARF|GENHOSP|20260115113000||DFT^P03^DFT_P03|LIVE-{n}|P|2.5.1\r"
        "EVN|P03|20260115113000\rPID|1||MRN1\rPV1|1|I|OR||||||||||||||||ENC-1\r"
        "FT1|1|CU-1||20260115|20260115|CG|272100049|||1\r"
    ).encode()


def fill(path: Path, count: int) -> None:
    """``count`` messages sent a year ago, with their raw content, as traffic leaves them."""
    open_store(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    year_ago = time.time() - 365 * 86400
    body = b"MSH|^~\\&|POU|GENHOSP|WHARF|GENHOSP|20250115||DFT^P03|OLD|P|2.5.1\r" + b"X" * 300
    conn.execute("BEGIN")
    step = 20_000
    for start in range(0, count, step):
        ids = [f"old-{i:07d}" for i in range(start, min(count, start + step))]
        conn.executemany(
            "INSERT INTO messages (id, channel, source, peer, content_type, received_at, "
            "updated_at, sha256, size, control_id, dedup_key, correlation_id, status) "
            "VALUES (?, 'feed', 'mllp', NULL, 'x-application/hl7-v2+er7', ?, ?, '', ?, ?, NULL, "
            "?, 'sent')",
            [(i, year_ago, year_ago, len(body), i, i) for i in ids],
        )
        conn.executemany(
            "INSERT INTO contents (message_id, stage, data, created_at) VALUES (?, 'raw', ?, ?)",
            [(i, body, year_ago) for i in ids],
        )
    conn.execute("COMMIT")
    conn.close()


@pytest.mark.integration
@pytest.mark.slow
class PruneUnderLoad(unittest.TestCase):
    timeout = 300

    def setUp(self) -> Any:
        self.base = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.base, True)
        self.root = self.base / "project"
        (self.root / "channels").mkdir(parents=True)
        (self.root / "channels/feed.yaml").write_text(CHANNEL)
        (self.root / "routes.yaml").write_text(
            "store: var/wharf.db\nreload_interval: 0\n"
            "retention:\n  - {status: [sent], older_than: 30d}\n"
        )
        self.db = self.root / "var/wharf.db"
        fill(self.db, OLD)
        self.engine = Engine(self.root, reactor)
        self.addCleanup(lambda: defer.ensureDeferred(self.engine.stop()))
        return defer.ensureDeferred(self.engine.start())

    def footprint(self) -> int:
        wal = self.db.with_name(self.db.name + "-wal")
        return self.db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)

    @defer.inlineCallbacks
    def test_the_engine_keeps_accepting_while_200k_messages_are_pruned(self) -> Any:
        port = self.engine.sources["feed"].port.getHost().port
        client = yield endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port), MLLPClientProtocol()
        )
        self.addCleanup(client.transport.loseConnection)
        yield client.ready
        before = self.footprint()
        env = {**os.environ, "WHARF_LOG_LEVEL": "warn"}
        prune = threads.deferToThread(
            subprocess.run,
            [str(WHARF), "--root", str(self.root), "prune"],
            capture_output=True,
            text=True,
            env=env,
        )
        answers: list[str] = []
        n = 0
        while not prune.called:
            n += 1
            ack = yield client.send(dft(n))
            answers.append(tokenize(ack).get("MSA-1") or "?")
            yield task.deferLater(reactor, PACE, lambda: None)
        done = prune.result
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn(f"pruned {OLD} message(s) in sent older than 30d", done.stdout)
        self.assertGreater(len(answers), 0)
        self.assertEqual(set(answers), {"AA"}, f"answers while pruning: {answers.count('AR')} AR")
        rows = yield self.engine.executor.submit(self.engine.store.counts)
        self.assertEqual(sum(rows["messages"].values()), len(answers))
        self.assertLess(self.footprint(), before)
