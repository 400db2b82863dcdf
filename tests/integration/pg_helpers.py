"""Helpers of the tests of Wharf nodes on PostgreSQL (several nodes, PostgreSQL restarts).

:func:`node_with_erp` starts the sample ERP and one ``wharf run`` on a database.
:func:`all_sent` and :func:`assert_delivered_once` check the outcome of
the MLLP usage channel. :class:`Resenders` are MLLP senders that behave like point-of-use systems:
:class:`Resenders` runs one thread per batch, each on one raw MLLP socket: a message answered
AR (the store unreachable: nothing was stored) is resent after a short pause; a connection
that died (a node killed, HAProxy redispatching) is opened again and the message resent.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

from engine.runtime.store import open_store
from tests.integration.helpers import (
    Proc,
    Processes,
    free_port,
    keys_by_control_id,
    read_ndjson,
    wharf_env,
)
from tests.integration.test_mllp_peers import MLLP_CHANNEL, MllpConn, msa

NO_ACK = "no ACK"
#: Pause before a resend (after an AR or a dropped connection).
PAUSE = 0.3


def node_with_erp(
    procs: Processes, project: Path, folder: Path, url: str
) -> tuple[dict[str, str], Path, Proc]:
    """The sample ERP and one node of ``project`` on the database ``url``, their files under
    ``folder``; returns the node's environment, the ERP's record file and the node."""
    erp_port = free_port()
    env = wharf_env(folder / "node", erp_port)
    env["WHARF_DB"] = url
    record = folder / "erp.ndjson"
    procs.receiver(erp_port, record, env)
    return env, record, procs.wharf(project, env)


def all_sent(url: str, sent: set[str]) -> bool:
    """Whether each message of ``sent`` is ``sent`` and so are both its deliveries (ERP and
    archive), nothing else of the MLLP usage channel waiting."""
    with open_store(url) as store:
        counts = store.counts(channel=MLLP_CHANNEL)
    return counts["messages"] == {"sent": len(sent)} and counts["deliveries"] == {
        "sent": 2 * len(sent)
    }


def assert_delivered_once(url: str, sent: set[str], record: Path) -> None:
    """Each control id of ``sent`` is stored once and reached the ERP (its ``record``) under
    exactly one Idempotency-Key: the one stored with its ERP delivery."""
    with open_store(url) as store:
        rows = store.search(channel=MLLP_CHANNEL, limit=1_000_000)
        erp_key = {
            r.control_id: d["idempotency_key"]
            for r in rows
            for d in store.deliveries_for(r.id)
            if d["destination"] == "erp"
        }
    per_cid = Counter(r.control_id for r in rows)
    assert set(per_cid) == sent and set(per_cid.values()) == {1}, per_cid.most_common(3)
    keys = {c: k for c, k in keys_by_control_id(read_ndjson(record)).items() if c in sent}
    assert set(keys) == sent, f"{len(sent - set(keys))} never reached the ERP"
    wrong = {c: k for c, k in keys.items() if k != {erp_key[c]}}
    assert not wrong, f"reached the ERP under other or several keys: {list(wrong.items())[:3]}"


class Resenders:
    """One sender thread per batch of ``(control id, message)`` to ``port`` (module docstring).

    ``outcome`` holds each control id's last answer (``AA``, ``AR``, :data:`NO_ACK` or ``ACK
    for <other id>``) and ``codes`` counts every answer; ``attempts`` bounds the sends of one
    message (None: until AA)."""

    def __init__(
        self, port: int, batches: list[list[tuple[str, bytes]]], attempts: int | None = None
    ) -> None:
        self.port = port
        self.attempts = attempts
        self.outcome: dict[str, str] = {}
        self.codes: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._send_all, args=(batch,), daemon=True) for batch in batches
        ]

    def start(self) -> Resenders:
        for thread in self._threads:
            thread.start()
        return self

    def acked(self) -> int:
        """How many messages were AA'd so far."""
        with self._lock:
            return sum(1 for o in self.outcome.values() if o == "AA")

    def join(self, timeout: float) -> bool:
        """Wait for every sender (at most ``timeout`` seconds each); whether all finished."""
        for thread in self._threads:
            thread.join(timeout)
        return not any(thread.is_alive() for thread in self._threads)

    def _send_all(self, batch: list[tuple[str, bytes]]) -> None:
        conn: MllpConn | None = None
        for cid, data in batch:
            tries = 0
            while self.attempts is None or tries < self.attempts:
                tries += 1
                try:
                    if conn is None:
                        conn = MllpConn.connect(self.port, timeout=15)
                    conn.send(data)
                    code, acked = msa(conn.read())
                except OSError:
                    with self._lock:
                        self.outcome.setdefault(cid, NO_ACK)
                    if conn is not None:
                        conn.close()
                    conn = None
                    time.sleep(PAUSE)
                    continue
                with self._lock:
                    self.outcome[cid] = code if acked == cid else f"ACK for {acked}"
                    self.codes[code] += 1
                if code == "AA":
                    break
                time.sleep(PAUSE)  # AR (the store unreachable): resend later
        if conn is not None:
            conn.close()
