"""The shipped master data in mappings/ loads cleanly and is consistent with itself."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from engine.errors import ConfigError
from engine.mappings import Table, load_csv
from engine.udi import gln_valid, gtin_valid
from engine.uom import UomGraph

ROOT = Path(__file__).resolve().parents[2]
MASTER = ROOT / "mappings"
TABLES = ("items", "charge_codes", "uom_conversions", "locations", "par_levels", "onhand")
C_CODE = re.compile(r"C\d{4}")


def _load(path: Path) -> Table:
    errors: list[ConfigError] = []
    table = load_csv(path, str(path.relative_to(ROOT)), errors)
    assert errors == [], [str(e) for e in errors]
    assert table is not None
    return table


@pytest.fixture(scope="module")
def t() -> dict[str, Table]:
    return {name: _load(MASTER / f"{name}.csv") for name in TABLES}


@pytest.fixture(scope="module")
def uom(t: dict[str, Table]) -> UomGraph:
    return UomGraph.from_rows(t["uom_conversions"])


def _rows(table: Table) -> list[tuple[str, dict[str, Any]]]:
    return list(table.rows.items())


@pytest.mark.parametrize("name", TABLES)
def test_every_table_loads_without_errors(name: str) -> None:
    """Each mappings/ CSV loads through engine.mappings.load_csv with no errors."""
    table = _load(MASTER / f"{name}.csv")
    assert len(table) > 0


def test_item_master_shape(t: dict[str, Table]) -> None:
    """At least 250 items, with the documented columns and typed values."""
    items = t["items"]
    assert len(items) >= 250
    assert items.columns == (
        "item_id",
        "description",
        "manufacturer",
        "stock_uom",
        "billing_uom",
        "chargeable",
        "implant",
        "lot_controlled",
        "serial_controlled",
        "cdm_code",
        "revenue_code",
        "hcpcs",
        "gl_account",
        "unit_cost",
        "gtin_each",
        "gtin_box",
        "gtin_case",
    )
    for key, item in _rows(items):
        assert isinstance(item["chargeable"], bool) and isinstance(item["implant"], bool), key
        assert isinstance(item["unit_cost"], Decimal) and item["unit_cost"] > 0, key
        assert item["description"] and item["manufacturer"] and item["gl_account"], key


def test_every_gtin_has_a_correct_check_digit_and_is_unique(t: dict[str, Table]) -> None:
    """Every GTIN is a valid GTIN-14, each item has a unit-of-use GTIN, and no GTIN repeats."""
    seen: dict[str, str] = {}
    for key, item in _rows(t["items"]):
        assert item["gtin_each"], key
        for level in ("gtin_each", "gtin_box", "gtin_case"):
            gtin = item[level]
            if gtin is None:
                continue
            assert gtin_valid(gtin), (key, level, gtin)
            assert gtin not in seen, (key, level, gtin, seen.get(gtin))
            seen[gtin] = f"{key}.{level}"


def test_every_gln_has_a_correct_check_digit_and_is_unique(t: dict[str, Table]) -> None:
    """Every location GLN is a valid GLN-13 and no two locations share one."""
    glns = [row["gln"] for row in t["locations"].rows.values()]
    assert all(gln_valid(g) for g in glns), glns
    assert len(set(glns)) == len(glns)
    ids = [row["location_id"] for row in t["locations"].rows.values()]
    assert len(set(ids)) == len(ids)


def test_every_charge_code_points_at_an_existing_item(t: dict[str, Table]) -> None:
    """Each CDM row names an item of the item master with the same revenue code and HCPCS."""
    items = t["items"]
    for cdm, charge in _rows(t["charge_codes"]):
        item = items.rows.get(charge["item_id"])
        assert item is not None, (cdm, charge["item_id"])
        assert (charge["revenue_code"], charge["hcpcs"], charge["billing_uom"]) == (
            item["revenue_code"],
            item["hcpcs"],
            item["billing_uom"],
        ), cdm
        assert charge["price_source"] in ("cdm", "cost_plus"), cdm
        assert charge["price"] >= 0, cdm


def test_every_chargeable_item_has_its_charge_code(t: dict[str, Table]) -> None:
    """A chargeable item's cdm_code is a CDM row that points back to it, priced above zero."""
    charges = t["charge_codes"]
    for key, item in _rows(t["items"]):
        if not item["chargeable"]:
            continue
        charge = charges.rows.get(item["cdm_code"] or "")
        assert charge is not None, key
        assert charge["item_id"] == key and charge["price"] > 0, key


def test_chargeable_implants_have_revenue_code_0278_and_a_c_code(t: dict[str, Table]) -> None:
    """Every chargeable implant bills under revenue code 0278 with a HCPCS C-code."""
    implants = [(k, i) for k, i in _rows(t["items"]) if i["implant"] and i["chargeable"]]
    assert implants
    for key, item in implants:
        assert item["revenue_code"] == "0278", key
        assert item["hcpcs"] is not None and C_CODE.fullmatch(item["hcpcs"]), key


def test_implants_are_lot_or_serial_controlled(t: dict[str, Table]) -> None:
    """Implants carry lot (and, for joints, serial) control for the implant log."""
    for key, item in _rows(t["items"]):
        if item["implant"]:
            assert item["lot_controlled"] or item["serial_controlled"], key


def test_uom_table_is_consistent(uom: UomGraph) -> None:
    """The conversion table passes UomGraph.check: positive factors, no bad round trips/cycles."""
    assert uom.check() == []


def test_each_items_stock_uom_converts_to_its_billing_uom(
    t: dict[str, Table], uom: UomGraph
) -> None:
    """stock_uom -> billing_uom converts for every item (a whole number of billing units)."""
    for key, item in _rows(t["items"]):
        factor = uom.convert(Decimal(1), item["stock_uom"], item["billing_uom"], item_id=key)
        assert factor > 0 and factor == factor.to_integral_value(), key


def test_each_pack_level_converts_to_the_stock_uom(t: dict[str, Table], uom: UomGraph) -> None:
    """An item with a box GTIN has a BX or PK unit, one with a case GTIN a CA unit."""
    for key, item in _rows(t["items"]):
        if item["gtin_box"]:
            assert any(uom.path(inner, item["stock_uom"], item_id=key) for inner in ("BX", "PK")), (
                key
            )
        if item["gtin_case"]:
            assert uom.path("CA", item["stock_uom"], item_id=key), key


def test_par_rows_name_existing_items_and_locations(t: dict[str, Table]) -> None:
    """Every par row's item and location exist; a location/item pair appears once."""
    locations = {row["location_id"] for row in t["locations"].rows.values()}
    pairs = set()
    assert len(t["par_levels"]) >= 24
    for key, par in _rows(t["par_levels"]):
        assert par["item_id"] in t["items"].rows, key
        assert par["location_id"] in locations, key
        assert (par["location_id"], par["item_id"]) not in pairs, key
        pairs.add((par["location_id"], par["item_id"]))


def test_par_quantities_follow_the_pack(t: dict[str, Table], uom: UomGraph) -> None:
    """pack_size is the stock units in one order_uom; order_qty is par - ROP rounded up to it."""
    for key, par in _rows(t["par_levels"]):
        item = t["items"].rows[par["item_id"]]
        pack = uom.convert(Decimal(1), par["order_uom"], item["stock_uom"], item_id=par["item_id"])
        assert pack == par["pack_size"], key
        assert par["reorder_point"] < par["par"], key
        assert par["order_qty"] % par["pack_size"] == 0, key
        assert par["order_qty"] >= par["par"] - par["reorder_point"], key
        assert par["order_qty"] - (par["par"] - par["reorder_point"]) < par["pack_size"], key


def test_onhand_snapshot_covers_the_par_rows_in_stock_uom(t: dict[str, Table]) -> None:
    """The on-hand snapshot has one row per par'd location/item, in the item's stock UoM."""
    par_pairs = {(p["location_id"], p["item_id"]) for p in t["par_levels"].rows.values()}
    onhand = list(t["onhand"].rows.values())
    assert {(o["location_id"], o["item_id"]) for o in onhand} == par_pairs
    assert len(onhand) == len(par_pairs)
    for row in onhand:
        assert row["uom"] == t["items"].rows[row["item_id"]]["stock_uom"]
        assert row["on_hand"] >= 0


def test_domain_example_gtin_is_a_bone_screw_box(t: dict[str, Table]) -> None:
    """GS1's example GTIN 10614141999993 (used in DOMAIN.md) is the box of bone screws."""
    [(key, item)] = [(k, i) for k, i in _rows(t["items"]) if i["gtin_box"] == "10614141999993"]
    assert key == "ITEM-100123" and item["implant"]
