"""Structured differences: payloads compared field by field, not line by line.

A payload is flattened to ``path -> value`` by what it is: JSON (``$.lines[0].quantity``),
HL7 v2 (``FT1[1]-12.1``: segment, its occurrence, field, component), X12 (``IT1[2]-04``:
segment, occurrence, element), anything else by line (``line 3``). Two flattenings compare
path by path: a value changed, a path only in one of them, or both.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

Flat = dict[str, str]


@dataclass(frozen=True)
class Change:
    path: str
    before: str | None  # None: the path is new
    after: str | None  # None: the path is gone

    @property
    def magnitude(self) -> Decimal:
        """How large a numeric change is (absolute difference); 0 when not both numbers."""
        try:
            return abs(Decimal(self.after or "x") - Decimal(self.before or "x"))
        except (InvalidOperation, ValueError):
            return Decimal(0)


def _json_paths(value: Any, path: str = "$") -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _json_paths(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _json_paths(v, f"{path}[{i}]")
    else:
        yield path, "null" if value is None else str(value)


def _hl7_paths(text: str) -> Iterator[tuple[str, str]]:
    field_sep = text[3] if text.startswith("MSH") and len(text) > 3 else "|"
    comp_sep = text[4] if text.startswith("MSH") and len(text) > 4 else "^"
    seen: dict[str, int] = {}
    for segment in text.replace("\r\n", "\r").replace("\n", "\r").split("\r"):
        if not segment.strip():
            continue
        fields = segment.split(field_sep)
        name = fields[0]
        seen[name] = seen.get(name, 0) + 1
        base = f"{name}[{seen[name]}]"
        # MSH-1 is the field separator itself: MSH's fields count from 2
        first = 2 if name == "MSH" else 1
        for i, value in enumerate(fields[1:], start=first):
            if name == "MSH" and i == 2:
                yield f"{base}-2", value
                continue
            parts = value.split(comp_sep)
            if len(parts) == 1:
                yield f"{base}-{i}", value
            else:
                for c, part in enumerate(parts, start=1):
                    yield f"{base}-{i}.{c}", part


def _x12_paths(text: str) -> Iterator[tuple[str, str]]:
    element, terminator = text[3], text[105] if len(text) > 105 else "~"
    seen: dict[str, int] = {}
    for segment in text.split(terminator):
        segment = segment.strip()
        if not segment:
            continue
        parts = segment.split(element)
        name = parts[0]
        seen[name] = seen.get(name, 0) + 1
        for i, value in enumerate(parts[1:], start=1):
            yield f"{name}[{seen[name]}]-{i:02d}", value.strip() if name == "ISA" else value


def flatten(payload: bytes, content_type: str = "") -> Flat:
    """``path -> value`` for a payload (see the module docstring)."""
    text = payload.decode("utf-8", "replace")
    stripped = text.lstrip()
    if "json" in content_type or stripped[:1] in ("{", "["):
        try:
            return dict(_json_paths(json.loads(text)))
        except ValueError:
            pass
    if stripped.startswith("MSH") or "hl7" in content_type:
        return dict(_hl7_paths(stripped))
    if stripped.startswith("ISA") and len(stripped) > 105:
        return dict(_x12_paths(stripped))
    return {f"line {i}": line for i, line in enumerate(text.splitlines(), start=1)}


def compare(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[Change]:
    """Every path whose value differs, in the order the paths first appear."""
    out = []
    for path in dict.fromkeys([*before, *after]):
        b, a = before.get(path), after.get(path)
        if b != a:
            out.append(Change(path, None if b is None else str(b), None if a is None else str(a)))
    return out


def flat_totals(section: Mapping[str, Any]) -> Flat:
    """A totals section as ``key.measure -> value``."""
    out: Flat = {}
    for key, value in section.items():
        if isinstance(value, Mapping):
            for measure, v in value.items():
                out[f"{key} {measure}"] = str(v)
        else:
            out[key] = str(value)
    return out
