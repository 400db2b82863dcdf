"""The committed reference in docs/reference is what `wharf docs` generates from the specs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_committed_reference_matches_the_specs(tmp_path: Path) -> None:
    """Regenerate the reference in a fresh process; every page equals the committed one."""
    wharf = Path(sys.executable).parent / "wharf"
    subprocess.run([str(wharf), "docs", "--out", str(tmp_path)], check=True, capture_output=True)
    generated = sorted(p.name for p in tmp_path.iterdir())
    committed = sorted(p.name for p in (ROOT / "docs/reference").iterdir())
    assert generated == committed
    stale = [
        name
        for name in generated
        if (tmp_path / name).read_text() != (ROOT / "docs/reference" / name).read_text()
    ]
    assert stale == [], f"run `wharf docs` and commit: {stale} differ from the specs"
