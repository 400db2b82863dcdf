"""Stored messages through one configuration in a throw-away store: what it would produce.

The live store is only read (a read-only SQLite connection); the messages go, in the order
they were received, through the configuration's channels and its domains' bookings into a
store of their own in a temporary folder, each at the time it was received (so what a booking
stamps is the same in every run). Nothing is delivered: no destination is built, no worker
runs. What the run leaves is read back as :class:`RunResult`: every outbound payload by
message, destination and output index, each message's status, and the business totals
(:mod:`engine.preview.totals`).
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.channel import Channel
from engine.errors import StoreError
from engine.model import CONFLICT, Inbound, MessageRow
from engine.preview.totals import business_totals
from engine.registry import REGISTRY, Registry
from engine.runtime.processor import Work, outcome_of, record_each
from engine.runtime.store import open_store

BATCH = 128
MESSAGE_FIELDS = [f.name for f in dataclasses.fields(MessageRow)]


@dataclass(frozen=True)
class Stored:
    """One message as the live store holds it: its row and its bytes."""

    row: MessageRow
    raw: bytes

    def __getattr__(self, name: str) -> Any:  # id, channel, received_at... of the row
        return getattr(self.row, name)


@dataclass(frozen=True)
class Output:
    """One payload a run queued for a destination."""

    destination: str
    index: int
    content_type: str
    payload: bytes


@dataclass
class RunResult:
    outputs: dict[tuple[str, str, int], Output] = field(default_factory=dict)
    statuses: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    totals: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)  # channel not in this configuration
    seconds: float = 0.0
    store_path: Path | None = None


def read_stored(
    path: Path,
    *,
    channel: str | None = None,
    since: float | None = None,
    limit: int | None = None,
) -> list[Stored]:
    """The stored messages (oldest first) read through a read-only connection: the live store
    is never written, not even a migration (a ``StoreError`` when it cannot be read)."""
    if not Path(path).exists():
        raise StoreError(f"no store at {path} (expected the live store routes.yaml names)")
    try:
        conn = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open store {path} read-only: {exc}") from exc
    try:
        sql = (
            f"SELECT {', '.join('m.' + c for c in MESSAGE_FIELDS)}, c.data FROM messages m "
            "JOIN contents c ON c.message_id = m.id AND c.stage = 'raw' "
            "WHERE m.status != ?"
        )
        params: list[Any] = [CONFLICT]
        if channel is not None:
            sql += " AND m.channel = ?"
            params.append(channel)
        if since is not None:
            sql += " AND m.received_at >= ?"
            params.append(since)
        sql += " ORDER BY m.received_at, m.rowid"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        rows = conn.execute(sql, params).fetchall()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the messages of store {path}: {exc}") from exc
    finally:
        conn.close()
    # what a domain made itself (a par sweep's requisitions) is made again by the run
    made = tuple(f"{d.name}:" for d in REGISTRY.domains())
    return [
        Stored(MessageRow(*row[:-1]), bytes(row[-1])) for row in rows if not row[2].startswith(made)
    ]


def _channels(project: Any, registry: Registry) -> dict[str, Channel]:
    return {
        name: Channel.of(project, name, registry)
        for name, defn in project.channels.items()
        if defn.config.enabled
    }


def _start_domains(
    store: Any, channels: dict[str, Channel], registry: Registry, now: float
) -> None:
    for domain in registry.domains():
        bindings = {
            name: b for name, ch in channels.items() for b in ch.bindings if b.domain is domain
        }
        if bindings:
            with store.transaction(f"{domain.name} start", durable=False) as tx:
                domain.start(tx, bindings, now)


def _chunks(items: Sequence[Stored], size: int) -> Iterable[Sequence[Stored]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def run_configuration(
    project: Any, messages: Sequence[Stored], workdir: Path, registry: Registry = REGISTRY
) -> RunResult:
    """``messages`` through ``project``'s channels in a new store under ``workdir``."""
    started = time.perf_counter()
    result = RunResult(store_path=Path(workdir) / "preview.db")
    channels = _channels(project, registry)
    store = open_store(result.store_path, registry)
    try:
        _start_domains(store, channels, registry, messages[0].received_at if messages else 0.0)
        for chunk in _chunks(messages, BATCH):
            taken = [m for m in chunk if m.channel in channels]
            for m in chunk:
                if m.channel not in channels:
                    result.skipped[m.channel] = result.skipped.get(m.channel, 0) + 1
            if not taken:
                continue
            store.ingest_batch(
                [
                    Inbound(
                        m.channel,
                        m.source,
                        m.raw,
                        m.content_type,
                        m.received_at,
                        peer=m.peer,
                        control_id=m.control_id,
                        correlation_id=m.correlation_id,
                        message_id=m.id,
                        origin=m.origin,
                    )
                    for m in taken
                ],
                taken[0].received_at,
            )
            outcomes = []
            for m in taken:
                channel = channels[m.channel]
                work = Work(m.id, m.channel, m.correlation_id, m.raw, origin=m.origin)
                processed = channel.process(m.raw, m.id, m.correlation_id, origin=m.origin)
                outcomes.append((outcome_of(work, channel, processed), m.received_at))
            record_each(store, outcomes)
        conn = store._conn()
        result.outputs = _outputs(conn, {m.id for m in messages})
        for mid, status, error in conn.execute("SELECT id, status, error FROM messages"):
            result.statuses[mid] = (status, error)
        result.totals = business_totals(conn)
    finally:
        store.close()
    result.seconds = time.perf_counter() - started
    return result


def _outputs(conn: sqlite3.Connection, stored: set[str]) -> dict[tuple[str, str, int], Output]:
    """Every outbox row by (message, destination, index); a message the run made itself (a par
    sweep's) is named by its channel, source and order, the same in every run."""
    made: dict[str, str] = {}
    for mid, channel, source in conn.execute(
        "SELECT id, channel, source FROM messages ORDER BY rowid"
    ):
        if mid not in stored:
            made[mid] = f"{source}:{channel}:{len(made) + 1}"
    out: dict[tuple[str, str, int], Output] = {}
    for mid, dest, idx, ctype, payload in conn.execute(
        "SELECT message_id, destination, idx, content_type, payload FROM outbox ORDER BY id"
    ):
        out[(made.get(mid, mid), dest, idx)] = Output(dest, idx, ctype, bytes(payload))
    return out
