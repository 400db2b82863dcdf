"""PostgreSQL message store: the SQLite store's API, for several Wharf nodes on one database.

:class:`PostgresStore` is :class:`~engine.store.sqlite.SqliteStore` with PostgreSQL under it:
the same methods and the same SQL (rewritten where the dialects differ by
:mod:`engine.store.pgconn`), its own schema history (:mod:`engine.store.pgschema`), and what
it takes for nodes to share the database:

- connections from a psycopg pool, one held per thread (the writer thread, readers), replaced
  when the server dropped it; a write while the server is down fails fast (:data:`CONNECT_TIMEOUT`)
  with :class:`~engine.errors.StoreError` (MLLP answers AR, HTTP 503: nothing was stored);
- group commit as in SQLite: a writer turn is one transaction, one WAL flush when durable
  (``synchronous_commit`` on), none forced when not (``SET LOCAL synchronous_commit = off``:
  a crash of the database server may lose the last moments of bookkeeping that recovery redoes
  with the same keys, never an ingest, an answer or the audit);
- claims with ``FOR UPDATE SKIP LOCKED`` (two nodes never claim the same row, and the ordering
  rule of ``order_by`` keys still sees rows another node is claiming as pending);
- advisory transaction locks (:meth:`PgTransaction.lock`) for what must happen one node at a
  time: storing one duplicate key, allocating one partner's X12 control numbers, periodic jobs;
- with :attr:`PostgresStore.shared` (the engine sets it), recovery that leaves other nodes'
  work alone: only leases that ran out are released, and a message still ``received`` is taken
  over only when nobody touched it for :data:`PIPELINE_LEASE` seconds (its node died before
  its pipeline ran).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from engine import model
from engine.errors import StoreConflict, StoreError
from engine.store.pgconn import PgConnection
from engine.store.pgschema import apply_migrations, current_version
from engine.store.sqlite import SqliteStore
from engine.store.transaction import SqliteTransaction

log = logging.getLogger("wharf.store")

#: Seconds a thread waits for a connection of the pool before it opens one of its own.
POOL_WAIT = 1.0
#: Seconds a connection attempt may take (the server down: the write fails after this).
CONNECT_TIMEOUT = 3.0
#: A message still ``received`` this long after its last change is another node's that died
#: before its pipeline ran: a sweep takes it over.
PIPELINE_LEASE = 30.0
#: Most connections the pool opens (threads of one node that touch the store).
POOL_MAX = 16
#: The console's append-only counters (pgschema migration 17) and the key of each.
COUNTER_KEYS = {
    "message_counts": ("channel", "status"),
    "delivery_counts": ("channel", "destination", "status"),
    "message_buckets": ("channel", "bucket"),
}
#: Seconds between two compactions of the counters (by one node of all).
COMPACT_INTERVAL = 60.0


def lock_key(name: str) -> int:
    """A signed 64-bit advisory lock key for ``name`` (the same on every node)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def redacted(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _release(pool: Any, conn: PgConnection) -> None:
    """A connection back to the pool it came from, or closed (one of our own, or no pool)."""
    try:
        if pool is not None and conn.pooled:
            pool.putconn(conn.raw)
        else:
            conn.raw.close()
    except Exception:  # pragma: no cover - closing is best effort
        pass


def _conflict(exc: BaseException) -> bool:
    """Whether ``exc`` came from a deadlock or a serialization failure (psycopg's error is the
    cause of the ``sqlite3`` one :mod:`engine.store.pgconn` raised, the cause of ``exc``)."""
    import psycopg

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, psycopg.errors.DeadlockDetected | psycopg.errors.SerializationFailure):
            return True
        seen = seen.__cause__
    return False


class _Return:
    """Lives in a thread's local storage: when the thread ends, its connection goes back."""


class PgTransaction(SqliteTransaction):
    """A store transaction on PostgreSQL (the same API; see :class:`SqliteTransaction`)."""

    dialect = "postgresql"
    claim_lock = " FOR UPDATE OF o SKIP LOCKED"

    def lock(self, *keys: str) -> None:
        """Advisory transaction locks on ``keys`` (sorted: two nodes never wait on each other
        in a cycle), held until this transaction commits or rolls back."""
        for key in sorted(set(keys)):
            self.connection.execute("SELECT pg_advisory_xact_lock(?)", (lock_key(key),))

    def try_lock(self, key: str) -> bool:
        """The advisory transaction lock on ``key`` when no other node holds it (no wait)."""
        row = self.connection.execute(
            "SELECT pg_try_advisory_xact_lock(?)", (lock_key(key),)
        ).fetchone()
        return bool(row and row[0])


class PostgresStore(SqliteStore):
    """The store of one or many Wharf nodes in one PostgreSQL database (module docstring)."""

    dialect = "postgresql"
    claim_lock = PgTransaction.claim_lock
    transaction_class = PgTransaction
    compact_interval = COMPACT_INTERVAL  #: the engine's job: :meth:`compact_counters`

    # The console's counters are append-only here (engine/store/pgschema.py, migration 17):
    # each is the sum of its rows.
    message_counters_sql = (
        "SELECT channel, status, SUM(n) FROM message_counts GROUP BY channel, status "
        "HAVING SUM(n) != 0"
    )
    delivery_counters_sql = (
        "SELECT channel, destination, status, SUM(n) FROM delivery_counts "
        "GROUP BY channel, destination, status HAVING SUM(n) != 0"
    )
    throughput_sql = (
        "SELECT channel, bucket, SUM(n) FROM message_buckets WHERE bucket >= ? AND bucket <= ? "
        "GROUP BY channel, bucket ORDER BY channel, bucket"
    )

    def __init__(self, url: str, *, background_checkpoints: bool = False, **_: Any) -> None:
        super().__init__(redacted(url))
        self.path = redacted(url)  # type: ignore[assignment]  # (a URL, not a file)
        self.url = url
        self._pool: Any = None
        self._identity: frozenset[str] = frozenset()
        self._adapters: list[PgConnection] = []
        self._ended: deque[PgConnection] = deque()  # connections of threads that ended
        #: Several nodes may share the database (the engine sets it): recovery and sweeps
        #: leave alone what another node may be doing. Off: one process, as with SQLite.
        self.shared = False

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> PostgresStore:
        """Open the pool and apply the missing migrations (under an advisory lock: nodes
        starting together migrate once)."""
        from psycopg_pool import ConnectionPool

        with self._lock:
            if self._opened:
                return self
            self._pool = ConnectionPool(
                self.url,
                min_size=1,
                max_size=POOL_MAX,
                kwargs={"autocommit": True, "connect_timeout": int(CONNECT_TIMEOUT)},
                timeout=CONNECT_TIMEOUT,
                open=False,
                name="wharf-store",
            )
            self._opened = True
        try:
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT * 3)
            self._with_raw(apply_migrations)
            self._refresh_identity()
        except Exception as exc:
            self.close()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        return self

    def close(self) -> None:
        with self._lock:
            adapters, self._adapters = self._adapters, []
            pool, self._pool = self._pool, None
            self._opened = False
            self._local = threading.local()
        for adapter in adapters:
            _release(pool, adapter)
        if pool is not None:
            pool.close()

    def _with_raw(self, work: Any, *args: Any, **kwargs: Any) -> Any:
        """``work(psycopg connection, ...)`` on a connection of the pool."""
        with self._pool.connection(timeout=CONNECT_TIMEOUT) as raw:
            return work(raw, *args, **kwargs)

    def _refresh_identity(self) -> None:
        """The tables whose ``id`` the database makes (an INSERT returns it: ``lastrowid``)."""
        rows = self._with_raw(
            lambda raw: raw.execute(
                "SELECT table_name FROM information_schema.columns WHERE column_name = 'id' "
                "AND is_identity = 'YES' AND table_schema = current_schema()"
            ).fetchall()
        )
        self._identity = frozenset(row[0] for row in rows)
        with self._lock:
            for adapter in self._adapters:
                adapter.identity = self._identity

    @property
    def schema_version(self) -> int:
        return int(self._with_raw(current_version))

    def migrate(self, component: str, migrations: Sequence[Any]) -> int:
        version = int(self._with_raw(apply_migrations, migrations, component=component))
        self._refresh_identity()
        return version

    def _conn(self) -> PgConnection:  # type: ignore[override]
        conn: PgConnection | None = getattr(self._local, "conn", None)
        if conn is not None and not conn.broken and not conn.raw.closed:
            return conn
        if conn is not None and getattr(self._local, "depth", 0):
            # Lost inside a transaction (a writer turn): the turn is gone with it. A new
            # connection now would run the turn's later writes as transactions of their own,
            # committed while the turn they belong to fails.
            raise StoreError(
                f"the connection to {self.path} was lost inside a transaction; "
                "nothing of it was committed"
            )
        if conn is not None:  # the server dropped it: the pool discards it
            self._drop(conn)
        while self._ended:
            self._give_back_conn(self._ended.popleft())
        with self._lock:
            if not self._opened or self._pool is None:
                raise StoreError(f"store {self.path} is not open; call open() first")
            pool = self._pool
        pooled = True
        try:
            raw = pool.getconn(timeout=POOL_WAIT)
        except Exception:
            # The pool has none ready: after an outage its background reconnects back off (up
            # to minutes); a connection of our own is there as soon as the server is.
            import psycopg

            pooled = False
            try:
                raw = psycopg.connect(
                    self.url, autocommit=True, connect_timeout=int(CONNECT_TIMEOUT)
                )
            except Exception as exc:
                raise StoreError(f"cannot reach store {self.path}: {exc}") from exc
        conn = PgConnection(raw, self._identity)
        conn.pooled = pooled
        with self._lock:
            self._adapters.append(conn)
        self._local.conn = conn
        self._local.depth = 0
        # A thread that ends gives its connection back (its thread-local goes, and this with it).
        self._local.returns = _Return()
        # (a finalizer may run on any thread, inside this store's lock: it only queues)
        weakref.finalize(self._local.returns, self._ended.append, conn)
        return conn

    def _drop(self, conn: PgConnection) -> None:
        self._local.conn = None
        self._give_back_conn(conn)

    def _give_back_conn(self, conn: PgConnection) -> None:
        with self._lock:
            if conn not in self._adapters:
                return  # given back already (dropped, or the store closed)
            self._adapters.remove(conn)
            pool = self._pool
        _release(pool, conn)

    # ------------------------------------------------------------------ dialect hooks

    def _sync_level(self, conn: Any, durable: bool, was: bool = False) -> None:
        """PostgreSQL sets it per transaction, just before COMMIT (:meth:`_before_commit`)."""

    def _before_commit(self, conn: Any, durable: bool) -> None:
        if not durable:
            conn.execute("SET LOCAL synchronous_commit = off")

    def _sync_wal(self, what: str) -> None:
        """Nothing to do: a durable savepoint made its turn commit with a WAL flush."""

    @staticmethod
    def _rollback(conn: Any) -> None:
        if conn.broken or conn.raw.closed:
            return  # the server dropped it: its transaction is gone with it
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except Exception:
            conn.broken = True

    @contextmanager
    def _write(self, what: str, durable: bool = True) -> Iterator[Any]:
        """The SQLite store's, and a connection the server dropped during a transaction
        fails that transaction even when nothing in it was written (a turn whose first write
        hit the dead connection is not an idle turn that succeeded); it is replaced once the
        outermost transaction ended, never inside one (:meth:`_conn`)."""
        outermost = not getattr(self._local, "depth", 0)
        try:
            with super()._write(what, durable) as conn:
                yield conn
        except StoreError as exc:
            if _conflict(exc):  # another node's transaction: the caller may try again
                raise StoreConflict(str(exc)) from exc
            raise
        finally:
            lost = getattr(self._local, "conn", None)
            if outermost and lost is not None and (lost.broken or lost.raw.closed):
                self._drop(lost)
            else:
                lost = None
        if lost is not None:
            raise StoreError(
                f"{what}: the connection to {self.path} was lost; nothing was committed"
            )

    # ------------------------------------------------------------------ several nodes

    def received_ids(self, limit: int, channel: str | None = None) -> list[str]:
        """Messages waiting for the pipeline that no node's pipeline holds, oldest first: a
        message a node stored is its pipeline's for :data:`PIPELINE_LEASE` seconds after its
        last change (past that, its node died before its pipeline ran), one a replay put back
        is nobody's (``pipeline_until`` 0), one a sweep took is that node's until its
        ``pipeline_until``. Each is leased to this node for :data:`PIPELINE_LEASE` seconds so
        that no other sweep takes it too."""
        if not self.shared:
            return super().received_ids(limit, channel)
        now = time.time()
        sql = (
            "UPDATE messages SET pipeline_until = ? WHERE id IN (SELECT id FROM messages "
            "WHERE status = ? AND COALESCE(pipeline_until, updated_at + ?) < ?"
        )
        params: list[Any] = [now + PIPELINE_LEASE, model.RECEIVED, PIPELINE_LEASE, now]
        if channel is not None:
            sql += " AND channel = ?"
            params.append(channel)
        sql += " ORDER BY received_at, rowid LIMIT ? FOR UPDATE SKIP LOCKED) RETURNING id"
        params.append(limit)
        with self._write("received_ids", durable=False) as conn:
            return [row[0] for row in conn.execute(sql, params).fetchall()]

    def recover(self, now: float) -> dict[str, int]:
        """At start: only leases that ran out go back to pending (the other nodes' claims are
        alive); counts of what waits."""
        if not self.shared:
            return super().recover(now)
        reset = self.release_expired(now)
        by_status = dict(
            self._query(
                "recover",
                "SELECT status, COUNT(*) FROM messages WHERE status IN (?, ?) GROUP BY status",
                (model.RECEIVED, model.QUEUED),
            )
        )
        return {
            "inflight_reset": reset,
            "received": by_status.get(model.RECEIVED, 0),
            "queued": by_status.get(model.QUEUED, 0),
        }

    # ------------------------------------------------------------------ console counters

    def compact_counters(self, tx: PgTransaction, now: float) -> int:
        """Fold the console's append-only counter rows into one row per key (a key whose
        rows sum to 0 goes); returns how many rows fewer. Run as a job of one node at a time
        (``tx`` holds its advisory lock): :data:`COUNTER_KEYS`.

        Exact under concurrent inserts: one statement per table deletes the rows of the keys
        it folds and inserts their sums, both from the statement's snapshot. A row another
        transaction adds meanwhile is not in that snapshot: not deleted, not summed, counted
        once by the readers (which sum every row) before and after the commit."""
        fewer = 0
        for table, keys in COUNTER_KEYS.items():
            cols = ", ".join(keys)
            gone, kept = tx.connection.execute(
                f"WITH gone AS (DELETE FROM {table} WHERE ({cols}) IN (SELECT {cols} "
                f"FROM {table} GROUP BY {cols} HAVING COUNT(*) > 1) RETURNING {cols}, n), "
                f"kept AS (INSERT INTO {table} ({cols}, n) SELECT {cols}, SUM(n) FROM gone "
                f"GROUP BY {cols} HAVING SUM(n) != 0 RETURNING 1) "
                "SELECT (SELECT COUNT(*) FROM gone), (SELECT COUNT(*) FROM kept)"
            ).fetchone()
            fewer += int(gone) - int(kept)
        return fewer

    # ------------------------------------------------------------------ maintenance

    def checkpoint(self, mode: str = "PASSIVE") -> tuple[int, int, int]:
        """PostgreSQL checkpoints on its own."""
        return (0, 0, 0)

    def optimize(self) -> None:
        try:
            self._conn().execute("ANALYZE")
        except Exception as exc:
            raise StoreError(f"optimize {self.path} failed: {exc}") from exc

    def _give_back(self, last: bool = False) -> None:
        """Autovacuum gives space back on PostgreSQL."""

    def reclaim(self, incremental: bool = False) -> None:
        try:
            self._conn().execute("VACUUM")
        except Exception as exc:
            raise StoreError(f"reclaim of {self.path} failed: {exc}") from exc

    def footprint(self) -> int:
        return int(self._query("footprint", "SELECT pg_database_size(current_database())")[0][0])

    def _plan(self, sql: str, params: Sequence[Any]) -> list[str]:
        return [row[0] for row in self._query("search_plan", f"EXPLAIN {sql}", params)]
