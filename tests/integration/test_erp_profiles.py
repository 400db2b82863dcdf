"""The three ERP profile destinations against the sandbox's emulation of each API, over real
sockets on the real reactor: Oracle Fusion (OAuth2 with tokens that expire, all-or-nothing
batches, look before create), SAP S/4HANA (basic auth, the CSRF handshake, repeatable
requests, $batch with a changeset each) and Workday (WS-Security, Client and Server faults)."""

from __future__ import annotations

import json
import shutil
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import treq
import yaml
from twisted.internet import defer, reactor
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from engine.destinations.oracle_fusion import ORACLE_FUSION_SPEC, OracleFusionDestination
from engine.destinations.sap_s4hana import SAP_S4HANA_SPEC, SapS4hanaDestination
from engine.destinations.workday import WORKDAY_SPEC, WorkdayDestination
from engine.errors import DeliveryError
from engine.model import Delivery, idempotency_key
from engine.sandbox.cloud import Credentials
from engine.sandbox.service import SandboxService
from engine.spec import Context

pytestmark = pytest.mark.integration

SECRETS = {
    "ORACLE_SECRET": "oracle-test-secret-7f3",
    "SAP_PASSWORD": "sap-test-password-91c",
    "WD_PASSWORD": "workday-test-password-5d2",
}
CREDENTIALS = Credentials(
    oracle_client_secret=SECRETS["ORACLE_SECRET"],
    sap_password=SECRETS["SAP_PASSWORD"],
    workday_password=SECRETS["WD_PASSWORD"],
)


def parse(spec: Any, doc: dict[str, Any]) -> Any:
    ctx = Context("<test>")
    config = spec.parse(yaml.compose(yaml.safe_dump(doc)), ctx, "")
    assert not ctx.errors, [str(e) for e in ctx.errors]
    return config


def issue(*lines: tuple[str, str, str], n: int = 1, **extra: Any) -> Delivery:
    """A stock issue delivery with (item, quantity, location) lines."""
    doc = {
        "type": "inventory_issue",
        "encounter": "ENC-1",
        "lines": [
            {
                "usage_id": f"CU-{n}-{i}",
                "event_key": f"CU-{n}-{i}|{item}|20260115",
                "item_id": item,
                "quantity": qty,
                "uom": "EA",
                "location_id": location,
                "cost_center": "CC-7010",
                "gl_account": "5410-278",
                "service_date": "20260115",
                "lot": None,
                "serial": None,
            }
            for i, (item, qty, location) in enumerate(lines)
        ],
    }
    return delivery(doc, "issue", n, **extra)


def requisition(item: str, qty: str, location: str, n: int = 1) -> Delivery:
    doc = {
        "location_id": location,
        "item_id": item,
        "quantity": qty,
        "uom": "EA",
        "order_quantity": qty,
        "order_uom": "EA",
        "reason": "on hand 2 below reorder point 3",
    }
    return delivery(doc, "requisition", n)


def delivery(doc: dict[str, Any], effect: str, n: int, **extra: Any) -> Delivery:
    values: dict[str, Any] = dict(
        id=n,
        message_id=f"m-{n}",
        channel="usage",
        destination="erp",
        payload=json.dumps(doc).encode(),
        content_type="application/json",
        idempotency_key=idempotency_key("usage", "erp", f"m-{n}", 0),
        correlation_id=f"c-{n}",
        order_key=None,
        attempts=0,
        created_at=1768471200.0,
        meta={"effect": effect, "event_key": f"key-{n}"},
    )
    values.update(extra)
    return Delivery(**values)


class EmulationCase(unittest.TestCase):
    timeout = 30

    def setUp(self) -> Any:
        tmp = Path(tempfile.mkdtemp(prefix="wharf-erp-"))
        self.addCleanup(shutil.rmtree, tmp, True)
        self.tmp = tmp
        self.sandbox = SandboxService(
            tmp / "sandbox.db", http_port=0, mllp_port=0, reactor=reactor, credentials=CREDENTIALS
        )
        self.sandbox.start()
        self.addCleanup(lambda: defer.ensureDeferred(self.sandbox.stop()))
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)
        self.cloud = self.sandbox.cloud
        self.url = self.sandbox.http_url

    def seed(self, system: str, rows: list[tuple[str, str, str]]) -> None:
        self.cloud.books.seed(
            system,
            [
                {"location": loc, "item": item, "on_hand": qty, "uom": "EA"}
                for loc, item, qty in rows
            ],
        )

    def stock(self, system: str, location: str, item: str) -> Decimal:
        found = self.cloud.books.stock(system, location, item)
        assert found is not None
        return found[0]

    async def control(self, path: str, doc: Any = None) -> Any:
        response = await treq.post(self.url + path, json=doc or {}, pool=self.pool, reactor=reactor)
        return await response.json()

    def make(self, cls: Any, spec: Any, doc: dict[str, Any]) -> Any:
        dest = cls(
            parse(spec, doc),
            reactor=reactor,
            channel="usage",
            name="erp",
            base_dir=self.tmp,
            environ=SECRETS,
        )
        self.addCleanup(dest.close)
        return dest

    async def failure(self, call: Any) -> DeliveryError:
        try:
            await call
        except DeliveryError as e:
            return e
        raise AssertionError("the call did not fail")


# --------------------------------------------------------------------------- Oracle Fusion


class OracleFusionTests(EmulationCase):
    def setUp(self) -> Any:
        super().setUp()
        self.seed(
            "oracle", [("GH1:ORMAIN", "ITEM-100123", "10"), ("GH1:ORMAIN", "ITEM-200010", "50")]
        )

    def oracle(self, **extra: Any) -> OracleFusionDestination:
        doc = {
            "base_url": self.url,
            "auth": {
                "oauth2": {
                    "token_url": self.url + "/oauth2/v1/token",
                    "client_id": "wharf-oracle",
                    "client_secret": {"env": "ORACLE_SECRET"},
                }
            },
            "organization_code": "GH1",
            "subinventories": {"LOC-OR-MAIN": "ORMAIN"},
            "business_unit": "GENHOSP BU",
            "preparer_email": "supply@genhosp.example",
            **extra,
        }
        return self.make(OracleFusionDestination, ORACLE_FUSION_SPEC, doc)

    @defer.inlineCallbacks
    def test_an_expired_token_is_renewed_once_and_nothing_is_lost(self) -> Any:
        """Three issues; between the first and the second every token the identity domain gave
        out expires: the API answers 401, the destination fetches a new token once and sends
        again. Three staged transactions, stock down by exactly their quantities, two tokens."""
        dest = self.oracle()
        yield defer.ensureDeferred(dest.send(issue(("ITEM-100123", "2", "LOC-OR-MAIN"), n=1)))
        yield defer.ensureDeferred(self.control("/_emulation/oauth/expire"))
        for n in (2, 3):
            yield defer.ensureDeferred(dest.send(issue(("ITEM-100123", "1", "LOC-OR-MAIN"), n=n)))
        self.assertEqual(self.cloud.tokens.issued, 2)
        self.assertEqual(dest.auth.fetches, 2)
        self.assertEqual(self.cloud.tokens.refused, 1)
        self.assertEqual(len(self.cloud.books.documents("oracle", "staged_transaction")), 3)
        self.assertEqual(self.stock("oracle", "GH1:ORMAIN", "ITEM-100123"), Decimal(6))

    @defer.inlineCallbacks
    def test_an_issue_of_several_lines_is_one_batch_and_comes_back_with_its_ids(self) -> Any:
        """Two lines go as one all-or-nothing batch (a Miscellaneous Issue each, negative
        quantities, the event key as TransactionReference); the answer kept is the
        TransactionInterfaceIds with their references."""
        dest = self.oracle()
        body = yield defer.ensureDeferred(
            dest.send(
                issue(("ITEM-100123", "2", "LOC-OR-MAIN"), ("ITEM-200010", "3", "LOC-OR-MAIN"))
            )
        )
        kept = json.loads(body)["inventoryStagedTransactions"]
        self.assertEqual(
            [k["TransactionReference"] for k in kept],
            ["CU-1-0|ITEM-100123|20260115", "CU-1-1|ITEM-200010|20260115"],
        )
        self.assertTrue(all(isinstance(k["TransactionInterfaceId"], int) for k in kept))
        docs = self.cloud.books.documents("oracle", "staged_transaction")
        self.assertEqual([d["doc"]["TransactionQuantity"] for d in docs], ["-2", "-3"])
        self.assertEqual({d["doc"]["TransactionTypeName"] for d in docs}, {"Miscellaneous Issue"})

    @defer.inlineCallbacks
    def test_a_bad_part_fails_the_batch_its_issue_is_refused_the_others_go_again(self) -> Any:
        """Three issues in one bulk call; the second names an item Oracle does not know: the
        batch is refused as a whole (nothing posted), that issue fails permanently with
        Oracle's error detail, the other two are requeued (not failed) and post in a new call."""
        dest = self.oracle(bulk={"max_items": 10})
        batch = [
            issue(("ITEM-100123", "1", "LOC-OR-MAIN"), n=1),
            issue(("ITEM-999999", "1", "LOC-OR-MAIN"), n=2),
            issue(("ITEM-200010", "5", "LOC-OR-MAIN"), n=3),
        ]
        outcomes = yield defer.ensureDeferred(dest.send_batch(batch, "batch-key-1"))
        self.assertEqual([o.requeue for o in outcomes], [True, False, True])
        error = outcomes[1].error
        self.assertFalse(error.retryable)
        self.assertIn("The item ITEM-999999 isn't valid.", error.message)
        self.assertNotIn("ITEM-999999", error.log_text)
        self.assertEqual(self.cloud.books.documents("oracle"), [])
        outcomes = yield defer.ensureDeferred(dest.send_batch([batch[0], batch[2]], "batch-key-2"))
        self.assertEqual([o.error for o in outcomes], [None, None])
        self.assertEqual(self.stock("oracle", "GH1:ORMAIN", "ITEM-200010"), Decimal(45))

    @defer.inlineCallbacks
    def test_a_resend_looks_before_it_creates(self) -> Any:
        """The answer to an issue is lost (the sandbox answers late, the call times out: an
        ambiguous outcome); the resend finds its TransactionReference in Oracle and posts
        nothing again."""
        dest = self.oracle(timeout="1s")
        yield defer.ensureDeferred(dest.auth.authorization())  # the token first
        yield defer.ensureDeferred(self.control("/_faults", {"delay_next": 1, "seconds": 3}))
        first = issue(("ITEM-100123", "2", "LOC-OR-MAIN"))
        error = yield defer.ensureDeferred(self.failure(dest.send(first)))
        self.assertTrue(error.ambiguous)
        again = Delivery(**{**first.__dict__, "attempts": 1})
        yield defer.ensureDeferred(dest.send(again))
        self.assertEqual(len(self.cloud.books.documents("oracle", "staged_transaction")), 1)
        self.assertEqual(self.stock("oracle", "GH1:ORMAIN", "ITEM-100123"), Decimal(8))

    @defer.inlineCallbacks
    def test_a_requisition_is_created_then_submitted(self) -> Any:
        """purchaseRequisitions create with the BU, preparer and one inventory line, then its
        submitRequisition action: the emulated requisition ends APPROVED."""
        dest = self.oracle()
        body = yield defer.ensureDeferred(dest.send(requisition("ITEM-100123", "5", "LOC-OR-MAIN")))
        self.assertTrue(json.loads(body)["submitted"])
        (doc,) = self.cloud.books.documents("oracle", "requisition")
        self.assertEqual(doc["status"], "APPROVED")
        self.assertEqual(doc["doc"]["lines"][0]["DestinationSubinventory"], "ORMAIN")

    @defer.inlineCallbacks
    def test_a_429_is_throttled_with_its_retry_after(self) -> Any:
        """Past the emulated rate limit Oracle answers 429 with Retry-After: a throttled error
        (the worker holds the queue) carrying the wait."""
        dest = self.oracle()
        yield defer.ensureDeferred(
            self.control("/_emulation/limits", {"system": "oracle", "per_second": 0.2, "burst": 1})
        )
        yield defer.ensureDeferred(dest.send(issue(("ITEM-100123", "1", "LOC-OR-MAIN"), n=1)))
        error = yield defer.ensureDeferred(
            self.failure(dest.send(issue(("ITEM-100123", "1", "LOC-OR-MAIN"), n=2)))
        )
        self.assertTrue(error.throttled and error.retryable)
        self.assertGreaterEqual(error.retry_after, 1)


# --------------------------------------------------------------------------- SAP S/4HANA


class SapTests(EmulationCase):
    def setUp(self) -> Any:
        super().setUp()
        self.seed("sap", [("1010:OR01", "ITEM-100123", "10"), ("1010:OR01", "ITEM-200010", "4")])

    def sap(self, **extra: Any) -> SapS4hanaDestination:
        doc = {
            "base_url": self.url,
            "auth": {"basic": {"user": "WHARF_COMM", "password": {"env": "SAP_PASSWORD"}}},
            "plant": "1010",
            "storage_locations": {"LOC-OR-MAIN": "OR01"},
            **extra,
        }
        return self.make(SapS4hanaDestination, SAP_S4HANA_SPEC, doc)

    @defer.inlineCallbacks
    def test_a_goods_issue_is_one_material_document_after_the_csrf_handshake(self) -> Any:
        """The first write fetches a CSRF token (and its session cookie); the issue is one
        material document with a 201 item; what comes back is its number and year. A second
        issue reuses the token."""
        dest = self.sap()
        body = yield defer.ensureDeferred(dest.send(issue(("ITEM-100123", "2", "LOC-OR-MAIN"))))
        kept = json.loads(body)
        self.assertTrue(kept["MaterialDocument"].startswith("49"))
        yield defer.ensureDeferred(dest.send(issue(("ITEM-100123", "1", "LOC-OR-MAIN"), n=2)))
        self.assertEqual(dest.csrf_fetches, 1)
        (first, _) = self.cloud.books.documents("sap", "material_document")
        (item,) = first["doc"]["to_MaterialDocumentItem"]["results"]
        self.assertEqual(
            (item["GoodsMovementType"], item["QuantityInEntryUnit"], item["CostCenter"]),
            ("201", "2", "CC-7010"),
        )
        self.assertEqual(self.stock("sap", "1010:OR01", "ITEM-100123"), Decimal(7))

    @defer.inlineCallbacks
    def test_a_stale_csrf_token_is_fetched_again_once(self) -> Any:
        """SAP forgets the session (403 x-csrf-token: Required): one new fetch, the write goes."""
        dest = self.sap()
        yield defer.ensureDeferred(dest.send(issue(("ITEM-100123", "1", "LOC-OR-MAIN"), n=1)))
        self.cloud.sessions.tokens.clear()
        yield defer.ensureDeferred(dest.send(issue(("ITEM-100123", "1", "LOC-OR-MAIN"), n=2)))
        self.assertEqual(dest.csrf_fetches, 2)
        self.assertEqual(self.stock("sap", "1010:OR01", "ITEM-100123"), Decimal(8))

    @defer.inlineCallbacks
    def test_a_resend_is_answered_with_the_first_result(self) -> Any:
        """The same delivery sent twice (a lost answer): the repeatable-request headers make
        SAP answer the resend with the first material document; stock moves once."""
        dest = self.sap()
        d = issue(("ITEM-100123", "3", "LOC-OR-MAIN"))
        first = yield defer.ensureDeferred(dest.send(d))
        second = yield defer.ensureDeferred(dest.send(Delivery(**{**d.__dict__, "attempts": 1})))
        self.assertEqual(first, second)
        self.assertEqual(len(self.cloud.books.documents("sap", "material_document")), 1)
        self.assertEqual(self.stock("sap", "1010:OR01", "ITEM-100123"), Decimal(7))

    @defer.inlineCallbacks
    def test_a_batch_with_a_stock_deficit_fails_only_that_changeset(self) -> Any:
        """Three issues in one $batch; the second asks for more than the storage location
        holds (M7/021): it fails permanently with SAP's message, the other two are posted
        and each comes back with its own material document."""
        dest = self.sap(bulk={"max_items": 10})
        batch = [
            issue(("ITEM-100123", "1", "LOC-OR-MAIN"), n=1),
            issue(("ITEM-200010", "9", "LOC-OR-MAIN"), n=2),
            issue(("ITEM-200010", "4", "LOC-OR-MAIN"), n=3),
        ]
        outcomes = yield defer.ensureDeferred(dest.send_batch(batch, "b-1"))
        self.assertIsNone(outcomes[0].error)
        self.assertIsNone(outcomes[2].error)
        self.assertFalse(outcomes[1].error.retryable)
        self.assertIn("M7/021 Deficit of SL Unrestricted-use 5 EA", outcomes[1].error.message)
        numbers = {json.loads(o.response)["MaterialDocument"] for o in (outcomes[0], outcomes[2])}
        self.assertEqual(len(numbers), 2)
        self.assertEqual(self.stock("sap", "1010:OR01", "ITEM-200010"), Decimal(0))

    @defer.inlineCallbacks
    def test_a_wrong_password_is_permanent_and_not_in_the_text(self) -> Any:
        dest = self.make(
            SapS4hanaDestination,
            SAP_S4HANA_SPEC,
            {
                "base_url": self.url,
                "auth": {"basic": {"user": "WHARF_COMM", "password": {"env": "WD_PASSWORD"}}},
                "plant": "1010",
                "storage_locations": {"LOC-OR-MAIN": "OR01"},
            },
        )
        error = yield defer.ensureDeferred(
            self.failure(dest.send(issue(("ITEM-100123", "1", "LOC-OR-MAIN"))))
        )
        self.assertFalse(error.retryable)
        self.assertIn("HTTP 401", error.message)
        self.assertNotIn(SECRETS["WD_PASSWORD"], error.message)

    @defer.inlineCallbacks
    def test_a_requisition_is_a_purchase_requisition(self) -> Any:
        dest = self.sap()
        body = yield defer.ensureDeferred(dest.send(requisition("ITEM-100123", "5", "LOC-OR-MAIN")))
        self.assertIn("PurchaseRequisition", json.loads(body))
        (doc,) = self.cloud.books.documents("sap", "purchase_requisition")
        (item,) = doc["doc"]["to_PurchaseReqnItem"]
        self.assertEqual(
            (item["Material"], item["RequestedQuantity"], item["StorageLocation"]),
            ("ITEM-100123", "5", "OR01"),
        )


# --------------------------------------------------------------------------- Workday

AP_INVOICE = {
    "type": "ap_invoice",
    "vendor": "acmemed",
    "invoice_number": "INV-55501",
    "invoice_date": "2026-01-17",
    "po_number": "4500012345",
    "credit": False,
    "currency": "USD",
    "subtotal": "250.00",
    "charges": "15.00",
    "tax": "0.00",
    "total": "265.00",
    "lines": [
        {"line": "1", "po_line": "1", "quantity": "10", "uom": "EA", "unit_price": "12.50"},
        {"line": "2", "po_line": "2", "quantity": "5", "uom": "BX", "unit_price": "25.00"},
    ],
    "match": "three_way",
}


class WorkdayTests(EmulationCase):
    def setUp(self) -> Any:
        super().setUp()
        self.seed("workday", [("OR_MAIN", "ITEM-100123", "10")])

    def workday(self, password: str = "WD_PASSWORD", **extra: Any) -> WorkdayDestination:
        doc = {
            "base_url": self.url,
            "tenant": "genhosp",
            "ws_security": {"username": "ISU_Wharf@genhosp", "password": {"env": password}},
            "company": "GENHOSP",
            "requester": "21001",
            "suppliers": {"acmemed": "SUP-000123"},
            "locations": {"LOC-OR-MAIN": "OR_MAIN"},
            **extra,
        }
        return self.make(WorkdayDestination, WORKDAY_SPEC, doc)

    @defer.inlineCallbacks
    def test_a_supplier_invoice_is_submitted_and_a_resend_names_the_same_invoice(self) -> Any:
        """Submit_Supplier_Invoice with the vendor's Supplier_ID, the invoice's lines, freight
        and control total; the WID comes back. Sent again (the same Supplier_Invoice_ID), the
        same invoice answers: one invoice in Workday."""
        dest = self.workday()
        d = delivery(AP_INVOICE, "ap_invoice", 1)
        first = json.loads((yield defer.ensureDeferred(dest.send(d))))
        again = json.loads((yield defer.ensureDeferred(dest.send(d))))
        self.assertEqual(first, again)
        self.assertTrue(first["workday"][0]["WID"].startswith("WID-"))
        self.assertEqual(first["workday"][0]["reference_id"], "WHARF-acmemed-INV-55501")
        (doc,) = self.cloud.books.documents("workday", "supplier_invoice")
        self.assertEqual((doc["doc"]["supplier"], doc["doc"]["total"]), ("SUP-000123", "265.00"))

    @defer.inlineCallbacks
    def test_a_validation_fault_is_permanent_and_a_server_fault_is_retried(self) -> Any:
        """A control total that does not add up is a Client.validationError: permanent, its
        message kept in the text but only the fault code logged. An injected
        Server.processingFault is transient; the same call then goes through."""
        dest = self.workday()
        wrong = {**AP_INVOICE, "total": "999.00"}
        error = yield defer.ensureDeferred(
            self.failure(dest.send(delivery(wrong, "ap_invoice", 1)))
        )
        self.assertFalse(error.retryable)
        self.assertIn("Client.validationError", error.message)
        self.assertIn("Control Amount Total 999.00 does not equal", error.message)
        self.assertNotIn("999.00", error.log_text)
        yield defer.ensureDeferred(self.control("/_emulation/workday/faults", {"server_faults": 1}))
        error = yield defer.ensureDeferred(
            self.failure(dest.send(delivery(AP_INVOICE, "ap_invoice", 2)))
        )
        self.assertTrue(error.retryable)
        self.assertFalse(error.ambiguous)
        self.assertIn("Server.processingFault", error.message)
        yield defer.ensureDeferred(dest.send(delivery(AP_INVOICE, "ap_invoice", 2)))
        self.assertEqual(len(self.cloud.books.documents("workday", "supplier_invoice")), 1)

    @defer.inlineCallbacks
    def test_a_wrong_password_is_refused_by_ws_security(self) -> Any:
        dest = self.workday(password="SAP_PASSWORD")
        error = yield defer.ensureDeferred(
            self.failure(dest.send(delivery(AP_INVOICE, "ap_invoice", 1)))
        )
        self.assertFalse(error.retryable)
        self.assertIn("authenticationError", error.message)
        self.assertNotIn(SECRETS["SAP_PASSWORD"], error.message)

    @defer.inlineCallbacks
    def test_a_stock_issue_is_an_inventory_adjustment(self) -> Any:
        """Usage of 3 at the OR is an adjustment of -3 at its Workday location; a credit of 1
        puts one back."""
        dest = self.workday()
        yield defer.ensureDeferred(dest.send(issue(("ITEM-100123", "3", "LOC-OR-MAIN"), n=1)))
        yield defer.ensureDeferred(dest.send(issue(("ITEM-100123", "-1", "LOC-OR-MAIN"), n=2)))
        self.assertEqual(self.stock("workday", "OR_MAIN", "ITEM-100123"), Decimal(8))
