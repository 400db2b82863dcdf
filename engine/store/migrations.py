"""Versioned schema of the Wharf store.

``MIGRATIONS`` is the ordered history: ``(version, description, step)`` where ``step`` is a
list of SQL statements or a callable taking the connection. A migration is never edited once
released; a schema change is a new entry at the end. :func:`apply_migrations` applies the
missing ones, each in its own write transaction, and records it in ``schema_version``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence

from sqlite_utils import Database

from engine.errors import StoreError

MigrationStep = Sequence[str] | Callable[[sqlite3.Connection], None]
Migration = tuple[int, str, MigrationStep]

_SCHEMA_VERSION_DDL = """
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at REAL NOT NULL
)
"""

# v1 literals are frozen on purpose: later changes to engine.model must come as new migrations.
_V1_BASE_TABLES: list[str] = [
    """
    CREATE TABLE messages (
        id TEXT PRIMARY KEY,
        channel TEXT NOT NULL,
        source TEXT NOT NULL,
        peer TEXT,
        content_type TEXT NOT NULL,
        received_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        sha256 TEXT NOT NULL,
        size INTEGER NOT NULL,
        control_id TEXT,
        dedup_key TEXT,
        correlation_id TEXT,
        status TEXT NOT NULL CHECK (status IN
            ('received', 'filtered', 'queued', 'sent', 'error', 'conflict')),
        error TEXT,
        error_location TEXT
    )
    """,
    """
    CREATE TABLE contents (
        message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        stage TEXT NOT NULL CHECK (stage IN ('raw', 'transformed', 'sent', 'response')),
        data BLOB NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (message_id, stage)
    )
    """,
    """
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        channel TEXT NOT NULL,
        destination TEXT NOT NULL,
        idx INTEGER NOT NULL,
        payload BLOB NOT NULL,
        content_type TEXT NOT NULL,
        meta TEXT NOT NULL DEFAULT '{}',
        idempotency_key TEXT NOT NULL UNIQUE,
        correlation_id TEXT NOT NULL,
        order_key TEXT,
        status TEXT NOT NULL CHECK (status IN
            ('pending', 'inflight', 'sent', 'dead', 'quarantined')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        lease_until REAL,
        last_error TEXT,
        response BLOB,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )
    """,
    """
    CREATE TABLE dead_letters (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        outbox_id INTEGER REFERENCES outbox(id) ON DELETE SET NULL,
        message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        channel TEXT NOT NULL,
        destination TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('dead', 'quarantine')),
        reason TEXT NOT NULL,
        created_at REAL NOT NULL,
        replayed_at REAL
    )
    """,
    """
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    )
    """,
    """
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit is append-only: UPDATE refused'); END
    """,
    """
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit is append-only: DELETE refused'); END
    """,
    "CREATE INDEX idx_messages_status_time ON messages(status, received_at)",
    "CREATE INDEX idx_outbox_claim ON outbox(channel, destination, status, next_attempt_at)",
    "CREATE INDEX idx_outbox_message ON outbox(message_id)",
    "CREATE INDEX idx_dead_letters_message ON dead_letters(message_id)",
    "CREATE INDEX idx_dead_letters_outbox ON dead_letters(outbox_id)",
]

_V2_BUSINESS_KEYS: list[str] = [
    """
    CREATE TABLE business_keys (
        message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (message_id, name, value)
    )
    """,
    "CREATE INDEX idx_business_keys_name_value ON business_keys(name, value)",
    "CREATE INDEX idx_messages_correlation ON messages(correlation_id)",
    "CREATE INDEX idx_messages_dedup ON messages(channel, dedup_key, received_at)",
    "CREATE INDEX idx_messages_channel_time ON messages(channel, received_at)",
    "CREATE INDEX idx_messages_received ON messages(received_at)",
    "CREATE INDEX idx_outbox_order ON outbox(channel, destination, order_key, id)",
]


def _v3_backfill_correlation(conn: sqlite3.Connection) -> None:
    """v1 allowed a NULL correlation id; every message is its own correlation by default."""
    conn.execute("UPDATE messages SET correlation_id = id WHERE correlation_id IS NULL")


_V4_LEDGER: list[str] = [
    """
    CREATE TABLE consumption_events (
        id INTEGER PRIMARY KEY,
        business_key TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        item_id TEXT NOT NULL,
        location_id TEXT NOT NULL,
        quantity TEXT NOT NULL,
        uom TEXT NOT NULL,
        chargeable INTEGER NOT NULL,
        encounter TEXT NOT NULL,
        service_time TEXT NOT NULL,
        reverses TEXT,
        lot TEXT,
        serial TEXT,
        detail TEXT NOT NULL,
        message_id TEXT NOT NULL,
        correlation_id TEXT NOT NULL,
        created_at REAL NOT NULL
    )
    """,
    "CREATE INDEX idx_events_encounter ON consumption_events(encounter)",
    "CREATE INDEX idx_events_item_location ON consumption_events(item_id, location_id)",
    "CREATE INDEX idx_events_correlation ON consumption_events(correlation_id)",
    """
    CREATE TABLE inventory_transactions (
        id INTEGER PRIMARY KEY,
        event_id INTEGER NOT NULL REFERENCES consumption_events(id),
        location_id TEXT NOT NULL,
        item_id TEXT NOT NULL,
        delta TEXT NOT NULL,
        uom TEXT NOT NULL,
        message_id TEXT NOT NULL,
        correlation_id TEXT NOT NULL,
        created_at REAL NOT NULL
    )
    """,
    "CREATE INDEX idx_inv_tx_item_location ON inventory_transactions(item_id, location_id)",
    """
    CREATE TABLE onhand (
        location_id TEXT NOT NULL,
        item_id TEXT NOT NULL,
        quantity TEXT NOT NULL,
        uom TEXT NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (location_id, item_id)
    )
    """,
    """
    CREATE TABLE charges (
        id INTEGER PRIMARY KEY,
        event_id INTEGER NOT NULL REFERENCES consumption_events(id),
        encounter TEXT NOT NULL,
        charge_code TEXT NOT NULL,
        quantity TEXT NOT NULL,
        uom TEXT NOT NULL,
        transaction_type TEXT NOT NULL,
        amount TEXT,
        currency TEXT,
        status TEXT NOT NULL,
        message_id TEXT NOT NULL,
        correlation_id TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )
    """,
    "CREATE INDEX idx_charges_encounter ON charges(encounter)",
    "CREATE INDEX idx_charges_status ON charges(status, created_at)",
    """
    CREATE TABLE requisitions (
        id INTEGER PRIMARY KEY,
        location_id TEXT NOT NULL,
        item_id TEXT NOT NULL,
        quantity TEXT NOT NULL,
        uom TEXT NOT NULL,
        status TEXT NOT NULL,
        event_id INTEGER REFERENCES consumption_events(id),
        message_id TEXT NOT NULL,
        correlation_id TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )
    """,
    "CREATE INDEX idx_requisitions_open ON requisitions(location_id, item_id, status)",
    """
    CREATE TABLE work_items (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        detail TEXT NOT NULL,
        status TEXT NOT NULL,
        message_id TEXT,
        correlation_id TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )
    """,
    "CREATE INDEX idx_work_items_open ON work_items(status, kind)",
]

# A requisition a sender asked for (FHIR SupplyRequest) is booked once per request identifier.
_V5_REQUESTED_REQUISITIONS: list[str] = [
    "ALTER TABLE requisitions ADD COLUMN business_key TEXT",
    "CREATE UNIQUE INDEX idx_requisitions_business_key ON requisitions(business_key) "
    "WHERE business_key IS NOT NULL",
]

# X12: control numbers per partner and kind, interchanges sent and their acks, inbound sets
# seen (duplicate detection). Used by engine/x12/control.py.
_X12_CONTROL: list[str] = [
    """
    CREATE TABLE x12_control (
        partner TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('isa13', 'gs06', 'st02')),
        last INTEGER NOT NULL CHECK (last BETWEEN 0 AND 999999999),
        updated_at REAL NOT NULL,
        PRIMARY KEY (partner, kind)
    )
    """,
    """
    CREATE TABLE x12_outbound (
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
    "CREATE INDEX idx_x12_outbound_gs06 ON x12_outbound(partner, gs06)",
    "CREATE INDEX idx_x12_outbound_isa13 ON x12_outbound(partner, isa13)",
    "CREATE INDEX idx_x12_outbound_ack ON x12_outbound(ack_status, ack_due_at)",
    "CREATE INDEX idx_x12_outbound_key ON x12_outbound(business_key)",
    """
    CREATE TABLE x12_inbound (
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
    "CREATE INDEX idx_x12_inbound_key ON x12_inbound(sender_qualifier, sender_id, isa13, "
    "received_at)",
    "CREATE INDEX idx_x12_inbound_received ON x12_inbound(received_at)",
]

# Procurement: purchase orders sent as 850s, their lines (with 855 statuses), receipts (856 or
# ERP), invoices (810) and their match. Used by engine/x12/book.py.
_V7_PROCUREMENT: list[str] = [
    """
    CREATE TABLE purchase_orders (
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
    CREATE TABLE po_lines (
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
    CREATE TABLE receipts (
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
    "CREATE INDEX idx_receipts_po ON receipts(po_number, po_line)",
    "CREATE INDEX idx_receipts_age ON receipts(created_at)",
    """
    CREATE TABLE invoices (
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
    "CREATE UNIQUE INDEX idx_invoices_key ON invoices(vendor_key, invoice_key) "
    "WHERE status != 'duplicate'",
    "CREATE INDEX idx_invoices_po ON invoices(po_number, status)",
    """
    CREATE TABLE invoice_lines (
        invoice_id INTEGER NOT NULL,
        line TEXT NOT NULL,
        po_line TEXT,
        base_quantity TEXT NOT NULL,
        PRIMARY KEY (invoice_id, line)
    )
    """,
]
# Claiming due deliveries reads only pending rows of one destination, oldest first: a partial
# index keeps that cheap however many sent rows the outbox holds.
_V8_PENDING_OUTBOX: list[str] = [
    "CREATE INDEX idx_outbox_pending ON outbox(channel, destination, id) WHERE status = 'pending'",
]
# Lookups that ran on every accepted charge, work item and lease check (found with EXPLAIN
# QUERY PLAN: full scans of charges, work_items and outbox that grew with the tables).
_V9_HOT_LOOKUPS: list[str] = [
    "CREATE INDEX idx_charges_event ON charges(event_id)",
    "CREATE INDEX idx_work_items_subject ON work_items(kind, subject)",
    "CREATE INDEX idx_outbox_inflight ON outbox(lease_until) WHERE status = 'inflight'",
]

MIGRATIONS: list[Migration] = [
    (1, "base tables: messages, contents, outbox, dead_letters, audit", _V1_BASE_TABLES),
    (2, "business_keys and search indexes", _V2_BUSINESS_KEYS),
    (3, "backfill correlation_id with the message id", _v3_backfill_correlation),
    (4, "supply ledger: events, stock, on-hand, charges, requisitions, work items", _V4_LEDGER),
    (5, "requisitions asked for by a sender: business key", _V5_REQUESTED_REQUISITIONS),
    (6, "x12 control numbers, outbound interchanges and acks, inbound sets", _X12_CONTROL),
    (7, "procurement: purchase orders, lines, receipts, invoices and their match", _V7_PROCUREMENT),
    (8, "partial index of pending outbox rows for claims", _V8_PENDING_OUTBOX),
    (9, "indexes for charge outcomes, work items and expired leases", _V9_HOT_LOOKUPS),
]

LATEST_VERSION: int = MIGRATIONS[-1][0]


def current_version(conn: sqlite3.Connection) -> int:
    """Highest applied schema version, 0 for an empty database."""
    if not Database(conn)["schema_version"].exists():
        return 0
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def apply_migrations(
    conn: sqlite3.Connection,
    migrations: Sequence[Migration] = MIGRATIONS,
    *,
    target: int | None = None,
) -> int:
    """Apply every migration above the current version up to ``target`` (default: all).

    ``conn`` must be in autocommit mode (``isolation_level=None``). Each migration runs in
    its own ``BEGIN IMMEDIATE`` transaction; a failure rolls that one back and raises
    :class:`StoreError`. Returns the version reached.
    """
    _check_history(migrations)
    conn.execute(_SCHEMA_VERSION_DDL)
    version = current_version(conn)
    latest = migrations[-1][0] if migrations else 0
    if version > latest:
        raise StoreError(
            f"database schema is version {version} but this Wharf knows versions up to "
            f"{latest}; upgrade Wharf before opening this store"
        )
    for number, description, step in migrations:
        if number <= version or (target is not None and number > target):
            continue
        _apply_one(conn, number, description, step)
        version = number
    return version


def _check_history(migrations: Sequence[Migration]) -> None:
    numbers = [m[0] for m in migrations]
    expected = list(range(1, len(numbers) + 1))
    if numbers != expected:
        raise StoreError(f"migration versions must be {expected} in order (got {numbers})")


def _apply_one(
    conn: sqlite3.Connection, number: int, description: str, step: MigrationStep
) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        if callable(step):
            step(conn)
        else:
            for statement in step:
                conn.execute(statement)
        conn.execute(
            "INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)",
            (number, description, time.time()),
        )
    except sqlite3.Error as exc:
        conn.execute("ROLLBACK")
        raise StoreError(f"schema migration v{number} ({description}) failed: {exc}") from exc
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
