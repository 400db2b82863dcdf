"""Usage to stock, charge and replenishment through the engine: DFT^P03 in, ledger booked in
the message's commit, ERP issue / billing charge / requisition out, exactly once per line."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from engine.codecs.hl7v2 import tokenize
from engine.runtime import Engine

ROOT = Path(__file__).resolve().parents[2]
KNEE = (ROOT / "samples/hl7/dft_p03_knee_and_sutures.hl7").read_bytes()
STENT = (ROOT / "samples/hl7/dft_p03_stent_cath.hl7").read_bytes()

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
class LedgerFlowTests(unittest.TestCase):
    def setUp(self) -> Any:
        base = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, base, True)
        self.root = base / "p"
        (self.root / "channels").mkdir(parents=True)
        shutil.copytree(ROOT / "mappings", self.root / "mappings")
        (self.root / "mappings/par.csv").write_text(
            "id,location_id,item_id,par:decimal,reorder_point:decimal,order_qty:decimal,"
            "order_uom,pack_size:int\nP1,LOC-CATH-1,ITEM-100789,6,3,4,EA,5\n"
        )
        (self.root / "mappings/onhand.csv").write_text(
            "id,location_id,item_id,on_hand:decimal,uom\nO1,LOC-CATH-1,ITEM-100789,4,EA\n"
        )
        (self.root / "routes.yaml").write_text("store: var/wharf.db\nreload_interval: 0\n")
        (self.root / "channels/u.yaml").write_text(CHANNEL)
        self.engine = Engine(self.root, reactor)
        d = defer.ensureDeferred(self.engine.start())
        self.addCleanup(lambda: defer.ensureDeferred(self.engine.stop()))
        return d

    def send(self, raw: bytes) -> defer.Deferred:
        return defer.ensureDeferred(self.engine.ingest("u", raw, "test", answers=True))

    async def settle(self) -> None:
        for _ in range(300):
            c = await self.engine.executor.submit(self.engine.store.counts)
            if (
                set(c["messages"]) <= {"sent", "error", "filtered"}
                and not c["deliveries"].get("pending")
                and not c["deliveries"].get("inflight")
            ):
                return
            await task.deferLater(reactor, 0.02, lambda: None)
        raise AssertionError(f"did not settle: {c}")

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        return self.engine.store._conn().execute(sql).fetchall()

    def files(self, folder: str) -> list[Any]:
        return [
            json.loads(p.read_text()) if p.suffix == ".json" else p.read_bytes()
            for p in sorted((self.root / "out" / folder).glob("*"))
            if not p.name.startswith(".")  # a file being written (engine.net.files)
        ]

    @defer.inlineCallbacks
    def test_two_lines_issue_charge_and_keep_non_chargeable(self) -> Any:
        """Knee implant (chargeable) and sutures (not): one ERP issue with two lines, one charge
        (DFT^P03 with the encounter), stock moved for both."""
        yield self.send(KNEE)
        yield defer.ensureDeferred(self.settle())
        (issue,) = self.files("erp")  # one ERP issue per message, a line per event
        self.assertEqual([ln["item_id"] for ln in issue["lines"]], ["ITEM-100999", "ITEM-200010"])
        (charge,) = self.files("billing")
        dft = tokenize(charge)
        self.assertEqual(
            (dft.get("PV1-19"), dft.get("FT1-7.1"), dft.get("FT1-6")),
            ("ENC-112233", "278000456", "CG"),
        )
        self.assertEqual(dft.get("FT1-12.1"), "5775.00")  # the CDM price, as a decimal
        self.assertEqual(self.query("SELECT amount, currency FROM charges"), [("5775.00", "USD")])
        self.assertEqual(
            self.query("SELECT item_id, quantity FROM onhand ORDER BY item_id"),
            [("ITEM-100789", "4"), ("ITEM-100999", "-1"), ("ITEM-200010", "-3")],
        )

    @defer.inlineCallbacks
    def test_resend_with_a_new_control_id_changes_nothing(self) -> Any:
        """The same FT1 lines in a new message (new MSH-10) are not booked again."""
        yield self.send(KNEE)
        yield self.send(KNEE.replace(b"POU-000124", b"POU-RESEND-1"))
        yield defer.ensureDeferred(self.settle())
        self.assertEqual(self.query("SELECT COUNT(*) FROM consumption_events"), [(2,)])
        self.assertEqual(len(self.files("erp")), 1)  # the resend booked nothing, sent nothing
        self.assertEqual(len(self.files("billing")), 1)

    @defer.inlineCallbacks
    def test_par_breach_orders_once(self) -> Any:
        """Stent on hand 4, reorder point 3: the second use breaches it and orders
        max(4, 6-2)=4 rounded to packs of 5 → 5; the third use orders nothing more."""
        yield self.send(STENT)
        yield self.send(
            STENT.replace(b"CATH-55001", b"CATH-55002").replace(b"CU-99a001", b"CU-99a002")
        )
        yield self.send(
            STENT.replace(b"CATH-55001", b"CATH-55003").replace(b"CU-99a001", b"CU-99a003")
        )
        yield defer.ensureDeferred(self.settle())
        (req,) = self.files("req")
        self.assertEqual(
            (req["item_id"], req["quantity"], req["location_id"]),
            ("ITEM-100789", "5", "LOC-CATH-1"),
        )
        self.assertEqual(
            self.query("SELECT quantity FROM onhand WHERE item_id='ITEM-100789'"),
            [(str(Decimal(1)),)],
        )

    @defer.inlineCallbacks
    def test_missing_item_opens_a_work_item_that_replay_releases(self) -> Any:
        """An unknown charge code holds the message with a MISSING_MAPPING work item (table and
        key); after the mapping is added (hot reload) a replay books it and resolves the item."""
        unknown = STENT.replace(b"278000789", b"278000999").replace(b"CATH-55001", b"CATH-MISS-1")
        yield self.send(unknown)
        yield defer.ensureDeferred(self.settle())
        items = self.query("SELECT kind, subject, status FROM work_items")
        self.assertEqual(items, [("MISSING_MAPPING", "charge_codes:278000999", "open")])
        with (self.root / "mappings/charge_codes.csv").open("a") as fh:
            fh.write("278000999,ITEM-100789,CORONARY STENT ALT CODE,0278,C1874,,EA,2875.00,cdm\n")
        changed = yield defer.ensureDeferred(self.engine.reload_if_changed())
        self.assertTrue(changed)
        (row,) = yield self.engine.executor.submit(self.engine.store.search, status="error")
        yield self.engine.executor.submit(
            self.engine.store.replay, row.id, actor="analyst", now=time.time()
        )
        self.engine.processor.sweep()
        yield defer.ensureDeferred(self.settle())
        self.assertEqual(self.query("SELECT status FROM work_items"), [("resolved",)])
        self.assertEqual(self.query("SELECT COUNT(*) FROM consumption_events"), [(1,)])


def test_item_number_and_obx_locator(project_dir: Path) -> None:
    """item_field FT1-34.1 takes the item number (2.8+); implant lot/serial/UDI come from OBX
    codes when the channel says so, and the UDI's GS1 data fills what OBX left out."""
    from engine.channel import Channel
    from engine.config.project import load_project
    from engine.registry import REGISTRY

    (project_dir / "channels/o.yaml").write_text(
        "codec: {hl7v2: {}}\ntransformer:\n  - transform: hl7_usage_to_ledger\n"
        "    item_field: FT1-34.1\n    implant_detail: obx\n"
        "ledger: {issue: erp}\ndestinations:\n  - {name: erp, file: {dir: out}}\n"
    )
    project = load_project(project_dir, env={})
    ch = Channel(project.channels["o"], project.mappings, REGISTRY)
    fields = [""] * 35
    fields[:11] = ["FT1", "1", "CU-obx1", "", "20260116073000", "", "CG", "", "", "", "1"]
    fields[16] = "CATH^LAB1"
    fields[34] = "ITEM-100789"
    raw = (
        "\r".join(
            [
                "MSH|^~\\&|CATH_POU|GENHOSP|WHARF|GENHOSP|20260116080000||DFT^P03^DFT_P03|OBX-1|P|2.8.2",
                "PID|1||MRN3",
                "PV1|1|O|CATH^LAB1||||||||||||||||ENC-7",
                "|".join(fields),
                "OBX|1|ST|UDI||(01)00614141100187(17)280131(10)LOTX9",
                "OBX|2|ST|SERIAL||SN-1",
            ]
        ).encode()
        + b"\r"
    )
    result = ch.process(raw, "m", "c")
    assert result.status == "sent", result.error
    (ev,) = result.events
    assert (ev.item_id, ev.charge_code, ev.lot, ev.serial, ev.expiry) == (
        "ITEM-100789",
        "278000789",
        "LOTX9",
        "SN-1",
        "20280131",
    )
