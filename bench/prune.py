"""Retention under load: `wharf prune` on a big store while one MLLP sender keeps sending.

Fills a store with N old `sent` messages through SQL (default 1,000,000, about half of them
past the retention), runs the engine on it in-process with an MLLP channel, and measures one
sequential sender's ACK latency for a few seconds with nothing else going on (the baseline),
then while `wharf prune` runs in another process. Prints the ACK p50/p99 of both phases and
their ratio (target: p99 during the prune within 2x of the baseline), how long the prune took,
the WAL's peak size and the footprint on disk (store + WAL) before and after.

    python bench/prune.py [--messages 1000000] [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from twisted.internet import defer, endpoints, reactor, task, threads

ROOT = Path(__file__).resolve().parents[1]
WHARF = Path(sys.executable).parent / "wharf"
CHANNEL = 'source:\n  mllp: {listen: "tcp:0:interface=127.0.0.1"}\ncodec: {hl7v2: {}}\n'


def dft(n: int) -> bytes:
    return (
        f"MSH|^~\\&|POU|GENHOSP|WHARF|GENHOSP|20260115113000||DFT^P03^DFT_P03|LIVE-{n}|P|2.5.1\r"
        "EVN|P03|20260115113000\rPID|1||MRN1\rPV1|1|I|OR||||||||||||||||ENC-1\r"
        "FT1|1|CU-1||20260115|20260115|CG|272100049|||1\r"
    ).encode()


def fill(path: Path, count: int) -> None:
    from engine.runtime.store import open_store

    open_store(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    now = time.time()
    body = b"MSH|^~\\&|POU|GENHOSP|WHARF|GENHOSP|20250115||DFT^P03|OLD|P|2.5.1\r" + b"X" * 400
    conn.execute("BEGIN")
    step = 50_000
    for start in range(0, count, step):
        rows = []
        for i in range(start, min(count, start + step)):
            age = (60 if i % 2 else 5) * 86400  # half are past a 30-day retention
            rows.append((f"old-{i:08d}", now - age, now - age, len(body), f"old-{i}", f"c{i}"))
        conn.executemany(
            "INSERT INTO messages (id, channel, source, peer, content_type, received_at, "
            "updated_at, sha256, size, control_id, dedup_key, correlation_id, status) "
            "VALUES (?, 'feed', 'mllp', NULL, 'x-application/hl7-v2+er7', ?, ?, '', ?, ?, NULL, "
            "?, 'sent')",
            rows,
        )
        conn.executemany(
            "INSERT INTO contents (message_id, stage, data, created_at) VALUES (?, 'raw', ?, ?)",
            [(r[0], body, r[1]) for r in rows],
        )
    conn.execute("COMMIT")
    conn.close()


def footprint(db: Path) -> int:
    wal = db.with_name(db.name + "-wal")
    return db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def run(args: argparse.Namespace) -> None:
    from engine.codecs.hl7v2 import tokenize
    from engine.net.mllp import MLLPClientProtocol
    from engine.runtime import Engine

    base = Path(tempfile.mkdtemp(prefix="wharf-prune-"))
    try:
        root = base / "project"
        (root / "channels").mkdir(parents=True)
        (root / "channels/feed.yaml").write_text(CHANNEL)
        (root / "routes.yaml").write_text(
            "store: var/wharf.db\nreload_interval: 0\n"
            "retention:\n  - {status: [sent], older_than: 30d}\n"
        )
        db = root / "var/wharf.db"
        started = time.perf_counter()
        fill(db, args.messages)
        print(
            f"store: {args.messages:,} messages in {time.perf_counter() - started:.1f} s, "
            f"{footprint(db) / 1e6:,.0f} MB"
        )
        engine = Engine(root, reactor)
        await engine.start()
        port = engine.sources["feed"].port.getHost().port
        client = await endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port), MLLPClientProtocol()
        )
        await client.ready
        n = 0

        async def send_for(until: callable) -> list[float]:  # type: ignore[valid-type]
            nonlocal n
            took = []
            while not until():
                n += 1
                t0 = time.perf_counter()
                ack = await client.send(dft(n))
                took.append(time.perf_counter() - t0)
                assert tokenize(ack).get("MSA-1") == "AA", ack
            return took

        deadline = time.perf_counter() + args.seconds
        normal = await send_for(lambda: time.perf_counter() >= deadline)
        before = footprint(db)
        env = {**os.environ, "WHARF_LOG_LEVEL": "warn"}
        t0 = time.perf_counter()
        prune = threads.deferToThread(
            subprocess.run,
            [str(WHARF), "--root", str(root), "prune"],
            capture_output=True,
            text=True,
            env=env,
        )
        wal_peak = [0]
        wal = db.with_name(db.name + "-wal")

        def watch() -> None:
            if wal.exists():
                wal_peak[0] = max(wal_peak[0], wal.stat().st_size)

        watcher = task.LoopingCall(watch)
        watcher.start(0.05)
        during = await send_for(lambda: prune.called)
        watcher.stop()
        result = prune.result
        elapsed = time.perf_counter() - t0
        print(result.stdout.strip())
        if result.returncode:
            print(result.stderr)
        after = footprint(db)
        client.transport.loseConnection()
        await engine.stop()
        p99n, p99d = percentile(normal, 0.99), percentile(during, 0.99)
        print(f"{'phase':<14}{'ACKs':>8}{'p50 ms':>10}{'p99 ms':>10}")
        for name, values in (("baseline", normal), ("during prune", during)):
            print(
                f"{name:<14}{len(values):>8}{percentile(values, 0.5) * 1e3:>10.2f}"
                f"{percentile(values, 0.99) * 1e3:>10.2f}"
            )
        print(f"ratio p99 during / baseline: {p99d / p99n:.2f} (target <= 2)")
        print(
            f"prune: {elapsed:.1f} s; WAL peak {wal_peak[0] / 1e6:,.1f} MB; footprint "
            f"{before / 1e6:,.0f} MB before, {after / 1e6:,.0f} MB after"
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)
        reactor.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=1_000_000)
    p.add_argument("--seconds", type=float, default=5.0)
    args = p.parse_args()
    reactor.callWhenRunning(
        lambda: defer.ensureDeferred(run(args)).addErrback(
            lambda f: (f.printTraceback(), reactor.stop())
        )
    )
    reactor.run()


if __name__ == "__main__":
    main()
