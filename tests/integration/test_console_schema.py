"""schemathesis against the console's OpenAPI document, on ``wharf run --demo``: requests made
from the document (logged in as admin, with the CSRF token) never get a 5xx, every answer's
status is one the document lists for that operation and its body is JSON as documented. (That
every path refuses a request without a session with 401 is tests/integration/test_console.py.)"""

from __future__ import annotations

from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from engine.web.api import openapi_document
from tests.integration.console_helpers import PASSWORD, Demo

# One worker runs every test of the shared console demo (it is started once per worker).
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("console_demo")]

schema = schemathesis.openapi.from_dict(openapi_document())
_sessions: dict[int, tuple[requests.Session, str]] = {}


def admin_session(demo: Demo) -> tuple[requests.Session, str]:
    if demo.port not in _sessions:
        s = requests.Session()
        r = s.post(f"{demo.url}/api/login", json={"name": "admin", "password": PASSWORD})
        assert r.status_code == 200, r.text
        _sessions[demo.port] = (s, r.json()["csrf"])
    return _sessions[demo.port]


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_the_api_keeps_to_its_document(case: Any, console_demo: Demo) -> None:
    session, csrf = admin_session(console_demo)
    case.call_and_validate(
        base_url=console_demo.url,
        session=session,
        headers={"X-CSRF-Token": csrf},
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )


def test_schemathesis_runs_every_operation_of_the_document() -> None:
    """Each path and method of openapi.json is one of the cases above (GET /api/utilization
    among them)."""
    documented = {
        f"{method.upper()} {path}"
        for path, ops in openapi_document()["paths"].items()
        for method in ops
    }
    labels = {result.ok().label for result in schema.get_all_operations()}
    assert labels == documented and "GET /api/utilization" in labels
