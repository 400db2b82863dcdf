"""Files being written right now by an in-process writer (the SFTP server's open handles).

A drop-folder source never takes a path listed here, however old its mtime: an upload that
pauses longer than ``min_age`` is still not complete until its handle is closed.

One :class:`OpenUploads` lives as long as the runtime; the SFTP server writes to it and the
drop-folder sources read it, both through the :class:`~engine.resources.Resources` they are
handed (never a module global, so two engines in one process do not see each other's files).
"""

from __future__ import annotations

import threading
from pathlib import Path


class OpenUploads:
    """A thread-safe multiset of resolved paths that are open for writing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}

    @staticmethod
    def _key(path: str | Path) -> str:
        return str(Path(path).resolve())

    def opened(self, path: str | Path) -> None:
        key = self._key(path)
        with self._lock:
            self._open[key] = self._open.get(key, 0) + 1

    def closed(self, path: str | Path) -> None:
        key = self._key(path)
        with self._lock:
            n = self._open.get(key, 0) - 1
            if n > 0:
                self._open[key] = n
            else:
                self._open.pop(key, None)

    def is_open(self, path: str | Path) -> bool:
        key = self._key(path)
        with self._lock:
            return key in self._open

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)
