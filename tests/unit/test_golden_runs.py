"""Golden runs (issue 16, item 3): ``wharf test --record`` keeps what each test's input
produces, domains included; ``wharf test`` compares it field by field and names what moved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine import cli
from tests.integration.preview_corpus import project


def test_shipped_channels_carry_golden_cases_for_the_four_areas() -> None:
    root = Path(__file__).resolve().parents[2]
    expected = {p.name: json.loads(p.read_text()) for p in root.glob("channels/expected/*/*.json")}
    names = " ".join(expected)
    assert "financial-posting" in names and "procurement-approval" in names
    assert "inventory-adjustment" in names
    # billing events: a DFT^P03 and a FHIR ChargeItem among the recorded outputs
    outputs = [o for d in expected.values() for o in d["outputs"].values()]
    assert any(o["fields"].get("MSH[1]-9.2") == "P03" for o in outputs)
    assert any(o["fields"].get("$.resourceType") == "ChargeItem" for o in outputs)
    posted = [d for d in expected.values() if "erp_ap[0]" in d["outputs"]]
    assert posted and all(d["effects"]["invoices"] for d in posted)


def test_a_changed_price_fails_the_golden_run_naming_the_fields(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = project(tmp_path)
    assert (root / "channels/expected/usage_ledger").is_dir()  # the copy has the records
    argv = ["--root", str(root), "test", "usage_ledger"]
    assert cli.main(argv) == 0
    capsys.readouterr()
    cdm = root / "mappings/charge_codes.csv"
    cdm.write_text(cdm.read_text().replace(",EA,2875.00,", ",EA,2990.00,"))
    assert cli.main(argv) == 1
    out = capsys.readouterr().out
    assert "golden: billing[0] FT1[1]-12.1: expected '2875.00' (got '2990.00')" in out
    assert "golden: effects charges: 278000789 | ENC-445566 amount" in out
    assert "0 failed" not in out
    assert cli.main(["--root", str(root), "test", "--record", "usage_ledger"]) == 0
    assert cli.main(argv) == 0
