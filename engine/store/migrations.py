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
from typing import Any

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


# v4 to v7 created the supply ledger's and procurement's tables; those tables now belong to
# their domains (engine/domains/*/schema.py), which create them with the same statements
# under their own histories (table ``component_versions``). What stays here is the one
# spine table v4 created, work items for people, written so that a database that already has
# it (every database past v4) is left as it is.
_V4_WORK_ITEMS: list[str] = [
    """
    CREATE TABLE IF NOT EXISTS work_items (
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
    "CREATE INDEX IF NOT EXISTS idx_work_items_open ON work_items(status, kind)",
]
_MOVED_TO_A_DOMAIN: list[str] = []

# Claiming due deliveries reads only pending rows of one destination, oldest first: a partial
# index keeps that cheap however many sent rows the outbox holds.
_V8_PENDING_OUTBOX: list[str] = [
    "CREATE INDEX idx_outbox_pending ON outbox(channel, destination, id) WHERE status = 'pending'",
]
# Lookups that ran on every accepted charge, work item and lease check (found with EXPLAIN
# QUERY PLAN: full scans of charges, work_items and outbox that grew with the tables).
# (Its index on the ledger's charges moved to the ledger domain's history.)
_V9_HOT_LOOKUPS: list[str] = [
    "CREATE INDEX IF NOT EXISTS idx_work_items_subject ON work_items(kind, subject)",
    "CREATE INDEX IF NOT EXISTS idx_outbox_inflight ON outbox(lease_until) "
    "WHERE status = 'inflight'",
]
# Each component with tables of its own (a domain) keeps its own schema history here.
_V10_COMPONENT_VERSIONS: list[str] = [
    """
    CREATE TABLE component_versions (
        component TEXT NOT NULL,
        version INTEGER NOT NULL,
        description TEXT NOT NULL,
        applied_at REAL NOT NULL,
        PRIMARY KEY (component, version)
    )
    """,
]

# Retention: pruning finds old finished messages by status and last change; pruning the audit
# keeps the chain verifiable from the last pruned row's hash.
_V11_RETENTION: list[str] = [
    "CREATE INDEX IF NOT EXISTS idx_messages_status_updated ON messages(status, updated_at)",
    """
    CREATE TABLE audit_anchor (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        through_id INTEGER NOT NULL,
        hash TEXT NOT NULL,
        pruned_at REAL NOT NULL
    )
    """,
    # The audit stays append-only, but for the rows up to the anchor a prune has just set.
    "DROP TRIGGER IF EXISTS audit_no_delete",
    """
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    WHEN OLD.id > COALESCE((SELECT through_id FROM audit_anchor WHERE id = 1), 0)
    BEGIN SELECT RAISE(ABORT, 'audit is append-only: DELETE refused'); END
    """,
    """
    CREATE TRIGGER audit_anchor_forward BEFORE UPDATE ON audit_anchor
    WHEN NEW.through_id < OLD.through_id
    BEGIN SELECT RAISE(ABORT, 'the audit anchor only moves forward'); END
    """,
]

# A bulk call's rows carry its key until the call is answered, so a resend of that call (after
# a timeout, a 5xx or a 429) sends the same rows under the same key.
_V12_BATCH_KEY: list[str] = [
    "ALTER TABLE outbox ADD COLUMN batch_key TEXT",
]


def _v13_message_origin(conn: sqlite3.Connection) -> None:
    """The credential a message came with (``messages.origin``), added only where missing."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
    if "origin" not in columns:
        conn.execute("ALTER TABLE messages ADD COLUMN origin TEXT")


# A processed message resolves its own MISSING_MAPPING items by message id: without an index
# that UPDATE walked every open item (7 ms at 15k open items, bench/store_growth.py).
_V14_WORK_ITEMS_BY_MESSAGE: list[str] = [
    "CREATE INDEX IF NOT EXISTS idx_work_items_message ON work_items(message_id, kind, status)",
]


def _config_versions(conn: sqlite3.Connection) -> None:
    """Configuration versions (engine/config/versions.py): the version each processed message
    was produced by (``messages.config_version``), the version a replay asks for
    (``messages.replay_config``: NULL is the current configuration), each version's files by
    their SHA-256 (``config_versions``, ``config_files``)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
    for column in ("config_version", "replay_config"):
        if column not in columns:
            conn.execute(f"ALTER TABLE messages ADD COLUMN {column} TEXT")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS config_versions (version TEXT PRIMARY KEY, "
        "channel TEXT NOT NULL, git_commit TEXT, files TEXT NOT NULL, created_at REAL NOT NULL)"
    )
    conn.execute(
        "CREATE TABLE IF NOT EXISTS config_files (sha256 TEXT PRIMARY KEY, data BLOB NOT NULL)"
    )


#: One entry, renumbered in one place when histories merge.
CONFIG_VERSIONS_MIGRATION: Migration = (
    15,
    "configuration versions per processed message, and their files",
    _config_versions,
)

# The work-item resolution SLO judges each item once its time to close is up, in the order
# the items were opened (engine/runtime/slos.py): an index of their opening time.
MIGRATION_WORK_ITEMS_BY_OPENING: Migration = (
    16,
    "work items by their opening time (the work-item resolution objective)",
    ["CREATE INDEX IF NOT EXISTS idx_work_items_created ON work_items(created_at)"],
)


def _v15_console(conn: sqlite3.Connection) -> None:
    """The admin console's tables: its accounts, what an operator paused (held across
    restarts), and running counters (messages by channel and status, deliveries by channel,
    destination and status, messages received per channel per five minutes) kept by triggers,
    so that dashboards never count a million rows. Browsing by channel and status starts from
    an index of its own. One self-contained step: a store that has any of it keeps it."""
    for statement in CONSOLE_SCHEMA:
        conn.execute(statement)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(work_items)")}
    if "assignee" not in columns:  # who a work item is assigned to (the console's assign)
        conn.execute("ALTER TABLE work_items ADD COLUMN assignee TEXT")
    have = conn.execute("SELECT COUNT(*) FROM message_counts").fetchone()[0]
    if not have:  # the counters start from what the store already holds (once)
        conn.execute(
            "INSERT INTO message_counts (channel, status, n) "
            "SELECT channel, status, COUNT(*) FROM messages GROUP BY channel, status"
        )
        conn.execute(
            "INSERT INTO delivery_counts (channel, destination, status, n) "
            "SELECT channel, destination, status, COUNT(*) FROM outbox "
            "GROUP BY channel, destination, status"
        )
        conn.execute(
            f"INSERT INTO message_buckets (channel, bucket, n) "
            f"SELECT channel, CAST(received_at / {BUCKET_SECONDS} AS INTEGER), COUNT(*) "
            "FROM messages GROUP BY 1, 2"
        )


#: Width of one throughput bucket (seconds): the console's charts add buckets up.
BUCKET_SECONDS = 300

CONSOLE_SCHEMA: list[str] = [
    """
    CREATE TABLE IF NOT EXISTS console_users (
        name TEXT PRIMARY KEY,
        password_hash TEXT,
        roles TEXT NOT NULL,
        channels TEXT NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0,
        setup_hash TEXT,
        setup_until REAL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS pauses (
        channel TEXT NOT NULL,
        destination TEXT NOT NULL,
        actor TEXT NOT NULL,
        note TEXT NOT NULL,
        at REAL NOT NULL,
        PRIMARY KEY (channel, destination)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS message_counts (
        channel TEXT NOT NULL, status TEXT NOT NULL, n INTEGER NOT NULL,
        PRIMARY KEY (channel, status)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE IF NOT EXISTS delivery_counts (
        channel TEXT NOT NULL, destination TEXT NOT NULL, status TEXT NOT NULL,
        n INTEGER NOT NULL, PRIMARY KEY (channel, destination, status)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE IF NOT EXISTS message_buckets (
        channel TEXT NOT NULL, bucket INTEGER NOT NULL, n INTEGER NOT NULL,
        PRIMARY KEY (channel, bucket)
    ) WITHOUT ROWID
    """,
    """
    CREATE TRIGGER IF NOT EXISTS count_message_insert AFTER INSERT ON messages BEGIN
        INSERT INTO message_counts (channel, status, n) VALUES (NEW.channel, NEW.status, 1)
            ON CONFLICT (channel, status) DO UPDATE SET n = n + 1;
        INSERT INTO message_buckets (channel, bucket, n)
            VALUES (NEW.channel, CAST(NEW.received_at / 300 AS INTEGER), 1)
            ON CONFLICT (channel, bucket) DO UPDATE SET n = n + 1;
    END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS count_message_status AFTER UPDATE OF status ON messages
    WHEN OLD.status IS NOT NEW.status BEGIN
        UPDATE message_counts SET n = n - 1 WHERE channel = OLD.channel AND status = OLD.status;
        INSERT INTO message_counts (channel, status, n) VALUES (NEW.channel, NEW.status, 1)
            ON CONFLICT (channel, status) DO UPDATE SET n = n + 1;
    END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS count_message_delete AFTER DELETE ON messages BEGIN
        UPDATE message_counts SET n = n - 1 WHERE channel = OLD.channel AND status = OLD.status;
    END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS count_delivery_insert AFTER INSERT ON outbox BEGIN
        INSERT INTO delivery_counts (channel, destination, status, n)
            VALUES (NEW.channel, NEW.destination, NEW.status, 1)
            ON CONFLICT (channel, destination, status) DO UPDATE SET n = n + 1;
    END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS count_delivery_status AFTER UPDATE OF status ON outbox
    WHEN OLD.status IS NOT NEW.status BEGIN
        UPDATE delivery_counts SET n = n - 1 WHERE channel = OLD.channel
            AND destination = OLD.destination AND status = OLD.status;
        INSERT INTO delivery_counts (channel, destination, status, n)
            VALUES (NEW.channel, NEW.destination, NEW.status, 1)
            ON CONFLICT (channel, destination, status) DO UPDATE SET n = n + 1;
    END
    """,
    """
    CREATE TRIGGER IF NOT EXISTS count_delivery_delete AFTER DELETE ON outbox BEGIN
        UPDATE delivery_counts SET n = n - 1 WHERE channel = OLD.channel
            AND destination = OLD.destination AND status = OLD.status;
    END
    """,
    # the browser's channel + status search pages by time from here
    "CREATE INDEX IF NOT EXISTS idx_messages_channel_status_time "
    "ON messages(channel, status, received_at)",
    # and a search by control number (MSH-10, an X12 control number) from this one
    "CREATE INDEX IF NOT EXISTS idx_messages_control ON messages(control_id)",
]

#: One-at-a-time jobs held by one node at a time (``job_leases``: the pickup of one folder, a
#: partner's SFTP remote) and the SFTP server's upload registry (``sftp_uploads``: what is being
#: written, complete, handed over), shared by the nodes of one PostgreSQL store.
_V19_LEASES_AND_UPLOADS = [
    """
    CREATE TABLE IF NOT EXISTS job_leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        since REAL NOT NULL,
        renewed_at REAL NOT NULL,
        until REAL NOT NULL,
        taken_from TEXT,
        taken_from_until REAL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS sftp_uploads (
        path TEXT PRIMARY KEY,
        part TEXT,
        node TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('open', 'complete', 'handed')),
        size INTEGER,
        sha256 TEXT,
        opened_at REAL NOT NULL,
        closed_at REAL,
        handed_at REAL,
        handed_by TEXT,
        message_id TEXT
    )
    """,
]

#: The leases and uploads migration, as one entry (renumbered with this one line at a merge).
LEASES_MIGRATION: Migration = (
    19,
    "leases of one-at-a-time jobs, the SFTP server's upload registry",
    _V19_LEASES_AND_UPLOADS,
)

#: The console's migration, as one entry (renumbered with this one line when histories merge).
CONSOLE_MIGRATION: Migration = (17, "the console: accounts, pauses, running counters", _v15_console)

#: Work items know their message's channel (the console's per-channel scopes filter them);
#: those opened before take it from their message. One entry, renumbered when histories merge.
_WORK_ITEM_CHANNEL_BACKFILL = (
    "UPDATE work_items SET channel = (SELECT m.channel FROM messages AS m "
    "WHERE m.id = work_items.message_id) WHERE message_id IS NOT NULL AND channel IS NULL"
)
_WORK_ITEM_CHANNEL_INDEX = (
    "CREATE INDEX IF NOT EXISTS idx_work_items_channel ON work_items(channel, status, kind)"
)
MIGRATION_WORK_ITEM_CHANNEL: Migration = (
    18,
    "work items: the channel of their message (console scopes)",
    [
        "ALTER TABLE work_items ADD COLUMN channel TEXT",
        _WORK_ITEM_CHANNEL_BACKFILL,
        _WORK_ITEM_CHANNEL_INDEX,
    ],
)

#: A message a replay put back to ``received`` is free for any node's sweep at once:
#: ``pipeline_until`` is when the pipeline of the node that took it lets it go (NULL: the node
#: that stored it holds it for a while after ``updated_at``; see PostgresStore.received_ids).
PIPELINE_UNTIL_MIGRATION: Migration = (
    20,
    "received messages: how long a node's pipeline holds them (messages.pipeline_until)",
    ["ALTER TABLE messages ADD COLUMN pipeline_until REAL"],
)

#: The node registry (engine/store/nodes.py): each node's heartbeat, configuration version and
#: listeners, for the console and /metrics.
NODES_MIGRATION: Migration = (
    21,
    "the node registry: each node's heartbeat, configuration version and listeners",
    [
        """
        CREATE TABLE IF NOT EXISTS nodes (
            node TEXT PRIMARY KEY,
            started_at REAL NOT NULL,
            last_seen REAL NOT NULL,
            heartbeat REAL NOT NULL,
            config_version TEXT NOT NULL,
            config_since REAL NOT NULL,
            listeners TEXT NOT NULL
        )
        """
    ],
)

#: What the console and the alert job keep across restarts and share between nodes (one
#: self-contained entry, renumbered with this one line when histories merge): console sessions
#: by the SHA-256 of their cookie (never the cookie), with their login and last-use times (the
#: idle and absolute timeouts are enforced from these); failed logins per (account, source
#: address) and until when that pair is locked out; and each alert rule's subjects: firing
#: since when, and when its fire and its clear were sent.
_V22_CONSOLE_STATE = [
    """
    CREATE TABLE IF NOT EXISTS console_sessions (
        token_hash TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        csrf TEXT NOT NULL,
        address TEXT NOT NULL,
        created_at REAL NOT NULL,
        seen_at REAL NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS idx_console_sessions_name ON console_sessions(name)",
    """
    CREATE TABLE IF NOT EXISTS login_failures (
        account TEXT NOT NULL,
        address TEXT NOT NULL,
        failures INTEGER NOT NULL,
        first_at REAL NOT NULL,
        locked_until REAL,
        PRIMARY KEY (account, address)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS alert_state (
        rule TEXT NOT NULL,
        subject TEXT NOT NULL,
        kind TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('firing', 'cleared')),
        summary TEXT NOT NULL,
        since REAL NOT NULL,
        changed_at REAL NOT NULL,
        fired_sent_at REAL,
        cleared_sent_at REAL,
        PRIMARY KEY (rule, subject)
    )
    """,
]
CONSOLE_STATE_MIGRATION: Migration = (
    22,
    "console sessions, login lockouts and alert state in the store (restarts, several nodes)",
    _V22_CONSOLE_STATE,
)

MIGRATIONS: list[Migration] = [
    (1, "base tables: messages, contents, outbox, dead_letters, audit", _V1_BASE_TABLES),
    (2, "business_keys and search indexes", _V2_BUSINESS_KEYS),
    (3, "backfill correlation_id with the message id", _v3_backfill_correlation),
    (4, "work items (the supply ledger's tables: its own history)", _V4_WORK_ITEMS),
    (5, "moved to the supply ledger's history", _MOVED_TO_A_DOMAIN),
    (6, "moved to procurement's history", _MOVED_TO_A_DOMAIN),
    (7, "moved to procurement's history", _MOVED_TO_A_DOMAIN),
    (8, "partial index of pending outbox rows for claims", _V8_PENDING_OUTBOX),
    (9, "indexes for work items and expired leases", _V9_HOT_LOOKUPS),
    (10, "schema histories of components with their own tables", _V10_COMPONENT_VERSIONS),
    (11, "retention: messages by status and last change, the audit's anchor", _V11_RETENTION),
    (12, "outbox rows remember the bulk call they went out in", _V12_BATCH_KEY),
    (13, "the credential each message came with (messages.origin)", _v13_message_origin),
    (14, "work items found by their message", _V14_WORK_ITEMS_BY_MESSAGE),
    CONFIG_VERSIONS_MIGRATION,
    MIGRATION_WORK_ITEMS_BY_OPENING,
    CONSOLE_MIGRATION,
    MIGRATION_WORK_ITEM_CHANNEL,
    LEASES_MIGRATION,
    PIPELINE_UNTIL_MIGRATION,
    NODES_MIGRATION,
    CONSOLE_STATE_MIGRATION,
]

LATEST_VERSION: int = MIGRATIONS[-1][0]


def current_version(conn: sqlite3.Connection, component: str | None = None) -> int:
    """Highest applied schema version (of the store, or of ``component``), 0 for none."""
    if component is None:
        if not Database(conn)["schema_version"].exists():
            return 0
        row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    else:
        if not Database(conn)["component_versions"].exists():
            return 0
        row = conn.execute(
            "SELECT MAX(version) FROM component_versions WHERE component = ?", (component,)
        ).fetchone()
    return int(row[0] or 0)


def apply_migrations(
    conn: sqlite3.Connection,
    migrations: Sequence[Migration] = MIGRATIONS,
    *,
    target: int | None = None,
    component: str | None = None,
) -> int:
    """Apply every migration above the current version up to ``target`` (default: all).

    Without ``component`` these are the store's own (``schema_version``); with it, the
    history of that component (a domain), recorded in ``component_versions``, which the store's
    own migrations must have created first.

    ``conn`` must be in autocommit mode (``isolation_level=None``). Each migration runs in
    its own ``BEGIN IMMEDIATE`` transaction; a failure rolls that one back and raises
    :class:`StoreError`. Returns the version reached.
    """
    _check_history(migrations)
    if component is None:
        conn.execute(_SCHEMA_VERSION_DDL)
    version = current_version(conn, component)
    latest = migrations[-1][0] if migrations else 0
    whose = f"{component}'s schema" if component else "database schema"
    if version > latest:
        raise StoreError(
            f"{whose} is version {version} but this Wharf knows versions up to "
            f"{latest}; upgrade Wharf before opening this store"
        )
    for number, description, step in migrations:
        if number <= version or (target is not None and number > target):
            continue
        _apply_one(conn, number, description, step, component)
        version = number
    return version


def _check_history(migrations: Sequence[Migration]) -> None:
    numbers = [m[0] for m in migrations]
    expected = list(range(1, len(numbers) + 1))
    if numbers != expected:
        raise StoreError(f"migration versions must be {expected} in order (got {numbers})")


def run_step(conn: Any, step: MigrationStep) -> None:
    """One migration's work: its callable, or each of its statements."""
    if callable(step):
        step(conn)
    else:
        for statement in step:
            conn.execute(statement)


def record_version(conn: Any, number: int, description: str, component: str | None) -> None:
    """Record an applied migration (``schema_version``, or ``component_versions``)."""
    if component is None:
        conn.execute(
            "INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)",
            (number, description, time.time()),
        )
    else:
        conn.execute(
            "INSERT INTO component_versions (component, version, description, applied_at) "
            "VALUES (?, ?, ?, ?)",
            (component, number, description, time.time()),
        )


def _apply_one(
    conn: sqlite3.Connection,
    number: int,
    description: str,
    step: MigrationStep,
    component: str | None = None,
) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        run_step(conn, step)
        record_version(conn, number, description, component)
    except sqlite3.Error as exc:
        conn.execute("ROLLBACK")
        whose = f"{component} " if component else ""
        raise StoreError(
            f"{whose}schema migration v{number} ({description}) failed: {exc}"
        ) from exc
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
