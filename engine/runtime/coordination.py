"""The store-backed :class:`~engine.coordination.Coordination` of several nodes on PostgreSQL.

Every call is one short transaction, never on the reactor thread: lease rows and the SFTP
upload registry (:mod:`engine.store.leases`). Taking, renewing and dropping leases run on a
thread of their own (``wharf-leases``, with its own connection to the store), not on the
store's writer: a renewal queued behind the writer's turns under load (ingests, pipeline
results, delivery bookkeeping) could reach the store after the lease ran out and another node
had taken it. The upload registry goes with the writer, ordered with the ingests it records.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer, threads
from twisted.python.threadpool import ThreadPool

from engine.errors import StoreConflict

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

    #: A lease write that met another node's transaction (a deadlock or a serialization
    #: failure: nothing of it was written) is tried this many times in all.
    ATTEMPTS = 3

    def __init__(
        self, store: Any, executor: Any, node: str | None = None, *, reactor: Any = None
    ) -> None:
        self.store = store
        self.executor = executor
        self.node = node or node_name()
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.pool = ThreadPool(1, 1, name="wharf-leases")

    def start(self) -> None:
        self.pool.start()

    def stop(self) -> None:
        """Ends the lease thread (its connection goes back to the store's pool with it)."""
        self.pool.stop()

    def hold(self, names: Sequence[str], seconds: float) -> defer.Deferred:
        """The leases of ``names`` this node holds for ``seconds`` from the moment the row is
        written (not from the call: a write that waited does not shorten the lease it
        records), on the lease thread."""
        names = list(names)
        d = self._on_lease_thread(
            lambda: self.store.hold_leases(names, self.node, seconds, time.time())
        )
        return d.addCallback(set)

    def release(self, names: Sequence[str]) -> defer.Deferred:
        names = list(names)
        return self._on_lease_thread(lambda: self.store.drop_leases(names, self.node))

    def _on_lease_thread(self, write: Any) -> defer.Deferred:
        def attempts() -> Any:
            attempt = 1
            while True:
                try:
                    return write()
                except StoreConflict:
                    if attempt >= self.ATTEMPTS:
                        raise
                    attempt += 1

        return threads.deferToThreadPool(self.reactor, self.pool, attempts)

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
