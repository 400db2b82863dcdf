"""The README's first command, as a user runs it (``wharf run --demo --exit-when-done`` on a
copy of the shipped project), with every port moved by the variables the README lists: the
sandbox takes ERP_PORT and BILLING_PORT like the channels do (the billing charge reaches it);
run a second time in the same folder, the demo says the samples were already stored (each a
duplicate, nothing processed or sent again) and exits 0 in seconds rather than waiting a
minute to say "0 message(s) delivered" and exit 1. The README lists every variable that moves
a listener of the shipped files."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.runner import DEMO_PORTS
from tests.integration.console_helpers import PORT_VARIABLES
from tests.integration.helpers import ROOT, free_port, run_cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def demo_runs() -> Iterator[tuple[dict[str, str], list[object]]]:
    tmp = Path(tempfile.mkdtemp(prefix="wharf-demo-"))
    try:
        root = tmp / "project"
        root.mkdir()
        for name in ("routes.yaml", "channels", "mappings", "samples", "transforms"):
            src = ROOT / name
            (shutil.copytree if src.is_dir() else shutil.copy)(src, root / name)
        env = {k: v for k, v in os.environ.items() if k not in ("ERP_URL", *PORT_VARIABLES)}
        ports = {name: str(free_port()) for name in PORT_VARIABLES}
        env.update(ports, PYTHONUNBUFFERED="1")
        runs = [run_cli(root, env, "run", "--demo", "--exit-when-done", timeout=240)]
        runs.append(run_cli(root, env, "run", "--demo", "--exit-when-done", timeout=240))
        yield ports, runs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_the_demo_moves_with_the_port_variables(demo_runs: tuple) -> None:
    ports, (first, _) = demo_runs
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out = first.stdout
    assert (
        f"demo: ERP and billing sandbox on http://127.0.0.1:{ports['ERP_PORT']} (ERP_PORT) and "
        f"mllp://127.0.0.1:{ports['BILLING_PORT']} (BILLING_PORT)"
    ) in out
    assert f"over MLLP to usage_mllp on port {ports['MLLP_PORT']}" in out
    assert f"over MLLP to usage_ledger on port {ports['LEDGER_MLLP_PORT']}" in out
    assert f"http://127.0.0.1:{ports['FHIR_PORT']}/fhir/R5/SupplyDelivery: 201" in out
    # the ledger channel's charge went to BILLING_PORT, where the sandbox listened
    counts = re.search(r"sandbox ERP/billing now holds issues (\d+), .*charges (\d+)", out)
    assert counts and int(counts.group(1)) > 0 and int(counts.group(2)) >= 1, out[-2000:]
    assert "usage_ledger CATH-55001     sent     erp=sent, billing=sent" in out
    assert "already in the store" not in out and "duplicate(s) of an earlier run" not in out
    assert re.search(r"demo: (\d+) message\(s\) delivered now\. ", out)
    # the console: its URL and a one-time link to set the admin password (item 9)
    console = f"http://127.0.0.1:{ports['ADMIN_PORT']}"
    assert re.search(rf"demo: open {console}/setup\?token=\S+ once .* then {console}/", out)


def test_a_second_run_in_the_same_folder_says_what_it_did(demo_runs: tuple) -> None:
    _, (first, second) = demo_runs
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    out = second.stdout
    dropped = re.search(r"demo: dropped (\d+) sample\(s\)", first.stdout)
    refused = first.stdout.count("refused at the door")
    assert dropped is not None
    n = int(dropped.group(1))
    assert (f"demo: {n - refused} of the {n} dropped sample(s) were already in the store") in out
    assert "taken as a duplicate and not processed or sent again" in out
    assert "(a resend of an earlier run: the original resource)" in out
    assert "PO 4500012345 was released in an earlier run" in out
    # the first run showed a refused goods receipt; the second arms no fault for it
    refusal = "856_second_shipment.x12: the ERP refused its goods receipt (422)"
    assert refusal in first.stdout and "856_second_shipment" not in out
    assert f"0 message(s) delivered now, {n - refused} duplicate(s) of an earlier run" in out
    assert out.count("refused at the door") == refused  # this run's refusals only
    # the MLLP resends got the very ACKs of the first run
    acks = re.findall(r"-> MSA-1 AA MSA-2 (\S+) \(ACK (\S+)\)", first.stdout)
    assert acks and acks == re.findall(r"-> MSA-1 AA MSA-2 (\S+) \(ACK (\S+)\)", out)


def test_the_demo_fills_the_revenue_cycle_once(demo_runs: tuple) -> None:
    """samples/hl7/revenue/ over MLLP to usage_ledger: an implant without its lot, a charge the
    billing sandbox rejects (unbilled once UNBILLED_AFTER, 5s in the demo, has passed) and a
    credit for a line never charged; run again, each is a duplicate and nothing is doubled."""
    _, (first, second) = demo_runs
    said = (
        "demo: the revenue cycle has 1 rejected charge(s), 1 implant(s) missing lot/serial, "
        "1 unbilled usage, 1 orphan credit(s) (the console's /revenue)"
    )
    assert said in first.stdout, first.stdout[-3000:]
    assert said in second.stdout, second.stdout[-3000:]
    # the billing sandbox answered AE once, in the first run (the second sent it no charge)
    assert [line for line in (first.stdout + first.stderr).splitlines() if "AE (ERR 103)" in line]
    assert not [line for line in (second.stdout + second.stderr).splitlines() if "AE (ERR" in line]


def test_the_readme_lists_every_variable_that_moves_a_listener() -> None:
    """Each ${VAR} in a shipped listen string, a sandbox port or the billing port is a row of
    the README's table."""
    texts = [(ROOT / "routes.yaml").read_text()]
    texts += [p.read_text() for p in sorted((ROOT / "channels").glob("*.yaml"))]
    found = set()
    for text in texts:
        for line in text.splitlines():
            if re.match(r"\s*(listen|port|url):", line):
                found.update(re.findall(r"\$\{([A-Z_]+)", line))
    found.update(DEMO_PORTS)
    assert {"MLLP_PORT", "FHIR_PORT", "BILLING_PORT", "ERP_URL"} <= found
    readme = (ROOT / "README.md").read_text()
    missing = sorted(v for v in found if f"| `{v}` |" not in readme)
    assert missing == []
