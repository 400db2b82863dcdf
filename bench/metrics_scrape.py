"""One Prometheus scrape of /metrics on a large store, against the same scrape on a small one.

A scrape reads running counters from memory and gauges from the store's indexes (queue depth
and oldest age from the partial indexes of pending and inflight deliveries, open work items by
kind from their index, open requisitions from the ledger's index by status): its cost follows
the queues and the open work, not the number of stored messages. This bench shows it: it
seeds a store of N messages (default 1,000,000), each with a sent delivery, plus a queue of
waiting deliveries, open and closed work items and requisitions, runs the engine on it and
times the scrape (median of ``--rounds``); the baseline is the same scrape, in the same run,
on a store of 1,000 messages with the same queue and open work. For contrast it also times
``store.counts()``, the GROUP BY over every message that a scrape must not do.

    .venv/bin/python bench/metrics_scrape.py                 # 1,000,000 messages
    .venv/bin/python bench/metrics_scrape.py --messages 200000 --rounds 20
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from twisted.internet import defer, reactor  # noqa: E402

from engine.runtime import Engine  # noqa: E402
from engine.web.observability import scrape  # noqa: E402

CHANNELS = 10
WAITING = 500  # deliveries pending or inflight: the queue a scrape counts
OPEN_ITEMS = 15_000  # open work items (the issue measured 14,944 on its 1M store)


def seed(path: Path, messages: int) -> None:
    """Messages, sent deliveries, a queue, work items and requisitions, in bulk SQL."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    now = time.time()
    conn.execute("BEGIN")
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
        "INSERT INTO messages (id, channel, source, peer, content_type, received_at, "
        "updated_at, sha256, size, control_id, dedup_key, correlation_id, status) "
        "SELECT printf('m%09d', i), 'ch' || (i % ?), 'mllp', '127.0.0.1', 'x-application/hl7', "
        "? - i, ? - i, 'x', 100, 'C' || i, 'D' || i, printf('m%09d', i), 'sent' FROM n",
        (messages - 1, CHANNELS, now, now),
    )
    conn.execute(
        "INSERT INTO outbox (message_id, channel, destination, idx, payload, content_type, "
        "idempotency_key, correlation_id, status, attempts, next_attempt_at, created_at, "
        "updated_at) SELECT id, channel, 'erp', 0, x'7b7d', 'application/json', 'k' || id, id, "
        "CASE WHEN rowid <= ? THEN 'pending' ELSE 'sent' END, 1, received_at, received_at, "
        "updated_at FROM messages",
        (WAITING,),
    )
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
        "INSERT INTO work_items (kind, subject, detail, status, message_id, correlation_id, "
        "created_at, updated_at) SELECT "
        "CASE i % 4 WHEN 0 THEN 'UNBILLED_USAGE' WHEN 1 THEN 'INVOICE_HELD' "
        "WHEN 2 THEN 'RECEIPT_UNMATCHED' ELSE 'MISSING_MAPPING' END, 's' || i, 'd', "
        "CASE WHEN i < ? THEN 'open' ELSE 'closed' END, printf('m%09d', i % ?), 'c', ? - i, ? - i "
        "FROM n",
        (OPEN_ITEMS * 4 - 1, OPEN_ITEMS, messages, now, now),
    )
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 9999) "
        "INSERT INTO requisitions (location_id, item_id, quantity, uom, status, message_id, "
        "correlation_id, created_at, updated_at) SELECT 'L' || (i % 50), 'I' || i, '1', 'EA', "
        "CASE WHEN i < 200 THEN 'open' ELSE 'ordered' END, 'm', 'c', ?, ? FROM n",
        (now, now),
    )
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def project(base: Path, name: str) -> Path:
    root = base / name
    (root / "channels").mkdir(parents=True)
    (root / "routes.yaml").write_text("store: var/wharf.db\nreload_interval: 0\n")
    return root


async def create(root: Path, messages: int) -> float:
    """An engine started once on an empty store (the schema), then the seed; seconds taken."""
    engine = Engine(root, reactor)
    await engine.start()
    await engine.stop()
    t0 = time.perf_counter()
    seed(root / "var" / "wharf.db", messages)
    return time.perf_counter() - t0


async def measure(root: Path, rounds: int) -> dict[str, Any]:
    engine = Engine(root, reactor)
    await engine.start()
    try:
        for _ in range(10):  # warm: each reactor thread's connection and its page cache, as
            text = await scrape(engine)  # in an engine that has been running a while
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            text = await scrape(engine)
            times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        counts = await engine.executor.submit(engine.store.counts)
        counted = time.perf_counter() - t0
    finally:
        await engine.stop()
    assert b"wharf_queue_depth" in text and b"wharf_open_requisitions 200.0" in text, text[-400:]
    stored = sum(counts["messages"].values())
    return {"scrape": statistics.median(times), "counts": counted, "stored": stored}


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--keep", action="store_true", help="keep the temporary stores")
    args = p.parse_args()
    base = Path(tempfile.mkdtemp(prefix="wharf-scrape-"))
    try:
        small, large = project(base, "small"), project(base, "large")
        await create(small, 1_000)
        took = await create(large, args.messages)
        print(f"seeded {args.messages:,} messages in {took:.1f}s")
        baseline = await measure(small, args.rounds)
        big = await measure(large, args.rounds)
        for label, r in (("baseline", baseline), ("large", big)):
            print(
                f"{label:9} {r['stored']:>10,} messages: scrape {r['scrape'] * 1000:7.2f} ms "
                f"(median of {args.rounds}); store.counts() {r['counts'] * 1000:9.2f} ms"
            )
        print(
            f"ratio large/baseline: scrape {big['scrape'] / baseline['scrape']:.2f}, "
            f"store.counts() {big['counts'] / baseline['counts']:.0f}"
        )
    finally:
        if "--keep" not in sys.argv:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(base)


if __name__ == "__main__":

    def run() -> None:
        d = defer.ensureDeferred(main())
        d.addErrback(lambda f: (f.printTraceback(), None))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(run)
    reactor.run()
