"""Store growth: do the store's paths keep their speed as the store grows to 1,000,000 messages?

Drives the store's own methods the way the engine does, on one thread, and prints the rate of
each path at every size, with its ratio to the empty store's rate measured in the same run
(target: every ratio >= 0.8 at 1M):

- ingest: ``ingest_batch`` with 256 messages per call (one FULL commit each);
- process: ``finish_many`` with 64 pipeline results per call (content, business keys, one
  outbox row each; about 1.5% held for a missing mapping, as a feed with gaps in its
  mappings has, so open MISSING_MAPPING work items grow with the store);
- deliver: ``claim_deliveries`` of 64 and ``deliveries_succeeded`` for them;
- browse: the message browser's queries (newest of a channel, a business key, errors).

The store grows through the same methods up to ``--by-methods`` messages; past that, a bulk
copy (SQL, copies of the rows made by the methods, new ids) fills it to each next size, as the
issue allows, so that a 1M store is reached in minutes, not an hour.

    python bench/store_growth.py [--sizes 0,100000,300000,1000000] [--by-methods 30000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.model import Inbound, Outbound  # noqa: E402
from engine.runtime.store import migrate_domains  # noqa: E402
from engine.store import SqliteStore  # noqa: E402

CHANNEL = "usage"
HELD_EVERY = 64  # ~1.5% of messages held for a missing mapping (open work items)
INGEST_BATCH = 256
PROCESS_BATCH = 64


def dft(n: int) -> bytes:
    return (
        f"MSH|^~\\&|POU|GENHOSP|WHARF|GENHOSP|20260115113000||DFT^P03^DFT_P03|G-{n}|P|2.5.1\r"
        f"EVN|P03|20260115113000\rPID|1||MRN{n % 5000}\rPV1|1|I|OR||||||||||||||||ENC-{n}\r"
        "FT1|1|CU-1||20260115|20260115|CG|272100049|||1\r"
    ).encode()


class Driver:
    """Runs the engine's store paths; ``n`` counts the messages made so far."""

    def __init__(self, store) -> None:  # type: ignore[no-untyped-def]
        self.store = store
        self.n = 0

    def ingest(self, batches: int) -> tuple[list[str], float]:
        ids: list[str] = []
        t0 = time.perf_counter()
        for _ in range(batches):
            items = []
            for _ in range(INGEST_BATCH):
                self.n += 1
                raw = dft(self.n)
                items.append(
                    Inbound(
                        channel=CHANNEL,
                        source="mllp",
                        raw=raw,
                        content_type="x-application/hl7-v2+er7",
                        received_at=time.time(),
                        control_id=f"G-{self.n}",
                        dedup_key=f"G-{self.n}",
                        dedup_window=86400.0,
                        peer="127.0.0.1",
                    )
                )
            results = self.store.ingest_batch(items, time.time())
            ids.extend(r.message_id for r in results)
        return ids, time.perf_counter() - t0

    def process(self, ids: list[str]) -> float:
        t0 = time.perf_counter()
        for start in range(0, len(ids), PROCESS_BATCH):
            results = []
            for message_id in ids[start : start + PROCESS_BATCH]:
                number = int(self.store.get_message(message_id).control_id[2:])
                held = number % HELD_EVERY == 0
                result = {
                    "message_id": message_id,
                    "status": "error" if held else "queued",
                    "transformed": b'{"issues":[{"item":"272100049","qty":1}]}',
                    "business_keys": [
                        ("encounter", f"ENC-{number}"),
                        ("mrn", f"MRN{number % 5000}"),
                    ],
                }
                if held:
                    result["error"] = "no mapping for charge code 272100049"
                    result["work_item"] = ("MISSING_MAPPING", f"cdm:{number}", "no mapping")
                else:
                    result["outbound"] = [
                        Outbound(
                            "erp", b'{"issues":[{"item":"272100049","qty":1}]}', "application/json"
                        )
                    ]
                results.append(result)
            self.store.finish_many(results, time.time())
        return time.perf_counter() - t0

    def deliver(self) -> tuple[int, float]:
        done = 0
        t0 = time.perf_counter()
        while True:
            now = time.time()
            claimed = self.store.claim_deliveries(CHANNEL, "erp", PROCESS_BATCH, now, 30.0)
            if not claimed:
                break
            self.store.deliveries_succeeded([(d.id, b'{"ok":true}', now) for d in claimed])
            done += len(claimed)
        return done, time.perf_counter() - t0

    def browse(self, rounds: int) -> tuple[int, float]:
        t0 = time.perf_counter()
        queries = 0
        for i in range(rounds):
            self.store.search(channel=CHANNEL, limit=50)
            self.store.search(key="encounter", value=f"ENC-{max(1, self.n - i * 7)}", limit=50)
            self.store.search(status="error", limit=50)
            self.store.search(channel=CHANNEL, status="sent", limit=50, offset=200)
            queries += 4
        return queries, time.perf_counter() - t0

    def grow(self, messages: int) -> None:
        """Grow by about ``messages`` through the methods (ingest, process, deliver)."""
        batches = max(1, messages // INGEST_BATCH)
        for _ in range(0, batches, 8):
            ids, _ = self.ingest(min(8, batches))
            self.process(ids)
            self.deliver()


def bulk_copy(path: Path, target: int) -> None:
    """Copy the method-made rows under new ids until the store holds ``target`` messages."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    have = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    template = conn.execute("SELECT count(*) FROM messages WHERE id NOT LIKE 'bulk-%'").fetchone()[
        0
    ]
    round_no = int(time.time() * 1000) % 1_000_000
    while have < target:
        round_no += 1
        take = min(template, target - have)
        tag = f"bulk-{round_no:06d}-"
        conn.execute("BEGIN")
        conn.execute(
            "CREATE TEMP TABLE pick AS SELECT id FROM messages "
            "WHERE id NOT LIKE 'bulk-%' ORDER BY rowid LIMIT ?",
            (take,),
        )
        conn.execute(
            "INSERT INTO messages (id, channel, source, peer, content_type, received_at, "
            "updated_at, sha256, size, control_id, dedup_key, correlation_id, status, error, "
            "error_location, origin) SELECT ? || m.id, channel, source, peer, content_type, "
            "received_at - 86400, updated_at - 86400, sha256, size, control_id, "
            "? || dedup_key, ? || correlation_id, status, error, error_location, origin "
            "FROM messages m JOIN pick USING (id)",
            (tag, tag, tag),
        )
        conn.execute(
            "INSERT INTO contents (message_id, stage, data, created_at) "
            "SELECT ? || c.message_id, stage, data, created_at FROM contents c "
            "JOIN pick ON pick.id = c.message_id",
            (tag,),
        )
        conn.execute(
            "INSERT INTO business_keys (message_id, name, value) "
            "SELECT ? || b.message_id, name, value || '-' || ? FROM business_keys b "
            "JOIN pick ON pick.id = b.message_id",
            (tag, round_no),
        )
        conn.execute(
            "INSERT INTO outbox (message_id, channel, destination, idx, payload, content_type, "
            "meta, idempotency_key, correlation_id, order_key, status, attempts, "
            "next_attempt_at, lease_until, last_error, response, created_at, updated_at) "
            "SELECT ? || o.message_id, channel, destination, idx, payload, content_type, meta, "
            "? || idempotency_key, ? || correlation_id, order_key, status, attempts, "
            "next_attempt_at, lease_until, last_error, response, created_at, updated_at "
            "FROM outbox o JOIN pick ON pick.id = o.message_id",
            (tag, tag, tag),
        )
        conn.execute(
            "INSERT INTO work_items (kind, subject, detail, status, message_id, correlation_id, "
            "created_at, updated_at) SELECT kind, subject || '-' || ?, detail, status, "
            "? || w.message_id, ? || correlation_id, created_at, updated_at FROM work_items w "
            "JOIN pick ON pick.id = w.message_id",
            (round_no, tag, tag),
        )
        conn.execute("DROP TABLE pick")
        conn.execute("COMMIT")
        have += take
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    os.sync()  # the copy's dirty pages on disk now, not in the middle of a measurement


def open_store(path: Path) -> SqliteStore:
    """The store as the running engine opens it (background checkpoints)."""
    store = SqliteStore(path, background_checkpoints=True).open()
    migrate_domains(store)
    return store


def measure(driver: Driver, seconds: float) -> dict[str, float]:
    """Rounds of 1,024 messages (ingest, process, deliver) and 20 browser queries for about
    ``seconds``; each path's rate is the median of its rounds (one slow fsync is not a trend)."""
    # A warm-up pass first: a running engine has its hot pages in memory; a store just
    # reopened after the bulk copy has not.
    driver.grow(2 * INGEST_BATCH)
    driver.browse(5)
    rounds: dict[str, list[float]] = {"ingest": [], "process": [], "deliver": [], "browse": []}
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(rounds["ingest"]) < 3:
        ids, took = driver.ingest(4)
        rounds["ingest"].append(len(ids) / took)
        rounds["process"].append(len(ids) / driver.process(ids))
        done, took = driver.deliver()
        rounds["deliver"].append(done / took)
        queries, took = driver.browse(5)
        rounds["browse"].append(queries / took)
    return {name: statistics.median(rates) for name, rates in rounds.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sizes",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[0, 100_000, 300_000, 1_000_000],
    )
    p.add_argument("--by-methods", type=int, default=30_000)
    p.add_argument("--seconds", type=float, default=4.0, help="measuring time per size")
    args = p.parse_args()
    base = Path(tempfile.mkdtemp(prefix="wharf-growth-"))
    path = base / "wharf.db"
    try:
        store = open_store(path)
        driver = Driver(store)
        paths = ("ingest", "process", "deliver", "browse")
        print(
            f"store growth: about {args.seconds:g} s of rounds of 1,024 messages per size, one thread"
        )
        print(f"{'stored':>10}  " + "  ".join(f"{name + '/s':>10}{'ratio':>7}" for name in paths))
        first: dict[str, float] = {}
        for size in args.sizes:
            have = _count(path)
            if size > have:
                by_methods = max(0, min(size, args.by_methods) - have)
                if by_methods:
                    driver.grow(by_methods)
                store.close()
                bulk_copy(path, size)
                store = open_store(path)
                driver.store = store
            stored = _count(path)
            rates = measure(driver, args.seconds)
            first = first or rates
            print(
                f"{stored:>10,}  "
                + "  ".join(
                    f"{rates[name]:>10,.0f}{rates[name] / first[name]:>7.2f}" for name in paths
                )
            )
        store.close()
        print("ratio = rate at this size / rate on the empty store in the same run (target >= 0.8)")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _count(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    finally:
        conn.close()


if __name__ == "__main__":
    main()
