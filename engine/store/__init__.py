"""Durable message store (SQLite) and the writer thread that owns it."""

from engine.store.executor import StoreExecutor
from engine.store.sqlite import SqliteStore

__all__ = ["SqliteStore", "StoreExecutor"]
