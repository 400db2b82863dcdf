"""Ledger benchmark: consumption events per second end to end, against the core pipeline.

Usage → charge → replenishment: ``wharf run`` (only the shipped ``usage_ledger`` channel) takes
DFT^P03 messages with 3 FT1 lines over MLLP from 8 senders (each waits for its ACK), books 3
events per message in the ledger, and delivers ERP issues (HTTP) and charges (MLLP) to the
sandbox (``wharf sandbox``), which answers on the same machine. The clock stops when every
delivery is done. Baseline, measured in the same run: the core pipeline benchmark
(``bench/dropfolder_to_file.py``: drop folder → codec → transform → file) on as many messages.

    python bench/ledger_flow.py [--messages 600]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import dropfolder_to_file as core  # noqa: E402
from baselines import commit_ceiling, cpu_seconds  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SB, EB = b"\x0b", b"\x1c\x0d"
KNEE = (ROOT / "samples/hl7/dft_p03_knee_and_sutures.hl7").read_bytes()
GAUZE_FT1 = b"FT1|3|CU-g||20260115094500|20260115113000|CG|272000022^GAUZE^99CDM|||10||||||OR^OR02^01^GENHOSP"


def message(n: int) -> bytes:
    raw = (
        KNEE.replace(b"POU-000124", f"LB{os.getpid()}-{n}".encode())
        .replace(b"CU-7f3a9d", f"LB-{n}-A".encode())
        .replace(b"CU-7f3a9e", f"LB-{n}-B".encode())
        .replace(b"ENC-112233", f"ENC-LB{n % 97}".encode())  # many patients, as in a day's work
    )
    return raw + GAUZE_FT1.replace(b"CU-g", f"LB-{n}-C".encode()) + b"\r"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30) -> None:
    end = time.time() + timeout
    while time.time() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def send_all(port: int, ids: list[int], latencies: list[float]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        for n in ids:
            sent = time.perf_counter()
            s.sendall(SB + message(n) + EB)
            buf = b""
            while EB not in buf:
                buf += s.recv(65536)
            latencies.append(time.perf_counter() - sent)
            if b"MSA|AA" not in buf and b"MSA|CA" not in buf:
                raise RuntimeError(f"not accepted: {buf[:200]!r}")


def pending(db: Path) -> tuple[int, int]:
    conn = sqlite3.connect(db)
    try:
        open_msgs = conn.execute(
            "SELECT COUNT(*) FROM messages WHERE status IN ('received', 'queued')"
        ).fetchone()[0]
        open_out = conn.execute(
            "SELECT COUNT(*) FROM outbox WHERE status IN ('pending', 'inflight')"
        ).fetchone()[0]
        events = conn.execute("SELECT COUNT(*) FROM consumption_events").fetchone()[0]
    finally:
        conn.close()
    return open_msgs + open_out, events


def run_ledger(tmp: Path, n: int, senders: int) -> tuple[float, int, list[float], float]:
    """(seconds end to end, events, ACK latencies, the engine's CPU seconds meanwhile)."""
    project = tmp / "ledger"
    (project / "channels").mkdir(parents=True)
    shutil.copy(ROOT / "routes.yaml", project / "routes.yaml")
    shutil.copytree(ROOT / "mappings", project / "mappings")
    shutil.copytree(ROOT / "samples", project / "samples")
    shutil.copy(ROOT / "channels/usage_ledger.yaml", project / "channels/usage_ledger.yaml")
    http, billing, mllp = free_port(), free_port(), free_port()
    db = tmp / "wharf.db"
    env = {
        **os.environ,
        "ERP_URL": f"http://127.0.0.1:{http}",
        "BILLING_PORT": str(billing),
        "LEDGER_MLLP_PORT": str(mllp),
        "WHARF_DB": str(db),
        "WHARF_LOG_LEVEL": "warn",
    }
    wharf = Path(sys.executable).parent / "wharf"
    log = open(tmp / "ledger.log", "w")
    sandbox = subprocess.Popen(
        [
            str(wharf),
            "sandbox",
            "--http-port",
            str(http),
            "--mllp-port",
            str(billing),
            "--state",
            str(tmp / "sandbox.db"),
            "--seed",
            str(project / "mappings/onhand.csv"),
        ],
        stdout=log,
        stderr=log,
        env=env,
    )
    engine = subprocess.Popen(
        [str(wharf), "--root", str(project), "run"], stdout=log, stderr=log, env=env
    )
    try:
        wait_port(http)
        wait_port(mllp)
        t0 = time.perf_counter()
        cpu0 = cpu_seconds(engine.pid)
        ids = list(range(n))
        latencies: list[float] = []
        threads = [
            threading.Thread(target=send_all, args=(mllp, ids[i::senders], latencies))
            for i in range(senders)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        while True:
            left, events = pending(db)
            if left == 0 and events >= 3 * n:
                break
            if time.perf_counter() - t0 > 300:
                raise RuntimeError(f"timed out: {left} open, {events} events")
            time.sleep(0.05)
        elapsed = time.perf_counter() - t0
        return elapsed, events, latencies, cpu_seconds(engine.pid) - cpu0
    except Exception:
        log.flush()
        print((tmp / "ledger.log").read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        for proc in (engine, sandbox):
            proc.terminate()
            proc.wait(timeout=30)
        log.close()


def run_core(tmp: Path, n: int) -> None:
    """Print the core pipeline's messages/s (task.react ends the process when done)."""
    from twisted.internet import defer, task

    root = tmp / "core"
    root.mkdir()
    core.build_project(root)
    core.write_messages(root / "inbox", n)
    os.environ["WHARF_DB"] = str(root / "var/wharf.db")

    def body(reactor):
        async def go() -> None:
            result = await core.run_wharf(reactor, root, n, 300)
            print(f"{n / result['elapsed']:.1f}", flush=True)

        return defer.ensureDeferred(go())

    task.react(body)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--messages", type=int, default=600)
    p.add_argument("--senders", type=int, default=8)
    p.add_argument("--core-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="wharf-ledger-bench-"))
    try:
        if args.core_only:
            run_core(tmp, args.messages)
            return 0
        ceiling, commit_ms = commit_ceiling(tmp)
        elapsed, events, latencies, cpu = run_ledger(tmp, args.messages, args.senders)
        # bare Twisted MLLP at 8 connections, the same load generator as bench/mllp_ack.py
        bare = subprocess.run(
            [
                sys.executable,
                str(HERE / "mllp_ack.py"),
                "--bare-only",
                "--senders",
                "8",
                "--seconds",
                "3",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        bare_rate = float(bare.stdout.strip().splitlines()[-1])
        # The core benchmark runs its own reactor: run it in a child process of this run.
        out = (
            subprocess.run(
                [sys.executable, __file__, "--core-only", "--messages", str(args.messages)],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        core_rate = float(out)
        rate = args.messages / elapsed
        print(
            f"ledger flow: {args.messages} DFT^P03 x 3 FT1, {args.senders} MLLP senders, sandbox answering"
        )
        print(
            f"  {rate:8.1f} messages/s  {events / elapsed:8.1f} events/s  ({elapsed:.2f}s end to end)"
        )
        print(
            f"core pipeline (drop folder -> transform -> file), same run: {core_rate:8.1f} messages/s"
        )
        print(f"ratio ledger / core: {rate / core_rate:.2f}")
        print(
            f"engine CPU (all threads): {cpu * 1000 / args.messages:.2f} ms per message, "
            f"{cpu * 1000 / max(1, events):.2f} ms per event (holds when the machine is shared)"
        )
        p50 = statistics.median(latencies) * 1000
        p99 = sorted(latencies)[int(0.99 * (len(latencies) - 1))] * 1000
        print(
            f"ACK p50 {p50:.2f} ms, p99 {p99:.2f} ms = {p50 / commit_ms:.1f} fsync'd commits "
            f"(ceiling {ceiling:,.0f} commits/s, {commit_ms:.2f} ms each, same disk)"
        )
        print(
            f"bare Twisted MLLP, 8 connections, fixed ACK, same run: {bare_rate:,.0f} msg/s; "
            f"ratio events/s / bare: {events / elapsed / bare_rate:.3f}"
        )
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
