"""Mapping governance: who owns each mapping table and what changed in it, whether the tables
agree with each other, and what changed row by row between two versions.

``wharf mappings lint`` (each problem at file:line:column):

- every table declares its owner and keeps a change note: ``# owner: NAME`` and at least one
  ``# change: DATE TEXT`` comment line before the header (a YAML table: the same comments at
  its top);
- every charge code an item names exists in the CDM (``items.cdm_code`` in ``charge_codes``);
- every par level's item and location exist (``par_levels`` in ``items`` and ``locations``);
- every chargeable item's billing unit converts to its stocking unit (``uom_conversions``);
- every location's cost centre and every item's GL account are well formed
  (``CC-NNNN``, ``NNNN-NNN``);
- a vendor's catalogue numbers are unique for that vendor (any table with a ``vendor`` column
  and a ``vendor_catalog``/``vendor_item`` column).

A check whose tables the project does not have is skipped. ``wharf mappings diff A B`` lists
the rows added, removed and changed (column by column) between two folders or git refs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import ConfigError
from engine.mappings import Mappings, Table

_OWNER = re.compile(r"^#\s*owner:\s*(\S.*)$", re.I | re.M)
_CHANGE = re.compile(r"^#\s*change:\s*(\S.*)$", re.I | re.M)
COST_CENTRE = re.compile(r"^CC-\d{4}$")
GL_ACCOUNT = re.compile(r"^\d{4}-\d{3}$")
CATALOGUE_COLUMNS = ("vendor_catalog", "vendor_item", "catalog_number")


def header_comments(root: Path, table: Table) -> str:
    """The comment lines at the top of a table's file."""
    try:
        lines = (root / table.file).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    out = []
    for line in lines:
        if not line.startswith("#"):
            break
        out.append(line)
    return "\n".join(out)


def owner_and_changes(root: Path, table: Table) -> tuple[str | None, list[str]]:
    text = header_comments(root, table)
    owner = _OWNER.search(text)
    return (owner.group(1).strip() if owner else None), _CHANGE.findall(text)


def _at(table: Table, key: str | None, column: str | None, message: str) -> ConfigError:
    line = table.lines.get(key) if key is not None else None
    col = table.columns.index(column) + 1 if column in table.columns else None
    return ConfigError(
        message,
        file=table.file,
        line=line or 1,
        column=col or 1,
        path=f"{key}.{column}" if key and column else (key or ""),
        code="mapping_governance",
    )


def _declared(root: Path, mappings: Mappings) -> Iterable[ConfigError]:
    for table in mappings.tables.values():
        owner, changes = owner_and_changes(root, table)
        if owner is None:
            yield _at(table, None, None, "expected an owner: a comment line '# owner: NAME'")
        if not changes:
            yield _at(
                table, None, None, "expected a change note: a comment line '# change: DATE TEXT'"
            )


def _rows(mappings: Mappings, name: str) -> Table | None:
    return mappings.tables.get(name)


def _charge_codes(mappings: Mappings) -> Iterable[ConfigError]:
    items, cdm = _rows(mappings, "items"), _rows(mappings, "charge_codes")
    if items is None or cdm is None:
        return
    for key, row in items.rows.items():
        code = row.get("cdm_code") if isinstance(row, dict) else None
        if code and str(code) not in cdm.rows:
            yield _at(
                items, key, "cdm_code", f"charge code {code!r} is not in {cdm.file} (the CDM)"
            )


def _par_levels(mappings: Mappings) -> Iterable[ConfigError]:
    par, items = _rows(mappings, "par_levels"), _rows(mappings, "items")
    locations = _rows(mappings, "locations")
    if par is None:
        return
    known_locations = (
        {str(r.get("location_id")) for r in locations.rows.values()} if locations else None
    )
    for key, row in par.rows.items():
        if items is not None and str(row.get("item_id")) not in items.rows:
            yield _at(par, key, "item_id", f"item {row.get('item_id')!r} is not in {items.file}")
        if known_locations is not None and str(row.get("location_id")) not in known_locations:
            assert locations is not None
            yield _at(
                par,
                key,
                "location_id",
                f"location {row.get('location_id')!r} is not in {locations.file}",
            )


def _units(mappings: Mappings) -> Iterable[ConfigError]:
    from engine.uom import UomGraph

    items, conversions = _rows(mappings, "items"), _rows(mappings, "uom_conversions")
    if items is None or conversions is None:
        return
    graph = UomGraph.from_rows(conversions.rows)
    for key, row in items.rows.items():
        stock, bill = row.get("stock_uom"), row.get("billing_uom")
        if stock and bill and graph.path(str(bill), str(stock), key) is None:
            yield _at(
                items,
                key,
                "billing_uom",
                f"billing unit {bill} does not convert to stocking unit {stock} for {key} "
                f"(no path in {conversions.file})",
            )


def _accounts(mappings: Mappings) -> Iterable[ConfigError]:
    locations, items = _rows(mappings, "locations"), _rows(mappings, "items")
    if locations is not None and "cost_center" in locations.columns:
        for key, row in locations.rows.items():
            cc = str(row.get("cost_center") or "")
            if not COST_CENTRE.match(cc):
                yield _at(locations, key, "cost_center", f"expected CC-NNNN (got {cc!r})")
    if items is not None and "gl_account" in items.columns:
        for key, row in items.rows.items():
            gl = str(row.get("gl_account") or "")
            if not GL_ACCOUNT.match(gl):
                yield _at(items, key, "gl_account", f"expected NNNN-NNN (got {gl!r})")


def _catalogues(mappings: Mappings) -> Iterable[ConfigError]:
    for table in mappings.tables.values():
        column = next((c for c in CATALOGUE_COLUMNS if c in table.columns), None)
        if column is None or "vendor" not in table.columns:
            continue
        seen: dict[tuple[str, str], str] = {}
        for key, row in table.rows.items():
            number = row.get(column)
            if not number:
                continue
            pair = (str(row.get("vendor")), str(number))
            if pair in seen:
                yield _at(
                    table,
                    key,
                    column,
                    f"catalogue number {pair[1]!r} of vendor {pair[0]} is also row {seen[pair]}",
                )
            else:
                seen[pair] = key


def lint_governance(root: Path, mappings: Mappings) -> list[ConfigError]:
    """Every governance and cross-table problem (see the module docstring)."""
    out: list[ConfigError] = list(_declared(root, mappings))
    for check in (_charge_codes, _par_levels, _units, _accounts, _catalogues):
        out += check(mappings)
    return out


@dataclass(frozen=True)
class RowChange:
    table: str
    key: str
    kind: str  # added | removed | changed
    columns: tuple[tuple[str, Any, Any], ...] = ()  # (column, before, after) when changed

    def text(self) -> str:
        if self.kind != "changed":
            return f"{'+' if self.kind == 'added' else '-'} {self.table} {self.key}"
        cols = "; ".join(f"{c}: {b} -> {a}" for c, b, a in self.columns)
        return f"~ {self.table} {self.key}: {cols}"


def diff_tables(before: Mappings, after: Mappings) -> list[RowChange]:
    """Row-level changes from ``before`` to ``after``, table by table, in key order."""
    out: list[RowChange] = []
    for name in sorted(set(before.tables) | set(after.tables)):
        a = before.tables[name].rows if name in before.tables else {}
        b = after.tables[name].rows if name in after.tables else {}
        for key in sorted(set(a) | set(b)):
            if key not in a:
                out.append(RowChange(name, key, "added"))
            elif key not in b:
                out.append(RowChange(name, key, "removed"))
            elif a[key] != b[key]:
                old = a[key] if isinstance(a[key], dict) else {"value": a[key]}
                new = b[key] if isinstance(b[key], dict) else {"value": b[key]}
                cols = tuple(
                    (c, old.get(c), new.get(c))
                    for c in dict.fromkeys([*old, *new])
                    if old.get(c) != new.get(c)
                )
                out.append(RowChange(name, key, "changed", cols))
    return out
