"""routes.yaml's ``admin:`` block: the shipped one lints and moves with ADMIN_PORT; a bad one is
named by file:line:column and field, as every listener's is."""

from __future__ import annotations

from pathlib import Path

from engine.config.project import load_project
from engine.web.config import base_url
from tests.unit.test_config_lint import edit, line_of, lint_errors


def test_the_shipped_admin_block_is_loopback_on_admin_port(project_dir: Path) -> None:
    admin = load_project(project_dir, env={}).settings.admin
    assert admin.listen == "tcp:8088:interface=127.0.0.1"
    assert base_url(admin) == "http://127.0.0.1:8088"
    moved = load_project(project_dir, env={"ADMIN_PORT": "9443"}).settings.admin
    assert base_url(moved, 9443) == "http://127.0.0.1:9443"
    assert admin.idle_timeout == 900 and admin.absolute_timeout == 12 * 3600


def test_a_bad_admin_port_is_named_with_its_variable(project_dir: Path) -> None:
    line = line_of(project_dir / "routes.yaml", "tcp:${ADMIN_PORT")
    errors = lint_errors(project_dir, {"ADMIN_PORT": "80800"})
    assert any(
        e.startswith(f"routes.yaml:{line}:") and "admin.listen" in e and "$ADMIN_PORT='80800'" in e
        for e in errors
    ), errors


def test_client_ca_needs_tls_and_timeouts_must_agree(project_dir: Path) -> None:
    routes = project_dir / "routes.yaml"
    edit(
        routes,
        "  listen: tcp:${ADMIN_PORT:-8088}:interface=${ADMIN_INTERFACE:-127.0.0.1}\n",
        "  listen: tcp:${ADMIN_PORT:-8088}:interface=${ADMIN_INTERFACE:-127.0.0.1}\n"
        "  client_ca: tls/ca.pem\n  idle_timeout: 2h\n  absolute_timeout: 1h\n",
    )
    errors = "\n".join(lint_errors(project_dir))
    assert "admin.client_ca: client_ca needs an ssl: listen string" in errors
    assert "admin.absolute_timeout: expected an absolute_timeout no shorter than" in errors
