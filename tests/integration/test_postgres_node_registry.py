"""The node registry and hot reload across nodes, on one PostgreSQL (issue 15).

Two real ``wharf run`` of one project copy on one database (the session's throw-away cluster):
node A looks for changed files every second, node B does not (``reload_interval`` 0) until it
gets SIGHUP. The console's JSON API (and /metrics) of either node lists both nodes with their
configuration version and last-seen age, flagging the one whose version is behind.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.integration.console_helpers import Client, add_account
from tests.integration.helpers import Processes, wait_until, wharf_env

RELOAD_LINE = "reload_interval: 2s"


def nodes_of(client: Client) -> dict[str, dict[str, Any]]:
    status, data = client.get_json("/api/channels")
    assert status == 200, (status, data)
    return {n["node"]: n for n in data["nodes"]}


@pytest.mark.integration
@pytest.mark.slow
def test_both_nodes_reload_a_changed_channel_and_the_console_shows_who_differs(
    project_dir: Path, tmp_path: Path, pg_url: str
) -> None:
    routes = project_dir / "routes.yaml"
    text = routes.read_text()
    assert RELOAD_LINE in text, f"routes.yaml no longer has {RELOAD_LINE!r}"
    routes.write_text(text.replace(RELOAD_LINE, "reload_interval: ${WHARF_RELOAD:-2s}"))
    envs = []
    for name, reload in (("node-a", "1s"), ("node-b", "0")):
        env = wharf_env(tmp_path / name, 1)  # (no ERP: nothing is sent here)
        env.update(WHARF_DB=pg_url, WHARF_NODE=name, WHARF_RELOAD=reload)
        envs.append(env)
    add_account(project_dir, envs[0], "ops", ["admin"])
    with Processes(tmp_path) as procs:
        a = procs.wharf(project_dir, envs[0], name="node-a")
        b = procs.wharf(project_dir, envs[1], name="node-b")
        console_a = Client(int(envs[0]["ADMIN_PORT"]))
        console_b = Client(int(envs[1]["ADMIN_PORT"]))
        wait_until(lambda: "console listening" in a.output(), 30, "console of node A")
        wait_until(lambda: "console listening" in b.output(), 30, "console of node B")
        console_a.login("ops")
        console_b.login("ops")

        def both(client: Client) -> dict[str, dict[str, Any]]:
            nodes = nodes_of(client)
            return nodes if {"node-a", "node-b"} <= set(nodes) else {}

        before = wait_until(lambda: both(console_a), 30, "both nodes listed", procs=[a, b])
        version = before["node-a"]["config_version"]
        assert before["node-b"]["config_version"] == version
        assert not any(n["differs"] or n["stale"] for n in before.values()), before
        assert before["node-a"]["listeners"]["usage_mllp"].endswith(envs[0]["MLLP_PORT"])

        channel = project_dir / "channels" / "usage_mllp.yaml"
        channel.write_text(
            channel.read_text().replace("description: >", "description: >\n  v2.", 1)
        )
        after = wait_until(
            lambda: (n := nodes_of(console_b))["node-a"]["config_version"] != version and n,
            30,
            "node A reloaded",
            procs=[a, b],
        )
        new = after["node-a"]["config_version"]
        assert (after["node-a"]["differs"], after["node-b"]["differs"]) == (False, True)
        assert after["node-b"]["config_version"] == version and after["node-b"]["newest"] == new
        status, metrics = console_a.get("/metrics")
        assert status == 200
        assert (
            f'wharf_node_info{{config_version="{version}",differs="1",node="node-b",stale="0"}} 1.0'
            in metrics.decode()
        )
        assert 'wharf_node_last_seen_seconds{node="node-a"}' in metrics.decode()

        os.kill(b.pid, signal.SIGHUP)  # node B told to reload (its interval is off)
        settled = wait_until(
            lambda: (n := nodes_of(console_a))["node-b"]["config_version"] == new and n,
            30,
            "node B reloaded on SIGHUP",
            procs=[a, b],
        )
        assert {k: (n["config_version"], n["differs"]) for k, n in settled.items()} == {
            "node-a": (new, False),
            "node-b": (new, False),
        }
        status, page = console_a.get("/integration")
        assert status == 200 and b'id="node-node-b"' in page and new.encode() in page
