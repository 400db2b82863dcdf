"""Lint errors name file:line:column, the dotted field path, what was expected and what came."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine.cli import main
from engine.config.project import load_project
from engine.errors import LintFailed

CHANNEL = "channels/usage_to_erp.yaml"


def lint_errors(root: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(LintFailed) as info:
        load_project(root, env=env or {})
    return [str(e) for e in info.value.errors]


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def line_of(path: Path, needle: str) -> int:
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(needle)


def test_shipped_project_lints_clean(project_dir: Path) -> None:
    """The shipped routes, channels and mappings load without errors."""
    project = load_project(project_dir, env={})
    assert "usage_to_erp" in project.channels
    assert {"items", "locations"} <= set(project.mappings.tables)


def test_unknown_key_gives_position_path_and_suggestion(project_dir: Path) -> None:
    """A misspelt key is an error at its own line and column, with a 'did you mean'."""
    chan = project_dir / CHANNEL
    edit(chan, "    concurrency: 8", "    concurency: 8")
    errors = lint_errors(project_dir)
    line = line_of(chan, "concurency")
    assert any(
        e.startswith(f"{CHANNEL}:{line}:5: destinations[0].concurency: field not recognised")
        and "did you mean 'concurrency'?" in e
        for e in errors
    ), errors


def test_wrong_type(project_dir: Path) -> None:
    """A list where a number belongs says what was expected and what came."""
    chan = project_dir / CHANNEL
    edit(chan, "concurrency: 8", "concurrency: [8]")
    errors = lint_errors(project_dir)
    line = line_of(chan, "concurrency: [8]")
    assert (
        f"{CHANNEL}:{line}:18: destinations[0].concurrency: expected an integer in 1..1024 (got a list)"
        in errors
    )


def test_number_out_of_range(project_dir: Path) -> None:
    """A number outside its range names the range and the value."""
    edit(project_dir / CHANNEL, "concurrency: 8", "concurrency: 70000")
    errors = lint_errors(project_dir)
    assert any(
        "destinations[0].concurrency: must be an integer in 1..1024 (got 70000)" in e
        for e in errors
    )


def test_missing_required_field(project_dir: Path) -> None:
    """A destination without its url names the missing field and where the mapping starts."""
    chan = project_dir / CHANNEL
    edit(chan, "      url: ${ERP_URL:-http://127.0.0.1:8089}/inventory/issues\n", "")
    errors = lint_errors(project_dir)
    assert any(
        re.match(rf"{CHANNEL}:\d+:\d+: destinations\[0\]\.http\.url: required field is missing", e)
        for e in errors
    ), errors


def test_bad_enum_value(project_dir: Path) -> None:
    """An enum value that is not allowed lists the choices and suggests the nearest."""
    chan = project_dir / CHANNEL
    edit(chan, "dedup:", "respond_from: after_stor\ndedup:")
    errors = lint_errors(project_dir)
    line = line_of(chan, "after_stor")
    assert any(
        e.startswith(f"{CHANNEL}:{line}:15: respond_from: expected one of after_store")
        and "did you mean 'after_store'?" in e
        for e in errors
    ), errors


def test_unset_variable(project_dir: Path) -> None:
    """${VAR} without a default and without the variable is an error naming the variable."""
    chan = project_dir / CHANNEL
    edit(chan, "${ERP_URL:-http://127.0.0.1:8089}", "${ERP_BASE}")
    errors = lint_errors(project_dir)
    line = line_of(chan, "${ERP_BASE}")
    assert any(
        e.startswith(
            f"{CHANNEL}:{line}:12: destinations[0].http.url: environment variable 'ERP_BASE' is not set"
        )
        for e in errors
    ), errors
    assert load_project(project_dir, env={"ERP_BASE": "http://erp"}).channels


def test_variable_default_and_value(project_dir: Path) -> None:
    """${VAR:-default} takes the default when unset and the value when set."""
    p = load_project(project_dir, env={})
    url = p.channels["usage_to_erp"].config.destinations[0].component.options.url
    assert url == "http://127.0.0.1:8089/inventory/issues"
    p = load_project(project_dir, env={"ERP_URL": "https://erp.example"})
    url = p.channels["usage_to_erp"].config.destinations[0].component.options.url
    assert url == "https://erp.example/inventory/issues"


def test_unknown_transform(project_dir: Path) -> None:
    """An unknown transform name is an error at its value, with a suggestion."""
    chan = project_dir / CHANNEL
    edit(chan, "transform: hl7_usage_to_issue", "transform: hl7_usage_to_isue")
    errors = lint_errors(project_dir)
    line = line_of(chan, "hl7_usage_to_isue")
    assert any(
        e.startswith(
            f"{CHANNEL}:{line}:16: transformer[0].transform: unknown transform 'hl7_usage_to_isue'"
        )
        and "did you mean 'hl7_usage_to_issue'?" in e
        for e in errors
    ), errors


def test_unknown_mapping_table(project_dir: Path) -> None:
    """A transform option naming a missing mapping table is a lint error."""
    edit(project_dir / CHANNEL, "    items: items", "    items: itemz")
    errors = lint_errors(project_dir)
    assert any(
        "transformer[0].items: no mapping table 'itemz'" in e and "did you mean 'items'?" in e
        for e in errors
    )


def test_bad_mapping_rows(project_dir: Path) -> None:
    """Bad CSV rows (wrong count, bad type, duplicate key) are errors with file:line."""
    table = project_dir / "mappings/charge_codes.csv"
    rows_before = (
        sum(1 for ln in table.read_text().splitlines() if ln and not ln.startswith("#")) - 1
    )
    with table.open("a") as fh:
        fh.write("278000999,ITEM-X,SHORT ROW\n")
        fh.write("278000998,ITEM-Y,BAD PRICE,0272,,,EA,twelve,cdm\n")
        fh.write("278000123,ITEM-Z,DUPLICATE,0278,,,EA,1.00,cdm\n")
    errors = lint_errors(project_dir)
    n = len(table.read_text().splitlines())
    assert (
        f"mappings/charge_codes.csv:{n - 2}:1: row {rows_before + 1}: expected 9 columns (cdm_code, "
        "item_id, description, revenue_code, hcpcs, modifiers, billing_uom, price, price_source) (got 3)"
    ) in errors
    assert (
        f"mappings/charge_codes.csv:{n - 1}:8: 278000998.price: expected decimal (got 'twelve')"
        in errors
    )
    assert any(
        e.startswith(f"mappings/charge_codes.csv:{n}:1: cdm_code: duplicate key '278000123'")
        for e in errors
    )


def test_yaml_syntax_error_has_position(project_dir: Path) -> None:
    """Broken YAML is reported at the parser's mark."""
    chan = project_dir / CHANNEL
    edit(chan, "dedup:\n  window: 7d", "dedup:\n  window: [7d")
    errors = lint_errors(project_dir)
    assert any(e.startswith(f"{CHANNEL}:") and "YAML syntax error" in e for e in errors), errors


def test_all_errors_reported_at_once(project_dir: Path) -> None:
    """Lint reports every problem in one pass, not just the first."""
    chan = project_dir / CHANNEL
    edit(chan, "concurrency: 8", "concurency: 8")
    edit(chan, "transform: hl7_usage_to_issue", "transform: nope")
    assert len(lint_errors(project_dir)) >= 2


def test_wharf_lint_exit_codes(project_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`wharf lint` exits 0 on a clean project and non-zero naming file:line:col on errors."""
    assert main(["--root", str(project_dir), "lint"]) == 0
    edit(project_dir / CHANNEL, "concurrency: 8", "concurency: 8")
    assert main(["--root", str(project_dir), "lint"]) == 1
    err = capsys.readouterr().err
    assert f"{CHANNEL}:" in err and "concurency" in err and "1 error(s)" in err


def test_inconsistent_uom_conversions_are_lint_errors(project_dir: Path) -> None:
    """A conversion whose round trip is not 1 (BX->EA 5 but EA->BX 0.25) is a lint error
    naming the table's file and line."""
    table = project_dir / "mappings/uom_conversions.csv"
    with table.open("a") as fh:
        fh.write("UC-BAD1,ITEM-100999,,BX,EA,5\n")
        fh.write("UC-BAD2,ITEM-100999,,EA,BX,0.25\n")
    errors = lint_errors(project_dir)
    n = len(table.read_text().splitlines())
    assert any(
        e.startswith(f"mappings/uom_conversions.csv:{n - 1}:1:") and "UC-BAD" in e for e in errors
    ), errors


def test_fhir_http_cannot_be_a_shared_listener(project_dir: Path) -> None:
    """A routes.yaml listener with the fhir_http source is refused where it is written (each
    FHIR channel declares its own; channels with the same `listen` share the port)."""
    routes = project_dir / "routes.yaml"
    text = routes.read_text()
    routes.write_text(
        text
        + "listeners:\n"
        + "  - name: fhir_shared\n"
        + "    source:\n"
        + "      fhir_http: {listen: 'tcp:8099', base: /fhir/X, auth: none}\n"
        + "    routes:\n"
        + "      - {channel: usage_to_erp}\n"
    )
    errors = lint_errors(project_dir)
    line = line_of(routes, "fhir_http: {listen")
    assert any(
        e.startswith(f"routes.yaml:{line}:")
        and "listeners[0].source: expected a source that a listener can share" in e
        and "(got fhir_http)" in e
        for e in errors
    ), errors
