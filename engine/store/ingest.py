"""The statements of one ingest batch: a few per batch, not four per message.

A batch of inbound messages (the executor's group commit) is stored with one duplicate lookup
per channel for all the batch's dedup keys, one multi-row ``INSERT`` into ``messages`` and one
into ``contents`` (the raw bytes, and the answer when it was built before the commit), whatever
the batch size. Rows go in chunks of a power of two (256, 128, ..., 1), so the connection's
statement cache holds a few statement texts per table rather than one per batch size. The
SQL is the same on SQLite and PostgreSQL (``?`` placeholders; :mod:`engine.store.pgconn`
translates), and on PostgreSQL it is one round trip per statement instead of per row.

Duplicate detection is what it was with one lookup per message: a message of the same channel
and dedup key received inside the item's window is a candidate, newest first (``received_at``,
then insertion order); the first candidate with the same sha256 makes the item a duplicate of
it, any other candidate makes it a conflict; earlier items of the same batch count as stored.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from engine import model
from engine.errors import StoreError
from engine.model import Inbound, IngestResult

MESSAGE_COLUMNS = (
    "id, channel, source, peer, content_type, received_at, updated_at, sha256, size, "
    "control_id, dedup_key, correlation_id, status, error, error_location, origin"
)
_MESSAGE_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?)"
_CONTENT_ROW = "(?, ?, ?, ?)"
#: The most rows (or keys) one statement takes: 256 x 14 parameters stays far below SQLite's
#: limit of 32,766 bound parameters.
CHUNK = 256


@dataclass(frozen=True, slots=True)
class _Candidate:
    """A message that may make an item a duplicate (or a conflict)."""

    received_at: float
    order: int  # insertion order: rowid for stored rows, after every rowid for this batch's
    id: str
    status: str
    correlation_id: str
    sha256: str
    response: bytes | None = None  # (this batch's items) the answer stored with it
    in_batch: bool = False


def chunks(n: int) -> Iterator[tuple[int, int]]:
    """``(start, size)`` of the chunks ``n`` rows go in: CHUNK at most, each a power of two."""
    start = 0
    size = CHUNK
    while start < n:
        while size > n - start:
            size //= 2
        yield start, size
        start += size


def insert_rows(conn: Any, head: str, row: str, rows: Sequence[Sequence[Any]]) -> None:
    """``head VALUES row, row, ...`` for ``rows``, in :func:`chunks`."""
    for start, size in chunks(len(rows)):
        params = [value for r in rows[start : start + size] for value in r]
        conn.execute(f"{head} VALUES {', '.join([row] * size)}", params)


def candidates(
    conn: Any, items: Sequence[Inbound], now: float
) -> dict[tuple[str, str], list[_Candidate]]:
    """Stored messages that share a channel and dedup key with an item of the batch and were
    received inside the widest window of the batch, by (channel, key)."""
    wanted: dict[str, set[str]] = {}
    since: dict[str, float] = {}
    for item in items:
        if item.dedup_key and item.dedup_window > 0:
            wanted.setdefault(item.channel, set()).add(item.dedup_key)
            oldest = now - item.dedup_window
            since[item.channel] = min(since.get(item.channel, oldest), oldest)
    found: dict[tuple[str, str], list[_Candidate]] = {}
    for channel, keys in wanted.items():
        ordered = sorted(keys)
        for start, size in chunks(len(ordered)):
            rows = conn.execute(
                "SELECT received_at, rowid, id, status, correlation_id, sha256, dedup_key "
                "FROM messages WHERE channel = ? AND received_at >= ? "
                f"AND dedup_key IN ({', '.join(['?'] * size)})",
                [channel, since[channel], *ordered[start : start + size]],
            ).fetchall()
            for received_at, rowid, *rest, key in rows:
                found.setdefault((channel, key), []).append(_Candidate(received_at, rowid, *rest))
    return found


def ingest_rows(tx: Any, items: Sequence[Inbound], now: float) -> list[IngestResult]:
    """Store ``items`` in ``tx``'s open transaction; one result per item, in order."""
    conn = tx.connection
    given = [item.message_id for item in items if item.message_id]
    for message_id in given:  # (a replay's or a test's own ids; new ones are made unique)
        if tx.message_channel(message_id) is not None:
            raise StoreError(f"message id {message_id!r} must be new but is already stored")
    found = candidates(conn, items, now)
    results: list[IngestResult] = []
    messages: list[tuple[Any, ...]] = []
    contents: list[tuple[Any, ...]] = []
    for n, item in enumerate(items):
        digest = hashlib.sha256(item.raw).hexdigest()
        status = model.RECEIVED
        key = (item.channel, item.dedup_key or "")
        if item.dedup_key and item.dedup_window > 0:
            oldest = now - item.dedup_window
            earlier = sorted(
                (c for c in found.get(key, ()) if c.received_at >= oldest),
                key=lambda c: (c.received_at, c.order),
                reverse=True,
            )
            same = next((c for c in earlier if c.sha256 == digest), None)
            if same is not None:
                response = same.response if same.in_batch else tx.content(same.id, "response")
                results.append(
                    IngestResult(same.id, "duplicate", same.status, same.correlation_id, response)
                )
                continue
            if earlier:
                status = model.CONFLICT
        message_id = item.message_id or model.new_id()
        correlation_id = item.correlation_id or message_id
        messages.append(
            (
                message_id,
                item.channel,
                item.source,
                item.peer,
                item.content_type,
                item.received_at,
                now,
                digest,
                len(item.raw),
                item.control_id,
                item.dedup_key,
                correlation_id,
                status,
                item.origin,
            )
        )
        contents.append((message_id, "raw", bytes(item.raw), now))
        if item.response is not None:
            contents.append((message_id, "response", bytes(item.response), now))
        if item.dedup_key:
            found.setdefault(key, []).append(
                _Candidate(
                    item.received_at,
                    2**62 + n,  # inserted after every stored row
                    message_id,
                    status,
                    correlation_id,
                    digest,
                    item.response,
                    True,
                )
            )
        outcome = "conflict" if status == model.CONFLICT else "stored"
        results.append(IngestResult(message_id, outcome, status, correlation_id, None))
    try:
        insert_rows(conn, f"INSERT INTO messages ({MESSAGE_COLUMNS})", _MESSAGE_ROW, messages)
    except sqlite3.IntegrityError as exc:
        raise StoreError(f"message ids must be new: {given!r} ({exc})") from exc
    insert_rows(
        conn, "INSERT INTO contents (message_id, stage, data, created_at)", _CONTENT_ROW, contents
    )
    return results
