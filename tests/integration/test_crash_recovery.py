"""A ``kill -9`` of ``wharf run`` in the middle of a busy drop folder loses nothing and
resends only with the original Idempotency-Key.

Real processes: the sample ERP (``wharf demo-erp``) and ``wharf run`` on a copy of the shipped
project, with the store, inbox and archive in the test's temporary folder.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers import (
    Processes,
    all_messages,
    deliveries_by_control_id,
    drop_file,
    free_port,
    hidden_files,
    keys_by_control_id,
    make_messages,
    open_store,
    read_ndjson,
    visible_files,
    wait_until,
    wharf_env,
)

TOTAL = 1000
CHUNK = 250
KILL_AT = 300  # requests recorded by the receiver before the crash


@contextlib.contextmanager
def _stop_feeder(
    feeder: threading.Thread, abort: threading.Event, killed: threading.Event
) -> Iterator[None]:
    """Whatever happens, the feeder thread stops before the test's folders go away."""
    try:
        yield
    finally:
        abort.set()
        killed.set()
        if feeder.is_alive():
            feeder.join(timeout=10)


@pytest.mark.integration
def test_kill_9_midway_then_restart_delivers_every_message_once_per_key(
    project_dir: Path, tmp_path: Path
) -> None:
    """1,000 distinct DFT^P03 files are fed into the inbox while wharf runs; once the ERP has
    seen ~300 requests wharf is SIGKILLed (files still waiting, deliveries in flight), and
    the feeder keeps dropping files while it is down. After a restart with the same settings
    every control id reaches the ERP, always with the same single Idempotency-Key (resends
    after the crash included), the store ends with 1,000 messages and 2,000 deliveries all
    `sent`, the inbox is empty (all in processed/) and the archive holds exactly 1,000 files.
    """
    port = free_port()
    env = wharf_env(tmp_path, port)
    inbox, archive = Path(env["WHARF_INBOX"]), Path(env["WHARF_ARCHIVE"])
    db = Path(env["WHARF_DB"])
    record = tmp_path / "erp.ndjson"
    inbox.mkdir(parents=True)
    messages = make_messages(TOTAL, "CR")
    control_ids = {cid for cid, _ in messages}
    assert len(control_ids) == TOTAL

    killed = threading.Event()
    abort = threading.Event()
    fed = [0]
    feeder_error: list[BaseException] = []

    def feed() -> None:
        """Drop CHUNK files at a time; the last chunk only once wharf was killed, so the
        restart finds files that the first run never saw."""
        try:
            for start in range(0, TOTAL, CHUNK):
                if start + CHUNK >= TOTAL:
                    killed.wait(timeout=60)
                if abort.is_set():
                    return
                for cid, data in messages[start : start + CHUNK]:
                    drop_file(inbox, f"{cid}.hl7", data)
                    fed[0] += 1
                time.sleep(0.5)
        except BaseException as e:  # pragma: no cover - reported by the test
            feeder_error.append(e)

    feeder = threading.Thread(target=feed, name="feeder", daemon=True)
    with Processes(tmp_path) as procs, _stop_feeder(feeder, abort, killed):
        procs.receiver(port, record, env)
        first = procs.wharf(project_dir, env, name="wharf-1")
        t0 = time.monotonic()
        feeder.start()
        wait_until(
            lambda: len(read_ndjson(record)) >= KILL_AT,
            60,
            f"{KILL_AT} requests at the ERP",
            interval=0.05,
            procs=[first],
        )
        first.kill9()
        fed_at_kill = fed[0]
        killed.set()
        t_kill = time.monotonic()
        seen_at_kill = len(read_ndjson(record))
        waiting_at_kill = len(visible_files(inbox))
        with open_store(db) as store:
            at_kill = store.counts()
        print(
            f"\ncrash: SIGKILL after {t_kill - t0:.1f}s with {fed_at_kill} files fed, "
            f"{seen_at_kill} requests at the ERP, {waiting_at_kill} files still in the inbox, "
            f"store {at_kill}"
        )
        unfinished = at_kill["messages"].get("received", 0) + at_kill["messages"].get("queued", 0)
        assert seen_at_kill < TOTAL and (waiting_at_kill or unfinished or fed_at_kill < TOTAL), (
            "the crash came too late: everything was already done"
        )

        t_restart = time.monotonic()
        second = procs.wharf(project_dir, env, name="wharf-2")
        feeder.join(timeout=60)
        assert not feeder.is_alive() and not feeder_error, feeder_error

        def all_arrived() -> bool:
            return set(keys_by_control_id(read_ndjson(record))) >= control_ids

        wait_until(all_arrived, 75, f"all {TOTAL} control ids at the ERP", procs=[second])
        t_erp = time.monotonic()

        def store_settled() -> dict | None:
            with open_store(db) as s:
                counts = s.counts()
            done = counts["messages"] == {"sent": TOTAL} and counts["deliveries"] == {
                "sent": 2 * TOTAL
            }
            return counts if done and len(visible_files(archive)) >= TOTAL else None

        try:
            final = wait_until(store_settled, 30, "the store to settle", procs=[second])
        finally:
            with open_store(db) as s:
                print(f"store at the end: {s.counts()}")
        t_done = time.monotonic()
        recovery_line = next(
            (ln for ln in second.output().splitlines() if "recovery:" in ln), "(no recovery line)"
        )

        entries = read_ndjson(record)
        keys = keys_by_control_id(entries)
        per_key = Counter(e["idempotency_key"] for e in entries)
        resends = len(entries) - len(per_key)
        print(
            f"messages: {TOTAL}; requests at the ERP: {len(entries)}; resends (same key again): "
            f"{resends} over {sum(1 for n in per_key.values() if n > 1)} key(s); "
            f"ERP complete {t_erp - t_restart:.1f}s and store settled {t_done - t_restart:.1f}s "
            f"after the restart; total {t_done - t0:.1f}s\n{recovery_line.strip()}"
        )

        # Every control id arrived, each with exactly one key; 1,000 keys in all.
        assert set(keys) == control_ids, sorted(set(keys) ^ control_ids)[:10]
        multi = {cid: ks for cid, ks in keys.items() if len(ks) != 1}
        assert not multi, f"control ids sent with more than one Idempotency-Key: {multi}"
        assert len(per_key) == TOTAL

        # The store: 1,000 messages all sent, every delivery sent, nothing left open.
        assert final["messages"] == {"sent": TOTAL}
        assert final["deliveries"] == {"sent": 2 * TOTAL}
        assert final["dead_letters"] == 0
        with open_store(db) as store:
            rows = all_messages(store)
            assert len(rows) == TOTAL
            assert {r.control_id for r in rows} == control_ids
            by_cid = deliveries_by_control_id(store)
        # ...and the key the ERP saw is the key the store recorded for that delivery.
        wrong = {
            cid: (by_cid[cid]["erp"]["idempotency_key"], ks)
            for cid, ks in keys.items()
            if {by_cid[cid]["erp"]["idempotency_key"]} != ks
        }
        assert not wrong, f"ERP saw other keys than the store's: {list(wrong.items())[:5]}"

        # The inbox is empty: every file moved to processed/, none refused.
        assert visible_files(inbox) == []
        assert hidden_files(inbox) == []
        processed = visible_files(inbox / "processed")
        assert len(processed) == TOTAL
        assert {p.name.split(".")[0] for p in processed} == control_ids
        assert visible_files(inbox / "error") == []

        # The archive: exactly one file per message (named by idempotency key).
        archived = visible_files(archive)
        assert len(archived) == TOTAL
        assert {p.stem for p in archived} == {
            d["archive"]["idempotency_key"] for d in by_cid.values()
        }
        leftovers = hidden_files(archive)
        if leftovers:
            names = [p.name for p in leftovers]
            print(
                f"note: {len(leftovers)} temporary file(s) left in the archive by the crash: {names}"
            )
