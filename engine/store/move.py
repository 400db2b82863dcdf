"""Moving an installation's SQLite store into PostgreSQL (``wharf migrate-store``).

Every table of the SQLite file (the store's and the domains': messages, contents, deliveries,
dead letters, business keys, work items, the audit chain and its anchor, the ledger, procurement)
is copied into an empty PostgreSQL database whose schema is at the same versions, in one
transaction, parents before children (foreign keys), messages in their SQLite order; the
identity counters then continue after the copied ids. Afterwards each table's row count is
compared and the audit chain is verified on the PostgreSQL side, inside that transaction: a
move that does not verify is never committed.
"""

from __future__ import annotations

from typing import Any

from engine.errors import StoreError

#: SQLite's own tables and the histories (the target has its own, at the same versions).
_SKIPPED = {"schema_version", "component_versions", "sqlite_sequence", "sqlite_stat1"}
_BATCH = 500


#: The console's running counters: kept by the target's own triggers as the messages and
#: deliveries are copied (copying them too would count everything twice).
_DERIVED = frozenset({"message_counts", "delivery_counts", "message_buckets"})


def _tables(conn: Any) -> list[str]:
    """The SQLite file's tables, parents before the tables that reference them."""
    names = [
        row[0]
        for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        if row[0] not in _SKIPPED and not row[0].startswith("sqlite_")
    ]
    parents = {
        name: {row[2] for row in conn.execute(f"PRAGMA foreign_key_list({name})")} - {name}
        for name in names
    }
    ordered: list[str] = []
    while len(ordered) < len(names):
        ready = [n for n in names if n not in ordered and parents[n] <= set(ordered)]
        if not ready:
            raise StoreError(f"tables reference each other in a cycle: {sorted(parents)}")
        ordered += ready
    return ordered


def move_store(source: Any, target: Any, derived: frozenset[str] = frozenset()) -> dict[str, int]:
    """Copy ``source`` (an open SQLite store) into ``target`` (an open, empty PostgreSQL store
    at the same schema versions); returns the rows copied per table. ``derived``: the domains'
    tables the target's triggers fill from the rows copied (left out like the console's
    counters). StoreError (and nothing committed) when the target is not empty, the versions
    differ, or a check fails."""
    src = source._conn()
    if source.schema_version != target.schema_version:
        raise StoreError(
            f"the source store is at schema v{source.schema_version} and the target at "
            f"v{target.schema_version}; open both with this Wharf first (wharf migrate)"
        )
    copied: dict[str, int] = {}
    with target.transaction("migrate-store") as tx:
        dst = tx.connection
        if dst.execute("SELECT COUNT(*) FROM messages").fetchone()[0]:
            raise StoreError(f"the target {target.path} already holds messages; give an empty one")
        for table in _tables(src):
            if table in _DERIVED or table in derived:  # the target's triggers count them
                continue
            columns = [row[1] for row in src.execute(f"PRAGMA table_info({table})")]
            names = ", ".join(columns)
            marks = ", ".join("?" for _ in columns)
            insert = f"INSERT INTO {table} ({names}) VALUES ({marks})"
            cursor = src.execute(f"SELECT {names} FROM {table} ORDER BY rowid")
            copied[table] = 0
            while rows := cursor.fetchmany(_BATCH):
                dst.executemany(insert, [tuple(_value(v) for v in row) for row in rows])
                copied[table] += len(rows)
            if "id" in columns and table in target._identity:
                dst.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
                )
        for table, n in copied.items():
            there = dst.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            if there != n:
                raise StoreError(f"{table}: expected {n} rows in the target, found {there}")
        broken = target.audit_break()
        if broken is not None:
            raise StoreError(f"the audit chain does not verify in the target at row {broken}")
    return copied


def _value(value: Any) -> Any:
    return bytes(value) if isinstance(value, memoryview) else value
