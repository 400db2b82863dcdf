"""Mapping tables (crosswalks) from ``mappings/``: CSV or YAML, validated on load, O(1) lookups.

CSV: lines starting with ``#`` before the header are comments (source system, owner, version).
The file is UTF-8 (a byte-order mark is fine) unless a comment line declares otherwise:
``# encoding: windows-1252`` (what Excel on Windows saves); a byte that does not decode is a
lint error at its line and column, naming the byte and the fix.
The header names the columns; a column may carry a type, ``cost:decimal``, ``chargeable:bool``,
``pack_qty:int`` (default ``str``). The first column is the key: it must be present and unique.

YAML: a mapping of key to a mapping of column values (``278000123: {item: ITEM-1, uom: EA}``),
or a mapping of key to a single value.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from engine.config.text import read_csv_text
from engine.config.yamlnodes import compose_file
from engine.errors import ConfigError, MappingMiss
from engine.spec import Any_, Context

_TYPES = ("str", "int", "decimal", "bool")
MISSING: Any = object()


def _convert(kind: str, text: str) -> Any:
    if text == "":
        return None
    if kind == "str":
        return text
    if kind == "int":
        return int(text)
    if kind == "decimal":
        value = Decimal(text)
        if not value.is_finite():
            raise InvalidOperation(text)
        return value
    if kind == "bool":
        low = text.lower()
        if low in ("true", "yes", "y", "1"):
            return True
        if low in ("false", "no", "n", "0"):
            return False
        raise ValueError(text)
    raise AssertionError(kind)


@dataclass(frozen=True)
class Table(Mapping[str, Any]):
    """One mapping table: key → row (a dict of column values, or one value)."""

    name: str
    file: str
    columns: tuple[str, ...]
    rows: Mapping[str, Any]
    lines: Mapping[str, int]

    def __getitem__(self, key: str) -> Any:
        return self.rows[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def lookup(self, key: Any, default: Any = MISSING) -> Any:
        row = self.rows.get(str(key).strip() if key is not None else "", MISSING)
        if row is MISSING:
            if default is MISSING:
                raise MappingMiss(self.name, key)
            return default
        return row


class Mappings:
    """All tables of a project, by name (file stem)."""

    def __init__(self, tables: Mapping[str, Table]) -> None:
        self.tables = dict(tables)
        self.unreadable: set[str] = set()  # tables whose file could not be read (lint says why)
        # X12 trading partners (engine.domains.procurement.partners), set by the loader
        self.partners: Any = None

    def __contains__(self, name: str) -> bool:
        return name in self.tables

    def table(self, name: str) -> Table:
        try:
            return self.tables[name]
        except KeyError:
            raise MappingMiss("<tables>", name) from None

    def lookup(self, table: str, key: Any, default: Any = MISSING) -> Any:
        return self.table(table).lookup(key, default)


def load_csv(path: Path, shown: str, errors: list[ConfigError]) -> Table | None:
    text = read_csv_text(path, shown, errors, "the table")
    if text is None:
        return None
    lines = text.splitlines()
    first = 0
    while first < len(lines) and (lines[first].startswith("#") or not lines[first].strip()):
        first += 1
    if first == len(lines):
        errors.append(ConfigError("expected a header row (got an empty table)", file=shown))
        return None
    reader = csv.reader(io.StringIO("\n".join(lines[first:])))
    header = next(reader)
    columns: list[str] = []
    kinds: list[str] = []
    for i, cell in enumerate(header):
        name, _, kind = cell.strip().partition(":")
        kind = kind or "str"
        if kind not in _TYPES:
            errors.append(
                ConfigError(
                    f"column type must be one of {', '.join(_TYPES)} (got {kind!r})",
                    file=shown,
                    line=first + 1,
                    column=i + 1,
                    path=f"header[{i}]",
                    code="bad_mapping_row",
                )
            )
        if not name:
            errors.append(
                ConfigError("expected a column name", file=shown, line=first + 1, column=i + 1)
            )
        columns.append(name)
        kinds.append(kind if kind in _TYPES else "str")
    rows: dict[str, Any] = {}
    where: dict[str, int] = {}
    for offset, record in enumerate(reader, start=1):
        lineno = first + 1 + offset
        if not record or all(not c.strip() for c in record) or record[0].startswith("#"):
            continue
        if len(record) != len(columns):
            errors.append(
                ConfigError(
                    f"expected {len(columns)} columns ({', '.join(columns)}) (got {len(record)})",
                    file=shown,
                    line=lineno,
                    column=1,
                    path=f"row {offset}",
                    code="bad_mapping_row",
                )
            )
            continue
        key = record[0].strip()
        if not key:
            errors.append(
                ConfigError(
                    f"key column '{columns[0]}' is empty",
                    file=shown,
                    line=lineno,
                    column=1,
                    path=columns[0],
                    code="bad_mapping_row",
                )
            )
            continue
        if key in rows:
            errors.append(
                ConfigError(
                    f"duplicate key {key!r} (first on line {where[key]})",
                    file=shown,
                    line=lineno,
                    column=1,
                    path=columns[0],
                    code="bad_mapping_row",
                )
            )
            continue
        row: dict[str, Any] = {}
        ok = True
        for i, (col, kind, cell) in enumerate(zip(columns, kinds, record, strict=True)):
            try:
                row[col] = _convert(kind, cell.strip())
            except (ValueError, InvalidOperation):
                errors.append(
                    ConfigError(
                        f"expected {kind} (got {cell.strip()!r})",
                        file=shown,
                        line=lineno,
                        column=i + 1,
                        path=f"{key}.{col}",
                        code="bad_mapping_row",
                    )
                )
                ok = False
        if ok:
            rows[key] = row
            where[key] = lineno
    return Table(path.stem, shown, tuple(columns), rows, where)


def load_yaml_table(path: Path, shown: str, errors: list[ConfigError]) -> Table | None:
    try:
        node = compose_file(path, shown)
    except ConfigError as exc:
        errors.append(exc)
        return None
    if not isinstance(node, yaml.MappingNode):
        errors.append(ConfigError("expected a mapping of key to row", file=shown, line=1))
        return None
    ctx = Context(shown)
    rows: dict[str, Any] = {}
    where: dict[str, int] = {}
    columns: list[str] = []
    for k, v in node.value:
        key = str(k.value)
        if key in rows:
            ctx.error(k, key, f"duplicate key {key!r} (first on line {where[key]})")
            continue
        rows[key] = Any_().parse(v, ctx, key)
        where[key] = k.start_mark.line + 1
        if isinstance(rows[key], dict):
            columns.extend(c for c in rows[key] if c not in columns)
    for e in ctx.errors:
        e.code = "bad_mapping_row"
    errors.extend(ctx.errors)
    return Table(path.stem, shown, tuple(columns), rows, where)


def load_mappings(folder: Path, root: Path) -> tuple[Mappings, list[ConfigError]]:
    errors: list[ConfigError] = []
    tables: dict[str, Table] = {}
    unreadable: set[str] = set()
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            shown = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
            if path.suffix == ".csv":
                table = load_csv(path, shown, errors)
            elif path.suffix in (".yaml", ".yml"):
                table = load_yaml_table(path, shown, errors)
            else:
                continue
            if table is None:
                unreadable.add(path.stem)
                continue
            if table.name in tables:
                errors.append(
                    ConfigError(
                        f"table '{table.name}' is defined twice (also {tables[table.name].file})",
                        file=shown,
                    )
                )
                continue
            tables[table.name] = table
    if "uom_conversions" in tables:
        errors.extend(_check_uom(tables["uom_conversions"]))
    mappings = Mappings(tables)
    mappings.unreadable = unreadable - set(tables)
    return mappings, errors


def _check_uom(table: Table) -> list[ConfigError]:
    """A unit-conversion table whose cycles or round trips do not multiply to 1 is an error."""
    from engine.uom import UomGraph

    out = []
    for problem in UomGraph.from_rows(table.rows).check():
        # Point at the first row the problem names (row ids are the table's keys).
        named = [table.lines[k] for k in table.lines if re.search(rf"\b{re.escape(k)}\b", problem)]
        line = min(named) if named else None
        out.append(
            ConfigError(
                problem,
                file=table.file,
                line=line,
                column=1 if line else None,
                code="bad_mapping_row",
            )
        )
    return out
