"""Bodies of every shape POSTed to the ERP webhooks of the shipped project (the purchase-order
endpoint of channels/po_to_vendor.yaml and the goods-receipt endpoint of
channels/erp_receipts.yaml: the `http` source with the `json` codec), over real sockets against
``wharf run``.

Deeply nested JSON used to end in a RecursionError traceback and a 503 "retry", which the
ERP's webhook resends forever: it is a 400 that names the limit, logged once. Then hypothesis
throws bodies of every shape at both endpoints: none gets a 5xx, and the log never shows a
traceback.
"""

from __future__ import annotations

import http.client
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.helpers import ROOT, Processes, free_port, port_open, wait_until, wharf_env

pytestmark = pytest.mark.integration

ERP_TOKEN = "wharf-demo-erp-token"  # the shipped channels' demo token
PATHS = ("/erp/purchase-orders", "/erp/goods-receipts")


class Webhooks:
    def __init__(self, root: Path, ports: dict[str, int], proc: Any) -> None:
        self.root, self.ports, self.proc = root, ports, proc

    def post(self, path: str, body: bytes, token: str = ERP_TOKEN) -> tuple[int, bytes]:
        port = self.ports["po"] if path == PATHS[0] else self.ports["receipt"]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request(
                "POST",
                path,
                body=body,
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            )
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def log(self) -> str:
        return self.proc.output() + self.proc.err_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def hooks() -> Iterator[Webhooks]:
    tmp = Path(tempfile.mkdtemp(prefix="wharf-bodies-"))
    try:
        root = tmp / "project"
        root.mkdir()
        for name in ("channels", "mappings", "samples", "transforms"):
            shutil.copytree(ROOT / name, root / name)
        routes = (ROOT / "routes.yaml").read_text(encoding="utf-8")
        (root / "routes.yaml").write_text(routes + "\nchannels: [po_to_vendor, erp_receipts]\n")
        env = wharf_env(tmp, free_port())
        env["WHARF_DB"] = str(root / "var" / "wharf.db")
        ports = {"po": int(env["PO_HTTP_PORT"]), "receipt": int(env["RECEIPT_HTTP_PORT"])}
        with Processes(tmp) as procs:
            proc = procs.wharf(root, env)
            for port in ports.values():
                wait_until(lambda p=port: port_open(p), 20, f"port {port}", procs=[proc])
            yield Webhooks(root, ports, proc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000,  # the body: RecursionError in the parser
        b'{"lines":' * 5_000 + b"1" + b"}" * 5_000,
        b'{"po_number": "X", "lines": ' + b"[" * 65 + b"]" * 65 + b"}",  # just past the limit
    ],
    ids=["100k-brackets", "5k-objects", "65-levels"],
)
def test_deeply_nested_json_is_a_400_naming_the_limit_logged_once(
    hooks: Webhooks, path: str, body: bytes
) -> None:
    """A 400 whose error says the document is nested deeper than the codec's max_depth (64),
    never a 5xx; one log line for it (status, the error code, the size, the peer) and no
    traceback; nothing stored."""
    before = hooks.log()
    status, answer = hooks.post(path, body)
    assert status == 400, answer[:300]
    doc = json.loads(answer)
    assert doc["outcome"] == "rejected"
    assert "too_deep" in doc["error"] and "nested deeper than 64 levels" in doc["error"]
    assert doc["message_id"] is None
    new = wait_until(
        lambda: hooks.log()[len(before) :] if "too_deep" in hooks.log()[len(before) :] else "",
        10,
        "the refusal logged",
    )
    lines = [line for line in new.splitlines() if "too_deep" in line]
    assert len(lines) == 1, new
    assert f"400 rejected (too_deep) for a {len(body)}-byte body" in lines[0]
    assert "Traceback" not in new and "RecursionError" not in new


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=40,
)
SHAPED = st.fixed_dictionaries(
    {
        "po_number": st.one_of(st.text(max_size=20), st.integers(), JSON_VALUES),
        "receipt_id": st.one_of(st.text(max_size=20), st.integers(), JSON_VALUES),
        "vendor": st.one_of(st.sampled_from(["VND-ACMEMED", "VND-NOBODY"]), JSON_VALUES),
        "lines": st.one_of(
            st.lists(
                st.dictionaries(
                    st.sampled_from(["line", "po_line", "item_id", "qty", "uom", "unit_price"]),
                    JSON_VALUES,
                ),
                max_size=4,
            ),
            JSON_VALUES,
        ),
    }
)
BODIES = st.one_of(
    st.binary(max_size=3000),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    SHAPED.map(lambda v: json.dumps(v).encode()),
    st.integers(1, 20_000).map(lambda d: b"[" * d + b"]" * d),
    st.integers(1, 20_000).map(lambda d: b'{"a":' * d + b"0" + b"}" * d),
    st.text(alphabet='[]{}":,0a \\', max_size=3000).map(str.encode),
    st.text(max_size=500).map(lambda t: t.encode("utf-16")),
)


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(path=st.sampled_from(PATHS), body=BODIES)
def test_no_body_gets_a_5xx(hooks: Webhooks, path: str, body: bytes) -> None:
    """Whatever the body, the answer is 2xx/4xx with a JSON outcome; a 400 says what is wrong."""
    status, answer = hooks.post(path, body)
    assert status < 500, (status, answer[:300])
    doc = json.loads(answer)
    assert doc["outcome"] in ("stored", "duplicate", "conflict", "rejected")
    if status == 400:
        assert doc["error"]


def test_the_fuzzed_engine_logged_no_traceback(hooks: Webhooks) -> None:
    """After every body above (this runs last in the module), the log has no traceback and
    the engine still answers."""
    status, _ = hooks.post(PATHS[0], b'{"po_number": "AFTER-FUZZ", "lines": []}')
    assert status in (200, 202)
    assert "Traceback" not in hooks.log()
