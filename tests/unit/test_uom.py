"""Unit-of-measure conversions: precedence, multi-hop paths, exact Decimal results, checks."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from engine.errors import ConfigError, MappingMiss, TransformError
from engine.mappings import load_csv
from engine.uom import UomGraph, round_up_to_pack

D = Decimal


def row(
    id_: str, f: str, t: str, factor: str, item: str = "", vendor: str = ""
) -> dict[str, object]:
    return {
        "id": id_,
        "item_id": item,
        "vendor": vendor,
        "from_uom": f,
        "to_uom": t,
        "factor": D(factor),
    }


ROWS = [
    row("g1", "DZ", "EA", "12"),
    row("g2", "GR", "DZ", "12"),
    row("v1", "CS", "CA", "1", vendor="HARBOR"),
    row("i1", "BX", "EA", "10", item="GLOVE"),
    row("i2", "CA", "BX", "8", item="GLOVE"),
    row("iv1", "CA", "BX", "4", item="GLOVE", vendor="HARBOR"),
    row("i3", "BX", "EA", "12", item="SUTURE"),
    row("i4", "PK", "EA", "3", item="PAD"),
]


@pytest.fixture
def graph() -> UomGraph:
    return UomGraph.from_rows(ROWS)


def test_generic_conversion_and_its_inverse(graph: UomGraph) -> None:
    """A generic row converts for any item, both ways."""
    assert graph.convert(D(2), "DZ", "EA") == D(24)
    assert graph.convert(D(36), "EA", "DZ", item_id="ANY") == D(3)


def test_multi_hop_path(graph: UomGraph) -> None:
    """GR -> DZ -> EA composes the factors (1 gross = 144 each)."""
    assert graph.convert(D(1), "GR", "EA") == D(144)
    assert graph.convert(D(3), "CA", "EA", item_id="GLOVE") == D(240)


def test_item_specific_rows_apply_only_to_their_item(graph: UomGraph) -> None:
    """BX -> EA is 10 for GLOVE, 12 for SUTURE and unknown for an item without a row."""
    assert graph.convert(D(1), "BX", "EA", item_id="GLOVE") == D(10)
    assert graph.convert(D(1), "BX", "EA", item_id="SUTURE") == D(12)
    with pytest.raises(MappingMiss):
        graph.convert(D(1), "BX", "EA", item_id="OTHER")


def test_item_vendor_row_takes_precedence_over_item_row(graph: UomGraph) -> None:
    """HARBOR's glove case holds 4 boxes; everyone else's holds 8."""
    assert graph.convert(D(1), "CA", "EA", item_id="GLOVE", vendor="HARBOR") == D(40)
    assert graph.convert(D(1), "CA", "EA", item_id="GLOVE", vendor="OTHER") == D(80)
    assert graph.convert(D(1), "CA", "EA", item_id="GLOVE") == D(80)


def test_vendor_only_row_combines_with_item_rows(graph: UomGraph) -> None:
    """HARBOR's 'CS' (a case) then the item's case and box rows: CS -> CA -> BX -> EA."""
    assert graph.convert(D(2), "CS", "EA", item_id="GLOVE", vendor="HARBOR") == D(80)
    with pytest.raises(MappingMiss):
        graph.convert(D(1), "CS", "EA", item_id="GLOVE")


def test_specific_row_beats_generic_row_for_the_same_pair() -> None:
    """An item row overrides a generic row for the same pair of units, in either direction."""
    g = UomGraph.from_rows([row("g", "BX", "EA", "10"), row("i", "EA", "BX", "0.05", item="X")])
    assert g.convert(D(1), "BX", "EA") == D(10)
    assert g.convert(D(1), "BX", "EA", item_id="X") == D(20)


def test_path_prefers_specific_rows_over_a_shorter_generic_path() -> None:
    """With a generic CA -> EA and item rows CA -> BX -> EA, the item's path wins."""
    g = UomGraph.from_rows(
        [
            row("g", "CA", "EA", "100"),
            row("i1", "CA", "BX", "10", item="X"),
            row("i2", "BX", "EA", "12", item="X"),
        ]
    )
    assert g.convert(D(1), "CA", "EA", item_id="X") == D(120)
    factor, rows = g.path("CA", "EA", item_id="X") or (None, ())
    assert factor == 120
    assert [r.id for r in rows] == ["i1", "i2"]
    assert g.convert(D(1), "CA", "EA") == D(100)


def test_same_unit_returns_the_quantity_unchanged(graph: UomGraph) -> None:
    """Converting a unit to itself needs no row, even for an unknown unit."""
    assert graph.convert(D("2.5"), "ZZ", "zz") == D("2.5")


def test_units_are_case_and_space_insensitive(graph: UomGraph) -> None:
    """' bx ' and 'BX' are the same unit."""
    assert graph.convert(D(1), " bx ", "ea", item_id="GLOVE") == D(10)


def test_round_trip_is_exact(graph: UomGraph) -> None:
    """Factors are composed exactly along a path, then divided once: no drift from 1/3 or 1/12."""
    each = D(7)
    dozens = graph.convert(each, "EA", "DZ")
    assert isinstance(dozens, Decimal)
    assert graph.convert(D(1), "EA", "DZ") == D(1) / D(12)
    # PK -> EA (x3) -> KT (/3): step by step in Decimal this would be 0.999…9.
    kits = UomGraph.from_rows([row("a", "PK", "EA", "3"), row("b", "KT", "EA", "3")])
    assert kits.convert(D(1), "PK", "KT") == D(1)
    assert D(1) / D(3) * D(3) != D(1)
    assert (
        graph.convert(graph.convert(D(12), "EA", "BX", item_id="SUTURE"), "BX", "EA", "SUTURE")
        == 12
    )


def test_no_path_raises_mapping_miss_with_table_and_key(graph: UomGraph) -> None:
    """No path: MappingMiss on table 'uom_conversions' keyed '<item>:<from>-><to>'."""
    with pytest.raises(MappingMiss) as info:
        graph.convert(D(1), "BX", "CA", item_id="PAD")
    assert info.value.table == "uom_conversions"
    assert info.value.key == "PAD:BX->CA"
    with pytest.raises(MappingMiss) as info:
        graph.convert(D(1), "KG", "EA")
    assert info.value.key == "*:KG->EA"


def test_float_quantity_is_refused(graph: UomGraph) -> None:
    """Quantities are Decimal (or int); a float raises TransformError."""
    with pytest.raises(TransformError, match="expected a Decimal"):
        graph.convert(1.5, "DZ", "EA")  # type: ignore[arg-type]
    assert graph.convert(2, "DZ", "EA") == D(24)


def test_consistent_table_has_no_problems(graph: UomGraph) -> None:
    """The fixture table passes check()."""
    assert graph.check() == []


def test_check_reports_non_positive_and_missing_factors() -> None:
    """A factor <= 0 or not a number is a problem, and the row is not used to convert."""
    g = UomGraph.from_rows(
        [
            row("z", "BX", "EA", "0"),
            row("n", "CA", "EA", "-5"),
            {"id": "m", "from_uom": "PK", "to_uom": "EA", "factor": None},
            {"id": "f", "from_uom": "DZ", "to_uom": "EA", "factor": 12.0},
        ]
    )
    problems = g.check()
    assert any("row z" in p and "must be > 0 (got 0)" in p for p in problems)
    assert any("row n" in p and "must be > 0 (got -5)" in p for p in problems)
    assert any("row m" in p and "must be a number" in p for p in problems)
    assert any("row f" in p and "must be a number (got 12.0)" in p for p in problems)
    with pytest.raises(MappingMiss):
        g.convert(D(1), "BX", "EA")


def test_check_reports_round_trip_not_one() -> None:
    """BX -> EA 10 and EA -> BX 0.2 in the same scope: the round trip is 2, not 1."""
    g = UomGraph.from_rows([row("a", "BX", "EA", "10"), row("b", "EA", "BX", "0.2")])
    [problem] = g.check()
    assert "round trip BX->EA->BX" in problem and "is 2, expected 1" in problem
    assert "rows a and b" in problem


def test_check_accepts_a_consistent_explicit_inverse() -> None:
    """BX -> EA 4 and EA -> BX 0.25 agree."""
    g = UomGraph.from_rows([row("a", "BX", "EA", "4"), row("b", "EA", "BX", "0.25")])
    assert g.check() == []


def test_check_reports_conflicting_duplicate_rows() -> None:
    """The same pair twice in one scope with different factors is a problem."""
    g = UomGraph.from_rows(
        [row("a", "BX", "EA", "10", item="X"), row("b", "BX", "EA", "12", item="X")]
    )
    [problem] = g.check()
    assert "given twice with different factors" in problem and "item X" in problem


def test_check_reports_inconsistent_cycle() -> None:
    """CA -> BX 10, BX -> EA 12 and CA -> EA 100: the cycle's product is not 1."""
    g = UomGraph.from_rows(
        [row("r1", "CA", "BX", "10"), row("r2", "BX", "EA", "12"), row("r3", "CA", "EA", "100")]
    )
    [problem] = g.check()
    assert "inconsistent cycle" in problem and "all items" in problem
    assert "expected 1" in problem
    assert all(r in problem for r in ("r1", "r2", "r3"))


def test_check_reports_cycle_that_only_exists_for_one_item() -> None:
    """Generic CA -> EA 100 plus item rows CA -> BX 10, BX -> EA 12 disagree for that item."""
    g = UomGraph.from_rows(
        [
            row("g", "CA", "EA", "100"),
            row("i1", "CA", "BX", "10", item="X"),
            row("i2", "BX", "EA", "12", item="X"),
        ]
    )
    [problem] = g.check()
    assert "item X" in problem and "inconsistent cycle" in problem


def test_check_reports_cycle_through_a_vendor_row() -> None:
    """A vendor-only row that disagrees with an item's rows is found in that item+vendor context."""
    g = UomGraph.from_rows(
        [
            row("i1", "CA", "EA", "100", item="X"),
            row("i2", "BX", "EA", "10", item="X"),
            row("v", "CA", "BX", "12", vendor="V"),
        ]
    )
    [problem] = g.check()
    assert "item X, vendor V" in problem


def test_from_rows_takes_a_loaded_mapping_table(tmp_path: Path) -> None:
    """A uom_conversions.csv loaded by engine.mappings.load_csv feeds from_rows directly."""
    path = tmp_path / "uom_conversions.csv"
    path.write_text(
        "# test table\nid,item_id,vendor,from_uom,to_uom,factor:decimal\n"
        "U1,,,DZ,EA,12\nU2,ITEM-1,,BX,EA,50\nU3,ITEM-1,VND-A,BX,EA,25\n",
        encoding="utf-8",
    )
    errors: list[ConfigError] = []
    table = load_csv(path, "uom_conversions.csv", errors)
    assert errors == [] and table is not None
    g = UomGraph.from_rows(table)
    assert [c.id for c in g.conversions] == ["U1", "U2", "U3"]
    assert g.convert(D(2), "BX", "EA", item_id="ITEM-1") == D(100)
    assert g.convert(D(2), "BX", "EA", item_id="ITEM-1", vendor="VND-A") == D(50)
    assert g.check() == []


@pytest.mark.parametrize(
    ("qty", "pack", "expected"),
    [
        ("7", 5, "10"),
        ("10", 5, "10"),
        ("0", 5, "0"),
        ("0.5", 1, "1"),
        ("11", 1, "11"),
        ("-3", 5, "0"),
        ("-7", 5, "-5"),
        ("100.01", 50, "150"),
    ],
)
def test_round_up_to_pack(qty: str, pack: int, expected: str) -> None:
    """Round up (toward +infinity) to a whole number of packs."""
    result = round_up_to_pack(D(qty), pack)
    assert result == D(expected) and isinstance(result, Decimal)
    assert not result.is_signed() or result < 0


@pytest.mark.parametrize("pack", [0, -1, 2.5, True])
def test_round_up_to_pack_refuses_a_bad_pack(pack: object) -> None:
    """The pack must be a whole number >= 1."""
    with pytest.raises(TransformError, match="pack must be a whole number"):
        round_up_to_pack(D(3), pack)  # type: ignore[arg-type]
