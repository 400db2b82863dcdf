"""FHIR point-of-use usage through a real engine into the ERP/billing sandbox over real sockets:
SupplyDeliveries ingested (``Engine.ingest``) with the shipped ``channels/fhir_supply.yaml``
pointed at the sandbox give one stock issue and one ChargeItem per delivery however often they
come, an entered-in-error delivery a credit, and a SupplyRequest one requisition."""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from engine.runtime import Engine
from engine.sandbox.service import SandboxService

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples" / "fhir"
FOLEY = (SAMPLES / "r5_supplydelivery_code.json").read_bytes()
DRESSING = (SAMPLES / "r5_supplydelivery_billing_unit.json").read_bytes()
VOIDED = (SAMPLES / "r5_supplydelivery_entered_in_error.json").read_bytes()
REQUEST = (SAMPLES / "r5_supplyrequest.json").read_bytes()
R4_DRESSING = (SAMPLES / "r4b_supplydelivery_billing_unit.json").read_bytes()


def in_transaction(raw: bytes, ident: str) -> bytes:
    """The same SupplyDelivery as the only entry of a transaction Bundle (a new envelope)."""
    resource = json.loads(raw)
    bundle = {
        "resourceType": "Bundle",
        "identifier": {"system": "urn:genhosp:pou:bundle", "value": ident},
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:3f1d7c1e-9a57-4d7e-b7a2-5b0e8c4d0001",
                "resource": resource,
                "request": {"method": "POST", "url": "SupplyDelivery"},
            }
        ],
    }
    return json.dumps(bundle).encode()


class FhirLedgerFlowTests(unittest.TestCase):
    def setUp(self) -> Any:
        base = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, base, True)
        self.sandbox = SandboxService(
            base / "sandbox.db", http_port=0, mllp_port=0, reactor=reactor
        )
        self.sandbox.start()
        self.addCleanup(lambda: defer.ensureDeferred(self.sandbox.stop()))
        self.root = base / "p"
        (self.root / "channels").mkdir(parents=True)
        shutil.copytree(ROOT / "mappings", self.root / "mappings")
        shutil.copytree(ROOT / "samples", self.root / "samples")
        (self.root / "routes.yaml").write_text("store: var/wharf.db\nreload_interval: 0\n")
        url = self.sandbox.http_url
        for name in ("fhir_supply.yaml", "fhir_supply_r4.yaml"):  # the shipped channels
            channel = (ROOT / "channels" / name).read_text(encoding="utf-8")
            for default in (
                "${ERP_URL:-http://127.0.0.1:8089}",
                "${BILLING_FHIR_URL:-http://127.0.0.1:8089/fhir}",
            ):
                assert default in channel, f"channels/{name} no longer has {default}"
            channel = channel.replace("${ERP_URL:-http://127.0.0.1:8089}", url).replace(
                "${BILLING_FHIR_URL:-http://127.0.0.1:8089/fhir}", url + "/fhir"
            )
            config = yaml.safe_load(channel)
            config.pop("source", None)  # messages come in through Engine.ingest here
            (self.root / "channels" / name).write_text(yaml.safe_dump(config), encoding="utf-8")
        self.engine = Engine(self.root, reactor)
        d = defer.ensureDeferred(self.engine.start())
        self.addCleanup(lambda: defer.ensureDeferred(self.engine.stop()))
        return d

    async def send(self, raw: bytes, channel: str = "fhir_supply") -> Any:
        return await self.engine.ingest(channel, raw, "test")

    async def settle(self) -> None:
        for _ in range(500):
            c = await self.engine.executor.submit(self.engine.store.counts)
            if (
                set(c["messages"]) <= {"sent", "error", "filtered", "conflict"}
                and not c["deliveries"].get("pending")
                and not c["deliveries"].get("inflight")
            ):
                return
            await task.deferLater(reactor, 0.02, lambda: None)
        raise AssertionError(f"did not settle: {c}")

    def state(self) -> Any:
        return self.sandbox.state

    def messages(self) -> list[tuple[str, str | None]]:
        rows = self.engine.store._conn().execute("SELECT status, error FROM messages").fetchall()
        return [(r[0], r[1]) for r in rows]

    @defer.inlineCallbacks
    def test_each_delivery_is_one_issue_and_one_charge_item_however_often_sent(self) -> Any:
        """Two deliveries, each sent twice (the same bytes, then inside a new transaction
        Bundle): the sandbox ERP gets one issue per delivery and the billing side one
        ChargeItem per delivery, with the encounter, account and service from FHIR."""
        sends = (FOLEY, DRESSING, FOLEY, in_transaction(FOLEY, "B-9"), DRESSING)
        kinds = []
        for raw in sends:
            outcome = yield defer.ensureDeferred(self.send(raw))
            kinds.append(outcome.kind)
        # The same bytes again are a duplicate (not processed again); the delivery inside a new
        # transaction Bundle is a new message, which the ledger's business keys book nothing for.
        self.assertEqual(kinds, ["stored", "stored", "duplicate", "stored", "duplicate"])
        yield defer.ensureDeferred(self.settle())
        self.assertEqual({s for s, _ in self.messages()}, {"sent"}, self.messages())
        issues = self.state().issues()
        self.assertEqual(len(issues), 2, issues)
        lines = sorted(
            (line["item"], line["quantity"], line["uom"], line["location"])
            for issue in issues
            for line in issue["lines"]
        )
        self.assertEqual(
            lines,
            [
                ("ITEM-160005", "2", "EA", "LOC-4W-SUPPLY"),
                ("ITEM-160010", "0.4", "BX", "LOC-4W-SUPPLY"),
            ],
        )
        charges = self.state().charges()
        self.assertEqual(
            sorted((c["code"], c["quantity"], c["type"], c["encounter"]) for c in charges),
            [("272100050", "2", "CG", "ENC-112233"), ("623001001", "4", "CG", "ENC-112233")],
        )
        foley = next(c for c in charges if c["code"] == "272100050")
        doc = self.state().charge_doc(foley["id"])
        self.assertEqual(doc["encounter"], {"reference": "Encounter/ENC-112233"})
        self.assertEqual(doc["account"][0]["reference"], "Account/ACCT-112233")
        self.assertEqual(
            doc["service"][0]["reference"]["reference"], "SupplyDelivery/pou-4w-000311"
        )
        self.assertEqual(str(doc["totalPriceComponent"]["amount"]["value"]), "88.00")
        self.assertEqual(self.state().requisitions(None, None, None), [])  # no par breach

    @defer.inlineCallbacks
    def test_entered_in_error_credits_the_booked_delivery_once(self) -> Any:
        """The delivery, then the same delivery marked entered-in-error (twice): one issue and
        one ChargeItem for the use, one reversing issue line and one negative ChargeItem."""
        for raw in (FOLEY, VOIDED, VOIDED):
            yield defer.ensureDeferred(self.send(raw))
        yield defer.ensureDeferred(self.settle())
        self.assertEqual({s for s, _ in self.messages()}, {"sent"}, self.messages())
        quantities = sorted(
            line["quantity"] for issue in self.state().issues() for line in issue["lines"]
        )
        self.assertEqual(quantities, ["-2", "2"])
        self.assertEqual(
            sorted((c["quantity"], c["type"]) for c in self.state().charges()),
            [("-2", "CD"), ("2", "CG")],
        )

    @defer.inlineCallbacks
    def test_a_supply_request_is_one_requisition(self) -> Any:
        """An active SupplyRequest, sent twice and once more with a new meta (other bytes,
        same identifier and status): one requisition in the sandbox ERP, 10 EA of sheaths for
        the lab. Straight into the engine the third is a conflict kept for a person (the HTTP
        source stores the canonical form without meta, where it is a plain resend)."""
        again = copy.deepcopy(json.loads(REQUEST))
        again["meta"] = {"lastUpdated": "2026-01-19T06:06:00-05:00"}
        kinds = []
        for raw in (REQUEST, REQUEST, json.dumps(again).encode()):
            outcome = yield defer.ensureDeferred(self.send(raw))
            kinds.append(outcome.kind)
        self.assertEqual(kinds, ["stored", "duplicate", "conflict"])
        yield defer.ensureDeferred(self.settle())
        self.assertEqual(sorted(s for s, _ in self.messages()), ["conflict", "sent"])
        reqs = self.state().requisitions(None, None, None)
        self.assertEqual(
            [(r["location"], r["item"], r["quantity"], r["uom"]) for r in reqs],
            [("LOC-CATH-1", "ITEM-150034", "10", "EA")],
        )
        self.assertEqual(self.state().issues(), [])

    @defer.inlineCallbacks
    def test_r4_delivery_through_the_r4_channel(self) -> Any:
        """An R4 SupplyDelivery (3 EA of a dressing stocked in boxes of 10) through
        fhir_supply_r4: 0.3 BX issued, one R4 ChargeItem (context, priceOverride) accepted."""
        for _ in range(2):
            yield defer.ensureDeferred(self.send(R4_DRESSING, "fhir_supply_r4"))
        yield defer.ensureDeferred(self.settle())
        self.assertEqual({s for s, _ in self.messages()}, {"sent"}, self.messages())
        (issue,) = self.state().issues()
        self.assertEqual(
            [(ln["item"], ln["quantity"], ln["uom"]) for ln in issue["lines"]],
            [("ITEM-160012", "0.3", "BX")],
        )
        (charge,) = self.state().charges()
        self.assertEqual((charge["code"], charge["quantity"]), ("623001003", "3"))
        doc = self.state().charge_doc(charge["id"])
        self.assertEqual(doc["context"], {"reference": "Encounter/ENC-445566"})
        self.assertEqual(str(doc["priceOverride"]["value"]), "126.00")
