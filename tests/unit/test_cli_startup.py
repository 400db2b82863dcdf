"""Store queries start at once: `wharf messages`, `status`, `work-items` and `audit` read the
store's path from routes.yaml and import nothing of the runtime, the registry, the components
or the standards' libraries. Counted from ``python -X importtime`` (what was imported), never
timed."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.model import Inbound
from engine.store import SqliteStore

#: What loading the whole project pulls in (2.5-3 s on a loaded machine), and none of which a
#: store query needs.
HEAVY = (
    "engine.registry",
    "engine.config.project",
    "engine.runtime",
    "engine.domains",
    "engine.sources",
    "engine.destinations",
    "engine.codecs",
    "engine.x12",
    "twisted",
    "hl7apy",
    "pyx12",
    "fhir",
    "fhir_core",
    "lxml",
    "pydantic",
)


def imported(root: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "engine.cli", "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    modules = {
        line.split("|")[-1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    modules.discard("package")  # the header line of -X importtime
    return done, modules


@pytest.mark.parametrize(
    "args",
    [
        ("messages",),
        ("messages", "--status", "sent", "--json"),
        ("status",),
        ("work-items",),
        ("work-items", "--kind", "MISSING_MAPPING"),
        ("audit",),
        ("audit", "verify"),
    ],
)
def test_store_queries_import_no_runtime(project_dir: Path, args: tuple[str, ...]) -> None:
    store = SqliteStore(project_dir / "var" / "wharf.db").open()
    now = time.time()
    store.ingest_batch([Inbound("usage_to_erp", "mllp", b"X", "text/plain", now)], now)
    store.close()
    done, modules = imported(project_dir, *args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert {"engine.config.store_path", "engine.store.sqlite"} <= modules
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY or m.startswith(HEAVY))
    assert heavy == [], heavy


def test_the_harness_sees_a_project_load(project_dir: Path) -> None:
    """The same count on `wharf lint` (which must load the project) finds the heavy modules:
    the check above can fail."""
    done, modules = imported(project_dir, "lint")
    assert done.returncode == 0, done.stderr[-2000:]
    assert {"engine.registry", "engine.config.project", "pyx12", "twisted"} <= modules
