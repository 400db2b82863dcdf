"""SQLite message store: messages, contents, outbox, dead letters, business keys, audit.

Synchronous and thread-safe: each thread gets its own ``sqlite3`` connection (autocommit mode,
explicit ``BEGIN IMMEDIATE`` for every write). In production one thread (the
:class:`~engine.store.executor.StoreExecutor`) does all writes; readers such as the CLI may
use other threads. Every ``sqlite3.Error`` surfaces as :class:`~engine.errors.StoreError`.

Writes go through :meth:`SqliteStore.transaction`, which hands out the public write API
(:class:`~engine.store.transaction.SqliteTransaction`); the methods below that write are that
API in a transaction of their own. The store knows no business domain: a domain keeps its own
tables (its migrations: :meth:`SqliteStore.migrate`) and books inside a transaction the runtime
opened.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engine import model
from engine.errors import StoreError
from engine.model import Delivery, Inbound, IngestResult, MessageRow, Outbound
from engine.store import nodes as node_registry
from engine.store import versions as config_versions
from engine.store.console import ConsoleStore
from engine.store.console_state import ConsoleStateStore
from engine.store.ingest import MESSAGE_COLUMNS as _MESSAGE_COLUMNS
from engine.store.ingest import ingest_rows
from engine.store.leases import LeaseStore
from engine.store.migrations import apply_migrations, current_version
from engine.store.transaction import (
    DELIVERY_COLUMNS,
    GENESIS_HASH,
    SqliteTransaction,
    audit_hash,
    delivery_of,
    placeholders,
)

_DELIVERY_COLUMNS = DELIVERY_COLUMNS
_FAILED = (model.DEAD, model.QUARANTINED)
_OPEN = (model.PENDING, model.INFLIGHT)
_placeholders = placeholders


def _yield_to_writers(held: float) -> None:
    """Between two prune batches, leave the write lock free about as long as a batch held it
    (at most 50 ms): SQLite's lock is not fair, and a writer waiting in its busy handler only
    looks again after a growing sleep, so a prune that took the lock back at once would starve
    the engine's ingests."""
    time.sleep(min(max(held, 0.001), 0.05))


#: The most rows one prune transaction deletes.
PRUNE_BATCH = 500
#: How long a prune transaction should hold the write lock (seconds): the engine's ingests wait
#: about this long at most. Batches are sized to it as the prune goes (:class:`PruneBatches`).
PRUNE_HOLD = 0.002
#: The first batch, before the prune has timed one.
PRUNE_FIRST = 50
#: The fewest rows a batch deletes, however slow (a prune always gets somewhere).
PRUNE_LEAST = 8
#: Rows deleted between two give-backs (:meth:`SqliteStore._give_back`), and the pages each
#: incremental vacuum hands back: a message frees about a fifth of a 4 KiB page, so 512 pages
#: per 1,000 messages keep up, and one such vacuum holds the lock about as long as a batch.
PRUNE_GIVE_BACK = 1000
PRUNE_VACUUM_PAGES = 512


class PruneBatches:
    """The sizes of a prune's batches, from how long each held the write lock.

    While the engine writes between batches a batch's time is mostly fixed (about 1.7 ms on
    bench/prune.py's 2 cores whether it deletes 8 rows or 100, against 2 ms for 500 rows with
    the engine idle: the prune, the engine's threads and their sender share the CPUs; a
    memory-mapped store did not shorten it), grows slowly with its rows and is noisy (a
    checkpoint's fsync, a core taken by another thread). Scaling each batch by its own time
    would chase the noise down to the smallest size, so the sizes follow a smoothed
    time: they grow by an eighth while it is under ``hold``, shrink by a quarter while it is
    over 1.5 x ``hold`` and stay between; always within PRUNE_LEAST..``most``."""

    def __init__(self, hold: float = PRUNE_HOLD, most: int = PRUNE_BATCH) -> None:
        self.hold = hold
        self.most = most
        self.least = min(PRUNE_LEAST, most)
        self.size = min(PRUNE_FIRST, most)
        self.smoothed: float | None = None

    def after(self, held: float) -> int:
        """The next batch's size after the last one (of :attr:`size` rows) held ``held`` s."""
        if self.smoothed is None:
            self.smoothed = held
        else:
            self.smoothed = 0.7 * self.smoothed + 0.3 * held
        if self.smoothed < self.hold:
            self.size = min(self.most, self.size + max(4, self.size // 8))
        elif self.smoothed > 1.5 * self.hold:
            self.size = max(self.least, self.size * 3 // 4)
        return self.size


def _private_file(path: Path) -> None:
    """``path`` exists, mode 0600, in folders created 0700 (missing ones only); the SQLite
    companions ``-wal``, ``-shm`` and ``-journal`` that exist are tightened to 0600 too."""
    missing = []
    folder = path.parent
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            pass
        os.chmod(d, 0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o777 != 0o600:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm", "-journal"):
        other = path.with_name(path.name + suffix)
        try:
            if other.stat().st_mode & 0o777 != 0o600:
                os.chmod(other, 0o600)
        except FileNotFoundError:
            pass


#: Page cache per connection (KiB). SQLite's default (2 MiB) holds the hot end of the indexes of
#: a few ten thousand messages; past that every insert and lookup reads pages back from the
#: OS (bench/store_growth.py). 64 MiB keeps the hot pages of a million-message store.
CACHE_KIB = 64 * 1024
#: Rows sampled per index by ANALYZE: enough for the planner, and milliseconds on a
#: million-message store.
ANALYSIS_LIMIT = 1000
#: Seconds between background checkpoints (``background_checkpoints``).
CHECKPOINT_INTERVAL = 0.25
#: With background checkpoints, a committing thread still checkpoints when the WAL passes this
#: many pages (64 MiB): the background thread fell behind or failed.
BACKSTOP_PAGES = 16384


log = logging.getLogger("wharf.store")


class SqliteStore(ConsoleStore, ConsoleStateStore, LeaseStore):
    """The durable store of one Wharf instance (one SQLite file, WAL mode); the admin
    console's reads and writes are in :class:`~engine.store.console.ConsoleStore`."""

    dialect = "sqlite"
    #: What a claim's SELECT ends with: SQLite's write lock already serialises claims.
    claim_lock = ""
    transaction_class = SqliteTransaction
    #: Several processes share the store (PostgreSQL only: see PostgresStore).
    shared = False

    def __init__(self, path: str | Path, *, background_checkpoints: bool = False) -> None:
        """``background_checkpoints``: a thread of the store copies the WAL back into the
        database (``wal_checkpoint(PASSIVE)``, :data:`CHECKPOINT_INTERVAL`) instead of the
        committing thread doing it every 1,000 pages; the running engine's store does this, so
        that its writer never waits for the database file's fsync (bench/store_growth.py)."""
        self.path = Path(path)
        self.background_checkpoints = background_checkpoints
        self.checkpoints = 0  #: background checkpoints run
        self.commits = 0  #: write transactions committed (savepoints not counted)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._opened = False
        self._checkpointer: threading.Thread | None = None
        self._stop_checkpoints = threading.Event()

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> SqliteStore:
        """Create the directory, set WAL + ``synchronous=FULL`` and apply missing migrations.

        The store holds PHI: its directory is created owner-only (0700), the file and its
        ``-wal``/``-shm`` are owner-only (0600) whatever the umask (SQLite gives the WAL and
        SHM files the database file's mode), and existing ones open to others are tightened."""
        try:
            _private_file(self.path)
        except OSError as exc:
            raise StoreError(f"cannot create store {self.path}: {exc}") from exc
        with self._lock:
            self._opened = True
        conn = self._conn()
        try:
            # A new store gives freed pages back a little at a time (pruning never needs a
            # full VACUUM); an existing one keeps what it was created with.
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except sqlite3.Error as exc:
            self.close()
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        if str(mode).lower() != "wal":
            self.close()
            raise StoreError(f"store {self.path} needs journal_mode 'wal' (got {mode!r})")
        try:
            apply_migrations(conn)
        except BaseException:
            self.close()
            raise
        self.optimize()
        if self.background_checkpoints:
            self._stop_checkpoints = threading.Event()
            self._checkpointer = threading.Thread(
                target=self._checkpoint_loop,
                args=(self._stop_checkpoints,),
                name="wharf-store-checkpoint",
                daemon=True,
            )
            self._checkpointer.start()
        return self

    def checkpoint(self, mode: str = "PASSIVE") -> tuple[int, int, int]:
        """Copy the WAL's committed pages into the database file (``PRAGMA wal_checkpoint``);
        returns SQLite's (busy, WAL frames, frames copied)."""
        if mode not in ("PASSIVE", "FULL", "RESTART", "TRUNCATE"):
            raise ValueError(f"mode must be PASSIVE, FULL, RESTART or TRUNCATE (got {mode!r})")
        try:
            busy, frames, copied = self._conn().execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"checkpoint of {self.path} failed: {exc}") from exc
        return int(busy), int(frames), int(copied)

    def _checkpoint_loop(self, stop: threading.Event) -> None:
        while not stop.wait(CHECKPOINT_INTERVAL):
            try:
                self.checkpoint()
                self.checkpoints += 1
            except StoreError as exc:  # the writer's backstop still checkpoints
                log.warning("background checkpoint failed: %s", exc)

    def optimize(self) -> None:
        """Refresh the query planner's statistics (``ANALYZE``, each index sampled, not
        scanned: ``analysis_limit``). Run at open and every hour by the engine (job:optimize):
        without statistics the planner guesses, and its guesses get worse as tables grow."""
        conn = self._conn()
        try:
            conn.execute(f"PRAGMA analysis_limit={ANALYSIS_LIMIT}")
            conn.execute("ANALYZE")
        except sqlite3.Error as exc:
            raise StoreError(f"optimize {self.path} failed: {exc}") from exc

    def close(self) -> None:
        """Close every connection opened by any thread. ``open()`` may be called again."""
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            self._stop_checkpoints.set()
            checkpointer.join()
        with self._lock:
            connections, self._connections = self._connections, []
            self._opened = False
            self._local = threading.local()
        for conn in connections:
            try:
                conn.close()
            except sqlite3.Error:  # pragma: no cover - closing is best effort
                pass

    def __enter__(self) -> SqliteStore:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        """Highest schema migration applied to this file."""
        return current_version(self._conn())

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        with self._lock:
            if not self._opened:
                raise StoreError(f"store {self.path} is not open; call open() first")
            try:
                conn = sqlite3.connect(
                    str(self.path), isolation_level=None, check_same_thread=False, timeout=10.0
                )
                conn.execute("PRAGMA busy_timeout=10000")
                conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
                if self.background_checkpoints:
                    conn.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA foreign_keys=ON")
                self._local.sync = "FULL"
            except sqlite3.Error as exc:
                raise StoreError(f"cannot open store {self.path}: {exc}") from exc
            self._connections.append(conn)
        self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self, what: str, durable: bool = True) -> Iterator[SqliteTransaction]:
        """One ``BEGIN IMMEDIATE`` transaction, handed out as the store's public write API;
        sqlite errors become StoreError naming ``what``.

        ``durable=False`` commits with ``synchronous=NORMAL``: in WAL mode that survives a crash
        of the process (kill -9) and is lost only with the machine's power, which is safe for
        work that recovery redoes with the same keys (pipeline results, delivery bookkeeping).
        Ingests, stored answers and the audit log stay ``synchronous=FULL``.
        """
        with self._write(what, durable) as conn:
            yield self.transaction_class(conn)

    @contextmanager
    def _write(self, what: str, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction on this thread's connection. Inside another one (a writer turn
        of the executor: :meth:`turn`) it is a SAVEPOINT: its failure undoes only its own
        writes, and it commits with the outer transaction."""
        conn = self._conn()
        depth = getattr(self._local, "depth", 0)
        if depth:
            with self._savepoint(conn, what, durable, depth):
                yield conn
            return
        self._sync_level(conn, durable)
        self._local.durable = durable
        self._local.sync_after = False
        try:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"{what}: cannot start a write transaction: {exc}") from exc
            self._local.depth = 1
            changes = conn.total_changes
            try:
                yield conn
            except sqlite3.Error as exc:
                self._rollback(conn)
                raise StoreError(f"{what} failed: {exc}") from exc
            except BaseException:
                self._rollback(conn)
                raise
            finally:
                self._local.depth = 0
            if conn.total_changes == changes:  # read only (an idle claim): nothing to commit
                self._rollback(conn)
                return
            try:
                self._before_commit(conn, durable or self._local.sync_after)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback(conn)
                raise StoreError(f"{what}: commit failed: {exc}") from exc
            self.commits += 1
            if self._local.sync_after:  # a durable write committed at synchronous=NORMAL
                self._sync_wal(what)
        finally:
            self._sync_level(conn, True, durable)

    def _sync_level(self, conn: sqlite3.Connection, durable: bool, was: bool = False) -> None:
        """(Dialect hook) Before a transaction: its commit's sync level (``synchronous=NORMAL``
        when not durable); after it (``was``: what it had), back to FULL. The connection's
        level is remembered: a transaction at the level the connection has runs no PRAGMA."""
        level = "FULL" if durable else "NORMAL"
        if getattr(self._local, "sync", None) != level:
            conn.execute(f"PRAGMA synchronous={level}")
            self._local.sync = level

    def _before_commit(self, conn: sqlite3.Connection, durable: bool) -> None:
        """(Dialect hook) Just before COMMIT; SQLite fixed the sync level at BEGIN."""

    def _sync_wal(self, what: str) -> None:
        """fsync the WAL: what a commit at ``synchronous=FULL`` does after writing its frames."""
        try:
            fd = os.open(self.path.with_name(self.path.name + "-wal"), os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StoreError(f"{what}: committed, but the WAL could not be synced: {exc}") from exc

    @contextmanager
    def _savepoint(
        self, conn: sqlite3.Connection, what: str, durable: bool, depth: int
    ) -> Iterator[None]:
        if durable and not self._local.durable:
            # The commit's sync level is fixed when the outer transaction begins (SQLite
            # refuses to change it inside one): the WAL is fsync'd after that commit instead.
            self._local.sync_after = True
        name = f"wharf_{depth}"
        try:
            conn.execute(f"SAVEPOINT {name}")
        except sqlite3.Error as exc:
            raise StoreError(f"{what}: cannot open a savepoint: {exc}") from exc
        self._local.depth = depth + 1
        try:
            yield
        except BaseException as exc:
            if conn.in_transaction:  # (SQLite may have rolled back everything itself)
                conn.execute(f"ROLLBACK TO {name}")
                conn.execute(f"RELEASE {name}")
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"{what} failed: {exc}") from exc
            raise
        else:
            conn.execute(f"RELEASE {name}")
        finally:
            self._local.depth = depth

    @contextmanager
    def savepoint(self, what: str) -> Iterator[None]:
        """Inside a transaction of this thread, a savepoint (undone alone if the body fails);
        outside one, a transaction of its own (not durable)."""
        with self._write(what, durable=False):
            yield

    @contextmanager
    def turn(self, durable: bool) -> Iterator[None]:
        """One transaction for several writers' work (the executor's writer turn): every
        :meth:`transaction` (and store write) opened inside is a savepoint of it, so a failing
        one undoes only its own writes, and all commit together: one commit, one fsync when
        ``durable``, for an ingest batch, pipeline results and delivery bookkeeping."""
        with self._write("writer turn", durable):
            yield

    @contextmanager
    def reading(self) -> Iterator[SqliteTransaction]:
        """This thread's connection for reads (a domain's queries, the CLI), no transaction
        opened; it has the same ``dialect``/``connection`` a domain's repository needs."""
        yield self.transaction_class(self._conn())

    # ------------------------------------------------------------------ configuration versions

    def record_config_versions(self, versions: Sequence[Any], now: float) -> int:
        """Keep configuration versions and their files (engine/store/versions.py)."""
        with self._write("record_config_versions", durable=False) as conn:
            return config_versions.record_versions(conn, versions, now)

    def config_version(self, message_id: str) -> dict[str, Any] | None:
        """The configuration version a message was produced by (None: not recorded)."""
        return config_versions.message_version(self._conn(), message_id)

    def config_files(self, version: str) -> dict[str, bytes] | None:
        """A recorded version's files by relative path (None: unknown version)."""
        return config_versions.version_files(self._conn(), version)

    def replay_pins(self, ids: Sequence[str]) -> dict[str, str]:
        """The configuration versions replays asked for, by message id."""
        return config_versions.replay_pins(self._conn(), ids)

    # ------------------------------------------------------------------ node registry

    def node_heartbeat(self, heartbeat: node_registry.Heartbeat) -> None:
        """Record one node's heartbeat (engine/store/nodes.py)."""
        with self._write(f"node_heartbeat({heartbeat.node})", durable=False) as conn:
            node_registry.beat(conn, heartbeat)

    def nodes(self) -> list[dict[str, Any]]:
        """Every node that ran on this store, with its last heartbeat (by name)."""
        try:
            return node_registry.nodes(self._conn())
        except sqlite3.Error as exc:
            raise StoreError(f"nodes failed: {exc}") from exc

    def migrate(self, component: str, migrations: Sequence[Any]) -> int:
        """Apply a component's (a domain's) own schema history; returns the version reached."""
        return apply_migrations(self._conn(), migrations, component=component)

    @staticmethod
    def _rollback(conn: sqlite3.Connection) -> None:
        if conn.in_transaction:
            conn.execute("ROLLBACK")

    def _query(self, what: str, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        conn = self._conn()
        try:
            cursor = conn.execute(sql, tuple(params))
            return cursor.fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"{what} failed: {exc}") from exc

    # ------------------------------------------------------------------ ingest

    def ingest_batch(self, items: list[Inbound], now: float) -> list[IngestResult]:
        """Store a batch of inbound messages in ONE transaction (one fsync for all).

        Duplicate detection (``dedup_key`` + ``dedup_window``) also sees earlier items of
        the same batch. Results are in the order of ``items``.
        """
        if not items:
            return []
        with self._write(f"ingest of {len(items)} message(s)") as conn:
            # Another node may be storing the same message: one at a time per duplicate key.
            self.transaction_class(conn).lock(
                *(
                    f"dedup:{i.channel}:{i.dedup_key}"
                    for i in items
                    if i.dedup_key and i.dedup_window > 0
                )
            )
            return ingest_rows(self.transaction_class(conn), items, now)

    def set_response(self, message_id: str, response: bytes, now: float | None = None) -> None:
        """Store (or replace) the response the source gave for this message (e.g. the ACK)."""
        with self.transaction(f"set_response({message_id})") as tx:
            if tx.message_channel(message_id) is None:
                raise StoreError(f"set_response: no message with id {message_id!r}")
            tx.put_content(message_id, "response", response, time.time() if now is None else now)

    # ------------------------------------------------------------------ reads

    def get_message(self, message_id: str) -> MessageRow | None:
        """The message row, or None when the id is unknown."""
        rows = self._query(
            "get_message", f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = ?", (message_id,)
        )
        return MessageRow(*rows[0]) if rows else None

    def get_content(self, message_id: str, stage: str) -> bytes | None:
        """Stored bytes of one stage (raw / transformed / response), or None."""
        if stage not in model.STAGES:
            raise ValueError(f"stage must be one of {model.STAGES} (got {stage!r})")
        rows = self._query(
            "get_content",
            "SELECT data FROM contents WHERE message_id = ? AND stage = ?",
            (message_id, stage),
        )
        return bytes(rows[0][0]) if rows else None

    def received_ids(self, limit: int, channel: str | None = None) -> list[str]:
        """Ids of messages waiting for the pipeline (status 'received'), oldest first."""
        sql = "SELECT id FROM messages WHERE status = ?"
        params: list[Any] = [model.RECEIVED]
        if channel is not None:
            sql += " AND channel = ?"
            params.append(channel)
        sql += " ORDER BY received_at, rowid LIMIT ?"
        params.append(limit)
        return [row[0] for row in self._query("received_ids", sql, params)]

    # ------------------------------------------------------------------ pipeline result

    def finish_processing(
        self,
        message_id: str,
        *,
        status: str,
        now: float,
        transformed: bytes | None = None,
        outbound: Sequence[Outbound] = (),
        business_keys: Iterable[tuple[str, str]] = (),
        error: str | None = None,
        error_location: str | None = None,
        work_item: tuple[str, str, str] | None = None,
        durable: bool = False,
    ) -> None:
        """Record a pipeline run in ONE transaction (:meth:`SqliteTransaction.finish`).

        ``durable``: commit with ``synchronous=FULL``.
        """
        with self.transaction(f"finish_processing({message_id})", durable=durable) as tx:
            tx.finish(
                message_id,
                status=status,
                now=now,
                transformed=transformed,
                outbound=outbound,
                business_keys=business_keys,
                error=error,
                error_location=error_location,
                work_item=work_item,
            )

    def record_response(self, delivery_id: int, response: bytes) -> None:
        """Keep a destination's answer to a failed attempt (its last one wins)."""
        with self._write(f"record_response({delivery_id})", durable=False) as conn:
            conn.execute("UPDATE outbox SET response = ? WHERE id = ?", (response, delivery_id))

    def release_expired(self, now: float) -> int:
        """Claimed deliveries whose lease ran out (their worker never reported) become pending
        again, due now; they keep their idempotency key. Returns how many."""
        with self._write("release_expired", durable=False) as conn:
            # 'inflight' written out: the partial index idx_outbox_inflight holds only those.
            assert model.INFLIGHT == "inflight"
            cur = conn.execute(
                "UPDATE outbox SET status = ?, next_attempt_at = ?, lease_until = NULL, "
                "updated_at = ? WHERE status = 'inflight' AND lease_until IS NOT NULL "
                "AND lease_until < ?",
                (model.PENDING, now, now, now),
            )
            return cur.rowcount

    def release_claims(self, ids: Sequence[int], now: float) -> int:
        """Claimed rows whose worker went away before it took them become pending again, due
        now (same idempotency key). Returns how many."""
        if not ids:
            return 0
        with self._write("release_claims", durable=False) as conn:
            return conn.execute(
                f"UPDATE outbox SET status = ?, next_attempt_at = ?, lease_until = NULL, "
                f"updated_at = ? WHERE status = ? AND id IN ({_placeholders(ids)})",
                (model.PENDING, now, now, model.INFLIGHT, *ids),
            ).rowcount

    def finish_many(self, results: Sequence[dict[str, Any]], now: float) -> None:
        """Several pipeline runs in ONE transaction; each dict holds finish_processing's
        keyword arguments plus ``message_id``. All or none are recorded; with a full sync when
        one of them asks for ``durable``."""
        durable = any(r.get("durable") for r in results)
        with self.transaction(f"finish_many({len(results)})", durable=durable) as tx:
            for result in results:
                tx.finish(now=now, **{k: v for k, v in result.items() if k != "durable"})

    # ------------------------------------------------------------------ deliveries

    def claim_deliveries(
        self,
        channel: str,
        destination: str,
        limit: int,
        now: float,
        lease: float,
        block_on_dead: bool = False,
        complete_batches: bool = False,
    ) -> list[Delivery]:
        """Claim up to ``limit`` due pending rows (oldest first) and mark them inflight.

        A row with an ``order_key`` is claimable only when no older row of the same channel,
        destination and order key is pending or inflight (or, with ``block_on_dead``, dead or
        quarantined): one message at a time per key, in order. With ``complete_batches``, the
        pending rows of every bulk call a claimed row went out in are claimed too (past
        ``limit``): such a call is always resent whole.
        """
        blocking = _OPEN + (_FAILED if block_on_dead else ())
        marks = _placeholders(blocking)
        # 'pending' is written out (not bound) so that SQLite can use the partial index
        # idx_outbox_pending, which holds only pending rows.
        assert model.PENDING == "pending"
        sql = (
            f"SELECT {_DELIVERY_COLUMNS} FROM outbox AS o INDEXED BY idx_outbox_pending "
            "WHERE o.channel = ? AND o.destination = ? AND o.status = 'pending' "
            "AND o.next_attempt_at <= ? AND (o.order_key IS NULL OR NOT EXISTS ("
            "  SELECT 1 FROM outbox AS p WHERE p.channel = o.channel "
            "  AND p.destination = o.destination AND p.order_key = o.order_key "
            f"  AND p.id < o.id AND p.status IN ({marks}))) "
            f"ORDER BY o.id LIMIT ?{self.claim_lock}"
        )
        params = (channel, destination, now, *blocking, limit)
        if not self._query("claim_deliveries", sql, params):
            return []  # nothing due: no write transaction (an idle worker costs no commit)
        with self._write(f"claim_deliveries({channel}/{destination})", durable=False) as conn:
            rows = conn.execute(sql, params).fetchall()
            keys = sorted({row[-1] for row in rows if row[-1] is not None})
            if complete_batches and keys:
                taken = {row[0] for row in rows}
                mates = conn.execute(
                    f"SELECT {_DELIVERY_COLUMNS} FROM outbox AS o INDEXED BY idx_outbox_pending "
                    "WHERE o.channel = ? AND o.destination = ? AND o.status = 'pending' "
                    f"AND o.batch_key IN ({_placeholders(keys)}) ORDER BY o.id{self.claim_lock}",
                    (channel, destination, *keys),
                ).fetchall()
                rows = sorted([*rows, *(m for m in mates if m[0] not in taken)])
            conn.executemany(
                "UPDATE outbox SET status = ?, lease_until = ?, updated_at = ? WHERE id = ?",
                [(model.INFLIGHT, now + lease, now, row[0]) for row in rows],
            )
        return [self._delivery(row) for row in rows]

    @staticmethod
    def _delivery(row: Sequence[Any]) -> Delivery:
        return delivery_of(row)

    def delivery_succeeded(self, delivery_id: int, response: bytes | None, now: float) -> None:
        """Mark an outbox row sent (keeping the destination's response) and roll up."""
        self.deliveries_succeeded([(delivery_id, response, now)])

    def deliveries_succeeded(self, done: Sequence[tuple[int, bytes | None, float]]) -> None:
        """:meth:`delivery_succeeded` for several rows in one transaction."""
        with self.transaction(f"deliveries_succeeded({len(done)})", durable=False) as tx:
            for delivery_id, response, now in done:
                tx.delivery_succeeded(delivery_id, response, now)

    def delivery_retry(
        self, delivery_id: int, error: str, next_attempt_at: float, now: float
    ) -> None:
        """Put an outbox row back to pending, due at ``next_attempt_at``."""
        with self.transaction(f"delivery_retry({delivery_id})", durable=False) as tx:
            tx.delivery_retry(delivery_id, error, next_attempt_at, now)

    def delivery_held(
        self, delivery_id: int, note: str, next_attempt_at: float, now: float
    ) -> None:
        """Put an outbox row back to pending, due at ``next_attempt_at``, the attempt not
        counted (a rate limit held it)."""
        with self.transaction(f"delivery_held({delivery_id})", durable=False) as tx:
            tx.delivery_held(delivery_id, note, next_attempt_at, now)

    def pin_batch(self, ids: Sequence[int], key: str, now: float) -> None:
        """Rows going out together in the bulk call ``key`` (see SqliteTransaction)."""
        with self.transaction(f"pin_batch({len(ids)})", durable=False) as tx:
            tx.pin_batch(ids, key, now)

    def settle_batch(self, settlements: Sequence[model.Settlement], now: float) -> None:
        """The outcomes of one bulk call's rows, in one transaction."""
        durable = any(s.kind in (model.SETTLE_DEAD, model.SETTLE_QUARANTINED) for s in settlements)
        with self.transaction(f"settle_batch({len(settlements)})", durable=durable) as tx:
            for settlement in settlements:
                tx.settle(settlement, now)

    def delivery_dead(self, delivery_id: int, reason: str, now: float) -> None:
        """Give up on an outbox row: status dead plus a dead letter of kind 'dead'."""
        self._fail_delivery(delivery_id, reason, now, model.DEAD, "dead")

    def delivery_quarantined(self, delivery_id: int, reason: str, now: float) -> None:
        """Park an ambiguous outbox row for a person: status quarantined, dead letter kind
        'quarantine'."""
        self._fail_delivery(delivery_id, reason, now, model.QUARANTINED, "quarantine")

    def _fail_delivery(
        self, delivery_id: int, reason: str, now: float, status: str, kind: str
    ) -> None:
        with self.transaction(f"delivery_{kind}({delivery_id})") as tx:
            tx.delivery_failed(delivery_id, reason, now, status=status, kind=kind)

    def next_due(self, channel: str, destination: str) -> float | None:
        """Earliest ``next_attempt_at`` of the destination's pending rows, None when idle."""
        rows = self._query(
            "next_due",
            "SELECT MIN(next_attempt_at) FROM outbox "
            "WHERE channel = ? AND destination = ? AND status = ?",
            (channel, destination, model.PENDING),
        )
        return rows[0][0]

    def recover(self, now: float) -> dict[str, int]:
        """After a crash: inflight rows become pending again, due now. Returns counts."""
        with self._write("recover") as conn:
            reset = conn.execute(
                "UPDATE outbox SET status = ?, next_attempt_at = ?, lease_until = NULL, "
                "updated_at = ? WHERE status = ?",
                (model.PENDING, now, now, model.INFLIGHT),
            ).rowcount
            by_status = dict(
                conn.execute(
                    "SELECT status, COUNT(*) FROM messages WHERE status IN (?, ?) GROUP BY status",
                    (model.RECEIVED, model.QUEUED),
                ).fetchall()
            )
        return {
            "inflight_reset": reset,
            "received": by_status.get(model.RECEIVED, 0),
            "queued": by_status.get(model.QUEUED, 0),
        }

    # ------------------------------------------------------------------ browsing

    def counts(self, channel: str | None = None) -> dict[str, Any]:
        """Messages and deliveries by status, plus the number of unreplayed dead letters."""
        where, params = ("WHERE channel = ?", (channel,)) if channel is not None else ("", ())
        messages = self._query(
            "counts", f"SELECT status, COUNT(*) FROM messages {where} GROUP BY status", params
        )
        deliveries = self._query(
            "counts", f"SELECT status, COUNT(*) FROM outbox {where} GROUP BY status", params
        )
        dead_where = f"{where} {'AND' if where else 'WHERE'} replayed_at IS NULL"
        dead = self._query("counts", f"SELECT COUNT(*) FROM dead_letters {dead_where}", params)
        return {
            "messages": dict(messages),
            "deliveries": dict(deliveries),
            "dead_letters": dead[0][0],
        }

    def queue_stats(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Per (channel, destination) with deliveries waiting (pending or inflight): how many
        and when the oldest was queued (``oldest_at``). Read from the partial indexes of
        pending and inflight rows, so it costs the queue's length, never the outbox's."""
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for status, index in (
            ("pending", "idx_outbox_pending"),
            ("inflight", "idx_outbox_inflight"),
        ):
            # INDEXED BY: the planner would rather scan the whole claim index (every row)
            rows = self._query(
                "queue_stats",
                f"SELECT channel, destination, COUNT(*), MIN(id) FROM outbox INDEXED BY {index} "
                f"WHERE status = '{status}' GROUP BY channel, destination",
            )
            for channel, destination, n, first in rows:
                entry = out.setdefault(
                    (channel, destination), {"pending": 0, "inflight": 0, "first": first}
                )
                entry[status] = int(n)
                entry["first"] = min(entry["first"], first)
        for entry in out.values():
            at = self._query(
                "queue_stats", "SELECT created_at FROM outbox WHERE id = ?", (entry.pop("first"),)
            )
            entry["oldest_at"] = float(at[0][0]) if at else None
        return out

    def work_item_stats(self) -> dict[str, dict[str, Any]]:
        """Open work items per kind: how many and when the oldest was opened (``oldest_at``),
        from the index of open items by kind (ids grow with time: the smallest is the
        oldest)."""
        rows = self._query(
            "work_item_stats",
            "SELECT kind, COUNT(*), MIN(id) FROM work_items WHERE status = 'open' GROUP BY kind",
        )
        out: dict[str, dict[str, Any]] = {}
        for kind, n, first in rows:
            at = self._query(
                "work_item_stats", "SELECT created_at FROM work_items WHERE id = ?", (first,)
            )
            out[kind] = {"open": int(n), "oldest_at": float(at[0][0]) if at else None}
        return out

    def judged_messages(
        self, since: float, until: float, within: float, limit: int
    ) -> list[tuple[float, str, bool]]:
        """Messages received in (since, until], oldest first (at most ``limit``; filtered and
        conflicting ones left out): when, their channel, and whether every delivery settled
        (status ``sent``) within ``within`` seconds of ingest. From the index of receipt
        times."""
        rows = self._query(
            "judged_messages",
            "SELECT received_at, channel, status, updated_at FROM messages "
            "WHERE received_at > ? AND received_at <= ? ORDER BY received_at LIMIT ?",
            (since, until, limit),
        )
        return [
            (float(at), channel, status == "sent" and updated - at <= within)
            for at, channel, status, updated in rows
            if status not in ("filtered", "conflict")
        ]

    def judged_work_items(
        self, since: float, until: float, within: float, limit: int
    ) -> list[tuple[float, str, bool]]:
        """Work items opened in (since, until], oldest first (at most ``limit``): when, their
        kind, and whether they were closed or resolved within ``within`` seconds. From the
        index of opening times (schema 15)."""
        rows = self._query(
            "judged_work_items",
            "SELECT created_at, kind, status, updated_at FROM work_items "
            "WHERE created_at > ? AND created_at <= ? ORDER BY created_at LIMIT ?",
            (since, until, limit),
        )
        return [
            (float(at), kind, status != "open" and updated - at <= within)
            for at, kind, status, updated in rows
        ]

    def message_by_dedup_key(self, channel: str, dedup_key: str) -> str | None:
        """The id of the newest message of ``channel`` with ``dedup_key`` (its index)."""
        rows = self._query(
            "message_by_dedup_key",
            "SELECT id FROM messages WHERE channel = ? AND dedup_key = ? "
            "ORDER BY received_at DESC LIMIT 1",
            (channel, dedup_key),
        )
        return rows[0][0] if rows else None

    def writable(self) -> bool:
        """Whether a write transaction can start now (it writes nothing): for /readyz."""
        try:
            with self._write("writable", durable=False):
                pass
        except StoreError:
            return False
        return True

    def deliveries_for(self, message_id: str) -> list[dict[str, Any]]:
        """Every outbox row of a message (oldest first) as plain dicts, for the message view."""
        columns = (
            "id, destination, idx, status, attempts, next_attempt_at, lease_until, last_error, "
            "idempotency_key, order_key, content_type, meta, payload, response, created_at, "
            "updated_at, batch_key"
        )
        rows = self._query(
            "deliveries_for",
            f"SELECT {columns} FROM outbox WHERE message_id = ? ORDER BY id",
            (message_id,),
        )
        names = [c.strip() for c in columns.split(",")]
        result = []
        for row in rows:
            item = dict(zip(names, row, strict=True))
            item["meta"] = json.loads(item["meta"])
            item["payload"] = bytes(item["payload"])
            item["response"] = None if item["response"] is None else bytes(item["response"])
            result.append(item)
        return result

    def search(
        self,
        *,
        channel: str | None = None,
        status: str | None = None,
        since: float | None = None,
        until: float | None = None,
        correlation_id: str | None = None,
        key: str | None = None,
        value: str | None = None,
        limit: int = 100,
        offset: int = 0,
        delivery_status: str | None = None,
    ) -> list[MessageRow]:
        """Messages matching every given filter, newest first.

        ``since`` is inclusive and ``until`` exclusive (``received_at``). ``key`` and ``value``
        search the business keys and must be given together. ``delivery_status`` keeps the
        messages that have a delivery in that status (``dead``: a dead letter).
        """
        sql, params = self._search_sql(
            channel,
            status,
            since,
            until,
            correlation_id,
            key,
            value,
            limit,
            offset,
            delivery_status,
        )
        return [MessageRow(*row) for row in self._query("search", sql, params)]

    def known(self, what: str) -> list[str]:
        """The distinct names the store holds of ``what``: ``channel`` (of messages),
        ``business_key`` (key names), ``destination`` (of deliveries), ``work_item_kind``; for
        a did-you-mean when a search names one that is not there (a full index scan: call it
        when a search came back empty, not before)."""
        sql = {
            "channel": "SELECT DISTINCT channel FROM messages",
            "business_key": "SELECT DISTINCT name FROM business_keys",
            "destination": "SELECT DISTINCT destination FROM outbox",
            "work_item_kind": "SELECT DISTINCT kind FROM work_items",
        }.get(what)
        if sql is None:
            raise ValueError(
                "'what' must be channel, business_key, destination or work_item_kind "
                f"(got {what!r})"
            )
        return sorted(row[0] for row in self._query(f"known({what})", sql))

    def business_keys(self, message_id: str) -> list[tuple[str, str]]:
        """The business keys of one message as (name, value), sorted."""
        rows = self._query(
            "business_keys",
            "SELECT name, value FROM business_keys WHERE message_id = ? ORDER BY name, value",
            (message_id,),
        )
        return [(row[0], row[1]) for row in rows]

    def content_sizes(self, message_id: str) -> dict[str, int]:
        """The stored content stages of one message and their sizes in bytes."""
        rows = self._query(
            "content_sizes",
            "SELECT stage, length(data) FROM contents WHERE message_id = ? ORDER BY created_at",
            (message_id,),
        )
        return {row[0]: int(row[1]) for row in rows}

    def search_plan(self, **filters: Any) -> list[str]:
        """``EXPLAIN QUERY PLAN`` lines of :meth:`search` for the same filters (diagnostics)."""
        args = {
            name: filters.pop(name, None)
            for name in ("channel", "status", "since", "until", "correlation_id", "key", "value")
        }
        limit, offset = filters.pop("limit", 100), filters.pop("offset", 0)
        if filters:
            raise TypeError(f"search_plan got unknown filters {sorted(filters)}")
        sql, params = self._search_sql(*args.values(), limit, offset)
        return self._plan(sql, params)

    def _plan(self, sql: str, params: Sequence[Any]) -> list[str]:
        """(Dialect hook) The query planner's lines for ``sql``."""
        rows = self._query("search_plan", f"EXPLAIN QUERY PLAN {sql}", params)
        return [row[-1] for row in rows]

    @staticmethod
    def _search_sql(
        channel: str | None,
        status: str | None,
        since: float | None,
        until: float | None,
        correlation_id: str | None,
        key: str | None,
        value: str | None,
        limit: int,
        offset: int,
        delivery_status: str | None = None,
    ) -> tuple[str, list[Any]]:
        if (key is None) != (value is None):
            raise ValueError(
                f"business key search needs both key and value (got key={key!r}, value={value!r})"
            )
        columns = ", ".join(f"m.{c.strip()}" for c in _MESSAGE_COLUMNS.split(","))
        sql = f"SELECT {columns} FROM messages AS m"
        clauses: list[str] = []
        params: list[Any] = []
        if key is not None:
            sql += " JOIN business_keys AS bk ON bk.message_id = m.id"
            clauses += ["bk.name = ?", "bk.value = ?"]
            params += [key, value]
        for clause, param in (
            ("m.channel = ?", channel),
            ("m.status = ?", status),
            ("m.correlation_id = ?", correlation_id),
            ("m.received_at >= ?", since),
            ("m.received_at < ?", until),
        ):
            if param is not None:
                clauses.append(clause)
                params.append(param)
        if delivery_status is not None:
            if delivery_status not in model.DELIVERY_STATUSES:
                raise ValueError(
                    f"delivery_status must be one of {model.DELIVERY_STATUSES} "
                    f"(got {delivery_status!r})"
                )
            clauses.append(
                "EXISTS (SELECT 1 FROM outbox AS o WHERE o.message_id = m.id AND o.status = ?)"
            )
            params.append(delivery_status)
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY m.received_at DESC, m.rowid DESC LIMIT ? OFFSET ?"
        params += [limit, offset]
        return sql, params

    # ------------------------------------------------------------------ replay

    def replay(
        self,
        message_id: str,
        *,
        destination: str | None = None,
        actor: str,
        now: float,
        original: bool = False,
    ) -> dict[str, Any]:
        """Requeue a message's dead / quarantined deliveries, or re-run a failed transform.

        ``original``: a re-run uses the configuration version the message was produced by
        (when it has one: ``configuration`` in the result says which was asked for);
        requeued deliveries are always the payloads as originally produced.

        With an explicit ``destination`` only that destination's rows are considered, and
        rows already sent are resent too (deliberate resend, same idempotency key). A message
        in 'error' without any outbox row (it failed before delivery) goes back to 'received'
        when ``destination`` is None. An audit row records the request.
        """
        statuses = _FAILED + ((model.DELIVERED,) if destination is not None else ())
        with self._write(f"replay({message_id})") as conn:
            message = conn.execute(
                "SELECT status FROM messages WHERE id = ?", (message_id,)
            ).fetchone()
            if message is None:
                raise StoreError(f"replay: no message with id {message_id!r}")
            ids = self._replayable_rows(conn, message_id, destination, statuses)
            reprocess = False
            if ids:
                self._requeue(conn, ids, now)
                self._set_status(conn, message_id, model.QUEUED, now)
            elif destination is None and message[0] == model.ERROR:
                has_rows = conn.execute(
                    "SELECT 1 FROM outbox WHERE message_id = ? LIMIT 1", (message_id,)
                ).fetchone()
                if has_rows is None:
                    self._set_status(conn, message_id, model.RECEIVED, now)
                    reprocess = True
            pinned = None
            if original and reprocess:
                pinned = config_versions.pin_replay(conn, message_id)
            configuration = f"original ({pinned})" if pinned else "current"
            if ids:  # deliveries go out again as they were produced
                configuration = "as produced"
            detail = {
                "destination": destination,
                "previous_status": message[0],
                "requeued": len(ids),
                "outbox_ids": ids,
                "reprocess": reprocess,
                "configuration": configuration,
            }
            self.transaction_class(conn).audit(actor, "replay", message_id, detail, now)
        result: dict[str, Any] = {"requeued": len(ids), "reprocess": reprocess}
        if original:
            result["configuration"] = configuration
        return result

    @staticmethod
    def _replayable_rows(
        conn: sqlite3.Connection,
        message_id: str,
        destination: str | None,
        statuses: Sequence[str],
    ) -> list[int]:
        sql = (
            f"SELECT id FROM outbox WHERE message_id = ? AND status IN ({_placeholders(statuses)})"
        )
        params: list[Any] = [message_id, *statuses]
        if destination is not None:
            sql += " AND destination = ?"
            params.append(destination)
        return [row[0] for row in conn.execute(sql + " ORDER BY id", params)]

    @staticmethod
    def _requeue(conn: sqlite3.Connection, ids: list[int], now: float) -> None:
        marks = _placeholders(ids)
        conn.execute(
            # A replayed row goes in a new call (a bulk call's key covers the rows it carried).
            f"UPDATE outbox SET status = ?, attempts = 0, next_attempt_at = ?, "
            f"lease_until = NULL, batch_key = NULL, updated_at = ? WHERE id IN ({marks})",
            (model.PENDING, now, now, *ids),
        )
        conn.execute(
            f"UPDATE dead_letters SET replayed_at = ? "
            f"WHERE outbox_id IN ({marks}) AND replayed_at IS NULL",
            (now, *ids),
        )

    @staticmethod
    def _set_status(conn: sqlite3.Connection, message_id: str, status: str, now: float) -> None:
        """A message's status set by a person (a replay, an edit and replay). One put back
        to ``received`` this way is no node's pipeline's (``pipeline_until`` 0): any node's
        next sweep takes it (PostgreSQL; SQLite's sweep takes every ``received`` message)."""
        conn.execute(
            "UPDATE messages SET status = ?, error = NULL, error_location = NULL, "
            "updated_at = ?, pipeline_until = 0 WHERE id = ?",
            (status, now, message_id),
        )

    def replay_channel(
        self,
        channel: str,
        *,
        actor: str,
        now: float,
        destination: str | None = None,
        statuses: Sequence[str] = (model.ERROR,),
    ) -> list[str]:
        """Replay every message of ``channel`` whose status is in ``statuses`` (oldest first).

        Returns the ids for which something was requeued or sent back to the pipeline.
        """
        unknown = [s for s in statuses if s not in model.MESSAGE_STATUSES]
        if unknown:
            raise ValueError(f"statuses must be among {model.MESSAGE_STATUSES} (got {unknown})")
        rows = self._query(
            "replay_channel",
            f"SELECT id FROM messages WHERE channel = ? AND status IN ({_placeholders(statuses)})"
            " ORDER BY received_at, rowid",
            (channel, *statuses),
        )
        replayed = []
        for (message_id,) in rows:
            outcome = self.replay(message_id, destination=destination, actor=actor, now=now)
            if outcome["requeued"] or outcome["reprocess"]:
                replayed.append(message_id)
        return replayed

    # ------------------------------------------------------------------ audit

    def audit(
        self, actor: str, action: str, target: str, detail: dict[str, Any], now: float
    ) -> int:
        """Append one hash-chained audit row; returns its id."""
        with self.transaction(f"audit({action})") as tx:
            return tx.audit(actor, action, target, detail, now)

    def open_work_items(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Work items still open for a person (oldest first), of one kind or all."""
        sql = (
            "SELECT id, kind, subject, detail, message_id, created_at FROM work_items "
            "WHERE status = 'open'"
        )
        args: tuple[str, ...] = ()
        if kind:
            sql += " AND kind = ?"
            args = (kind,)
        cols = ("id", "kind", "subject", "detail", "message_id", "created_at")
        rows = self._query("open_work_items", sql + " ORDER BY id", args)
        return [dict(zip(cols, row, strict=True)) for row in rows]

    _WORK_ITEM_COLUMNS = (
        "id",
        "kind",
        "subject",
        "detail",
        "status",
        "message_id",
        "correlation_id",
        "created_at",
        "updated_at",
        "channel",
    )

    def work_items(
        self, kind: str | None = None, status: str | None = "open", limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Work items of one kind or all, in one status (``None``: any), oldest first."""
        sql = f"SELECT {', '.join(self._WORK_ITEM_COLUMNS)} FROM work_items"
        clauses, args = [], []
        for clause, arg in (("kind = ?", kind), ("status = ?", status)):
            if arg is not None:
                clauses.append(clause)
                args.append(arg)
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        rows = self._query("work_items", sql + " ORDER BY id LIMIT ?", (*args, limit))
        return [dict(zip(self._WORK_ITEM_COLUMNS, row, strict=True)) for row in rows]

    def work_item(self, item_id: int) -> dict[str, Any] | None:
        """One work item by id, or None."""
        rows = self._query(
            "work_item",
            f"SELECT {', '.join(self._WORK_ITEM_COLUMNS)} FROM work_items WHERE id = ?",
            (item_id,),
        )
        return dict(zip(self._WORK_ITEM_COLUMNS, rows[0], strict=True)) if rows else None

    def close_work_item(self, item_id: int, *, actor: str, note: str, now: float) -> dict[str, Any]:
        """A person closes an open work item, saying why; audited in the same commit. Returns
        the item as it was; StoreError when there is no such item or it is not open."""
        with self.transaction(f"close_work_item({item_id})") as tx:
            item = tx.close_work_item(item_id, now)
            tx.audit(
                actor,
                "work_item.close",
                str(item_id),
                {"kind": item["kind"], "subject": item["subject"], "note": note},
                now,
            )
        return item

    def audit_entries(self, limit: int = 100, action: str | None = None) -> list[dict[str, Any]]:
        """The newest audit rows first (of one action, or all), ``detail`` decoded."""
        where, args = ("WHERE action = ? ", (action,)) if action is not None else ("", ())
        rows = self._query(
            "audit_entries",
            "SELECT id, at, actor, action, target, detail, prev_hash, hash FROM audit "
            f"{where}ORDER BY id DESC LIMIT ?",
            (*args, limit),
        )
        names = ("id", "at", "actor", "action", "target", "detail", "prev_hash", "hash")
        entries = [dict(zip(names, row, strict=True)) for row in rows]
        for entry in entries:
            entry["detail"] = json.loads(entry["detail"])
        return entries

    def verify_audit(self) -> bool:
        """Recompute the whole hash chain; False when any row was changed, removed or moved."""
        return self.audit_break() is None

    def audit_count(self) -> int:
        """The number of audit rows."""
        return int(self._query("audit_count", "SELECT COUNT(*) FROM audit")[0][0])

    def audit_break(self) -> int | None:
        """The id of the first audit row whose hash chain does not hold (changed, removed or
        moved: the row after a removed one), or None when the whole chain holds."""
        prev_hash, expected_id = GENESIS_HASH, 1
        anchor = self._query("verify_audit", "SELECT through_id, hash FROM audit_anchor")
        if anchor:  # rows up to through_id were pruned: the chain goes on from their last hash
            expected_id, prev_hash = anchor[0][0] + 1, anchor[0][1]
        rows = self._query(
            "verify_audit",
            "SELECT id, at, actor, action, target, detail, prev_hash, hash FROM audit ORDER BY id",
        )
        if rows and rows[0][0] != expected_id:
            return int(rows[0][0])  # rows removed from the start, not by a prune
        for audit_id, at, actor, action, target, detail, stored_prev, stored_hash in rows:
            try:
                decoded = json.loads(detail)
            except ValueError:
                return int(audit_id)
            row = {
                "id": audit_id,
                "at": at,
                "actor": actor,
                "action": action,
                "target": target,
                "detail": decoded,
            }
            if stored_prev != prev_hash or audit_hash(prev_hash, row) != stored_hash:
                return int(audit_id)
            prev_hash = stored_hash
        return None

    # ------------------------------------------------------------------ housekeeping

    def prune(
        self,
        *,
        older_than: float,
        statuses: Sequence[str] = (model.SENT, model.FILTERED),
        now: float,
        batch: int = PRUNE_BATCH,
        hold: float | None = PRUNE_HOLD,
    ) -> int:
        """Delete finished messages not updated for ``older_than`` seconds, in short batches.

        Each batch is its own short transaction, so a running engine's writer gets in between
        (its ingests wait a batch at most, never the whole prune). The batches are sized as the
        prune goes so that each holds the write lock about ``hold`` seconds (at most ``batch``
        rows; ``hold=None``: ``batch`` rows each, whatever they take). The WAL is checkpointed and,
        in a store created with incremental auto-vacuum, freed pages go back to the file system
        as it goes. Nothing here runs a full VACUUM (see :meth:`reclaim`). Contents, outbox
        rows, business keys and dead letters go with their message (foreign keys ON DELETE
        CASCADE); work items, the audit and the domains' records have their own retention.
        Returns the number of messages.
        """
        bad = [s for s in statuses if s in model.NON_TERMINAL or s not in model.MESSAGE_STATUSES]
        if bad:
            terminal = [s for s in model.MESSAGE_STATUSES if s not in model.NON_TERMINAL]
            raise ValueError(f"prune statuses must be among {terminal} (got {bad})")
        if not statuses:
            return 0
        marks = _placeholders(statuses)

        def one(limit: int) -> tuple[int, float]:
            with self._write("prune", durable=False) as conn:
                began = time.monotonic()
                deleted = conn.execute(
                    f"DELETE FROM messages WHERE id IN (SELECT id FROM messages "
                    f"WHERE status IN ({marks}) AND updated_at < ? LIMIT ?)",
                    (*statuses, now - older_than, limit),
                ).rowcount
            return deleted, time.monotonic() - began

        return self._in_short_batches(one, batch, hold)

    def prune_work_items(
        self,
        *,
        older_than: float,
        now: float,
        batch: int = PRUNE_BATCH,
        hold: float | None = PRUNE_HOLD,
    ) -> int:
        """Delete work items a person closed (or that resolved) ``older_than`` seconds ago, in
        short batches as :meth:`prune` does; open ones are never deleted. Returns how many."""

        def one(limit: int) -> tuple[int, float]:
            with self._write("prune_work_items", durable=False) as conn:
                began = time.monotonic()
                deleted = conn.execute(
                    "DELETE FROM work_items WHERE id IN (SELECT id FROM work_items "
                    "WHERE status != 'open' AND updated_at < ? LIMIT ?)",
                    (now - older_than, limit),
                ).rowcount
            return deleted, time.monotonic() - began

        return self._in_short_batches(one, batch, hold)

    def prune_audit(self, *, older_than: float, now: float, actor: str) -> int:
        """Delete audit rows older than ``older_than`` seconds, keeping the chain verifiable:
        the last deleted row's id and hash become the anchor the chain starts from, and the
        prune itself is audited. Returns how many."""
        with self.transaction("prune_audit") as tx:
            conn = tx.connection
            last = conn.execute(
                "SELECT id, hash FROM audit WHERE at < ? ORDER BY id DESC LIMIT 1",
                (now - older_than,),
            ).fetchone()
            if last is None:
                return 0
            # the anchor first: the audit's trigger lets only rows up to it go
            conn.execute(
                "INSERT INTO audit_anchor (id, through_id, hash, pruned_at) VALUES (1, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET through_id = excluded.through_id, "
                "hash = excluded.hash, pruned_at = excluded.pruned_at",
                (last[0], last[1], now),
            )
            deleted = conn.execute("DELETE FROM audit WHERE id <= ?", (last[0],)).rowcount
            detail = {"through_id": last[0], "rows": deleted, "older_than": older_than}
            tx.audit(actor, "audit.prune", "audit", detail, now)
        return deleted

    def prune_records(
        self, run: Any, *, batch: int = PRUNE_BATCH, hold: float | None = PRUNE_HOLD
    ) -> int:
        """Run a domain's ``run(tx, limit) -> rows deleted`` in short transactions, sized as
        :meth:`prune`'s, until it deletes less than a batch (a domain's own retention). Returns
        how many."""

        def one(limit: int) -> tuple[int, float]:
            with self.transaction("prune_records", durable=False) as tx:
                began = time.monotonic()
                deleted = run(tx, limit)
            return deleted, time.monotonic() - began

        return self._in_short_batches(one, batch, hold)

    def _in_short_batches(
        self, one: Callable[[int], tuple[int, float]], batch: int, hold: float | None
    ) -> int:
        """Call ``one(limit) -> (rows deleted, seconds it held the write lock)`` until it deletes
        less than its limit, leaving the lock free between calls about as long as the last one
        held it; the limit follows :class:`PruneBatches` (fixed at ``batch`` when ``hold`` is
        None). Freed space is given back every PRUNE_GIVE_BACK rows and at the end. Returns the
        rows deleted."""
        if batch < 1:
            raise ValueError(f"'batch' must be at least 1 (got {batch})")
        sizes = None if hold is None else PruneBatches(hold, batch)
        size = batch if sizes is None else sizes.size
        total = since_give_back = 0
        while True:
            deleted, held = one(size)
            total += deleted
            since_give_back += deleted
            last = deleted < size
            if last or since_give_back >= PRUNE_GIVE_BACK:
                self._give_back(last=last)
                since_give_back = 0
            if last:
                return total
            if sizes is not None:
                size = sizes.after(held)
            _yield_to_writers(held)

    def _give_back(self, last: bool = False) -> None:
        """After a prune batch: hand freed pages back (incremental auto-vacuum stores) and keep
        the WAL from growing (a passive checkpoint never waits for readers); after the last
        one, the WAL file is truncated too, so the footprint goes down, not up."""
        conn = self._conn()
        try:
            # (sqlite3's execute steps this pragma once, freeing one page; a script runs it out)
            pages = 4 * PRUNE_VACUUM_PAGES if last else PRUNE_VACUUM_PAGES
            conn.executescript(f"PRAGMA incremental_vacuum({pages});")
            mode = "TRUNCATE" if last else "PASSIVE"
            conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"prune: giving space back failed: {exc}") from exc

    def reclaim(self, incremental: bool = False) -> None:
        """Checkpoint the WAL into the main file, VACUUM, and truncate the WAL again: a
        maintenance step that holds writers off while it runs (``wharf vacuum``), never part of
        a prune. ``incremental``: switch the file to incremental auto-vacuum on the way (a
        store created before it gives freed pages back from then on)."""
        conn = self._conn()
        if conn.in_transaction:
            raise StoreError("reclaim must run outside a transaction (one is open)")
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            if incremental:
                conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            raise StoreError(f"reclaim of {self.path} failed: {exc}") from exc

    def footprint(self) -> int:
        """Bytes on disk: the store file and its WAL."""
        wal = self.path.with_name(self.path.name + "-wal")
        return self.path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
