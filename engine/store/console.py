"""What the admin console reads and writes through the store (a part of :class:`SqliteStore`):
its accounts, the pauses operators set, running counters for dashboards, and the message
browser's keyset-paged search.

Dashboards read counters the store keeps with triggers (``message_counts``,
``delivery_counts``, ``message_buckets``: store schema v15), never ``COUNT(*)`` over the
messages; the browser pages by ``(received_at, rowid)`` (never ``OFFSET``) and starts from the
most selective index it has a value for: a business key, then a correlation id, then channel and
status, channel, status, time.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from engine import model
from engine.errors import StoreError
from engine.model import MessageRow
from engine.store.migrations import BUCKET_SECONDS

_MESSAGE_COLUMNS = (
    "id, channel, source, peer, content_type, received_at, updated_at, sha256, size, "
    "control_id, dedup_key, correlation_id, status, error, error_location, origin"
)
_USER_COLUMNS = (
    "name",
    "password_hash",
    "roles",
    "channels",
    "disabled",
    "setup_hash",
    "setup_until",
    "created_at",
    "updated_at",
)
_WORK_ITEM_COLUMNS = (
    "id, kind, subject, detail, status, message_id, correlation_id, created_at, updated_at, "
    "assignee, channel"
)
_WORK_ITEM_NAMES = tuple(c.strip() for c in _WORK_ITEM_COLUMNS.split(","))
#: A whole channel's pause (every destination of it) is kept under this destination name.
WHOLE_CHANNEL = "*"


@dataclass(frozen=True)
class Page:
    """One page of a keyset-paged listing: its rows and the cursor of the next page (None:
    the last page)."""

    rows: list[Any]
    next: str | None


class ConsoleStore:
    """The console's part of the store; mixed into :class:`SqliteStore`."""

    def _query(
        self, what: str, sql: str, params: Sequence[Any] = ()
    ) -> list[sqlite3.Row]:  # pragma: no cover - SqliteStore's
        raise NotImplementedError

    def transaction(
        self, what: str, durable: bool = True
    ) -> AbstractContextManager[Any]:  # pragma: no cover - SqliteStore's
        raise NotImplementedError

    # ------------------------------------------------------------------ accounts

    def users(self) -> list[dict[str, Any]]:
        """Every console account (roles and channel scopes decoded), by name."""
        rows = self._query(
            "users", f"SELECT {', '.join(_USER_COLUMNS)} FROM console_users ORDER BY name"
        )
        return [_user(r) for r in rows]

    def user(self, name: str) -> dict[str, Any] | None:
        """One console account, or None."""
        rows = self._query(
            "user",
            f"SELECT {', '.join(_USER_COLUMNS)} FROM console_users WHERE name = ?",
            (name,),
        )
        return _user(rows[0]) if rows else None

    def save_user(
        self,
        name: str,
        *,
        actor: str,
        action: str,
        now: float,
        **fields: Any,
    ) -> dict[str, Any]:
        """Create or change one account (``password_hash``, ``roles``, ``channels``,
        ``disabled``, ``setup_hash``, ``setup_until``), audited as ``action`` in the same
        commit (never with a hash in the audit detail)."""
        unknown = set(fields) - set(_USER_COLUMNS[1:7])
        if unknown:
            raise ValueError(f"save_user: unknown fields {sorted(unknown)}")
        for listed in ("roles", "channels"):
            if listed in fields:
                fields[listed] = json.dumps(sorted(fields[listed]))
        with self.transaction(f"save_user({name})") as tx:
            conn = tx.connection
            exists = conn.execute("SELECT 1 FROM console_users WHERE name = ?", (name,)).fetchone()
            if exists is None:
                values = {
                    "password_hash": None,
                    "roles": "[]",
                    "channels": '["*"]',
                    "disabled": 0,
                    "setup_hash": None,
                    "setup_until": None,
                    **fields,
                }
                conn.execute(
                    f"INSERT INTO console_users ({', '.join(_USER_COLUMNS)}) VALUES "
                    f"(:name, :password_hash, :roles, :channels, :disabled, :setup_hash, "
                    f":setup_until, :now, :now)",
                    {**values, "name": name, "now": now},
                )
            elif fields:
                sets = ", ".join(f"{k} = :{k}" for k in fields)
                conn.execute(
                    f"UPDATE console_users SET {sets}, updated_at = :now WHERE name = :name",
                    {**fields, "name": name, "now": now},
                )
            shown = {
                k: (json.loads(v) if k in ("roles", "channels") else v)
                for k, v in fields.items()
                if k not in ("password_hash", "setup_hash")
            }
            if "password_hash" in fields:
                shown["password"] = "set" if fields["password_hash"] else "cleared"
            if "setup_hash" in fields:
                shown["setup_link"] = "issued" if fields["setup_hash"] else "used"
            tx.audit(actor, action, name, shown, now)
        found = self.user(name)
        assert found is not None
        return found

    # ------------------------------------------------------------------ pauses

    def pauses(self) -> dict[tuple[str, str], dict[str, Any]]:
        """What is paused: ``(channel, destination)`` (destination ``*``: the whole channel)
        to who paused it, when and why."""
        rows = self._query("pauses", "SELECT channel, destination, actor, note, at FROM pauses")
        return {(r[0], r[1]): {"actor": r[2], "note": r[3], "at": r[4]} for r in rows}

    def set_paused(
        self,
        channel: str,
        destination: str,
        paused: bool,
        *,
        actor: str,
        note: str,
        now: float,
    ) -> bool:
        """Pause or resume a channel's destination (``*``: every one of it), audited in the same
        commit; False when it already was in that state (nothing written)."""
        with self.transaction(f"pause({channel}/{destination})") as tx:
            conn = tx.connection
            if paused:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO pauses (channel, destination, actor, note, at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (channel, destination, actor, note, now),
                )
            else:
                cur = conn.execute(
                    "DELETE FROM pauses WHERE channel = ? AND destination = ?",
                    (channel, destination),
                )
            if not cur.rowcount:
                return False
            action = "pause" if paused else "resume"
            tx.audit(actor, action, f"{channel}/{destination}", {"note": note}, now)
        return True

    # ------------------------------------------------------------------ counters

    #: The counters' reads (PostgresStore sums append-only rows instead: engine/store/pgschema.py).
    message_counters_sql = "SELECT channel, status, n FROM message_counts WHERE n != 0"
    delivery_counters_sql = (
        "SELECT channel, destination, status, n FROM delivery_counts WHERE n != 0"
    )
    throughput_sql = (
        "SELECT channel, bucket, n FROM message_buckets WHERE bucket >= ? AND bucket <= ? "
        "ORDER BY channel, bucket"
    )

    def message_counters(self) -> dict[str, dict[str, int]]:
        """Messages by channel and status, from the running counters."""
        out: dict[str, dict[str, int]] = {}
        for channel, status, n in self._query("message_counters", self.message_counters_sql):
            out.setdefault(channel, {})[status] = int(n)
        return out

    def delivery_counters(self) -> dict[tuple[str, str], dict[str, int]]:
        """Deliveries by (channel, destination) and status, from the running counters."""
        out: dict[tuple[str, str], dict[str, int]] = {}
        for channel, dest, status, n in self._query(
            "delivery_counters",
            self.delivery_counters_sql,
        ):
            out.setdefault((channel, dest), {})[status] = int(n)
        return out

    def throughput(self, since: float, until: float) -> dict[str, list[tuple[float, int]]]:
        """Messages received per channel per bucket (:data:`BUCKET_SECONDS`) from ``since`` up
        to ``until``: ``{channel: [(bucket start, count), ...]}``, buckets with none left out."""
        rows = self._query(
            "throughput",
            self.throughput_sql,
            (int(since // BUCKET_SECONDS), int(until // BUCKET_SECONDS)),
        )
        out: dict[str, list[tuple[float, int]]] = {}
        for channel, bucket, n in rows:
            out.setdefault(channel, []).append((float(bucket * BUCKET_SECONDS), int(n)))
        return out

    def oldest_queued(self, channel: str) -> float | None:
        """When the oldest message of ``channel`` still waiting for a delivery was received."""
        rows = self._query(
            "oldest_queued",
            "SELECT MIN(received_at) FROM messages WHERE channel = ? AND status = ?",
            (channel, model.QUEUED),
        )
        return rows[0][0] if rows and rows[0][0] is not None else None

    def oldest_pending(self, channel: str, destination: str) -> float | None:
        """When the oldest delivery still pending for one destination was queued."""
        rows = self._query(
            "oldest_pending",
            "SELECT created_at FROM outbox WHERE channel = ? AND destination = ? "
            "AND status = 'pending' ORDER BY id LIMIT 1",
            (channel, destination),
        )
        return rows[0][0] if rows else None

    # ------------------------------------------------------------------ browsing

    def browse(self, *, after: str | None = None, limit: int = 50, **filters: Any) -> Page:
        """Messages matching every filter of :func:`browse_sql` (``channel``, ``channels``: a
        console user's scope, ``status``, ``since``, ``until``, ``correlation_id``, ``key`` with
        ``value``, ``control_id``: MSH-10 or an X12 control number), newest first, a page at a
        time: ``after`` is the cursor a page returned (``next``)."""
        sql, params = browse_sql(**filters, after=after, limit=limit + 1)
        rows = self._query("browse", sql, params)
        more = len(rows) > limit
        rows = rows[:limit]
        found = [MessageRow(*r[1:]) for r in rows]
        cursor = f"{rows[-1][6]!r}:{rows[-1][0]}" if more and rows else None
        return Page(found, cursor)

    def browse_plan(self, **filters: Any) -> list[str]:
        """``EXPLAIN QUERY PLAN`` of :meth:`browse` for the same filters (tests, bench)."""
        sql, params = browse_sql(**filters, limit=51)
        return [r[-1] for r in self._query("browse_plan", f"EXPLAIN QUERY PLAN {sql}", params)]

    def work_item_page(
        self,
        *,
        kind: str | None = None,
        kinds: Sequence[str] | None = None,
        status: str | None = "open",
        after: int | None = None,
        limit: int = 50,
        channels: Sequence[str] | None = None,
    ) -> Page:
        """Work items (oldest first), a page at a time by id; ``kinds`` limits them to those a
        person's roles may see, ``channels`` to a person's channel scope (an item of no
        channel is outside every scope)."""
        clauses, args = [], []
        for clause, arg in (("kind = ?", kind), ("status = ?", status), ("id > ?", after)):
            if arg is not None:
                clauses.append(clause)
                args.append(arg)
        if kinds is not None:
            clauses.append(f"kind IN ({', '.join('?' * len(kinds)) or 'NULL'})")
            args += list(kinds)
        if channels is not None:
            clauses.append(_in_channels(channels))
            args += list(channels)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._query(
            "work_item_page",
            f"SELECT {_WORK_ITEM_COLUMNS} FROM work_items{where} ORDER BY id LIMIT ?",
            (*args, limit + 1),
        )
        items = [dict(zip(_WORK_ITEM_NAMES, r, strict=True)) for r in rows[:limit]]
        return Page(items, str(items[-1]["id"]) if len(rows) > limit else None)

    def work_items_about(
        self,
        kind: str,
        subject_prefix: str = "",
        *,
        status: str | None = None,
        limit: int = 50,
        channels: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """The newest work items of ``kind`` whose subject starts with ``subject_prefix`` (a
        range of the (kind, subject) index), in ``status`` if given, of ``channels`` only if
        given."""
        clauses, args = ["kind = ?"], [kind]
        if channels is not None:
            clauses.append(_in_channels(channels))
            args += list(channels)
        if subject_prefix:
            clauses += ["subject >= ?", "subject < ?"]
            args += [subject_prefix, subject_prefix + "\U0010ffff"]
        if status is not None:
            clauses.append("status = ?")
            args.append(status)
        rows = self._query(
            "work_items_about",
            f"SELECT {_WORK_ITEM_COLUMNS} FROM work_items WHERE {' AND '.join(clauses)} "
            "ORDER BY id DESC LIMIT ?",
            (*args, limit),
        )
        return [dict(zip(_WORK_ITEM_NAMES, r, strict=True)) for r in rows]

    def assign_work_item(self, item_id: int, assignee: str, *, actor: str, now: float) -> None:
        """Assign an open work item to a person, audited in the same commit."""
        with self.transaction(f"assign_work_item({item_id})") as tx:
            cur = tx.connection.execute(
                "UPDATE work_items SET assignee = ?, updated_at = ? "
                "WHERE id = ? AND status = 'open'",
                (assignee, now, item_id),
            )
            if not cur.rowcount:
                raise StoreError(f"work item {item_id} is not open (or does not exist)")
            tx.audit(actor, "work_item.assign", str(item_id), {"assignee": assignee}, now)

    def edit_and_replay(
        self, message_id: str, raw: bytes, *, diff: str, actor: str, now: float
    ) -> None:
        """Process a message that failed before any delivery again, from an edited raw body:
        the stored raw is replaced and the message goes back to ``received`` (the sweep
        processes it), the edit's diff audited in the same commit (``edit_replay``)."""
        with self.transaction(f"edit_and_replay({message_id})") as tx:
            conn = tx.connection
            row = conn.execute("SELECT status FROM messages WHERE id = ?", (message_id,)).fetchone()
            if row is None:
                raise StoreError(f"edit and replay: no message {message_id!r}")
            has_rows = conn.execute(
                "SELECT 1 FROM outbox WHERE message_id = ? LIMIT 1", (message_id,)
            ).fetchone()
            if row[0] != model.ERROR or has_rows is not None:
                raise StoreError(
                    "edit and replay takes a message that failed before delivery (status "
                    f"error, no delivery); this one is {row[0]!r}"
                    + (" with deliveries: replay resends them" if has_rows else "")
                )
            conn.execute(
                "UPDATE contents SET data = ? WHERE message_id = ? AND stage = 'raw'",
                (raw, message_id),
            )
            self._set_status(conn, message_id, model.RECEIVED, now)  # type: ignore[attr-defined]
            tx.audit(
                actor, "edit_replay", message_id, {"diff": diff, "previous_status": row[0]}, now
            )

    def work_item_ages(
        self, now: float, channels: Sequence[str] | None = None
    ) -> dict[str, dict[str, Any]]:
        """Open work items by kind: how many and the oldest one's opening time; of the
        ``channels`` given (a person's scope) only."""
        where, args = "", []
        if channels is not None:
            where, args = f" AND {_in_channels(channels)}", list(channels)
        rows = self._query(
            "work_item_ages",
            "SELECT kind, COUNT(*), MIN(created_at) FROM work_items WHERE status = 'open'"
            f"{where} GROUP BY kind",
            args,
        )
        return {r[0]: {"open": int(r[1]), "oldest": r[2]} for r in rows}

    def audit_page(self, *, before: int | None = None, limit: int = 50) -> Page:
        """The audit log, newest first, a page at a time by id."""
        where, args = ("WHERE id < ? ", (before,)) if before is not None else ("", ())
        rows = self._query(
            "audit_page",
            f"SELECT id, at, actor, action, target, detail FROM audit {where}"
            "ORDER BY id DESC LIMIT ?",
            (*args, limit + 1),
        )
        names = ("id", "at", "actor", "action", "target", "detail")
        items = [dict(zip(names, r, strict=True)) for r in rows[:limit]]
        for item in items:
            item["detail"] = json.loads(item["detail"])
        return Page(items, str(items[-1]["id"]) if len(rows) > limit else None)

    def correlated(self, correlation_id: str, limit: int = 200) -> list[MessageRow]:
        """Messages of one correlation id, oldest first."""
        rows = self._query(
            "correlated",
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE correlation_id = ? "
            "ORDER BY received_at LIMIT ?",
            (correlation_id, limit),
        )
        return [MessageRow(*r) for r in rows]

    def keyed(self, pairs: Sequence[tuple[str, str]], limit: int = 200) -> list[MessageRow]:
        """Messages that carry any of the business keys ``pairs`` (name, value), oldest first."""
        if not pairs:
            return []
        ors = " OR ".join("(bk.name = ? AND bk.value = ?)" for _ in pairs)
        columns = ", ".join(f"m.{c.strip()}" for c in _MESSAGE_COLUMNS.split(","))
        rows = self._query(
            "keyed",
            f"SELECT DISTINCT {columns} FROM business_keys AS bk "
            f"JOIN messages AS m ON m.id = bk.message_id WHERE {ors} "
            "ORDER BY m.received_at LIMIT ?",
            (*[x for p in pairs for x in p], limit),
        )
        return [MessageRow(*r) for r in rows]

    def key_names(self, message_ids: Sequence[str]) -> Iterator[tuple[str, str, str]]:
        """(message id, key name, value) of the given messages."""
        for mid in message_ids:
            for name, value in self._query(
                "key_names",
                "SELECT name, value FROM business_keys WHERE message_id = ?",
                (mid,),
            ):
                yield mid, name, value


def _in_channels(channels: Sequence[str]) -> str:
    """A clause keeping work items of the given channels (parameters: the channels)."""
    return f"channel IN ({', '.join('?' * len(channels)) or 'NULL'})"


#: The largest row id a cursor may name (SQLite's INTEGER, PostgreSQL's BIGINT).
MAX_ROWID = 2**63 - 1


def _cursor(after: str) -> tuple[float, int]:
    """The browser's cursor ``TIME:ROWID`` (ValueError saying what was expected and what
    came: a time that is no finite number, a row id out of the store's integer range)."""
    at, _, rowid = after.rpartition(":")
    try:
        when = float(at)
    except ValueError:
        when = math.nan
    digits = rowid.isascii() and rowid.isdigit() and len(rowid) <= 19
    if math.isfinite(when) and digits and int(rowid) <= MAX_ROWID:
        return when, int(rowid)
    shown = after if len(after) <= 60 else after[:60] + "..."
    raise ValueError(
        "after: expected a page cursor TIME:ROWID as a page returned it in next (a time in "
        f"seconds, a row id from 0 to {MAX_ROWID}) (got {shown!r})"
    )


def _user(row: Sequence[Any]) -> dict[str, Any]:
    user = dict(zip(_USER_COLUMNS, row, strict=True))
    user["roles"] = json.loads(user["roles"])
    user["channels"] = json.loads(user["channels"])
    user["disabled"] = bool(user["disabled"])
    return user


def browse_sql(
    *,
    channel: str | None = None,
    channels: Sequence[str] | None = None,
    status: str | None = None,
    since: float | None = None,
    until: float | None = None,
    correlation_id: str | None = None,
    key: str | None = None,
    value: str | None = None,
    control_id: str | None = None,
    after: str | None = None,
    limit: int = 51,
) -> tuple[str, list[Any]]:
    """The browser's query. Only the most selective filter given may use an index (the others
    compare an expression, ``column || ''`` or ``column + 0``, which keeps the planner of both
    SQLite and PostgreSQL off their indexes): a business key, else a correlation id, else a
    control id, else channel and status, channel, status or time; the rest filter the rows
    that index finds. Pages by ``(received_at, rowid)`` below the cursor ``after``."""
    if (key is None) != (value is None):
        raise ValueError(f"a business key search needs both a name and a value (got {key=})")
    columns = ", ".join(f"m.{c.strip()}" for c in _MESSAGE_COLUMNS.split(","))
    sql = f"SELECT m.rowid, {columns} FROM messages AS m"
    clauses: list[str] = []
    params: list[Any] = []
    driver = (
        "key"
        if key is not None
        else "correlation"
        if correlation_id is not None
        else "control"
        if control_id is not None
        else "index"
    )
    free = driver == "index"  # channel, status and time may use their indexes

    def add(column: str, test: str, param: Any, indexed: bool) -> None:
        if not indexed:  # an expression no index holds; the same in both dialects
            column = f"{column} + 0" if column == "m.received_at" else f"{column} || ''"
        clauses.append(f"{column} {test}")
        params.append(param)

    if key is not None:
        sql += " JOIN business_keys AS bk ON bk.message_id = m.id"
        clauses += ["bk.name = ?", "bk.value = ?"]
        params += [key, value]
    if correlation_id is not None:
        add("m.correlation_id", "= ?", correlation_id, driver == "correlation")
    if control_id is not None:
        add("m.control_id", "= ?", control_id, driver == "control")
    if channel is not None:
        add("m.channel", "= ?", channel, free)
    if status is not None:
        if status not in model.MESSAGE_STATUSES:
            raise ValueError(f"status must be one of {model.MESSAGE_STATUSES} (got {status!r})")
        add("m.status", "= ?", status, free)
    if since is not None:
        add("m.received_at", ">= ?", since, free)
    if until is not None:
        add("m.received_at", "< ?", until, free)
    if channels is not None:
        clauses.append(f"m.channel || '' IN ({', '.join('?' * len(channels)) or 'NULL'})")
        params += list(channels)
    if after:
        cursor = _cursor(after)
        clauses.append("(m.received_at, m.rowid) < (?, ?)")  # a range of the index
        params += [cursor[0], cursor[1]]
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    sql += " ORDER BY m.received_at DESC, m.rowid DESC LIMIT ?"
    params.append(limit)
    return sql, params
