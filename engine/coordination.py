"""What nodes sharing one store agree on: who picks up a folder now, and the SFTP uploads.

Components reach it as ``resources.coordination`` (the drop-folder and SFTP pickups) or are
handed it (the SFTP server). One process on its own store (SQLite) gets :class:`Alone`: every
lease is held and nothing is registered. Several nodes on PostgreSQL get the runtime's
store-backed one (:class:`engine.runtime.coordination.SharedCoordination`): leases and the
upload registry are rows of the shared store (:mod:`engine.store.leases`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from twisted.internet import defer


class Coordination(Protocol):
    """Leases for one-at-a-time pickups and the SFTP server's upload registry. Each call
    returns a Deferred."""

    #: Whether other nodes may share the folders (False: :class:`Alone`).
    shared: bool
    #: This node's name in lease and upload rows.
    node: str

    def hold(self, names: Sequence[str], seconds: float) -> defer.Deferred:
        """Fires with the set of ``names`` this node holds for the next ``seconds``."""

    def release(self, names: Sequence[str]) -> defer.Deferred:
        """Give up this node's leases on ``names`` (stopping)."""

    def upload_opened(self, path: str, part: str) -> defer.Deferred:
        """This node writes ``path`` under the hidden name ``part``."""

    def upload_closed(self, path: str, size: int | None, sha256: str | None) -> defer.Deferred:
        """This node's upload of ``path`` is complete (``size``), or aborted (None)."""

    def open_parts(self) -> defer.Deferred:
        """Fires with the part paths other nodes are writing now (left by a start-up sweep)."""

    def handed(self, handed: Sequence[tuple[str, str | None]]) -> defer.Deferred:
        """Each ``(path, message_id)`` was stored by this node's pickup."""


class Alone:
    """One process on its own store: every lease is this node's, nothing is registered."""

    shared = False
    node = "local"

    def hold(self, names: Sequence[str], seconds: float) -> defer.Deferred:
        return defer.succeed(set(names))

    def release(self, names: Sequence[str]) -> defer.Deferred:
        return defer.succeed(None)

    def upload_opened(self, path: str, part: str) -> defer.Deferred:
        return defer.succeed(None)

    def upload_closed(self, path: str, size: int | None, sha256: str | None) -> defer.Deferred:
        return defer.succeed(None)

    def open_parts(self) -> defer.Deferred:
        return defer.succeed(set())

    def handed(self, handed: Sequence[tuple[str, str | None]]) -> defer.Deferred:
        return defer.succeed(None)


class Leases:
    """The leases one pickup holds: renewed when half of their time is gone (at a poll, or by
    :meth:`renew`), so that a node holding a folder writes a row every few seconds, not at
    every poll."""

    def __init__(self, coordination: Coordination, seconds: float, clock: Any) -> None:
        self.coordination = coordination
        self.seconds = seconds
        self.clock = clock
        self._until: dict[str, float] = {}

    async def held(self, names: Sequence[str]) -> set[str]:
        """Which of ``names`` this node may pick up from now."""
        if not self.coordination.shared:
            return set(names)
        now = self.clock.seconds()
        fresh = {n for n in names if self._until.get(n, 0.0) - now > self.seconds / 2}
        stale = [n for n in names if n not in fresh]
        return fresh | (await self._hold(stale) if stale else set())

    async def renew(self) -> None:
        """Renew the leases held now (a timer of their own calls this at a third of their time,
        so that a poll busy with many files does not let them run out under it)."""
        if self._until and self.coordination.shared:
            await self._hold(list(self._until))

    async def _hold(self, names: list[str]) -> set[str]:
        now = self.clock.seconds()
        got = set(await self.coordination.hold(names, self.seconds))
        for name in names:
            if name in got:
                self._until[name] = now + self.seconds
            else:
                self._until.pop(name, None)
        return got

    async def release(self) -> None:
        names, self._until = list(self._until), {}
        if names and self.coordination.shared:
            await self.coordination.release(names)
