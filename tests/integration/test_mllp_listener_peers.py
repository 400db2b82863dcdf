"""Wharf's MLLP listener with real peers nobody here wrote (python-hl7's ``mllp_send`` command and
``MLLPClient``), resends after a lost ACK, concurrent senders, and ``kill -9`` under load.

Real processes: ``wharf run`` on a copy of the shipped project (the ``usage_mllp`` channel on a
free port) and the sample ERP (``wharf demo-erp``) that records what it receives.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import hl7.client
import pytest

from engine.codecs.hl7v2 import tokenize
from tests.integration.helpers import (
    Processes,
    free_port,
    keys_by_control_id,
    make_messages,
    open_store,
    read_ndjson,
    wait_until,
    wharf_env,
)

ROOT = Path(__file__).resolve().parents[2]
MLLP_SEND = Path(sys.executable).parent / "mllp_send"
SB, EB = b"\x0b", b"\x1c\x0d"
CHANNEL = "usage_mllp"


def start(procs: Processes, project: Path, tmp_path: Path) -> tuple[dict[str, str], int, Path]:
    erp_port = free_port()
    env = wharf_env(tmp_path, erp_port)
    record = tmp_path / "erp.ndjson"
    procs.receiver(erp_port, record, env)
    procs.wharf(project, env)
    port = int(env["MLLP_PORT"])
    wait_until(lambda: _listening(port), 30, "wharf's MLLP listener")
    return env, port, record


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def send(sock: socket.socket, raw: bytes, timeout: float = 10) -> bytes:
    """One framed message out, one framed ACK back (MLLP release 2 block format)."""
    sock.settimeout(timeout)
    sock.sendall(SB + raw + EB)
    buf = b""
    while EB not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the ACK")
        buf += chunk
    return buf.split(EB)[0].lstrip(SB)


def messages_of(db: Path) -> list[Any]:
    with open_store(db) as store:
        return store.search(channel=CHANNEL, limit=1_000_000)


@pytest.mark.integration
def test_python_hl7_peers_get_correct_acks(project_dir: Path, tmp_path: Path) -> None:
    """python-hl7's mllp_send gets AA echoing MSH-10 with sender and receiver swapped, and AR
    with ERR 203 for an unsupported version (nothing stored); its MLLPClient sends a Latin-1
    message and gets AA carrying MSH-18."""
    with Processes(tmp_path) as procs:
        env, port, record = start(procs, project_dir, tmp_path)
        out = subprocess.run(
            [
                str(MLLP_SEND),
                "--loose",
                "-p",
                str(port),
                "-f",
                str(ROOT / "samples/hl7/dft_p03_stent_cath.hl7"),
                "127.0.0.1",
            ],
            capture_output=True,
            timeout=30,
            check=True,
        ).stdout
        ack = tokenize(out.strip().replace(b"\n", b"\r"))
        assert (ack.get("MSA-1"), ack.get("MSA-2")) == ("AA", "CATH-55001")
        assert [ack.get(f"MSH-{n}") for n in (3, 4, 5, 6)] == [
            "WHARF",
            "GENHOSP",
            "CATH_POU",
            "GENHOSP",
        ]
        out = subprocess.run(
            [
                str(MLLP_SEND),
                "--loose",
                "-p",
                str(port),
                "-f",
                str(ROOT / "samples/hl7/broken/unsupported_version.hl7"),
                "127.0.0.1",
            ],
            capture_output=True,
            timeout=30,
            check=True,
        ).stdout
        nak = tokenize(out.strip().replace(b"\n", b"\r"))
        assert nak.get("MSA-1") == "AR"
        assert nak.get("ERR-1.4.1") == "203"  # v2.1 message: pre-2.5 ERR-1 form
        with hl7.client.MLLPClient("127.0.0.1", port) as client:
            raw = (ROOT / "samples/hl7/dft_p03_latin1.hl7").read_bytes()
            reply = client.send_message(raw)
        latin = tokenize(reply.strip(SB).split(EB)[0] if SB in reply else reply)
        assert (latin.get("MSA-1"), latin.get("MSH-18")) == ("AA", "8859/1")
        wait_until(lambda: len(read_ndjson(record)) >= 2, 30, "two issues at the ERP")
        ids = sorted(m.control_id for m in messages_of(Path(env["WHARF_DB"])))
        assert ids == ["CATH-55001", "POU-000202"]


@pytest.mark.integration
def test_resend_after_a_lost_ack_and_a_conflict(project_dir: Path, tmp_path: Path) -> None:
    """A resend after a lost ACK gets the same ACK bytes and no second delivery; the same
    MSH-10 with other content gets AE (ERR 205) and is kept as a conflict; pipelined frames on
    one connection are answered in order."""
    ((cid, raw),) = make_messages(1, "LOST")
    with Processes(tmp_path) as procs:
        env, port, record = start(procs, project_dir, tmp_path)
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(SB + raw + EB)  # the ACK is "lost": we close without reading it
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", port)) as s:
            first = send(s, raw)
            second = send(s, raw)
            other = send(s, raw.replace(b"|2|450.00", b"|5|1125.00"))
        assert first == second and tokenize(first).get("MSA-2") == cid
        conflict = tokenize(other)
        # The sample asks for enhanced mode (MSH-15=AL): commit ACKs, CE for the conflict.
        assert (conflict.get("MSA-1"), conflict.get("ERR-3.1")) == ("CE", "205")
        batch = make_messages(5, "PIPE")
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.settimeout(10)
            s.sendall(b"".join(SB + m + EB for _, m in batch))
            buf = b""
            while buf.count(EB) < 5:
                buf += s.recv(65536)
        acked = [tokenize(f.lstrip(SB)).get("MSA-2") for f in buf.split(EB)[:5]]
        assert acked == [c for c, _ in batch]
        wait_until(lambda: len(read_ndjson(record)) >= 6, 30, "six issues at the ERP")
        time.sleep(0.5)
        keys = keys_by_control_id(read_ndjson(record))
        assert len(keys[cid]) == 1 and len(read_ndjson(record)) == 6
        statuses = sorted(m.status for m in messages_of(Path(env["WHARF_DB"])))
        assert statuses.count("conflict") == 1 and len(statuses) == 7


@pytest.mark.integration
def test_many_concurrent_senders(project_dir: Path, tmp_path: Path) -> None:
    """32 connections × 20 messages each, every one answered with a commit ACK (the sample
    asks for enhanced mode); 640 distinct keys at the ERP."""
    with Processes(tmp_path) as procs:
        _, port, record = start(procs, project_dir, tmp_path)
        failures: list[str] = []

        def sender(n: int) -> None:
            try:
                with socket.create_connection(("127.0.0.1", port)) as s:
                    for cid, raw in make_messages(20, f"C{n:02d}-"):
                        if tokenize(send(s, raw)).get("MSA-1") not in ("AA", "CA"):
                            failures.append(cid)
            except Exception as exc:
                failures.append(repr(exc))

        threads = [threading.Thread(target=sender, args=(n,)) for n in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert failures == []
        wait_until(lambda: len(keys_by_control_id(read_ndjson(record))) >= 640, 60, "640 issues")
        assert all(len(k) == 1 for k in keys_by_control_id(read_ndjson(record)).values())


@pytest.mark.integration
def test_kill_9_under_load_loses_no_acked_message(project_dir: Path, tmp_path: Path) -> None:
    """8 senders, kill -9 mid-stream, restart, resend what got no ACK: every message that got
    AA before the kill is stored and reaches the ERP once, with one key; the rest are stored
    once after their resend; nothing is left unprocessed (RELIABILITY P1, P3, P5)."""
    acked: set[str] = set()
    no_ack: dict[str, bytes] = {}
    lock = threading.Lock()
    crashed = threading.Event()
    with Processes(tmp_path) as procs:
        env, port, record = start(procs, project_dir, tmp_path)
        first = procs.procs[-1]

        def sender(n: int) -> None:
            sock = None
            for cid, raw in make_messages(400, f"K{n}-"):
                if crashed.is_set():
                    with lock:
                        no_ack[cid] = raw
                    continue
                try:
                    sock = sock or socket.create_connection(("127.0.0.1", port), timeout=5)
                    code = tokenize(send(sock, raw, 5)).get("MSA-1")
                except Exception:
                    code = None
                    crashed.set()
                with lock:
                    if code in ("AA", "CA"):
                        acked.add(cid)
                    else:
                        no_ack[cid] = raw

        threads = [threading.Thread(target=sender, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        wait_until(lambda: len(acked) >= 300, 60, "300 ACKs")
        first.kill9()
        crashed.set()
        for t in threads:
            t.join(60)
        acked_before_kill = set(acked)
        t0 = time.time()
        procs.wharf(project_dir, env, name="wharf2")
        wait_until(lambda: _listening(port), 30, "restarted listener")
        with socket.create_connection(("127.0.0.1", port)) as s:
            for cid, raw in sorted(no_ack.items()):
                assert tokenize(send(s, raw)).get("MSA-1") in ("AA", "CA"), cid
        everything = acked_before_kill | set(no_ack)
        db = Path(env["WHARF_DB"])
        wait_until(
            lambda: set(keys_by_control_id(read_ndjson(record))) >= everything, 90, "all at the ERP"
        )

        def settled() -> bool:
            with open_store(db) as store:
                c = store.counts(CHANNEL)
            return not (set(c["messages"]) & {"received", "queued"}) and not (
                set(c["deliveries"]) & {"pending", "inflight"}
            )

        wait_until(settled, 60, "nothing left in flight")
        keys = keys_by_control_id(read_ndjson(record))
        stored = [m.control_id for m in messages_of(db)]
        assert acked_before_kill <= set(stored), "a message that got AA before the kill is gone"
        assert len(stored) == len(set(stored)) == len(everything)
        assert all(len(keys[c]) == 1 for c in everything), "a message reached the ERP twice"
        resent_to_erp = len(read_ndjson(record)) - len(everything)
        print(
            f"\nMLLP kill -9: {len(acked_before_kill)} AAs before the kill, {len(no_ack)} without "
            f"ACK resent after restart, {len(everything)} stored once each, {resent_to_erp} ERP "
            f"resend(s) with the same key; settled {time.time() - t0:.1f}s after the restart"
        )
