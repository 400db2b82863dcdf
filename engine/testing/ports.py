"""Free TCP ports for tests and their throw-away servers.

A port taken with ``bind(0)`` comes from the kernel's ephemeral range, the same range outgoing
connections take their local ports from: between the moment a test picks it and the moment the
server it starts binds it, a client connection (a PostgreSQL pool, an HTTP call, HAProxy's
checks) or a second ``bind(0)`` can take the same number, and the server then fails with
"Address already in use". These ports come from below that range instead, are checked free, and
are never handed out twice by one process. Under pytest-xdist each worker draws from its own
slice of that range (``PYTEST_XDIST_WORKER`` gwN of ``PYTEST_XDIST_WORKER_COUNT``), so two
workers never pick the same number between the check and the bind.
"""

from __future__ import annotations

import os
import random
import socket
import threading
from pathlib import Path

_given: set[int] = set()
_lock = threading.Lock()


def _ephemeral_low() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return low


def _worker_slice(start: int, stop: int) -> tuple[int, int]:
    """This pytest-xdist worker's share of [start, stop); the whole range outside xdist."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        return start, stop
    try:
        count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
        index = int(worker.removeprefix("gw"))
    except ValueError:
        return start, stop
    if count <= 1 or not 0 <= index < count:
        return start, stop
    width = (stop - start) // count
    return start + index * width, start + (index + 1) * width


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, below the ephemeral range, and not
    handed out before by this process (nor by another pytest-xdist worker)."""
    low = _ephemeral_low()
    start, low = _worker_slice(20000 if low > 21000 else 1024, low)
    with _lock:
        for _ in range(500):
            port = random.randrange(start, low)
            if port in _given:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _given.add(port)
            return port
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # a crowded machine
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
            _given.add(port)
            return port
