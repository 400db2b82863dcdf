"""Two Wharf nodes on one PostgreSQL behind HAProxy, on loopback (issue 15).

Real processes: a throw-away PostgreSQL cluster (tests/conftest.py), the sample ERP
(``wharf demo-erp``), two ``wharf run`` of one project copy with ``WHARF_DB`` naming the same
database and ports of their own, and HAProxy (deploy/haproxy/haproxy.cfg's layout) spreading
MLLP senders over them. Senders are threads with raw sockets, each waiting for its ACK.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from engine.runtime.store import open_store
from tests.integration.helpers import (
    Processes,
    free_port,
    make_messages,
    port_open,
    wait_until,
    wharf_env,
)
from tests.integration.pg_helpers import (
    Resenders,
    all_sent,
    assert_delivered_once,
    node_with_erp,
)
from tests.integration.test_mllp_peers import MLLP_CHANNEL, STENT, MllpConn, msa

LEASE = "3s"  # the destinations' lease: a dead node's claims come back soon


def haproxy_config(port: int, nodes: list[int]) -> str:
    """deploy/haproxy/haproxy.cfg's MLLP part, on loopback ports."""
    servers = "\n".join(
        f"    server node{i} 127.0.0.1:{p} check" for i, p in enumerate(nodes, start=1)
    )
    return (
        "defaults\n    timeout connect 2s\n    timeout client 2m\n    timeout server 2m\n"
        "    retries 3\n    option redispatch\n"
        f"frontend mllp\n    mode tcp\n    bind 127.0.0.1:{port}\n    default_backend nodes\n"
        "backend nodes\n    mode tcp\n    balance roundrobin\n    option tcp-check\n"
        f"    default-server inter 200ms fall 1 rise 2\n{servers}\n"
    )


def with_lease(project: Path) -> None:
    path = project / "channels" / "usage_mllp.yaml"
    text = path.read_text()
    for anchor in (
        "    concurrency: 8\n",
        "      dir: ${WHARF_MLLP_ARCHIVE:-var/out/usage_mllp}\n",
    ):
        assert anchor in text, f"usage_mllp.yaml's destinations changed: no {anchor!r}"
        text = text.replace(anchor, anchor + f"    lease: {LEASE}\n", 1)
    path.write_text(text)


def sql(url: str, statement: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute(statement).fetchall()


@pytest.mark.integration
@pytest.mark.slow
def test_two_nodes_behind_haproxy_kill_9_one_and_nothing_is_lost_or_doubled(
    project_dir: Path, tmp_path: Path, pg_url: str
) -> None:
    """8 senders through HAProxy, spread over two nodes; once 200 AAs came back node 1 is
    SIGKILLed. Senders whose connection died resend what got no ACK through HAProxy (node 2
    now). Node 2 takes over node 1's claimed deliveries once their lease ran out; node 1 is
    restarted and takes traffic again. At the end every control id is stored once, reached
    the ERP with exactly one Idempotency-Key (the stored one), and nothing is open."""
    if shutil.which("haproxy") is None:
        pytest.skip("HAProxy (haproxy) not installed: apt-get install haproxy")
    with_lease(project_dir)
    batches = [make_messages(120, f"PG{n}-", sample=STENT) for n in range(8)]
    by_cid = {cid: data for batch in batches for cid, data in batch}

    with Processes(tmp_path) as procs:
        erp_port = free_port()
        record = tmp_path / "erp.ndjson"
        envs = []
        for n in (1, 2):
            env = wharf_env(tmp_path / f"node{n}", erp_port)
            env["WHARF_DB"] = pg_url
            envs.append(env)
        procs.receiver(erp_port, record, envs[0])
        node1 = procs.wharf(project_dir, envs[0], name="node1")
        node2 = procs.wharf(project_dir, envs[1], name="node2")
        ports = [int(e["MLLP_PORT"]) for e in envs]
        front = free_port()
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(haproxy_config(front, ports))
        proxy = procs.start("haproxy", ["haproxy", "-db", "-f", str(cfg)], envs[0])
        wait_until(lambda: port_open(front), 15, "HAProxy listening", procs=[proxy])

        senders = Resenders(front, batches, attempts=20).start()
        wait_until(lambda: senders.acked() >= 200, 90, "200 AAs", procs=[node1, node2])
        node1.kill9()
        claimed_at_kill = {
            row[0] for row in sql(pg_url, "SELECT id FROM outbox WHERE status = 'inflight'")
        }
        assert senders.join(180), "a sender hung"
        assert set(senders.outcome.values()) == {"AA"}, Counter(senders.outcome.values())

        # Node 2 alone: node 1's claims come back after their lease and node 2 sends them.
        held: list[Any] = []

        def taken_over() -> bool:
            if not claimed_at_kill:
                return True
            ids = ",".join(str(i) for i in claimed_at_kill)
            held[:] = sql(
                pg_url,
                "SELECT id, destination, status, lease_until, next_attempt_at, attempts "
                f"FROM outbox WHERE id IN ({ids})",
            )
            return {r[2] for r in held} <= {"sent"}

        try:
            wait_until(taken_over, 90, "node 2 sending node 1's claims", procs=[node2])
        finally:
            print(f"claims of node 1 at the kill, now: {held} (time {time.time()})")
        node1_again = procs.wharf(project_dir, envs[0], name="node1-again")
        sent = set(by_cid)

        wait_until(
            lambda: all_sent(pg_url, sent), 120, "every message sent", procs=[node2, node1_again]
        )
        assert_delivered_once(pg_url, sent, record)
        proxy.stop()
        print(
            f"\n{len(sent)} messages over two nodes, node 1 killed after "
            f"{len(senders.outcome)} answers; {len(claimed_at_kill)} claim(s) "
            f"held at the kill, taken over by node 2"
        )


@pytest.mark.integration
def test_the_same_message_to_both_nodes_at_once_is_stored_once(
    project_dir: Path, tmp_path: Path, pg_url: str
) -> None:
    """100 times the same DFT^P03 to both nodes at the same moment: one message stored each
    time, and both senders get the same ACK byte for byte."""
    batch = make_messages(100, "TWIN-", sample=STENT)
    with Processes(tmp_path) as procs:
        erp_port = free_port()
        envs = []
        for n in (1, 2):
            env = wharf_env(tmp_path / f"node{n}", erp_port)
            env["WHARF_DB"] = pg_url
            envs.append(env)
        procs.receiver(erp_port, tmp_path / "erp.ndjson", envs[0])
        nodes = [procs.wharf(project_dir, e, name=f"node{i}") for i, e in enumerate(envs, 1)]
        conns = [MllpConn.connect(int(e["MLLP_PORT"]), timeout=15) for e in envs]
        different = []
        for cid, data in batch:
            gate = threading.Barrier(2)
            acks: list[bytes] = [b"", b""]

            def send(i: int, gate: Any = gate, data: bytes = data, out: Any = acks) -> None:
                gate.wait()
                conns[i].send(data)
                out[i] = conns[i].read()

            threads = [threading.Thread(target=send, args=(i,)) for i in (0, 1)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            if acks[0] != acks[1] or msa(acks[0]) != ("AA", cid):
                different.append(cid)
        for c in conns:
            c.close()
        assert not different, different[:5]
        with open_store(pg_url) as store:
            rows = store.search(channel=MLLP_CHANNEL, limit=10_000)
        assert Counter(r.control_id for r in rows) == Counter(cid for cid, _ in batch)
        assert all(n.alive() for n in nodes)


def fhir_post(port: int, body: bytes) -> tuple[int, dict[str, str]]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(
            "POST",
            "/fhir/R5/SupplyDelivery",
            body,
            {"Content-Type": "application/fhir+json", "Authorization": f"Bearer {FHIR_TOKEN}"},
        )
        answer = conn.getresponse()
        answer.read()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}
    finally:
        conn.close()


FHIR_TOKEN = "wharf-demo-pou-token"  # the shipped channel's demo token


@pytest.mark.integration
def test_postgresql_stopped_immediately_under_load_mllp_gets_ar_fhir_503_nothing_lost(
    project_dir: Path, tmp_path: Path
) -> None:
    """``pg_ctl stop -m immediate`` while a sender is busy: while the database is down an MLLP
    message is answered AR (nothing stored: the sender resends) and a FHIR SupplyDelivery 503
    with Retry-After; started again, the resends are stored, each message once, and nothing
    reached the ERP twice; every message reaches it within a bounded wait (the workers come
    back by themselves: tests/integration/test_postgres_restart.py has it under more load)."""
    from engine.testing.postgres import Cluster

    with_lease(project_dir)  # a send whose outcome could not be recorded goes again soon
    batch = make_messages(150, "OUT-", sample=STENT)
    delivery = (Path(__file__).parents[2] / "samples/fhir/r5_supplydelivery_code.json").read_bytes()
    answers: Counter[str] = Counter()
    with Cluster(fsync=True) as cluster, Processes(tmp_path) as procs:
        url = cluster.create_database("outage")
        env, record, node = node_with_erp(procs, project_dir, tmp_path, url)
        down = threading.Event()
        up_again = threading.Event()

        def sender() -> None:
            with MllpConn.connect(int(env["MLLP_PORT"]), timeout=30) as conn:
                for i, (_cid, data) in enumerate(batch):
                    if i == 50:
                        down.set()
                        up_again.wait(60)  # (the database is stopped meanwhile, below)
                    while True:
                        conn.send(data)
                        code, _ = msa(conn.read())
                        answers[code] += 1
                        if code == "AA":
                            break
                        time.sleep(0.2)

        thread = threading.Thread(target=sender, daemon=True)
        thread.start()
        assert down.wait(60)
        cluster.stop("immediate")
        with MllpConn.connect(int(env["MLLP_PORT"]), timeout=30) as conn:
            extra_cid, extra = make_messages(1, "DOWN-", sample=STENT)[0]
            conn.send(extra)
            assert msa(conn.read()) == ("AR", extra_cid)
        status, headers = fhir_post(int(env["FHIR_PORT"]), delivery)
        assert status == 503 and "retry-after" in headers, (status, headers)
        cluster.start()
        up_again.set()
        thread.join(120)
        assert not thread.is_alive()
        with MllpConn.connect(int(env["MLLP_PORT"]), timeout=30) as conn:
            conn.send(extra)  # the AR'd message, resent
            assert msa(conn.read()) == ("AA", extra_cid)
        sent = {cid for cid, _ in batch} | {extra_cid}
        with open_store(url) as store:
            rows = store.search(channel=MLLP_CHANNEL, limit=10_000)
        # every message AA'd is stored, each once (the AR'd one only after its resend)
        assert Counter(r.control_id for r in rows) == Counter(sent)
        assert node.alive()

        # and, within a bounded wait, reached the ERP once, under its stored key
        wait_until(lambda: all_sent(url, sent), 60, "every delivery sent", procs=[node])
        assert_delivered_once(url, sent, record)
        print(f"\nanswers while PostgreSQL went down and came back: {dict(answers)}")
