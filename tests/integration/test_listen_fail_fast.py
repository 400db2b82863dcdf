"""A listener that cannot listen is loud, as a user runs Wharf (``wharf run`` and ``wharf lint``
subprocesses on a project in a temporary folder, real sockets):

- ``wharf run`` with the MLLP port taken by another program exits 1 naming the channel, the
  file:line:column of its ``listen`` and the cause, and never says it is running; with
  ``MLLP_PORT=abc`` or ``99999`` it exits 1 before binding anything, naming the variable;
- a hot reload that moves the listener to a port it cannot take is refused once (logged and
  audited), the old listener keeps answering; a reload to a free port is then applied;
- ``wharf lint`` checks the endpoint type, the port and its keywords, and the HL7 versions.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.cli import main
from engine.store import SqliteStore
from tests.integration.helpers import (
    Processes,
    free_port,
    port_open,
    run_cli,
    wait_until,
)

pytestmark = pytest.mark.integration

SB, EB = b"\x0b", b"\x1c\x0d"
CHANNEL = """\
source:
  mllp:
    listen: tcp:${MLLP_PORT}:interface=127.0.0.1
codec:
  hl7v2: {versions: ['2.5.1']}
"""


@pytest.fixture
def project() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="wharf-failfast-"))
    try:
        (root / "channels").mkdir()
        (root / "routes.yaml").write_text("store: var/wharf.db\nreload_interval: 200ms\n")
        (root / "channels" / "mllp_in.yaml").write_text(CHANNEL)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def ack(port: int, control_id: str) -> bytes:
    msg = (f"MSH|^~\\&|A|B|C|D|20260101||ADT^A01|{control_id}|P|2.5.1\rPID|1||X\r").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(SB + msg + EB)
        got = b""
        while EB not in got:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
    return got


def test_run_exits_non_zero_naming_the_channel_when_its_port_is_taken(project: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "MLLP_PORT": str(port)}
        done = run_cli(project, env, "run", timeout=60)
    assert done.returncode == 1
    assert "wharf: running" not in done.stdout
    assert "wharf: cannot start: 1 listener(s) cannot listen" in done.stderr
    assert (
        f"channels/mllp_in.yaml:3:13: channel 'mllp_in' cannot listen on "
        f"'tcp:{port}:interface=127.0.0.1': Couldn't listen on 127.0.0.1:{port}"
    ) in done.stderr
    assert "Address already in use" in done.stderr


@pytest.mark.parametrize("value", ["abc", "99999"])
def test_run_refuses_a_port_that_is_not_one(project: Path, value: str) -> None:
    done = run_cli(project, {**os.environ, "MLLP_PORT": value}, "run", timeout=60)
    assert done.returncode == 1
    assert "wharf: running" not in done.stdout
    assert (
        "channels/mllp_in.yaml:3:13: source.mllp.listen: tcp: the port must be a number in "
        f"0..65535 (got '{value}', from $MLLP_PORT='{value}')"
    ) in done.stderr


def test_a_reload_that_cannot_listen_is_refused_and_the_old_listener_stays(
    project: Path,
) -> None:
    old_port, free = free_port(), free_port()
    env = {**os.environ, "MLLP_PORT": str(old_port), "PYTHONUNBUFFERED": "1"}
    with Processes(project) as procs, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        proc = procs.wharf(project, env)
        assert b"MSA|AA|BEFORE" in ack(old_port, "BEFORE")
        chan = project / "channels" / "mllp_in.yaml"
        chan.write_text(CHANNEL.replace("${MLLP_PORT}", str(busy)))
        wait_until(lambda: "reload refused (a listener cannot listen)" in proc.output(), 20, "")
        time.sleep(1.0)  # five more reload turns: the refusal is not repeated
        out = proc.output()
        assert out.count("reload refused") == 1
        assert (
            f"channels/mllp_in.yaml:3:13: channel 'mllp_in' cannot listen on "
            f"'tcp:{busy}:interface=127.0.0.1'"
        ) in out
        assert b"MSA|AA|STILL" in ack(old_port, "STILL")  # the old listener stays
        chan.write_text(CHANNEL.replace("${MLLP_PORT}", str(free)))
        wait_until(lambda: port_open(free), 20, "the new listener", procs=[proc])
        assert b"MSA|AA|AFTER" in ack(free, "AFTER")
        wait_until(lambda: not port_open(old_port), 20, "the old listener closed")
    with SqliteStore(project / "var" / "wharf.db") as store:
        actions = [e["action"] for e in store.audit_entries(100)]
    assert actions.count("reload_refused") == 1 and "reload" in actions


def lint(root: Path, channel: str, capsys: Any) -> tuple[int, str]:
    """``wharf --root ROOT lint`` in this process (the CLI's own entry point; a subprocess
    costs seconds of imports per case)."""
    (root / "channels" / "mllp_in.yaml").write_text(channel)
    capsys.readouterr()
    rc = main(["--root", str(root), "lint"])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize(
    ("listen", "said"),
    [
        (
            "tpc:2575",
            "expected an endpoint type tcp, tcp6, ssl, unix (got 'tpc' in 'tpc:2575') "
            "(did you mean 'tcp'?)",
        ),
        ("tcp:70000", "tcp: the port must be a number in 0..65535 (got '70000')"),
        (
            "tcp:2575:interfce=127.0.0.1",
            "tcp: has no keyword 'interfce' (expected some of: port, interface, backlog) "
            "(did you mean 'interface'?)",
        ),
        ("ssl:2575", "ssl: needs privateKey=<PEM file> (got 'ssl:2575')"),
    ],
)
def test_lint_checks_listen_strings(project: Path, listen: str, said: str, capsys: Any) -> None:
    rc, err = lint(project, CHANNEL.replace("tcp:${MLLP_PORT}:interface=127.0.0.1", listen), capsys)
    assert rc == 1
    assert f"channels/mllp_in.yaml:3:13: source.mllp.listen: {said}" in err


@pytest.mark.parametrize(
    ("versions", "said"),
    [
        ("['banana']", "versions[0]: expected an HL7 v2 version (2.1, 2.2, 2.3, 2.3.1,"),
        ("'2.33'", "(got '2.33') (did you mean '2.3'?)"),
        ("['2.5.1', '2.51']", "versions[1]: expected an HL7 v2 version"),
    ],
)
def test_lint_checks_the_hl7_versions(project: Path, versions: str, said: str, capsys: Any) -> None:
    rc, err = lint(project, CHANNEL.replace("['2.5.1']", versions), capsys)
    assert rc == 1
    assert "channels/mllp_in.yaml:5:" in err and said in err, err


def test_a_good_listen_and_versions_lint_clean(project: Path, capsys: Any) -> None:
    rc, err = lint(project, CHANNEL.replace("${MLLP_PORT}", "2575"), capsys)
    assert rc == 0, err
