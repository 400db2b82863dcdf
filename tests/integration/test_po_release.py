"""The sandbox ERP releases purchase orders to Wharf's ``http`` source over real sockets: the
webhook retries until the source takes the PO, the source checks the bearer token (kept as its
SHA-256 only) and answers after the ingest, a resend is a 200 and nothing more."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
import treq
import yaml
from twisted.internet import defer, reactor, task
from twisted.trial import unittest
from twisted.web.client import HTTPConnectionPool

from engine.sandbox.service import SandboxService
from engine.sources import IngestOutcome
from engine.sources.http_post import HTTP_SPEC, HttpPostSource
from engine.spec import Context
from engine.tokens import token_sha256

pytestmark = pytest.mark.integration

TOKEN = "s3cret-token-for-the-erp"

PO = {
    "po_number": "PO-4500012345",
    "vendor": "ACMEMED",
    "order_date": "2026-01-16",
    "ship_to": {"gln": "0614141000012", "name": "GENERAL HOSPITAL", "location_id": "LOC-OR-MAIN"},
    "lines": [
        {"line": "1", "item_id": "ITEM-100123", "qty": "10", "uom": "BX", "unit_price": "42.50"}
    ],
}


def options(**values: Any) -> Any:
    ctx = Context("<test>")
    config = HTTP_SPEC.parse(yaml.compose(yaml.safe_dump(values)), ctx, "")
    assert not ctx.errors, [str(e) for e in ctx.errors]
    return config


class FakeIngest:
    """Stores by po_number like the json codec's id_field would: new, resend, conflict."""

    def __init__(self) -> None:
        self.bodies: dict[str, bytes] = {}
        self.calls = 0
        self.refuse = False

    async def __call__(self, raw: bytes, peer: str, **kw: Any) -> IngestOutcome:
        self.calls += 1
        if self.refuse:
            return IngestOutcome("refused", reason="over capacity")
        try:
            key = json.loads(raw)["po_number"]
        except (ValueError, KeyError):
            return IngestOutcome("rejected", reason="expected a JSON PO")
        if key in self.bodies:
            kind = "duplicate" if self.bodies[key] == raw else "conflict"
            return IngestOutcome(kind, message_id=f"m-{key}")
        self.bodies[key] = raw
        return IngestOutcome("stored", message_id=f"m-{key}")


class PoReleaseTest(unittest.TestCase):
    def setUp(self) -> defer.Deferred:
        self.tmp = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.ingest = FakeIngest()
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.source = HttpPostSource(
            options(
                listen="tcp:0:interface=127.0.0.1",
                path="/erp/purchase-orders",
                tokens=[{"name": "erp", "sha256": token_sha256(TOKEN)}],
                max_body="1KiB",
            ),
            reactor=reactor,
            channel="po_out",
            base_dir=self.tmp,
            ingest=self.ingest,
        )
        self.source.start()
        return self.source.listening.addCallback(self._started)

    def _started(self, port: Any) -> None:
        self.url = f"http://127.0.0.1:{port.getHost().port}/erp/purchase-orders"
        self.sandbox = SandboxService(
            self.tmp / "sandbox.db",
            http_port=0,
            mllp_port=0,
            reactor=reactor,
            po_webhook=self.url,
            po_webhook_token=TOKEN,
        )
        self.sandbox.start()
        self.sandbox.webhook.retry_every = 0.05
        self.addCleanup(lambda: defer.ensureDeferred(self.sandbox.stop()))
        self.addCleanup(lambda: defer.ensureDeferred(self.source.stop()))

    async def _post(self, path: str, doc: Any = None, **kw: Any) -> tuple[int, Any]:
        kw.setdefault("pool", self.pool)
        resp = await treq.post(
            self.sandbox.http_url + path,
            data=json.dumps(doc or {}).encode(),
            headers={b"content-type": [b"application/json"]},
            **kw,
        )
        return resp.code, json.loads(await resp.content())

    async def _until(self, check: Any, timeout: float = 10.0) -> None:
        for _ in range(int(timeout / 0.05)):
            if check():
                return
            await task.deferLater(reactor, 0.05, lambda: None)
        raise AssertionError("condition not reached in time")

    @defer.inlineCallbacks
    def test_release_reaches_wharf_once(self) -> Any:
        yield defer.ensureDeferred(self._release_reaches_wharf_once())

    async def _release_reaches_wharf_once(self) -> None:
        code, out = await self._post("/purchase-orders", PO)
        assert code == 201 and out["status"] == "open"
        await task.deferLater(reactor, 0.2, lambda: None)
        assert self.ingest.calls == 0  # an open PO is not sent
        code, out = await self._post(f"/purchase-orders/{PO['po_number']}/release")
        assert code == 202 and out["status"] == "released"
        await self._until(lambda: self.ingest.bodies)
        assert json.loads(self.ingest.bodies[PO["po_number"]]) == PO
        po = self.sandbox.api.purchasing.get(PO["po_number"])
        await self._until(lambda: self.sandbox.api.purchasing.get(PO["po_number"])["delivered_at"])
        # released again: already delivered, nothing more is sent
        await self._post(f"/purchase-orders/{PO['po_number']}/release")
        await task.deferLater(reactor, 0.3, lambda: None)
        assert self.ingest.calls == 1
        assert po["status"] == "released"

    @defer.inlineCallbacks
    def test_webhook_retries_while_wharf_refuses(self) -> Any:
        yield defer.ensureDeferred(self._webhook_retries())

    async def _webhook_retries(self) -> None:
        self.ingest.refuse = True
        await self._post("/purchase-orders", PO)
        await self._post(f"/purchase-orders/{PO['po_number']}/release")
        await self._until(lambda: self.ingest.calls >= 3)
        row = self.sandbox.api.purchasing.get(PO["po_number"])
        assert row["delivered_at"] is None and row["last_error"] == "HTTP 503"
        self.ingest.refuse = False
        await self._until(lambda: self.sandbox.api.purchasing.get(PO["po_number"])["delivered_at"])
        assert list(self.ingest.bodies) == [PO["po_number"]]

    @defer.inlineCallbacks
    def test_source_answers(self) -> Any:
        yield defer.ensureDeferred(self._source_answers())

    async def _source_answers(self) -> None:
        body = json.dumps(PO).encode()
        auth = {b"authorization": [f"Bearer {TOKEN}".encode()]}

        async def post(data: bytes, headers: dict, url: str | None = None) -> tuple[int, Any]:
            resp = await treq.post(url or self.url, data=data, headers=headers, pool=self.pool)
            text = await resp.content()
            return resp.code, (json.loads(text) if text else None), resp.headers

        code, out, headers = await post(body, {})
        assert code == 401 and headers.getRawHeaders(b"www-authenticate")
        code, out, _ = await post(body, {b"authorization": [b"Bearer wrong"]})
        assert code == 401
        assert self.ingest.calls == 0
        code, out, _ = await post(body, auth)
        assert (code, out["outcome"]) == (202, "stored")
        code, out, _ = await post(body, auth)
        assert (code, out["outcome"]) == (200, "duplicate")
        changed = json.dumps({**PO, "vendor": "OTHER"}).encode()
        code, out, _ = await post(changed, auth)
        assert (code, out["outcome"]) == (409, "conflict")
        code, out, _ = await post(b"not json", auth)
        assert code == 400 and "expected a JSON PO" in out["error"]
        code, out, _ = await post(b"x" * 2048, auth)
        assert code == 413
        code, out, _ = await post(body, auth, self.url.replace("purchase-orders", "other"))
        assert code == 404
        self.ingest.refuse = True
        code, out, headers = await post(json.dumps({**PO, "po_number": "P2"}).encode(), auth)
        assert code == 503 and headers.getRawHeaders(b"retry-after") == [b"5"]
