"""Procurement's tables, as its own schema history (``component_versions``, component
``procurement``).

The statements of 1 and 2 are those of the store's former migrations v6 (X12 control numbers,
outbound interchanges and their acknowledgements, inbound sets seen) and v7 (purchase orders,
lines, receipts, invoices and their match), written so that a database that already has the
objects is left as it is: the history is then only recorded. 3 adds line-level holds (which
invoice lines were posted to AP, which are credits) and the vendors' proposed PO changes, again
only where missing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from engine.interfaces import Migration
from engine.sqldialect import ddl, ddl_all

_X12_CONTROL: list[str] = [
    """
    CREATE TABLE IF NOT EXISTS x12_control (
        partner TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('isa13', 'gs06', 'st02')),
        last INTEGER NOT NULL CHECK (last BETWEEN 0 AND 999999999),
        updated_at REAL NOT NULL,
        PRIMARY KEY (partner, kind)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS x12_outbound (
        id INTEGER PRIMARY KEY,
        partner TEXT NOT NULL,
        isa13 INTEGER NOT NULL,
        gs06 INTEGER NOT NULL,
        st02 TEXT NOT NULL,
        document TEXT NOT NULL,
        business_key TEXT NOT NULL,
        message_id TEXT,
        sent_at REAL NOT NULL,
        ack_due_at REAL,
        ack_status TEXT NOT NULL DEFAULT 'none'
            CHECK (ack_status IN ('none', 'accepted', 'rejected', 'partial')),
        ack_codes TEXT,
        ack_at REAL,
        ta1_status TEXT,
        ta1_code TEXT,
        ta1_at REAL
    )
    """,
    "CREATE INDEX IF NOT EXISTS idx_x12_outbound_gs06 ON x12_outbound(partner, gs06)",
    "CREATE INDEX IF NOT EXISTS idx_x12_outbound_isa13 ON x12_outbound(partner, isa13)",
    "CREATE INDEX IF NOT EXISTS idx_x12_outbound_ack ON x12_outbound(ack_status, ack_due_at)",
    "CREATE INDEX IF NOT EXISTS idx_x12_outbound_key ON x12_outbound(business_key)",
    """
    CREATE TABLE IF NOT EXISTS x12_inbound (
        id INTEGER PRIMARY KEY,
        sender_qualifier TEXT NOT NULL,
        sender_id TEXT NOT NULL,
        receiver_qualifier TEXT,
        receiver_id TEXT,
        isa13 TEXT NOT NULL,
        gs06 TEXT,
        st02 TEXT,
        received_at REAL NOT NULL,
        message_id TEXT
    )
    """,
    "CREATE INDEX IF NOT EXISTS idx_x12_inbound_key "
    "ON x12_inbound(sender_qualifier, sender_id, isa13, received_at)",
    "CREATE INDEX IF NOT EXISTS idx_x12_inbound_received ON x12_inbound(received_at)",
]

_PROCUREMENT: list[str] = [
    """
    CREATE TABLE IF NOT EXISTS purchase_orders (
        po_number TEXT PRIMARY KEY,
        partner TEXT NOT NULL,
        vendor TEXT NOT NULL,
        location_id TEXT NOT NULL,
        currency TEXT NOT NULL,
        status TEXT NOT NULL,
        message_id TEXT,
        correlation_id TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS po_lines (
        po_number TEXT NOT NULL,
        line TEXT NOT NULL,
        item_id TEXT NOT NULL,
        quantity TEXT NOT NULL,
        uom TEXT NOT NULL,
        unit_price TEXT NOT NULL,
        base_quantity TEXT NOT NULL,
        base_uom TEXT NOT NULL,
        vendor_item TEXT,
        gtin TEXT,
        bill_only INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL DEFAULT 'ordered',
        ack_detail TEXT,
        PRIMARY KEY (po_number, line)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS receipts (
        id INTEGER PRIMARY KEY,
        business_key TEXT NOT NULL UNIQUE,
        po_number TEXT NOT NULL,
        po_line TEXT NOT NULL,
        item_id TEXT NOT NULL,
        quantity TEXT NOT NULL,
        uom TEXT NOT NULL,
        base_quantity TEXT NOT NULL,
        lot TEXT,
        serial TEXT,
        expiry TEXT,
        sscc TEXT,
        source TEXT NOT NULL,
        message_id TEXT,
        created_at REAL NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS idx_receipts_po ON receipts(po_number, po_line)",
    "CREATE INDEX IF NOT EXISTS idx_receipts_age ON receipts(created_at)",
    """
    CREATE TABLE IF NOT EXISTS invoices (
        id INTEGER PRIMARY KEY,
        partner TEXT NOT NULL,
        vendor_key TEXT NOT NULL,
        invoice_key TEXT NOT NULL,
        invoice_number TEXT NOT NULL,
        po_number TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('matched', 'held', 'released', 'rejected',
                                               'duplicate')),
        reasons TEXT NOT NULL,
        retry_on_receipt INTEGER NOT NULL DEFAULT 0,
        total TEXT,
        body TEXT NOT NULL,
        message_id TEXT,
        correlation_id TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )
    """,
    "CREATE UNIQUE INDEX IF NOT EXISTS idx_invoices_key ON invoices(vendor_key, invoice_key) "
    "WHERE status != 'duplicate'",
    "CREATE INDEX IF NOT EXISTS idx_invoices_po ON invoices(po_number, status)",
    """
    CREATE TABLE IF NOT EXISTS invoice_lines (
        invoice_id INTEGER NOT NULL,
        line TEXT NOT NULL,
        po_line TEXT,
        base_quantity TEXT NOT NULL,
        PRIMARY KEY (invoice_id, line)
    )
    """,
]


_PO_CHANGES = """
CREATE TABLE IF NOT EXISTS po_changes (
    id INTEGER PRIMARY KEY,
    po_number TEXT NOT NULL,
    line TEXT NOT NULL,
    partner TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('proposed', 'accepted', 'rejected',
                                           'superseded')),
    ack_code TEXT NOT NULL,
    ordered_quantity TEXT NOT NULL,
    ordered_uom TEXT NOT NULL,
    ordered_price TEXT NOT NULL,
    quantity TEXT,
    uom TEXT,
    unit_price TEXT,
    ship_date TEXT,
    message_id TEXT,
    correlation_id TEXT,
    created_at REAL NOT NULL,
    decided_at REAL,
    decided_by TEXT,
    note TEXT
)
"""
_PO_CHANGES_INDEX = (
    "CREATE INDEX IF NOT EXISTS idx_po_changes_po ON po_changes(po_number, line, status)"
)


def _columns(conn: Any, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def _line_holds_and_changes(conn: Any) -> None:
    """Invoice lines posted on their own (a line-level hold), credit lines, and the PO changes
    vendors propose in their 855s; every invoice line of a matched or released invoice counts
    as posted, as it was."""
    have = _columns(conn, "invoice_lines")
    if "posted" not in have:
        conn.execute("ALTER TABLE invoice_lines ADD COLUMN posted INTEGER NOT NULL DEFAULT 0")
        conn.execute(
            "UPDATE invoice_lines SET posted = 1 WHERE invoice_id IN "
            "(SELECT id FROM invoices WHERE status IN ('matched', 'released'))"
        )
    if "credit" not in have:
        conn.execute("ALTER TABLE invoice_lines ADD COLUMN credit INTEGER NOT NULL DEFAULT 0")
    conn.execute(_PO_CHANGES)
    conn.execute(_PO_CHANGES_INDEX)


#: The channel whose message recorded each purchase order, receipt, invoice and proposed PO
#: change (po_to_vendor's for a PO, the vendor's inbound X12 channel for 855/856/810), so that
#: the console's per-channel scopes filter them. Rows from before take it from their message
#: where it is still stored; the others keep NULL: in no scope, seen only by people who see
#: every channel. One self-contained entry (renumbered with this one line at a merge).
_CHANNEL_TABLES = ("purchase_orders", "receipts", "invoices", "po_changes")
_CHANNEL_COLUMNS = [f"ALTER TABLE {t} ADD COLUMN channel TEXT" for t in _CHANNEL_TABLES]
_CHANNEL_BACKFILL = [
    *(
        f"UPDATE {t} SET channel = (SELECT m.channel FROM messages AS m "
        f"WHERE m.id = {t}.message_id) WHERE message_id IS NOT NULL AND channel IS NULL"
        for t in _CHANNEL_TABLES
    ),
    "CREATE INDEX IF NOT EXISTS idx_purchase_orders_channel "
    "ON purchase_orders(channel, created_at)",
    "CREATE INDEX IF NOT EXISTS idx_invoices_channel ON invoices(channel, status)",
    "CREATE INDEX IF NOT EXISTS idx_receipts_channel ON receipts(channel, created_at)",
]


def _channels(conn: Any) -> None:
    """The ``channel`` columns where missing, back-filled from the rows' messages."""
    for table, statement in zip(_CHANNEL_TABLES, _CHANNEL_COLUMNS, strict=True):
        if "channel" not in _columns(conn, table):
            conn.execute(statement)
    for statement in _CHANNEL_BACKFILL:
        conn.execute(statement)


CHANNEL_MIGRATION: Migration = (
    4,
    "the channel of each purchase order, receipt, invoice and PO change (console scopes)",
    _channels,
)


# What the ERP acknowledged of each goods receipt line sent to it (inventory-to-finance
# reconciliation of receipts): a row per receipt line of an 856 that counts as the receipt, sent
# to the ``receipts`` destination, pending until its delivery settles, then posted, dead
# (dead-lettered) or rejected (the ERP refused it). The 856 lines received before take their
# goods receipt's outcome where its delivery is still in the outbox. One self-contained entry
# (renumbered with this one line at a merge).
_RECEIPT_POSTINGS = [
    """
    CREATE TABLE IF NOT EXISTS receipt_postings (
        id INTEGER PRIMARY KEY,
        receipt_id INTEGER NOT NULL,
        posting_key TEXT NOT NULL,
        destination TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('pending', 'posted', 'dead', 'rejected')),
        reason TEXT,
        message_id TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )
    """,
    "CREATE UNIQUE INDEX IF NOT EXISTS idx_receipt_postings_receipt "
    "ON receipt_postings(receipt_id)",
    "CREATE INDEX IF NOT EXISTS idx_receipt_postings_key ON receipt_postings(posting_key)",
]


def _receipt_postings(statements: Sequence[str], mark: str = "?") -> Callable[[Any], None]:
    """The table (``statements``: the dialect's DDL), then what the ERP did with each goods
    receipt sent before (``mark``: the connection's placeholder, ``%s`` for psycopg's)."""

    def step(conn: Any) -> None:
        for statement in statements:
            conn.execute(statement)
        _receipt_postings_before(conn, mark)

    return step


def _receipt_postings_before(conn: Any, mark: str) -> None:
    """Each 856 receipt line without a posting whose goods receipt (the outbox row of its
    message keyed as the book keys it: ``856:partner:shipment:message``) is still stored:
    posted, dead, rejected or pending as that delivery stands."""
    from engine.domains.ledger.rules import posting_status
    from engine.model import effect_key

    rows = conn.execute(
        "SELECT r.id, r.business_key, r.message_id, r.created_at, o.channel, o.destination, "
        "o.idempotency_key, o.status, o.last_error, o.updated_at FROM receipts AS r "
        "JOIN outbox AS o ON o.message_id = r.message_id WHERE r.source = 'asn' "
        "AND NOT EXISTS (SELECT 1 FROM receipt_postings AS rp WHERE rp.receipt_id = r.id)"
    ).fetchall()
    for rid, business_key, mid, created, channel, destination, key, state, error, at in rows:
        partner, shipment = [*business_key.split("|"), ""][:2]
        if key != effect_key(channel, destination, f"856:{partner}:{shipment}:{mid}", "receipt"):
            continue  # another effect of that message
        status = posting_status(_OUTCOMES.get(state, state), error) or "pending"
        conn.execute(
            "INSERT INTO receipt_postings (receipt_id, posting_key, destination, status, "
            f"reason, message_id, created_at, updated_at) VALUES ({', '.join([mark] * 8)}) "
            "ON CONFLICT (receipt_id) DO NOTHING",
            (rid, key, destination, status, error if status in FAILED else None, mid, created, at),
        )


#: An outbox row's status as the delivery outcome a domain hears; the postings that keep why.
_OUTCOMES = {"sent": "delivered"}
FAILED = ("dead", "rejected")

RECEIPT_POSTINGS_MIGRATION: Migration = (
    5,
    "ERP postings of goods receipts (inventory-to-finance reconciliation)",
    _receipt_postings(_RECEIPT_POSTINGS),
)

SQLITE_MIGRATIONS: list[Migration] = [
    (1, "x12 control numbers, outbound interchanges and acks, inbound sets", _X12_CONTROL),
    (2, "purchase orders, lines, receipts, invoices and their match", _PROCUREMENT),
    (3, "line-level holds, credit lines and proposed PO changes", _line_holds_and_changes),
    CHANNEL_MIGRATION,
    RECEIPT_POSTINGS_MIGRATION,
]


# The same history on PostgreSQL (a new database: the statements as they are, no callables);
# po_lines.rowid is SQLite's implicit one (a PO's lines in the order they were written).
POSTGRESQL_MIGRATIONS: list[Migration] = [
    (1, SQLITE_MIGRATIONS[0][1], ddl_all(_X12_CONTROL)),
    (
        2,
        SQLITE_MIGRATIONS[1][1],
        [
            *ddl_all(_PROCUREMENT),
            "ALTER TABLE po_lines ADD COLUMN rowid BIGINT GENERATED ALWAYS AS IDENTITY",
        ],
    ),
    (
        3,
        SQLITE_MIGRATIONS[2][1],
        [
            "ALTER TABLE invoice_lines ADD COLUMN posted BIGINT NOT NULL DEFAULT 0",
            "UPDATE invoice_lines SET posted = 1 WHERE invoice_id IN "
            "(SELECT id FROM invoices WHERE status IN ('matched', 'released'))",
            "ALTER TABLE invoice_lines ADD COLUMN credit BIGINT NOT NULL DEFAULT 0",
            ddl(_PO_CHANGES),
            _PO_CHANGES_INDEX,
        ],
    ),
    (
        CHANNEL_MIGRATION[0],
        CHANNEL_MIGRATION[1],
        [*ddl_all(_CHANNEL_COLUMNS), *_CHANNEL_BACKFILL],
    ),
    (
        RECEIPT_POSTINGS_MIGRATION[0],
        RECEIPT_POSTINGS_MIGRATION[1],
        _receipt_postings(ddl_all(_RECEIPT_POSTINGS), "%s"),
    ),
]


def migrations(dialect: str) -> list[Migration]:
    if dialect == "sqlite":
        return SQLITE_MIGRATIONS
    if dialect == "postgresql":
        return POSTGRESQL_MIGRATIONS
    raise ValueError(f"procurement's schema exists for sqlite and postgresql (got {dialect!r})")
