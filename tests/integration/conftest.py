"""The console's demo, shared by the console's HTTP, browser and API-schema tests (it takes the
demo a while to fill the store)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.console_helpers import Demo, start_demo
from tests.integration.helpers import Processes


@pytest.fixture(scope="session")
def console_demo() -> Iterator[Demo]:
    tmp = Path(tempfile.mkdtemp(prefix="wharf-console-"))
    try:
        with Processes(tmp) as procs:
            yield start_demo(tmp, procs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
