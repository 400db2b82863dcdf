"""Configuration versions (issue 16, item 2): each processed message records the version of
the configuration that produced it; ``messages --show`` shows it; a replay runs with the
current configuration or as originally processed, and says which."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from engine import cli
from engine.config.project import load_project
from engine.config.versions import channel_version, tables_read
from engine.runtime import Engine

ROOT = Path(__file__).resolve().parents[2]
STENT = (ROOT / "samples/hl7/dft_p03_stent_cath.hl7").read_bytes()
UNKNOWN = (
    STENT.replace(b"278000789", b"278999999")
    .replace(b"CATH-55001", b"CATH-UNK01")
    .replace(b"CU-99a001", b"CU-unk001")
)

CHANNEL = """\
codec: {hl7v2: {}}
transformer:
  - transform: hl7_usage_to_ledger
ledger:
  issue: erp
  charge: billing
destinations:
  - {name: erp, file: {dir: out/erp}}
  - {name: billing, file: {dir: out/billing}}
"""
NEW_ROW = "278999999,ITEM-100789,CORONARY STENT 3.0X18 (NEW CODE),0278,C1874,,EA,2900.00,cdm\n"


def test_a_channel_version_covers_its_files_and_tables_only(tmp_path: Path) -> None:
    """A price change moves the version of the channel that reads the CDM, not that of a
    channel that does not; the version lists the files it covers."""
    root = tmp_path / "p"
    shutil.copytree(ROOT / "channels", root / "channels")
    shutil.copytree(ROOT / "mappings", root / "mappings")
    shutil.copytree(ROOT / "samples", root / "samples")
    shutil.copy(ROOT / "routes.yaml", root / "routes.yaml")
    before = load_project(root)
    assert "charge_codes" in tables_read(before, "usage_ledger")
    assert "charge_codes" not in tables_read(before, "po_to_vendor")
    assert "trading_partners" in tables_read(before, "po_to_vendor")
    ledger = [channel_version(before, "usage_ledger").version]
    po = [channel_version(before, "po_to_vendor").version]
    with (root / "mappings/charge_codes.csv").open("a") as f:
        f.write(NEW_ROW)
    after = load_project(root)
    ledger.append(channel_version(after, "usage_ledger").version)
    po.append(channel_version(after, "po_to_vendor").version)
    assert ledger[0] != ledger[1] and po[0] == po[1]
    files = channel_version(after, "usage_ledger").files
    assert {"routes.yaml", "channels/usage_ledger.yaml", "mappings/charge_codes.csv"} <= set(files)


@pytest.mark.integration
class VersionsThroughTheEngine(unittest.TestCase):
    timeout = 60

    def setUp(self) -> Any:
        base = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, base, True)
        self.root = base / "p"
        (self.root / "channels").mkdir(parents=True)
        shutil.copytree(ROOT / "mappings", self.root / "mappings")
        (self.root / "routes.yaml").write_text("store: var/wharf.db\nreload_interval: 0\n")
        (self.root / "channels/u.yaml").write_text(CHANNEL)
        self.engine = Engine(self.root, reactor)
        self.addCleanup(lambda: defer.ensureDeferred(self.engine.stop()))
        return defer.ensureDeferred(self.engine.start())

    async def settle(self) -> None:
        for _ in range(300):
            c = await self.engine.executor.submit(self.engine.store.counts)
            if set(c["messages"]) <= {"sent", "error"} and not c["deliveries"].get("pending"):
                return
            await task.deferLater(reactor, 0.02, lambda: None)
        raise AssertionError(f"did not settle: {c}")

    async def ingest(self, raw: bytes) -> str:
        outcome = await self.engine.ingest("u", raw, "test", answers=True)
        await self.settle()
        return str(outcome.message_id)

    def version_of(self, message_id: str) -> Any:
        return self.engine.store.config_version(message_id)

    @defer.inlineCallbacks
    def test_versions_recorded_shown_and_replayed_either_way(self) -> Any:
        v1 = channel_version(self.engine.project, "u").version
        ok = yield defer.ensureDeferred(self.ingest(STENT))
        held = yield defer.ensureDeferred(self.ingest(UNKNOWN))
        self.assertEqual(self.version_of(ok)["version"], v1)
        self.assertEqual(self.version_of(held)["version"], v1)
        self.assertIn("mappings/charge_codes.csv", self.version_of(ok)["files"])
        # the CDM gains the unknown code: a new version once reloaded
        with (self.root / "mappings/charge_codes.csv").open("a") as f:
            f.write(NEW_ROW)
        yield defer.ensureDeferred(self.engine.apply(load_project(self.root)))
        v2 = channel_version(self.engine.project, "u").version
        self.assertNotEqual(v1, v2)
        # as originally processed: version 1 again, so the same error, recorded with v1
        result = self.engine.store.replay(held, actor="t", now=0, original=True)
        self.assertEqual(result["configuration"], f"original ({v1})")
        self.engine.processor.sweep()
        yield defer.ensureDeferred(self.settle())
        row = self.engine.store.get_message(held)
        self.assertEqual((row.status, self.version_of(held)["version"]), ("error", v1))
        self.assertIn("278999999", row.error)
        # with the current configuration: version 2 books it
        result = self.engine.store.replay(held, actor="t", now=0)
        self.assertEqual(result, {"requeued": 0, "reprocess": True})
        self.engine.processor.sweep()
        yield defer.ensureDeferred(self.settle())
        row = self.engine.store.get_message(held)
        self.assertEqual((row.status, self.version_of(held)["version"]), ("sent", v2))

    @defer.inlineCallbacks
    def test_messages_show_prints_the_version(self) -> Any:
        ok = yield defer.ensureDeferred(self.ingest(STENT))
        v1 = channel_version(self.engine.project, "u").version
        yield defer.ensureDeferred(self.engine.stop())
        import contextlib
        import io

        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            code = cli.main(["--root", str(self.root), "--user", "t", "messages", "--show", ok])
        self.assertEqual(code, 0)
        shown = json.loads(buf.getvalue())["configuration"]
        self.assertEqual(shown["version"], v1)
        self.assertEqual(shown["channel"], "u")
        self.assertIn("channels/u.yaml", shown["files"])


def test_cli_replay_says_which_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``wharf replay ID --configuration original`` asks for the message's version and says
    so; without a recorded version it says the current configuration runs it."""
    from engine.config.store_path import store_path
    from engine.model import Inbound
    from engine.runtime.store import open_store

    root = tmp_path / "p"
    (root / "channels").mkdir(parents=True)
    shutil.copytree(ROOT / "mappings", root / "mappings")
    (root / "routes.yaml").write_text("store: var/wharf.db\nreload_interval: 0\n")
    (root / "channels/u.yaml").write_text(CHANNEL)
    store = open_store(store_path(root))
    ids = []
    for n in range(2):
        (r,) = store.ingest_batch([Inbound("u", "t", UNKNOWN + bytes([65 + n]), "x", 1.0)], 1.0)
        store.finish_processing(r.message_id, status="error", now=2.0, error="MappingMiss")
        ids.append(r.message_id)
    with store.transaction("version") as tx:
        tx.set_config_versions([(ids[0], "v-one")])
    store.close()
    argv = ["--root", str(root), "--user", "t", "replay", "--configuration", "original"]
    assert cli.main([*argv, ids[0]]) == 0
    assert "processed again as originally processed (configuration v-one)" in (
        capsys.readouterr().out
    )
    assert cli.main([*argv, ids[1]]) == 0
    assert "no configuration version was recorded for it" in capsys.readouterr().out
