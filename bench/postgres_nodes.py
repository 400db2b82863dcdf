"""Several nodes on one PostgreSQL: durable MLLP ACKs and usage events per second with SQLite,
with PostgreSQL and one node, and with PostgreSQL and two nodes, in the same run.

Each configuration runs ``wharf run`` (subprocesses) on a copy of the shipped project; senders
(threads of this process's reactor, ``--senders`` in all, spread evenly over the nodes) send the
stent DFT^P03 to the ``usage_ledger`` channel (AA after the group commit; the pipeline then books
each line in the supply ledger: a consumption event, a stock move, a charge), each waiting for
its ACK before the next, for ``--seconds``. Printed per configuration: ACKs/s, p50/p99 ACK
latency, usage events/s (consumption events booked, counted in the store, over the span from the
first to the last one) and each figure's ratio to SQLite's in the same run. PostgreSQL runs a
throw-away cluster with fsync on (the same durability as SQLite's synchronous=FULL).

The last row is the same two nodes under a mixed load: half the MLLP senders, a quarter as
many FHIR clients POSTing SupplyDeliveries (each waiting for its answer), and the partner's X12
files (an 855 every 50 ms) dropped into its SFTP inbound folder that both nodes watch (one
holds the pickup lease). Its events/s counts the usage booked from MLLP and FHIR together; the
line under it gives the FHIR answers/s and the X12 files stored.

    python bench/postgres_nodes.py [--seconds 5] [--senders 16]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from twisted.internet import defer, protocol, reactor, task, threads

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mllp_ack import EB, SB, Sender, free_port, pct, wait_port

from engine.runtime.store import open_store
from engine.testing.postgres import Cluster

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = (ROOT / "samples/hl7/dft_p03_stent_cath.hl7").read_bytes().decode()


def usage(sender: int, seq: int) -> bytes:
    """The stent sample with its own MSH-10 and FT1-2 (a new message and a new line)."""
    out = []
    for seg in SAMPLE.strip().split("\r"):
        fields = seg.split("|")
        if fields[0] == "MSH":
            fields[9] = f"PGB{os.getpid()}-{sender}-{seq}"
        elif fields[0] == "FT1":
            fields[2] = f"PGB{os.getpid()}-{sender}-{seq}"
        out.append("|".join(fields))
    return SB + "\r".join(out).encode() + b"\r" + EB


class UsageSender(Sender):
    def send(self) -> None:
        self.seq += 1
        self.sent_at = time.perf_counter()
        self.transport.write(usage(self.ident, self.seq))


async def load(ports: list[int], senders: int, seconds: float) -> tuple[float, list[float]]:
    latencies: list[float] = []
    start = time.perf_counter()
    deadline = start + seconds
    waits = []
    for i in range(senders):
        done: defer.Deferred = defer.Deferred()
        creator = protocol.ClientCreator(reactor, UsageSender, i, deadline, latencies, done)
        await creator.connectTCP("127.0.0.1", ports[i % len(ports)])
        waits.append(done)
    await defer.gatherResults(waits)
    return time.perf_counter() - start, latencies


def project(tmp: Path) -> Path:
    root = tmp / "project"
    root.mkdir()
    shutil.copy(ROOT / "routes.yaml", root / "routes.yaml")
    for folder in ("channels", "mappings", "samples"):
        shutil.copytree(ROOT / folder, root / folder)
    return root


def start_node(root: Path, tmp: Path, name: str, store: str) -> tuple[subprocess.Popen, int, int]:
    """``wharf run``: its process, its usage_ledger MLLP port and its FHIR port."""
    port, fhir = free_port(), free_port()
    env = {**os.environ, "WHARF_LOG_LEVEL": "warn", "WHARF_DB": store}
    env["LEDGER_MLLP_PORT"] = str(port)
    for var in ("MLLP_PORT", "BILLING_PORT", "PO_HTTP_PORT", "RECEIPT_HTTP_PORT", "ADMIN_PORT"):
        env[var] = str(free_port())
    env["FHIR_PORT"] = str(fhir)
    env["SFTP_PORT"] = str(free_port())
    env["ERP_URL"] = f"http://127.0.0.1:{free_port()}"  # nobody: deliveries retry, as everywhere
    for var in ("WHARF_INBOX", "WHARF_ARCHIVE", "WHARF_MLLP_ARCHIVE"):
        env[var] = str(tmp / name / var.lower())
    log = open(tmp / f"{name}.log", "w")
    cmd = [str(Path(sys.executable).parent / "wharf"), "--root", str(root), "run"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)
    wait_port(port, 60)
    wait_port(fhir, 60)
    return proc, port, fhir


FHIR_TOKEN = "wharf-demo-pou-token"  # the shipped fhir_supply channel's demo token
DELIVERY = json.loads((ROOT / "samples/fhir/r5_supplydelivery_code.json").read_text())
ACK_855 = (ROOT / "samples/x12/855_5010.x12").read_text()


def fhir_client(ident: int, ports: list[int], deadline: float, latencies: list[float]) -> None:
    """POST SupplyDeliveries (each its own identifier) until ``deadline``, one at a time."""
    import http.client

    n = 0
    while time.perf_counter() < deadline:
        n += 1
        doc = {**DELIVERY, "identifier": [{"system": "urn:bench", "value": f"B{ident}-{n}"}]}
        conn = http.client.HTTPConnection("127.0.0.1", ports[n % len(ports)], timeout=30)
        started = time.perf_counter()
        try:
            conn.request(
                "POST",
                "/fhir/R5/SupplyDelivery",
                json.dumps(doc).encode(),
                {"Content-Type": "application/fhir+json", "Authorization": f"Bearer {FHIR_TOKEN}"},
            )
            answer = conn.getresponse()
            answer.read()
            if answer.status in (200, 201):
                latencies.append(time.perf_counter() - started)
        except OSError:
            time.sleep(0.05)
        finally:
            conn.close()


def x12_dropper(inbound: Path, deadline: float) -> int:
    """The partner's 855s (each its own ISA13 and GS06) into ``inbound``, one every 50 ms."""
    inbound.mkdir(parents=True, exist_ok=True)
    n = 0
    while time.perf_counter() < deadline:
        n += 1
        text = (
            ACK_855.replace("000005502", f"{n:09d}")
            .replace("*5502*", f"*{n}*")
            .replace("GE*1*5502", f"GE*1*{n}")
        )
        part = inbound / f".855_{n}.part"
        part.write_text(text)
        os.replace(part, inbound / f"855_{n}.x12")
        time.sleep(0.05)
    return n


def stored(store: str | Path, channel: str) -> int:
    with open_store(store) as s:
        return sum(s.counts(channel=channel)["messages"].values())


def events_per_second(store: str | Path) -> tuple[int, float]:
    """Consumption events booked and their rate (first to last ``created_at``)."""
    time.sleep(3)  # the pipeline finishes what was ACKed
    with open_store(store) as s, s.reading() as rd:
        n, first, last = rd.connection.execute(
            "SELECT COUNT(*), MIN(created_at), MAX(created_at) FROM consumption_events"
        ).fetchone()
    return int(n), (n / (last - first) if n and last > first else 0.0)


def pg_commits(url: str) -> int:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return int(row[0])


def round_trip_us(url: str, n: int = 2000) -> float:
    """One statement's round trip over loopback TCP (SELECT 1), in microseconds."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        start = time.perf_counter()
        for _ in range(n):
            conn.execute("SELECT 1").fetchone()
        return (time.perf_counter() - start) / n * 1e6


async def run_config(
    name: str,
    store: str | Path,
    nodes: int,
    tmp: Path,
    args: argparse.Namespace,
    mixed: bool = False,
) -> dict[str, float]:
    root = project(tmp / name)
    url = str(store) if str(store).startswith("postgresql://") else None
    commits = pg_commits(url) if url else 0
    procs = [start_node(root, tmp / name, f"node{i}", str(store)) for i in range(nodes)]
    fhir_lat: list[float] = []
    dropped = 0
    try:
        if not mixed:
            elapsed, lat = await load([p for _, p, _ in procs], args.senders, args.seconds)
        else:
            deadline = time.perf_counter() + args.seconds
            fhir_ports = [f for _, _, f in procs]
            clients = [
                threads.deferToThread(fhir_client, i, fhir_ports, deadline, fhir_lat)
                for i in range(max(1, args.senders // 4))
            ]
            drops = threads.deferToThread(x12_dropper, root / "var/sftp/acmemed/inbound", deadline)
            elapsed, lat = await load(
                [p for _, p, _ in procs], max(1, args.senders // 2), args.seconds
            )
            await defer.gatherResults(clients)
            dropped = await drops
            time.sleep(2)  # the last files' pickup
    finally:
        for proc, _, _ in procs:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    n, rate = events_per_second(store)
    if url:
        time.sleep(1)  # (the statistics collector reports every second or so)
        commits = pg_commits(url) - commits
    return {
        "acks": len(lat) / elapsed,
        "p50": pct(lat, 0.5),
        "p99": pct(lat, 0.99),
        "events": n,
        "events_s": rate,
        "commits_per_event": commits / n if n and url else 0.0,
        "fhir_s": len(fhir_lat) / elapsed if mixed else 0.0,
        "fhir_p50": pct(fhir_lat, 0.5) if fhir_lat else 0.0,
        "x12_dropped": dropped,
        "x12_stored": stored(store, "x12_from_vendors") if mixed else 0,
    }


async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="wharf-bench-pg-"))
    os.chmod(tmp, 0o755)
    try:
        with Cluster(fsync=True) as cluster:
            configs = [
                ("sqlite", tmp / "sqlite" / "wharf.db", 1),
                ("postgresql, 1 node", cluster.create_database("one"), 1),
                ("postgresql, 2 nodes", cluster.create_database("two"), 2),
                ("postgresql, 2 nodes, mixed", cluster.create_database("mixed"), 2),
            ]
            print(
                f"usage over MLLP to the ledger channel, {args.senders} senders, "
                f"{args.seconds:g}s per configuration, {os.cpu_count()} cores shared by "
                "senders, nodes and PostgreSQL"
            )
            print(
                f"{'store':>26} {'ACK/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'events/s':>9} "
                f"{'ACK ratio':>9} {'events ratio':>12}"
            )
            base: dict[str, float] = {}
            for name, store, nodes in configs:
                (tmp / name).mkdir(parents=True, exist_ok=True)
                mixed = name.endswith("mixed")
                r = await run_config(name, store, nodes, tmp, args, mixed)
                base = base or r
                print(
                    f"{name:>26} {r['acks']:>7.0f} {r['p50']:>7.1f} {r['p99']:>7.1f} "
                    f"{r['events_s']:>9.0f} {r['acks'] / base['acks']:>9.2f} "
                    f"{(r['events_s'] / base['events_s']) if base['events_s'] else 0:>12.2f}",
                    flush=True,
                )
                if r["commits_per_event"]:
                    print(f"{'':>26} {r['commits_per_event']:.2f} PostgreSQL commits per event")
                if mixed:
                    print(
                        f"{'':>26} with {r['fhir_s']:.0f} FHIR answers/s (p50 "
                        f"{r['fhir_p50']:.1f} ms) and {r['x12_stored']} of {r['x12_dropped']} "
                        "X12 files stored"
                    )
            print("ratios: against SQLite in the same run")
            print(
                f"one statement's round trip to PostgreSQL over loopback: "
                f"{round_trip_us(cluster.dsn('one')):.0f} us"
            )
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--senders", type=int, default=16)
    p.add_argument("--keep", action="store_true")
    task.react(lambda _r: defer.ensureDeferred(main(p.parse_args())))
