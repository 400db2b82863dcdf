"""The admin site's tree: observability resources mounted beside the console, health and
metrics open, ``api/*`` ones behind the console's login (401 without a session), every other
path the console's; and ``wharf user`` on a project's store."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from twisted.internet import task
from twisted.web import resource
from twisted.web.test.requesthelper import DummyRequest

from engine.cli import main
from engine.store import SqliteStore
from engine.web.config import ADMIN_SPEC
from engine.web.console import Console, Dispatch, Guarded, Root


class Leaf(resource.Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"leaf"


def site() -> tuple[Root, Console]:
    engine = SimpleNamespace(store=None, reactor=task.Clock(), executor=None)
    console = Console(engine, ADMIN_SPEC.defaults())
    console.mount("healthz", Leaf())
    console.mount("api/alerts", Leaf())
    return Root(console), console


def child(root: Root, path: str) -> tuple[Any, DummyRequest]:
    parts = [p.encode() for p in path.strip("/").split("/")]
    request = DummyRequest(parts[1:])
    return root.getChild(parts[0], request), request


def test_open_paths_are_served_by_their_resource() -> None:
    root, _ = site()
    found, _ = child(root, "/healthz")
    assert isinstance(found, Leaf)


def test_mounted_api_paths_need_a_session() -> None:
    root, _ = site()
    found, request = child(root, "/api/alerts")
    assert isinstance(found, Guarded)
    assert request.prepath == [b"alerts"] and request.postpath == []
    request.getCookie = lambda name: None  # no session cookie (DummyRequest has no cookies)
    body = found.render(request)
    assert request.responseCode == 401 and b"not logged in" in body


def test_everything_else_is_the_consoles() -> None:
    root, _ = site()
    for path in ("/integration", "/api/messages", "/api/alert"):
        found, _ = child(root, path)
        assert isinstance(found, Dispatch), path


def test_wharf_user_adds_resets_disables_and_lists(
    project_dir: Path, capsys: Any, monkeypatch: Any
) -> None:
    root = ["--root", str(project_dir)]
    assert main([*root, "user", "add", "ann", "--role", "finance", "--channel", "x"]) == 0
    out = capsys.readouterr().out
    assert "http://127.0.0.1:8088/setup?token=" in out
    assert main([*root, "user", "add", "bob", "--role", "operater"]) == 1
    assert "did you mean 'operator'" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("a long passphrase\n"))
    assert main([*root, "user", "add", "cy", "--role", "viewer", "--password-stdin"]) == 0
    assert main([*root, "user", "disable", "cy"]) == 0
    assert main([*root, "user", "reset", "ann"]) == 0
    assert main([*root, "user", "reset", "nobody"]) == 1
    capsys.readouterr()
    assert main([*root, "user", "list", "--json"]) == 0
    listed = {u["name"]: u for u in __import__("json").loads(capsys.readouterr().out)}
    assert listed["ann"]["state"] == "waiting for setup" and listed["ann"]["channels"] == "x"
    assert listed["cy"]["state"] == "disabled"
    with SqliteStore(project_dir / "var" / "wharf.db") as store:
        actions = [e["action"] for e in store.audit_entries()]
    assert actions == ["user.reset", "user.disable", "user.add", "user.add"]
