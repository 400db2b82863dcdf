"""``kill -9`` while the ERP releases purchase orders: every PO leaves as exactly one 850, and
no X12 control number (ISA13, GS06) is ever used for two interchanges.

Real processes: ``wharf demo-erp`` (records the PO transmissions) and ``wharf run`` on a copy of
the shipped project. 120 POs are POSTed to the ``po_to_vendor`` channel from 4 threads, the way
the ERP's webhook would; ``wharf run`` is SIGKILLed after ~40 answers, restarted, and every PO
is POSTed again (the ERP resends what got no answer, and some it did).
"""

from __future__ import annotations

import http.client
import json
import threading
from collections import Counter
from pathlib import Path

import pytest

from engine.x12.segments import transaction_sets
from tests.integration.helpers import Processes, free_port, read_ndjson, wait_until, wharf_env

TOTAL = 120
KILL_AFTER = 40
TOKEN = "wharf-demo-erp-token"
PO = json.loads(
    (Path(__file__).resolve().parents[2] / "samples/erp/purchase_order_4500012345.json").read_text()
)


def post(port: int, n: int) -> int:
    """POST PO number n; the HTTP status, or 0 when the connection failed (wharf is down)."""
    body = json.dumps({**PO, "po_number": f"45{n:08d}"}).encode()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request(
            "POST",
            "/erp/purchase-orders",
            body,
            {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        status = conn.getresponse().status
        conn.close()
        return status
    except OSError:
        return 0


@pytest.mark.integration
def test_kill_9_while_pos_are_released(project_dir: Path, tmp_path: Path) -> None:
    erp_port = free_port()
    env = wharf_env(tmp_path, erp_port)
    port = int(env["PO_HTTP_PORT"])
    record = tmp_path / "erp.ndjson"
    outbound = project_dir / "var/sftp/acmemed/outbound"
    answered: Counter[int] = Counter()
    lock = threading.Lock()
    with Processes(tmp_path) as procs:
        procs.receiver(erp_port, record, env)
        wharf = procs.wharf(project_dir, env)

        def feed(numbers: list[int]) -> None:
            for n in numbers:
                status = post(port, n)
                with lock:
                    answered[status] += 1
                    if sum(c for s, c in answered.items() if s) >= KILL_AFTER and wharf.alive():
                        wharf.kill9()

        threads = [
            threading.Thread(target=feed, args=(list(range(i, TOTAL, 4)),)) for i in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not wharf.alive(), "wharf was not killed: raise TOTAL"
        assert answered[202] >= KILL_AFTER - 4  # accepted before the crash
        erp = procs.procs[0]
        second = procs.wharf(project_dir, env, name="wharf-2")
        again = Counter(post(port, n) for n in range(TOTAL))
        assert set(again) <= {200, 202}, again  # 200: it was stored before the crash
        assert again[200] >= KILL_AFTER - 4

        def all_sent() -> bool:
            return (
                len(list(outbound.glob("850_*.x12"))) >= TOTAL and len(read_ndjson(record)) >= TOTAL
            )

        wait_until(
            all_sent,
            90,
            f"{TOTAL} 850s in outbound/ and transmissions at the ERP",
            procs=[erp, second],
        )

    files = sorted(outbound.glob("850_*.x12"))
    pos: Counter[str] = Counter()
    isa13s: Counter[str] = Counter()
    gs06s: Counter[str] = Counter()
    for f in files:
        ((ic, group, ts),) = list(transaction_sets(f.read_bytes()))
        isa13s[ic.control_number] += 1
        gs06s[group.control_number] += 1
        beg = next(seg for seg in ts.segments if seg[0] == "BEG")
        pos[beg[3]] += 1
        assert f.name == f"850_acmemed_{ic.control_number}.x12"
    assert len(files) == TOTAL
    assert set(pos.values()) == {1} and len(pos) == TOTAL  # each PO exactly once
    assert set(isa13s.values()) == {1} and set(gs06s.values()) == {1}  # never reused
    # Each PO's transmission reached the ERP under one Idempotency-Key (resends reuse it).
    keys: dict[str, set[str]] = {}
    for request in read_ndjson(record):
        keys.setdefault(request["path"], set()).add(request["idempotency_key"])
    assert len(keys) == TOTAL and all(len(k) == 1 for k in keys.values()), keys
