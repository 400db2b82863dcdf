"""SandboxState (the ERP/billing sandbox's SQLite state) and ErpApi without sockets."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from engine.sandbox.erp import ErpApi
from engine.sandbox.state import SandboxState, SeedError


@pytest.fixture
def folder() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sandbox-state-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def state(folder: Path) -> Iterator[SandboxState]:
    s = SandboxState(folder / "sub" / "sandbox.db")
    yield s
    s.close()


def line(**kw: object) -> dict:
    base = {
        "usage_id": "U1",
        "item_id": "ITEM-1",
        "quantity": Decimal("2"),
        "uom": "EA",
        "location_id": "LOC-OR",
        "cost_center": "CC-1",
        "gl_account": "5410",
    }
    return {**base, **kw}


def test_seed_csv_with_comments_and_typed_header(state: SandboxState, folder: Path) -> None:
    """A snapshot CSV with # comments and an `on_hand:decimal` header seeds on-hand rows;
    a second seed keeps existing rows unless overwrite is asked for."""
    csv = folder / "onhand.csv"
    csv.write_text(
        "# snapshot 2026-11-01\nlocation,item,on_hand:decimal,uom\n"
        "LOC-OR,ITEM-1,10,EA\nLOC-OR,ITEM-2,2.5,BX\n",
        encoding="utf-8",
    )
    assert state.seed_csv(csv) == 2
    assert state.on_hand("LOC-OR", "ITEM-1") == Decimal("10")
    assert state.on_hand("LOC-OR", "ITEM-2") == Decimal("2.5")
    csv.write_text("location,item,on_hand,uom\nLOC-OR,ITEM-1,99,EA\n", encoding="utf-8")
    assert state.seed_csv(csv) == 0
    assert state.on_hand("LOC-OR", "ITEM-1") == Decimal("10")
    assert state.seed_csv(csv, overwrite=True) == 1
    assert state.on_hand("LOC-OR", "ITEM-1") == Decimal("99")


def test_seed_rejects_a_bad_snapshot(state: SandboxState) -> None:
    """A header without on_hand, or a non-numeric on_hand, is a SeedError naming the problem,
    and nothing of the bad snapshot is kept."""
    with pytest.raises(SeedError, match="on_hand"):
        state.seed_text("location,item,uom\nL,I,EA\n")
    with pytest.raises(SeedError, match="row 3: on_hand must be a number"):
        state.seed_text("location,item,on_hand,uom\nL,I,1,EA\nL,J,lots,EA\n")
    assert state.counts()["inventory_rows"] == 0


def test_issue_decrements_and_may_go_negative(state: SandboxState) -> None:
    """An issue decrements on-hand per line; going below zero is allowed and flagged; a
    negative quantity (a return) increments."""
    state.seed_text("location,item,on_hand,uom\nLOC-OR,ITEM-1,3,EA\n")
    first = state.post_issue("ENC-1", [line()], {"doc": 1})
    assert first == "ISS-1"
    assert state.on_hand("LOC-OR", "ITEM-1") == Decimal("1")
    state.post_issue("ENC-1", [line(quantity=Decimal("2"), usage_id="U2")], {})
    assert state.on_hand("LOC-OR", "ITEM-1") == Decimal("-1")
    state.post_issue("ENC-1", [line(quantity=Decimal("-1.5"), usage_id="U3")], {})
    assert state.on_hand("LOC-OR", "ITEM-1") == Decimal("0.5")
    counts = state.counts()
    assert counts["issues"] == 3
    assert counts["issue_lines"] == 3
    assert counts["negative_issue_lines"] == 1
    assert counts["negative_on_hand"] == 0
    issues = state.issues()
    assert [i["id"] for i in issues] == ["ISS-1", "ISS-2", "ISS-3"]
    assert issues[1]["lines"][0]["on_hand_after"] == "-1"
    assert issues[2]["lines"][0]["quantity"] == "-1.5"


def test_issue_of_an_unstocked_item_creates_a_negative_row(state: SandboxState) -> None:
    """Issuing an item never stocked at the location records it with a negative on-hand."""
    state.post_issue("ENC-1", [line(item_id="ITEM-9")], {})
    assert state.inventory(item="ITEM-9") == [
        {"location": "LOC-OR", "item": "ITEM-9", "on_hand": "-2", "uom": "EA"}
    ]
    assert state.counts()["negative_on_hand"] == 1


def test_transaction_rolls_back_everything(state: SandboxState) -> None:
    """An error inside a transaction undoes the issue, its lines and the on-hand change."""
    state.seed_text("location,item,on_hand,uom\nLOC-OR,ITEM-1,3,EA\n")
    with pytest.raises(RuntimeError), state.transaction():
        state.post_issue("ENC-1", [line()], {})
        raise RuntimeError("boom")
    assert state.on_hand("LOC-OR", "ITEM-1") == Decimal("3")
    assert state.counts()["issues"] == 0
    assert state.post_issue("ENC-1", [line()], {}) == "ISS-1"


def test_requisitions_open_close_list(state: SandboxState) -> None:
    """Requisitions start open, close once (a second close changes nothing) and filter by
    status, location and item."""
    a = state.create_requisition("LOC-OR", "ITEM-1", Decimal("10"), "EA", "par", {})
    b = state.create_requisition("LOC-CATH", "ITEM-2", Decimal("5"), "BX", "par", {})
    assert (a, b) == ("REQ-1", "REQ-2")
    assert [r["id"] for r in state.requisitions("open")] == ["REQ-1", "REQ-2"]
    assert state.close_requisition(a)["status"] == "closed"
    closed_at = state.requisition(a)["closed_at"]
    assert state.close_requisition(a)["closed_at"] == closed_at
    assert state.close_requisition("REQ-404") is None
    assert [r["id"] for r in state.requisitions("open")] == ["REQ-2"]
    assert [r["id"] for r in state.requisitions("closed")] == ["REQ-1"]
    assert [r["id"] for r in state.requisitions(location="LOC-CATH")] == ["REQ-2"]
    assert state.counts()["requisitions_open"] == 1


def test_charges_documents_and_idempotency_records(state: SandboxState) -> None:
    """Charges, goods receipts and AP invoices are stored and listed; an idempotency record
    returns the original status and body bytes."""
    cid = state.add_charge(
        source="mllp",
        message_key="POU|H|1",
        encounter="ENC-1",
        line_id="CU-1",
        code="278000123",
        quantity="2",
        type="CG",
    )
    assert cid == "CHG-1"
    assert state.charges()[0]["code"] == "278000123"
    assert state.store_document("goods_receipts", "GR", {"po": "PO-1"}) == "GR-1"
    assert state.store_document("ap_invoices", "APINV", {"inv": "9"}) == "APINV-1"
    assert state.documents("goods_receipts")[0]["doc"] == {"po": "PO-1"}
    assert state.remembered("k") is None
    state.remember("k", "POST", "/x", "abc", 201, b'{"id": "X-1"}')
    assert state.remembered("k") == {
        "method": "POST",
        "path": "/x",
        "body_sha256": "abc",
        "status": 201,
        "response": b'{"id": "X-1"}',
    }
    counts = state.counts()
    assert (counts["charges"], counts["goods_receipts"], counts["ap_invoices"]) == (1, 1, 1)
    assert counts["idempotency_keys"] == 1


def test_state_survives_reopen_and_reset_empties(folder: Path) -> None:
    """The state lives in its file: reopening shows the same rows and counters; reset empties
    every table and ids start again at 1."""
    path = folder / "s.db"
    s = SandboxState(path)
    s.post_issue("ENC-1", [line()], {})
    s.bump("idempotent_replays")
    s.close()
    s = SandboxState(path)
    try:
        assert s.counts()["issues"] == 1
        assert s.counts()["idempotent_replays"] == 1
        s.reset()
        assert s.counts()["issues"] == 0
        assert s.counts()["idempotent_replays"] == 0
        assert s.post_issue("ENC-1", [line()], {}) == "ISS-1"
    finally:
        s.close()


# ---------------------------------------------------------------------------- ErpApi, no sockets


def issue_body(**kw: object) -> bytes:
    doc = {
        "type": "inventory_issue",
        "encounter": "ENC-1",
        "lines": [
            {
                "usage_id": "U1",
                "item_id": "ITEM-1",
                "quantity": "2",
                "uom": "EA",
                "location_id": "LOC-OR",
                "cost_center": "CC-1",
                "gl_account": "5410",
            }
        ],
    }
    doc.update(kw)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"not json", "body"),
        (b"[1]", "body"),
        (issue_body(type="receipt"), "type"),
        (issue_body(encounter=""), "encounter"),
        (issue_body(lines=[]), "lines"),
        (issue_body(lines=[{"usage_id": "U1"}]), "lines[0].item_id"),
        (
            issue_body(
                lines=[
                    {
                        "usage_id": "U",
                        "item_id": "I",
                        "quantity": "two",
                        "uom": "EA",
                        "location_id": "L",
                        "cost_center": "C",
                        "gl_account": "G",
                    }
                ]
            ),
            "lines[0].quantity",
        ),
        (b'{"issues": [{"type": "inventory_issue"}]}', "issues[0].encounter"),
        (b'{"issues": [1]}', "issues[0]"),
    ],
)
def test_api_422_names_the_field(state: SandboxState, body: bytes, field: str) -> None:
    """Bad input is 422 with an error starting with the offending field, and changes nothing."""
    answer = ErpApi(state).handle("POST", "/inventory/issues", {}, body, {})
    assert answer.status == 422
    assert json.loads(answer.body)["error"].startswith(f"{field}:")
    assert state.counts()["issues"] == 0


def test_api_unknown_path_and_method(state: SandboxState) -> None:
    """An unknown path is 404 and a wrong method 405 with Allow, both JSON."""
    api = ErpApi(state)
    assert api.handle("GET", "/nowhere", {}, b"", {}).status == 404
    answer = api.handle("DELETE", "/requisitions", {}, b"", {})
    assert answer.status == 405
    assert answer.headers["allow"] == "POST, GET"
    assert "error" in json.loads(answer.body)


GR_LINES = [
    {"item_id": "ITEM-1", "quantity": "10", "uom": "EA", "location_id": "LOC-OR"},
    {"item_id": "ITEM-2", "quantity": "2.5", "uom": "PR", "location_id": "LOC-OR"},
]


@pytest.mark.parametrize(
    ("doc_type", "moves"),
    [("goods_receipt", True), (None, True), ("expected_receipt", False)],
    ids=["goods-receipt", "untyped", "expected-receipt"],
)
def test_a_goods_receipt_moves_on_hand_as_an_erp_would(
    state: SandboxState, doc_type: str | None, moves: bool
) -> None:
    """POST /goods-receipts stores the receipt and adds its lines to on-hand at their
    location (so ledger = ERP can be checked after receipts); an expected receipt (an ASN
    that is not the receipt) moves nothing."""
    state.set_on_hand("LOC-OR", "ITEM-1", Decimal("3"), "EA")
    doc = {"lines": GR_LINES, **({"type": doc_type} if doc_type else {})}
    answer = ErpApi(state).handle("POST", "/goods-receipts", {}, json.dumps(doc).encode(), {})
    assert answer.status == 201
    expected = (Decimal("13"), Decimal("2.5")) if moves else (Decimal("3"), Decimal("0"))
    assert (state.on_hand("LOC-OR", "ITEM-1"), state.on_hand("LOC-OR", "ITEM-2")) == expected
    assert state.counts()["goods_receipts"] == 1


def test_a_goods_receipt_line_without_its_location_is_422_and_moves_nothing(
    state: SandboxState,
) -> None:
    doc = {"type": "goods_receipt", "lines": [GR_LINES[0], {"item_id": "I", "quantity": "1"}]}
    answer = ErpApi(state).handle("POST", "/goods-receipts", {}, json.dumps(doc).encode(), {})
    assert answer.status == 422
    assert json.loads(answer.body)["error"].startswith("lines[1].uom:")
    assert state.on_hand("LOC-OR", "ITEM-1") == 0 and state.counts()["goods_receipts"] == 0


def test_an_accepted_po_change_becomes_the_erp_po_line(state: SandboxState) -> None:
    """POST /purchase-orders/{po}/changes: an accepted change sets the line's quantity, unit
    and price in the ERP's PO; a rejected one leaves them; both mark the line."""
    api = ErpApi(state)
    po = {
        "po_number": "PO-1",
        "vendor": "V",
        "lines": [
            {"line": "1", "item_id": "I", "qty": "10", "uom": "BX", "unit_price": "125"},
            {"line": "2", "item_id": "J", "qty": "4", "uom": "BX", "unit_price": "100"},
        ],
    }
    assert api.handle("POST", "/purchase-orders", {}, json.dumps(po).encode(), {}).status == 201
    accept = {
        "status": "accepted",
        "line": "1",
        "quantity": "8",
        "unit": "BX",
        "unit_price": "137.5",
    }
    reject = {"status": "rejected", "line": "2", "quantity": "3"}
    for body in (accept, reject):
        answer = api.handle(
            "POST", "/purchase-orders/PO-1/changes", {}, json.dumps(body).encode(), {}
        )
        assert answer.status == 200
    got = json.loads(api.handle("GET", "/purchase-orders/PO-1", {}, b"", {}).body)
    assert [(ln["qty"], ln["unit_price"]) for ln in got["doc"]["lines"]] == [
        ("8", "137.5"),
        ("4", "100"),
    ]
    assert {k: v["status"] for k, v in got["lines"].items()} == {
        "1": "change_accepted",
        "2": "change_rejected",
    }
    bad = api.handle("POST", "/purchase-orders/PO-1/changes", {}, b'{"status": "maybe"}', {})
    assert bad.status == 422 and json.loads(bad.body)["error"].startswith("line:")
