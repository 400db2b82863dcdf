"""The usage scenario (HL7 DFT^P03 and FHIR SupplyDelivery / SupplyRequest to stock issue,
charge and requisition) run through the engine with each ERP profile as the ERP, against the
sandbox's emulation over real sockets; at the end the ledger equals the emulated ERP's stock
to the unit, and the requisitions match. Also through the engine: a 429 storm (nothing lost,
no attempt counted, then Wharf's own rate limit keeps under the ERP's), an item the ERP does
not know failing only its own delivery of a bulk call, and secrets that stay out of the logs
and of ``wharf messages --show``."""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from contextlib import redirect_stdout
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import treq
from twisted.internet import defer, reactor, task
from twisted.logger import globalLogPublisher
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from engine.runtime import Engine
from engine.sandbox.cloud import Credentials
from engine.sandbox.service import SandboxService

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
HL7 = [
    "dft_p03_knee_and_sutures.hl7",
    "dft_p03_screw.hl7",
    "dft_p03_stent_cath.hl7",
    "dft_p03_credit_stent.hl7",
    "dft_p03_v282_prt_implant.hl7",
]
FHIR = [
    "r5_supplydelivery_code.json",
    "r5_bundle_implant.json",
    "r5_supplydelivery_billing_unit.json",
    "r5_supplyrequest.json",
    "r5_batch.json",
]
SECRETS = {
    "oracle": "oracle-client-secret-e2e-4411",
    "sap": "sap-password-e2e-9a0c",
    "workday": "workday-password-e2e-77d1",
}
# Our locations in each ERP's keys (the same maps the channels below configure).
ORACLE_SUBINVENTORIES = {
    "LOC-OR-MAIN": "ORMAIN",
    "LOC-CATH-1": "CATH1",
    "LOC-CATH-2": "CATH2",
    "LOC-4W-SUPPLY": "4WSUP",
    "LOC-MICU-SUPPLY": "MICU",
}
SAP_STORAGE = {
    "LOC-OR-MAIN": "OR01",
    "LOC-CATH-1": "CL01",
    "LOC-CATH-2": "CL02",
    "LOC-4W-SUPPLY": "4W01",
    "LOC-MICU-SUPPLY": "MI01",
}
WORKDAY_LOCATIONS = {loc: loc.replace("LOC-", "WD_").replace("-", "_") for loc in SAP_STORAGE}


def erp_location(system: str, location: str) -> str:
    if system == "oracle":
        return f"GH1:{ORACLE_SUBINVENTORIES[location]}"
    if system == "sap":
        return f"1010:{SAP_STORAGE[location]}"
    return WORKDAY_LOCATIONS[location]


def destination(system: str, url: str, bulk: bool) -> str:
    """The channel YAML of the ERP profile destination (one line of flow style)."""
    bulk_yaml = ", bulk: {max_items: 20, max_wait: 100ms}" if bulk else ""
    if system == "oracle":
        subs = json.dumps(ORACLE_SUBINVENTORIES)
        return (
            f"oracle_fusion: {{base_url: '{url}', organization_code: GH1, subinventories: {subs}, "
            "business_unit: GENHOSP BU, preparer_email: supply@genhosp.example, "
            f"auth: {{oauth2: {{token_url: '{url}/oauth2/v1/token', client_id: wharf-oracle, "
            f"client_secret: {{file: secrets/oracle}}}}}}{bulk_yaml}}}"
        )
    if system == "sap":
        return (
            f"sap_s4hana: {{base_url: '{url}', plant: '1010', "
            f"storage_locations: {json.dumps(SAP_STORAGE)}, "
            "auth: {basic: {user: WHARF_COMM, password: {file: secrets/sap}}}"
            f"{bulk_yaml}}}"
        )
    return (
        f"workday: {{base_url: '{url}', tenant: genhosp, company: GENHOSP, requester: '21001', "
        f"locations: {json.dumps(WORKDAY_LOCATIONS)}, "
        "ws_security: {username: ISU_Wharf@genhosp, password: {file: secrets/workday}}}"
    )


def channel(codec: str, transform: str, system: str, url: str, extra: str = "") -> str:
    bulk = system != "workday"
    return f"""\
codec: {codec}
transformer:
  - transform: {transform}
ledger:
  issue: erp
  charge: billing
  requisition: erp_requisitions
  par_levels: par_levels
  onhand: onhand{extra}
destinations:
  - name: erp
    {destination(system, url, bulk)}
    retry: {{max_attempts: 5, initial: 200ms, max_delay: 2s}}
    concurrency: 4
  - name: erp_requisitions
    {destination(system, url, False)}
    retry: {{max_attempts: 5, initial: 200ms, max_delay: 2s}}
  - name: billing
    file: {{dir: out/billing}}
"""


def dft(n: int, item_code: str = "272000010", qty: int = 1) -> bytes:
    """A DFT^P03 of one FT1 line (sutures at the OR by default), distinct per ``n``."""
    segments = [
        f"MSH|^~\\&|POU_CABINET|GENHOSP|WHARF|GENHOSP|20260115103000||DFT^P03^DFT_P03|"
        f"STORM-{n}|P|2.5.1",
        "EVN|P03|20260115103000",
        "PID|1||MRN12345^^^GENHOSP^MR||DOE^JANE",
        "PV1|1|O|OR^OR05^01^GENHOSP||||||||||||||||ENC-998877^^^GENHOSP^VN",
        f"FT1|1|ST-{n}||20260115093000|20260115103000|CG|{item_code}^SUPPLY^99CDM|||{qty}"
        "||||||OR^OR05^01^GENHOSP",
    ]
    return ("\r".join(segments) + "\r").encode()


class ErpFlow(unittest.TestCase):
    timeout = 90

    def setUp(self) -> None:
        base = Path(tempfile.mkdtemp(prefix="wharf-erpflow-"))
        self.addCleanup(shutil.rmtree, base, True)
        self.root = base / "p"
        (self.root / "channels").mkdir(parents=True)
        (self.root / "secrets").mkdir()
        shutil.copytree(ROOT / "mappings", self.root / "mappings")
        # The ledger and the ERP start from the same snapshot; the implants used twice in the
        # scenario are stocked so that SAP (which refuses a deficit) takes every issue.
        onhand = (ROOT / "mappings/onhand.csv").read_text()
        onhand = onhand.replace(
            "OH-0027,LOC-OR-MAIN,ITEM-100999,2,EA", "OH-0027,LOC-OR-MAIN,ITEM-100999,6,EA"
        )
        onhand += "OH-0090,LOC-OR-MAIN,ITEM-150046,5,EA\n"
        (self.root / "mappings/onhand.csv").write_text(onhand)
        for name, secret in SECRETS.items():
            (self.root / "secrets" / name).write_text(secret + "\n")
        (self.root / "routes.yaml").write_text("store: var/wharf.db\nreload_interval: 0\n")
        self.sandbox = SandboxService(
            base / "sandbox.db",
            http_port=0,
            mllp_port=0,
            reactor=reactor,
            credentials=Credentials(
                oracle_client_secret=SECRETS["oracle"],
                sap_password=SECRETS["sap"],
                workday_password=SECRETS["workday"],
            ),
        )
        self.sandbox.start()
        self.addCleanup(lambda: defer.ensureDeferred(self.sandbox.stop()))
        self.cloud = self.sandbox.cloud
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)
        self.logged: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            from twisted.logger import formatEvent

            self.logged.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def seed_erp(self, system: str, skip: tuple[str, ...] = ()) -> None:
        rows = []
        for line in (self.root / "mappings/onhand.csv").read_text().splitlines():
            if line.startswith(("#", "id,")) or not line.strip():
                continue
            _, location, item, qty, uom = line.split(",")
            if item in skip:
                continue
            rows.append(
                {
                    "location": erp_location(system, location),
                    "item": item,
                    "on_hand": qty,
                    "uom": uom,
                }
            )
        self.cloud.books.seed(system, rows)

    async def start(self, system: str, channels: dict[str, str]) -> None:
        for name, text in channels.items():
            (self.root / "channels" / f"{name}.yaml").write_text(text)
        engine = self.engine = Engine(self.root, reactor)
        await engine.start()
        self.addCleanup(lambda: defer.ensureDeferred(engine.stop()) if engine.running else None)

    async def settle(self, limit: float = 60.0) -> dict[str, Any]:
        for _ in range(int(limit / 0.05)):
            c = await self.engine.executor.submit(self.engine.store.counts)
            if (
                set(c["messages"]) <= {"sent", "error", "filtered"}
                and not c["deliveries"].get("pending")
                and not c["deliveries"].get("inflight")
            ):
                return c
            await task.deferLater(reactor, 0.05, lambda: None)
        raise AssertionError(f"did not settle: {c}")

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        return self.engine.store._conn().execute(sql).fetchall()

    async def control(self, path: str, doc: Any) -> None:
        resp = await treq.post(self.sandbox.http_url + path, json=doc, pool=self.pool)
        await resp.content()

    async def scenario(self, system: str, midway: Any = None) -> dict[str, Any]:
        url = self.sandbox.http_url
        self.seed_erp(system)
        fhir_codec = "{fhir: {version: R5, resources: [SupplyDelivery, SupplyRequest, Bundle]}}"
        await self.start(
            system,
            {
                "usage": channel("{hl7v2: {}}", "hl7_usage_to_ledger", system, url),
                "fhir": channel(
                    fhir_codec,
                    "fhir_supply_to_ledger\n    version: R5",
                    system,
                    url,
                    "\n  charge_format: fhir_r5",
                ),
            },
        )
        for n, name in enumerate(HL7):
            if n == 2:  # mid-run, while the channels' destinations hold their credentials
                await self.settle()
                if midway is not None:
                    await midway()
            await self.engine.ingest("usage", (ROOT / "samples/hl7" / name).read_bytes(), "t")
        for name in FHIR:
            await self.engine.ingest("fhir", (ROOT / "samples/fhir" / name).read_bytes(), "t")
        return await self.settle()

    def assert_ledger_equals_erp(self, system: str) -> None:
        ledger = self.query("SELECT location_id, item_id, quantity FROM onhand")
        self.assertGreater(len(ledger), 40)
        differences = []
        for location, item, qty in ledger:
            found = self.cloud.books.stock(system, erp_location(system, location), item)
            erp = found[0] if found else None
            if erp != Decimal(qty):
                differences.append((location, item, qty, erp))
        self.assertEqual(differences, [])

    def assert_everything_sent_once(self, counts: dict[str, Any]) -> None:
        self.assertEqual(counts["dead_letters"], 0, self.query("SELECT reason FROM dead_letters"))
        self.assertEqual(set(counts["messages"]), {"sent"})
        rows = self.query("SELECT destination, response FROM outbox WHERE destination != 'billing'")
        self.assertTrue(rows)
        self.assertTrue(all(response for _, response in rows))
        self.assertEqual(
            self.query("SELECT COUNT(*) FROM charges")[0][0],
            len(list((self.root / "out/billing").glob("[!.]*"))),
        )

    # ------------------------------------------------------------------ the three profiles

    @defer.inlineCallbacks
    def test_usage_through_oracle_fusion_with_tokens_expiring_mid_run(self) -> Any:
        """HL7 then FHIR usage through oracle_fusion (bulk issues, OAuth2 with a file secret);
        after the second HL7 message every token expires: the next calls get 401, a new token
        is fetched and nothing is lost. Ledger on-hand = Oracle on-hand for every location and item;
        three requisitions created and submitted."""

        async def expire() -> None:
            await self.control("/_emulation/oauth/expire", {})

        counts = yield defer.ensureDeferred(self.scenario("oracle", expire))
        self.assert_everything_sent_once(counts)
        self.assert_ledger_equals_erp("oracle")
        self.assertGreaterEqual(self.cloud.tokens.refused, 1)
        self.assertGreaterEqual(self.cloud.tokens.issued, 2)
        requisitions = self.cloud.books.documents("oracle", "requisition")
        self.assertEqual(len(requisitions), self.query("SELECT COUNT(*) FROM requisitions")[0][0])
        self.assertEqual({r["status"] for r in requisitions}, {"APPROVED"})

    @defer.inlineCallbacks
    def test_usage_through_sap_s4hana(self) -> Any:
        """The same scenario through sap_s4hana ($batch bulk issues, basic auth from a file,
        CSRF): each issue a material document (201, a 202 for the credit), ledger = SAP stock
        to the unit, a purchase requisition per ledger requisition."""
        counts = yield defer.ensureDeferred(self.scenario("sap"))
        self.assert_everything_sent_once(counts)
        self.assert_ledger_equals_erp("sap")
        docs = self.cloud.books.documents("sap", "material_document")
        kinds = {
            i["GoodsMovementType"]
            for d in docs
            for i in d["doc"]["to_MaterialDocumentItem"]["results"]
        }
        self.assertEqual(kinds, {"201", "202"})
        self.assertEqual(
            len(self.cloud.books.documents("sap", "purchase_requisition")),
            self.query("SELECT COUNT(*) FROM requisitions")[0][0],
        )

    @defer.inlineCallbacks
    def test_usage_through_workday(self) -> Any:
        """The same scenario through workday (SOAP, WS-Security from a file): stock issues as
        inventory adjustments, requisitions as Submit_Requisition; ledger = Workday stock."""
        counts = yield defer.ensureDeferred(self.scenario("workday"))
        self.assert_everything_sent_once(counts)
        self.assert_ledger_equals_erp("workday")
        self.assertEqual(
            len(self.cloud.books.documents("workday", "wd_requisition")),
            self.query("SELECT COUNT(*) FROM requisitions")[0][0],
        )

    # ------------------------------------------------------------------ through the engine

    @defer.inlineCallbacks
    def test_a_429_storm_loses_nothing_and_a_rate_limit_keeps_under_the_erp(self) -> Any:
        """SAP lets 10 calls a second through (burst 4). Twelve usage messages at once with 8
        calls in flight: a storm of 429s; every issue is posted exactly once, nothing is dead,
        and no row has an attempt counted for a 429. Then with `rate_limit: {per_second: 5}`
        on the destination, twelve more: not one 429, and SAP never saw more than its limit in
        a second."""
        self.seed_erp("sap")
        yield defer.ensureDeferred(
            self.control("/_emulation/limits", {"system": "sap", "per_second": 10, "burst": 4})
        )
        url = self.sandbox.http_url
        text = (
            channel("{hl7v2: {}}", "hl7_usage_to_ledger", "sap", url)
            .replace("    concurrency: 4", "    concurrency: 8")
            .replace(", bulk: {max_items: 20, max_wait: 100ms}", "")
        )
        yield defer.ensureDeferred(self.start("sap", {"usage": text}))
        for n in range(12):
            yield defer.ensureDeferred(self.engine.ingest("usage", dft(n), "t"))
        counts = yield defer.ensureDeferred(self.settle())
        self.assertEqual(counts["dead_letters"], 0)
        self.assertGreater(self.cloud.limits.throttled["sap"], 0)
        worker = self.engine.workers[("usage", "erp")]
        self.assertGreater(worker.throttled, 0)
        attempts = self.query("SELECT attempts FROM outbox WHERE destination = 'erp'")
        self.assertEqual([a for (a,) in attempts], [1] * 12)
        self.assertEqual(len(self.cloud.books.documents("sap", "material_document")), 12)
        self.assertEqual(self.cloud.books.stock("sap", "1010:OR01", "ITEM-200010")[0], Decimal(38))

        yield defer.ensureDeferred(self.engine.stop())
        (self.root / "channels/usage.yaml").write_text(
            text.replace(
                "    concurrency: 8", "    concurrency: 8\n    rate_limit: {per_second: 5}"
            )
        )
        throttled = self.cloud.limits.throttled["sap"]
        self.cloud.limits.accepted["sap"].clear()
        # The same limit again, its bucket full: SAP has been quiet since the storm.
        yield defer.ensureDeferred(
            self.control("/_emulation/limits", {"system": "sap", "per_second": 10, "burst": 4})
        )
        yield defer.ensureDeferred(self.start("sap", {}))
        for n in range(12, 24):
            yield defer.ensureDeferred(self.engine.ingest("usage", dft(n), "t"))
        yield defer.ensureDeferred(self.settle())
        self.assertEqual(self.cloud.limits.throttled["sap"], throttled)
        self.assertLessEqual(self.cloud.limits.most_in_a_second("sap"), 10)
        self.assertEqual(self.cloud.books.stock("sap", "1010:OR01", "ITEM-200010")[0], Decimal(26))

    @defer.inlineCallbacks
    def test_an_item_sap_does_not_know_fails_only_its_own_delivery(self) -> Any:
        """Six messages go in one $batch; SAP's item master lacks the gauze (ITEM-200022):
        that message's issue is dead with SAP's M7/018 and its message in error; the five
        others are posted, each with its own material document, from the same call."""
        self.seed_erp("sap", skip=("ITEM-200022",))
        url = self.sandbox.http_url
        text = channel("{hl7v2: {}}", "hl7_usage_to_ledger", "sap", url).replace(
            "max_wait: 100ms", "max_wait: 1s"
        )
        yield defer.ensureDeferred(self.start("sap", {"usage": text}))
        for n in range(6):
            code = "272000022" if n == 3 else "272000010"
            yield defer.ensureDeferred(self.engine.ingest("usage", dft(n, code), "t"))
        counts = yield defer.ensureDeferred(self.settle())
        self.assertEqual(counts["messages"], {"sent": 5, "error": 1})
        (reason,) = self.query("SELECT reason FROM dead_letters")
        self.assertIn("M7/018 Material ITEM-200022 does not exist", reason[0])
        keys = self.query("SELECT DISTINCT batch_key FROM outbox WHERE destination = 'erp'")
        self.assertEqual(len(keys), 1)  # one call carried all six
        self.assertEqual(len(self.cloud.books.documents("sap", "material_document")), 5)
        self.assertEqual(self.cloud.calls["sap"], 2)  # the CSRF fetch and the one $batch

    @defer.inlineCallbacks
    def test_secrets_stay_out_of_the_logs_the_store_and_messages_show(self) -> Any:
        """After the Oracle scenario no log line, outbox row (payload, meta, response, error)
        nor `wharf messages --show` output holds the client secret or an access token."""
        yield defer.ensureDeferred(self.scenario("oracle"))
        tokens = list(self.cloud.tokens.tokens)
        self.assertTrue(tokens)
        secrets = [SECRETS["oracle"], *tokens]
        from engine import cli

        shown = io.StringIO()
        with redirect_stdout(shown):
            for (message_id,) in self.query("SELECT id FROM messages"):
                cli.main(["--root", str(self.root), "messages", "--show", message_id, "--body"])
        dump = "\n".join(
            [shown.getvalue(), *self.logged]
            + [
                repr(row)
                for row in self.query(
                    "SELECT payload, meta, response, last_error, batch_key FROM outbox"
                )
            ]
        )
        self.assertIn("TransactionInterfaceId", dump)
        for secret in secrets:
            self.assertNotIn(secret, dump)
