"""Every keyset-paged list of the console (``/api/work-items?after``, ``/api/audit?before``,
``/api/messages?after``, and their pages) answers a paging key out of the store's integer range
or not a number with a 400 that says what was expected and what came, never a 500 (SQLite's
integer overflow); the largest key the OpenAPI document allows is answered (an empty page).
Against ``wharf run --demo`` over real HTTP."""

from __future__ import annotations

import pytest

from engine.web.api import openapi_document
from tests.integration.console_helpers import Demo

pytestmark = pytest.mark.integration

MAX = 2**63 - 1
#: Keys a row-id cursor refuses: 20 digits, one past the bound, negative, not a number, huge.
BAD_IDS = ("12345678901234567890", str(MAX + 1), "-1", "12a", "1.5", "9" * 5000)
#: Each paged API: (path, its key, what the error says it expected).
ID_PAGED = (
    ("/api/work-items", "after", "a work item id"),
    ("/api/audit", "before", "an audit row id"),
)


@pytest.mark.parametrize("bad", BAD_IDS)
@pytest.mark.parametrize(("path", "key", "expected"), ID_PAGED)
def test_a_row_id_key_out_of_range_or_malformed_is_a_400(
    console_demo: Demo, path: str, key: str, expected: str, bad: str
) -> None:
    status, out = console_demo.client("admin").get_json(f"{path}?{key}={bad}")
    assert status == 400, out
    shown = bad if len(bad) <= 40 else bad[:40] + "..."
    assert out["error"] == (
        f"{key}: expected {expected}, a whole number from 0 to {MAX} (got {shown!r})"
    )


def test_the_largest_row_id_key_is_answered(console_demo: Demo) -> None:
    client = console_demo.client("admin")
    status, out = client.get_json(f"/api/work-items?status=all&after={MAX}")
    assert status == 200 and out["items"] == [] and out["next"] is None, out
    status, out = client.get_json(f"/api/audit?before={MAX}")
    assert status == 200 and out["entries"], out  # the newest rows: every id is below


@pytest.mark.parametrize(
    "bad",
    ("1700000000.5:12345678901234567890", f"1700000000.5:{MAX + 1}", "nan:5", "inf:5", "x:1", "5"),
)
def test_a_message_cursor_out_of_range_or_malformed_is_a_400(console_demo: Demo, bad: str) -> None:
    status, out = console_demo.client("admin").get_json(f"/api/messages?after={bad}")
    assert status == 400, out
    assert out["error"].startswith("after: expected a page cursor TIME:ROWID"), out
    assert out["error"].endswith(f"(got {bad!r})"), out


def test_the_largest_message_cursor_is_answered(console_demo: Demo) -> None:
    client = console_demo.client("admin")
    status, first = client.get_json("/api/messages?limit=1")
    at = first["next"].rpartition(":")[0]
    status, out = client.get_json(f"/api/messages?after={at}:{MAX}&limit=2")
    assert status == 200 and len(out["messages"]) == 2, out


@pytest.mark.parametrize(
    "path",
    (
        "/work-items?after=12345678901234567890",
        "/audit?before=12345678901234567890",
        "/messages?after=1700000000.5:12345678901234567890",
    ),
)
def test_the_pages_refuse_a_key_out_of_range_with_a_400(console_demo: Demo, path: str) -> None:
    status, body = console_demo.client("admin").get(path)
    assert status == 400, body[:300]
    assert b"expected" in body and b"12345678901234567890" in body


def test_the_document_bounds_every_row_id_key() -> None:
    paths = openapi_document()["paths"]
    for path, key, _ in ID_PAGED:
        (param,) = [p for p in paths[path]["get"]["parameters"] if p["name"] == key]
        assert param["schema"] == {"type": "integer", "minimum": 0, "maximum": MAX}
        assert "400" in paths[path]["get"]["responses"]
    (cursor,) = [p for p in paths["/api/messages"]["get"]["parameters"] if p["name"] == "after"]
    assert cursor["schema"]["pattern"].endswith(":[0-9]{1,19}$")
