"""Free TCP ports for tests and their throw-away servers.

A port taken with ``bind(0)`` comes from the kernel's ephemeral range, the same range outgoing
connections take their local ports from: between the moment a test picks it and the moment the
server it starts binds it, a client connection (a PostgreSQL pool, an HTTP call, HAProxy's
checks) or a second ``bind(0)`` can take the same number, and the server then fails with
"Address already in use". These ports come from below that range instead, are checked free, and
are never handed out twice by one process.
"""

from __future__ import annotations

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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, below the ephemeral range, and not
    handed out before by this process."""
    low = _ephemeral_low()
    start = 20000 if low > 21000 else 1024
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
