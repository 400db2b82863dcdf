"""Shared pieces of the observability tests: a project with one MLLP channel whose ERP is a
real HTTP server of the test, the observability resources served on a real loopback port,
a webhook receiver, and reads over HTTP."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import treq
from twisted.internet import defer, reactor, task
from twisted.web import resource, server

from engine.net.mllp import MLLPClientProtocol
from engine.web import observability

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = (ROOT / "samples/hl7/dft_p03_stent_cath.hl7").read_bytes()

CHANNEL = """\
source:
  mllp: {{listen: 'tcp:0:interface=127.0.0.1'}}
codec: {{hl7v2: {{}}}}
transformer:
  - transform: hl7_usage_to_issue
destinations:
  - name: erp
    http: {{url: '{erp}/inventory/issues'}}
    retry: {{max_attempts: 1000, initial: 50ms, max_delay: 200ms, max_age: 1d, jitter: 0}}
{extra}"""


def make_project(base: Path, routes: str, channels: dict[str, str]) -> Path:
    """A project in ``base/p`` with the shipped mappings, ``routes`` and ``channels``."""
    root = base / "p"
    (root / "channels").mkdir(parents=True)
    shutil.copytree(ROOT / "mappings", root / "mappings")
    shutil.copytree(ROOT / "samples", root / "samples")
    (root / "routes.yaml").write_text("store: var/wharf.db\nreload_interval: 0\n" + routes)
    for name, text in channels.items():
        (root / "channels" / f"{name}.yaml").write_text(text)
    return root


class Recorder(resource.Resource):
    """An HTTP peer that records each POST (path, headers, body) and answers ``code``."""

    isLeaf = True

    def __init__(self, code: int = 201) -> None:
        super().__init__()
        self.code = code
        self.posts: list[dict[str, Any]] = []

    def render_POST(self, request: server.Request) -> bytes:
        self.posts.append(
            {
                "path": request.path.decode(),
                "headers": {
                    k.decode().lower(): v[0].decode()
                    for k, v in request.requestHeaders.getAllRawHeaders()
                },
                "body": request.content.read(),
            }
        )
        request.setResponseCode(self.code)
        return b'{"ok": true}'


def listen(root: resource.Resource) -> Any:
    """``root`` served on a loopback port; the port (stop with ``stopListening``)."""
    site = server.Site(root)
    site.noisy = False
    return reactor.listenTCP(0, site, interface="127.0.0.1")


def serve_observability(engine: Any) -> Any:
    """The observability resources of ``engine`` under /, on a loopback port."""
    root = resource.Resource()
    for path, res in observability.resources(engine).items():
        node = root
        parts = path.split("/")
        for part in parts[:-1]:
            child = node.children.get(part.encode())
            if child is None:
                child = resource.Resource()
                node.putChild(part.encode(), child)
            node = child
        node.putChild(parts[-1].encode(), res)
    return listen(root)


def url(port: Any, path: str = "") -> str:
    return f"http://127.0.0.1:{port.getHost().port}/{path}"


async def get(port: Any, path: str) -> tuple[int, bytes]:
    response = await treq.get(url(port, path), persistent=False)
    return response.code, await treq.content(response)


async def get_json(port: Any, path: str) -> tuple[int, Any]:
    code, body = await get(port, path)
    return code, json.loads(body)


async def send_mllp(port: int, raw: bytes) -> bytes:
    from twisted.internet import endpoints

    client = await endpoints.connectProtocol(
        endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port), MLLPClientProtocol()
    )
    try:
        return await client.send(raw)
    finally:
        client.transport.loseConnection()


async def wait_for(check: Any, what: str, timeout: float = 15.0, step: float = 0.02) -> Any:
    """Poll ``check()`` (a value or an awaitable) until truthy; AssertionError naming ``what``."""
    deadline = reactor.seconds() + timeout
    while True:
        value = check()
        if isinstance(value, defer.Deferred) or hasattr(value, "__await__"):
            value = await value
        if value:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await task.deferLater(reactor, step, lambda: None)


def metric(text: bytes, name: str, **labels: str) -> float | None:
    """The value of one sample of the Prometheus text, or None when absent."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None
