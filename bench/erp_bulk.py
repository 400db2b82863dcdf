"""ERP bulk benchmark: consumption events per second with bulk calls against one call per event,
both measured in the same run.

Usage into the supply ledger and out to SAP S/4HANA: ``wharf run`` takes DFT^P03 messages of
one FT1 line each over MLLP from 8 senders (each waits for its ACK), books the event, and posts
its stock issue to the sandbox's SAP emulation (``wharf sandbox``: basic auth,
CSRF handshake, a material document per issue, answering on the same machine). The clock runs
from the first message until every issue is posted. Two runs on the same messages, each with
a fresh store and sandbox: the ``sap_s4hana`` destination without ``bulk`` (one OData call per
event) and with ``bulk`` (``$batch`` calls of up to ``--max-items`` issues, a changeset each).
The emulated SAP answers each call ``--latency`` seconds late (default 50 ms: a round trip to a
cloud API and its processing; on loopback a call costs ~2 ms and the ingest would be all one
measures).

    python bench/erp_bulk.py [--messages 600] [--max-items 50]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SB, EB = b"\x0b", b"\x1c\x0d"
PASSWORD = "sap-demo-password"  # the sandbox's demo communication user
STORAGE = {
    "LOC-OR-MAIN": "OR01",
    "LOC-CATH-1": "CL01",
    "LOC-CATH-2": "CL02",
    "LOC-4W-SUPPLY": "4W01",
    "LOC-MICU-SUPPLY": "MI01",
}

CHANNEL = """\
source:
  mllp: {{listen: 'tcp:{mllp}:interface=127.0.0.1'}}
codec: {{hl7v2: {{}}}}
transformer:
  - transform: hl7_usage_to_ledger
ledger:
  issue: erp
  charge: billing
  requisition: requisitions
  par_levels: par_levels
  onhand: onhand
destinations:
  - name: erp
    sap_s4hana:
      base_url: 'http://127.0.0.1:{http}'
      plant: '1010'
      storage_locations: {storage}
      auth: {{basic: {{user: WHARF_COMM, password: {{env: SAP_PASSWORD}}}}}}{bulk}
    concurrency: 8
    retry: {{max_attempts: 20, initial: 200ms, max_delay: 5s}}
  - name: billing
    file: {{dir: out/billing}}
  - name: requisitions
    file: {{dir: out/requisitions}}
"""


def message(n: int) -> bytes:
    """A DFT^P03 with one FT1 line (sutures used in the OR): one event, one stock issue."""
    segments = [
        "MSH|^~\\&|POU_CABINET|GENHOSP|WHARF|GENHOSP|20260115103000||DFT^P03^DFT_P03|"
        f"EB{os.getpid()}-{n}|P|2.5.1",
        "EVN|P03|20260115103000",
        "PID|1||MRN12345^^^GENHOSP^MR||DOE^JANE",
        f"PV1|1|O|OR^OR05^01^GENHOSP||||||||||||||||ENC-EB{n % 97}^^^GENHOSP^VN",
        f"FT1|1|EB-{n}||20260115093000|20260115103000|CG|272000010^SUTURE^99CDM|||1"
        "||||||OR^OR05^01^GENHOSP",
    ]
    return ("\r".join(segments) + "\r").encode()


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


def send_all(port: int, ids: list[int]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        for n in ids:
            s.sendall(SB + message(n) + EB)
            buf = b""
            while EB not in buf:
                buf += s.recv(65536)
            if b"MSA|AA" not in buf and b"MSA|CA" not in buf:
                raise RuntimeError(f"not accepted: {buf[:200]!r}")


def open_rows(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT (SELECT COUNT(*) FROM messages WHERE status IN ('received', 'queued')) + "
            "(SELECT COUNT(*) FROM outbox WHERE status IN ('pending', 'inflight'))"
        ).fetchone()[0]
    finally:
        conn.close()


def seed_sap(http: int) -> None:
    """Every item of the on-hand snapshot at its storage location, with plenty in stock."""
    rows = []
    for line in (ROOT / "mappings/onhand.csv").read_text().splitlines():
        if line.startswith(("#", "id,")) or not line.strip():
            continue
        _, location, item, _, uom = line.split(",")
        rows.append(
            {"location": f"1010:{STORAGE[location]}", "item": item, "on_hand": 10**9, "uom": uom}
        )
    request = urllib.request.Request(
        f"http://127.0.0.1:{http}/_emulation/sap/stock",
        data=json.dumps(rows).encode(),
        headers={"content-type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=10).read()


def summary(http: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{http}/_emulation", timeout=10) as r:
        return json.load(r)


def set_latency(http: int, seconds: float) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{http}/_emulation/latency",
        data=json.dumps({"system": "sap", "seconds": seconds}).encode(),
        headers={"content-type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=10).read()


def run(
    tmp: Path, n: int, senders: int, max_items: int | None, latency: float
) -> tuple[float, int, int]:
    """(seconds, material documents, SAP calls) for one run."""
    project = tmp / ("bulk" if max_items else "single")
    (project / "channels").mkdir(parents=True)
    shutil.copytree(ROOT / "mappings", project / "mappings")
    (project / "routes.yaml").write_text("store: var/wharf.db\nreload_interval: 0\n")
    http, mllp, billing = free_port(), free_port(), free_port()
    bulk = f"\n      bulk: {{max_items: {max_items}, max_wait: 50ms}}" if max_items else ""
    (project / "channels/usage.yaml").write_text(
        CHANNEL.format(mllp=mllp, http=http, storage=json.dumps(STORAGE), bulk=bulk)
    )
    env = {**os.environ, "SAP_PASSWORD": PASSWORD, "WHARF_LOG_LEVEL": "warn"}
    wharf = Path(sys.executable).parent / "wharf"
    log = open(project / "run.log", "w")
    sandbox = subprocess.Popen(
        [
            str(wharf),
            "sandbox",
            "--http-port",
            str(http),
            "--mllp-port",
            str(billing),
            "--state",
            str(project / "sandbox.db"),
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
        seed_sap(http)
        set_latency(http, latency)
        wait_port(mllp)
        t0 = time.perf_counter()
        ids = list(range(n))
        threads = [
            threading.Thread(target=send_all, args=(mllp, ids[i::senders])) for i in range(senders)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        db = project / "var/wharf.db"
        while open_rows(db):
            if time.perf_counter() - t0 > 600:
                raise RuntimeError("timed out")
            time.sleep(0.02)
        elapsed = time.perf_counter() - t0
        state = sqlite3.connect(project / "sandbox.db")
        documents = state.execute(
            "SELECT COUNT(*) FROM erp_documents WHERE system = 'sap' AND kind = 'material_document'"
        ).fetchone()[0]
        state.close()
        return elapsed, documents, summary(http)["calls"]["sap"]
    except Exception:
        log.flush()
        print((project / "run.log").read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        for proc in (engine, sandbox):
            proc.terminate()
            proc.wait(timeout=30)
        log.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--messages", type=int, default=600)
    p.add_argument("--senders", type=int, default=8)
    p.add_argument("--max-items", type=int, default=50)
    p.add_argument(
        "--latency",
        type=float,
        default=0.05,
        help="seconds the emulated SAP takes to answer each call (a cloud round trip plus its "
        "processing; default 0.05)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="wharf-erp-bulk-"))
    events = args.messages
    try:
        single, single_docs, single_calls = run(
            tmp, args.messages, args.senders, None, args.latency
        )
        bulk, bulk_docs, bulk_calls = run(
            tmp, args.messages, args.senders, args.max_items, args.latency
        )
        for docs in (single_docs, bulk_docs):
            if docs != args.messages:
                raise RuntimeError(f"expected {args.messages} material documents (got {docs})")
        print(
            f"{events} events (a message and a stock issue each); SAP "
            f"answers each call after {args.latency * 1000:g} ms; 8 calls in flight"
        )
        print(
            f"one call per event: {events / single:8.1f} events/s  "
            f"({single:.2f} s, {single_calls} SAP calls)"
        )
        print(
            f"bulk ($batch <= {args.max_items}):  {events / bulk:8.1f} events/s  "
            f"({bulk:.2f} s, {bulk_calls} SAP calls)"
        )
        print(f"ratio bulk / one call per event: {single / bulk:.2f}")
        return 0
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
