"""Baselines the benchmarks measure in their own run: the fsync'd-commit ceiling of the disk
the store is on, and a bare Twisted MLLP server answering a fixed ACK."""

from __future__ import annotations

import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BARE_MLLP_SERVER = r"""
import sys
from twisted.internet import protocol, reactor
ACK = (b"\x0bMSH|^~\\&|WHARF|GENHOSP|POU|GENHOSP|20260101000000||ACK^P03^ACK|A1|P|2.5.1\r"
       b"MSA|AA|X\r\x1c\x0d")
class Bare(protocol.Protocol):
    def connectionMade(self):
        self.buf = b""
    def dataReceived(self, data):
        self.buf += data
        while True:
            end = self.buf.find(b"\x1c\x0d")
            if end < 0:
                return
            self.buf = self.buf[end + 2:]
            self.transport.write(ACK)
f = protocol.Factory.forProtocol(Bare)
port = reactor.listenTCP(0, f, interface="127.0.0.1")
print(port.getHost().port, flush=True)
reactor.run()
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_bare_mllp() -> tuple[subprocess.Popen, int]:
    """A bare Twisted MLLP server (subprocess) that answers every frame with a fixed ACK."""
    proc = subprocess.Popen(
        [sys.executable, "-c", BARE_MLLP_SERVER], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def commit_ceiling(folder: Path, seconds: float = 2.0) -> tuple[float, float]:
    """Sequential SQLite commits (WAL, ``synchronous=FULL``, one small row each) in a file
    under ``folder`` for ``seconds``: (commits per second, median ms per commit). This is the
    most a durable ACK can do for one sequential sender on this disk."""
    with tempfile.TemporaryDirectory(dir=folder, prefix="ceiling-") as tmp:
        conn = sqlite3.connect(Path(tmp) / "ceiling.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
        body = b"x" * 600  # about one DFT^P03
        took: list[float] = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (body) VALUES (?)", (body,))
            conn.execute("COMMIT")
            took.append(time.perf_counter() - t0)
        conn.close()
    return len(took) / sum(took), statistics.median(took) * 1000
