"""FHIR over HTTP benchmark: SupplyDelivery POSTs per second, against a bare twisted.web resource.

``wharf run`` serves the shipped ``channels/fhir_supply.yaml`` as it is (copied with
``routes.yaml`` settings of its own, ``mappings/`` and ``samples/fhir``): the ``fhir_http``
source (bearer token, R5 base), the ``fhir`` codec (fhir.resources validation),
``fhir_supply_to_ledger`` booking each delivery in the ledger, the ERP issue and the FHIR
ChargeItem (ordered per encounter) going to the sandbox (``wharf sandbox``) on the same machine.
The token is the bench's own (``POU_TOKEN_SHA256``). N concurrent HTTP/1.1 keep-alive clients
(in 2 client processes) each POST a distinct SupplyDelivery (the shipped Foley sample with its own
identifier and one of 97 encounters) and wait for the 201 (sent after the store's commit) before
the next.

Figures, for each N in ``--clients``:
- accepted/s: 201 answers per second over ``--seconds`` (any other answer stops the bench);
- end to end: accepted deliveries per second from the first POST until every one is booked and
  delivered (no message left ``received``/``queued``, no delivery pending); every message must
  end ``sent`` and the sandbox must have one issue line and one ChargeItem per delivery;
- bare: the same clients against a bare twisted.web resource that reads the body and answers
  201 without work, in the same run; and the ratio accepted/bare;
- floor: the same clients against the durable FHIR floor (``baselines.DURABLE_FHIR_SERVER``):
  twisted.web, the token's sha256, the JSON validated by fhir.resources and stored in a group
  commit with ``synchronous=FULL`` before the 201; its ratio to bare, and Wharf's accepted/s as
  a share of it. The floor is the least an accepting server on this stack does, so a target
  above its ratio cannot be met.

    python bench/fhir_http.py [--clients 8,32] [--seconds 5] [--profile out.pstat]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baselines import cpu_seconds, start_durable_fhir
from ledger_flow import free_port, wait_port

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-" + os.urandom(16).hex()
BASE = "/fhir/R5"


SAMPLE = json.loads((ROOT / "samples/fhir/r5_supplydelivery_code.json").read_text())


def delivery(tag: str, n: int) -> bytes:
    """The shipped sample (2 Foley trays by charge code on 4 West, chargeable, encounter and
    account extensions) with its own identifier and one of 97 encounters."""
    doc = dict(SAMPLE)
    doc.pop("id", None)
    doc["identifier"] = [{"system": "urn:genhosp:pou:transaction", "value": f"{tag}-{n}"}]
    doc["extension"] = [
        {
            "url": "urn:wharf:extension:encounter",
            "valueReference": {"reference": f"Encounter/ENC-B{n % 97}"},
        },
        SAMPLE["extension"][1],
    ]
    return json.dumps(doc).encode()


async def _client(port: int, tag: str, until: float, counts: dict) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    n = 0
    try:
        while time.perf_counter() < until:
            body = delivery(tag, n)
            n += 1
            writer.write(
                (
                    f"POST {BASE}/SupplyDelivery HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/fhir+json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                ).encode()
                + body
            )
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await reader.readexactly(length)
            counts[status] = counts.get(status, 0) + 1
    finally:
        writer.close()


def _client_process(port: int, clients: int, seconds: float, tag: str, out: mp.Queue) -> None:
    counts: dict[int, int] = {}

    async def main() -> None:
        until = time.perf_counter() + seconds
        await asyncio.gather(*[_client(port, f"{tag}-{i}", until, counts) for i in range(clients)])

    asyncio.run(main())
    out.put(counts)


def load(port: int, clients: int, seconds: float, tag: str) -> tuple[float, dict[int, int]]:
    """Run ``clients`` keep-alive clients in up to 2 processes; (answers per second, statuses)."""
    procs = min(2, clients)
    q: mp.Queue = mp.Queue()
    shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    ps = [
        mp.Process(target=_client_process, args=(port, k, seconds, f"{tag}-p{i}", q))
        for i, k in enumerate(shares)
    ]
    t0 = time.perf_counter()
    for p in ps:
        p.start()
    total: dict[int, int] = {}
    for _ in ps:
        for status, k in q.get(timeout=seconds + 120).items():
            total[status] = total.get(status, 0) + k
    for p in ps:
        p.join()
    elapsed = max(time.perf_counter() - t0, seconds)
    return sum(total.values()) / elapsed, total


BARE = """
import sys
from twisted.internet import reactor
from twisted.web import resource, server

class Bare(resource.Resource):
    isLeaf = True
    def render_POST(self, request):
        request.content.read()
        request.setResponseCode(201)
        request.setHeader(b"content-type", b"application/fhir+json")
        request.setHeader(b"location", b"/fhir/R5/SupplyDelivery/1/_history/1")
        return b'{"resourceType":"SupplyDelivery","id":"1"}'

site = server.Site(Bare())
site.log = lambda request: None
reactor.listenTCP(int(sys.argv[1]), site, interface="127.0.0.1")
reactor.run()
"""


SHIPPED = "fhir_supply.yaml"


PROFILED = """
import sys, yappi
from engine.cli import main
yappi.set_clock_type(sys.argv[3])
yappi.start(profile_threads=True)
try:
    main(["--root", sys.argv[1], "run"])
finally:
    yappi.stop()
    yappi.get_func_stats().save(sys.argv[2], type="pstat")
    with open(sys.argv[2] + ".threads.txt", "w") as out:
        yappi.get_thread_stats().print_all(out=out)
"""


def sandbox_state(port: int) -> dict[str, int]:
    """The sandbox's counters (``GET /state``): issues, issue_lines, charges, requisitions."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/state", timeout=30) as resp:
        return json.loads(resp.read())


def failed(db: Path) -> list[tuple[str, str, int]]:
    """(status, error, count) of the messages that did not end ``sent``."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT status, substr(error, 1, 200), COUNT(*) FROM messages "
            "WHERE status != 'sent' GROUP BY 1, 2"
        ).fetchall()
    finally:
        conn.close()


def pending(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        msgs = conn.execute(
            "SELECT COUNT(*) FROM messages WHERE status IN ('received', 'queued')"
        ).fetchone()[0]
        out = conn.execute(
            "SELECT COUNT(*) FROM outbox WHERE status IN ('pending', 'inflight')"
        ).fetchone()[0]
    finally:
        conn.close()
    return msgs + out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", default="8,32")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.add_argument(
        "--profile",
        metavar="FILE",
        help="run wharf under yappi; write pstats to FILE and thread totals to FILE.threads.txt",
    )
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu", help="yappi clock")
    p.add_argument(
        "--ingest-only",
        action="store_true",
        help="the shipped channel without its transform, ledger and destinations: the front "
        "door alone (HTTP, token, validation, durable commit, 201)",
    )
    args = p.parse_args()
    levels = [int(x) for x in args.clients.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="wharf-fhir-bench-"))
    project = tmp / "project"
    (project / "channels").mkdir(parents=True)
    (project / "routes.yaml").write_text(
        "store: ${WHARF_DB}\nreload_interval: 0s\npipeline_threads: 2\n"
    )
    shutil.copytree(ROOT / "mappings", project / "mappings")
    shutil.copytree(ROOT / "samples" / "fhir", project / "samples" / "fhir")
    shutil.copy(ROOT / "channels" / SHIPPED, project / "channels" / SHIPPED)  # as shipped
    if args.ingest_only:
        import yaml

        channel = yaml.safe_load((ROOT / "channels" / SHIPPED).read_text())
        for key in ("transformer", "ledger", "destinations", "tests"):
            channel.pop(key, None)
        (project / "channels" / SHIPPED).write_text(yaml.safe_dump(channel))
    fhir, http, billing, bare = free_port(), free_port(), free_port(), free_port()
    floor = free_port()
    db = tmp / "wharf.db"
    env = {
        **os.environ,
        "FHIR_PORT": str(fhir),
        "POU_TOKEN_SHA256": hashlib.sha256(TOKEN.encode()).hexdigest(),
        "ERP_URL": f"http://127.0.0.1:{http}",
        "BILLING_FHIR_URL": f"http://127.0.0.1:{http}/fhir",
        "WHARF_DB": str(db),
        "WHARF_LOG_LEVEL": "warn",
    }
    wharf = Path(sys.executable).parent / "wharf"
    log = open(tmp / "bench.log", "w")
    run_cmd = [str(wharf), "--root", str(project), "run"]
    if args.profile:
        profile = str(Path(args.profile).resolve())
        run_cmd = [sys.executable, "-c", PROFILED, str(project), profile, args.clock]
    procs = [
        subprocess.Popen(
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
        ),
        subprocess.Popen(run_cmd, stdout=log, stderr=log, env=env),
        subprocess.Popen([sys.executable, "-c", BARE, str(bare)], stdout=log, stderr=log),
        start_durable_fhir(tmp, floor, env["POU_TOKEN_SHA256"]),
    ]
    try:
        for port in (http, fhir, bare, floor):
            wait_port(port)
        mode = " (ingest only: no transform, ledger or deliveries)" if args.ingest_only else ""
        print(
            f"FHIR SupplyDelivery POST, {args.seconds:g} s per run, HTTP/1.1 keep-alive "
            f"clients{mode}"
        )
        print(
            f"{'clients':>8} {'accepted/s':>11} {'end to end':>11} {'bare/s':>9} {'ratio':>6} "
            f"{'floor/s':>8} {'ratio':>6} {'of floor':>8} {'cpu ms':>7}"
        )
        before = sandbox_state(http)
        for n in levels:
            cpu0 = cpu_seconds(procs[1].pid)
            rate, statuses = load(fhir, n, args.seconds, f"c{n}")
            accepted = statuses.get(201, 0)
            cpu_ms = (cpu_seconds(procs[1].pid) - cpu0) * 1000 / max(1, accepted)
            t_end = time.perf_counter()
            while pending(db):
                if time.perf_counter() - t_end > 600:
                    raise RuntimeError("the pipeline did not drain in 600 s")
                time.sleep(0.05)
            drain = time.perf_counter() - t_end
            bare_rate, bare_statuses = load(bare, n, args.seconds, f"b{n}")
            floor_rate, floor_statuses = load(floor, n, args.seconds, f"f{n}")
            if (
                {201} != set(statuses)
                or {201} != set(bare_statuses)
                or {201} != set(floor_statuses)
            ):
                raise RuntimeError(
                    f"expected only 201: wharf {statuses}, bare {bare_statuses}, "
                    f"floor {floor_statuses}"
                )
            bad = failed(db)
            if bad:
                raise RuntimeError(f"messages not sent: {bad}")
            after = sandbox_state(http)
            issued = after["issue_lines"] - before["issue_lines"]
            charged = after["charges"] - before["charges"]
            if args.ingest_only:
                issued = charged = accepted  # nothing goes to the sandbox in this mode
            if issued != accepted or charged != accepted:
                raise RuntimeError(
                    f"expected {accepted} issue lines and ChargeItems in the sandbox "
                    f"(got {issued} and {charged})"
                )
            before = after
            e2e = accepted / (args.seconds + drain)
            print(
                f"{n:>8} {rate:>11.1f} {e2e:>9.1f}/s {bare_rate:>9.1f} {rate / bare_rate:>6.2f} "
                f"{floor_rate:>8.1f} {floor_rate / bare_rate:>6.2f} {rate / floor_rate:>8.2f} "
                f"{cpu_ms:>7.2f}   ({accepted} accepted; drained {drain:.1f} s after the last "
                "answer)"
            )
        print(
            "ratio = accepted/s / bare/s (Wharf, then the floor); of floor = Wharf's accepted/s / "
            "the floor's; floor = twisted.web + token + fhir.resources validation + a group "
            "commit with synchronous=FULL before the 201, nothing else"
        )
        print(
            "cpu ms = Wharf's CPU time (all threads) per accepted POST while the clients ran "
            "(the figure that holds when the machine is shared)"
        )
        return 0
    except Exception:
        log.flush()
        print((tmp / "bench.log").read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
        log.close()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
