"""Opening the store the way the runtime does: the store's own schema, then every registered
domain's schema history (the CLI and tests open it through here too)."""

from __future__ import annotations

from pathlib import Path

from engine.registry import REGISTRY, Registry
from engine.store import SqliteStore, make_store


def open_store(path: Path | str, registry: Registry = REGISTRY) -> SqliteStore:
    """An open store at ``path`` (a SQLite file, or a ``postgresql://`` URL) with the domains'
    tables in place."""
    store = make_store(path).open()
    try:
        migrate_domains(store, registry)
    except BaseException:
        store.close()
        raise
    return store


def migrate_domains(store: SqliteStore, registry: Registry = REGISTRY) -> None:
    """Apply each registered domain's missing migrations (runs on the caller's thread)."""
    for domain in registry.domains():
        store.migrate(domain.name, domain.migrations(store.dialect))
