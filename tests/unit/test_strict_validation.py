"""Strict validation: hl7apy's structure rules for the message's version, off the ACK path
unless the channel asks for it on the ACK path."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.channel import Channel
from engine.config.project import load_project
from engine.errors import LintFailed
from engine.registry import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
SCREW = (ROOT / "samples/hl7/dft_p03_screw.hl7").read_bytes()
NO_EVN = SCREW.replace(b"EVN|P03|20260115103000\r", b"")


def channel(project_dir: Path, codec: str) -> Channel:
    (project_dir / "channels/s.yaml").write_text(
        f"codec: {{hl7v2: {codec}}}\ntransformer:\n  - transform: hl7_usage_to_issue\n"
        "destinations:\n  - name: out\n    file: {dir: out}\n"
    )
    project = load_project(project_dir, env={})
    return Channel(project.channels["s"], project.mappings, REGISTRY)


def test_strict_rejects_a_missing_required_segment(project_dir: Path) -> None:
    """A DFT^P03 without EVN passes the tolerant codec but is an error under strict."""
    tolerant = channel(project_dir, "{}")
    assert tolerant.process(NO_EVN, "m", "c").status == "sent"
    strict = channel(project_dir, "{validation: strict}")
    result = strict.process(NO_EVN, "m", "c")
    assert result.status == "error"
    assert "Missing required child DFT_P03.EVN" in result.error
    assert result.error_location == "channels/s.yaml codec"
    assert strict.process(SCREW, "m", "c").status == "sent"


def test_strict_on_ack_keeps_the_pipeline_from_validating_twice(project_dir: Path) -> None:
    """With strict_on_ack the engine validates before the ACK, so the pipeline does not."""
    ch = channel(project_dir, "{validation: strict, strict_on_ack: true}")
    assert ch.codec.strict_on_ack
    assert ch.process(NO_EVN, "m", "c").status == "sent"
    with pytest.raises(Exception, match=r"Missing required child DFT_P03\.EVN"):
        ch.codec.validate_strict(NO_EVN)


def test_strict_needs_versions_hl7apy_knows(project_dir: Path) -> None:
    """Strict validation with a version hl7apy has no definitions for is a lint error."""
    (project_dir / "channels/s.yaml").write_text(
        "codec: {hl7v2: {validation: strict, versions: ['2.5.1', '2.7.1']}}\n"
    )
    with pytest.raises(LintFailed, match=r"s.yaml:1:\d+: codec.hl7v2.versions: strict validation"):
        load_project(project_dir, env={})
