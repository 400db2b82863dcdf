"""Two Wharf nodes on one PostgreSQL sharing one folder tree, behind HAProxy (issue 15).

Real processes on loopback: a throw-away PostgreSQL cluster (tests/conftest.py), ``wharf
demo-erp`` or ``wharf sandbox`` as the ERP, two ``wharf run`` of one project folder (the shared
volume: the SFTP accounts' folders and the SFTP host key are the same files for both) with
``WHARF_DB`` naming the same database, and HAProxy with deploy/haproxy/haproxy.cfg's sections
on loopback ports.
"""

from __future__ import annotations

import shutil
import threading
from collections import Counter
from pathlib import Path

import pytest

from engine.runtime.store import open_store
from tests.integration.helpers import (
    Processes,
    free_port,
    read_ndjson,
    wait_until,
    wharf_env,
)
from tests.integration.sftp_helpers import (
    keygen,
    known_hosts_line,
    missing_openssh,
    sftp_batch_sync,
)

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_HAPROXY = ROOT / "deploy" / "haproxy" / "haproxy.cfg"


def shipped_haproxy(sections: dict[str, tuple[int, list[int]]]) -> str:
    """deploy/haproxy/haproxy.cfg's ``defaults`` and the named frontends with their backends,
    bound to loopback: ``{frontend: (port, [node ports])}``."""
    blocks: list[list[str]] = []
    for line in SHIPPED_HAPROXY.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith(" "):
            blocks.append([line])
        elif blocks:
            blocks[-1].append(line)
    backends: dict[str, str] = {}
    for block in blocks:
        kind, _, name = block[0].partition(" ")
        if kind == "frontend" and name in sections:
            backends[next(ln for ln in block if "default_backend" in ln).split()[-1]] = name
    out: list[str] = []
    for block in blocks:
        kind, _, name = block[0].partition(" ")
        if kind == "defaults":
            out.extend(block)
        elif kind == "frontend" and name in sections:
            port = sections[name][0]
            out.extend(f"    bind 127.0.0.1:{port}" if "bind" in ln else ln for ln in block)
        elif kind == "backend" and name in backends:
            nodes = sections[backends[name]][1]
            out.extend(ln for ln in block if "server " not in ln or "default-server" in ln)
            out.extend(f"    server node{i} 127.0.0.1:{p} check" for i, p in enumerate(nodes, 1))
    assert backends, f"{SHIPPED_HAPROXY} has none of the frontends {sorted(sections)}"
    return "\n".join(out) + "\n"


def node_envs(tmp_path: Path, erp_port: int, pg_url: str, count: int = 2) -> list[dict[str, str]]:
    """The environments of ``count`` nodes: ports and folders of their own, one database."""
    return [
        {**wharf_env(tmp_path / f"node{n}", erp_port), "WHARF_DB": pg_url}
        for n in range(1, count + 1)
    ]


def ssh_banner(port: int) -> bool:
    """Whether a connection to ``port`` is answered with an SSH banner (HAProxy has a live
    node behind it)."""
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            return sock.recv(64).startswith(b"SSH-2.0-")
    except OSError:
        return False


def sftp_project(root: Path, partner_key: str) -> Path:
    """A project whose SFTP accounts' inbound folders feed one channel (a drop folder on
    ``var/sftp/*/inbound``) delivering each file to the ERP over HTTP."""
    (root / "channels").mkdir(parents=True)
    (root / "routes.yaml").write_text(
        "store: ${WHARF_DB}\nreload_interval: 0\n"
        "sftp_server:\n"
        "  listen: tcp:${SFTP_PORT}:interface=127.0.0.1\n"
        "  host_key: var/sftp/host_key\n"
        "  partners:\n"
        "    - name: acme\n"
        "      root: var/sftp/acme\n"
        f"      authorized_keys: ['{partner_key}']\n"
        "    - name: harbor\n"
        "      root: var/sftp/harbor\n"
        f"      authorized_keys: ['{partner_key}']\n"
        "admin:\n  listen: tcp:${ADMIN_PORT}:interface=127.0.0.1\n"
    )
    (root / "channels/partner_files.yaml").write_text(
        "source:\n  dropfolder:\n    path: var/sftp/*/inbound\n"
        "    processed_dir: var/sftp/*/archive\n    error_dir: var/sftp/*/error\n"
        "    min_age: 100ms\n    poll_interval: 100ms\n    lease: 2s\n"
        "destinations:\n"
        "  - name: erp\n"
        "    http: {url: '${ERP_URL}/partner-files'}\n"
        "    retry: {max_attempts: 20, initial: 200ms, max_delay: 1s}\n"
    )
    return root


@pytest.mark.integration
def test_sftp_through_haproxy_to_two_nodes_on_one_folder_tree_each_file_once(
    tmp_path: Path, pg_url: str
) -> None:
    """50 files uploaded over 10 SFTP sessions through HAProxy (the shipped SFTP section,
    round robin over two nodes that share the project folder and its host key): the upload
    registry shows uploads written by both nodes; each file is stored once, reached the ERP
    under one Idempotency-Key, and is in archive/ once; the pickup of each partner folder was
    held by one node (its lease row)."""
    if shutil.which("haproxy") is None:
        pytest.skip("HAProxy (haproxy) not installed: apt-get install haproxy")
    if missing_openssh():
        pytest.skip(str(missing_openssh()))
    key, public = keygen(tmp_path / "partner_key")
    project = sftp_project(tmp_path / "project", public)
    names = [(("acme", "harbor")[n % 2], f"F{n:03d}.txt") for n in range(50)]
    local = tmp_path / "files"
    local.mkdir()
    for account, name in names:
        (local / f"{account}-{name}").write_text(f"file {account}/{name}\n")

    with Processes(tmp_path) as procs:
        erp_port = free_port()
        envs = node_envs(tmp_path, erp_port, pg_url)
        record = tmp_path / "erp.ndjson"
        procs.receiver(erp_port, record, envs[0])
        nodes = [procs.wharf(project, e, name=f"node{i}") for i, e in enumerate(envs, 1)]
        front = free_port()
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(shipped_haproxy({"sftp": (front, [int(e["SFTP_PORT"]) for e in envs])}))
        proxy = procs.start("haproxy", ["haproxy", "-db", "-f", str(cfg)], envs[0])
        wait_until(lambda: ssh_banner(front), 15, "an SSH banner through HAProxy", procs=[proxy])
        known = tmp_path / "known_hosts"
        known.write_text(
            known_hosts_line(front, (project / "var/sftp/host_key.pub").read_text().strip())
        )
        failures: list[str] = []

        def session(batch: list[tuple[str, str]]) -> None:
            account = batch[0][0]
            commands = [f"put {local / f'{a}-{n}'} inbound/{n}" for a, n in batch]
            result = sftp_batch_sync(
                commands, port=front, user=account, key=key, known_hosts=known, timeout=60
            )
            if result.rc != 0:
                failures.append(f"{account}: rc {result.rc}: {result.err[-500:]}")

        sessions = []
        for account in ("acme", "harbor"):
            mine = [item for item in names if item[0] == account]
            sessions += [mine[i : i + 5] for i in range(0, len(mine), 5)]
        threads = [threading.Thread(target=session, args=(b,)) for b in sessions]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert not failures, failures

        def archived() -> int:
            return sum(
                len(list((project / f"var/sftp/{a}/archive").glob("F*.txt")))
                for a in ("acme", "harbor")
            )

        def delivered() -> bool:
            with open_store(pg_url) as store:
                counts = store.counts(channel="partner_files")
            return archived() == 50 and counts["deliveries"] == {"sent": 50}

        wait_until(delivered, 60, "50 files archived and delivered", procs=nodes)

        with open_store(pg_url) as store:
            rows = store.search(channel="partner_files", limit=1000)
            uploads = store.uploads()
            leases = store.leases("dropfolder:")
            keys = {r.id: {d["idempotency_key"] for d in store.deliveries_for(r.id)} for r in rows}
        # each file stored once (its name is the message's peer), one delivery each
        assert sorted(Counter(r.peer for r in rows).values()) == [1] * 50
        assert {r.peer for r in rows} == {n for _, n in names}
        assert all(len(k) == 1 for k in keys.values())
        # the ERP got each file once, under that delivery's key
        erp: dict[str, set[str]] = {}
        for entry in read_ndjson(record):
            erp.setdefault(entry["body_text"], set()).add(entry["idempotency_key"])
        assert set(erp) == {f"file {a}/{n}\n" for a, n in names}
        assert all(len(k) == 1 for k in erp.values())
        # the registry: every upload complete and handed over, written through both nodes
        assert len(uploads) == 50 and {u["state"] for u in uploads} == {"handed"}
        assert {u["message_id"] for u in uploads} == {r.id for r in rows}
        pids = {int(u["node"].split(":")[1]) for u in uploads}
        assert pids == {n.pid for n in nodes}, (pids, [n.pid for n in nodes])
        assert {lease["name"] for lease in leases} == {
            "dropfolder:var/sftp/acme/inbound",
            "dropfolder:var/sftp/harbor/inbound",
        }
        for account in ("acme", "harbor"):
            assert list((project / f"var/sftp/{account}/inbound").iterdir()) == []
        proxy.stop()
        handed = Counter(int(u["handed_by"].split(":")[1]) for u in uploads)
        print(
            f"\n50 files over {len(sessions)} SFTP sessions through HAProxy: written by "
            f"{dict(Counter(int(u['node'].split(':')[1]) for u in uploads))}, picked up by "
            f"{dict(handed)} (pids)"
        )
