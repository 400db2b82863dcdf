"""MLLP benchmark: durable ``after_store`` ACKs from Wharf against a bare Twisted MLLP server.

N concurrent senders (default 1, 8, 32) each send one DFT^P03 and wait for its ACK before the
next, for a fixed time. The same load generator drives, in the same run:

* baseline: a bare Twisted MLLP server (subprocess) that returns a fixed ACK without parsing
  or storing anything;
* floor and floor/rt: the durable floors (``baselines.DURABLE_MLLP_SERVER``): the least a
  CPython + Twisted + SQLite server can do for a durable ACK (MSH-10 and the frame in a group
  commit with one unique index, the ACK after the fsync), its commits on a writer thread
  (``floor``, as Wharf's are) or on the reactor thread (``floor/rt``, no thread hop);
* wharf: ``wharf run`` (subprocess) with an MLLP channel answering AA after the group commit
  (SQLite WAL, synchronous=FULL), the pipeline then marking each message processed.

It prints messages per second, p50/p99 ACK latency, each server's rate as a ratio of the bare
server's and Wharf's as a share of the floor's. Absolute figures vary on shared machines; the
ratios are the figures to compare. A floor is an upper bound for Wharf: a target above it
cannot be met on this stack.

    python bench/mllp_ack.py [--seconds 5] [--senders 1,8,32]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from twisted.internet import defer, protocol, reactor, task

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baselines import commit_ceiling, cpu_seconds, start_bare_mllp, start_durable_mllp

ROOT = Path(__file__).resolve().parents[1]
SB, EB = b"\x0b", b"\x1c\x0d"

CHANNEL = """\
description: MLLP benchmark channel (durable ACK after the group commit)
source:
  mllp: {{listen: "tcp:{port}:interface=127.0.0.1", max_connections: 1000}}
codec: {{hl7v2: {{}}}}
respond_from: after_store
"""


def message(sender: int, seq: int) -> bytes:
    text = (
        "MSH|^~\\&|POU_CABINET|GENHOSP|WHARF|GENHOSP|20260115103000||DFT^P03^DFT_P03|"
        f"B{os.getpid()}-{sender}-{seq}|P|2.5.1\r"
        "EVN|P03|20260115103000\r"
        "PID|1||MRN12345^^^GENHOSP^MR||DOE^JANE||19600101|F\r"
        "PV1|1|O|OR^OR05^01^GENHOSP||||||||||||||||ENC-998877^^^GENHOSP^VN\r"
        f"FT1|1|CU-{sender}-{seq}||20260115093000|20260115103000|CG|278000123^BONE SCREW^99CDM"
        "|||2||||||OR^OR05^01^GENHOSP\r"
    )
    return SB + text.encode() + EB


class Sender(protocol.Protocol):
    """Sends one message, waits for its ACK frame, sends the next, until the deadline."""

    def __init__(self, ident: int, deadline: float, latencies: list[float], done: defer.Deferred):
        self.ident, self.deadline, self.latencies, self.done = ident, deadline, latencies, done
        self.seq = 0
        self.buf = b""

    def connectionMade(self) -> None:
        self.send()

    def send(self) -> None:
        self.seq += 1
        self.sent_at = time.perf_counter()
        self.transport.write(message(self.ident, self.seq))

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        while EB in self.buf:
            frame, _, self.buf = self.buf.partition(EB)
            if b"MSA|AA" not in frame and b"MSA|CA" not in frame:
                raise RuntimeError(f"not an AA: {frame[:200]!r}")
            self.latencies.append(time.perf_counter() - self.sent_at)
            if time.perf_counter() < self.deadline:
                self.send()
            else:
                self.transport.loseConnection()

    def connectionLost(self, reason: object) -> None:
        if not self.done.called:
            self.done.callback(None)


async def load(port: int, senders: int, seconds: float) -> tuple[float, list[float]]:
    latencies: list[float] = []
    start = time.perf_counter()
    deadline = start + seconds
    waits = []
    for i in range(senders):
        done: defer.Deferred = defer.Deferred()
        creator = protocol.ClientCreator(reactor, Sender, i, deadline, latencies, done)
        await creator.connectTCP("127.0.0.1", port)
        waits.append(done)
    await defer.gatherResults(waits)
    return time.perf_counter() - start, latencies


def wait_port(port: int, timeout: float = 30.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_wharf(tmp: Path) -> tuple[subprocess.Popen, int]:
    project = tmp / "project"
    (project / "channels").mkdir(parents=True)
    port = free_port()
    (project / "routes.yaml").write_text("store: var/wharf.db\nreload_interval: 0\n")
    (project / "channels/mllp_bench.yaml").write_text(CHANNEL.format(port=port))
    wharf = Path(sys.executable).parent / "wharf"
    log = open(tmp / "wharf.log", "w")
    env = {**os.environ, "WHARF_LOG_LEVEL": "warn"}
    cmd = [str(wharf), "--root", str(project), "run"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)
    wait_port(port)
    return proc, port


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="wharf-bench-"))
    if args.bare_only:
        bare, bare_port = start_bare_mllp()
        try:
            elapsed, lat = await load(bare_port, args.senders[0], args.seconds)
            print(f"{len(lat) / elapsed:.0f}")
        finally:
            bare.send_signal(signal.SIGTERM)
            bare.wait(timeout=30)
            shutil.rmtree(tmp, ignore_errors=True)
        return
    ceiling, commit_ms = commit_ceiling(tmp)
    bare, bare_port = start_bare_mllp()
    floor, floor_port = start_durable_mllp(tmp, "thread")
    floor_rt, floor_rt_port = start_durable_mllp(tmp, "reactor")
    wharf, wharf_port = start_wharf(tmp)
    servers = (
        ("bare", bare_port, bare.pid),
        ("floor", floor_port, floor.pid),
        ("floor/rt", floor_rt_port, floor_rt.pid),
        ("wharf", wharf_port, wharf.pid),
    )
    try:
        print(f"MLLP ACK benchmark, {args.seconds:g}s per run, 2 cores shared by client and server")
        print(
            f"commit ceiling (SQLite WAL, synchronous=FULL, one row per commit, same disk): "
            f"{ceiling:,.0f} commits/s, {commit_ms:.2f} ms per commit"
        )
        print(
            f"{'senders':>7} {'server':>8} {'msg/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'ratio':>7} "
            f"{'of floor':>8} {'cpu ms/msg':>10}"
        )
        sequential: dict[str, tuple[float, float]] = {}
        for n in args.senders:
            rates = {}
            for name, port, pid in servers:
                cpu0 = cpu_seconds(pid)
                elapsed, lat = await load(port, n, args.seconds)
                cpu_ms = (cpu_seconds(pid) - cpu0) * 1000 / max(1, len(lat))
                rates[name] = len(lat) / elapsed
                ratio = f"{rates[name] / rates['bare']:.2f}" if name != "bare" else ""
                share = f"{rates['wharf'] / rates['floor']:.2f}" if name == "wharf" else ""
                if n == 1:
                    sequential[name] = (rates[name], pct(lat, 0.5))
                print(
                    f"{n:>7} {name:>8} {rates[name]:>9.0f} {pct(lat, 0.5):>8.2f} "
                    f"{pct(lat, 0.99):>8.2f} {ratio:>7} {share:>8} {cpu_ms:>10.3f}",
                    flush=True,
                )
        print(
            "ratio = msg/s / bare msg/s in the same run (durable ACK vs fixed ACK); of floor = "
            "wharf msg/s / floor msg/s"
        )
        print(
            "floor = the least a durable ACK costs on CPython + Twisted + SQLite (MSH-10 and the "
            "frame in a group commit, one unique index, the ACK after the fsync; commits on a "
            "writer thread); floor/rt = the same committing on the reactor thread"
        )
        print(
            "cpu ms/msg = the server process's CPU time (all threads) per message: the figure "
            "that holds when the machine is shared"
        )
        for name in ("wharf", "floor", "floor/rt"):
            if name in sequential:
                rate, p50 = sequential[name]
                print(
                    f"sequential sender, {name}: p50 {p50:.2f} ms = {p50 / commit_ms:.1f} fsync'd "
                    f"commits (target <= 2); {rate:,.0f} msg/s = {rate / ceiling:.2f} of the "
                    "commit ceiling (target >= 0.5)"
                )
    finally:
        for proc in (bare, floor, floor_rt, wharf):
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--senders", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    p.add_argument("--keep", action="store_true")
    p.add_argument(
        "--bare-only",
        action="store_true",
        help="print only the bare server's msg/s at the first --senders count (a reference for "
        "the other benchmarks)",
    )
    args = p.parse_args()
    task.react(lambda _r: defer.ensureDeferred(main(args)))
