"""The store's schema history for PostgreSQL: the same versions as SQLite's
(:data:`engine.store.migrations.MIGRATIONS`), one for one.

Each entry ports the SQLite entry of the same number: plain table and index statements through
:func:`engine.sqldialect.ddl` (so the two schemas cannot drift), triggers and Python steps by
hand. Two things only PostgreSQL has: ``messages.rowid`` (an identity column: SQLite's implicit
``rowid``, the tie-break of "oldest first"), and the history applied under an advisory lock, so
that nodes starting together migrate once.

To port a new SQLite migration N: add ``(N, same description, step)`` to
:data:`PG_MIGRATIONS`; ``ddl_all(_VN_...)`` when it is plain DDL, a hand-written step when it
holds a trigger or a Python callable. tests/unit/test_store_postgres.py fails while the two
histories differ in their numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine.errors import StoreError
from engine.interfaces import Migration
from engine.sqldialect import ddl_all
from engine.store import migrations as sqlite_history
from engine.store.pgconn import PgConnection

#: The advisory lock key under which any node applies migrations ("wharf-mi").
MIGRATION_LOCK = 0x77686172662D6D69

_SCHEMA_VERSION_DDL = """
CREATE TABLE IF NOT EXISTS schema_version (
    version BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at DOUBLE PRECISION NOT NULL
)
"""

# Append-only audit: SQLite's two RAISE(ABORT) triggers as one function (SQLSTATE 23000, an
# integrity error in both dialects).
_V1_AUDIT_TRIGGERS = [
    """
    CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'audit is append-only: % refused', TG_OP
            USING ERRCODE = 'integrity_constraint_violation';
    END $$
    """,
    "CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit "
    "FOR EACH ROW EXECUTE FUNCTION audit_append_only()",
    "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit "
    "FOR EACH ROW EXECUTE FUNCTION audit_append_only()",
]
_V1 = [
    *ddl_all([s for s in sqlite_history._V1_BASE_TABLES if "TRIGGER" not in s]),
    "ALTER TABLE messages ADD COLUMN rowid BIGINT GENERATED ALWAYS AS IDENTITY",
    *_V1_AUDIT_TRIGGERS,
]

_V11_RETENTION = [
    *ddl_all([s for s in sqlite_history._V11_RETENTION if "TRIGGER" not in s]),
    """
    CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE'
           AND OLD.id <= COALESCE((SELECT through_id FROM audit_anchor WHERE id = 1), 0) THEN
            RETURN OLD;
        END IF;
        RAISE EXCEPTION 'audit is append-only: % refused', TG_OP
            USING ERRCODE = 'integrity_constraint_violation';
    END $$
    """,
    """
    CREATE FUNCTION audit_anchor_forward() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.through_id < OLD.through_id THEN
            RAISE EXCEPTION 'the audit anchor only moves forward'
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
        RETURN NEW;
    END $$
    """,
    "CREATE TRIGGER audit_anchor_forward BEFORE UPDATE ON audit_anchor "
    "FOR EACH ROW EXECUTE FUNCTION audit_anchor_forward()",
]

# 15: configuration versions (SQLite's _config_versions, a Python step there).
_V15_CONFIG_VERSIONS = [
    "ALTER TABLE messages ADD COLUMN IF NOT EXISTS config_version TEXT",
    "ALTER TABLE messages ADD COLUMN IF NOT EXISTS replay_config TEXT",
    "CREATE TABLE IF NOT EXISTS config_versions (version TEXT PRIMARY KEY, channel TEXT NOT NULL, "
    "git_commit TEXT, files TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE IF NOT EXISTS config_files (sha256 TEXT PRIMARY KEY, data BYTEA NOT NULL)",
]

# 17: the console's tables. Its running counters are append-only on PostgreSQL: a trigger adds
# a row (+1 or -1) per change and readers sum them (PostgresStore.message_counters...). An
# UPDATE of one counter row per (channel, status), as SQLite's triggers do, would make every
# node's claim wait for the others' open transactions on that row (SKIP LOCKED skips outbox rows,
# not the counter rows their triggers update).
_CONSOLE_TABLES = [
    "CREATE TABLE IF NOT EXISTS message_counts (channel TEXT NOT NULL, status TEXT NOT NULL, "
    "n BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS delivery_counts (channel TEXT NOT NULL, destination TEXT NOT NULL, "
    "status TEXT NOT NULL, n BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS message_buckets (channel TEXT NOT NULL, bucket BIGINT NOT NULL, "
    "n BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS idx_message_buckets ON message_buckets(bucket, channel)",
]
_CONSOLE_TRIGGERS = [
    """
    CREATE OR REPLACE FUNCTION console_count_message() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            INSERT INTO message_counts (channel, status, n) VALUES (OLD.channel, OLD.status, -1);
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            INSERT INTO message_counts (channel, status, n) VALUES (NEW.channel, NEW.status, 1);
        END IF;
        IF TG_OP = 'INSERT' THEN
            INSERT INTO message_buckets (channel, bucket, n)
                VALUES (NEW.channel, CAST(FLOOR(NEW.received_at / 300) AS BIGINT), 1);
        END IF;
        RETURN NULL;
    END $$
    """,
    "CREATE TRIGGER count_message_insert AFTER INSERT ON messages "
    "FOR EACH ROW EXECUTE FUNCTION console_count_message()",
    "CREATE TRIGGER count_message_status AFTER UPDATE OF status ON messages "
    "FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) "
    "EXECUTE FUNCTION console_count_message()",
    "CREATE TRIGGER count_message_delete AFTER DELETE ON messages "
    "FOR EACH ROW EXECUTE FUNCTION console_count_message()",
    """
    CREATE OR REPLACE FUNCTION console_count_delivery() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            INSERT INTO delivery_counts (channel, destination, status, n)
                VALUES (OLD.channel, OLD.destination, OLD.status, -1);
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            INSERT INTO delivery_counts (channel, destination, status, n)
                VALUES (NEW.channel, NEW.destination, NEW.status, 1);
        END IF;
        RETURN NULL;
    END $$
    """,
    "CREATE TRIGGER count_delivery_insert AFTER INSERT ON outbox "
    "FOR EACH ROW EXECUTE FUNCTION console_count_delivery()",
    "CREATE TRIGGER count_delivery_status AFTER UPDATE OF status ON outbox "
    "FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) "
    "EXECUTE FUNCTION console_count_delivery()",
    "CREATE TRIGGER count_delivery_delete AFTER DELETE ON outbox "
    "FOR EACH ROW EXECUTE FUNCTION console_count_delivery()",
]
_v17_console = [
    *ddl_all(
        [
            s
            for s in sqlite_history.CONSOLE_SCHEMA
            if "CREATE TRIGGER" not in s and "_counts" not in s and "message_buckets" not in s
        ]
    ),
    *_CONSOLE_TABLES,
    *_CONSOLE_TRIGGERS,
    "ALTER TABLE work_items ADD COLUMN IF NOT EXISTS assignee TEXT",
    "INSERT INTO message_counts (channel, status, n) "
    "SELECT channel, status, COUNT(*) FROM messages GROUP BY channel, status",
    "INSERT INTO delivery_counts (channel, destination, status, n) "
    "SELECT channel, destination, status, COUNT(*) FROM outbox "
    "GROUP BY channel, destination, status",
    "INSERT INTO message_buckets (channel, bucket, n) "
    f"SELECT channel, CAST(FLOOR(received_at / {sqlite_history.BUCKET_SECONDS}) AS BIGINT), "
    "COUNT(*) FROM messages GROUP BY 1, 2",
]

PG_MIGRATIONS: list[Migration] = [
    (1, sqlite_history.MIGRATIONS[0][1], _V1),
    (2, sqlite_history.MIGRATIONS[1][1], ddl_all(sqlite_history._V2_BUSINESS_KEYS)),
    (
        3,
        sqlite_history.MIGRATIONS[2][1],
        ["UPDATE messages SET correlation_id = id WHERE correlation_id IS NULL"],
    ),
    (4, sqlite_history.MIGRATIONS[3][1], ddl_all(sqlite_history._V4_WORK_ITEMS)),
    (5, sqlite_history.MIGRATIONS[4][1], []),
    (6, sqlite_history.MIGRATIONS[5][1], []),
    (7, sqlite_history.MIGRATIONS[6][1], []),
    (8, sqlite_history.MIGRATIONS[7][1], ddl_all(sqlite_history._V8_PENDING_OUTBOX)),
    (9, sqlite_history.MIGRATIONS[8][1], ddl_all(sqlite_history._V9_HOT_LOOKUPS)),
    (10, sqlite_history.MIGRATIONS[9][1], ddl_all(sqlite_history._V10_COMPONENT_VERSIONS)),
    (11, sqlite_history.MIGRATIONS[10][1], _V11_RETENTION),
    (12, sqlite_history.MIGRATIONS[11][1], ddl_all(sqlite_history._V12_BATCH_KEY)),
    (
        13,
        sqlite_history.MIGRATIONS[12][1],
        ["ALTER TABLE messages ADD COLUMN IF NOT EXISTS origin TEXT"],
    ),
    (14, sqlite_history.MIGRATIONS[13][1], ddl_all(sqlite_history._V14_WORK_ITEMS_BY_MESSAGE)),
    (15, sqlite_history.MIGRATIONS[14][1], _V15_CONFIG_VERSIONS),
    (
        16,
        sqlite_history.MIGRATIONS[15][1],
        ddl_all(sqlite_history.MIGRATION_WORK_ITEMS_BY_OPENING[2]),
    ),
    (17, sqlite_history.MIGRATIONS[16][1], _v17_console),
    (
        18,
        sqlite_history.MIGRATION_WORK_ITEM_CHANNEL[1],
        [
            "ALTER TABLE work_items ADD COLUMN IF NOT EXISTS channel TEXT",
            sqlite_history._WORK_ITEM_CHANNEL_BACKFILL,
            sqlite_history._WORK_ITEM_CHANNEL_INDEX,
        ],
    ),
    (
        sqlite_history.LEASES_MIGRATION[0],
        sqlite_history.LEASES_MIGRATION[1],
        ddl_all(sqlite_history._V19_LEASES_AND_UPLOADS),
    ),
    (
        sqlite_history.PIPELINE_UNTIL_MIGRATION[0],
        sqlite_history.PIPELINE_UNTIL_MIGRATION[1],
        ddl_all(sqlite_history.PIPELINE_UNTIL_MIGRATION[2]),
    ),
    (
        sqlite_history.NODES_MIGRATION[0],
        sqlite_history.NODES_MIGRATION[1],
        ddl_all(sqlite_history.NODES_MIGRATION[2]),
    ),
    (
        sqlite_history.CONSOLE_STATE_MIGRATION[0],
        sqlite_history.CONSOLE_STATE_MIGRATION[1],
        ddl_all(sqlite_history.CONSOLE_STATE_MIGRATION[2]),
    ),
]


def current_version(conn: Any, component: str | None = None) -> int:
    """Highest applied version (of the store, or of ``component``), 0 for none. ``conn``: a
    psycopg connection."""
    table = "schema_version" if component is None else "component_versions"
    exists = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0]
    if exists is None:
        return 0
    if component is None:
        row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    else:
        row = conn.execute(
            "SELECT MAX(version) FROM component_versions WHERE component = %s", (component,)
        ).fetchone()
    return int(row[0] or 0)


def apply_migrations(
    conn: Any, migrations: Sequence[Migration] = PG_MIGRATIONS, *, component: str | None = None
) -> int:
    """Apply the missing migrations (the store's, or ``component``'s), each in a transaction
    of its own, under :data:`MIGRATION_LOCK` (several nodes starting at once: one migrates, the
    others then find the work done). ``conn``: a psycopg connection in autocommit mode. Returns
    the version reached."""
    sqlite_history._check_history(migrations)
    import psycopg

    whose = f"{component}'s schema" if component else "database schema"
    conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        if component is None:
            conn.execute(_SCHEMA_VERSION_DDL)
        version = current_version(conn, component)
        latest = migrations[-1][0] if migrations else 0
        if version > latest:
            raise StoreError(
                f"{whose} is version {version} but this Wharf knows versions up to "
                f"{latest}; upgrade Wharf before opening this store"
            )
        for number, description, step in migrations:
            if number <= version:
                continue
            try:
                with conn.transaction():
                    sqlite_history.run_step(conn, step)
                    sqlite_history.record_version(
                        PgConnection(conn), number, description, component
                    )
            except psycopg.Error as exc:
                who = f"{component} " if component else ""
                raise StoreError(
                    f"{who}schema migration v{number} ({description}) failed on PostgreSQL: {exc}"
                ) from exc
            version = number
        return version
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
