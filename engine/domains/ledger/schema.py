"""The supply ledger's tables, as its own schema history (``component_versions``, component
``ledger``).

The statements are those of the store's former migrations v4, v5 and v9, written so that a
database that already has the objects (every store past v4) is left as it is: the history is
then only recorded. Work items are the spine's (store migration v4), not the ledger's.
"""

from __future__ import annotations

import sqlite3

from engine.interfaces import Migration
from engine.sqldialect import ddl_all

_TABLES: list[str] = [
    """
    CREATE TABLE IF NOT EXISTS consumption_events (
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
    "CREATE INDEX IF NOT EXISTS idx_events_encounter ON consumption_events(encounter)",
    "CREATE INDEX IF NOT EXISTS idx_events_item_location "
    "ON consumption_events(item_id, location_id)",
    "CREATE INDEX IF NOT EXISTS idx_events_correlation ON consumption_events(correlation_id)",
    """
    CREATE TABLE IF NOT EXISTS inventory_transactions (
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
    "CREATE INDEX IF NOT EXISTS idx_inv_tx_item_location "
    "ON inventory_transactions(item_id, location_id)",
    """
    CREATE TABLE IF NOT EXISTS onhand (
        location_id TEXT NOT NULL,
        item_id TEXT NOT NULL,
        quantity TEXT NOT NULL,
        uom TEXT NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (location_id, item_id)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS charges (
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
    "CREATE INDEX IF NOT EXISTS idx_charges_encounter ON charges(encounter)",
    "CREATE INDEX IF NOT EXISTS idx_charges_status ON charges(status, created_at)",
    """
    CREATE TABLE IF NOT EXISTS requisitions (
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
    "CREATE INDEX IF NOT EXISTS idx_requisitions_open "
    "ON requisitions(location_id, item_id, status)",
]


def _requested_requisitions(conn: sqlite3.Connection) -> None:
    """A requisition a sender asked for (FHIR SupplyRequest) is booked once per request id."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(requisitions)")}
    if "business_key" not in columns:
        conn.execute("ALTER TABLE requisitions ADD COLUMN business_key TEXT")
    conn.execute(
        "CREATE UNIQUE INDEX IF NOT EXISTS idx_requisitions_business_key "
        "ON requisitions(business_key) WHERE business_key IS NOT NULL"
    )


# Every accepted or rejected charge finds its row by event (a full scan before).
_CHARGE_EVENT_INDEX = ["CREATE INDEX IF NOT EXISTS idx_charges_event ON charges(event_id)"]

# Credits for lines the ledger never booked, held until a person releases or rejects them.
_HELD_CREDITS = [
    """
    CREATE TABLE IF NOT EXISTS held_credits (
        id INTEGER PRIMARY KEY,
        business_key TEXT NOT NULL UNIQUE,
        reverses TEXT NOT NULL,
        channel TEXT NOT NULL,
        detail TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('held', 'released', 'rejected')),
        message_id TEXT NOT NULL,
        correlation_id TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS idx_held_credits_status ON held_credits(status, created_at)",
]

# The open-requisitions metric counts open requisitions from an index of their status; the
# reconciliation objective judges events in the order they were booked.
MIGRATION_OBSERVABILITY_INDEXES: Migration = (
    5,
    "indexes of requisitions by status and events by booking time (metrics and objectives)",
    [
        "CREATE INDEX IF NOT EXISTS idx_requisitions_status ON requisitions(status)",
        "CREATE INDEX IF NOT EXISTS idx_events_created ON consumption_events(created_at)",
    ],
)

# What the ERP acknowledged of each stock issue or return line (inventory-to-finance
# reconciliation): a row per booked event sent to an issue destination, pending until its
# delivery settles, then posted (with the posted quantity, value and the ERP's document
# number), dead (dead-lettered) or rejected (the ERP refused it).
MIGRATION_ERP_POSTINGS: Migration = (
    6,
    "ERP postings of stock issues and returns (inventory-to-finance reconciliation)",
    [
        """
        CREATE TABLE IF NOT EXISTS erp_postings (
            id INTEGER PRIMARY KEY,
            event_id INTEGER NOT NULL,
            event_key TEXT NOT NULL,
            issue_key TEXT NOT NULL,
            destination TEXT NOT NULL,
            location_id TEXT NOT NULL,
            item_id TEXT NOT NULL,
            quantity TEXT NOT NULL,
            uom TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('pending', 'posted', 'dead', 'rejected')),
            posted_quantity TEXT,
            posted_value TEXT,
            document TEXT,
            reason TEXT,
            message_id TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )
        """,
        "CREATE INDEX IF NOT EXISTS idx_erp_postings_issue ON erp_postings(issue_key)",
        "CREATE UNIQUE INDEX IF NOT EXISTS idx_erp_postings_event ON erp_postings(event_id)",
    ],
)

# Utilization by physician and payer: the performing (FT1-20) and ordering (FT1-21)
# physician's id (never a name: names are PHI), the payer (IN1-3 insurance company id, else
# PV1-20 financial class; ``payer_kind`` says which) and the procedure of each usage event; the
# performing physician and procedure of events booked before are taken from their detail.
_PHYSICIAN_PAYER_COLUMNS = [
    "ALTER TABLE consumption_events ADD COLUMN performer TEXT",
    "ALTER TABLE consumption_events ADD COLUMN orderer TEXT",
    "ALTER TABLE consumption_events ADD COLUMN payer TEXT",
    "ALTER TABLE consumption_events ADD COLUMN payer_kind TEXT",
    "ALTER TABLE consumption_events ADD COLUMN procedure TEXT",
]


def _physician_payer(conn: sqlite3.Connection) -> None:
    """The columns where missing (a database may have them already), then the backfill."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(consumption_events)")}
    for statement in _PHYSICIAN_PAYER_COLUMNS:
        if statement.split()[-2] not in columns:
            conn.execute(statement)
    conn.execute(
        "UPDATE consumption_events SET performer = json_extract(detail, '$.performer'), "
        "procedure = json_extract(detail, '$.procedure')"
    )


MIGRATION_PHYSICIAN_PAYER: Migration = (
    7,
    "usage events: performing and ordering physician, payer, procedure",
    _physician_payer,
)

#: The channel whose message raised each requisition (the console's per-channel scopes);
#: those from before take it from their message where it is still stored, the others keep
#: NULL (in no scope: seen only by people who see every channel). One self-contained entry.
_REQUISITION_CHANNEL = [
    "ALTER TABLE requisitions ADD COLUMN channel TEXT",
    "UPDATE requisitions SET channel = (SELECT m.channel FROM messages AS m "
    "WHERE m.id = requisitions.message_id) WHERE message_id IS NOT NULL AND channel IS NULL",
    "CREATE INDEX IF NOT EXISTS idx_requisitions_channel "
    "ON requisitions(channel, status, created_at)",
]


def _requisition_channel(conn: sqlite3.Connection) -> None:
    """The ``channel`` column where missing (a store whose tables came before the history),
    back-filled from each requisition's message, and its index."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(requisitions)")}
    for statement in _REQUISITION_CHANNEL:
        if "ADD COLUMN" not in statement or "channel" not in have:
            conn.execute(statement)


MIGRATION_REQUISITION_CHANNEL: Migration = (
    8,
    "the channel that raised each requisition (console scopes)",
    _requisition_channel,
)

SQLITE_MIGRATIONS: list[Migration] = [
    (1, "events, stock moves, on-hand, charges, requisitions", _TABLES),
    (2, "requisitions asked for by a sender: business key", _requested_requisitions),
    (3, "index of charges by event", _CHARGE_EVENT_INDEX),
    (4, "credits held for want of the line they reverse", _HELD_CREDITS),
    MIGRATION_OBSERVABILITY_INDEXES,
    MIGRATION_ERP_POSTINGS,
    MIGRATION_PHYSICIAN_PAYER,
    MIGRATION_REQUISITION_CHANNEL,
]


# The same history on PostgreSQL (a new database: the statements as they are, no callables).
POSTGRESQL_MIGRATIONS: list[Migration] = [
    (1, SQLITE_MIGRATIONS[0][1], ddl_all(_TABLES)),
    (
        2,
        SQLITE_MIGRATIONS[1][1],
        [
            "ALTER TABLE requisitions ADD COLUMN IF NOT EXISTS business_key TEXT",
            "CREATE UNIQUE INDEX IF NOT EXISTS idx_requisitions_business_key "
            "ON requisitions(business_key) WHERE business_key IS NOT NULL",
        ],
    ),
    (3, SQLITE_MIGRATIONS[2][1], ddl_all(_CHARGE_EVENT_INDEX)),
    (4, SQLITE_MIGRATIONS[3][1], ddl_all(_HELD_CREDITS)),
    (5, SQLITE_MIGRATIONS[4][1], ddl_all(MIGRATION_OBSERVABILITY_INDEXES[2])),
    (6, MIGRATION_ERP_POSTINGS[1], ddl_all(MIGRATION_ERP_POSTINGS[2])),
    (
        7,
        MIGRATION_PHYSICIAN_PAYER[1],
        [
            *(
                c.replace("ADD COLUMN", "ADD COLUMN IF NOT EXISTS")
                for c in _PHYSICIAN_PAYER_COLUMNS
            ),
            "UPDATE consumption_events SET performer = detail::json ->> 'performer', "
            "procedure = detail::json ->> 'procedure'",
        ],
    ),
    (
        MIGRATION_REQUISITION_CHANNEL[0],
        MIGRATION_REQUISITION_CHANNEL[1],
        ddl_all(_REQUISITION_CHANNEL),
    ),
]


def migrations(dialect: str) -> list[Migration]:
    if dialect == "sqlite":
        return SQLITE_MIGRATIONS
    if dialect == "postgresql":
        return POSTGRESQL_MIGRATIONS
    raise ValueError(f"the ledger's schema exists for sqlite and postgresql (got {dialect!r})")
