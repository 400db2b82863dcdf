"""Channel.process: filters, transform errors with their location, emit, raw pass-through."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.channel import Channel
from engine.config.project import load_project
from engine.errors import MappingMiss
from engine.mappings import load_mappings
from engine.registry import REGISTRY, transform
from engine.spec import Spec

SAMPLE = Path(__file__).resolve().parents[2] / "samples/hl7/dft_p03_knee_and_sutures.hl7"


@transform("test_emit_per_line", Spec("test_emit_per_line", [], description="test only"))
def _emit(msg, ctx):  # type: ignore[no-untyped-def]
    for i, ft1 in enumerate(msg.all("FT1"), 1):
        ctx.emit("erp", {"line": i, "code": ft1.get(7)}, order_key=msg.get("PV1-19.1"))
    ctx.key("encounter", msg.get("PV1-19.1"))
    return {"lines": len(msg.all("FT1"))}


@transform("test_buggy", Spec("test_buggy", [], description="test only"))
def _buggy(msg, ctx):  # type: ignore[no-untyped-def]
    return {}["missing"]


def channel(project_dir: Path, steps: str, dests: str = "erp") -> Channel:
    names = dests.split(",")
    text = (
        "codec: {hl7v2: {}}\ntransformer:\n"
        + steps
        + "destinations:\n"
        + "".join(f"  - name: {n}\n    file: {{dir: out/{n}}}\n" for n in names)
    )
    (project_dir / "channels/t.yaml").write_text(text)
    project = load_project(project_dir, env={})
    return Channel(project.channels["t"], project.mappings, REGISTRY)


def test_emit_goes_to_its_destination_and_body_to_the_others(project_dir: Path) -> None:
    """Emitted payloads go to their destination; other destinations get the final body."""
    ch = channel(project_dir, "  - transform: test_emit_per_line\n", "erp,archive")
    result = ch.process(SAMPLE.read_bytes(), "m1", "c1")
    assert result.status == "sent" and result.error is None
    erp = [o for o in result.outbound if o.destination == "erp"]
    archive = [o for o in result.outbound if o.destination == "archive"]
    assert [o.payload for o in erp] == [
        b'{"line": 1, "code": "278000456"}',
        b'{"line": 2, "code": "272000010"}',
    ]
    assert {o.order_key for o in erp} == {"ENC-112233"}
    assert [o.payload for o in archive] == [b'{"lines": 2}']
    assert result.keys == [("encounter", "ENC-112233")]


def test_plugin_bug_is_an_error_with_the_step_location(project_dir: Path) -> None:
    """An unexpected exception in a transform puts the message in error at file:line step."""
    ch = channel(project_dir, "  - transform: test_buggy\n")
    result = ch.process(SAMPLE.read_bytes(), "m1", "c1")
    assert result.status == "error"
    assert result.error == "KeyError in transform: 'missing'"
    assert result.error_location == "channels/t.yaml:3:5 transformer[0] (test_buggy)"
    assert result.outbound == []


def test_no_transform_forwards_the_raw_bytes(project_dir: Path) -> None:
    """A channel without transform steps delivers the bytes as they came, as HL7."""
    (project_dir / "channels/t.yaml").write_text(
        "codec: {hl7v2: {}}\ndestinations:\n  - name: out\n    file: {dir: out}\n"
    )
    project = load_project(project_dir, env={})
    ch = Channel(project.channels["t"], project.mappings, REGISTRY)
    result = ch.process(SAMPLE.read_bytes(), "m1", "c1")
    assert [o.payload for o in result.outbound] == [SAMPLE.read_bytes()]
    assert result.outbound[0].content_type == "x-application/hl7-v2+er7"


def test_codec_error_during_processing_is_an_error(project_dir: Path) -> None:
    """Bytes the codec refuses are an error at the codec, not a crash."""
    ch = channel(project_dir, "  - transform: test_emit_per_line\n")
    result = ch.process(b"garbage", "m1", "c1")
    assert result.status == "error" and result.error.startswith("CodecError: expected a message")


def test_mapping_tables_csv_and_yaml(tmp_path: Path) -> None:
    """CSV rows are typed by their header; YAML tables load too; a miss raises MappingMiss."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m/vendors.yaml").write_text("V1: {name: Acme, terms: 30}\nV2: Globex\n")
    (tmp_path / "m/prices.csv").write_text(
        "# owner: finance\ncode,price:decimal,active:bool\nA,1.10,yes\n"
    )
    mappings, errors = load_mappings(tmp_path / "m", tmp_path)
    assert errors == []
    assert mappings.lookup("vendors", "V1") == {"name": "Acme", "terms": 30}
    assert mappings.lookup("vendors", "V2") == "Globex"
    row = mappings.lookup("prices", "A")
    assert str(row["price"]) == "1.10" and row["active"] is True
    with pytest.raises(MappingMiss) as info:
        mappings.lookup("prices", "B")
    assert str(info.value) == "MappingMiss: no row for 'B' in mapping table 'prices'"
    assert mappings.lookup("prices", "B", None) is None


def test_entry_point_plugins_are_imported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A module named by an `engine.transforms` entry point is imported, registering its transform."""
    import importlib.metadata
    import sys

    from engine.registry import Registry

    (tmp_path / "wharf_test_plugin.py").write_text(
        "from engine.registry import REGISTRY\n"
        "from engine.spec import Spec\n"
        "REGISTRY.register('transform', 'from_plugin', Spec('from_plugin', []), lambda m, c: m)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = importlib.metadata.EntryPoint("p", "wharf_test_plugin:run", "engine.transforms")
    real = importlib.metadata.entry_points

    def fake(group: str):  # type: ignore[no-untyped-def]
        return [ep] if group == "engine.transforms" else real(group=group)

    monkeypatch.setattr(importlib.metadata, "entry_points", fake)
    fresh = Registry()
    monkeypatch.setattr("engine.registry.REGISTRY", fresh)
    fresh.load()
    assert "wharf_test_plugin" in sys.modules
    assert "from_plugin" in fresh.names("transform")
    monkeypatch.delitem(sys.modules, "wharf_test_plugin")


def test_order_by_takes_the_order_key_from_the_message(project_dir: Path) -> None:
    """order_by: PV1-19.1 gives each delivery of a visit the same order key."""
    (project_dir / "channels/t.yaml").write_text(
        "codec: {hl7v2: {}}\ntransformer:\n  - transform: hl7_usage_to_issue\n"
        "destinations:\n  - name: billing\n    file: {dir: out}\n    ordered: true\n"
        "    order_by: PV1-19.1\n"
    )
    project = load_project(project_dir, env={})
    ch = Channel(project.channels["t"], project.mappings, REGISTRY)
    result = ch.process(SAMPLE.read_bytes(), "m1", "c1")
    assert [o.order_key for o in result.outbound] == ["ENC-112233"]


def test_order_by_without_ordered_is_a_lint_error(project_dir: Path) -> None:
    """order_by alone would do nothing; lint says so."""
    from engine.errors import LintFailed

    (project_dir / "channels/t.yaml").write_text(
        "destinations:\n  - name: billing\n    file: {dir: out}\n    order_by: PV1-19.1\n"
    )
    with pytest.raises(
        LintFailed, match=r"destinations.0..order_by: order_by needs `ordered: true`"
    ):
        load_project(project_dir, env={})
