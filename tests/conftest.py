"""Shared fixtures: a copy of the shipped project in a temporary folder."""

from __future__ import annotations

import itertools
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


# --------------------------------------------------------------------------- PostgreSQL

_PG_SKIP = "PostgreSQL (initdb) not installed: apt-get install postgresql"


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    """One throw-away PostgreSQL cluster for the whole session (engine/testing/postgres.py);
    skipped only when the server binaries are absent."""
    from engine.testing.postgres import Cluster, bin_dir

    if bin_dir() is None:
        pytest.skip(_PG_SKIP)
    cluster = Cluster(fsync=False).init().start()
    try:
        yield cluster
    finally:
        cluster.destroy()


_databases = itertools.count(1)


@pytest.fixture
def pg_url(pg_cluster: Any) -> Iterator[str]:
    """A new empty database of the session's cluster; its postgresql:// URL."""
    name = f"t{os.getpid()}_{next(_databases)}"
    url = pg_cluster.create_database(name)
    try:
        yield url
    finally:
        pg_cluster.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request: Any, tmp_path: Path) -> Path | str:
    """Where a store test's store is: a SQLite file, then a new PostgreSQL database (the same
    tests over both dialects)."""
    if request.param == "sqlite":
        return tmp_path / "data" / "wharf.db"
    return str(request.getfixturevalue("pg_url"))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[Any]) -> None:
    """schemathesis's cases (one per operation of the console's OpenAPI document) get ids of
    their own: under pytest 9 each is ``test_...`` without its ``[METHOD /path]``, and
    pytest-xdist, which schedules by id, then ran one operation of the seventeen."""
    for item in items:
        label = getattr(item, "operation_label", None)
        if label and item.id.params is None:
            item._id = item.id.with_params(label)
    duplicated = sorted(i for i, n in Counter(item.nodeid for item in items).items() if n > 1)
    if duplicated:
        raise pytest.UsageError(f"tests with the same id run only once under xdist: {duplicated}")
