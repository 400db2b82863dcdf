"""The console as its users meet it: ``wharf run --demo`` on a copy of the shipped project (every
port moved to a free one), the admin password set through the one-time link the demo prints,
one account per role (``wharf user add --password-stdin``), and a small HTTP client that logs
in through the JSON API and keeps the session cookie and CSRF token."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlparse

from engine.runner import DEMO_PORTS, start_console
from engine.runtime import Engine
from engine.web.auth import ROLES
from tests.integration.helpers import ROOT, WHARF, Proc, Processes, free_port, wait_until

PASSWORD = "a demo passphrase"  # every test account's (12+ characters)
PORT_VARIABLES = (
    "MLLP_PORT",
    "LEDGER_MLLP_PORT",
    "FHIR_PORT",
    "PO_HTTP_PORT",
    "RECEIPT_HTTP_PORT",
    "SFTP_PORT",
    "ADMIN_PORT",
    *DEMO_PORTS,
)


@dataclass
class Client:
    """HTTP to the console on 127.0.0.1:``port``, with a session once logged in."""

    port: int
    cookie: str | None = None
    csrf: str | None = None
    last_headers: dict[str, str] = field(default_factory=dict)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        form: dict[str, str] | None = None,
        csrf: bool = True,
    ) -> tuple[int, bytes]:
        headers: dict[str, str] = {}
        data: bytes | None = None
        if form is not None:
            data = urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.cookie:
            headers["Cookie"] = self.cookie
        if csrf and self.csrf and method == "POST":
            headers["X-CSRF-Token"] = self.csrf
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            self.last_headers = {k.lower(): v for k, v in resp.getheaders()}
            cookie = resp.getheader("Set-Cookie")
            if cookie and cookie.startswith("wharf_session="):
                self.cookie = cookie.split(";")[0]
            return resp.status, resp.read()
        finally:
            conn.close()

    def get(self, path: str) -> tuple[int, bytes]:
        return self.request("GET", path)

    def get_json(self, path: str) -> tuple[int, Any]:
        status, raw = self.get(path)
        return status, json.loads(raw)

    def post_json(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        status, raw = self.request("POST", path, body if body is not None else {}, **kw)
        return status, json.loads(raw) if raw else None

    def login(self, name: str, password: str = PASSWORD) -> Client:
        status, out = self.post_json("/api/login", {"name": name, "password": password})
        assert status == 200, (status, out)
        assert "httponly" in self.last_headers["set-cookie"].lower()
        assert "samesite=strict" in self.last_headers["set-cookie"].lower()
        self.csrf = out["csrf"]
        return self


@dataclass
class Demo:
    root: Path
    env: dict[str, str]
    procs: Processes
    proc: Proc
    url: str
    setup_link: str

    @property
    def port(self) -> int:
        return int(self.env["ADMIN_PORT"])

    def client(self, role: str | None = None) -> Client:
        c = Client(self.port)
        return c.login(role) if role else c

    def restart(self, *, demo: bool = False) -> None:
        self.proc.stop()
        self.proc = start(self.procs, self.root, self.env, demo=demo)


def copy_shipped_project(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in ("routes.yaml", "channels", "mappings", "samples", "transforms"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)
    return dest


def demo_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ERP_URL", *PORT_VARIABLES)}
    env.update({name: str(free_port()) for name in PORT_VARIABLES}, PYTHONUNBUFFERED="1")
    return env


def start(procs: Processes, root: Path, env: dict[str, str], *, demo: bool) -> Proc:
    args = [str(WHARF), "--root", str(root), "run", *(["--demo"] if demo else [])]
    proc = procs.start("wharf-demo" if demo else "wharf", args, env)
    done = "delivered now" if demo else "console: "
    wait_until(lambda: done in proc.output(), 180, "the console up", procs=[proc])
    return proc


def start_demo(tmp: Path, procs: Processes) -> Demo:
    """The demo running, its admin password set, one account per role (named after it)."""
    root = copy_shipped_project(tmp / "project")
    env = demo_env()
    proc = start(procs, root, env, demo=True)
    out = proc.output()
    link = re.search(r"demo: open (http://\S+/setup\?token=\S+) once", out)
    assert link, out[-3000:]
    url = re.search(r"then (http://\S+)/\n", out)
    assert url, out[-3000:]
    demo = Demo(root, env, procs, proc, url.group(1), link.group(1))
    token = urlparse(demo.setup_link).query.split("=", 1)[1]
    status, _ = Client(demo.port).request(
        "POST", "/setup", form={"token": token, "password": PASSWORD, "again": PASSWORD}
    )
    assert status == 303
    for role in ROLES:
        if role != "admin":
            add_user(demo, role, [role])
    return demo


def add_user(demo: Demo, name: str, roles: list[str], channels: list[str] = ()) -> None:
    add_account(demo.root, demo.env, name, roles, channels)


def add_account(
    root: Path, env: dict[str, str], name: str, roles: list[str], channels: list[str] = ()
) -> None:
    """``wharf user add NAME --password-stdin`` (:data:`PASSWORD`) on the project's store."""
    args = [str(WHARF), "--root", str(root), "user", "add", name, "--password-stdin"]
    args += [f"--role={r}" for r in roles] + [f"--channel={c}" for c in channels]
    done = subprocess.run(
        args, input=PASSWORD + "\n", env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


async def engine_with_console(case: Any, root: Path) -> Engine:
    """The engine of the project at ``root`` started in this process (the test's reactor) with
    its console; both stopped at the test case's cleanup."""
    from twisted.internet import defer, reactor

    engine = Engine(root, reactor)
    await engine.start()
    case.addCleanup(lambda: defer.ensureDeferred(engine.stop()))
    console = await start_console(engine)
    case.addCleanup(lambda: defer.ensureDeferred(console.stop()))
    return engine
