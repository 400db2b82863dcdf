"""pytest plugin: each ``tests:`` entry of ``channels/*.yaml`` is a test item."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.config.project import Project, load_project
from engine.testing.channel_tests import project_root_for, run_test
from engine.testing.golden import check

_projects: dict[Path, Project] = {}


def _project(root: Path) -> Project:
    if root not in _projects:
        _projects[root] = load_project(root)
    return _projects[root]


def pytest_collect_file(parent: Any, file_path: Path) -> Any:
    if file_path.suffix == ".yaml" and file_path.parent.name == "channels":
        if (file_path.parent.parent / "routes.yaml").exists():
            return ChannelFile.from_parent(parent, path=file_path)
    return None


class ChannelFile(pytest.File):
    def collect(self) -> Any:
        project = _project(project_root_for(self.path))
        for defn in project.channels.values():
            if Path(project.root / defn.file) != self.path.resolve():
                continue
            for i, test in enumerate(defn.config.tests):
                yield ChannelTestItem.from_parent(self, name=test.name, index=i, channel=defn.name)


class ChannelTestItem(pytest.Item):
    def __init__(self, *, index: int, channel: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.index = index
        self.channel = channel

    def runtest(self) -> None:
        project = _project(project_root_for(self.path))
        defn = project.channels[self.channel]
        outcome = run_test(project, defn, self.index)
        outcome.failures += check(project, defn, self.index) or []  # its golden run
        if not outcome.passed:
            raise ChannelTestFailed(outcome.failures)

    def repr_failure(self, excinfo: Any, style: Any = None) -> str:
        if isinstance(excinfo.value, ChannelTestFailed):
            return "\n".join(excinfo.value.args[0])
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"{self.channel}: {self.name}"


class ChannelTestFailed(Exception):
    pass
