"""The ERP/billing sandbox over real sockets: its HTTP API through treq, its billing receiver
through a real MLLP client, on the real reactor."""

from __future__ import annotations

import json
import shutil
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import treq
from twisted.internet import defer, endpoints, protocol, reactor
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from engine.codecs.hl7v2 import tokenize
from engine.net.mllp import EB, SB
from engine.sandbox.service import SandboxService

SEED = "location,item,on_hand,uom\nLOC-OR-MAIN,ITEM-100123,10,EA\nLOC-CATH-1,ITEM-300789,4,EA\n"


def issue(qty: str = "2", usage: str = "CU-1", **kw: Any) -> dict[str, Any]:
    doc = {
        "type": "inventory_issue",
        "encounter": "ENC-998877",
        "lines": [
            {
                "usage_id": usage,
                "item_id": "ITEM-100123",
                "quantity": qty,
                "uom": "EA",
                "location_id": "LOC-OR-MAIN",
                "cost_center": "CC-7010",
                "gl_account": "5410-278",
            }
        ],
    }
    doc.update(kw)
    return doc


def dft(
    control_id: str = "POU-1", encounter: str = "ENC-998877", code2: str = "272000010"
) -> bytes:
    segments = [
        f"MSH|^~\\&|POU_CABINET|GENHOSP|BILLING|GENHOSP|20260115103000||DFT^P03^DFT_P03|{control_id}|P|2.5.1",
        "EVN|P03|20260115103000",
        "PID|1||MRN12345^^^GENHOSP^MR||DOE^JANE",
        f"PV1|1|O|OR^OR05^01^GENHOSP||||||||||||||||{encounter}^^^GENHOSP^VN",
        "FT1|1|CU-7f3a9c||20260115093000|20260115103000|CG|278000123^BONE SCREW^99CDM|||2",
        f"FT1|2|CU-7f3a9d||20260115093000|20260115103000|CG|{code2}^SUTURE 3-0^99CDM|||3",
    ]
    return ("\r".join(segments) + "\r").encode()


class MLLPClient(protocol.Protocol):
    """Sends frames and collects the framed replies."""

    def __init__(self) -> None:
        self.buf = b""
        self.replies: list[bytes] = []
        self.waiting: list[tuple[int, defer.Deferred]] = []

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        while EB in self.buf:
            frame, _, self.buf = self.buf.partition(EB)
            self.replies.append(frame.lstrip(SB))
        for n, d in list(self.waiting):
            if len(self.replies) >= n:
                self.waiting.remove((n, d))
                d.callback(self.replies[:n])

    def exchange(self, frame: bytes) -> defer.Deferred:
        """The reply to ``frame`` (the next one on this connection)."""
        n = len(self.replies) + 1
        d = defer.Deferred()
        self.waiting.append((n, d))
        self.transport.write(SB + frame + EB)
        d.addCallback(lambda replies: replies[n - 1])
        return d.addTimeout(5, reactor)


def msa(ack: bytes) -> list[str]:
    return tokenize(ack).segment("MSA").text.split("|")


@pytest.mark.integration
class SandboxTestCase(unittest.TestCase):
    reject_codes: tuple[str, ...] = ()

    async def _start(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="wharf-sandbox-"))
        self.addCleanup(shutil.rmtree, self.dir, True)
        seed = self.dir / "onhand.csv"
        seed.write_text(SEED, encoding="utf-8")
        self.service = SandboxService(
            self.dir / "sandbox.db",
            http_port=0,
            mllp_port=0,
            reactor=reactor,
            seed=seed,
            reject_codes=self.reject_codes,
        )
        await self.service.start()
        self.addCleanup(lambda: defer.ensureDeferred(self.service.stop()))
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.base = self.service.http_url

    def setUp(self) -> defer.Deferred:
        return defer.ensureDeferred(self._start())

    @property
    def state(self) -> Any:
        return self.service.state

    async def post(self, path: str, doc: Any, key: str | None = None) -> tuple[int, Any, Any]:
        headers = {"Idempotency-Key": key} if key else {}
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        resp = await treq.post(self.base + path, body, headers=headers, pool=self.pool)
        return resp.code, json.loads(await resp.content()), resp.headers

    async def get(self, path: str) -> tuple[int, Any]:
        resp = await treq.get(self.base + path, pool=self.pool)
        return resp.code, json.loads(await resp.content())

    async def mllp(self) -> MLLPClient:
        ep = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.service.mllp_port)
        client = await endpoints.connectProtocol(ep, MLLPClient())
        self.addCleanup(client.transport.loseConnection)
        return client


class ErpApiTests(SandboxTestCase):
    async def test_issue_decrements_on_hand(self) -> None:
        """POST /inventory/issues answers 201 with ISS-n and the line count, and decrements the
        location's on-hand; GET /inventory shows it."""
        code, body, _ = await self.post("/inventory/issues", issue("2"))
        self.assertEqual((code, body), (201, {"id": "ISS-1", "lines": 1}))
        self.assertEqual(self.state.on_hand("LOC-OR-MAIN", "ITEM-100123"), Decimal("8"))
        code, body = await self.get("/inventory?location=LOC-OR-MAIN&item=ITEM-100123")
        self.assertEqual(code, 200)
        self.assertEqual(body["inventory"][0]["on_hand"], "8")

    async def test_same_key_returns_original_and_changes_nothing(self) -> None:
        """A resend with the same Idempotency-Key gets the original 201 body (marked replayed)
        and does not decrement again."""
        first = await self.post("/inventory/issues", issue("3"), key="usage-CU-1")
        second = await self.post("/inventory/issues", issue("3"), key="usage-CU-1")
        self.assertEqual(first[:2], (201, {"id": "ISS-1", "lines": 1}))
        self.assertEqual(second[:2], first[:2])
        self.assertEqual(second[2].getRawHeaders("idempotent-replayed"), ["true"])
        self.assertEqual(self.state.on_hand("LOC-OR-MAIN", "ITEM-100123"), Decimal("7"))
        counts = self.state.counts()
        self.assertEqual((counts["issues"], counts["idempotent_replays"]), (1, 1))

    async def test_same_key_different_body_is_409(self) -> None:
        """The same Idempotency-Key with a different body is 409, counted, and changes nothing."""
        await self.post("/inventory/issues", issue("1"), key="k-1")
        code, body, _ = await self.post("/inventory/issues", issue("5"), key="k-1")
        self.assertEqual(code, 409)
        self.assertIn("Idempotency-Key", body["error"])
        self.assertEqual(self.state.on_hand("LOC-OR-MAIN", "ITEM-100123"), Decimal("9"))
        self.assertEqual(self.state.counts()["idempotency_conflicts"], 1)

    async def test_batch_issues(self) -> None:
        """The bulk form {"issues": [...]} posts every issue and answers one id per issue."""
        doc = {"issues": [issue("1", "CU-1"), issue("-2", "CU-2"), issue("4", "CU-3")]}
        code, body, _ = await self.post("/inventory/issues", doc, key="batch-1")
        self.assertEqual(code, 201)
        self.assertEqual(body["ids"], ["ISS-1", "ISS-2", "ISS-3"])
        self.assertEqual(self.state.on_hand("LOC-OR-MAIN", "ITEM-100123"), Decimal("7"))
        self.assertEqual(self.state.counts()["issues"], 3)

    async def test_422_names_the_field_and_changes_nothing(self) -> None:
        """A missing or invalid field is 422 naming it (also inside a batch); nothing changes,
        and the key is not used up."""
        bad = issue()
        del bad["lines"][0]["location_id"]
        code, body, _ = await self.post("/inventory/issues", bad, key="k-bad")
        self.assertEqual(code, 422)
        self.assertTrue(body["error"].startswith("lines[0].location_id:"), body)
        code, body, _ = await self.post("/inventory/issues", {"issues": [issue(), issue("x")]})
        self.assertEqual(code, 422)
        self.assertTrue(body["error"].startswith("issues[1].lines[0].quantity:"), body)
        code, body, _ = await self.post("/inventory/issues", b"{not json")
        self.assertEqual((code, body["error"][:5]), (422, "body:"))
        self.assertEqual(self.state.counts()["issues"], 0)
        code, _, _ = await self.post("/inventory/issues", issue(), key="k-bad")
        self.assertEqual(code, 201)

    async def test_requisition_open_close_list(self) -> None:
        """A requisition is created open, listed under ?status=open, closed by POST
        /requisitions/{id}/close and then listed under ?status=closed; unknown ids are 404."""
        req = {
            "location_id": "LOC-OR-MAIN",
            "item_id": "ITEM-100123",
            "quantity": "20",
            "uom": "EA",
            "reason": "par",
        }
        code, body, _ = await self.post("/requisitions", req, key="req-1")
        self.assertEqual((code, body["id"]), (201, "REQ-1"))
        code, body = await self.get("/requisitions?status=open")
        self.assertEqual([r["id"] for r in body["requisitions"]], ["REQ-1"])
        code, body, _ = await self.post("/requisitions/REQ-1/close", b"")
        self.assertEqual((code, body), (200, {"id": "REQ-1", "status": "closed"}))
        _, body = await self.get("/requisitions?status=open")
        self.assertEqual(body["requisitions"], [])
        _, body = await self.get("/requisitions?status=closed")
        self.assertEqual([r["id"] for r in body["requisitions"]], ["REQ-1"])
        code, _, _ = await self.post("/requisitions/REQ-9/close", b"")
        self.assertEqual(code, 404)
        code, body, _ = await self.post("/requisitions", {**req, "quantity": "-1"})
        self.assertEqual(code, 422)
        self.assertTrue(body["error"].startswith("quantity:"))

    async def test_goods_receipts_ap_invoices_state_and_404(self) -> None:
        """Goods receipts and AP invoices are stored with an id; GET /state counts them; an
        unknown path is a JSON 404."""
        code, body, _ = await self.post("/goods-receipts", {"po_no": "PO-1", "lines": []})
        self.assertEqual((code, body), (201, {"id": "GR-1"}))
        code, body, _ = await self.post("/ap-invoices", {"invoice_no": "INV-7"})
        self.assertEqual((code, body), (201, {"id": "APINV-1"}))
        code, counts = await self.get("/state")
        self.assertEqual((counts["goods_receipts"], counts["ap_invoices"]), (1, 1))
        code, body = await self.get("/no/such/thing")
        self.assertEqual(code, 404)
        self.assertIn("error", body)

    async def test_fault_injection_503_with_retry_after(self) -> None:
        """POST /_faults {"fail_next": 1, "status": 503, "retry_after": 2} makes the next
        request a 503 with Retry-After that changes nothing; the one after goes through."""
        code, _, _ = await self.post("/_faults", {"fail_next": 1, "status": 503, "retry_after": 2})
        self.assertEqual(code, 200)
        code, body, headers = await self.post("/inventory/issues", issue(), key="k-f")
        self.assertEqual(code, 503)
        self.assertEqual(headers.getRawHeaders("retry-after"), ["2"])
        self.assertEqual(self.state.counts()["issues"], 0)
        code, body, _ = await self.post("/inventory/issues", issue(), key="k-f")
        self.assertEqual((code, body["id"]), (201, "ISS-1"))
        self.assertEqual(self.state.counts()["faults_injected"], 1)

    async def test_a_fault_armed_for_a_path_spares_the_others(self) -> None:
        """{"fail_next": 1, "status": 422, "path": "/goods-receipts"}: an issue goes through,
        the next goods receipt is refused (nothing stored), the one after is taken; a path
        that is no path is refused naming it."""
        faults = {"fail_next": 1, "status": 422, "path": "/goods-receipts"}
        code, armed, _ = await self.post("/_faults", faults)
        self.assertEqual((code, armed["path"]), (200, "/goods-receipts"))
        code, _, _ = await self.post("/inventory/issues", issue())
        self.assertEqual(code, 201)
        receipt = {"type": "expected_receipt", "lines": []}
        code, body, _ = await self.post("/goods-receipts", receipt)
        self.assertEqual((code, body), (422, {"error": "injected fault: 422"}))
        self.assertEqual(self.state.counts()["goods_receipts"], 0)
        code, _, _ = await self.post("/goods-receipts", receipt)
        self.assertEqual(code, 201)
        code, body, _ = await self.post("/_faults", {"path": "goods-receipts"})
        self.assertEqual(code, 422)
        self.assertIn("path: expected a path starting with /", body["error"])

    async def test_delayed_answer_after_the_work_is_done(self) -> None:
        """{"delay_next": 1, "seconds": s}: the next request takes effect at once but is answered
        s seconds later."""
        await self.post("/_faults", {"delay_next": 1, "seconds": 0.3})
        started = reactor.seconds()
        code, _, _ = await self.post("/inventory/issues", issue())
        self.assertEqual(code, 201)
        self.assertGreaterEqual(reactor.seconds() - started, 0.25)

    async def test_fhir_charge_item(self) -> None:
        """POST /fhir/ChargeItem stores a charge (201 with an id); If-None-Exist on the
        identifier returns the existing one (200) without a second charge; a missing code is a
        422 OperationOutcome."""
        doc = {
            "resourceType": "ChargeItem",
            "identifier": [{"system": "urn:wharf:usage", "value": "CU-1-1"}],
            "status": "billable",
            "code": {"coding": [{"system": "urn:cdm", "code": "278000123"}]},
            "subject": {"reference": "Patient/MRN1"},
            "context": {"reference": "Encounter/ENC-1"},
            "quantity": {"value": 2},
        }
        code, body, _ = await self.post("/fhir/ChargeItem", doc)
        self.assertEqual((code, body["id"]), (201, "CHG-1"))
        resp = await treq.post(
            self.base + "/fhir/ChargeItem",
            json.dumps(doc).encode(),
            headers={"If-None-Exist": "identifier=urn:wharf:usage|CU-1-1"},
            pool=self.pool,
        )
        self.assertEqual(resp.code, 200)
        await resp.content()
        self.assertEqual(self.state.counts()["charges"], 1)
        code, body, _ = await self.post("/fhir/ChargeItem", {**doc, "code": {}})
        self.assertEqual((code, body["resourceType"]), (422, "OperationOutcome"))


class BillingTests(SandboxTestCase):
    reject_codes = ("999999999",)

    async def test_dft_with_two_ft1_gives_two_charges_and_aa(self) -> None:
        """A DFT^P03 with two FT1 is answered AA echoing MSH-10 and stores two charges with
        encounter, line id, code, quantity and type."""
        client = await self.mllp()
        ack = await client.exchange(dft("POU-000123"))
        self.assertEqual(msa(ack)[1:3], ["AA", "POU-000123"])
        charges = self.state.charges()
        self.assertEqual(
            [(c["encounter"], c["line_id"], c["code"], c["quantity"], c["type"]) for c in charges],
            [
                ("ENC-998877", "CU-7f3a9c", "278000123", "2", "CG"),
                ("ENC-998877", "CU-7f3a9d", "272000010", "3", "CG"),
            ],
        )

    async def test_resend_same_control_id_same_ack(self) -> None:
        """A resend with the same MSH-3/MSH-4/MSH-10 gets the very same ACK bytes and adds no
        charge."""
        client = await self.mllp()
        first = await client.exchange(dft("POU-7"))
        second = await client.exchange(dft("POU-7"))
        self.assertEqual(first, second)
        self.assertEqual(self.state.counts()["charges"], 2)
        self.assertEqual(self.state.counts()["billing_duplicates"], 1)

    async def test_empty_encounter_is_ae_with_err(self) -> None:
        """An empty PV1-19 is AE with an ERR pointing at PV1-19; no charge is stored."""
        client = await self.mllp()
        ack = await client.exchange(dft("POU-8", encounter=""))
        msg = tokenize(ack)
        self.assertEqual(msa(ack)[1:3], ["AE", "POU-8"])
        err = msg.segment("ERR")
        self.assertIsNotNone(err)
        self.assertEqual(err.get(2, 1), "PV1")
        self.assertEqual(err.get(2, 3), "19")
        self.assertEqual(err.get(3, 1), "101")
        self.assertEqual(self.state.counts()["charges"], 0)

    async def test_reject_code_is_ae_and_a_fixed_resend_is_accepted(self) -> None:
        """A charge code in reject_codes is AE (ERR 103 on FT1-7) and stores nothing, not even
        the other line; once the code is allowed, a resend of the same MSH-10 is accepted."""
        client = await self.mllp()
        ack = await client.exchange(dft("POU-9", code2="999999999"))
        self.assertEqual(msa(ack)[1], "AE")
        err = tokenize(ack).segment("ERR")
        self.assertEqual((err.get(2, 1), err.get(2, 2), err.get(3, 1)), ("FT1", "2", "103"))
        self.assertEqual(self.state.counts()["charges"], 0)
        self.assertEqual(self.state.counts()["billing_rejects"], 1)
        await self.post("/_faults", {"billing_reject_codes": []})
        ack = await client.exchange(dft("POU-9", code2="999999999"))
        self.assertEqual(msa(ack)[1], "AA")
        self.assertEqual(self.state.counts()["charges"], 2)

    async def test_not_a_dft_is_ar(self) -> None:
        """An ADT message is AR (unsupported message type); bytes that are not HL7 are AR too."""
        client = await self.mllp()
        adt = b"MSH|^~\\&|ADT|H|B|H|20260101||ADT^A01|ADT-1|P|2.5.1\rPID|1||MRN1\r"
        self.assertEqual(msa(await client.exchange(adt))[1], "AR")
        self.assertEqual(msa(await client.exchange(b"hello"))[1], "AR")
        self.assertEqual(self.state.counts()["charges"], 0)
