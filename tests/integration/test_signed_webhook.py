"""Signed webhooks over real sockets: the sandbox ERP signs each PO release (HMAC-SHA256 over
timestamp, nonce and body) and the ``http`` source takes it once; the very same request
replayed, a body changed on the way, a stale timestamp and a missing signature are refused with
401, in addition to the bearer token check, and nothing refused reaches the store."""

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

from engine.net.signing import NONCE, SIGNATURE, TIMESTAMP, ReplayGuard, signed_headers, verify
from engine.sandbox.service import SandboxService
from engine.sources import IngestOutcome
from engine.sources.http_post import HTTP_SPEC, HttpPostSource
from engine.spec import Context
from engine.tokens import token_sha256

pytestmark = pytest.mark.integration

TOKEN = "bearer-token-of-the-erp"
SECRET = "hmac-secret-shared-with-the-erp"


class Ingest:
    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, raw: bytes, peer: str, **_meta: Any) -> IngestOutcome:
        self.bodies.append(raw)
        return IngestOutcome("stored", message_id=f"m-{len(self.bodies)}")


class SignedWebhookTests(unittest.TestCase):
    timeout = 20

    def setUp(self) -> defer.Deferred:
        self.tmp = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        (self.tmp / "webhook.secret").write_text(SECRET + "\n")
        ctx = Context("<test>")
        doc = {
            "listen": "tcp:0:interface=127.0.0.1",
            "path": "/erp/purchase-orders",
            "tokens": [{"name": "erp", "sha256": token_sha256(TOKEN)}],
            "signature": {"secret": {"file": "webhook.secret"}, "tolerance": "5m"},
        }
        options = HTTP_SPEC.parse(yaml.compose(yaml.safe_dump(doc)), ctx, "")
        assert not ctx.errors, ctx.errors
        self.ingest = Ingest()
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.source = HttpPostSource(
            options, reactor=reactor, channel="po_out", base_dir=self.tmp, ingest=self.ingest
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
            po_webhook_secret=SECRET,
        )
        self.sandbox.start()
        self.sandbox.webhook.retry_every = 0.05
        self.addCleanup(lambda: defer.ensureDeferred(self.sandbox.stop()))
        self.addCleanup(lambda: defer.ensureDeferred(self.source.stop()))

    async def post(self, headers: dict[bytes, list[bytes]], body: bytes) -> tuple[int, Any]:
        resp = await treq.post(self.url, data=body, headers=headers, pool=self.pool)
        return resp.code, json.loads(await resp.content())

    async def release(self) -> tuple[dict[bytes, list[bytes]], bytes]:
        code, _ = await self.sandbox_post("/purchase-orders", PO)
        assert code == 201, code
        code, _ = await self.sandbox_post(f"/purchase-orders/{PO['po_number']}/release", {})
        assert code in (200, 202), code
        for _ in range(200):
            if self.ingest.bodies:
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        assert len(self.ingest.bodies) == 1, "the release did not arrive"
        return self.sandbox.webhook.sent[-1]

    async def sandbox_post(self, path: str, doc: Any) -> tuple[int, Any]:
        resp = await treq.post(
            self.sandbox.http_url + path,
            data=json.dumps(doc).encode(),
            headers={b"content-type": [b"application/json"]},
            pool=self.pool,
        )
        return resp.code, json.loads(await resp.content())

    @defer.inlineCallbacks
    def test_a_signed_release_is_taken_once_and_its_replay_is_refused(self) -> Any:
        """The sandbox's signed release is stored; the same request sent again (a captured
        replay, same signature, timestamp and nonce) gets 401 and stores nothing."""
        headers, body = yield defer.ensureDeferred(self.release())
        self.assertIn(SIGNATURE.lower().encode(), {k.lower() for k in headers})
        code, doc = yield defer.ensureDeferred(self.post(headers, body))
        self.assertEqual(code, 401)
        self.assertIn("replayed", doc["error"])
        self.assertEqual(len(self.ingest.bodies), 1)
        self.assertEqual(self.source.refused_signatures, 1)

    @defer.inlineCallbacks
    def test_tampered_stale_unsigned_and_tokenless_requests_are_refused(self) -> Any:
        """A changed body, a timestamp outside the window, no signature, and a valid signature
        without the bearer token: each 401, nothing stored."""
        body = json.dumps({"po_number": "PO-1"}).encode()
        now = reactor.seconds()
        bearer = {b"authorization": [f"Bearer {TOKEN}".encode()]}

        def with_sig(signed: dict[str, str], extra: dict | None = None) -> dict:
            return {
                **bearer,
                **{k.encode(): [v.encode()] for k, v in signed.items()},
                **(extra or {}),
            }

        tampered = with_sig(signed_headers(SECRET, body, now))
        code, doc = yield defer.ensureDeferred(self.post(tampered, body + b" "))
        self.assertEqual((code, doc["error"]), (401, f"{SIGNATURE} does not match the body"))
        stale = with_sig(signed_headers(SECRET, body, now - 3600))
        code, doc = yield defer.ensureDeferred(self.post(stale, body))
        self.assertEqual(code, 401)
        self.assertIn("the window is 300s", doc["error"])
        code, doc = yield defer.ensureDeferred(self.post(bearer, body))
        self.assertEqual(code, 401)
        self.assertIn("needs the", doc["error"])
        no_token = {k.encode(): [v.encode()] for k, v in signed_headers(SECRET, body, now).items()}
        code, doc = yield defer.ensureDeferred(self.post(no_token, body))
        self.assertEqual((code, doc["error"]), (401, "a valid bearer token is required"))
        self.assertEqual(self.ingest.bodies, [])
        good = with_sig(signed_headers(SECRET, body, now))
        code, _ = yield defer.ensureDeferred(self.post(good, body))
        self.assertEqual(code, 202)


PO = {
    "po_number": "PO-4500019999",
    "vendor": "ACMEMED",
    "order_date": "2026-01-16",
    "ship_to": {"gln": "0614141000012", "name": "GENERAL HOSPITAL", "location_id": "LOC-OR-MAIN"},
    "lines": [
        {"line": "1", "item_id": "ITEM-100123", "qty": "10", "uom": "BX", "unit_price": "42.50"}
    ],
}


def test_the_replay_guard_forgets_a_nonce_only_after_its_window() -> None:
    """A nonce is refused again until its timestamp plus the window has passed; by then the
    timestamp itself is stale, so the request is refused either way."""
    now = [1000.0]
    guard = ReplayGuard(300, lambda: now[0])
    body = b"{}"
    signed = signed_headers(SECRET, body, now[0], nonce="n" * 16)
    assert verify(signed, body, SECRET, tolerance=300, guard=guard) is None
    now[0] += 299
    assert "replayed" in (verify(signed, body, SECRET, tolerance=300, guard=guard) or "")
    now[0] += 2
    assert "away from now" in (verify(signed, body, SECRET, tolerance=300, guard=guard) or "")
    assert verify({**signed, NONCE: "x"}, body, SECRET, tolerance=300, guard=guard) is not None
    assert verify({**signed, TIMESTAMP: "soon"}, body, SECRET, tolerance=300, guard=guard)
