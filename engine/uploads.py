"""Files being written right now by an in-process writer (the SFTP server's open handles).

A drop-folder source never takes a path listed here, however old its mtime: an upload that
pauses longer than ``min_age`` is still not complete until its handle is closed.
"""

from __future__ import annotations

import threading
from pathlib import Path

_lock = threading.Lock()
_open: dict[str, int] = {}


def opened(path: str | Path) -> None:
    key = str(Path(path).resolve())
    with _lock:
        _open[key] = _open.get(key, 0) + 1


def closed(path: str | Path) -> None:
    key = str(Path(path).resolve())
    with _lock:
        n = _open.get(key, 0) - 1
        if n > 0:
            _open[key] = n
        else:
            _open.pop(key, None)


def is_open(path: str | Path) -> bool:
    with _lock:
        return str(Path(path).resolve()) in _open
