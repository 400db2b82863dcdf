"""A ``kill -9`` of ``wharf run`` while MLLP senders are busy: every ACKed message survives,
and a sender that resends what got no ACK ends with each message stored and delivered once.

Real processes: the sample ERP (``wharf demo-erp``) and ``wharf run`` on a copy of the shipped
project (channel ``usage_mllp``, ``respond_from: after_store``: the AA goes out only after
the commit), with the store in the test's temporary folder. Senders are threads with raw
sockets and MLLP framing, each waiting for its ACK before sending the next message.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.integration.helpers import (
    Processes,
    keys_by_control_id,
    make_messages,
    open_store,
    port_open,
    read_ndjson,
    wait_until,
)
from tests.integration.test_mllp_peers import (
    MLLP_CHANNEL,
    STENT,
    MllpConn,
    field,
    msa,
    segments,
    start_stack,
)

SENDERS = 8
PER_SENDER = 400  # more than can be sent before the kill
KILL_AT = 300  # AAs received before the crash
NO_ACK = "no ACK"


def ack_id_prefix(ack: bytes) -> str:
    """The per-process part of an ACK's own MSH-10 (``A`` + 7 hex digits, random per run of
    wharf): tells an ACK built by the first process from one built after the restart."""
    return field(segments(ack), "MSH", 10)[:8]


@pytest.mark.integration
def test_kill_9_under_mllp_load_then_resending_the_unacked_loses_and_duplicates_nothing(
    project_dir: Path, tmp_path: Path
) -> None:
    """8 senders send distinct DFT^P03 messages (one at a time each, waiting for the ACK);
    once ~300 AAs came back wharf is SIGKILLed mid-stream, and whatever was in flight gets
    no ACK. At that moment every AA'd message is already in the store (AA only after the
    commit). After a restart the senders resend every message that got no ACK: those the
    first process had stored are answered with their stored ACK byte for byte (a
    duplicate), the others are stored now. At the end each control id is stored exactly
    once and reached the ERP with exactly one Idempotency-Key (the one the store recorded),
    and nothing is left in received/queued or pending/inflight."""
    batches = [make_messages(PER_SENDER, f"KL{n}-", sample=STENT) for n in range(SENDERS)]
    by_cid = {cid: data for batch in batches for cid, data in batch}
    outcome: dict[str, str] = {}  # control id -> MSA-1, or NO_ACK
    acks: dict[str, bytes] = {}
    unexpected: list[str] = []
    lock = threading.Lock()
    killed = threading.Event()

    def aa_count() -> int:
        with lock:
            return sum(1 for o in outcome.values() if o in ("AA", "CA"))

    with Processes(tmp_path) as procs:
        run = start_stack(procs, project_dir, tmp_path)
        port = run.port

        def sender(batch: list[tuple[str, bytes]]) -> None:
            conn: MllpConn | None = None
            try:
                for cid, data in batch:
                    if killed.is_set():
                        return
                    try:
                        if conn is None:
                            conn = MllpConn.connect(port, timeout=15)
                        conn.send(data)
                        ack = conn.read()
                    except OSError as e:  # reset, refused, closed before the ACK, timeout
                        with lock:
                            outcome[cid] = NO_ACK
                        if not killed.wait(10):
                            with lock:
                                unexpected.append(f"{cid}: {type(e).__name__}: {e} (no kill)")
                        return
                    code, acked = msa(ack)
                    with lock:
                        outcome[cid] = code
                        acks[cid] = ack
                        if acked != cid:
                            unexpected.append(f"{cid}: ACK for {acked}")
            finally:
                if conn is not None:
                    conn.close()

        threads = [
            threading.Thread(target=sender, args=(b,), name=f"sender-{i}", daemon=True)
            for i, b in enumerate(batches)
        ]
        try:
            t0 = time.monotonic()
            for t in threads:
                t.start()
            wait_until(
                lambda: aa_count() >= KILL_AT,
                60,
                f"{KILL_AT} AAs",
                interval=0.005,
                procs=[run.wharf],
            )
            run.wharf.kill9()
            t_kill = time.monotonic()
            killed.set()
            for t in threads:
                t.join(timeout=20)
            assert not any(t.is_alive() for t in threads), "a sender hung after the kill"
        finally:
            killed.set()

        assert not unexpected, unexpected[:10]
        with lock:
            final_outcome = dict(outcome)
        acked_before = {c for c, o in final_outcome.items() if o in ("AA", "CA")}
        no_ack = sorted(c for c, o in final_outcome.items() if o == NO_ACK)
        others = {c: o for c, o in final_outcome.items() if c not in acked_before and o != NO_ACK}
        assert not others, f"answers other than AA before the kill: {list(others.items())[:5]}"
        assert no_ack, "the kill came between exchanges: no message was in flight"
        prefixes = {ack_id_prefix(acks[c]) for c in acked_before}
        assert len(prefixes) == 1, prefixes
        first_prefix = prefixes.pop()

        # At the crash: every AA'd message is durable; some unACKed ones may be stored too.
        with open_store(run.db) as store:
            rows_at_kill = store.search(channel=MLLP_CHANNEL, limit=1_000_000)
            counts_at_kill = store.counts(channel=MLLP_CHANNEL)
            stored_response = {
                r.control_id: store.get_content(r.id, "response")
                for r in rows_at_kill
                if r.control_id in no_ack
            }
        stored_at_kill = Counter(r.control_id for r in rows_at_kill)
        lost = acked_before - set(stored_at_kill)
        assert not lost, f"AA'd but not in the store after kill -9: {sorted(lost)[:10]}"
        assert all(n == 1 for n in stored_at_kill.values())
        assert set(stored_at_kill) <= acked_before | set(no_ack)
        print(
            f"\ncrash: SIGKILL {t_kill - t0:.1f}s after the first send, with {len(acked_before)} "
            f"AAs received and {len(no_ack)} message(s) without ACK "
            f"({len(stored_response)} of them already stored); store {counts_at_kill}"
        )

        # Restart with the same settings; the senders resend what got no ACK.
        t_restart = time.monotonic()
        second = procs.wharf(project_dir, run.env, name="wharf-2")
        wait_until(lambda: port_open(port), 15, "MLLP listening again", procs=[second])
        resend_acks: dict[str, bytes] = {}
        with MllpConn.connect(port, timeout=15) as conn:
            for cid in no_ack:
                resend_acks[cid] = conn.exchange(by_cid[cid])
        wrong = {c: msa(a) for c, a in resend_acks.items() if msa(a) != ("AA", c)}
        assert not wrong, wrong
        duplicates = {c for c, a in resend_acks.items() if ack_id_prefix(a) == first_prefix}
        # Answered from the store exactly when the first process had stored the message,
        # and then with the stored bytes.
        assert duplicates == set(stored_response), (duplicates, set(stored_response))
        for cid in duplicates:
            assert resend_acks[cid] == stored_response[cid]

        sent = acked_before | set(no_ack)

        def all_at_erp() -> bool:
            return sent <= set(keys_by_control_id(read_ndjson(run.record)))

        wait_until(all_at_erp, 60, f"all {len(sent)} control ids at the ERP", procs=[second])
        t_erp = time.monotonic()

        def store_settled() -> dict | None:
            with open_store(run.db) as s:
                c = s.counts(channel=MLLP_CHANNEL)
            done = c["messages"] == {"sent": len(sent)} and c["deliveries"] == {
                "sent": 2 * len(sent)
            }
            return c if done else None

        try:
            final = wait_until(store_settled, 30, "the store to settle", procs=[second])
        finally:
            with open_store(run.db) as s:
                print(f"store at the end: {s.counts(channel=MLLP_CHANNEL)}")
        t_done = time.monotonic()

        # The store: each control id once, all sent, nothing open anywhere.
        with open_store(run.db) as store:
            rows = store.search(channel=MLLP_CHANNEL, limit=1_000_000)
            erp_key = {}
            for r in rows:
                for d in store.deliveries_for(r.id):
                    if d["destination"] == "erp":
                        erp_key[r.control_id] = d["idempotency_key"]
            everything = store.counts()
        per_cid = Counter(r.control_id for r in rows)
        assert set(per_cid) == sent, sorted(set(per_cid) ^ sent)[:10]
        assert all(n == 1 for n in per_cid.values()), [c for c, n in per_cid.items() if n > 1]
        assert {r.status for r in rows} == {"sent"}
        assert final["messages"] == {"sent": len(sent)}
        assert final["deliveries"] == {"sent": 2 * len(sent)}
        for status in ("received", "queued"):
            assert everything["messages"].get(status, 0) == 0, everything
        for status in ("pending", "inflight"):
            assert everything["deliveries"].get(status, 0) == 0, everything

        # The ERP: one Idempotency-Key per control id, the one the store recorded.
        entries = read_ndjson(run.record)
        keys = {c: k for c, k in keys_by_control_id(entries).items() if c in sent}
        multi = {c: k for c, k in keys.items() if len(k) != 1}
        assert not multi, f"control ids sent with more than one key: {list(multi.items())[:5]}"
        mismatch = {c: (erp_key.get(c), k) for c, k in keys.items() if {erp_key.get(c)} != k}
        assert not mismatch, list(mismatch.items())[:5]
        per_key = Counter(
            e["idempotency_key"] for e in entries if e.get("body", {}).get("source_message") in sent
        )
        assert len(per_key) == len(sent)
        same_key_again = sum(n - 1 for n in per_key.values())

        recovery_line = next(
            (ln for ln in second.output().splitlines() if "recovery:" in ln), "(no recovery line)"
        )
        print(
            f"AAs before the kill: {len(acked_before)}; no ACK: {len(no_ack)}; duplicates "
            f"answered on resend: {len(duplicates)}; stored on resend: "
            f"{len(no_ack) - len(duplicates)}; messages: {len(sent)}; ERP requests "
            f"{sum(per_key.values())} for {len(per_key)} keys (same key sent again "
            f"{same_key_again}x); ERP complete {t_erp - t_restart:.1f}s and store settled "
            f"{t_done - t_restart:.1f}s after the restart\n{recovery_line.strip()}"
        )
