"""Console sessions and alert state shared by two nodes on one PostgreSQL (issues 13 and 15).

Two real ``wharf run`` of one project copy on one database (the session's throw-away cluster),
each with its own console: a login on node A gives a cookie that node B knows (behind a load
balancer a person may reach either). The project has an alert rule on the ERP's queue age and a
webhook, both served by this test on loopback: an ERP outage makes ONE fire and ONE clear
across both nodes, however many evaluations each node runs (one node at a time evaluates, the
holder of the ``alerts`` lease; what fires is in the store).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.integration.console_helpers import Client, add_account
from tests.integration.helpers import Processes, wait_until, wharf_env
from tests.integration.test_mllp_peers import MllpConn, msa

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = (ROOT / "samples/hl7/dft_p03_screw.hl7").read_bytes()
ALERTS = """
alerts:
  interval: 100ms
  notify:
    - webhook: {{url: 'http://127.0.0.1:{hook}/hook'}}
  rules:
    - {{name: erp_backlog, when: queue_age, older_than: 1s, channels: [usage_mllp]}}
"""


class Peer:
    """An HTTP server on a loopback port that records each POST body and answers ``code``."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.bodies: list[bytes] = []
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                peer.bodies.append(body)
                self.send_response(peer.code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.integration
@pytest.mark.slow
def test_two_nodes_share_sessions_and_send_one_fire_and_one_clear(
    project_dir: Path, tmp_path: Path, pg_url: str
) -> None:
    erp, hook = Peer(503), Peer(200)
    try:
        routes = project_dir / "routes.yaml"
        routes.write_text(routes.read_text() + ALERTS.format(hook=hook.port))
        channel = project_dir / "channels" / "usage_mllp.yaml"
        text = channel.read_text()
        fast = "retry: {max_attempts: 1000, initial: 100ms, max_delay: 300ms, max_age: 1d}"
        old = "retry: {max_attempts: 8, initial: 1s, max_delay: 1m, max_age: 1d}"
        assert old in text, "channels/usage_mllp.yaml's ERP retry changed"
        channel.write_text(text.replace(old, fast, 1))
        envs = []
        for name in ("node-a", "node-b"):
            env = wharf_env(tmp_path / name, erp.port)
            env.update(WHARF_DB=pg_url, WHARF_NODE=name)
            envs.append(env)
        add_account(project_dir, envs[0], "ops", ["operator"])
        with Processes(tmp_path) as procs:
            a = procs.wharf(project_dir, envs[0], name="node-a")
            b = procs.wharf(project_dir, envs[1], name="node-b")
            wait_until(lambda: "console listening" in a.output(), 30, "console of node A")
            wait_until(lambda: "console listening" in b.output(), 30, "console of node B")

            # a login on A: its cookie and CSRF token work on B
            on_a = Client(int(envs[0]["ADMIN_PORT"])).login("ops")
            on_b = Client(int(envs[1]["ADMIN_PORT"]), cookie=on_a.cookie, csrf=on_a.csrf)
            status, me = on_b.get_json("/api/me")
            assert status == 200 and me["name"] == "ops" and me["csrf"] == on_a.csrf, me
            stranger = Client(int(envs[1]["ADMIN_PORT"]), cookie="wharf_session=forged")
            assert stranger.get_json("/api/me")[0] == 401

            # an ERP outage: one fire across both nodes, however long it lasts
            conn = MllpConn.connect(int(envs[0]["MLLP_PORT"]))
            conn.send(SAMPLE)
            assert msa(conn.read())[0] in ("AA", "CA")  # (CA: its MSH-15 asks for a commit ACK)
            conn.sock.close()
            wait_until(lambda: hook.bodies, 30, "the fire", procs=[a, b])
            wait_until(lambda: len(erp.bodies) >= 10, 30, "more ERP attempts", procs=[a, b])
            time.sleep(2)  # ~20 evaluations of each node while it still holds
            assert len(hook.bodies) == 1, [json.loads(x)["summary"] for x in hook.bodies]
            erp.code = 201  # the ERP is back
            wait_until(lambda: len(hook.bodies) >= 2, 30, "the clear", procs=[a, b])
            time.sleep(2)
            alerts = [
                [(x["rule"], x["subject"], x["state"]) for x in json.loads(body)["alerts"]]
                for body in hook.bodies
            ]
            assert alerts == [
                [("erp_backlog", "usage_mllp/erp", "firing")],
                [("erp_backlog", "usage_mllp/erp", "cleared")],
            ], alerts

            # one node evaluated the rules all along, the other only followed the store
            states = [on_a.get_json("/api/alerts")[1], on_b.get_json("/api/alerts")[1]]
            assert sorted(st["leading"] for st in states) == [False, True], states
            assert sorted(st["evaluations"] > 0 for st in states) == [False, True], states
            assert all(st["firing"] == [] for st in states), states

            # a logout on B ends the session on A too
            status, _ = on_b.request("POST", "/logout", form={"csrf": on_a.csrf})
            assert status == 303
            assert on_a.get_json("/api/me")[0] == 401
    finally:
        erp.close()
        hook.close()
