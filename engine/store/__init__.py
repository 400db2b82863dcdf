"""Durable message store (SQLite) and the writer thread that owns it.

The two names load on first use, so that a reader of the store (``wharf messages``) does not
import the writer thread's Twisted machinery.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.store.executor import StoreExecutor
    from engine.store.sqlite import SqliteStore

__all__ = ["SqliteStore", "StoreExecutor"]


def __getattr__(name: str) -> Any:
    if name == "SqliteStore":
        from engine.store.sqlite import SqliteStore

        return SqliteStore
    if name == "StoreExecutor":
        from engine.store.executor import StoreExecutor

        return StoreExecutor
    raise AttributeError(f"module 'engine.store' has no attribute {name!r}")
