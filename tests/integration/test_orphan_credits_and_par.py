"""Orphan credits are held for a person, and par is checked whatever changed the on-hand.

A running engine with a ledger channel (file destinations, real files):
- it starts with a par'd stent below its reorder point (the starting figure): the par sweep at
  start sends one requisition, and none again while it is open;
- an HL7 credit (FT1-6 = CD) for a line the ledger never booked moves no stock and credits
  nothing: an ORPHAN_CREDIT work item and a held credit; released with `wharf credits release`
  (another process, as an AP clerk would run it, audited), it books: stock back, a CD charge.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from engine.codecs.hl7v2 import tokenize
from engine.runtime import Engine

ROOT = Path(__file__).resolve().parents[2]
CREDIT = (ROOT / "samples/hl7/dft_p03_credit_stent.hl7").read_bytes()
WHARF = Path(sys.executable).parent / "wharf"

CHANNEL = """\
codec: {hl7v2: {}}
transformer:
  - transform: hl7_usage_to_ledger
ledger:
  issue: erp
  charge: billing
  requisition: requisitions
  par_levels: par
  onhand: onhand
destinations:
  - {name: erp, file: {dir: out/erp}}
  - {name: billing, file: {dir: out/billing}, ordered: true}
  - {name: requisitions, file: {dir: out/req}}
"""


@pytest.mark.integration
class OrphanCreditsAndPar(unittest.TestCase):
    timeout = 60

    def setUp(self) -> Any:
        base = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, base, True)
        self.root = base / "p"
        (self.root / "channels").mkdir(parents=True)
        shutil.copytree(ROOT / "mappings", self.root / "mappings")
        (self.root / "mappings/par.csv").write_text(
            "id,location_id,item_id,par:decimal,reorder_point:decimal,order_qty:decimal,"
            "order_uom,pack_size:int\nP1,LOC-CATH-1,ITEM-100789,6,3,4,EA,1\n"
        )
        (self.root / "mappings/onhand.csv").write_text(
            "id,location_id,item_id,on_hand:decimal,uom\nO1,LOC-CATH-1,ITEM-100789,1,EA\n"
        )
        (self.root / "routes.yaml").write_text("store: var/wharf.db\nreload_interval: 0\n")
        (self.root / "channels/u.yaml").write_text(CHANNEL)
        self.engine = Engine(self.root, reactor)
        self.addCleanup(lambda: defer.ensureDeferred(self.engine.stop()))
        return defer.ensureDeferred(self.engine.start())

    def files(self, folder: str) -> list[Any]:
        out = self.root / "out" / folder
        return [
            json.loads(p.read_text()) if p.suffix == ".json" else p.read_bytes()
            for p in sorted(out.glob("*"))
            if not p.name.startswith(".")  # a file being written (engine.net.files)
        ]

    async def wait_for(self, folder: str, count: int) -> list[Any]:
        for _ in range(300):
            found = self.files(folder)
            if len(found) >= count:
                return found
            await task.deferLater(reactor, 0.05, lambda: None)
        self.fail(f"expected {count} file(s) in out/{folder} (got {len(self.files(folder))})")

    def onhand(self) -> str:
        (row,) = (
            self.engine.store._conn()
            .execute("SELECT quantity FROM onhand WHERE item_id = 'ITEM-100789'")
            .fetchall()
        )
        return row[0]

    @defer.inlineCallbacks
    def test_par_at_start_and_an_orphan_credit_released_by_a_person(self) -> Any:
        (req,) = yield defer.ensureDeferred(self.wait_for("req", 1))
        self.assertEqual((req["item_id"], req["quantity"]), ("ITEM-100789", "5"))  # 6 - 1
        self.assertIn("par sweep", req["reason"])
        # the credit: AA (it is stored), then held
        ack = yield defer.ensureDeferred(self.engine.ingest("u", CREDIT, "test", answers=True))
        self.assertEqual(tokenize(ack.response).get("MSA-1"), "AA")
        for _ in range(200):
            items = yield self.engine.executor.submit(self.engine.store.open_work_items)
            if items:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual([w["kind"] for w in items], ["ORPHAN_CREDIT"])
        self.assertEqual(self.onhand(), "1")
        self.assertEqual(self.files("billing"), [])
        self.assertEqual(self.files("erp"), [])
        # a person releases it from the command line, while the engine runs
        env = {**os.environ, "WHARF_LOG_LEVEL": "warn"}
        listed = yield threads.deferToThread(
            subprocess.run,
            [str(WHARF), "--root", str(self.root), "credits"],
            capture_output=True,
            text=True,
            env=env,
        )
        self.assertEqual(listed.returncode, 0, listed.stderr)
        self.assertIn("ITEM-100789", listed.stdout)
        credit_id = listed.stdout.split()[0]
        release = ["credits", "release", credit_id, "--note", "returned before go-live"]
        done = yield threads.deferToThread(
            subprocess.run,
            [str(WHARF), "--root", str(self.root), "--user", "ap.clerk", *release],
            capture_output=True,
            text=True,
            env=env,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("released", done.stdout)
        (charge,) = yield defer.ensureDeferred(self.wait_for("billing", 1))
        self.assertEqual(tokenize(charge).get("FT1-6"), "CD")
        yield defer.ensureDeferred(self.wait_for("erp", 1))
        self.assertEqual(self.onhand(), "2")
        items = yield self.engine.executor.submit(self.engine.store.open_work_items)
        self.assertEqual(items, [])
        audit = yield self.engine.executor.submit(self.engine.store.audit_entries, 10)
        self.assertIn(("ap.clerk", "credit.release"), [(a["actor"], a["action"]) for a in audit])
        self.assertEqual(len(self.files("req")), 1)  # still one open: no second requisition
