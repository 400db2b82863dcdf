"""Mapping tables as people save them: a CSV saved by Excel on Windows (Windows-1252, CRLF)
with one accented letter, on a copy of the shipped project.

``wharf lint`` names file:line:column, the byte and the fix instead of dying on a
UnicodeDecodeError; ``# encoding: windows-1252`` on a first comment line (Excel may add commas
after it) makes the table load with the letter right; an unknown encoding name gets a
did-you-mean. A running ``wharf run`` refuses the changed file once (one log line, no
traceback, however many reload turns pass) and applies the fixed file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.config.project import load_project
from tests.conftest import copy_project
from tests.integration.helpers import Processes, free_port, run_cli, wait_until, wharf_env

pytestmark = pytest.mark.integration

TABLE = "mappings/locations.csv"
SHIPPED = Path(__file__).resolve().parents[2]


@pytest.fixture
def project() -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="wharf-encodings-"))
    try:
        (tmp / "project").mkdir()
        root = copy_project(tmp / "project")
        shutil.copytree(SHIPPED / "transforms", root / "transforms")
        yield root
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_as_excel(root: Path, first_line: str = "") -> tuple[int, int]:
    """Rewrite the table as Excel on Windows would (Windows-1252, CRLF) with 'Opérating' in
    it; returns the line and column of the 'é'."""
    path = root / TABLE
    lines = (SHIPPED / TABLE).read_text(encoding="utf-8").splitlines()
    if first_line:
        lines.insert(0, first_line)
    for n, line in enumerate(lines, 1):
        if "Main Operating Room" in line:
            lines[n - 1] = line.replace("Main Operating Room", "Main Opérating Room")
            column = lines[n - 1].index("é") + 1
            path.write_bytes(("\r\n".join(lines) + "\r\n").encode("windows-1252"))
            return n, column
    raise AssertionError("no 'Main Operating Room' row in the shipped table")


def test_lint_names_the_byte_where_it_is_and_the_fix(project: Path) -> None:
    line, column = save_as_excel(project)
    done = run_cli(project, dict(os.environ), "lint")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "UnicodeDecodeError" not in done.stderr
    assert done.stderr.splitlines()[0] == (
        f"{TABLE}:{line}:{column}: byte 0xe9 is not valid UTF-8 (in Windows-1252, as Excel "
        "saves a CSV, it is 'é'): invalid continuation byte; save the file as UTF-8 (in Excel: "
        "'CSV UTF-8 (Comma delimited)'), or declare its encoding on a first line such as "
        "`# encoding: windows-1252`"
    )
    assert "lint: 1 error(s)" in done.stderr  # no cascade of 'no mapping table' errors


def test_a_declared_encoding_loads_the_table(project: Path) -> None:
    save_as_excel(project, "# encoding: windows-1252,,,,,")
    done = run_cli(project, dict(os.environ), "lint")
    assert done.returncode == 0, done.stderr
    names = {
        row["name"]
        for row in load_project(project, env={}).mappings.tables["locations"].rows.values()
    }
    assert "Main Opérating Room" in names


def test_an_unknown_encoding_name_gets_a_did_you_mean(project: Path) -> None:
    save_as_excel(project, "# encoding: windows1252")
    done = run_cli(project, dict(os.environ), "lint")
    assert done.returncode == 1
    assert (
        f"{TABLE}:1:13: unknown encoding 'windows1252' (expected a name such as utf-8, "
        "utf-8-sig, windows-1252, latin-1, iso-8859-15, mac-roman, cp850) "
        "(did you mean 'windows-1252'?)"
    ) in done.stderr


def test_a_running_engine_refuses_the_change_once_and_applies_the_fix(project: Path) -> None:
    routes = project / "routes.yaml"
    routes.write_text(routes.read_text().replace("reload_interval: 2s", "reload_interval: 200ms"))
    env = wharf_env(project.parent, free_port())
    with Processes(project.parent) as procs:
        proc = procs.wharf(project, env)
        line, column = save_as_excel(project)
        wait_until(lambda: "reload refused" in proc.output(), 20, "the refusal", procs=[proc])
        time.sleep(1.5)  # seven more reload turns
        out = proc.output()
        assert out.count("reload refused") == 1
        assert f"{TABLE}:{line}:{column}: byte 0xe9 is not valid UTF-8" in out
        assert "Traceback" not in out and "UnicodeDecodeError" not in out
        save_as_excel(project, "# encoding: windows-1252")
        wait_until(lambda: "reloaded:" in proc.output(), 20, "the reload", procs=[proc])
        assert proc.output().count("reload refused") == 1
