"""The console's finance and utilization pages through the engine, over real sockets.

Inventory-to-finance reconciliation: usage booked in the ledger goes to an ERP (a twisted.web peer that posts some issues,
refuses one with a 422 and fails one with a 503 until it is dead-lettered); another channel's
ERP keeps failing (still pending) and a third channel sends no issue at all. The console shows
exactly those differences by location, item and month, with their reason and the messages
behind them, and the ERP's document numbers of what it posted.

Utilization and margin: usage with different performing and ordering physicians and payers
(IN1-3, PV1-20), grouped by each, with supply cost and margin, names only from a mapping."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import treq
from twisted.internet import defer, reactor, task
from twisted.trial import unittest
from twisted.web import resource, server
from twisted.web.client import HTTPConnectionPool

from engine.domains.ledger.reports import UTILIZATION_FIGURES
from engine.testing.ports import free_port
from engine.web import accounts
from tests.integration.console_helpers import engine_with_console

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "a finance passphrase"


class Erp(resource.Resource):
    """Posts an issue (201 with its document id) unless its encounter says otherwise:
    ``ENC-REJ``: 422 (refused), ``ENC-DEAD`` and ``ENC-PEND``: 503 (unavailable)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.posted: list[str] = []

    def render_POST(self, request: Any) -> bytes:
        doc = json.loads(request.content.read())
        encounter = doc.get("encounter", "")
        if encounter == "ENC-REJ":
            request.setResponseCode(422)
            return b'{"error": "item ITEM-200010 is blocked for issue"}'
        if encounter in ("ENC-DEAD", "ENC-PEND"):
            request.setResponseCode(503)
            return b'{"error": "down"}'
        self.posted.append(encounter)
        request.setResponseCode(201)
        return json.dumps({"id": f"ISS-{len(self.posted)}"}).encode()


def channel(url: str, retry: str, issue: bool = True) -> str:
    ledger = "ledger:\n  issue: erp\n" if issue else "ledger:\n  charge: billing\n"
    return (
        "codec: {hl7v2: {}}\ntransformer:\n  - transform: hl7_usage_to_ledger\n"
        f"{ledger}destinations:\n  - name: erp\n    http: {{url: '{url}/issues'}}\n"
        f"    retry: {retry}\n  - name: billing\n    file: {{dir: out/billing}}\n"
    )


def dft(n: str, encounter: str, point: str, qty: int) -> bytes:
    """A DFT^P03 of one line of sutures (ITEM-200010, 4.10 each) used at ``point``."""
    segments = [
        f"MSH|^~\\&|POU_CABINET|GENHOSP|WHARF|GENHOSP|20260115103000||DFT^P03^DFT_P03|"
        f"REC-{n}|P|2.5.1",
        "EVN|P03|20260115103000",
        "PID|1||MRN12345^^^GENHOSP^MR||DOE^JANE",
        f"PV1|1|O|{point}^01^01^GENHOSP||||||||||||||||{encounter}^^^GENHOSP^VN",
        f"FT1|1|RC-{n}||20260115093000|20260115103000|CG|272000010^SUTURE^99CDM|||{qty}"
        f"||||||{point}^01^01^GENHOSP",
    ]
    return ("\r".join(segments) + "\r").encode()


class ConsoleFlow(unittest.TestCase):
    """The engine with three usage channels (see the module docstring), its console, a finance
    and an operator account."""

    timeout = 120

    def setUp(self) -> Any:
        base = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, base, True)
        self.erp = Erp()
        self.erp_port = reactor.listenTCP(0, server.Site(self.erp), interface="127.0.0.1")
        self.addCleanup(self.erp_port.stopListening)
        url = f"http://127.0.0.1:{self.erp_port.getHost().port}"
        self.root = base / "p"
        (self.root / "channels").mkdir(parents=True)
        shutil.copytree(ROOT / "mappings", self.root / "mappings")
        (self.root / "mappings/physicians.csv").write_text(
            "# owner: medical staff office\n# change: 2026-01 test\nid,name\nDR100,Dr Sam Surgeon\n"
        )
        self.admin_port = free_port()
        (self.root / "routes.yaml").write_text(
            "store: var/wharf.db\nreload_interval: 0\n"
            f"admin: {{listen: 'tcp:{self.admin_port}:interface=127.0.0.1'}}\n"
        )
        (self.root / "channels/usage.yaml").write_text(
            channel(url, "{max_attempts: 1}")  # a 503 dead-letters at once
        )
        (self.root / "channels/usage_slow.yaml").write_text(
            channel(url, "{max_attempts: 10, initial: 1h}")  # a 503 waits an hour
        )
        (self.root / "channels/usage_local.yaml").write_text(channel(url, "{}", issue=False))
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        return defer.ensureDeferred(self._start())

    async def _start(self) -> None:
        self.engine = await engine_with_console(self, self.root)
        store = self.engine.store
        for name, roles in (("fin", ["finance"]), ("ops", ["operator"])):
            accounts.add_with_password(store, name, PASSWORD, roles=roles, actor="test")

    async def send(self, channel: str, raw: bytes) -> None:
        await self.engine.ingest(channel, raw, "test", answers=True)

    async def get(self, path: str, who: str = "fin") -> tuple[int, bytes]:
        base = f"http://127.0.0.1:{self.admin_port}"
        login = await treq.post(
            f"{base}/api/login",
            json={"name": who, "password": PASSWORD},
            pool=self.pool,
        )
        await treq.content(login)
        cookies = login.cookies()
        resp = await treq.get(f"{base}{path}", cookies=cookies, pool=self.pool)
        return resp.code, await treq.content(resp)

    async def settled(self) -> dict[str, Any]:
        """The reconciliation once every issue but the slow channel's has its answer."""
        for _ in range(500):
            code, body = await self.get("/api/reconciliation")
            assert code == 200, body
            data = json.loads(body)
            rows = {r["location"]: r for r in data["rows"]}
            if (
                len(rows) == 5
                and rows["LOC-OR-MAIN"]["posted_quantity"] == "5"
                and {
                    "dead-lettered",
                    "rejected by the ERP",
                }
                <= {k for r in rows.values() for k in r["reasons"]}
            ):
                return data
            await task.deferLater(reactor, 0.05, lambda: None)
        raise AssertionError(f"the ERP's answers did not all arrive: {data}")


class ReconciliationTests(ConsoleFlow):
    @defer.inlineCallbacks
    def test_the_console_shows_each_difference_with_its_reason_and_messages(self) -> Any:
        yield defer.ensureDeferred(self._flow())

    async def _flow(self) -> None:
        await self.send("usage", dft("1", "ENC-OK1", "OR", 3))
        await self.send("usage", dft("2", "ENC-OK2", "OR", 2))
        await self.send("usage", dft("3", "ENC-DEAD", "CATH", 4))
        await self.send("usage", dft("4", "ENC-REJ", "4WEST", 1))
        await self.send("usage_slow", dft("5", "ENC-PEND", "PACU", 2))
        await self.send("usage_local", dft("6", "ENC-LOCAL", "MICU", 6))
        data = await self.settled()
        by_location = {r["location"]: r for r in data["rows"]}
        shown = {
            loc: (
                r["item"],
                r["period"],
                r["ledger_quantity"],
                r["ledger_value"],
                r["posted_quantity"],
                r["posted_value"],
                r["difference_quantity"],
                r["difference_value"],
                r["reasons"],
            )
            for loc, r in by_location.items()
        }
        assert shown == {
            "LOC-OR-MAIN": ("ITEM-200010", "2026-01", "5", "20.50", "5", "20.50", "0", "0.00", {}),
            "LOC-CATH-1": (
                "ITEM-200010",
                "2026-01",
                "4",
                "16.40",
                "0",
                "0.00",
                "4",
                "16.40",
                {"dead-lettered": "4"},
            ),
            "LOC-4W-SUPPLY": (
                "ITEM-200010",
                "2026-01",
                "1",
                "4.10",
                "0",
                "0.00",
                "1",
                "4.10",
                {"rejected by the ERP": "1"},
            ),
            "LOC-PACU": (
                "ITEM-200010",
                "2026-01",
                "2",
                "8.20",
                "0",
                "0.00",
                "2",
                "8.20",
                {"pending delivery": "2"},
            ),
            "LOC-MICU-SUPPLY": (
                "ITEM-200010",
                "2026-01",
                "6",
                "24.60",
                "0",
                "0.00",
                "6",
                "24.60",
                {"not sent": "6"},
            ),
        }, shown
        with self.engine.store.reading() as rd:  # the ERP's document numbers, as recorded
            posted = rd.connection.execute(
                "SELECT document, posted_quantity, posted_value FROM erp_postings "
                "WHERE status = 'posted' ORDER BY document"
            ).fetchall()
        assert [tuple(r) for r in posted] == [("ISS-1", "3", "12.30"), ("ISS-2", "2", "8.20")]
        assert data["periods"] == [
            {
                "period": "2026-01",
                "ledger_value": "73.80",
                "posted_value": "20.50",
                "difference_value": "53.30",
            }
        ]
        # drill-down: the message behind each difference, none behind the agreeing row
        code, body = await self.get("/api/messages?key=encounter%3DENC-DEAD", who="ops")
        (dead,) = json.loads(body)["messages"]
        assert by_location["LOC-CATH-1"]["messages"] == [dead["id"]]
        assert by_location["LOC-OR-MAIN"]["messages"] == []
        code, page = await self.get("/finance")
        assert code == 200
        assert f'href="/messages/{dead["id"]}"'.encode() in page
        assert b"rejected by the ERP: 1" in page and b"not sent: 6" in page
        code, csv = await self.get("/finance?format=csv&days=30")
        assert code == 200 and csv.startswith(b"period,location,item,uom,ledger_quantity")
        assert b"2026-01,LOC-CATH-1,ITEM-200010,EA,4,16.40,0,0.00,4,16.40,dead-lettered 4" in csv
        assert data["receipts"] == {"rows": [], "periods": []}  # no goods received here
        assert b'id="no-receipts"' in page
        code, body = await self.get("/api/reconciliation?days=0")
        assert code == 400 and b"days: expected" in body
        code, _ = await self.get("/api/reconciliation", who="ops")
        assert code == 403


def usage(n: str, code: str, qty: int, performer: str, orderer: str, payer: str) -> bytes:
    """A DFT^P03 of one line with its physicians (FT1-20, FT1-21) and a payer: ``IN1:ID`` (an
    IN1 segment) or ``FC:CODE`` (PV1-20 financial class)."""
    fc = payer[3:] if payer.startswith("FC:") else ""
    segments = [
        f"MSH|^~\\&|POU_CABINET|GENHOSP|WHARF|GENHOSP|20260115103000||DFT^P03^DFT_P03|"
        f"UTL-{n}|P|2.5.1",
        "EVN|P03|20260115103000",
        "PID|1||MRN12345^^^GENHOSP^MR||DOE^JANE",
        f"PV1|1|O|OR^01^01^GENHOSP||||||||||||||||ENC-U{n}^^^GENHOSP^VN|{fc}",
        f"FT1|1|UT-{n}||20260115093000|20260115103000|CG|{code}^SUPPLY^99CDM|||{qty}"
        f"||||||OR^01^01^GENHOSP||||{performer}|{orderer}",
    ]
    if payer.startswith("IN1:"):
        segments.append(f"IN1|1|PLAN1|{payer[4:]}^^^^NIIP|SOME INSURER")
    return ("\r".join(segments) + "\r").encode()


class UtilizationTests(ConsoleFlow):
    """Utilization and margin by physician and payer (the local channel charges)."""

    @defer.inlineCallbacks
    def test_usage_by_physician_and_payer_with_cost_and_margin(self) -> Any:
        yield defer.ensureDeferred(self._utilization())

    async def _utilization(self) -> None:
        foley, suture = "272100049", "272000010"  # foley: 44.00 charged, 12.40 cost; 4.10, free
        await self.send(
            "usage_local", usage("1", foley, 2, "DR100^SURGEON^SAM", "DR200^O^O", "IN1:AETNA01")
        )
        await self.send("usage_local", usage("2", suture, 3, "DR100^SURGEON^SAM", "", "FC:SP"))
        await self.send("usage_local", usage("3", foley, 1, "DR300^CUTTER^CAL", "", "IN1:BCBS02"))

        def table(csv: bytes) -> list[list[str]]:
            return [line.split(",") for line in csv.decode().strip().splitlines()]

        code, csv = await self.get("/utilization?format=csv&by=physician")
        assert code == 200, csv
        assert table(csv) == [
            ["physician", "name", *FIGURES],
            ["DR100", "Dr Sam Surgeon", "2", "5", "2", "3", "88.00", "37.10", "50.90"],
            ["DR300", "", "1", "1", "1", "0", "44.00", "12.40", "31.60"],
        ]
        code, csv = await self.get("/utilization?format=csv&by=ordering_physician")
        assert table(csv)[1:] == [
            ["DR200", "", "1", "2", "2", "0", "88.00", "24.80", "63.20"],
            ["not given", "", "2", "4", "1", "3", "44.00", "24.70", "19.30"],
        ]
        code, csv = await self.get("/utilization?format=csv&by=payer")
        assert table(csv) == [
            ["payer", "payer_kind", *FIGURES],
            ["AETNA01", "insurer", "1", "2", "2", "0", "88.00", "24.80", "63.20"],
            ["BCBS02", "insurer", "1", "1", "1", "0", "44.00", "12.40", "31.60"],
            ["SP", "financial_class", "1", "3", "0", "3", "0.00", "12.30", "-12.30"],
        ]
        code, page = await self.get("/utilization?by=payer")
        assert code == 200 and b"financial_class" in page and b'id="by-physician"' in page
        code, page = await self.get("/utilization?by=surgeon")
        assert code == 400 and b"by: expected one of item, location" in page
        await self._utilization_api()

    async def _utilization_api(self) -> None:
        """GET /api/utilization: the page's filters, billable or non-billable usage only, the
        finance role's (an operator is refused)."""

        def payers(body: bytes) -> list[tuple[str, ...]]:
            data = json.loads(body)
            assert data["columns"] == ["payer", "payer_kind", *FIGURES], data
            return [
                (r["payer"], str(r["events"]), r["quantity"], r["margin"]) for r in data["rows"]
            ]

        code, body = await self.get("/api/utilization?by=payer&days=30")
        assert code == 200, body
        assert payers(body) == [
            ("AETNA01", "1", "2", "63.20"),
            ("BCBS02", "1", "1", "31.60"),
            ("SP", "1", "3", "-12.30"),
        ]
        code, body = await self.get("/api/utilization?by=payer&billable=billable")
        assert code == 200 and payers(body) == [
            ("AETNA01", "1", "2", "63.20"),
            ("BCBS02", "1", "1", "31.60"),
        ]
        code, body = await self.get("/api/utilization?by=payer&billable=non_billable")
        assert code == 200 and payers(body) == [("SP", "1", "3", "-12.30")]
        code, body = await self.get("/api/utilization?by=physician")
        rows = json.loads(body)["rows"]
        assert [(r["physician"], r["name"]) for r in rows] == [
            ("DR100", "Dr Sam Surgeon"),
            ("DR300", ""),
        ]
        code, csv = await self.get("/utilization?format=csv&by=payer&billable=non_billable")
        assert code == 200 and csv.decode().strip().splitlines()[1:] == [
            "SP,financial_class,1,3,0,3,0.00,12.30,-12.30"
        ]
        for bad, said in (
            ("billable=maybe", b"billable: expected all, billable or non_billable (got 'maybe')"),
            ("by=surgeon", b"by: expected one of item, location"),
            ("days=0", b"days: expected a whole number of days from 1 to 3660 (got '0')"),
        ):
            code, body = await self.get(f"/api/utilization?{bad}")
            assert code == 400 and said in body, (bad, body)
        code, body = await self.get("/api/utilization", who="ops")
        assert code == 403 and b"may not utilization" in body


FIGURES = list(UTILIZATION_FIGURES)
