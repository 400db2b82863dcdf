"""The spec machinery: types, interpolation, nested components, unknown keys, docs."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from engine.registry import REGISTRY
from engine.spec import (
    INVALID,
    Bool,
    ByteSize,
    Context,
    Duration,
    Enum,
    Field,
    Int,
    ListOf,
    MapOf,
    Spec,
    Str,
)

SPEC = Spec(
    "sample",
    [
        Field("name", Str()),
        Field("port", Int(1, 65535), 2575),
        Field("every", Duration(), 1.0),
        Field("size", ByteSize(), 1024),
        Field("mode", Enum("fast", "safe"), "safe"),
        Field("on", Bool(), False),
        Field("tags", ListOf(Str(), scalar_ok=True), ()),
        Field("headers", MapOf(Str()), {}),
    ],
    description="A sample spec.",
)


def parse(text: str, env: dict[str, str] | None = None) -> tuple[Any, list[str]]:
    ctx = Context("x.yaml", env or {}, REGISTRY)
    value = SPEC.parse(yaml.compose(text), ctx, "")
    return value, [str(e) for e in ctx.errors]


def test_defaults_and_conversions() -> None:
    """Omitted fields take their defaults; durations, sizes and scalar lists are converted."""
    value, errors = parse("name: a\nevery: 500ms\nsize: 10MiB\ntags: one\n")
    assert errors == []
    assert (value.port, value.every, value.size, value.tags) == (2575, 0.5, 10 * 1024**2, ("one",))
    assert value.where == "x.yaml:1:1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: a\nport: 70000", "x.yaml:2:7: port: must be an integer in 1..65535 (got 70000)"),
        ("name: a\nport: 'abc'", "x.yaml:2:7: port: expected an integer in 1..65535 (got 'abc')"),
        (
            "name: a\nevery: soon",
            "x.yaml:2:8: every: expected a duration such as 500ms, 30s, 5m, 2h or 7d (got 'soon')",
        ),
        ("name: a\non: maybe", "x.yaml:2:5: on: expected true or false (got 'maybe')"),
        ("name: [a]", "x.yaml:1:7: name: expected a string (got a list)"),
        ("port: 1", "x.yaml:1:1: name: required field is missing (expected a string)"),
    ],
)
def test_type_errors_name_position_field_expected_and_got(text: str, expected: str) -> None:
    """Each type error says where, which field, what was expected and what came."""
    value, errors = parse(text)
    assert value is INVALID
    assert expected in errors


def test_interpolation_forms() -> None:
    """${VAR}, ${VAR:-default} and $$ (a literal dollar) in any string field."""
    value, errors = parse(
        "name: ${A}-${B:-dflt}-$${C}\nport: ${PORT:-2600}\nheaders: {X: '${A}'}",
        {"A": "aa"},
    )
    assert errors == []
    assert value.name == "aa-dflt-${C}"
    assert value.port == 2600
    assert value.headers == {"X": "aa"}


def test_empty_variable_takes_default() -> None:
    """An empty variable takes the default, as in the shell's ${VAR:-default}."""
    value, _ = parse("name: ${A:-dflt}", {"A": ""})
    assert value.name == "dflt"


def test_duplicate_key_is_an_error() -> None:
    """A key given twice in one mapping is reported, not silently overwritten."""
    _, errors = parse("name: a\nname: b")
    assert "x.yaml:2:1: name: key appears twice in this mapping" in errors


def test_markdown_and_schema() -> None:
    """The spec renders a Markdown table and a JSON Schema with its required fields."""
    md = SPEC.to_markdown()
    assert "| `port` | an integer in 1..65535 | `2575` |" in md
    assert "| `name` | a string | **required** |" in md
    schema = SPEC.schema()
    assert schema["required"] == ["name"]
    assert schema["properties"]["mode"] == {"enum": ["fast", "safe"], "description": ""}
