"""The sandbox ERP/billing state: one SQLite file, decimals kept as text.

Everything the sandbox HTTP API and MLLP billing receiver change goes through
:class:`SandboxState`, so tests can count effects (``counts()``, ``issues()``, ``charges()``...).
Writes that belong together run in one :meth:`SandboxState.transaction`: a request's effects and
its idempotency record commit together or not at all.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from engine.net.files import private_dirs
from engine.sandbox.purchasing import SCHEMA as PURCHASING_SCHEMA

SCHEMA = """
CREATE TABLE IF NOT EXISTS inventory (
    location TEXT NOT NULL,
    item TEXT NOT NULL,
    on_hand TEXT NOT NULL,
    uom TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (location, item)
);
CREATE TABLE IF NOT EXISTS issues (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    encounter TEXT NOT NULL,
    lines INTEGER NOT NULL,
    doc TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS issue_lines (
    issue_id TEXT NOT NULL,
    line_no INTEGER NOT NULL,
    usage_id TEXT NOT NULL,
    item TEXT NOT NULL,
    location TEXT NOT NULL,
    quantity TEXT NOT NULL,
    uom TEXT NOT NULL,
    cost_center TEXT NOT NULL,
    gl_account TEXT NOT NULL,
    on_hand_after TEXT NOT NULL,
    negative INTEGER NOT NULL,
    PRIMARY KEY (issue_id, line_no)
);
CREATE TABLE IF NOT EXISTS requisitions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    location TEXT NOT NULL,
    item TEXT NOT NULL,
    quantity TEXT NOT NULL,
    uom TEXT NOT NULL,
    reason TEXT NOT NULL,
    status TEXT NOT NULL,
    doc TEXT NOT NULL,
    created_at REAL NOT NULL,
    closed_at REAL
);
CREATE TABLE IF NOT EXISTS goods_receipts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    doc TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS ap_invoices (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    doc TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS charges (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL,
    message_key TEXT NOT NULL,
    encounter TEXT NOT NULL,
    line_id TEXT NOT NULL,
    code TEXT NOT NULL,
    description TEXT NOT NULL,
    quantity TEXT NOT NULL,
    type TEXT NOT NULL,
    doc TEXT,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    body_sha256 TEXT NOT NULL,
    status INTEGER NOT NULL,
    response BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

#: What the emulated cloud ERPs keep (see cloud.py): stock and documents per ERP, in that
#: ERP's own keys, and the answers remembered for OData repeatable requests.
CLOUD_SCHEMA = """
CREATE TABLE IF NOT EXISTS erp_stock (
    system TEXT NOT NULL,
    location TEXT NOT NULL,
    item TEXT NOT NULL,
    on_hand TEXT NOT NULL,
    uom TEXT NOT NULL,
    PRIMARY KEY (system, location, item)
);
CREATE TABLE IF NOT EXISTS erp_documents (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    system TEXT NOT NULL,
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    ref TEXT,
    status TEXT NOT NULL,
    doc TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_erp_documents_ref ON erp_documents(system, kind, ref);
CREATE TABLE IF NOT EXISTS erp_repeatability (
    system TEXT NOT NULL,
    request_id TEXT NOT NULL,
    status INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (system, request_id)
);
"""

TABLES = (
    "inventory",
    "issues",
    "issue_lines",
    "requisitions",
    "goods_receipts",
    "ap_invoices",
    "charges",
    "idempotency",
    "counters",
    "purchase_orders",
    "po_line_status",
    "erp_stock",
    "erp_documents",
    "erp_repeatability",
)

#: Counters kept across restarts (``counts()`` reports them all, zero when never bumped).
COUNTERS = (
    "idempotent_replays",
    "idempotency_conflicts",
    "billing_duplicates",
    "billing_rejects",
    "faults_injected",
)


class SeedError(ValueError):
    """The seed CSV is not a ``location,item,on_hand,uom`` snapshot."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decimal_text(value: Decimal) -> str:
    """A decimal as text without an exponent (``Decimal('1E+1')`` → ``'10'``)."""
    text = format(value, "f")
    return "0" if text in ("-0", "+0") else text


class SandboxState:
    """The sandbox's tables in the SQLite file ``path`` (created when missing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            # it holds what the demo charged to billing (patients' encounters): owner-only
            private_dirs(self.path.parent)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.fchmod(fd, 0o600)
            os.close(fd)
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self.db.executescript(PURCHASING_SCHEMA)
        self.db.executescript(CLOUD_SCHEMA)
        self._depth = 0

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------ transactions

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic unit; nested uses join the outer transaction."""
        if self._depth == 0:
            self.db.execute("BEGIN IMMEDIATE")
        self._depth += 1
        try:
            yield
        except BaseException:
            self._depth -= 1
            if self._depth == 0:
                self.db.execute("ROLLBACK")
            raise
        self._depth -= 1
        if self._depth == 0:
            self.db.execute("COMMIT")

    @contextlib.contextmanager
    def dry_run(self) -> Iterator[None]:
        """A transaction that is always undone: a test-marked request is checked as any other
        and answered, and leaves no record (only the ``test_requests`` counter moves)."""
        try:
            with self.transaction():
                yield
                raise _Undone
        except _Undone:
            pass
        self.bump("test_requests")

    def _next_id(self, table: str, prefix: str) -> str:
        row = self.db.execute(f"SELECT COALESCE(MAX(seq), 0) + 1 FROM {table}").fetchone()
        return f"{prefix}-{row[0]}"

    def bump(self, name: str, by: int = 1) -> None:
        with self.transaction():
            self.db.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                (name, by),
            )

    def reset(self) -> None:
        """Empty every table (a fresh sandbox, same file)."""
        with self.transaction():
            for table in TABLES:
                self.db.execute(f"DELETE FROM {table}")
            self.db.execute("DELETE FROM sqlite_sequence")

    # ------------------------------------------------------------------ inventory

    def on_hand(self, location: str, item: str) -> Decimal:
        """On-hand quantity of ``item`` at ``location`` (0 when never stocked nor issued)."""
        row = self.db.execute(
            "SELECT on_hand FROM inventory WHERE location = ? AND item = ?", (location, item)
        ).fetchone()
        return Decimal(row["on_hand"]) if row else Decimal(0)

    def stock_uom(self, location: str, item: str) -> str | None:
        row = self.db.execute(
            "SELECT uom FROM inventory WHERE location = ? AND item = ?", (location, item)
        ).fetchone()
        return row["uom"] if row else None

    def inventory(self, location: str | None = None, item: str | None = None) -> list[dict]:
        sql, args = "SELECT location, item, on_hand, uom FROM inventory WHERE 1=1", []
        if location:
            sql += " AND location = ?"
            args.append(location)
        if item:
            sql += " AND item = ?"
            args.append(item)
        rows = self.db.execute(sql + " ORDER BY location, item", args).fetchall()
        return [dict(r) for r in rows]

    def set_on_hand(self, location: str, item: str, on_hand: Decimal, uom: str) -> None:
        with self.transaction():
            self.db.execute(
                "INSERT INTO inventory (location, item, on_hand, uom, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(location, item) DO UPDATE SET "
                "on_hand = excluded.on_hand, uom = excluded.uom, updated_at = excluded.updated_at",
                (location, item, decimal_text(on_hand), uom, time.time()),
            )

    def seed_csv(self, path: str | Path, *, overwrite: bool = False) -> int:
        """Load a ``location,item,on_hand,uom`` snapshot (``#`` comment lines allowed before
        the header; ``on_hand:decimal`` style typed headers too). Rows already in the state are
        kept unless ``overwrite``. Returns the number of rows written."""
        return self.seed_text(Path(path).read_text(encoding="utf-8"), overwrite=overwrite)

    def seed_text(self, text: str, *, overwrite: bool = False) -> int:
        lines = [ln for ln in text.splitlines()]
        while lines and (lines[0].startswith("#") or not lines[0].strip()):
            lines.pop(0)
        reader = csv.reader(io.StringIO("\n".join(lines)))
        aliases = {"location_id": "location", "item_id": "item"}  # the ledger's snapshot names
        header = [h.strip().split(":", 1)[0] for h in next(reader, [])]
        header = [aliases.get(h, h) for h in header]
        need = ("location", "item", "on_hand", "uom")
        missing = [c for c in need if c not in header]
        if missing:
            raise SeedError(f"seed CSV header must name {', '.join(need)} (missing {missing})")
        index = {name: header.index(name) for name in need}
        written = 0
        with self.transaction():
            for n, row in enumerate(reader, start=2):
                if not row or not any(c.strip() for c in row):
                    continue
                if len(row) < len(header):
                    raise SeedError(f"seed CSV row {n}: expected {len(header)} columns")
                loc, item, qty, uom = (row[index[c]].strip() for c in need)
                try:
                    value = Decimal(qty)
                    if not value.is_finite():
                        raise InvalidOperation
                except InvalidOperation:
                    raise SeedError(f"seed CSV row {n}: on_hand must be a number") from None
                if not (loc and item and uom):
                    raise SeedError(f"seed CSV row {n}: location, item and uom are required")
                if not overwrite and self.stock_uom(loc, item) is not None:
                    continue
                self.set_on_hand(loc, item, value, uom)
                written += 1
        return written

    # ------------------------------------------------------------------ issues

    def post_issue(self, encounter: str, lines: list[dict], doc: Any) -> str:
        """Record an issue and decrement on-hand per line (negative quantity = return).

        ``lines`` are validated dicts: usage_id, item_id, quantity (Decimal), uom, location_id,
        cost_center, gl_account. On-hand may go below zero; such lines are flagged."""
        with self.transaction():
            issue_id = self._next_id("issues", "ISS")
            now = time.time()
            self.db.execute(
                "INSERT INTO issues (id, encounter, lines, doc, created_at) VALUES (?,?,?,?,?)",
                (issue_id, encounter, len(lines), json.dumps(doc, default=str), now),
            )
            for n, line in enumerate(lines, start=1):
                loc, item = line["location_id"], line["item_id"]
                after = self.on_hand(loc, item) - line["quantity"]
                self.set_on_hand(loc, item, after, line["uom"])
                self.db.execute(
                    "INSERT INTO issue_lines VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        issue_id,
                        n,
                        line["usage_id"],
                        item,
                        loc,
                        decimal_text(line["quantity"]),
                        line["uom"],
                        line["cost_center"],
                        line["gl_account"],
                        decimal_text(after),
                        int(after < 0),
                    ),
                )
        return issue_id

    def issues(self) -> list[dict]:
        """Every issue, oldest first, with its lines."""
        out = []
        for row in self.db.execute("SELECT id, encounter, created_at FROM issues ORDER BY seq"):
            lines = self.db.execute(
                "SELECT * FROM issue_lines WHERE issue_id = ? ORDER BY line_no", (row["id"],)
            ).fetchall()
            out.append({**dict(row), "lines": [dict(ln) for ln in lines]})
        return out

    # ------------------------------------------------------------------ requisitions

    def create_requisition(
        self, location: str, item: str, quantity: Decimal, uom: str, reason: str, doc: Any
    ) -> str:
        with self.transaction():
            req_id = self._next_id("requisitions", "REQ")
            self.db.execute(
                "INSERT INTO requisitions (id, location, item, quantity, uom, reason, status, "
                "doc, created_at) VALUES (?,?,?,?,?,?,'open',?,?)",
                (
                    req_id,
                    location,
                    item,
                    decimal_text(quantity),
                    uom,
                    reason,
                    json.dumps(doc, default=str),
                    time.time(),
                ),
            )
        return req_id

    def requisition(self, req_id: str) -> dict | None:
        row = self.db.execute(
            "SELECT id, location, item, quantity, uom, reason, status, created_at, closed_at "
            "FROM requisitions WHERE id = ?",
            (req_id,),
        ).fetchone()
        return dict(row) if row else None

    def close_requisition(self, req_id: str) -> dict | None:
        """Close an open requisition (closing a closed one changes nothing); None if unknown."""
        with self.transaction():
            self.db.execute(
                "UPDATE requisitions SET status = 'closed', closed_at = ? "
                "WHERE id = ? AND status = 'open'",
                (time.time(), req_id),
            )
            return self.requisition(req_id)

    def requisitions(
        self, status: str | None = None, location: str | None = None, item: str | None = None
    ) -> list[dict]:
        sql = (
            "SELECT id, location, item, quantity, uom, reason, status, created_at, closed_at "
            "FROM requisitions WHERE 1=1"
        )
        args: list[str] = []
        for column, value in (("status", status), ("location", location), ("item", item)):
            if value:
                sql += f" AND {column} = ?"
                args.append(value)
        return [dict(r) for r in self.db.execute(sql + " ORDER BY seq", args)]

    # ------------------------------------------------------------------ GR / AP

    def store_document(self, table: str, prefix: str, doc: Any) -> str:
        assert table in ("goods_receipts", "ap_invoices")
        with self.transaction():
            doc_id = self._next_id(table, prefix)
            self.db.execute(
                f"INSERT INTO {table} (id, doc, created_at) VALUES (?,?,?)",
                (doc_id, json.dumps(doc, default=str), time.time()),
            )
        return doc_id

    def receive_goods(self, doc: dict) -> str:
        """Store a goods receipt and, as an ERP would, add its lines to on-hand at their
        location (a ``goods_receipt``; an ``expected_receipt`` moves nothing until it is
        received). Lines carry item_id, quantity (in the stocking unit), uom, location_id;
        a line without them is refused (422 naming the field) and nothing is stored."""
        received = doc.get("type", "goods_receipt") == "goods_receipt"
        lines = doc.get("lines") or []
        if received:
            if not isinstance(lines, list):
                raise ValueError("lines: expected a list")
            for i, line in enumerate(lines):
                for key in ("item_id", "quantity", "uom", "location_id"):
                    if not isinstance(line, dict) or line.get(key) in (None, ""):
                        raise ValueError(f"lines[{i}].{key}: required for a goods receipt")
                try:
                    Decimal(str(line["quantity"]))
                except InvalidOperation:
                    raise ValueError(f"lines[{i}].quantity: expected a decimal number") from None
        with self.transaction():
            doc_id = self.store_document("goods_receipts", "GR", doc)
            if received:
                for line in lines:
                    loc, item = str(line["location_id"]), str(line["item_id"])
                    after = self.on_hand(loc, item) + Decimal(str(line["quantity"]))
                    self.set_on_hand(loc, item, after, str(line["uom"]))
        return doc_id

    def documents(self, table: str) -> list[dict]:
        assert table in ("goods_receipts", "ap_invoices")
        rows = self.db.execute(f"SELECT id, doc, created_at FROM {table} ORDER BY seq")
        return [
            {"id": r["id"], "doc": json.loads(r["doc"]), "created_at": r["created_at"]}
            for r in rows
        ]

    # ------------------------------------------------------------------ charges

    def add_charge(
        self,
        *,
        source: str,
        message_key: str,
        encounter: str,
        line_id: str,
        code: str,
        quantity: str,
        type: str,
        description: str = "",
        doc: Any = None,
    ) -> str:
        with self.transaction():
            charge_id = self._next_id("charges", "CHG")
            self.db.execute(
                "INSERT INTO charges (id, source, message_key, encounter, line_id, code, "
                "description, quantity, type, doc, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    charge_id,
                    source,
                    message_key,
                    encounter,
                    line_id,
                    code,
                    description,
                    quantity,
                    type,
                    None if doc is None else json.dumps(doc, default=str),
                    time.time(),
                ),
            )
        return charge_id

    def set_charge_doc(self, charge_id: str, doc: Any) -> None:
        with self.transaction():
            self.db.execute(
                "UPDATE charges SET doc = ? WHERE id = ?", (json.dumps(doc, default=str), charge_id)
            )

    def charges(self) -> list[dict]:
        """Every charge, oldest first (without the stored FHIR document)."""
        rows = self.db.execute(
            "SELECT id, source, message_key, encounter, line_id, code, description, quantity, "
            "type, created_at FROM charges ORDER BY seq"
        )
        return [dict(r) for r in rows]

    def charge_amounts(self) -> dict[str, Decimal]:
        """Per encounter, the sum of the charges' amounts as billing received them: an MLLP
        charge's FT1-11, a FHIR ChargeItem's totalPriceComponent (R5) or priceOverride (R4B);
        a charge that came without one counts 0."""
        totals: dict[str, Decimal] = {}
        for row in self.db.execute("SELECT encounter, doc FROM charges ORDER BY seq"):
            doc = json.loads(row["doc"]) if row["doc"] else {}
            price = doc.get("totalPriceComponent", {}).get("amount") or doc.get("priceOverride")
            value = price.get("value") if price else doc.get("amount")
            amount = Decimal(str(value)) if value not in (None, "") else Decimal(0)
            totals[row["encounter"]] = totals.get(row["encounter"], Decimal(0)) + amount
        return totals

    def charge_doc(self, charge_id: str) -> Any:
        row = self.db.execute("SELECT doc FROM charges WHERE id = ?", (charge_id,)).fetchone()
        return json.loads(row["doc"]) if row and row["doc"] else None

    def find_fhir_charge(self, identifier: str) -> str | None:
        """The id of a FHIR ChargeItem stored with this identifier value, if any."""
        row = self.db.execute(
            "SELECT id FROM charges WHERE source = 'fhir' AND line_id = ? ORDER BY seq LIMIT 1",
            (identifier,),
        ).fetchone()
        return row["id"] if row else None

    # ------------------------------------------------------------------ idempotency

    def remembered(self, key: str) -> dict | None:
        """The stored answer for an idempotency key: method, path, body_sha256, status,
        response (bytes)."""
        row = self.db.execute(
            "SELECT method, path, body_sha256, status, response FROM idempotency WHERE key = ?",
            (key,),
        ).fetchone()
        if row is None:
            return None
        out = dict(row)
        out["response"] = bytes(out["response"])
        return out

    def remember(
        self, key: str, method: str, path: str, body_sha256: str, status: int, response: bytes
    ) -> None:
        with self.transaction():
            self.db.execute(
                "INSERT INTO idempotency VALUES (?,?,?,?,?,?,?)",
                (key, method, path, body_sha256, status, response, time.time()),
            )

    # ------------------------------------------------------------------ counts

    def counts(self) -> dict[str, int]:
        """How many of everything: rows per table plus the event counters."""

        def one(sql: str) -> int:
            return int(self.db.execute(sql).fetchone()[0])

        out = {
            "inventory_rows": one("SELECT COUNT(*) FROM inventory"),
            "negative_on_hand": one(
                "SELECT COUNT(*) FROM inventory WHERE CAST(on_hand AS REAL) < 0"
            ),
            "issues": one("SELECT COUNT(*) FROM issues"),
            "issue_lines": one("SELECT COUNT(*) FROM issue_lines"),
            "negative_issue_lines": one("SELECT COUNT(*) FROM issue_lines WHERE negative = 1"),
            "requisitions": one("SELECT COUNT(*) FROM requisitions"),
            "requisitions_open": one("SELECT COUNT(*) FROM requisitions WHERE status = 'open'"),
            "goods_receipts": one("SELECT COUNT(*) FROM goods_receipts"),
            "ap_invoices": one("SELECT COUNT(*) FROM ap_invoices"),
            "charges": one("SELECT COUNT(*) FROM charges"),
            "idempotency_keys": one("SELECT COUNT(*) FROM idempotency WHERE method != 'MLLP'"),
            "billing_messages": one("SELECT COUNT(*) FROM idempotency WHERE method = 'MLLP'"),
        }
        for name in COUNTERS:
            out[name] = 0
        for row in self.db.execute("SELECT name, value FROM counters"):
            out[row["name"]] = row["value"]
        return out


class _Undone(Exception):
    """Raised to undo a dry run's transaction."""
