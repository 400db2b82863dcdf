"""One write transaction of the SQLite store: the spine's public write API.

:meth:`engine.store.sqlite.SqliteStore.transaction` opens one (``BEGIN IMMEDIATE``) and hands
out a :class:`SqliteTransaction`; whatever is done through it commits together or not at all.
The runtime records a pipeline result (:meth:`finish`) and lets the channel's domains book in
the same transaction; it records a delivery's outcome (:meth:`delivery_succeeded`...) and lets
the domains hear it in the same transaction. The store itself never calls into a domain.

The outbox (:meth:`enqueue`), the audit (:meth:`audit`) and work items for people
(:meth:`open_work_item`, :meth:`refresh_work_items`, :meth:`resolve_work_items`) are the
spine's; a domain uses them here and keeps its own tables behind its own repository
(``connection`` and ``dialect`` let it pick one).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from engine import model
from engine.errors import StoreError
from engine.model import Outbound
from engine.store.versions import set_message_versions

GENESIS_HASH = "0" * 64
_FAILED = (model.DEAD, model.QUARANTINED)
_OPEN = (model.PENDING, model.INFLIGHT)


def canonical_json(value: Any) -> str:
    """Deterministic JSON text: sorted keys, no spaces, UTF-8 kept (hash input of the audit)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def audit_hash(prev_hash: str, row: dict[str, Any]) -> str:
    """sha256 hex of ``prev_hash`` followed by the canonical JSON of ``row``."""
    return hashlib.sha256((prev_hash + canonical_json(row)).encode()).hexdigest()


def placeholders(values: Sequence[Any]) -> str:
    return ", ".join("?" for _ in values)


@dataclass(frozen=True)
class Settled:
    """An outbox row whose attempt was just recorded, as the domains hear it."""

    id: int
    message_id: str
    channel: str
    destination: str
    correlation_id: str
    meta: dict[str, Any]
    #: what the destination answered, when the attempt succeeded (an ERP's document number)
    response: bytes | None = None


DELIVERY_COLUMNS = (
    "id, message_id, channel, destination, payload, content_type, idempotency_key, "
    "correlation_id, order_key, attempts, created_at, meta, batch_key"
)


def delivery_of(row: Sequence[Any]) -> model.Delivery:
    """A :class:`~engine.model.Delivery` from a row of :data:`DELIVERY_COLUMNS`."""
    names = [c.strip() for c in DELIVERY_COLUMNS.split(",")]
    fields = dict(zip(names, row, strict=True))
    fields["payload"] = bytes(fields["payload"])
    fields["meta"] = json.loads(fields["meta"])
    return model.Delivery(**fields)


class SqliteTransaction:
    """The spine's writes inside one open SQLite transaction (see the module docstring)."""

    dialect = "sqlite"
    #: What a claim's SELECT ends with (PostgreSQL: rows another node is claiming are skipped).
    claim_lock = ""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.connection = conn

    @contextmanager
    def undone(self) -> Iterator[None]:
        """A savepoint that is always rolled back: what runs inside computes its answer and
        leaves no row (a test message's domain bookings: their payloads go out, marked
        test, and the domains' records stay as they were)."""
        self.connection.execute("SAVEPOINT wharf_undone")
        try:
            yield
        finally:
            if self.connection.in_transaction:
                self.connection.execute("ROLLBACK TO wharf_undone")
                self.connection.execute("RELEASE wharf_undone")

    def lock(self, *keys: str) -> None:
        """Hold ``keys`` until this transaction ends (PostgreSQL: advisory locks, taken in
        sorted order, for what nodes must do one at a time). SQLite's write lock already
        holds the whole database."""

    def try_lock(self, key: str) -> bool:
        """``key`` held until this transaction ends when nobody else holds it; False (at once)
        when another node does. One process on SQLite: always True."""
        return True

    # ------------------------------------------------------------------ contents

    def put_content(self, message_id: str, stage: str, data: bytes, now: float) -> None:
        self.connection.execute(
            "INSERT INTO contents (message_id, stage, data, created_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (message_id, stage) DO UPDATE SET data = excluded.data, "
            "created_at = excluded.created_at",
            (message_id, stage, bytes(data), now),
        )

    def content(self, message_id: str, stage: str) -> bytes | None:
        row = self.connection.execute(
            "SELECT data FROM contents WHERE message_id = ? AND stage = ?", (message_id, stage)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def message_channel(self, message_id: str) -> str | None:
        row = self.connection.execute(
            "SELECT channel FROM messages WHERE id = ?", (message_id,)
        ).fetchone()
        return None if row is None else row[0]

    def internal_message(
        self, channel: str, source: str, body: bytes, content_type: str, now: float
    ) -> tuple[str, str]:
        """A message Wharf makes itself for effects no inbound message carries (a scheduled
        par sweep's requisitions): stored like an inbound one, ``source`` naming who made it,
        waiting for :meth:`finish`. Returns ``(message_id, correlation_id)``."""
        message_id = model.new_id()
        self.connection.execute(
            "INSERT INTO messages (id, channel, source, peer, content_type, received_at, "
            "updated_at, sha256, size, control_id, dedup_key, correlation_id, status) "
            "VALUES (?, ?, ?, NULL, ?, ?, ?, ?, ?, NULL, NULL, ?, ?)",
            (
                message_id,
                channel,
                source,
                content_type,
                now,
                now,
                hashlib.sha256(body).hexdigest(),
                len(body),
                message_id,
                model.RECEIVED,
            ),
        )
        self.put_content(message_id, "raw", body, now)
        return message_id, message_id

    # ------------------------------------------------------------------ pipeline result

    def finish(
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
    ) -> list[tuple[str, int]]:
        """Record one pipeline run: content, business keys, work items, outbox, status.
        Returns the outbox rows it queued as (destination, row id).

        Safe to call again for the same message (a re-run after replay): the previous
        transformed content, business keys and unsent outbox rows are replaced; rows already
        sent are kept and their idempotency keys are not inserted again.
        """
        if status not in model.MESSAGE_STATUSES:
            raise ValueError(f"status must be one of {model.MESSAGE_STATUSES} (got {status!r})")
        conn = self.connection
        message = conn.execute(
            "SELECT channel, correlation_id FROM messages WHERE id = ?", (message_id,)
        ).fetchone()
        if message is None:
            raise StoreError(f"finish_processing: no message with id {message_id!r}")
        channel, correlation_id = message
        conn.execute(
            "DELETE FROM contents WHERE message_id = ? AND stage = 'transformed'", (message_id,)
        )
        if transformed is not None:
            self.put_content(message_id, "transformed", transformed, now)
        conn.execute("DELETE FROM business_keys WHERE message_id = ?", (message_id,))
        conn.executemany(
            "INSERT OR IGNORE INTO business_keys (message_id, name, value) VALUES (?, ?, ?)",
            [(message_id, str(name), str(value)) for name, value in business_keys],
        )
        if work_item is not None:
            kind, subject, detail = work_item
            self.open_work_item(kind, subject, detail, message_id, correlation_id, now)
        elif status != model.ERROR:
            # held for a missing mapping, replayed after the mapping was added: done
            self.resolve_work_items("MISSING_MAPPING", message_id=message_id, now=now)
        queued = self._replace_outbox(message_id, channel, correlation_id, outbound, now)
        # A pipeline error stays an error even when something (an application ACK) goes out.
        final = self._rolled_up_status(message_id) if outbound and status != model.ERROR else status
        conn.execute(
            "UPDATE messages SET status = ?, error = ?, error_location = ?, updated_at = ? "
            "WHERE id = ?",
            (final, error, error_location, now, message_id),
        )
        return queued

    def set_config_versions(self, pairs: Sequence[tuple[str, str]]) -> None:
        """Record ``(message_id, version)``: the configuration that produced its outputs."""
        set_message_versions(self.connection, pairs)

    # ------------------------------------------------------------------ outbox

    def enqueue(
        self,
        message_id: str,
        outbound: Sequence[Outbound],
        now: float,
        *,
        correlation_id: str | None = None,
    ) -> list[int]:
        """Add deliveries for a message (a person released a held invoice...); a row whose
        idempotency key the message already has is not added again; a message that had settled
        (sent) waits on them again (queued). ``correlation_id``: the chain they belong to
        (default: the message's). Returns the new row ids."""
        row = self.connection.execute(
            "SELECT channel, correlation_id FROM messages WHERE id = ?", (message_id,)
        ).fetchone()
        if row is None:
            raise StoreError(f"enqueue: no message with id {message_id!r}")
        chain = correlation_id or row[1]
        ids = [i for _, i in self._insert_outbox(message_id, row[0], chain, outbound, now)]
        if ids:  # a settled message has deliveries again: it waits on them
            self.connection.execute(
                "UPDATE messages SET status = ?, updated_at = ? WHERE id = ? AND status IN (?, ?)",
                (model.QUEUED, now, message_id, model.SENT, model.FILTERED),
            )
        return ids

    def _replace_outbox(
        self,
        message_id: str,
        channel: str,
        correlation_id: str,
        outbound: Sequence[Outbound],
        now: float,
    ) -> list[tuple[str, int]]:
        conn = self.connection
        unsent = [
            row[0]
            for row in conn.execute(
                "SELECT id FROM outbox WHERE message_id = ? AND status != ?",
                (message_id, model.DELIVERED),
            )
        ]
        if unsent:
            marks = placeholders(unsent)
            conn.execute(
                f"UPDATE dead_letters SET replayed_at = ? "
                f"WHERE outbox_id IN ({marks}) AND replayed_at IS NULL",
                (now, *unsent),
            )
            conn.execute(f"DELETE FROM outbox WHERE id IN ({marks})", unsent)
        return self._insert_outbox(message_id, channel, correlation_id, outbound, now)

    def _insert_outbox(
        self,
        message_id: str,
        channel: str,
        correlation_id: str,
        outbound: Sequence[Outbound],
        now: float,
    ) -> list[tuple[str, int]]:
        conn = self.connection
        keys = {
            row[0]
            for row in conn.execute(
                "SELECT idempotency_key FROM outbox WHERE message_id = ?", (message_id,)
            )
        }
        ids: list[tuple[str, int]] = []
        index: dict[str, int] = {}
        for out in outbound:
            idx = index.get(out.destination, 0)
            index[out.destination] = idx + 1
            # An effect of a domain record carries its own key (stable across messages).
            key = out.meta.get("idempotency_key") or model.idempotency_key(
                channel, out.destination, message_id, idx
            )
            if key in keys:
                continue
            cur = conn.execute(
                "INSERT INTO outbox (message_id, channel, destination, idx, payload, "
                "content_type, meta, idempotency_key, correlation_id, order_key, status, "
                "attempts, next_attempt_at, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?)",
                (
                    message_id,
                    channel,
                    out.destination,
                    idx,
                    bytes(out.payload),
                    out.content_type,
                    canonical_json(out.meta),
                    key,
                    correlation_id,
                    out.order_key,
                    model.PENDING,
                    now,
                    now,
                    now,
                ),
            )
            ids.append((out.destination, int(cur.lastrowid or 0)))
        return ids

    # ------------------------------------------------------------------ claims

    def claim(
        self,
        ids: Sequence[int],
        now: float,
        lease: float,
        *,
        limit: int,
        block_on_dead: bool = False,
    ) -> list[model.Delivery]:
        """Claim, in this transaction, up to ``limit`` of the pending rows ``ids`` (rows this
        transaction queued, handed to their worker without a claim of its own), oldest first,
        with the same ordering rule as :meth:`SqliteStore.claim_deliveries`."""
        if not ids or limit <= 0:
            return []
        blocking = _OPEN + (_FAILED if block_on_dead else ())
        marks = placeholders(ids)
        assert model.PENDING == "pending"
        rows = self.connection.execute(
            f"SELECT {DELIVERY_COLUMNS} FROM outbox AS o WHERE o.id IN ({marks}) "
            "AND o.status = 'pending' AND o.next_attempt_at <= ? AND (o.order_key IS NULL "
            "OR NOT EXISTS (SELECT 1 FROM outbox AS p WHERE p.channel = o.channel "
            "AND p.destination = o.destination AND p.order_key = o.order_key "
            f"AND p.id < o.id AND p.status IN ({placeholders(blocking)}))) "
            f"ORDER BY o.id LIMIT ?{self.claim_lock}",
            (*ids, now, *blocking, limit),
        ).fetchall()
        self.connection.executemany(
            "UPDATE outbox SET status = ?, lease_until = ?, updated_at = ? WHERE id = ?",
            [(model.INFLIGHT, now + lease, now, row[0]) for row in rows],
        )
        return [delivery_of(row) for row in rows]

    # ------------------------------------------------------------------ delivery outcomes

    def _outbox_row(self, delivery_id: int) -> Settled:
        row = self.connection.execute(
            "SELECT message_id, channel, destination, correlation_id, meta FROM outbox "
            "WHERE id = ?",
            (delivery_id,),
        ).fetchone()
        if row is None:
            raise StoreError(f"no outbox row with id {delivery_id!r}")
        return Settled(delivery_id, row[0], row[1], row[2], row[3], json.loads(row[4]))

    def delivery_succeeded(self, delivery_id: int, response: bytes | None, now: float) -> Settled:
        """Mark an outbox row sent (keeping the destination's response) and roll up."""
        settled = self._outbox_row(delivery_id)
        self.connection.execute(
            "UPDATE outbox SET status = ?, response = ?, attempts = attempts + 1, "
            "lease_until = NULL, updated_at = ? WHERE id = ?",
            (model.DELIVERED, response, now, delivery_id),
        )
        self._roll_up(settled.message_id, now)
        return replace(settled, response=response)

    def delivery_retry(
        self, delivery_id: int, error: str, next_attempt_at: float, now: float
    ) -> Settled:
        """Put an outbox row back to pending, due at ``next_attempt_at``."""
        settled = self._outbox_row(delivery_id)
        self.connection.execute(
            "UPDATE outbox SET status = ?, last_error = ?, next_attempt_at = ?, "
            "attempts = attempts + 1, lease_until = NULL, updated_at = ? WHERE id = ?",
            (model.PENDING, error, next_attempt_at, now, delivery_id),
        )
        self._roll_up(settled.message_id, now)
        return settled

    def delivery_held(
        self, delivery_id: int, note: str, next_attempt_at: float, now: float
    ) -> Settled:
        """Put an outbox row back to pending, due at ``next_attempt_at``, without counting the
        attempt (a rate limit held it, or an all-or-nothing bulk call rolled it back)."""
        settled = self._outbox_row(delivery_id)
        self.connection.execute(
            "UPDATE outbox SET status = ?, last_error = ?, next_attempt_at = ?, "
            "lease_until = NULL, updated_at = ? WHERE id = ?",
            (model.PENDING, note, next_attempt_at, now, delivery_id),
        )
        return settled

    def pin_batch(self, ids: Sequence[int], key: str, now: float) -> None:
        """Mark rows as going out together in the bulk call ``key``: until the call is answered
        they are claimed together and resent under the same key."""
        if ids:
            self.connection.execute(
                "UPDATE outbox SET batch_key = ?, updated_at = ? "
                f"WHERE id IN ({placeholders(ids)})",
                (key, now, *ids),
            )

    def unpin_batch(self, ids: Sequence[int]) -> None:
        """Forget the bulk call of rows whose call was answered (a later attempt makes a new
        call with its own key)."""
        if ids:
            self.connection.execute(
                f"UPDATE outbox SET batch_key = NULL WHERE id IN ({placeholders(ids)})", tuple(ids)
            )

    def settle(self, settlement: model.Settlement, now: float) -> tuple[Settled, str | None]:
        """Record one :class:`~engine.model.Settlement`; the row as the domains hear it and the
        outcome they hear (None for retry and held, which they do not)."""
        s = settlement
        if s.unpin:
            self.unpin_batch([s.delivery_id])
        if s.kind == model.SETTLE_SENT:
            return self.delivery_succeeded(s.delivery_id, s.response, now), "delivered"
        if s.response is not None:
            self.connection.execute(
                "UPDATE outbox SET response = ? WHERE id = ?", (s.response, s.delivery_id)
            )
        if s.kind == model.SETTLE_RETRY:
            assert s.next_attempt_at is not None
            return self.delivery_retry(s.delivery_id, s.reason or "", s.next_attempt_at, now), None
        if s.kind == model.SETTLE_HELD:
            assert s.next_attempt_at is not None
            return self.delivery_held(s.delivery_id, s.reason or "", s.next_attempt_at, now), None
        if s.kind == model.SETTLE_DEAD:
            done = self.delivery_failed(
                s.delivery_id, s.reason or "", now, status=model.DEAD, kind="dead"
            )
            return done, "dead"
        if s.kind == model.SETTLE_QUARANTINED:
            done = self.delivery_failed(
                s.delivery_id, s.reason or "", now, status=model.QUARANTINED, kind="quarantine"
            )
            return done, "quarantined"
        raise StoreError(
            f"settlement kind must be one of sent, retry, held, dead, quarantined (got {s.kind!r})"
        )

    def delivery_failed(
        self, delivery_id: int, reason: str, now: float, *, status: str, kind: str
    ) -> Settled:
        """Give up on an outbox row (``dead``) or park it for a person (``quarantined``),
        with a dead letter of ``kind``."""
        settled = self._outbox_row(delivery_id)
        conn = self.connection
        conn.execute(
            "UPDATE outbox SET status = ?, last_error = ?, attempts = attempts + 1, "
            "lease_until = NULL, updated_at = ? WHERE id = ?",
            (status, reason, now, delivery_id),
        )
        conn.execute(
            "INSERT INTO dead_letters (outbox_id, message_id, channel, destination, kind, "
            "reason, created_at) SELECT id, message_id, channel, destination, ?, ?, ? "
            "FROM outbox WHERE id = ?",
            (kind, reason, now, delivery_id),
        )
        self._roll_up(settled.message_id, now)
        return settled

    def _rolled_up_status(self, message_id: str) -> str:
        """'sent' when every row is sent, 'error' when a row failed and none is open,
        otherwise 'queued'."""
        by_status = dict(
            self.connection.execute(
                "SELECT status, COUNT(*) FROM outbox WHERE message_id = ? GROUP BY status",
                (message_id,),
            ).fetchall()
        )
        if by_status and set(by_status) == {model.DELIVERED}:
            return model.SENT
        failed = any(by_status.get(s) for s in _FAILED)
        still_open = any(by_status.get(s) for s in _OPEN)
        if failed and not still_open:
            return model.ERROR
        return model.QUEUED

    def _roll_up(self, message_id: str, now: float) -> None:
        # Nodes settling two deliveries of one message at once take turns here: each then
        # sees the other's outcome (else both read the other's row still open, and the
        # message stays queued with every delivery sent).
        self.lock(f"roll-up:{message_id}")
        conn = self.connection
        current = conn.execute("SELECT status FROM messages WHERE id = ?", (message_id,)).fetchone()
        if current is None or current[0] != model.QUEUED:
            return  # only a message waiting on its deliveries takes their outcome
        status = self._rolled_up_status(message_id)
        error = location = None
        if status == model.ERROR:
            first = conn.execute(
                "SELECT reason, destination FROM dead_letters "
                "WHERE message_id = ? AND replayed_at IS NULL ORDER BY id LIMIT 1",
                (message_id,),
            ).fetchone()
            if first is not None:
                error, location = first
        conn.execute(
            "UPDATE messages SET status = ?, error = ?, error_location = ?, updated_at = ? "
            "WHERE id = ?",
            (status, error, location, now, message_id),
        )

    # ------------------------------------------------------------------ work items

    def open_work_item(
        self,
        kind: str,
        subject: str,
        detail: str,
        message_id: str | None,
        correlation_id: str | None,
        now: float,
        *,
        once: str = "per_message",
    ) -> bool:
        """Open a work item for a person. ``once``: ``per_message`` (default) opens none while
        one of the same kind and subject is open for the same message; ``while_open``, none
        while one of that kind and subject is open at all; ``ever``, none if one of that kind
        and subject ever existed (an alert that fires once). True when one was opened."""
        conn = self.connection
        if once == "per_message" and message_id is not None:
            exists = conn.execute(
                "SELECT 1 FROM work_items WHERE message_id = ? AND kind = ? AND subject = ? "
                "AND status = 'open'",
                (message_id, kind, subject),
            ).fetchone()
        elif once in ("per_message", "while_open"):
            exists = conn.execute(
                "SELECT 1 FROM work_items WHERE kind = ? AND subject = ? AND status = 'open'",
                (kind, subject),
            ).fetchone()
        elif once == "ever":
            exists = conn.execute(
                "SELECT 1 FROM work_items WHERE kind = ? AND subject = ?", (kind, subject)
            ).fetchone()
        else:
            raise ValueError(f"'once' must be per_message, while_open or ever (got {once!r})")
        if exists:
            return False
        conn.execute(
            "INSERT INTO work_items (kind, subject, detail, status, message_id, correlation_id, "
            "created_at, updated_at, channel) VALUES (?, ?, ?, 'open', ?, ?, ?, ?, "
            "(SELECT channel FROM messages WHERE id = ?))",
            (kind, subject, detail, message_id, correlation_id, now, now, message_id),
        )
        return True

    def resolve_work_items(
        self, kind: str, *, subject: str | None = None, message_id: str | None = None, now: float
    ) -> int:
        """Resolve the open work items of ``kind`` (for a subject, a message, or both)."""
        if subject is None and message_id is None:
            raise ValueError("resolve_work_items needs a subject or a message_id (got neither)")
        sql = "UPDATE work_items SET status = 'resolved', updated_at = ? WHERE kind = ? "
        params: list[Any] = [now, kind]
        if message_id is not None:
            sql += "AND message_id = ? "
            params.append(message_id)
        if subject is not None:
            sql += "AND subject = ? "
            params.append(subject)
        return self.connection.execute(sql + "AND status = 'open'", params).rowcount

    def close_work_item(self, item_id: int, now: float) -> dict[str, Any]:
        """Close one open work item (a person's decision; the caller audits it). Returns the
        item as it was; StoreError when there is none with that id or it is not open."""
        row = self.connection.execute(
            "SELECT kind, subject, status, message_id FROM work_items WHERE id = ?", (item_id,)
        ).fetchone()
        if row is None:
            raise StoreError(f"no work item {item_id}")
        kind, subject, status, message_id = row
        if status != "open":
            raise StoreError(f"work item {item_id} ({kind}) is {status}: only an open one closes")
        self.connection.execute(
            "UPDATE work_items SET status = 'closed', updated_at = ? WHERE id = ?", (now, item_id)
        )
        return {"id": item_id, "kind": kind, "subject": subject, "message_id": message_id}

    def refresh_work_items(self, kind: str, *, subject: str, detail: str, now: float) -> int:
        """Give the open work items of ``kind`` for ``subject`` a new ``detail`` (what is wrong
        changed while it stayed open); the number changed."""
        return self.connection.execute(
            "UPDATE work_items SET detail = ?, updated_at = ? WHERE kind = ? AND subject = ? "
            "AND status = 'open'",
            (detail, now, kind, subject),
        ).rowcount

    # ------------------------------------------------------------------ audit

    def audit(
        self, actor: str, action: str, target: str, detail: dict[str, Any], now: float
    ) -> int:
        """Append one hash-chained audit row; returns its id."""
        conn = self.connection
        last = conn.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
        if last is None:  # an empty chain, or every row pruned: go on from the anchor
            last = conn.execute("SELECT through_id, hash FROM audit_anchor").fetchone()
        audit_id, prev_hash = (1, GENESIS_HASH) if last is None else (last[0] + 1, last[1])
        detail_text = canonical_json(detail)
        # Hash exactly what reading the row back yields (REAL time, decoded detail).
        row = {
            "id": audit_id,
            "at": float(now),
            "actor": str(actor),
            "action": str(action),
            "target": str(target),
            "detail": json.loads(detail_text),
        }
        digest = audit_hash(prev_hash, row)
        conn.execute(
            "INSERT INTO audit (id, at, actor, action, target, detail, prev_hash, hash) "
            "VALUES (:id, :at, :actor, :action, :target, :detail_text, :prev_hash, :digest)",
            {**row, "detail_text": detail_text, "prev_hash": prev_hash, "digest": digest},
        )
        return audit_id
