"""Shared fixtures: a copy of the shipped project in a temporary folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def copy_project(dest: Path) -> Path:
    for name in ("routes.yaml",):
        shutil.copy(ROOT / name, dest / name)
    for folder in ("channels", "mappings", "samples"):
        shutil.copytree(ROOT / folder, dest / folder)
    return dest


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    """A fresh copy of the shipped routes, channels, mappings and samples."""
    (tmp_path / "project").mkdir()
    return copy_project(tmp_path / "project")
