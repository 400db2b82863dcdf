"""What the X12 trading-partner tests share: a real engine's store read with sqlite3 while it
runs, the partners' SFTP folders, and the sandbox ERP over HTTP releasing purchase orders
through its webhook (test_x12_procurement, test_x12_identity, test_x12_thirdparty)."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import treq
from twisted.internet import defer, reactor, task
from twisted.web.client import HTTPConnectionPool

from engine.sandbox.service import SandboxService
from tests.integration.helpers import free_port, restore_env

__all__ = [
    "DEMO_HASH",
    "ERP_TOKEN",
    "EngineStore",
    "SandboxErp",
    "sftp_routes",
]

ERP_TOKEN = "wharf-demo-erp-token"  # the shipped po_to_vendor channel's default token
DEMO_HASH = "$2b$12$QVGbV6pGFr3FWloNVShnTOj9M2lh0mgrj1OtERMovSPQNsmL2pJc2"  # routes.yaml's demo


def sftp_routes(*accounts: str) -> str:
    """A project's routes.yaml: the store, no reload, and Wharf's SFTP server on a free port
    with one account per name (root ``var/sftp/NAME``, the demo's password)."""
    lines = [
        "store: var/wharf.db",
        "reload_interval: 0",
        "sftp_server:",
        "  listen: tcp:0:interface=127.0.0.1",
        "  host_key: var/sftp/host_key",
        "  partners:",
        *(
            f"    - {{name: {a}, root: var/sftp/{a}, password_bcrypt: '{DEMO_HASH}'}}"
            for a in accounts
        ),
    ]
    return "\n".join(lines) + "\n"


class EngineStore:
    """For a trial test case whose project is ``self.root``."""

    root: Path

    def db(self, sql: str, *args: Any) -> list[tuple]:
        conn = sqlite3.connect(self.root / "var/wharf.db")
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()

    def idle(self) -> bool:
        """Every message processed and every delivery done."""
        (n,) = self.db("SELECT COUNT(*) FROM messages WHERE status IN ('received', 'queued')")[0]
        (o,) = self.db("SELECT COUNT(*) FROM outbox WHERE status IN ('pending', 'inflight')")[0]
        return n == 0 and o == 0

    async def until(self, check: Any, timeout: float = 30.0) -> None:
        for _ in range(int(timeout / 0.05)):
            if check():
                return
            await task.deferLater(reactor, 0.05, lambda: None)
        rows = self.db("SELECT channel, status, error, origin FROM messages ORDER BY received_at")
        out = self.db("SELECT destination, status, last_error FROM outbox")
        raise AssertionError(f"not reached in {timeout} s: messages {rows}, outbox {out}")

    def outbound(self, account: str = "acmemed") -> list[str]:
        """The files in a partner account's outbound/ on Wharf's SFTP server."""
        folder = self.root / f"var/sftp/{account}/outbound"
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


class SandboxErp:
    """The sandbox ERP for a trial test case: ``start_erp()`` in setUp, before the engine
    starts (it sets ERP_URL and PO_HTTP_PORT for the shipped channels); then
    ``self.webhook.start()`` once the engine listens."""

    def start_erp(self, base: Path) -> None:
        from engine.sandbox.purchasing import ReleaseWebhook

        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.sandbox = SandboxService(
            base / "sandbox.db", http_port=0, mllp_port=0, reactor=reactor, po_webhook=None
        )
        self.sandbox.start()
        self.addCleanup(lambda: defer.ensureDeferred(self.sandbox.stop()))  # type: ignore[attr-defined]
        self.po_port = free_port()
        saved = {k: os.environ.get(k) for k in ("ERP_URL", "PO_HTTP_PORT")}
        os.environ["ERP_URL"] = self.sandbox.http_url
        os.environ["PO_HTTP_PORT"] = str(self.po_port)
        self.addCleanup(restore_env, saved)  # type: ignore[attr-defined]
        self.webhook = ReleaseWebhook(
            self.sandbox.api.purchasing,
            f"http://127.0.0.1:{self.po_port}/erp/purchase-orders",
            reactor=reactor,
            token=ERP_TOKEN,
            retry_every=0.1,
        )
        self.addCleanup(self.webhook.stop)  # type: ignore[attr-defined]

    async def erp(self, path: str, doc: Any = None) -> Any:
        """GET ``path`` of the sandbox ERP, or POST ``doc`` to it; the answer's JSON."""
        if doc is None:
            resp = await treq.get(self.sandbox.http_url + path, pool=self.pool)
        else:
            resp = await treq.post(
                self.sandbox.http_url + path, data=json.dumps(doc).encode(), pool=self.pool
            )
        return json.loads(await resp.content())
