"""The console over real HTTP against ``wharf run --demo`` (a real process, real sockets): every
API path refuses a request without a session (401), each role sees its pages and is refused the
others (403, and no link to them), a POST needs the session's CSRF token, a login locks out one
(account, address) after its failures, a message body view is audited, and a pause holds a
channel's deliveries across a restart until it is resumed (audited both ways)."""

from __future__ import annotations

import re
import shutil
import socket
import time
from pathlib import Path

import pytest

from engine.web.api import openapi_document
from engine.web.auth import ROLE_PERMISSIONS, ROLES
from engine.web.console import NAV
from tests.integration.console_helpers import PASSWORD, Client, Demo, start_demo
from tests.integration.helpers import Processes, open_store, wait_until

# One worker runs every test of the shared console demo (it is started once per worker).
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("console_demo")]
ROOT = Path(__file__).resolve().parents[2]


def api_calls() -> list[tuple[str, str]]:
    calls = []
    for path, ops in openapi_document()["paths"].items():
        for method in ops:
            if path != "/api/login":
                calls.append((method.upper(), re.sub(r"\{\w+\}", "x", path)))
    return calls


@pytest.mark.parametrize(("method", "path"), api_calls())
def test_every_api_path_refuses_a_request_without_a_session(
    console_demo: Demo, method: str, path: str
) -> None:
    status, body = Client(console_demo.port).request(method, path, {} if method == "POST" else None)
    assert status == 401, body
    assert b"not logged in" in body


def test_a_page_without_a_session_sends_to_the_login(console_demo: Demo) -> None:
    c = Client(console_demo.port)
    status, _ = c.get("/finance")
    assert status == 303 and c.last_headers["location"] == "/login?next=%2Ffinance"


@pytest.mark.parametrize("role", ROLES)
def test_each_role_sees_its_pages_and_is_refused_the_others(console_demo: Demo, role: str) -> None:
    c = console_demo.client(role)
    may = ROLE_PERMISSIONS[role]
    status, home = c.get("/messages" if "messages" in may else "/work-items")
    assert status == 200
    for path, _title, permission in NAV:
        status, body = c.get(path)
        if permission in may:
            assert status == 200, (role, path, body[:300])
            assert f'href="{path}"'.encode() in home, (role, path)
        else:
            assert status == 403, (role, path)
            assert b"may not" in body
            assert f'href="{path}"'.encode() not in home, (role, path)


def test_the_demo_fills_every_page(console_demo: Demo) -> None:
    c = console_demo.client("admin")
    _, channels = c.get_json("/api/channels")
    by_name = {ch["name"]: ch for ch in channels["channels"]}
    assert by_name["usage_ledger"]["sent"] >= 1 and by_name["usage_to_erp"]["errored"] >= 1
    assert by_name["usage_mllp"]["listener"]  # bound: its address
    assert channels["throughput"]["points"], channels["throughput"]
    _, page = c.get_json("/api/messages?limit=5")
    assert len(page["messages"]) == 5 and page["next"]
    _, nxt = c.get_json(f"/api/messages?limit=5&after={page['next']}")
    assert not {m["id"] for m in nxt["messages"]} & {m["id"] for m in page["messages"]}
    _, po = c.get_json("/api/messages?key=po_number%3D4500012345")
    assert len(po["messages"]) >= 2  # the 850 and the vendor's answers
    _, fin = c.get_json("/api/invoices")
    assert fin["counts"].get("held", 0) + fin["counts"].get("released", 0) >= 1
    _, items = c.get_json("/api/work-items?status=all")
    assert items["kinds"] or items["items"]
    for path, marker in (
        ("/supply", b"4500012345"),
        ("/revenue", b"Unbilled usage"),
        ("/utilization", b"LOC-"),
        ("/utilization?format=csv", b"location,item,uom"),
        ("/audit?verify=1", b"hash chain intact"),
        ("/trace?key=po_number%3D4500012345", b"x12_from_vendors"),
    ):
        status, body = c.get(path)
        assert status == 200 and marker in body, (path, body[:500])


def test_the_demo_reconciles_its_goods_receipts_with_what_the_erp_posted(
    console_demo: Demo,
) -> None:
    """The demo's 856s through the shipped channels (the SFTP inbound folder, the sandbox ERP
    over HTTP, the delivery worker): the first one's goods receipt is posted (the screws and 3
    of the gloves agree), the second one's is refused with a 422 (2 PR of gloves differ,
    "rejected by the ERP", its message linked), on the API and the finance page."""
    c = console_demo.client("finance")
    status, data = c.get_json("/api/reconciliation?days=30")
    assert status == 200, data
    rows = {r["item"]: r for r in data["receipts"]["rows"]}
    screws, gloves = rows["ITEM-100123"], rows["ITEM-202042"]
    assert (screws["received_quantity"], screws["posted_quantity"], screws["reason"]) == (
        "10",
        "10",
        "",
    )
    assert (gloves["received_quantity"], gloves["posted_quantity"]) == ("5", "3")
    assert (gloves["difference_value"], gloves["reasons"]) == (
        "25.00",
        {"rejected by the ERP": "2"},
    )
    (mid,) = gloves["messages"]
    status, page = c.get("/finance")
    assert status == 200
    table = page.split(b'id="receipt-reconciliation"')[1].split(b"</table>")[0]
    assert b'class="agrees"><td>' in table and b"rejected by the ERP: 2" in table
    assert f'href="/messages/{mid}"'.encode() in table


def test_a_post_without_the_csrf_token_is_refused(console_demo: Demo) -> None:
    c = console_demo.client("operator")
    status, out = c.post_json("/api/channels/usage_mllp/erp/pause", {}, csrf=False)
    assert status == 403 and "CSRF" in out["error"]
    status, _ = c.request(
        "POST", "/channels/usage_mllp/erp/pause", form={"csrf": "forged"}, csrf=False
    )
    assert status == 403


def test_a_role_may_not_act_beyond_its_permissions(console_demo: Demo) -> None:
    viewer = console_demo.client("viewer")
    status, out = viewer.post_json("/api/channels/usage_mllp/*/pause")
    assert status == 403 and "viewer" in out["error"]
    _, page = viewer.get_json("/api/messages?limit=1")
    mid = page["messages"][0]["id"]
    status, out = viewer.get_json(f"/api/messages/{mid}?body=1")
    assert status == 403 and "bodies" in out["error"]


def test_a_body_view_is_audited(console_demo: Demo) -> None:
    analyst = console_demo.client("analyst")
    _, page = analyst.get_json("/api/messages?channel=usage_ledger&limit=1")
    mid = page["messages"][0]["id"]
    status, view = analyst.get_json(f"/api/messages/{mid}?body=1")
    assert status == 200 and view["contents"]["raw"]["text"].startswith("MSH|")
    _, audit = console_demo.client("admin").get_json("/api/audit")
    seen = [(e["actor"], e["action"], e["target"]) for e in audit["entries"]]
    assert ("analyst", "view_body", mid) in seen


def test_failed_logins_lock_one_account_from_one_address(console_demo: Demo) -> None:
    from tests.integration.console_helpers import add_user

    add_user(console_demo, "locky", ["viewer"])
    c = Client(console_demo.port)
    for _ in range(5):
        status, _ = c.post_json("/api/login", {"name": "locky", "password": "wrong password!"})
        assert status == 401
    status, out = c.post_json("/api/login", {"name": "locky", "password": "a demo passphrase"})
    assert status == 429, out
    console_demo.client("viewer")  # another account from the same address still logs in
    _, audit = console_demo.client("admin").get_json("/api/audit")
    actions = [e["action"] for e in audit["entries"] if e["actor"] == "locky"]
    assert actions.count("login.failed") == 5 and actions[0] == "login.locked"
    assert "wrong password!" not in str(audit) and "a demo passphrase" not in str(audit)


def test_a_login_bcrypt_cannot_check_is_a_400(console_demo: Demo) -> None:
    c = Client(console_demo.port)
    status, out = c.post_json("/api/login", {"name": "admin", "password": "é" * 37})
    assert status == 400 and out["error"] == "password: expected at most 72 bytes (got 74)"
    status, out = c.post_json("/api/login", {"name": "ad\ud800", "password": "x" * 12})
    assert status == 400 and out["error"].startswith("name: expected Unicode text"), out


@pytest.mark.slow
def test_sessions_and_lockouts_survive_a_restart(tmp_path: Path) -> None:
    """A session made before a restart of ``wharf run`` still works after it (the same cookie
    and CSRF token), and a lockout made before it still holds: the count is not reset by
    waiting for a deploy. The store keeps only the cookie's digest."""
    from engine.web.auth import token_digest
    from tests.integration.console_helpers import add_user

    with Processes(tmp_path) as procs:
        demo = start_demo(tmp_path, procs)
        add_user(demo, "locky", ["viewer"])
        viewer = demo.client("viewer")
        status, me = viewer.get_json("/api/me")
        assert status == 200 and me["name"] == "viewer", me
        intruder = Client(demo.port)
        for _ in range(4):  # one short of the lockout (max_failed_logins: 5)
            status, _ = intruder.post_json("/api/login", {"name": "locky", "password": "guess!"})
            assert status == 401
        with open_store(demo.root / "var" / "wharf.db") as store:
            token = viewer.cookie.split("=", 1)[1]
            rows = store._query("t", "SELECT token_hash, name FROM console_sessions")
            kept = {r[0]: r[1] for r in rows}
            assert kept.get(token_digest(token)) == "viewer" and token not in kept

        demo.restart(demo=True)
        status, again = viewer.get_json("/api/me")
        assert status == 200, again
        assert (again["name"], again["csrf"]) == ("viewer", me["csrf"])
        # the fifth failure after the restart locks: the count went on
        status, _ = intruder.post_json("/api/login", {"name": "locky", "password": "guess!"})
        assert status == 401
        status, out = intruder.post_json("/api/login", {"name": "locky", "password": PASSWORD})
        assert status == 429, out
        # the session's CSRF token still works for a POST: log out, and the cookie is dead
        status, _ = viewer.request("POST", "/logout", form={"csrf": me["csrf"]})
        assert status == 303
        status, _ = viewer.get_json("/api/me")
        assert status == 401


@pytest.mark.slow
def test_a_pause_holds_deliveries_across_a_restart_until_resumed(tmp_path: Path) -> None:
    with Processes(tmp_path) as procs:
        demo = start_demo(tmp_path, procs)
        op = demo.client("operator")
        status, out = op.post_json("/api/channels/usage_to_erp/*/pause", {"note": "ERP upgrade"})
        assert status == 200 and out["changed"], out
        inbox = demo.root / "var" / "inbox" / "usage"
        sample = (ROOT / "samples/hl7/dft_p03_screw.hl7").read_bytes()
        fresh = sample.replace(b"|POU-000123|", b"|POU-PAUSED1|", 1)  # a new message
        assert fresh != sample
        (inbox / ".paused.part").write_bytes(fresh)
        (inbox / ".paused.part").rename(inbox / "paused.hl7")
        db = demo.root / "var" / "wharf.db"

        def held() -> list:
            with open_store(db) as store:
                rows = store.search(channel="usage_to_erp", status="queued", limit=10)
                return [r for r in rows if r.peer and "paused" in r.peer]

        (row,) = wait_until(held, 60, "the new message queued behind the pause")
        time.sleep(3)  # several claim polls: nothing may leave
        with open_store(db) as store:
            assert {d["status"] for d in store.deliveries_for(row.id)} == {"pending"}
        demo.restart(demo=True)  # the demo again: its sandbox is the ERP
        op = demo.client("operator")
        _, channels = op.get_json("/api/channels")
        (ch,) = [c for c in channels["channels"] if c["name"] == "usage_to_erp"]
        assert ch["paused"] and all(d["state"] == "paused" for d in ch["destinations"])
        with open_store(db) as store:
            assert {d["status"] for d in store.deliveries_for(row.id)} == {"pending"}
        status, _ = op.post_json("/api/channels/usage_to_erp/*/resume")
        assert status == 200

        def sent() -> bool:
            with open_store(db) as store:
                return store.get_message(row.id).status == "sent"

        wait_until(sent, 60, "the held message delivered once resumed")
        _, audit = demo.client("admin").get_json("/api/audit")
        mine = [(e["action"], e["target"]) for e in audit["entries"] if e["actor"] == "operator"]
        assert ("pause", "usage_to_erp/*") in mine and ("resume", "usage_to_erp/*") in mine
    shutil.rmtree(tmp_path / "project", ignore_errors=True)


def test_an_analyst_edits_and_replays_a_message_with_the_diff_audited(console_demo: Demo) -> None:
    analyst = console_demo.client("analyst")
    _, page = analyst.get_json("/api/messages?channel=usage_to_erp&status=error")
    (bad,) = [m for m in page["messages"] if m["control_id"] == "POU-BAD-1"]
    _, view = analyst.get_json(f"/api/messages/{bad['id']}?body=1")
    raw = view["contents"]["raw"]["text"]
    rows = [
        line
        for line in (ROOT / "mappings/charge_codes.csv").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    good = rows[2].split(",")[0]  # a CDM code of the table (after the header row)
    status, _ = analyst.request(
        "POST",
        f"/messages/{bad['id']}/edit",
        form={"csrf": analyst.csrf or "", "raw": raw.replace("999999999", good)},
    )
    assert status == 303 and "edited" in analyst.last_headers["location"]

    def processed() -> str | None:
        _, v = analyst.get_json(f"/api/messages/{bad['id']}")
        return v["message"]["status"] if v["message"]["status"] != "received" else None

    assert wait_until(processed, 30, "the edited message processed") in ("queued", "sent")
    _, audit = console_demo.client("admin").get_json("/api/audit")
    (edit,) = [e for e in audit["entries"] if e["action"] == "edit_replay"]
    assert edit["actor"] == "analyst" and "+FT1" in edit["detail"]["diff"]
    assert "-FT1|1|CU-bad1||20260115093000||CG|999999999" in edit["detail"]["diff"]
    status, _ = console_demo.client("operator").request(
        "POST", f"/messages/{bad['id']}/edit", form={"raw": "x"}
    )
    assert status == 403  # an operator replays; editing is an analyst's


def test_an_operator_assigns_a_work_item_and_a_viewer_may_not(console_demo: Demo) -> None:
    op = console_demo.client("operator")
    _, items = op.get_json("/api/work-items")
    item = items["items"][0]["id"]
    status, _ = op.request(
        "POST", f"/work-items/{item}/assign", form={"csrf": op.csrf or "", "to": "dana"}
    )
    assert status == 303 and "assigned+to+dana" in op.last_headers["location"]
    _, after = op.get_json("/api/work-items")
    assert [i["assignee"] for i in after["items"] if i["id"] == item] == ["dana"]
    viewer = console_demo.client("viewer")
    status, _ = viewer.request(
        "POST", f"/work-items/{item}/assign", form={"csrf": viewer.csrf or ""}
    )
    assert status == 403
    _, audit = console_demo.client("admin").get_json("/api/audit")
    assert ("operator", "work_item.assign", str(item)) in [
        (e["actor"], e["action"], e["target"]) for e in audit["entries"]
    ]


def unknown_item(demo: Demo, control_id: str) -> list[dict]:
    """Send the ledger channel a usage line whose charge code the CDM lacks (MSH-10
    ``control_id``); its MISSING_MAPPING work item (charge_codes), once open."""
    raw = (ROOT / "samples/hl7/broken/broken_unknown_item.hl7").read_bytes()
    raw = raw.replace(b"|POU-BAD-1|", f"|{control_id}|".encode())
    with socket.create_connection(("127.0.0.1", int(demo.env["LEDGER_MLLP_PORT"]))) as s:
        s.sendall(b"\x0b" + raw + b"\x1c\r")
        s.settimeout(30)
        assert b"MSA|" in s.recv(65536)  # answered (the work item is what counts here)

    def missing() -> list[dict]:
        _, listed = demo.client("admin").get_json("/api/work-items?kind=MISSING_MAPPING")
        return [
            w
            for w in listed["items"]
            if w["subject"] == "charge_codes:999999999"
            and demo.client("admin").get_json(f"/api/messages/{w['message_id']}")[1]["message"][
                "control_id"
            ]
            == control_id
        ]

    return wait_until(missing, 30, f"the MISSING_MAPPING work item of {control_id}")


def test_an_analyst_reads_the_mapping_tables_and_their_missing_mappings(
    console_demo: Demo,
) -> None:
    analyst = console_demo.client("analyst")
    status, page = analyst.get("/mappings")
    assert status == 200
    row = re.search(rb'<tr id="table-items">(.*?)</tr>', page, re.S)
    assert row, page[:2000]
    assert b"supply chain item master" in row.group(1)  # the owner line of items.csv
    assert b"2026-01 sample item master" in row.group(1)  # its change note
    items = [
        line
        for line in (ROOT / "mappings/items.csv").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert f"<td>{len(items) - 1}</td>".encode() in row.group(1)  # rows, the header aside
    status, page = analyst.get("/mappings/items?q=foley%20catheter%20tray%2014f")
    assert status == 200 and b'<p id="matches">1 row(s)' in page and b"ITEM-160004" in page
    assert b"ITEM-160005" not in page
    (item,) = unknown_item(console_demo, "POU-BAD-MAP")
    status, page = analyst.get("/mappings/charge_codes")
    assert status == 200
    assert f'href="/messages/{item["message_id"]}"'.encode() in page
    assert b"<td>999999999</td>" in page
    status, page = analyst.get("/mappings/no_such_table")
    assert status == 404 and b"mapping table" in page
    status, _ = console_demo.client("viewer").get("/mappings/items")
    assert status == 403
    status, _ = analyst.request("POST", "/mappings/items", form={"csrf": analyst.csrf or ""})
    assert status in (404, 405)  # read-only: nothing to post to


def test_a_scoped_account_sees_only_its_channels_work_items(console_demo: Demo) -> None:
    from tests.integration.console_helpers import add_user

    add_user(console_demo, "ledger_ops", ["operator"], ["usage_ledger"])
    (mine,) = unknown_item(console_demo, "POU-BAD-SCOPE")
    _, every = console_demo.client("admin").get_json("/api/work-items")
    channels = {w["channel"] for w in every["items"]}
    assert "usage_ledger" in channels and channels - {"usage_ledger"}, channels
    scoped = console_demo.client("ledger_ops")
    _, seen = scoped.get_json("/api/work-items")
    assert mine["id"] in [w["id"] for w in seen["items"]]
    assert {w["channel"] for w in seen["items"]} == {"usage_ledger"}
    open_here = sum(1 for w in every["items"] if w["channel"] == "usage_ledger")
    assert sum(k["open"] for k in seen["kinds"]) == open_here  # the counts follow the scope
    other = next(w for w in every["items"] if w["channel"] != "usage_ledger")
    status, out = scoped.post_json(f"/api/work-items/{other['id']}/resolve", {"note": "not mine"})
    assert status == 403 and "outside your channels" in out["error"]
    status, page = scoped.get("/work-items")
    assert status == 200 and f'id="item-{other["id"]}"'.encode() not in page
    assert f'id="item-{mine["id"]}"'.encode() in page


def test_a_scoped_account_sees_only_its_channels_purchase_orders_and_invoices(
    console_demo: Demo,
) -> None:
    """Procurement rows carry the channel whose message recorded them (a PO: po_to_vendor,
    an invoice: the vendor's inbound X12 channel): a supply-chain or finance account scoped
    to other channels sees none of them, and may not release or reject an invoice it does not
    see (404: not even its existence is confirmed)."""
    from tests.integration.console_helpers import add_user

    add_user(console_demo, "ap_vendors", ["finance", "supply_chain"], ["x12_from_vendors"])
    add_user(console_demo, "buyer", ["supply_chain"], ["po_to_vendor"])
    add_user(console_demo, "ap_ledger", ["finance", "supply_chain"], ["usage_ledger"])
    with open_store(console_demo.root / "var" / "wharf.db") as store:
        invoices = [tuple(r) for r in store._query("t", "SELECT id, channel FROM invoices")]
        orders = [
            tuple(r) for r in store._query("t", "SELECT po_number, channel FROM purchase_orders")
        ]
    assert invoices and {c for _, c in invoices} == {"x12_from_vendors"}, invoices
    assert ("4500012345", "po_to_vendor") in orders, orders

    _, every = console_demo.client("admin").get_json("/api/invoices")
    assert sum(every["counts"].values()) == len(invoices), every["counts"]
    _, theirs = console_demo.client("ap_vendors").get_json("/api/invoices")
    assert theirs["counts"] == every["counts"] and theirs["held"] == every["held"]

    other = console_demo.client("ap_ledger")
    _, none = other.get_json("/api/invoices")
    assert none["counts"] == {} and none["held"] == [] and none["grir"] == [], none
    status, page = other.get("/finance")
    assert status == 200 and b'id="no-held"' in page
    for held in every["held"]:
        assert f'id="invoice-{held["id"]}"'.encode() not in page
    invoice_id = invoices[0][0]
    for decision in ("release", "reject"):
        status, out = other.post_json(f"/api/invoices/{invoice_id}/{decision}", {"note": "x"})
        assert status == 404 and "in your channels" in out["error"], out
        status, _ = other.request("POST", f"/invoices/{invoice_id}/{decision}", form={"note": "x"})
        assert status == 404
    _, after = console_demo.client("admin").get_json("/api/invoices")
    assert after["counts"] == every["counts"]  # nothing was released or rejected

    status, page = other.get("/supply")
    assert status == 200 and b"4500012345" not in page
    status, page = console_demo.client("buyer").get("/supply")
    assert status == 200 and b"4500012345" in page
