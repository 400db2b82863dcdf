"""The command line as a person runs it: no traceback, no silent success on a typo, tables with
headers and JSON, ISO times, the message view, work items closed and the audit log verified.

Each test works on a real project folder and a real store file; the ones about what a person
sees at the terminal run ``wharf`` as a process.
"""

from __future__ import annotations

import ast
import getpass
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.cli import main
from engine.model import WORK_ITEM_KINDS, Inbound, Outbound
from engine.store import SqliteStore

ROOT = Path(__file__).resolve().parents[2]
WHARF = Path(sys.executable).parent / "wharf"
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$")


def wharf(root: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("WHARF_DB", "ERP_URL")}
    environ.update(env)
    return subprocess.run(
        [str(WHARF), "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=environ,
        check=False,
    )


def fill(project_dir: Path) -> tuple[SqliteStore, dict[str, str]]:
    """Three messages: one sent (keys, ACK), one whose ERP delivery is a dead letter (the
    ERP's answer kept), one filtered; and one open work item."""
    store = SqliteStore(project_dir / "var/wharf.db").open()
    now = time.time()
    items = [
        Inbound(
            "usage_to_erp",
            "mllp",
            f"MSH|^~\\&|POU|GENHOSP|WHARF|GENHOSP|20260101||DFT^P03|C{i}|P|2.5.1\rPID|1||MRN{i}".encode(),
            "x-application/hl7-v2+er7",
            now - 100,
            control_id=f"C{i}",
        )
        for i in range(3)
    ]
    sent, dead, filtered = (r.message_id for r in store.ingest_batch(items, now - 100))
    store.set_response(sent, b"MSH|^~\\&|WHARF|GENHOSP\rMSA|AA|C0\r", now - 99)
    store.finish_processing(
        sent,
        status="sent",
        now=now - 90,
        transformed=b'{"lines": 1}',
        outbound=[Outbound("erp", b'{"issue": "C0"}', meta={"po_number": "4500"})],
        business_keys=[("encounter", "ENC-1"), ("item", "ITEM-100123")],
    )
    (d,) = store.claim_deliveries("usage_to_erp", "erp", 10, now - 89, 60)
    store.delivery_succeeded(d.id, b'{"id": "ISS-1"}', now - 88)
    store.finish_processing(
        dead, status="queued", now=now - 90, outbound=[Outbound("erp", b'{"issue": "C1"}')]
    )
    (d,) = store.claim_deliveries("usage_to_erp", "erp", 10, now - 89, 60)
    store.record_response(d.id, b'{"error": "payload too large"}')
    store.delivery_dead(d.id, "POST http://127.0.0.1:8089: HTTP 413 Payload Too Large", now - 88)
    store.finish_processing(filtered, status="filtered", now=now - 90)
    with store.transaction("test work item") as tx:
        tx.open_work_item(
            "MISSING_MAPPING", "items:999", "no row for '999' in items", dead, None, now - 80
        )
    return store, {"sent": sent, "dead": dead, "filtered": filtered}


def run(project_dir: Path, *args: str) -> int:
    return main(["--root", str(project_dir), "--user", "analyst1", *args])


# --------------------------------------------------------------------------- no tracebacks


def test_unknown_ids_bad_numbers_and_bad_settings_get_one_line_not_a_traceback(
    project_dir: Path,
) -> None:
    """`replay <unknown id>`, `invoices release 99`, `--limit 1e20`, `--limit -1` and
    `WHARF_LOG_LEVEL=debg` each say what is wrong in one line, with a non-zero exit."""
    fill(project_dir)[0].close()
    cases = [
        (("replay", "no-such-id"), {}, 1, "no message 'no-such-id' in the store"),
        (("invoices", "release", "99"), {}, 1, "no invoice 99"),
        (("messages", "--limit", "1e20"), {}, 2, "expected a whole number from 1 to"),
        (("messages", "--limit", "-1"), {}, 2, "(got '-1')"),
        (("run",), {"WHARF_LOG_LEVEL": "debg"}, 1, "(did you mean 'debug'?)"),
    ]
    for args, env, code, text in cases:
        done = wharf(project_dir, *args, **env)
        print(args, done.returncode, done.stderr)
        assert done.returncode == code, (args, done.stderr)
        assert text in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr + done.stdout, args


def test_misspelt_names_are_errors_with_did_you_mean(
    project_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A channel, status, business key or work item kind that does not exist is an error
    naming the close one, never an empty answer with exit 0."""
    fill(project_dir)[0].close()
    assert run(project_dir, "test", "usage_to_er") == 2
    assert "unknown channel 'usage_to_er'" in capsys.readouterr().err
    assert run(project_dir, "replay", "--channel", "usage_to_er", "--all-errors") == 2
    assert "(did you mean 'usage_to_erp'?)" in capsys.readouterr().err
    assert run(project_dir, "messages", "--channel", "usage_to_er") == 2
    assert "(did you mean 'usage_to_erp'?)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        run(project_dir, "messages", "--status", "eror")
    assert exit_.value.code == 2
    assert "(did you mean 'error'?)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run(project_dir, "messages", "--key", "bogus")
    assert "expected a business key as NAME=VALUE" in capsys.readouterr().err
    assert run(project_dir, "messages", "--key", "encountr=ENC-1") == 2
    assert "(did you mean 'encounter'?)" in capsys.readouterr().err
    assert run(project_dir, "work-items", "--kind", "MISSING_LOT") == 2
    assert "(did you mean 'MISSING_LOT_SERIAL'?)" in capsys.readouterr().err
    # Right names with nothing to show: an empty answer, exit 0.
    assert run(project_dir, "messages", "--channel", "usage_mllp") == 0
    assert "0 message(s)" in capsys.readouterr().err
    assert run(project_dir, "work-items", "--kind", "MISSING_LOT_SERIAL") == 0
    assert "0 open work item(s)" in capsys.readouterr().err


def test_wharf_test_on_a_channel_without_tests_fails(project_dir: Path) -> None:
    """`wharf test CHANNEL` that runs no test is a failure (a CI check must not pass on it)."""
    path = project_dir / "channels" / "usage_mllp.yaml"
    text = path.read_text()
    path.write_text(text[: text.index("\ntests:")] + "\n")
    assert run(project_dir, "test", "usage_mllp") == 1
    assert run(project_dir, "test", "usage_to_erp") == 0


def test_a_root_that_is_not_a_project_is_refused(tmp_path: Path) -> None:
    """`--root /etc` (no routes.yaml, no channels/) is refused and nothing is created there."""
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("x")
    for command in ("status", "messages", "work-items", "audit", "lint", "replay"):
        done = wharf(tmp_path / "notes", command)
        assert done.returncode == 2, (command, done.stderr)
        assert "is not a Wharf project" in done.stderr
    assert sorted(p.name for p in (tmp_path / "notes").iterdir()) == ["todo.txt"]


def test_version() -> None:
    from engine import __version__

    done = subprocess.run(
        [str(WHARF), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0 and done.stdout.strip() == f"wharf {__version__}"


# --------------------------------------------------------------------------- listings


def test_listings_have_headers_json_and_iso_times(project_dir: Path) -> None:
    """Every listing names its columns (on stderr, so that a pipe gets rows only) and has
    --json; times are ISO 8601 with the zone."""
    store, ids = fill(project_dir)
    store.close()
    done = wharf(project_dir, "messages")
    assert done.returncode == 0, done.stderr
    header = done.stderr.splitlines()[0]
    assert header.split() == ["ID", "RECEIVED", "CHANNEL", "STATUS", "CONTROL", "ID"]
    rows = done.stdout.splitlines()
    assert len(rows) == 3 and all(ISO.match(r.split()[1]) for r in rows)
    listed = json.loads(wharf(project_dir, "messages", "--json").stdout)
    assert {m["id"] for m in listed} == set(ids.values())
    assert all(ISO.match(m["received_at"]) for m in listed)
    for command in ("work-items", "audit", "receipts", "invoices"):
        done = wharf(project_dir, command, "--json")
        assert done.returncode == 0, (command, done.stderr)
        json.loads(done.stdout)
    items = json.loads(wharf(project_dir, "work-items", "--json").stdout)
    assert [w["kind"] for w in items] == ["MISSING_MAPPING"] and ISO.match(items[0]["created_at"])
    done = wharf(project_dir, "work-items")
    assert done.stderr.splitlines()[0].split() == [
        "ID",
        "OPENED",
        "KIND",
        "STATUS",
        "MESSAGE",
        "SUBJECT",
    ]


def test_status_dead_finds_messages_with_a_dead_letter(
    project_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, ids = fill(project_dir)
    assert run(project_dir, "messages", "--status", "dead") == 0
    out = capsys.readouterr().out
    assert ids["dead"] in out and ids["sent"] not in out and ids["filtered"] not in out


def test_prune_prints_durations_as_written(
    project_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(project_dir)[0].close()
    assert run(project_dir, "prune", "--older-than", "100d", "--status", "sent") == 0
    assert "older than 100d" in capsys.readouterr().out


def test_prune_by_the_rules_also_clears_the_upload_and_node_registries(
    project_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from engine.store.nodes import Heartbeat

    store, ids = fill(project_dir)
    long_ago = time.time() - 400 * 86400
    store.uploads_handed([("/sftp/acme/in/a.x12", ids["sent"])], "node1", long_ago)
    store.uploads_handed([("/sftp/acme/in/b.x12", "m-long-pruned")], "node1", long_ago)
    store.node_heartbeat(Heartbeat("departed", long_ago, long_ago, 10.0, "v1", {}))
    store.close()
    assert run(project_dir, "prune") == 0
    assert "pruned 1 SFTP upload row(s) and 1 node(s) no longer needed" in capsys.readouterr().out
    store = SqliteStore(project_dir / "var/wharf.db").open()
    try:
        assert [r["path"] for r in store.uploads()] == ["/sftp/acme/in/a.x12"]
        assert store.nodes() == []
        (entry,) = store.audit_entries(action="prune")
        assert (
            entry["detail"]["deleted"]["sftp_uploads"],
            entry["detail"]["deleted"]["nodes"],
        ) == (
            1,
            1,
        )
    finally:
        store.close()


# --------------------------------------------------------------------------- the message view


def test_show_puts_what_an_analyst_needs_in_one_place_and_is_audited(
    project_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--show: the ACK the sender got, the business keys, the content stages, each delivery
    with its attempts, the full URL and the ERP's answer; --body adds the bodies. Both views
    are written to the audit log with the person's name (default: the login name)."""
    monkeypatch.delenv("ERP_URL", raising=False)
    store, ids = fill(project_dir)
    assert main(["--root", str(project_dir), "messages", "--show", ids["sent"]]) == 0
    view = json.loads(capsys.readouterr().out)
    assert view["answer_to_sender"] == "MSH|^~\\&|WHARF|GENHOSP\nMSA|AA|C0\n"
    assert view["business_keys"] == {"encounter": ["ENC-1"], "item": ["ITEM-100123"]}
    assert set(view["contents"]) == {"raw", "response", "transformed"}
    assert "text" not in view["contents"]["raw"]  # no body without --body
    (d,) = view["deliveries"]
    assert d["answer"] == '{"id": "ISS-1"}' and d["attempts"] == 1 and "payload" not in d
    assert d["url"] == "http://127.0.0.1:8089/inventory/issues"
    assert ISO.match(view["message"]["received_at"])

    assert run(project_dir, "messages", "--show", ids["dead"], "--body") == 0
    view = json.loads(capsys.readouterr().out)
    (d,) = view["deliveries"]
    assert d["status"] == "dead" and d["answer"] == '{"error": "payload too large"}'
    assert "HTTP 413" in d["last_error"] and d["url"].startswith("http://127.0.0.1:8089/")
    assert d["payload"] == '{"issue": "C1"}'
    assert "PID|1||MRN1" in view["contents"]["raw"]["text"]

    entries = store.audit_entries(10)
    assert [(e["actor"], e["action"], e["target"]) for e in entries[:2]] == [
        ("analyst1", "view_body", ids["dead"]),
        (getpass.getuser(), "view_message", ids["sent"]),
    ]
    assert entries[0]["detail"]["stages"] == ["raw", "payload:erp"]
    assert run(project_dir, "messages", "--show", "nope") == 1
    assert "no message 'nope'" in capsys.readouterr().err


# --------------------------------------------------------------------------- work items, audit


def test_work_item_close_is_audited_and_the_audit_chain_verifies(
    project_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, ids = fill(project_dir)
    (item,) = store.work_items()
    assert run(project_dir, "work-items", "show", str(item["id"])) == 0
    out = capsys.readouterr().out
    assert "MISSING_MAPPING" in out and "no row for '999' in items" in out and ids["dead"] in out
    assert run(project_dir, "work-items", "close", str(item["id"])) == 2  # no --note
    assert "--note" in capsys.readouterr().err
    note = "item 999 added to mappings/items.csv, message replayed"
    assert run(project_dir, "work-items", "close", str(item["id"]), "--note", note) == 0
    assert store.work_item(item["id"])["status"] == "closed"
    assert store.work_items() == []
    assert run(project_dir, "work-items", "close", str(item["id"]), "--note", "again") == 1
    assert "is closed" in capsys.readouterr().err
    (entry,) = store.audit_entries(1, action="work_item.close")
    assert entry["actor"] == "analyst1" and entry["detail"]["note"] == note
    assert run(project_dir, "work-items", "--status", "closed", "--json") == 0
    assert [w["id"] for w in json.loads(capsys.readouterr().out)] == [item["id"]]

    assert run(project_dir, "audit", "--json") == 0
    assert "work_item.close" in [e["action"] for e in json.loads(capsys.readouterr().out)]
    assert run(project_dir, "audit", "verify") == 0
    assert "hash chain intact" in capsys.readouterr().out
    store.close()
    # Someone edits a row behind the store's back: verify names the row and fails.
    conn = sqlite3.connect(project_dir / "var/wharf.db")
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("UPDATE audit SET actor = 'nobody' WHERE action = 'work_item.close'")
    conn.commit()
    conn.close()
    assert run(project_dir, "audit", "verify") == 1
    assert f"row {entry['id']} of" in capsys.readouterr().err


def _kinds_opened_in_code() -> set[str]:
    """The work item kinds the code opens: string constants passed as the first argument of
    a call to ``*work_item``/``open_work_item``, or returned as a ``work_item_for`` tuple."""
    kinds: set[str] = set()
    for path in [*(ROOT / "engine").rglob("*.py"), *(ROOT / "transforms").rglob("*.py")]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name.endswith("work_item") and node.args:
                    first = node.args[0]
                    if isinstance(first, ast.Constant) and isinstance(first.value, str):
                        kinds.add(first.value)
            if isinstance(node, ast.FunctionDef) and node.name == "work_item_for":
                for ret in ast.walk(node):
                    if isinstance(ret, ast.Return) and isinstance(ret.value, ast.Tuple):
                        first = ret.value.elts[0]
                        if isinstance(first, ast.Constant) and isinstance(first.value, str):
                            kinds.add(first.value)
    return kinds


def test_every_work_item_kind_the_code_opens_is_listed() -> None:
    """`wharf work-items --kind` knows every kind (engine.model.WORK_ITEM_KINDS)."""
    opened = _kinds_opened_in_code()
    assert len(opened) >= 10, opened
    assert opened <= set(WORK_ITEM_KINDS), opened - set(WORK_ITEM_KINDS)


def test_prune_and_listing_helpers() -> None:
    from engine.listing import duration_text, iso

    assert [duration_text(s) for s in (8640000, 5400, 36 * 3600, 0.2, 45, 90.5)] == [
        "100d",
        "90m",
        "36h",
        "200ms",
        "45s",
        "90.5s",
    ]
    assert iso(None) is None and ISO.match(iso(0.0) or "")


def test_store_listing_commands_take_the_store_from_routes_yaml(
    project_dir: Path, tmp_path: Path
) -> None:
    """WHARF_DB (routes.yaml: store: ${WHARF_DB:-var/wharf.db}) moves the store for the fast
    commands too."""
    elsewhere = tmp_path / "elsewhere.db"
    store = SqliteStore(elsewhere).open()
    now = time.time()
    store.ingest_batch(
        [Inbound("usage_to_erp", "mllp", b"X", "text/plain", now, control_id="CX")], now
    )
    store.close()
    done = wharf(project_dir, "messages", "--json", WHARF_DB=str(elsewhere))
    assert done.returncode == 0, done.stderr
    assert [m["control_id"] for m in json.loads(done.stdout)] == ["CX"]
    assert not (project_dir / "var" / "wharf.db").exists()
