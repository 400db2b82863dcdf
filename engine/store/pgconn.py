"""The store's SQL over a PostgreSQL connection: the small dialect layer.

The store, its transactions and the domains' repositories write one SQL (SQLite's, where the
two agree) against the ``sqlite3`` connection surface: ``execute(sql, params)`` with ``?``
placeholders, ``executemany``, a cursor with ``fetchone``/``fetchall``/``rowcount``/
``lastrowid``, ``in_transaction``, ``total_changes``, ``sqlite3`` exceptions. :class:`PgConnection`
gives that surface over a psycopg 3 connection in autocommit mode (transactions are explicit,
as in SQLite), rewriting each statement once (cached) where the dialects differ:

- ``?`` → ``%s`` and ``:name`` → ``%(name)s`` (a literal ``%`` doubled);
- ``INSERT OR IGNORE INTO t ...`` → ``INSERT INTO t ... ON CONFLICT DO NOTHING``;
- ``INDEXED BY index`` (a SQLite planner hint) dropped;
- ``printf('%09d', x)`` → ``lpad(CAST(x AS TEXT), 9, '0')``;
- ``BEGIN IMMEDIATE`` → ``BEGIN``;
- an ``INSERT`` into a table with an identity ``id`` gets ``RETURNING id`` (``lastrowid``).

psycopg errors come out as the ``sqlite3`` exception of the same kind (``IntegrityError``,
``OperationalError``, else ``DatabaseError``), the psycopg one as ``__cause__``, so the shared
code's error handling is one. A connection the server dropped is marked :attr:`broken`; the
store replaces it.

Schemas are not translated: PostgreSQL has its own migrations (:mod:`engine.store.pgschema`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import psycopg

from engine.sqldialect import translate


def _sqlite_error(exc: psycopg.Error) -> sqlite3.Error:
    kind: type[sqlite3.Error]
    if isinstance(exc, psycopg.errors.IntegrityError):
        kind = sqlite3.IntegrityError
    elif isinstance(exc, psycopg.OperationalError):
        kind = sqlite3.OperationalError
    else:
        kind = sqlite3.DatabaseError
    error = kind(f"{type(exc).__name__}: {str(exc).strip()}")
    error.__cause__ = exc
    return error


class PgCursor:
    """A psycopg cursor seen as a ``sqlite3`` cursor (``lastrowid`` from ``RETURNING id``)."""

    def __init__(self, cursor: psycopg.Cursor, returning: bool) -> None:
        self._cursor = cursor
        self.lastrowid: int | None = None
        self.rowcount = cursor.rowcount
        if returning:
            row = cursor.fetchone() if cursor.rowcount else None
            self.lastrowid = None if row is None else int(row[0])

    @property
    def description(self) -> list[tuple[Any, ...]] | None:
        """The result's columns as ``sqlite3`` gives them (name first), or None."""
        found = self._cursor.description
        return None if found is None else [(c.name, *[None] * 6) for c in found]

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._cursor.fetchone() if self._cursor.description else None

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._cursor.fetchall() if self._cursor.description else []

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.fetchall())


class PgConnection:
    """The ``sqlite3`` connection surface over one psycopg connection (module docstring)."""

    def __init__(self, conn: psycopg.Connection, identity: frozenset[str] = frozenset()) -> None:
        self.raw = conn
        self.identity = identity
        self.total_changes = 0
        self.broken = False
        self.pooled = True  #: from the store's pool (else one of its own, closed when done)

    @property
    def in_transaction(self) -> bool:
        """In a transaction the server still holds (a connection lost holds none: its
        transaction is gone with it, nothing to roll back)."""
        status = self.raw.info.transaction_status
        return status not in (
            psycopg.pq.TransactionStatus.IDLE,
            psycopg.pq.TransactionStatus.UNKNOWN,
        )

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> PgCursor:
        named = isinstance(params, Mapping)
        statement, returning = translate(sql, named, self.identity)
        try:
            cursor = self.raw.cursor()  # (a closed connection fails here already)
            cursor.execute(statement, params if named else tuple(params))  # type: ignore[arg-type]
        except psycopg.Error as exc:
            self._check(exc)
            raise _sqlite_error(exc) from exc
        if cursor.rowcount > 0 and not statement.lstrip()[:6].upper() == "SELECT":
            self.total_changes += cursor.rowcount
        return PgCursor(cursor, returning)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> PgCursor:
        statement, _ = translate(sql, False, frozenset())
        rows = [tuple(r) for r in rows]
        try:
            cursor = self.raw.cursor()
        except psycopg.Error as exc:
            self._check(exc)
            raise _sqlite_error(exc) from exc
        if rows:
            try:
                cursor.executemany(statement, rows)
            except psycopg.Error as exc:
                self._check(exc)
                raise _sqlite_error(exc) from exc
            if cursor.rowcount > 0:
                self.total_changes += cursor.rowcount
        return PgCursor(cursor, False)

    def _check(self, exc: psycopg.Error) -> None:
        if self.raw.closed or self.raw.broken:
            self.broken = True

    def close(self) -> None:
        self.raw.close()
