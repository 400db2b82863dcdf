"""Per-channel scopes of the revenue-cycle page and the ledger's aggregate reports, through the
engine and its console over real sockets.

Two usage channels (``cath_lab``, ``or_pou``) book usage in the ledger and send each charge to
a billing system (a twisted.web peer) that refuses every one (422): a rejected charge each; a
credit for a line neither channel booked: a held (orphan) credit each. A revenue-cycle account
scoped to ``cath_lab`` sees only that channel's rejected charges and held credits (page and
API), is not even told the other channel's credit exists when it tries to release or reject it
(404), and may decide its own; an account that sees every channel sees both. Utilization and
inventory-to-finance reconciliation sum the ledger's running totals over every channel: a
scoped account gets the page with a note saying so and the API a 403 with that reason; an
unscoped one gets the figures."""

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

from engine.testing.ports import free_port
from engine.web import accounts
from tests.integration.console_helpers import engine_with_console

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "a revenue passphrase"
CHANNELS = ("cath_lab", "or_pou")


class Billing(resource.Resource):
    """Refuses every charge (422), counting them."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.refused = 0

    def render_POST(self, request: Any) -> bytes:
        request.content.read()
        self.refused += 1
        request.setResponseCode(422)
        return b'{"error": "charge code not on the encounter"}'


def channel(url: str) -> str:
    return (
        "codec: {hl7v2: {}}\ntransformer:\n  - transform: hl7_usage_to_ledger\n"
        "ledger:\n  charge: billing\n"
        f"destinations:\n  - name: billing\n    http: {{url: '{url}/charges'}}\n"
        "    retry: {max_attempts: 1}\n"
    )


def dft(line: str, encounter: str, kind: str = "CG") -> bytes:
    """A DFT^P03 of one Foley catheter tray (ITEM-160004, chargeable): used (CG) or credited (CD)."""
    segments = [
        f"MSH|^~\\&|POU_CABINET|GENHOSP|WHARF|GENHOSP|20260115103000||DFT^P03^DFT_P03|"
        f"REC-{line}|P|2.5.1",
        "EVN|P03|20260115103000",
        "PID|1||MRN12345^^^GENHOSP^MR||DOE^JANE",
        f"PV1|1|O|OR^01^01^GENHOSP||||||||||||||||{encounter}^^^GENHOSP^VN",
        f"FT1|1|{line}||20260115093000|20260115103000|{kind}|272100049^FOLEY TRAY 14F^99CDM|||1"
        "||||||OR^01^01^GENHOSP",
    ]
    return ("\r".join(segments) + "\r").encode()


class ScopedRevenueCycle(unittest.TestCase):
    timeout = 120

    def setUp(self) -> Any:
        base = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, base, True)
        self.billing = Billing()
        port = reactor.listenTCP(0, server.Site(self.billing), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}"
        self.root = base / "p"
        (self.root / "channels").mkdir(parents=True)
        shutil.copytree(ROOT / "mappings", self.root / "mappings")
        self.admin_port = free_port()
        (self.root / "routes.yaml").write_text(
            "store: var/wharf.db\nreload_interval: 0\n"
            f"admin: {{listen: 'tcp:{self.admin_port}:interface=127.0.0.1'}}\n"
        )
        for name in CHANNELS:
            (self.root / f"channels/{name}.yaml").write_text(channel(url))
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.sessions: dict[str, tuple[Any, str]] = {}
        return defer.ensureDeferred(self._start())

    async def _start(self) -> None:
        self.engine = await engine_with_console(self, self.root)
        for name, roles, scope in (
            ("rc_cath", ["revenue_cycle"], ["cath_lab"]),
            ("rc_all", ["revenue_cycle"], None),
            ("fin_cath", ["finance"], ["cath_lab"]),
            ("fin_all", ["finance"], None),
        ):
            accounts.add_with_password(
                self.engine.store, name, PASSWORD, roles=roles, channels=scope, actor="test"
            )

    async def call(
        self, who: str, method: str, path: str, body: Any = None, form: Any = None
    ) -> tuple[int, bytes]:
        base = f"http://127.0.0.1:{self.admin_port}"
        if who not in self.sessions:
            login = await treq.post(
                f"{base}/api/login", json={"name": who, "password": PASSWORD}, pool=self.pool
            )
            out = json.loads(await treq.content(login))
            assert login.code == 200, out
            self.sessions[who] = (login.cookies(), out["csrf"])
        cookies, csrf = self.sessions[who]
        kw: dict[str, Any] = {"cookies": cookies, "pool": self.pool, "allow_redirects": False}
        if method == "POST":
            kw["headers"] = {"X-CSRF-Token": csrf}
            if form is not None:
                kw["data"] = {**form, "csrf": csrf}
            else:
                kw["json"] = body or {}
        resp = await treq.request(method, f"{base}{path}", **kw)
        return resp.code, await treq.content(resp)

    async def json(self, who: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        code, raw = await self.call(who, method, path, body)
        return code, json.loads(raw)

    async def booked(self) -> dict[str, Any]:
        """The revenue view (every channel) once both charges are rejected."""
        for _ in range(400):
            code, data = await self.json("rc_all", "GET", "/api/revenue")
            assert code == 200, data
            if len(data["rejected"]) == 2 and len(data["credits"]) == 2:
                return data
            await task.deferLater(reactor, 0.05, lambda: None)
        raise AssertionError(f"expected 2 rejected charges and 2 held credits (got {data})")

    @defer.inlineCallbacks
    def test_a_scoped_account_sees_and_decides_only_its_channels_charges_and_credits(
        self,
    ) -> Any:
        yield defer.ensureDeferred(self._revenue())

    async def _revenue(self) -> None:
        for name, tag in (("cath_lab", "C"), ("or_pou", "O")):
            await self.engine.ingest(name, dft(f"{tag}U-1", f"ENC-{tag}1"), "test", answers=True)
            await self.engine.ingest(
                name, dft(f"{tag}U-9", f"ENC-{tag}9", "CD"), "test", answers=True
            )
        every = await self.booked()
        assert self.billing.refused == 2
        assert {c["channel"] for c in every["rejected"]} == set(CHANNELS)
        assert {c["channel"] for c in every["credits"]} == set(CHANNELS)
        mine = next(c for c in every["credits"] if c["channel"] == "cath_lab")
        other = next(c for c in every["credits"] if c["channel"] == "or_pou")
        other_charge = next(c for c in every["rejected"] if c["channel"] == "or_pou")

        code, seen = await self.json("rc_cath", "GET", "/api/revenue")
        assert code == 200, seen
        assert [(c["encounter"], c["channel"]) for c in seen["rejected"]] == [
            ("ENC-C1", "cath_lab")
        ]
        assert [c["id"] for c in seen["credits"]] == [mine["id"]]
        code, page = await self.call("rc_cath", "GET", "/revenue")
        assert code == 200
        assert f'id="credit-{mine["id"]}"'.encode() in page
        assert f'id="credit-{other["id"]}"'.encode() not in page
        assert f'id="charge-{other_charge["id"]}"'.encode() not in page
        assert b"ENC-C1" in page and b"ENC-O1" not in page

        # the other channel's credit: not found, by the API and by the page's form
        for decision in ("release", "reject"):
            code, out = await self.json(
                "rc_cath", "POST", f"/api/credits/{other['id']}/{decision}", {"note": "x"}
            )
            assert code == 404 and "in your channels" in out["error"], out
            code, _ = await self.call(
                "rc_cath", "POST", f"/credits/{other['id']}/{decision}", form={"note": "x"}
            )
            assert code == 404
        _, after = await self.json("rc_all", "GET", "/api/revenue")
        assert [c["id"] for c in after["credits"]] == [c["id"] for c in every["credits"]]

        # its own credit it may reject (the page's form); the unscoped account books the other
        code, _ = await self.call(
            "rc_cath", "POST", f"/credits/{mine['id']}/reject", form={"note": "duplicate"}
        )
        assert code == 303
        code, out = await self.json(
            "rc_all", "POST", f"/api/credits/{other['id']}/release", {"note": "vouched"}
        )
        assert code == 200 and out["status"] == "released", out
        code, out = await self.json(
            "rc_all", "POST", f"/api/credits/{other['id']}/release", {"note": "again"}
        )
        assert code == 409 and "only a held credit" in out["error"], out
        _, left = await self.json("rc_all", "GET", "/api/revenue")
        assert left["credits"] == []
        decided = [
            (a["actor"], a["action"], a["target"])
            for a in self.engine.store.audit_page().rows
            if a["action"].startswith("credit.")
        ]
        assert sorted(decided) == [
            ("rc_all", "credit.release", str(other["id"])),
            ("rc_cath", "credit.reject", str(mine["id"])),
        ]

    @defer.inlineCallbacks
    def test_the_ledger_aggregates_are_for_accounts_that_see_every_channel(self) -> Any:
        yield defer.ensureDeferred(self._aggregates())

    async def _aggregates(self) -> None:
        for name, tag in (("cath_lab", "C"), ("or_pou", "O")):
            await self.engine.ingest(name, dft(f"{tag}U-1", f"ENC-{tag}1"), "test", answers=True)
        for who, path in (
            ("rc_cath", "/api/utilization"),
            ("fin_cath", "/api/utilization"),
            ("fin_cath", "/api/reconciliation"),
        ):
            code, out = await self.json(who, "GET", path)
            assert code == 403, (who, path, out)
            assert "covers every channel" in out["error"] and "ask an admin" in out["error"]
            assert "cath_lab" in out["error"]
        code, page = await self.call("rc_cath", "GET", "/utilization?by=location")
        assert code == 200 and b'id="scope-note"' in page and b"ask an admin" in page
        assert b'id="utilization"' not in page and b"LOC-" not in page
        code, _ = await self.call("rc_cath", "GET", "/utilization?format=csv")
        assert code == 403
        code, page = await self.call("fin_cath", "GET", "/finance")
        assert code == 200 and b'id="recon-scope"' in page and b"ask an admin" in page
        assert b'id="reconciliation"' not in page
        code, _ = await self.call("fin_cath", "GET", "/finance?format=csv")
        assert code == 403

        code, util = await self.json("rc_all", "GET", "/api/utilization?by=location")
        assert code == 200, util
        assert sum(r["events"] for r in util["rows"]) == 2
        code, page = await self.call("rc_all", "GET", "/utilization")
        assert code == 200 and b'id="scope-note"' not in page and b"ITEM-160004" in page
        code, recon = await self.json("fin_all", "GET", "/api/reconciliation")
        assert code == 200 and recon["rows"], recon
        assert sum(float(r["ledger_quantity"]) for r in recon["rows"]) == 2
        code, page = await self.call("fin_all", "GET", "/finance")
        assert code == 200 and b'id="recon-scope"' not in page and b'id="reconciliation"' in page
