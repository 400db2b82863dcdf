"""`wharf messages`, `replay`, `prune` and `status` against a store filled through its API."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from engine.cli import main
from engine.model import Inbound, Outbound
from engine.store import SqliteStore


def fill(project_dir: Path) -> tuple[SqliteStore, list[str]]:
    store = SqliteStore(project_dir / "var/wharf.db").open()
    now = time.time()
    items = [
        Inbound(
            "usage_to_erp",
            "dropfolder",
            f"MSG {i}".encode(),
            "text/plain",
            now - 100,
            control_id=f"C{i}",
        )
        for i in range(3)
    ]
    ids = [r.message_id for r in store.ingest_batch(items, now - 100)]
    store.finish_processing(
        ids[0],
        status="sent",
        now=now - 90,
        outbound=[Outbound("erp", b"{}")],
        business_keys=[("encounter", "ENC-1")],
    )
    (delivery,) = store.claim_deliveries("usage_to_erp", "erp", 10, now - 89, 60)
    store.delivery_succeeded(delivery.id, b"ok", now - 88)
    store.finish_processing(
        ids[1],
        status="error",
        now=now - 90,
        error="MappingMiss: x",
        error_location="channels/usage_to_erp.yaml:18:5 transformer[0]",
    )
    store.finish_processing(ids[2], status="filtered", now=now - 90)
    return store, ids


def run(project_dir: Path, *args: str) -> int:
    return main(["--root", str(project_dir), "--user", "analyst1", *args])


def test_search_by_business_key_status_and_show(
    project_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Search finds messages by business key and status; --show lists deliveries, no body."""
    _, ids = fill(project_dir)
    assert run(project_dir, "messages", "--key", "encounter=ENC-1") == 0
    out = capsys.readouterr().out
    assert ids[0] in out and ids[1] not in out
    assert run(project_dir, "messages", "--status", "error", "--errors") == 0
    out = capsys.readouterr().out
    assert ids[1] in out and "transformer[0]: MappingMiss: x" in out
    assert run(project_dir, "messages", "--show", ids[0]) == 0
    out = capsys.readouterr().out
    assert '"destination": "erp"' in out and "MSG 0" not in out


def test_body_view_is_audited(project_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Showing a body writes who looked at which message to the audit log."""
    store, ids = fill(project_dir)
    assert run(project_dir, "messages", "--show", ids[0], "--body") == 0
    assert "MSG 0" in capsys.readouterr().out
    entries = store.audit_entries(10)
    assert any(
        e["actor"] == "analyst1" and e["action"] == "view_body" and e["target"] == ids[0]
        for e in entries
    )
    assert store.verify_audit()


def test_replay_of_a_transform_error_reprocesses(
    project_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Replaying an errored message sends it back to the pipeline and is audited."""
    store, ids = fill(project_dir)
    assert run(project_dir, "replay", ids[1]) == 0
    assert store.get_message(ids[1]).status == "received"
    assert any(e["action"] == "replay" and e["target"] == ids[1] for e in store.audit_entries(10))
    assert run(project_dir, "replay", ids[2]) == 1  # filtered: nothing to replay


def test_prune_applies_retention_and_status(
    project_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`wharf prune --older-than` removes old terminal messages and keeps the others."""
    store, ids = fill(project_dir)
    assert run(project_dir, "prune", "--older-than", "1m", "--status", "sent,filtered") == 0
    assert "pruned 2 message(s)" in capsys.readouterr().out
    assert store.get_message(ids[0]) is None and store.get_message(ids[2]) is None
    assert store.get_message(ids[1]).status == "error"
    assert run(project_dir, "status") == 0
    assert '"error": 1' in capsys.readouterr().out
