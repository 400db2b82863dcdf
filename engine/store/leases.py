"""Leases of one-at-a-time jobs and the SFTP server's upload registry (a part of the store).

Several nodes on one PostgreSQL store share folders and remotes: the drop-folder pickup of one
folder, the poll of one partner's SFTP server. A job that spans file I/O and several ingest
commits cannot hold an advisory transaction lock (:meth:`PgTransaction.try_lock`) for its
length, so it holds a lease row (``job_leases``): a node renews its own lease; another node
takes it only once it ran out, and the row then records whose lease it took and when that one
had run out (``taken_from``, ``taken_from_until``): a takeover is seen in the store, not
guessed from logs.

``sftp_uploads`` is the SFTP server's upload registry, one row per file name in a partner's
folder: ``open`` while a node writes it (under its hidden part name), ``complete`` once the
client closed it and it appeared under its name, ``handed`` once a pickup stored it (which
node, which message). A node starting up sweeps only the part files no live upload of another
node holds.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

#: How long the upload registry keeps a row whose file was handed over without a message (a
#: pickup that stored nothing of it) and an ``open`` row no node closed (its node died; a node
#: starting up swept its part file once it was a day old), and how long the node registry
#: keeps a node not seen since (the console lists it as stopped until then).
REGISTRY_KEEP = 30 * 86400.0

_UPLOAD_COLUMNS = (
    "path",
    "part",
    "node",
    "state",
    "size",
    "sha256",
    "opened_at",
    "closed_at",
    "handed_at",
    "handed_by",
    "message_id",
)


class LeaseStore:
    """Leases and the upload registry; mixed into :class:`~engine.store.sqlite.SqliteStore`."""

    # (SqliteStore's: a read on this thread's connection, a write transaction)
    _query: Callable[..., list[sqlite3.Row]]
    transaction: Callable[..., AbstractContextManager[Any]]

    # ------------------------------------------------------------------ leases

    def hold_leases(
        self, names: Sequence[str], holder: str, seconds: float, now: float
    ) -> list[str]:
        """Take or renew the lease on each of ``names`` for ``holder`` until ``now + seconds``;
        returns the names ``holder`` holds now (another holder's lease that has not run out
        stays theirs)."""
        held = []
        with self.transaction("hold_leases", durable=False) as tx:
            for name in sorted(set(names)):
                row = tx.connection.execute(
                    "INSERT INTO job_leases (name, holder, since, renewed_at, until) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                    "taken_from = CASE WHEN job_leases.holder = excluded.holder "
                    "THEN job_leases.taken_from ELSE job_leases.holder END, "
                    "taken_from_until = CASE WHEN job_leases.holder = excluded.holder "
                    "THEN job_leases.taken_from_until ELSE job_leases.until END, "
                    "since = CASE WHEN job_leases.holder = excluded.holder "
                    "THEN job_leases.since ELSE excluded.since END, "
                    "holder = excluded.holder, renewed_at = excluded.renewed_at, "
                    "until = excluded.until "
                    "WHERE job_leases.holder = excluded.holder "
                    "OR job_leases.until < excluded.since "
                    "RETURNING holder",
                    (name, holder, now, now, now + seconds),
                ).fetchone()
                if row is not None:
                    held.append(name)
        return held

    def drop_leases(self, names: Sequence[str], holder: str) -> int:
        """Give up ``holder``'s leases on ``names`` (a node stopping: the next one need not
        wait for them to run out); returns how many were dropped."""
        dropped = 0
        with self.transaction("drop_leases", durable=False) as tx:
            for name in sorted(set(names)):
                cur = tx.connection.execute(
                    "DELETE FROM job_leases WHERE name = ? AND holder = ?", (name, holder)
                )
                dropped += cur.rowcount
        return dropped

    def leases(self, prefix: str = "") -> list[dict[str, Any]]:
        """The lease rows whose name starts with ``prefix``, by name."""
        cols = ("name", "holder", "since", "renewed_at", "until", "taken_from", "taken_from_until")
        rows = self._query(
            "leases",
            f"SELECT {', '.join(cols)} FROM job_leases WHERE substr(name, 1, ?) = ? ORDER BY name",
            (len(prefix), prefix),
        )
        return [dict(zip(cols, row, strict=True)) for row in rows]

    # ------------------------------------------------------------------ the upload registry

    def upload_opened(self, path: str, part: str, node: str, now: float) -> None:
        """``node`` writes ``path`` under the hidden name ``part`` (a new upload of a name
        handed over before replaces that row)."""
        with self.transaction("upload_opened", durable=False) as tx:
            tx.connection.execute(
                "INSERT INTO sftp_uploads (path, part, node, state, opened_at) "
                "VALUES (?, ?, ?, 'open', ?) ON CONFLICT (path) DO UPDATE SET "
                "part = excluded.part, node = excluded.node, state = 'open', size = NULL, "
                "sha256 = NULL, opened_at = excluded.opened_at, closed_at = NULL, "
                "handed_at = NULL, handed_by = NULL, message_id = NULL",
                (path, part, node, now),
            )

    def upload_closed(
        self, path: str, node: str, size: int | None, sha256: str | None, now: float
    ) -> None:
        """The upload of ``path`` by ``node`` ended: complete (``size`` and ``sha256``) or,
        with ``size`` None, aborted (its row goes)."""
        with self.transaction("upload_closed") as tx:
            if size is None:
                tx.connection.execute(
                    "DELETE FROM sftp_uploads WHERE path = ? AND node = ? AND state = 'open'",
                    (path, node),
                )
            else:
                tx.connection.execute(
                    "UPDATE sftp_uploads SET state = 'complete', size = ?, sha256 = ?, "
                    "closed_at = ? WHERE path = ? AND node = ? AND state = 'open'",
                    (size, sha256, now, path, node),
                )

    def uploads_handed(
        self, handed: Sequence[tuple[str, str | None]], node: str, now: float
    ) -> None:
        """Each ``(path, message_id)`` was stored by ``node``'s pickup and moved away."""
        with self.transaction("uploads_handed", durable=False) as tx:
            for path, message_id in handed:
                tx.connection.execute(
                    "INSERT INTO sftp_uploads (path, node, state, opened_at, handed_at, "
                    "handed_by, message_id) VALUES (?, ?, 'handed', ?, ?, ?, ?) "
                    "ON CONFLICT (path) DO UPDATE SET state = 'handed', "
                    "handed_at = excluded.handed_at, handed_by = excluded.handed_by, "
                    "message_id = excluded.message_id",
                    (path, node, now, now, node, message_id),
                )

    def prune_registries(self, now: float, keep: float = REGISTRY_KEEP) -> dict[str, int]:
        """What the upload and node registries no longer need (``wharf prune``); how many rows
        of each went: an upload handed over whose message is gone (pruned: the row traced the
        file to it), one handed over without a message or left ``open`` more than ``keep``
        ago, and a node not seen for more than ``keep``. Rows of live uploads, of files not
        yet handed over and of nodes seen since stay."""
        before = now - keep
        with self.transaction("prune_registries", durable=False) as tx:
            uploads = tx.connection.execute(
                "DELETE FROM sftp_uploads WHERE (state = 'handed' AND message_id IS NOT NULL "
                "AND NOT EXISTS (SELECT 1 FROM messages WHERE messages.id = "
                "sftp_uploads.message_id)) OR (state = 'handed' AND message_id IS NULL "
                "AND handed_at < ?) OR (state = 'open' AND opened_at < ?)",
                (before, before),
            ).rowcount
            nodes = tx.connection.execute(
                "DELETE FROM nodes WHERE last_seen < ?", (before,)
            ).rowcount
        return {"uploads": uploads, "nodes": nodes}

    def uploads(self, prefix: str = "") -> list[dict[str, Any]]:
        """The upload registry's rows whose path starts with ``prefix``, by path."""
        rows = self._query(
            "uploads",
            f"SELECT {', '.join(_UPLOAD_COLUMNS)} FROM sftp_uploads "
            "WHERE substr(path, 1, ?) = ? ORDER BY path",
            (len(prefix), prefix),
        )
        return [dict(zip(_UPLOAD_COLUMNS, row, strict=True)) for row in rows]
