"""A hot-reloaded ``mappings/trading_partners.yaml`` reaches X12 delivery without a restart.

The ``x12_partner`` destination's own settings do not change when only the trading partners
do, so its worker keeps running across the reload; the next 850 must still go where the
reloaded file says (here: another account's ``outbound/`` on our SFTP server).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from engine.runtime import Engine
from tests.integration.helpers import restore_env
from tests.integration.x12_harness import sftp_routes

REPO = Path(__file__).resolve().parents[2]
PO = json.loads((REPO / "samples/erp/purchase_order_4500012345.json").read_text())


@pytest.mark.integration
class TradingPartnersReload(unittest.TestCase):
    timeout = 60

    def setUp(self) -> Any:
        self.base = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.base, True)
        self.root = self.base / "project"
        (self.root / "channels").mkdir(parents=True)
        shutil.copy(REPO / "channels/po_to_vendor.yaml", self.root / "channels")
        shutil.copytree(REPO / "mappings", self.root / "mappings")
        shutil.copytree(REPO / "samples", self.root / "samples")
        # the shipped partners bind HARBOR's uploads to its account
        (self.root / "routes.yaml").write_text(sftp_routes("acmemed", "acme_west", "harbor"))
        saved = {k: os.environ.get(k) for k in ("ERP_URL", "PO_HTTP_PORT")}
        os.environ["ERP_URL"] = "http://127.0.0.1:9"  # the ERP is down: PO statuses wait
        os.environ["PO_HTTP_PORT"] = "0"
        self.addCleanup(restore_env, saved)
        self.engine = Engine(self.root, reactor)
        self.addCleanup(lambda: defer.ensureDeferred(self.engine.stop()))
        return defer.ensureDeferred(self.engine.start())

    async def release(self, number: str) -> None:
        body = json.dumps({**PO, "po_number": number}).encode()
        outcome = await self.engine.ingest("po_to_vendor", body, "test")
        self.assertEqual(outcome.kind, "stored")

    async def wait_for_850(self, account: str) -> list[str]:
        folder = self.root / "var/sftp" / account / "outbound"
        for _ in range(200):
            found = sorted(p.name for p in folder.glob("850_*.x12")) if folder.is_dir() else []
            if found:
                return found
            await task.deferLater(reactor, 0.05, lambda: None)
        self.fail(f"no 850 in {folder}")

    @defer.inlineCallbacks
    def test_the_next_850_goes_where_the_reloaded_partners_file_says(self) -> Any:
        yield defer.ensureDeferred(self.release("4500000001"))
        yield defer.ensureDeferred(self.wait_for_850("acmemed"))
        partners = self.root / "mappings/trading_partners.yaml"
        text = partners.read_text()
        moved = text.replace("sftp_server: {account: acmemed}", "sftp_server: {account: acme_west}")
        self.assertNotEqual(moved, text)
        partners.write_text(moved)
        changed = yield defer.ensureDeferred(self.engine.reload_if_changed())
        self.assertTrue(changed)
        yield defer.ensureDeferred(self.release("4500000002"))
        west = yield defer.ensureDeferred(self.wait_for_850("acme_west"))
        self.assertEqual(len(west), 1)
        acme = sorted((self.root / "var/sftp/acmemed/outbound").glob("850_*.x12"))
        self.assertEqual(len(acme), 1, "the second 850 went to the partner's old folder")
