"""Durable message store (SQLite, or PostgreSQL for several nodes) and the writer thread that
owns it.

The two names load on first use, so that a reader of the store (``wharf messages``) does not
import the writer thread's Twisted machinery.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.store.executor import StoreExecutor
    from engine.store.sqlite import SqliteStore

__all__ = ["SqliteStore", "StoreExecutor", "is_url", "make_store"]


def is_url(location: str | Path) -> bool:
    """True when a store location names a PostgreSQL database rather than a SQLite file."""
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


def make_store(location: str | Path, **kwargs: Any) -> SqliteStore:
    """The store at ``location`` (not opened): a :class:`~engine.store.postgres.PostgresStore`
    for a ``postgresql://`` URL, else a :class:`SqliteStore` file; ``kwargs`` go to SQLite's."""
    if is_url(location):
        from engine.store.postgres import PostgresStore

        return PostgresStore(str(location))
    from engine.store.sqlite import SqliteStore

    return SqliteStore(location, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "SqliteStore":
        from engine.store.sqlite import SqliteStore

        return SqliteStore
    if name == "StoreExecutor":
        from engine.store.executor import StoreExecutor

        return StoreExecutor
    raise AttributeError(f"module 'engine.store' has no attribute {name!r}")
