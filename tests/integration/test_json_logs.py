"""``wharf run --log-format json`` as a real process: every line on stdout is one JSON object
with channel, message_id and correlation_id (null when the line is not about a message); the
lines about a message name it; and a canary patient name sent in PID-5 over MLLP appears in no
line of stdout or stderr, whatever happened to the message (stored and delivered, a mapping
miss, refused at the door, an ERP that answers 500 with the body echoed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.integration.helpers import (
    WHARF,
    Processes,
    free_port,
    port_open,
    wait_until,
    wharf_env,
)
from tests.integration.observe_helpers import ROOT

CANARY = b"ZZCANARYPHI^WINIFRED"
GOOD = (ROOT / "samples/hl7/dft_p03_stent_cath.hl7").read_bytes().replace(b"POE^ANNA", CANARY)
MISS = GOOD.replace(b"CATH-55001", b"CATH-MISS").replace(b"278000789", b"999999999")
BAD_VERSION = GOOD.replace(b"CATH-55001", b"CATH-BADV").replace(b"|P|2.5.1", b"|P|9.9")

ECHO_ERP = """\
import sys
from twisted.internet import reactor
from twisted.web import resource, server

class Echo(resource.Resource):
    isLeaf = True
    def render_POST(self, request):
        request.setResponseCode(500)
        return b"refused: " + request.content.read()

reactor.listenTCP(int(sys.argv[1]), server.Site(Echo()), interface="127.0.0.1")
reactor.run()
"""

CHANNEL = """\
source:
  mllp: {{listen: 'tcp:{port}:interface=127.0.0.1'}}
codec: {{hl7v2: {{}}}}
transformer:
  - transform: hl7_usage_to_issue
destinations:
  - name: erp
    http: {{url: 'http://127.0.0.1:{erp}/inventory/issues'}}
    retry: {{max_attempts: 2, initial: 50ms, max_delay: 100ms, max_age: 1d}}
"""


def mllp_send(port: int, raw: bytes) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"\x0b" + raw.replace(b"\n", b"\r") + b"\x1c\r")
        data = b""
        while not data.endswith(b"\x1c\r"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


@pytest.mark.integration
def test_json_lines_name_the_message_and_never_carry_the_patient(tmp_path: Path) -> None:
    root = tmp_path / "p"
    (root / "channels").mkdir(parents=True)
    shutil.copytree(ROOT / "mappings", root / "mappings")
    (root / "routes.yaml").write_text("store: var/wharf.db\nreload_interval: 0\n")
    mllp, erp = free_port(), free_port()
    (root / "channels/usage.yaml").write_text(CHANNEL.format(port=mllp, erp=erp))
    (tmp_path / "echo.py").write_text(ECHO_ERP)
    env = wharf_env(tmp_path, erp)
    with Processes(tmp_path) as procs:
        procs.start("erp", [str(WHARF.parent / "python"), str(tmp_path / "echo.py"), str(erp)], env)
        wait_until(lambda: port_open(erp), 20, "the echoing ERP")
        wharf = procs.start(
            "wharf", [str(WHARF), "--root", str(root), "run", "--log-format", "json"], env
        )
        wait_until(lambda: port_open(mllp), 30, "wharf listening", procs=[wharf])
        assert b"MSA|AA" in mllp_send(mllp, GOOD)
        assert b"MSA|AA" in mllp_send(mllp, MISS)
        assert b"MSA|AR" in mllp_send(mllp, BAD_VERSION)

        def lines() -> list[dict]:
            return [json.loads(x) for x in wharf.output().splitlines() if x.strip()]

        def settled() -> list[dict] | None:
            found = lines()
            dead = [x for x in found if "dead" in x["text"] and x.get("destination") == "erp"]
            missed = [x for x in found if "MappingMiss" in x["text"] or "at " in x["text"]]
            return found if dead and missed else None

        found = wait_until(
            settled, 30, "the dead letter and the mapping miss logged", procs=[wharf]
        )
        wharf.stop()
        out = wharf.output()
        err = wharf.err_path.read_text()
    assert out.strip() and all(x.strip().startswith("{") for x in out.splitlines() if x.strip())
    keys = {"time", "level", "namespace", "text", "channel", "message_id", "correlation_id"}
    assert all(keys <= set(x) for x in found)
    about = [x for x in found if x.get("destination") == "erp"]
    assert about and all(
        x["channel"] == "usage" and x["message_id"] and x["correlation_id"] for x in about
    )
    assert "wharf: running" in err  # what is printed for a person: stderr
    for name in (b"ZZCANARYPHI", b"WINIFRED"):
        assert name.decode() not in out, "PHI in the JSON log"
        assert name.decode() not in err, "PHI on stderr"
