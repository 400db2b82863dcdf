"""The store-backed :class:`~engine.coordination.Coordination` of several nodes on PostgreSQL.

Every call is one short transaction on the store's writer thread (through the executor, never
on the reactor thread): lease rows and the SFTP upload registry (:mod:`engine.store.leases`).
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer

#: An ``open`` upload row older than this is a dead node's (its client was cut off with it):
#: a starting node sweeps its part file.
STALE_UPLOAD = 24 * 3600.0


def node_name() -> str:
    """This process's name in lease and upload rows: host, pid and a random tag (a restarted
    node is a new holder: it waits for its former self's leases like any other node)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class SharedCoordination:
    """Leases and the upload registry as rows of the shared store."""

    shared = True

    def __init__(self, store: Any, executor: Any, node: str | None = None) -> None:
        self.store = store
        self.executor = executor
        self.node = node or node_name()

    def hold(self, names: Sequence[str], seconds: float) -> defer.Deferred:
        d = self.executor.submit(
            self.store.hold_leases, list(names), self.node, seconds, time.time()
        )
        return d.addCallback(set)

    def release(self, names: Sequence[str]) -> defer.Deferred:
        return self.executor.submit(self.store.drop_leases, list(names), self.node)

    def upload_opened(self, path: str, part: str) -> defer.Deferred:
        return self.executor.submit(self.store.upload_opened, path, part, self.node, time.time())

    def upload_closed(self, path: str, size: int | None, sha256: str | None) -> defer.Deferred:
        return self.executor.submit(
            self.store.upload_closed, path, self.node, size, sha256, time.time()
        )

    def open_parts(self) -> defer.Deferred:
        since = time.time() - STALE_UPLOAD

        def parts(rows: list[dict[str, Any]]) -> set[str]:
            return {
                str(os.path.join(os.path.dirname(r["path"]), r["part"]))
                for r in rows
                if r["state"] == "open"
                and r["part"]
                and r["node"] != self.node
                and r["opened_at"] >= since
            }

        return self.executor.submit(self.store.uploads).addCallback(parts)

    def handed(self, handed: Sequence[tuple[str, str | None]]) -> defer.Deferred:
        return self.executor.submit(self.store.uploads_handed, list(handed), self.node, time.time())
