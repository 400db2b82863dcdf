"""The impact preview (issue 16): stored messages through a candidate configuration show what
it changes, exactly, and nothing else; the live store is never written and no destination is
ever called."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import tempfile
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from engine import cli
from engine.config.project import load_project
from engine.preview.impact import Impact, preview
from engine.preview.replay import read_stored
from engine.registry import REGISTRY, Registry
from engine.runtime import Engine
from engine.spec import Spec
from tests.integration.preview_corpus import (
    INVOICE_PRICES,
    project,
    purchase_corpus,
    store_messages,
    usage_corpus,
)

pytestmark = pytest.mark.integration


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} is not once in {path}"
    path.write_text(text.replace(old, new))


def candidate_of(root: Path, base: Path) -> Path:
    """A second copy of the configuration to change."""
    return project(base / "candidate")


def run(root: Path, cand: Path, registry: Registry = REGISTRY) -> Impact:
    from engine.config.store_path import store_path

    messages = read_stored(store_path(root))
    return preview(
        load_project(root, registry=registry),
        load_project(cand, registry=registry),
        messages,
        registry=registry,
    )


@pytest.fixture(scope="module")
def usage(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Any]]:
    """1,000 stored DFT^P03 messages (2,000 lines) on the shipped usage_ledger channel."""
    base = tmp_path_factory.mktemp("usage")
    root = project(base)
    corpus = usage_corpus(1000)
    store_messages(root, [("usage_ledger", raw, None) for _, raw, _ in corpus])
    return root, corpus


def test_the_same_configuration_changes_nothing(usage: tuple[Path, list[Any]]) -> None:
    root, _ = usage
    with tempfile.TemporaryDirectory() as tmp:
        impact = run(root, candidate_of(root, Path(tmp)))
    assert impact.messages == 1000
    assert impact.outputs_compared > 2000  # billing, ERP issues, requisitions
    assert impact.unchanged, (impact.outputs[:3], impact.statuses[:3], impact.totals)


def test_one_cdm_price_row_changes_exactly_those_charge_amounts(
    usage: tuple[Path, list[Any]],
) -> None:
    """The Foley tray's price (272100049) from 44.00 to 47.50: the billing DFTs of the
    messages that charge it change in their amount fields only, by 3.50 a unit, and the totals
    change only in those charges' amounts; nothing else anywhere."""
    root, corpus = usage
    with tempfile.TemporaryDirectory() as tmp:
        cand = candidate_of(root, Path(tmp))
        edit(
            cand / "mappings/charge_codes.csv",
            "272100049,ITEM-160004,FOLEY CATHETER TRAY 14F,0272,,,EA,44.00,",
            "272100049,ITEM-160004,FOLEY CATHETER TRAY 14F,0272,,,EA,47.50,",
        )
        impact = run(root, cand)
    charged = {f"{i}": q for i, _, lines in corpus for c, q, _ in lines if c == "272100049"}
    assert len(charged) == 400
    changed = {d.message_id for d in impact.outputs}
    ids = {m.id: i for i, m in enumerate(read_stored_sorted(root))}
    assert {str(ids[m]) for m in changed} == set(charged)
    for d in impact.outputs:
        assert (d.destination, d.kind) == ("billing", "changed")
        qty = Decimal(charged[str(ids[d.message_id])])
        # FT1-11 extended amount, FT1-12 unit amount of the Foley line only
        assert {c.path for c in d.changes} <= {"FT1[1]-11.1", "FT1[1]-12.1"}
        for c in d.changes:
            before, after = Decimal(c.before), Decimal(c.after)
            unit = Decimal("3.50") if c.path.endswith("12.1") else Decimal("3.50") * qty
            assert after - before == unit, c
    assert not impact.statuses
    touched = {s for s, changes in impact.totals.items() if changes}
    assert touched == {"charges", "charge_codes"}
    for c in impact.totals["charges"]:
        assert c.path.startswith("272100049 | ENC-") and c.path.endswith(" amount"), c
        assert Decimal(c.after) - Decimal(c.before) == Decimal("7.00")  # 2 trays a line
    assert len(impact.totals["charges"]) == 400
    (code,) = impact.totals["charge_codes"]
    assert (code.path, Decimal(code.after) - Decimal(code.before)) == (
        "272100049 amount",
        Decimal("2800.00"),
    )


def read_stored_sorted(root: Path) -> list[Any]:
    from engine.config.store_path import store_path

    return read_stored(store_path(root))


def test_a_uom_change_shows_exactly_the_stock_deltas(usage: tuple[Path, list[Any]]) -> None:
    """Gauze (ITEM-200022) is billed EA and stocked in packs: 10 a pack becomes 12. Only the
    gauze stock moves change (60 EA: 6 packs become 5), with the on-hand and the ERP issue
    quantities that carry them; charges, statuses and every other item stay as they were."""
    root, corpus = usage
    with tempfile.TemporaryDirectory() as tmp:
        cand = candidate_of(root, Path(tmp))
        edit(
            cand / "mappings/uom_conversions.csv",
            "UC-0120,ITEM-200022,,PK,EA,10",
            "UC-0120,ITEM-200022,,PK,EA,12",
        )
        impact = run(root, cand)
    gauze = sum(1 for _, _, lines in corpus for c, _, _ in lines if c == "272000022")
    assert gauze == 400
    assert not impact.statuses
    touched = {s for s, changes in impact.totals.items() if changes}
    assert touched <= {"stock_issues", "onhand", "requisitions"}, touched
    (moved,) = impact.totals["stock_issues"]
    assert moved.path == "ITEM-200022 @ LOC-OR-MAIN (PK) quantity"
    assert Decimal(moved.before) - Decimal(moved.after) == -gauze * (6 - 5)
    assert [c.path for c in impact.totals["onhand"]] == ["ITEM-200022 @ LOC-OR-MAIN"]
    for c in impact.totals.get("requisitions", []):
        assert c.path.startswith("ITEM-200022 @ LOC-OR-MAIN"), c
    issues = [d for d in impact.outputs if d.destination == "erp"]
    assert len(issues) == gauze, "each gauze line's ERP issue carries its stock quantity"
    for d in issues:
        (c,) = d.changes
        assert c.path.startswith("$.lines[") and c.path.endswith("].quantity"), c
        assert (Decimal(c.before), Decimal(c.after)) == (Decimal(6), Decimal(5)), c
    for d in impact.outputs:
        assert d.destination in ("erp", "erp_requisitions"), d
        if d.destination == "erp_requisitions":  # the gauze reorders follow the on-hand
            if d.kind == "changed":
                assert {c.path for c in d.changes} <= {"$.quantity", "$.reason"}, d
            else:
                assert ("$.item_id", "ITEM-200022") in {
                    (c.path, c.after or c.before) for c in d.changes
                }, d


def test_a_tolerance_change_shows_exactly_the_invoices_whose_outcome_flips(
    tmp_path: Path,
) -> None:
    """ACME's price tolerance from 2 % to 3 %: the invoices 2.5 % over the PO price are
    matched and posted to AP instead of held; those 1.5 % and 3.5 % over stay as they were."""
    root = project(tmp_path)
    store_messages(root, purchase_corpus(40))
    cand = candidate_of(root, tmp_path)
    edit(cand / "mappings/trading_partners.yaml", "    price_pct: 2\n", "    price_pct: 3\n")
    impact = run(root, cand)
    flips = {
        f"acmemed INV-45{n:08d}" for n in range(40) if INVOICE_PRICES[n % 4] == Decimal("102.50")
    }
    assert len(flips) == 10
    invoices = impact.totals["invoices"]
    assert {c.path for c in invoices} == flips
    for c in invoices:
        assert (c.before, c.after) == ("held PRICE line 1", "matched")
    outcomes = {c.path: (int(c.before), int(c.after)) for c in impact.totals["invoice_outcomes"]}
    assert outcomes == {"matched count": (20, 30), "held count": (20, 10)}
    assert {c.path: (c.before, c.after) for c in impact.totals["work_items"]} == {
        "INVOICE_HELD count": ("20", "10")
    }
    assert Counter((d.destination, d.kind) for d in impact.outputs) == {("erp_ap", "added"): 10}
    touched = {s for s, changes in impact.totals.items() if changes}
    assert touched == {"invoices", "invoice_outcomes", "invoice_holds", "work_items"}


# -- the live store and the destinations are left alone ------------------------------------


class Recording:
    """A destination that records every construction and send."""

    built: list[str] = []
    sent: list[bytes] = []

    def __init__(self, options: Any, *, reactor: Any, channel: str, name: str, base_dir: Any):
        Recording.built.append(name)

    async def send(self, delivery: Any) -> bytes | None:
        Recording.sent.append(delivery.payload)
        return b"ok"

    def close(self) -> None:
        return None


def recording_registry() -> Registry:
    registry = Registry()
    for reg in REGISTRY.all():
        registry.register(reg.kind, reg.name, reg.spec, reg.factory)
    registry.register("destination", "recording", Spec("recording", []), Recording)
    registry._loaded = True
    return registry


def row_counts(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        # every table of ours (sqlite_stat1, the planner's statistics, is SQLite's: an open
        # by the store refreshes it)
        tables = [
            r[0]
            for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            if not r[0].startswith("sqlite_")
        ]
        return {t: conn.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in tables}
    finally:
        conn.close()


def _recording_project(base: Path) -> Path:
    root = project(base)
    for path in (root / "channels").glob("*.yaml"):
        if path.stem != "usage_ledger":
            path.unlink()
    text = (root / "channels/usage_ledger.yaml").read_text().split("\ntests:")[0]
    text = re.sub(r"    http: \{url: [^\n]*\n", "    recording: {}\n", text)
    text = re.sub(
        r"    mllp:\n      host: [^\n]*\n      port: [^\n]*\n", "    recording: {}\n", text
    )
    (root / "channels/usage_ledger.yaml").write_text(text)
    (root / "routes.yaml").write_text("store: var/wharf.db\nreload_interval: 0\n")
    return root


class PreviewLeavesTheLiveSystemAlone(unittest.TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_no_row_written_and_no_destination_called(self) -> Any:
        """The live engine processes 30 messages through a recording destination (it is
        called); a preview of a changed price over them builds no destination, calls none, and
        leaves every table of the live store with the rows it had, and the file's bytes."""
        base = Path(tempfile.mkdtemp())
        root = _recording_project(base)
        registry = recording_registry()
        Recording.built.clear()
        Recording.sent.clear()
        engine = Engine(root, reactor, registry=registry)
        yield defer.ensureDeferred(engine.start())
        try:
            for _, raw, _ in usage_corpus(30):
                yield defer.ensureDeferred(engine.ingest("usage_ledger", raw, "t", answers=True))
            for _ in range(500):
                c = yield engine.executor.submit(engine.store.counts)
                if not c["deliveries"].get("pending") and set(c["messages"]) <= {"sent"}:
                    break
                yield task.deferLater(reactor, 0.02, lambda: None)
        finally:
            yield defer.ensureDeferred(engine.stop())
        live_sent, live_built = len(Recording.sent), len(Recording.built)
        self.assertGreater(live_sent, 30)  # the destination does record what it is sent
        db = root / "var/wharf.db"
        before = row_counts(db)
        digest = hashlib.sha256(db.read_bytes()).hexdigest()
        self.assertGreater(before["outbox"], 30)
        cand = project(base / "candidate")
        (cand / "channels/usage_ledger.yaml").write_text(
            (root / "channels/usage_ledger.yaml").read_text()
        )
        for path in (cand / "channels").glob("*.yaml"):
            if path.stem != "usage_ledger":
                path.unlink()
        (cand / "routes.yaml").write_text((root / "routes.yaml").read_text())
        edit(
            cand / "mappings/charge_codes.csv",
            "272100049,ITEM-160004,FOLEY CATHETER TRAY 14F,0272,,,EA,44.00,",
            "272100049,ITEM-160004,FOLEY CATHETER TRAY 14F,0272,,,EA,45.00,",
        )
        impact = run(root, cand, registry)
        self.assertEqual(len({d.message_id for d in impact.outputs}), 12)  # the Foley ones
        self.assertEqual((len(Recording.sent), len(Recording.built)), (live_sent, live_built))
        self.assertEqual(row_counts(db), before)
        self.assertEqual(hashlib.sha256(db.read_bytes()).hexdigest(), digest)


def test_cli_reports_text_json_html_masks_phi_and_audits_show_phi(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``wharf preview --config FOLDER``: the terminal report, --json and --html; the patient
    fields are masked; --show-phi shows them and is the one write, an audit row."""
    root = project(tmp_path)
    db = store_messages(root, [("usage_ledger", raw, None) for _, raw, _ in usage_corpus(20)])
    cand = candidate_of(root, tmp_path)
    edit(
        cand / "mappings/charge_codes.csv",
        "272100049,ITEM-160004,FOLEY CATHETER TRAY 14F,0272,,,EA,44.00,",
        "272100049,ITEM-160004,FOLEY CATHETER TRAY 14F,0272,,,EA,50.00,",
    )
    before = row_counts(db)
    out_json, out_html = tmp_path / "r.json", tmp_path / "r.html"
    argv = ["--root", str(root), "preview", "--config", str(cand), "--since", "100000d"]
    assert cli.main([*argv, "--json", str(out_json), "--html", str(out_html)]) == 0
    shown = capsys.readouterr().out
    assert "billing FT1[1]-11.1 (changed): 8 output(s)" in shown
    assert "ENC-0" not in shown and "enc#" in shown  # the encounters in the totals masked
    report = json.loads(out_json.read_text())
    assert report["messages_changed"] == 8 and report["phi"] == "masked"
    assert "<h2>Payload changes</h2>" in out_html.read_text()
    assert row_counts(db) == before
    assert cli.main([*argv, "--json", "-", "--show-phi"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["phi"] == "shown"
    assert any(r["key"].startswith("272100049 | ENC-0") for r in report["totals"]["charges"])
    after = row_counts(db)
    assert {t: n - before[t] for t, n in after.items() if n != before[t]} == {"audit": 1}
    conn = sqlite3.connect(db)
    (action,) = conn.execute("SELECT action FROM audit ORDER BY id DESC LIMIT 1").fetchone()
    assert action == "preview_show_phi"


def test_a_git_ref_is_a_candidate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--config HEAD~1`` previews the configuration of an earlier commit of the project's
    own repository against the files as they are now."""
    import subprocess

    root = project(tmp_path)
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "live"], check=True)
    edit(
        root / "mappings/charge_codes.csv",
        "272100049,ITEM-160004,FOLEY CATHETER TRAY 14F,0272,,,EA,44.00,",
        "272100049,ITEM-160004,FOLEY CATHETER TRAY 14F,0272,,,EA,40.00,",
    )
    subprocess.run([*git, "commit", "-qam", "cheaper trays"], check=True)
    store_messages(root, [("usage_ledger", raw, None) for _, raw, _ in usage_corpus(10)])
    argv = ["--root", str(root), "preview", "--config", "HEAD~1", "--json", "-", "--since", "999d"]
    assert cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["candidate"].startswith("git HEAD~1 (")
    (code,) = report["totals"]["charge_codes"]
    assert (code["key"], code["before"], code["after"]) == ("272100049 amount", "320", "352")
    assert cli.main([*argv[:4], "no-such-ref"]) == 1  # (the default --since: 7 days)
    assert "neither a folder nor a commit git knows" in capsys.readouterr().err
