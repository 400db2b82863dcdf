"""The sandbox ERP's purchasing: purchase orders, their release to Wharf, and vendor answers.

Routes (added to the ERP API)::

    POST /purchase-orders                    create (status ``open``)     → 201 {"po_number"}
    GET  /purchase-orders?status=            list
    GET  /purchase-orders/{po}               the PO, its line statuses, receipts, invoices
    POST /purchase-orders/{po}/release       release: queued for Wharf    → 202
    POST /purchase-orders/{po}/acknowledgements   line statuses from an 855 (Wharf) → 200
    POST /purchase-orders/{po}/changes            a buyer's decision on a vendor's proposed
                                                  change (Wharf): accepted changes the PO line
                                                  (quantity, unit, price) → 200
    POST /purchase-orders/{po}/transmissions      the 850 left (or its 997/999 came) → 200

A released PO is pushed to the release webhook (``wharf sandbox --po-webhook URL``) as JSON with
``Idempotency-Key: po-release-{po}``, retried every ``retry_every`` seconds until a 2xx, the way
an ERP's outbound integration queue does. Nothing is sent while no webhook is configured.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger

from engine.net.signing import signed_headers

log = Logger()

SCHEMA = """
CREATE TABLE IF NOT EXISTS purchase_orders (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    po_number TEXT NOT NULL UNIQUE,
    vendor TEXT NOT NULL,
    status TEXT NOT NULL,
    doc TEXT NOT NULL,
    created_at REAL NOT NULL,
    released_at REAL,
    delivered_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    transmission TEXT
);
CREATE TABLE IF NOT EXISTS po_line_status (
    po_number TEXT NOT NULL,
    line TEXT NOT NULL,
    status TEXT NOT NULL,
    detail TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (po_number, line)
);
"""

STATUSES = ("open", "released", "sent", "acknowledged", "changed", "rejected", "closed")


class PoError(ValueError):
    """A purchasing request the sandbox refuses: HTTP status and text naming the field."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _need(doc: dict, key: str, prefix: str = "") -> Any:
    value = doc.get(key)
    if value in (None, "", []):
        raise PoError(422, f"{prefix}{key}: required (got {value!r})")
    return value


def check_po(doc: Any) -> dict:
    """The PO document as the ERP holds it; 422 naming the first bad field."""
    if not isinstance(doc, dict):
        raise PoError(422, f"body: expected a JSON object (got {type(doc).__name__})")
    _need(doc, "po_number")
    _need(doc, "vendor")
    lines = _need(doc, "lines")
    if not isinstance(lines, list):
        raise PoError(422, "lines: expected a list of lines")
    seen: set[str] = set()
    for i, line in enumerate(lines):
        p = f"lines[{i}]."
        if not isinstance(line, dict):
            raise PoError(422, f"lines[{i}]: expected an object")
        no = str(_need(line, "line", p))
        if no in seen:
            raise PoError(422, f"{p}line: duplicate line number {no!r}")
        seen.add(no)
        _need(line, "item_id", p)
        _need(line, "uom", p)
        for key in ("qty", "unit_price"):
            try:
                value = Decimal(str(_need(line, key, p)))
            except ArithmeticError as exc:
                raise PoError(422, f"{p}{key}: expected a decimal number") from exc
            if value <= 0 and key == "qty":
                raise PoError(422, f"{p}qty: must be > 0 (got {value})")
    return doc


class Purchasing:
    """Purchase orders in the sandbox state's SQLite file (same connection and transactions)."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self.db = state.db
        self.db.executescript(SCHEMA)

    def create(self, doc: Any) -> tuple[int, dict]:
        doc = check_po(doc)
        po = str(doc["po_number"])
        text = json.dumps(doc, sort_keys=True, default=str)
        with self.state.transaction():
            row = self.db.execute(
                "SELECT doc FROM purchase_orders WHERE po_number = ?", (po,)
            ).fetchone()
            if row is not None:
                if row["doc"] != text:
                    raise PoError(409, f"po_number: {po} exists with other content")
                return 200, {"po_number": po, "status": self.get(po)["status"]}
            self.db.execute(
                "INSERT INTO purchase_orders (po_number, vendor, status, doc, created_at) "
                "VALUES (?, ?, 'open', ?, ?)",
                (po, str(doc["vendor"]), text, time.time()),
            )
        return 201, {"po_number": po, "status": "open"}

    def get(self, po: str) -> dict:
        row = self.db.execute("SELECT * FROM purchase_orders WHERE po_number = ?", (po,)).fetchone()
        if row is None:
            raise PoError(404, f"no purchase order {po}")
        out = {k: row[k] for k in row.keys() if k not in ("doc", "seq", "transmission")}
        out["doc"] = json.loads(row["doc"])
        out["transmission"] = json.loads(row["transmission"]) if row["transmission"] else None
        out["lines"] = {
            r["line"]: {"status": r["status"], **json.loads(r["detail"])}
            for r in self.db.execute(
                "SELECT line, status, detail FROM po_line_status WHERE po_number = ? "
                "ORDER BY rowid",
                (po,),
            )
        }
        return out

    def list(self, status: str | None = None) -> list[dict]:
        sql = "SELECT po_number, vendor, status, released_at, delivered_at FROM purchase_orders"
        args: tuple = ()
        if status:
            sql += " WHERE status = ?"
            args = (status,)
        return [dict(r) for r in self.db.execute(sql + " ORDER BY seq", args)]

    def release(self, po: str) -> dict:
        with self.state.transaction():
            current = self.get(po)
            if current["status"] == "open":
                self.db.execute(
                    "UPDATE purchase_orders SET status = 'released', released_at = ? "
                    "WHERE po_number = ?",
                    (time.time(), po),
                )
        return self.get(po)

    def acknowledge(self, po: str, doc: Any) -> dict:
        """Line statuses from the vendor's 855, as Wharf posts them."""
        if not isinstance(doc, dict) or not isinstance(doc.get("lines"), list):
            raise PoError(422, "lines: expected a list of {line, status, ...}")
        status = str(doc.get("status") or "acknowledged")
        if status not in STATUSES:
            raise PoError(422, f"status: expected one of {', '.join(STATUSES)} (got {status!r})")
        now = time.time()
        with self.state.transaction():
            self.get(po)
            for i, line in enumerate(doc["lines"]):
                if not isinstance(line, dict) or not line.get("line") or not line.get("status"):
                    raise PoError(422, f"lines[{i}]: expected line and status")
                detail = {k: v for k, v in line.items() if k not in ("line", "status")}
                self.db.execute(
                    "INSERT INTO po_line_status (po_number, line, status, detail, updated_at) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT(po_number, line) DO UPDATE SET "
                    "status = excluded.status, detail = excluded.detail, "
                    "updated_at = excluded.updated_at",
                    (po, str(line["line"]), str(line["status"]), json.dumps(detail), now),
                )
            self.db.execute(
                "UPDATE purchase_orders SET status = ? WHERE po_number = ?", (status, po)
            )
        return self.get(po)

    def change(self, po: str, doc: Any) -> dict:
        """A buyer's decision on a change the vendor proposed for one line (Wharf posts it):
        an accepted change becomes the PO line's quantity, unit and price; either way the
        line's status says so."""
        if not isinstance(doc, dict) or not doc.get("line"):
            raise PoError(422, "line: required")
        status = doc.get("status")
        if status not in ("accepted", "rejected"):
            raise PoError(422, f"status: expected accepted or rejected (got {status!r})")
        line_no = str(doc["line"])
        now = time.time()
        with self.state.transaction():
            current = self.get(po)
            order = current["doc"]
            line = next((ln for ln in order["lines"] if str(ln["line"]) == line_no), None)
            if line is None:
                raise PoError(422, f"line: PO {po} has no line {line_no}")
            if status == "accepted":
                fields = (("quantity", "qty"), ("unit", "uom"), ("unit_price", "unit_price"))
                for key, field in fields:
                    value = doc.get(key)
                    if value in (None, ""):
                        continue
                    if key != "unit":
                        try:
                            Decimal(str(value))
                        except ArithmeticError as exc:
                            raise PoError(422, f"{key}: expected a decimal number") from exc
                    line[field] = str(value)
                self.db.execute(
                    "UPDATE purchase_orders SET doc = ? WHERE po_number = ?",
                    (json.dumps(order, sort_keys=True, default=str), po),
                )
            line_status = "change_accepted" if status == "accepted" else "change_rejected"
            detail = {k: v for k, v in doc.items() if k not in ("line", "status")}
            self.db.execute(
                "INSERT INTO po_line_status (po_number, line, status, detail, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(po_number, line) DO UPDATE SET "
                "status = excluded.status, detail = excluded.detail, "
                "updated_at = excluded.updated_at",
                (po, line_no, line_status, json.dumps(detail, default=str), now),
            )
        return self.get(po)

    def transmitted(self, po: str, doc: Any) -> dict:
        """Wharf says the 850 left (interchange control number) or its 997/999 came back."""
        if not isinstance(doc, dict):
            raise PoError(422, "body: expected a JSON object")
        with self.state.transaction():
            current = self.get(po)
            merged = {**(current["transmission"] or {}), **doc}
            new_status = "sent" if current["status"] in ("open", "released") else None
            self.db.execute(
                "UPDATE purchase_orders SET transmission = ?, status = COALESCE(?, status) "
                "WHERE po_number = ?",
                (json.dumps(merged, default=str), new_status, po),
            )
        return self.get(po)

    def undelivered(self) -> list[tuple[str, dict]]:
        rows = self.db.execute(
            "SELECT po_number, doc FROM purchase_orders WHERE released_at IS NOT NULL "
            "AND delivered_at IS NULL ORDER BY seq"
        )
        return [(r["po_number"], json.loads(r["doc"])) for r in rows]

    def delivered(self, po: str, ok: bool, error: str = "") -> None:
        with self.state.transaction():
            if ok:
                self.db.execute(
                    "UPDATE purchase_orders SET delivered_at = ?, attempts = attempts + 1, "
                    "last_error = NULL WHERE po_number = ?",
                    (time.time(), po),
                )
            else:
                self.db.execute(
                    "UPDATE purchase_orders SET attempts = attempts + 1, last_error = ? "
                    "WHERE po_number = ?",
                    (error[:500], po),
                )

    def counts(self) -> dict[str, int]:
        def one(sql: str) -> int:
            return int(self.db.execute(sql).fetchone()[0])

        return {
            "purchase_orders": one("SELECT COUNT(*) FROM purchase_orders"),
            "purchase_orders_delivered": one(
                "SELECT COUNT(*) FROM purchase_orders WHERE delivered_at IS NOT NULL"
            ),
        }


class ReleaseWebhook:
    """Pushes released POs to Wharf until each is taken (2xx), every ``retry_every`` s."""

    def __init__(
        self,
        purchasing: Purchasing,
        url: str,
        *,
        reactor: Any,
        token: str | None = None,
        retry_every: float = 0.5,
        secret: str | None = None,
    ) -> None:
        self.purchasing = purchasing
        self.url = url
        self.reactor = reactor
        self.token = token
        self.secret = secret  # signs each push (engine.net.signing) when set
        self.sent: list[tuple[dict[bytes, list[bytes]], bytes]] = []  # what went out, for tests
        self.retry_every = retry_every
        self._loop: task.LoopingCall | None = None
        self._busy = False
        from twisted.web.client import HTTPConnectionPool

        self._pool = HTTPConnectionPool(reactor, persistent=False)

    def start(self) -> None:
        self._loop = task.LoopingCall(self.tick)
        self._loop.clock = self.reactor
        self._loop.start(self.retry_every, now=False).addErrback(
            lambda f: log.failure("PO release webhook stopped", f)
        )

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def tick(self) -> defer.Deferred | None:
        if self._busy:
            return None
        self._busy = True
        d = defer.ensureDeferred(self._push_all())
        d.addErrback(lambda f: log.failure("PO release webhook failed", f))

        def done(_: Any) -> None:
            self._busy = False

        d.addBoth(done)
        return d

    async def _push_all(self) -> int:
        import treq

        sent = 0
        for po, doc in self.purchasing.undelivered():
            headers = {
                b"content-type": [b"application/json"],
                b"idempotency-key": [f"po-release-{po}".encode()],
            }
            if self.token:
                headers[b"authorization"] = [f"Bearer {self.token}".encode()]
            body = json.dumps(doc, default=str).encode()
            if self.secret:
                signed = signed_headers(self.secret, body, self.reactor.seconds())
                headers.update({k.encode(): [v.encode()] for k, v in signed.items()})
            self.sent.append((headers, body))
            try:
                resp = await treq.post(
                    self.url,
                    data=body,
                    headers=headers,
                    timeout=10,
                    reactor=self.reactor,
                    pool=self._pool,
                )
                await resp.content()
            except Exception as exc:  # connection refused, timeout: retried next tick
                self.purchasing.delivered(po, False, type(exc).__name__)
                continue
            ok = 200 <= resp.code < 300
            self.purchasing.delivered(po, ok, "" if ok else f"HTTP {resp.code}")
            if ok:
                sent += 1
                log.info("PO {po} released to Wharf", po=po)
        return sent
