"""Baselines the benchmarks measure in their own run: the fsync'd-commit ceiling of the disk
the store is on, a bare Twisted MLLP server answering a fixed ACK, and the durable floors.

A *durable floor* is the least a server on Wharf's fixed stack (CPython, Twisted, SQLite in WAL
with ``synchronous=FULL``) can do and still keep the promise Wharf keeps: the answer goes out
only after the message is in an fsync'd commit, and a resent message is not stored twice. It
parses nothing it does not need (MLLP: the frame and MSH-10; FHIR: the JSON and the
fhir.resources validation that decides between 201 and an OperationOutcome), stores one row per
message with one unique index, and group-commits whatever arrived meanwhile. It has no routing,
no pipeline, no indexes for a console, no audit, no metrics. Wharf does all of that too, so a
floor's figure is an upper bound for Wharf on the same machine in the same run: a target above
the floor cannot be met on this stack.
"""

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


DURABLE_MLLP_SERVER = r"""
import queue, sqlite3, sys, threading
from twisted.internet import protocol, reactor
MODE, DB = sys.argv[1], sys.argv[2]  # MODE: "thread" (a writer thread) or "reactor"
HEAD = (b"\x0bMSH|^~\\&|WHARF|GENHOSP|POU|GENHOSP|20260101000000||ACK^P03^ACK|A1|P|2.5.1\r"
        b"MSA|AA|")
conn = sqlite3.connect(DB, isolation_level=None, check_same_thread=False)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("PRAGMA synchronous=FULL")
conn.execute("CREATE TABLE m (id INTEGER PRIMARY KEY, control TEXT UNIQUE, body BLOB)")
def commit(items):
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("INSERT OR IGNORE INTO m (control, body) VALUES (?, ?)",
                     [(control, body) for _, control, body in items])
    conn.execute("COMMIT")
def answer(items):
    for proto, control, _ in items:
        proto.transport.write(HEAD + control + b"\r\x1c\x0d")
inbox = queue.SimpleQueue()
def writer():  # group commit: everything queued while the last commit ran
    while True:
        items = [inbox.get()]
        while not inbox.empty():
            items.append(inbox.get())
        commit(items)
        reactor.callFromThread(answer, items)
pending = []
def turn_end():  # MODE reactor: one commit at the end of the reactor's turn, no thread hop
    items = pending[:]
    del pending[:]
    commit(items)
    answer(items)
class Floor(protocol.Protocol):
    def connectionMade(self):
        self.buf = b""
    def dataReceived(self, data):
        self.buf += data
        while True:
            end = self.buf.find(b"\x1c\x0d")
            if end < 0:
                return
            frame, self.buf = self.buf[1:end], self.buf[end + 2:]
            control = frame.split(b"\r", 1)[0].split(b"|")[9]
            if MODE == "thread":
                inbox.put((self, control, frame))
            else:
                if not pending:
                    reactor.callLater(0, turn_end)
                pending.append((self, control, frame))
if MODE == "thread":
    threading.Thread(target=writer, daemon=True).start()
port = reactor.listenTCP(0, protocol.Factory.forProtocol(Floor), interface="127.0.0.1")
print(port.getHost().port, flush=True)
reactor.run()
"""


DURABLE_FHIR_SERVER = r"""
import hashlib, hmac, json, queue, sqlite3, sys, threading
from fhir.resources.supplydelivery import SupplyDelivery
from pydantic import ValidationError
from twisted.internet import reactor
from twisted.web import resource, server
PORT, DB, TOKEN_SHA256 = int(sys.argv[1]), sys.argv[2], sys.argv[3]
conn = sqlite3.connect(DB, isolation_level=None, check_same_thread=False)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("PRAGMA synchronous=FULL")
conn.execute("CREATE TABLE r (id INTEGER PRIMARY KEY, sha256 TEXT UNIQUE, body BLOB)")
inbox = queue.SimpleQueue()
def answer(items):
    for request, rowid in items:
        request.setResponseCode(201)
        request.setHeader(b"content-type", b"application/fhir+json")
        request.setHeader(b"location", b"/fhir/R5/SupplyDelivery/%d/_history/1" % rowid)
        body = b'{"resourceType":"SupplyDelivery","id":"%d"}' % rowid
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()
def writer():  # group commit: everything queued while the last commit ran
    while True:
        items = [inbox.get()]
        while not inbox.empty():
            items.append(inbox.get())
        conn.execute("BEGIN IMMEDIATE")
        done = []
        for request, digest, body in items:
            cur = conn.execute("INSERT OR IGNORE INTO r (sha256, body) VALUES (?, ?)",
                               (digest, body))
            done.append((request, cur.lastrowid))
        conn.execute("COMMIT")
        reactor.callFromThread(answer, done)
def outcome(request, code, text):
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/fhir+json")
    return json.dumps({"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "invalid", "diagnostics": text}]}).encode()
class Floor(resource.Resource):
    isLeaf = True
    def render_POST(self, request):
        token = (request.getHeader(b"authorization") or b"").removeprefix(b"Bearer ")
        if not hmac.compare_digest(hashlib.sha256(token).hexdigest(), TOKEN_SHA256):
            return outcome(request, 401, "a bearer token is required")
        body = request.content.read()
        try:
            SupplyDelivery.model_validate(json.loads(body))
        except (ValueError, ValidationError) as exc:
            return outcome(request, 400, str(exc)[:500])
        inbox.put((request, hashlib.sha256(body).hexdigest(), body))
        return server.NOT_DONE_YET
threading.Thread(target=writer, daemon=True).start()
site = server.Site(Floor())
site.log = lambda request: None
reactor.listenTCP(PORT, site, interface="127.0.0.1")
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


def start_durable_mllp(folder: Path, mode: str = "thread") -> tuple[subprocess.Popen, int]:
    """The durable MLLP floor (subprocess, its database under ``folder``): each frame's MSH-10
    stored with the frame (one unique index) in a group commit with ``synchronous=FULL``, the
    ACK (echoing MSH-10) written after the commit. ``mode`` ``thread``: the commits run on a
    writer thread, as Wharf's store writes do (its style keeps them off the reactor thread);
    ``reactor``: on the reactor thread at the end of its turn, no thread hop either way (the
    least latency Python can give a durable ACK; a reactor blocked in fsync is what Wharf's
    design avoids)."""
    if mode not in ("thread", "reactor"):
        raise ValueError(f"mode must be 'thread' or 'reactor' (got {mode!r})")
    db = Path(tempfile.mkdtemp(dir=folder, prefix=f"floor-{mode}-")) / "floor.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", DURABLE_MLLP_SERVER, mode, str(db)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def start_durable_fhir(folder: Path, port: int, token_sha256: str) -> subprocess.Popen:
    """The durable FHIR floor (subprocess on ``port``, its database under ``folder``): the
    bearer token checked against its sha256, the body parsed and validated as an R5
    SupplyDelivery by fhir.resources (what decides between a 201 and an OperationOutcome),
    stored with its sha256 (one unique index) in a group commit on a writer thread with
    ``synchronous=FULL``, the 201 sent after the commit."""
    db = Path(tempfile.mkdtemp(dir=folder, prefix="floor-fhir-")) / "floor.db"
    return subprocess.Popen(
        [sys.executable, "-c", DURABLE_FHIR_SERVER, str(port), str(db), token_sha256],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )


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
