"""Mapping governance (issue 16, item 4): owners and change notes, the tables agreeing with
each other (each problem at file:line:column), and row-level diffs between two versions."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import cli
from engine.config.governance import diff_tables, lint_governance
from engine.config.project import load_project
from tests.integration.preview_corpus import project


def problems(root: Path) -> list[str]:
    project_ = load_project(root)
    return [str(p) for p in lint_governance(root, project_.mappings)]


def replace(path: Path, old: str, new: str) -> int:
    """Replace ``old`` (once) and return the 1-based line it is on."""
    text = path.read_text()
    assert text.count(old) == 1, old
    line = text[: text.index(old)].count("\n") + 1
    path.write_text(text.replace(old, new))
    return line


def test_the_shipped_tables_pass(tmp_path: Path) -> None:
    assert problems(project(tmp_path)) == []


def test_each_cross_table_problem_is_named_at_its_line_and_column(tmp_path: Path) -> None:
    root = project(tmp_path)
    m = root / "mappings"
    cdm = replace(
        m / "items.csv",
        "ITEM-160004,FOLEY CATHETER TRAY 14F,Pinecrest Urology,EA,EA,true,false,"
        "false,false,272100049,",
        "ITEM-160004,FOLEY CATHETER TRAY 14F,Pinecrest Urology,EA,BX,"
        "true,false,false,false,279999999,",
    )
    gl = replace(m / "items.csv", ",5420-272,1.25,00614141102044", ",5420272,1.25,00614141102044")
    par = replace(
        m / "par_levels.csv", "PAR-0001,LOC-CATH-1,ITEM-101007", "PAR-0001,LOC-NOWHERE,ITEM-999999"
    )
    cc = replace(
        m / "locations.csv",
        "OR,LOC-OR-MAIN,Main Operating Room,CC-7010",
        "OR,LOC-OR-MAIN,Main Operating Room,7010",
    )
    (m / "vendor_items.csv").write_text(
        "# owner: purchasing\n# change: 2026-02 catalogue\nid,vendor,vendor_item,item_id\n"
        "V1,VND-ACMEMED,ORTH-SCR-35,ITEM-100123\nV2,VND-ACMEMED,ORTH-SCR-35,ITEM-100124\n"
        "V3,VND-HARBOR,ORTH-SCR-35,ITEM-100123\n"
    )
    (m / "onhand.csv").write_text((m / "onhand.csv").read_text().replace("# owner: ", "# by: "))
    got = problems(root)
    assert got == [
        "mappings/onhand.csv:1:1: expected an owner: a comment line '# owner: NAME'",
        f"mappings/items.csv:{cdm}:10: ITEM-160004.cdm_code: charge code '279999999' is not in "
        "mappings/charge_codes.csv (the CDM)",
        f"mappings/par_levels.csv:{par}:3: PAR-0001.item_id: item 'ITEM-999999' is not in "
        "mappings/items.csv",
        f"mappings/par_levels.csv:{par}:2: PAR-0001.location_id: location 'LOC-NOWHERE' is not "
        "in mappings/locations.csv",
        f"mappings/items.csv:{cdm}:5: ITEM-160004.billing_uom: billing unit BX does not convert "
        "to stocking unit EA for ITEM-160004 (no path in mappings/uom_conversions.csv)",
        f"mappings/locations.csv:{cc}:4: OR.cost_center: expected CC-NNNN (got '7010')",
        f"mappings/items.csv:{gl}:13: ITEM-200022.gl_account: expected NNNN-NNN (got '5420272')",
        "mappings/vendor_items.csv:5:3: V2.vendor_item: catalogue number 'ORTH-SCR-35' of vendor "
        "VND-ACMEMED is also row V1",
    ]


def test_cli_lint_and_diff(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = project(tmp_path / "a")
    other = project(tmp_path / "b")
    replace(
        other / "mappings/charge_codes.csv",
        "272100049,ITEM-160004,FOLEY CATHETER TRAY 14F,0272,,,EA,44.00,",
        "272100049,ITEM-160004,FOLEY CATHETER TRAY 14F,0272,,,EA,47.50,",
    )
    with (other / "mappings/uom_conversions.csv").open("a") as f:
        f.write("UC-9999,ITEM-160004,,BX,EA,10\n")
    assert cli.main(["--root", str(root), "mappings", "lint"]) == 0
    assert "mappings lint: ok (7 table(s))" in capsys.readouterr().out
    assert cli.main(["--root", str(root), "mappings", "diff", str(root), str(other)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "~ charge_codes 272100049: price: 44.00 -> 47.50",
        "+ uom_conversions UC-9999",
        "1 row(s) added, 0 row(s) removed, 1 row(s) changed",
    ]
    a, b = load_project(root).mappings, load_project(other).mappings
    assert [c.kind for c in diff_tables(b, a)] == ["changed", "removed"]
