"""An ERP that is down: deliveries back off and wait for it; past the retry limit they become
dead letters that ``wharf replay`` sends again with their original Idempotency-Keys.

Real processes: ``wharf run`` on a copy of the shipped project (its ``usage_to_erp`` retry
made short), the sample ERP (``wharf demo-erp``) started only later on the port wharf posts to.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from tests.integration.helpers import (
    CHANNEL,
    Processes,
    all_messages,
    deliveries_by_control_id,
    drop_file,
    free_port,
    keys_by_control_id,
    make_messages,
    open_store,
    read_ndjson,
    run_cli,
    set_retry,
    visible_files,
    wait_until,
    wharf_env,
)


def _setup(project: Path, tmp_path: Path, retry: str) -> tuple[int, dict[str, str], Path]:
    set_retry(project, retry)
    port = free_port()
    env = wharf_env(tmp_path, port)
    Path(env["WHARF_INBOX"]).mkdir(parents=True)
    return port, env, tmp_path / "erp.ndjson"


@pytest.mark.integration
def test_erp_down_deliveries_back_off_then_go_through_when_it_is_back(
    project_dir: Path, tmp_path: Path
) -> None:
    """With nothing listening on the ERP port, 20 messages' ERP deliveries stay `pending`
    and are retried with backoff (attempts >= 2, none dead, messages `queued`, the archive
    already written); once the ERP starts on that port all 20 arrive, each control id with
    exactly one Idempotency-Key, and every message ends `sent`."""
    port, env, record = _setup(
        project_dir,
        tmp_path,
        "retry: {max_attempts: 100, initial: 200ms, max_delay: 1s, max_age: 1d, jitter: 0.1}",
    )
    inbox, db = Path(env["WHARF_INBOX"]), Path(env["WHARF_DB"])
    messages = make_messages(20, "OUT")
    control_ids = {cid for cid, _ in messages}
    with Processes(tmp_path) as procs:
        wharf = procs.wharf(project_dir, env)
        t0 = time.monotonic()
        for cid, data in messages:
            drop_file(inbox, f"{cid}.hl7", data)

        def backing_off() -> dict | None:
            with open_store(db) as store:
                by_cid = deliveries_by_control_id(store)
            erp = [d["erp"] for cid, d in by_cid.items() if cid in control_ids and "erp" in d]
            if len(erp) == len(control_ids) and all(
                d["status"] in ("pending", "inflight") and d["attempts"] >= 2 for d in erp
            ):
                return by_cid
            return None

        by_cid = wait_until(backing_off, 30, "20 ERP deliveries retried twice", procs=[wharf])
        t_backoff = time.monotonic()
        with open_store(db) as store:
            counts = store.counts()
            statuses = Counter(r.status for r in all_messages(store))
        print(
            f"\noutage: all 20 ERP deliveries pending with attempts >= 2 after "
            f"{t_backoff - t0:.1f}s; store {counts}"
        )
        assert statuses == {"queued": 20}
        assert counts["dead_letters"] == 0
        assert "dead" not in counts["deliveries"]
        assert all(d["archive"]["status"] == "sent" for d in by_cid.values())
        errors = {d["erp"]["last_error"] for d in by_cid.values()}
        print(f"last errors while down: {sorted(e or '' for e in errors)[:3]}")
        assert not record.exists()

        procs.receiver(port, record, env)
        t_up = time.monotonic()
        wait_until(
            lambda: set(keys_by_control_id(read_ndjson(record))) >= control_ids,
            20,
            "all 20 control ids at the ERP",
            procs=[wharf],
        )

        def all_sent() -> dict | None:
            with open_store(db) as store:
                counts = store.counts()
            return counts if counts["messages"] == {"sent": 20} else None

        final = wait_until(all_sent, 10, "every message sent", procs=[wharf])
        t_done = time.monotonic()
        with open_store(db) as store:
            by_cid = deliveries_by_control_id(store)
        entries = read_ndjson(record)
        keys = keys_by_control_id(entries)
        attempts = sorted(d["erp"]["attempts"] for d in by_cid.values())
        print(
            f"ERP back: all delivered {t_done - t_up:.1f}s after it started listening; "
            f"{len(entries)} request(s) for 20 messages; ERP attempts per delivery "
            f"min {attempts[0]} max {attempts[-1]}"
        )

        assert set(keys) == control_ids
        assert all(len(ks) == 1 for ks in keys.values()), keys
        assert len({e["idempotency_key"] for e in entries}) == 20
        for cid, ks in keys.items():
            assert ks == {by_cid[cid]["erp"]["idempotency_key"]}
        assert final["deliveries"] == {"sent": 40}
        assert final["dead_letters"] == 0
        assert all(d["erp"]["attempts"] >= 3 for d in by_cid.values())
        assert len(visible_files(Path(env["WHARF_ARCHIVE"]))) == 20


@pytest.mark.integration
def test_dead_letters_are_listed_then_replayed_with_their_original_keys(
    project_dir: Path, tmp_path: Path
) -> None:
    """With no ERP and a short retry limit (3 attempts), 10 messages end `error` with their
    ERP deliveries `dead` (the archive deliveries `sent`) and `wharf messages --status error`
    lists them. With the ERP up, `wharf replay --channel usage_to_erp --all-errors` (while
    wharf runs) exits 0; the ERP then gets each message once, with the Idempotency-Key the
    store recorded for that delivery; the archive is not written again; every message ends
    `sent`, and the audit log has one `replay` entry per message."""
    port, env, record = _setup(
        project_dir, tmp_path, "retry: {max_attempts: 3, initial: 100ms, max_delay: 200ms}"
    )
    inbox, db = Path(env["WHARF_INBOX"]), Path(env["WHARF_DB"])
    archive = Path(env["WHARF_ARCHIVE"])
    messages = make_messages(10, "DL")
    control_ids = {cid for cid, _ in messages}
    with Processes(tmp_path) as procs:
        wharf = procs.wharf(project_dir, env)
        t0 = time.monotonic()
        for cid, data in messages:
            drop_file(inbox, f"{cid}.hl7", data)

        def all_dead() -> dict | None:
            with open_store(db) as store:
                counts = store.counts()
            done = counts["messages"] == {"error": 10} and counts["deliveries"] == {
                "dead": 10,
                "sent": 10,
            }
            return counts if done else None

        counts = wait_until(all_dead, 30, "10 dead ERP deliveries", procs=[wharf])
        print(f"\ndead letters after {time.monotonic() - t0:.1f}s: store {counts}")
        assert counts["dead_letters"] == 10
        with open_store(db) as store:
            before = deliveries_by_control_id(store)
            rows = all_messages(store)
        assert set(before) == control_ids
        for cid, d in before.items():
            assert d["erp"]["status"] == "dead", (cid, d["erp"])
            assert d["erp"]["attempts"] == 3, (cid, d["erp"])
            assert d["archive"]["status"] == "sent", (cid, d["archive"])
        assert all(r.status == "error" and r.error_location == "erp" for r in rows), rows[0]
        print(f"error text: {rows[0].error}")
        assert len(visible_files(archive)) == 10

        listed = run_cli(project_dir, env, "messages", "--status", "error", "--limit", "100")
        assert listed.returncode == 0, listed.stderr
        lines = [ln for ln in listed.stdout.splitlines() if ln.strip()]
        assert len(lines) == 10, listed.stdout
        assert {ln.split()[-1] for ln in lines} == control_ids
        assert all(" error " in ln and CHANNEL in ln for ln in lines), listed.stdout
        assert "10 message(s)" in listed.stderr

        procs.receiver(port, record, env)
        t_replay = time.monotonic()
        replay = run_cli(
            project_dir, env, "--user", "cli", "replay", "--channel", CHANNEL, "--all-errors"
        )
        print(f"replay: exit {replay.returncode}: {replay.stdout.strip()}")
        assert replay.returncode == 0, replay.stdout + replay.stderr
        assert f"replay: 10 message(s) of channel {CHANNEL} queued again" in replay.stdout

        def all_sent() -> dict | None:
            with open_store(db) as store:
                counts = store.counts()
            return counts if counts["messages"] == {"sent": 10} else None

        final = wait_until(all_sent, 20, "the replayed messages sent", procs=[wharf])
        wait_until(lambda: len(read_ndjson(record)) >= 10, 5, "10 requests at the ERP")
        print(f"replayed and sent {time.monotonic() - t_replay:.1f}s after the replay command")
        time.sleep(1.5)  # anything sent twice, or the archive rewritten, would show by now

        entries = read_ndjson(record)
        keys = keys_by_control_id(entries)
        assert len(entries) == 10, [e["idempotency_key"] for e in entries]
        assert set(keys) == control_ids
        for cid, ks in keys.items():
            assert ks == {before[cid]["erp"]["idempotency_key"]}, cid

        assert final["deliveries"] == {"sent": 20}
        assert final["dead_letters"] == 0
        with open_store(db) as store:
            after = deliveries_by_control_id(store)
            audit = store.audit_entries(limit=1000)
        for cid, d in after.items():
            assert d["erp"]["status"] == "sent"
            assert d["erp"]["idempotency_key"] == before[cid]["erp"]["idempotency_key"]
            # The archive row was not touched: same attempts, same last update.
            assert d["archive"]["attempts"] == before[cid]["archive"]["attempts"] == 1
            assert d["archive"]["updated_at"] == before[cid]["archive"]["updated_at"]
        assert len(visible_files(archive)) == 10

        replays = [e for e in audit if e["action"] == "replay"]
        by_id = {r.id: r.control_id for r in rows}
        assert sorted(by_id[e["target"]] for e in replays) == sorted(control_ids)
        for e in replays:
            assert e["actor"] == "cli"
            assert e["detail"]["previous_status"] == "error"
            assert e["detail"]["requeued"] == 1
            assert e["detail"]["outbox_ids"] == [before[by_id[e["target"]]]["erp"]["id"]]
