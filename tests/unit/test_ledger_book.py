"""Booking consumption events: stock, charges and requisitions exactly once per business key."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from engine.domains.ledger import rules
from engine.domains.ledger.domain import LEDGER, repository
from engine.domains.ledger.memory import InMemoryLedgerRepository
from engine.domains.ledger.records import ConsumptionEvent, LedgerRoutes, ParPolicy
from engine.domains.ledger.rules import book_events, effect_key, round_up_to_pack
from engine.model import Inbound, Outbound
from engine.runtime.outcomes import DeliveryBook
from engine.spec import Context
from engine.store import SqliteStore, make_store

ROUTES = LedgerRoutes(issue="erp", charge="billing", requisition="erp_req")
POLICIES = {
    ("LOC-CATH", "STENT"): ParPolicy(
        "LOC-CATH", "STENT", Decimal(10), Decimal(4), Decimal(6), "EA", 5
    )
}


def event(line: str, item: str = "STENT", qty: str = "1", **kw: Any) -> ConsumptionEvent:
    base = dict(
        business_key=f"{line}|{item}|20260116",
        kind="usage",
        item_id=item,
        location_id="LOC-CATH",
        quantity=Decimal(qty),
        uom="EA",
        encounter="ENC-1",
        service_time="20260116",
        chargeable=True,
        charge_code="278000789",
        source_line=line,
    )
    base.update(kw)
    return ConsumptionEvent(**base)


def charge(ev: ConsumptionEvent) -> tuple[bytes, str]:
    return f"DFT for {ev.business_key}".encode(), "x-application/hl7-v2+er7"


def _book(repo: Any, mid: str, events: Any, now: float) -> list[Outbound]:
    return book_events(
        repo,
        message_id=mid,
        correlation_id=mid,
        channel="usage",
        events=events,
        routes=ROUTES,
        policies=POLICIES,
        charge_payload=charge,
        now=now,
    )


class Ledger:
    """The ledger's rules over the store's SQLite repository, booked in the message's commit."""

    def __init__(self, location: Path | str) -> None:
        self.store = make_store(location).open()
        self.store.migrate("ledger", LEDGER.migrations(self.store.dialect))
        self.n = 0

    def book(self, *events: ConsumptionEvent) -> tuple[str, list[dict[str, Any]]]:
        """Ingest a message and finish it with ``events`` booked in the same commit."""
        self.n += 1
        now = time.time()
        item = Inbound("usage", "t", f"msg {self.n}".encode(), "text/plain", now)
        (result,) = self.store.ingest_batch([item], now)
        mid = result.message_id
        with self.store.transaction("book") as tx:
            tx.finish(mid, status="sent", now=now, outbound=_book(repository(tx), mid, events, now))
        return mid, self.store.deliveries_for(mid)

    def seed(self, quantity: int) -> None:
        with self.store.transaction("seed") as tx:
            rules.seed_onhand(
                repository(tx), [("LOC-CATH", "STENT", Decimal(quantity), "EA")], time.time()
            )

    def unbilled(self, *, older_than: float, now: float) -> int:
        with self.store.transaction("unbilled") as tx:
            return rules.find_unbilled(repository(tx), older_than=older_than, now=now)

    def onhand(self) -> Decimal:
        row = (
            self.store._conn()
            .execute("SELECT quantity FROM onhand WHERE location_id='LOC-CATH' AND item_id='STENT'")
            .fetchone()
        )
        return Decimal(row[0])

    def count(self, table: str) -> int:
        return self.store._conn().execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]

    def charge_types(self) -> list[str]:
        rows = self.store._conn().execute("SELECT transaction_type FROM charges ORDER BY id")
        return [r[0] for r in rows]

    def requisitions(self) -> list[tuple[str, str]]:
        return self.store._conn().execute("SELECT quantity, status FROM requisitions").fetchall()


class MemoryLedger:
    """The same rules over the in-memory repository (no SQL at all)."""

    def __init__(self) -> None:
        self.repo = InMemoryLedgerRepository()
        self.n = 0
        self.sent: set[str] = set()

    def book(self, *events: ConsumptionEvent) -> tuple[str, list[dict[str, Any]]]:
        self.n += 1
        mid = f"m{self.n}"
        out = _book(self.repo, mid, events, time.time())
        deliveries = [
            {"destination": o.destination, "idempotency_key": o.meta["idempotency_key"]}
            for o in out
            if o.meta["idempotency_key"] not in self.sent
        ]
        self.sent |= {d["idempotency_key"] for d in deliveries}
        return mid, deliveries

    def seed(self, quantity: int) -> None:
        rules.seed_onhand(self.repo, [("LOC-CATH", "STENT", Decimal(quantity), "EA")], 0.0)

    def unbilled(self, *, older_than: float, now: float) -> int:
        return rules.find_unbilled(self.repo, older_than=older_than, now=now)

    def onhand(self) -> Decimal:
        found = self.repo.onhand("LOC-CATH", "STENT")
        assert found is not None
        return found

    def count(self, table: str) -> int:
        return len(
            {
                "consumption_events": self.repo.events,
                "charges": self.repo.charges,
                "requisitions": self.repo.requisitions,
            }[table]
        )

    def charge_types(self) -> list[str]:
        return [c["transaction_type"] for _, c in sorted(self.repo.charges.items())]

    def requisitions(self) -> list[tuple[str, str]]:
        return [(str(r["quantity"]), r["status"]) for r in self.repo.requisitions]


@pytest.fixture(params=["sqlite", "postgresql", "memory"])
def ledger(request: Any, tmp_path: Path) -> Any:
    """The rules run against every repository (the store's on SQLite and on PostgreSQL, and
    the in-memory one) and must give the same answers."""
    if request.param == "sqlite":
        return Ledger(tmp_path / "w.db")
    if request.param == "postgresql":
        return Ledger(request.getfixturevalue("pg_url"))
    return MemoryLedger()


def test_usage_moves_stock_issues_and_charges_in_the_message_commit(ledger: Any) -> None:
    """One chargeable line: stock down, an ERP issue and a billing charge queued, keyed by the
    event; the message waits on those deliveries."""
    ledger.seed(20)
    mid, deliveries = ledger.book(event("CU-1", qty="2"))
    assert ledger.onhand() == Decimal(18)
    assert sorted(d["destination"] for d in deliveries) == ["billing", "erp"]
    keys = {d["destination"]: d["idempotency_key"] for d in deliveries}
    assert keys["erp"] == effect_key("usage", "erp", "CU-1|STENT|20260116", "issue")
    if isinstance(ledger, Ledger):
        assert ledger.store.get_message(mid).status == "queued"
    assert ledger.count("charges") == 1


def test_the_same_line_in_a_new_message_changes_nothing(ledger: Any) -> None:
    """A resent line (new message, same FT1-2, item and date) moves no stock and charges
    nothing a second time."""
    ledger.book(event("CU-1"))
    _, deliveries = ledger.book(event("CU-1"))
    assert deliveries == []
    assert ledger.onhand() == Decimal(-1)
    assert (ledger.count("consumption_events"), ledger.count("charges")) == (1, 1)


def test_non_chargeable_usage_is_kept_without_a_charge(ledger: Any) -> None:
    """A non-chargeable item is booked and issued, never charged."""
    _, deliveries = ledger.book(event("CU-2", item="GAUZE", chargeable=False))
    assert [d["destination"] for d in deliveries] == ["erp"]
    assert (ledger.count("consumption_events"), ledger.count("charges")) == (1, 0)


def test_par_breach_orders_once_rounded_to_the_pack(ledger: Any) -> None:
    """Below the reorder point: one requisition for max(order qty, par - on hand) rounded up
    to the pack; no second one while it is open."""
    ledger.seed(5)
    _, first = ledger.book(event("CU-3", qty="2"))  # on hand 3 < 4: breach
    reqs = [d for d in first if d["destination"] == "erp_req"]
    assert len(reqs) == 1
    (row,) = ledger.requisitions()
    assert row == ("10", "open")  # par 10 - on hand 3 = 7 -> 2 packs of 5
    _, second = ledger.book(event("CU-4", qty="1"))
    assert [d for d in second if d["destination"] == "erp_req"] == []
    assert ledger.count("requisitions") == 1


def test_a_credit_puts_stock_back_and_credits_the_charge(ledger: Any) -> None:
    """A credit line (FT1-6 CD) returns stock and sends a CD charge referencing the original."""
    ledger.book(event("CU-5", qty="2"))
    _, deliveries = ledger.book(
        event("CU-5R", qty="2", kind="credit", reverses="CU-5|STENT|20260116")
    )
    assert ledger.onhand() == Decimal(0)
    assert ledger.charge_types() == ["CG", "CD"]
    assert sorted(d["destination"] for d in deliveries) == ["billing", "erp"]


def test_round_up_to_pack() -> None:
    """Order quantities round up to whole packs."""
    assert round_up_to_pack(Decimal(7), 5) == 10
    assert round_up_to_pack(Decimal(10), 5) == 10
    assert round_up_to_pack(Decimal("2.5"), 1) == 3


def test_billing_answer_updates_the_charge_and_a_rejection_opens_a_work_item(
    store_location: Path | str,
) -> None:
    """A delivered charge is accepted; a charge the billing system refused (AE → dead letter)
    is rejected and opens a CHARGE_REJECTED work item."""
    ledger = Ledger(store_location)
    ledger.book(event("CU-6"))
    ledger.book(event("CU-7"))
    store, now = ledger.store, time.time()
    book = delivery_book(store)  # the outcomes as the runtime records them, hooks included
    (first,) = store.claim_deliveries("usage", "billing", 10, now, 60)  # ordered per encounter
    book.delivery_succeeded(first.id, b"MSA|AA", now)
    (second,) = store.claim_deliveries("usage", "billing", 10, now, 60)
    book.delivery_dead(second.id, "billing answered AE: unknown encounter", now)
    rows = store._conn().execute("SELECT status FROM charges ORDER BY id").fetchall()
    assert rows == [("accepted",), ("rejected",)]
    items = store._conn().execute("SELECT kind, subject, detail FROM work_items").fetchall()
    assert items == [
        ("CHARGE_REJECTED", "CU-7|STENT|20260116", "billing answered AE: unknown encounter")
    ]


def test_unbilled_usage_opens_one_work_item_per_event(store_location: Path | str) -> None:
    """Chargeable usage whose charge is not accepted after the delay opens UNBILLED_USAGE once;
    an accepted charge and non-chargeable usage do not."""
    ledger = Ledger(store_location)
    ledger.book(event("CU-8"))
    ledger.book(event("CU-9", item="GAUZE", chargeable=False))
    store, book = ledger.store, delivery_book(ledger.store)
    assert ledger.unbilled(older_than=3600, now=time.time()) == 0  # not old enough yet
    later = time.time() + 7200
    assert ledger.unbilled(older_than=3600, now=later) == 1
    assert ledger.unbilled(older_than=3600, now=later) == 0  # already open
    (delivery,) = store.claim_deliveries("usage", "billing", 10, later, 60)
    book.delivery_succeeded(delivery.id, b"MSA|AA", later)
    ledger.book(event("CU-10"))
    (second,) = store.claim_deliveries("usage", "billing", 10, later, 60)
    book.delivery_succeeded(second.id, b"MSA|AA", later)
    assert ledger.unbilled(older_than=3600, now=later + 7200) == 0
    kinds = store._conn().execute("SELECT kind, subject FROM work_items").fetchall()
    assert kinds == [("UNBILLED_USAGE", "CU-8|STENT|20260116")]


def test_fhir_charge_items_validate_in_both_versions() -> None:
    """The ChargeItem built for billing validates with fhir.resources as R5 and as R4B, keeps
    the encounter in the version's own element and the quantity as an exact decimal."""
    import json

    from fhir.resources.chargeitem import ChargeItem as R5
    from fhir.resources.R4B.chargeitem import ChargeItem as R4B

    from engine.domains.ledger.billing import charge_item

    ev = event("CU-11", qty="2", patient="MRN1", billing_quantity=Decimal("2.5"), billing_uom="EA")
    r5 = json.loads(charge_item(ev, "R5")[0])
    R5.model_validate(r5)
    assert r5["encounter"]["identifier"]["value"] == "ENC-1"
    assert b'"value": 2.5' in charge_item(ev, "R5")[0]
    r4b = json.loads(charge_item(ev, "R4B")[0])
    R4B.model_validate(r4b)
    assert r4b["context"]["identifier"]["value"] == "ENC-1"
    assert r4b["identifier"][0]["value"] == "CU-11|STENT|20260116"


def delivery_book(store: SqliteStore) -> DeliveryBook:
    """The runtime's delivery outcomes for a channel ``usage`` whose ledger section is ROUTES."""
    section = LEDGER.spec.parse(
        yaml.compose("{issue: erp, charge: billing, requisition: erp_req}"),
        Context("<test>"),
        "",
    )
    binding = LEDGER.bind("usage", section, _NoMappings())
    return DeliveryBook(store, lambda channel: [binding] if channel == "usage" else [])


class _NoMappings:
    mappings = None


def test_the_rules_hold_on_the_in_memory_repository_without_sql() -> None:
    """The in-memory repository answers what the rules ask: a charge accepted and then a
    second one rejected, the rejection opening one CHARGE_REJECTED item; unbilled usage once."""
    repo = InMemoryLedgerRepository()
    _book(repo, "m1", [event("CU-12"), event("CU-13")], 0.0)
    charge_meta = {"effect": "charge", "event_key": "CU-12|STENT|20260116"}
    assert rules.charge_outcome(
        repo, charge_meta, "accepted", None, 1.0, message_id="m1", correlation_id="m1"
    )
    rejected = {"effect": "charge", "event_key": "CU-13|STENT|20260116"}
    assert rules.charge_outcome(
        repo, rejected, "rejected", "AE", 1.0, message_id="m1", correlation_id="m1"
    )
    assert not rules.charge_outcome(
        repo, {"effect": "issue"}, "accepted", None, 1.0, message_id="m1", correlation_id="m1"
    )
    assert [c["status"] for _, c in sorted(repo.charges.items())] == ["accepted", "rejected"]
    assert [(w["kind"], w["subject"]) for w in repo.work_items] == [
        ("CHARGE_REJECTED", "CU-13|STENT|20260116")
    ]
    assert rules.find_unbilled(repo, older_than=10, now=100.0) == 1  # CU-13 only
    assert rules.find_unbilled(repo, older_than=10, now=100.0) == 0


def test_the_charge_outcome_update_uses_an_index(tmp_path: Path) -> None:
    """What runs for every accepted or rejected charge looks its row up through an index (a
    full scan of charges grew with the table; moved here from the store's tests)."""
    store = Ledger(tmp_path / "w.db").store
    sql = "UPDATE charges SET status = 'accepted', updated_at = 1 WHERE event_id = 7"
    plan = [r[-1] for r in store._conn().execute("EXPLAIN QUERY PLAN " + sql)]
    assert not any(line.startswith("SCAN") for line in plan), plan


def test_an_issue_over_its_line_limit_is_split_with_a_key_per_part(ledger: Any) -> None:
    """1,201 lines with a limit of 500 make three ERP issue documents (500, 500, 201), each
    with its own idempotency key derived from its own events, every line in exactly one; a
    resend of the same lines books and sends nothing."""
    events = [event(f"CU-S{i:04d}", chargeable=False) for i in range(1201)]
    repo = ledger.repo if isinstance(ledger, MemoryLedger) else None
    if repo is None:
        with ledger.store.transaction("book") as tx:
            out = book_events(
                repository(tx),
                message_id="m",
                correlation_id="m",
                channel="usage",
                events=events,
                routes=ROUTES,
                policies={},
                now=1.0,
                issue_max_lines=500,
            )
    else:
        out = book_events(
            repo,
            message_id="m",
            correlation_id="m",
            channel="usage",
            events=events,
            routes=ROUTES,
            policies={},
            now=1.0,
            issue_max_lines=500,
        )
    issues = [o for o in out if o.destination == "erp"]
    docs = [json.loads(o.payload) for o in issues]
    assert [len(d["lines"]) for d in docs] == [500, 500, 201]
    assert [d["part"] for d in docs] == ["1/3", "2/3", "3/3"]
    keys = [o.meta["idempotency_key"] for o in issues]
    assert len(set(keys)) == 3
    first = ",".join(e.business_key for e in events[:500])
    assert keys[0] == effect_key("usage", "erp", first, "issue")
    lines = [line["event_key"] for d in docs for line in d["lines"]]
    assert lines == [e.business_key for e in events]
    _, again = ledger.book(*events)
    assert again == []


def test_an_issue_within_its_limit_is_one_document_keyed_as_before() -> None:
    """Below the limit nothing changes: one document, no part marker, the same key."""
    repo = InMemoryLedgerRepository()
    out = _book(repo, "m", [event("CU-W1", chargeable=False)], 0.0)
    (issue,) = [o for o in out if o.destination == "erp"]
    assert "part" not in json.loads(issue.payload)
    assert issue.meta["idempotency_key"] == effect_key(
        "usage", "erp", "CU-W1|STENT|20260116", "issue"
    )


def _credit_for_a_line_never_booked() -> ConsumptionEvent:
    return event(
        "CU-OLD",
        qty="2",
        kind="credit",
        business_key="CU-OLD|STENT|20260116|CD",
        reverses="CU-OLD|STENT|20260116",
    )


def _book_with(repo: Any, events: Any, **options: Any) -> list[Outbound]:
    return book_events(
        repo,
        message_id="m",
        correlation_id="m",
        channel="usage",
        events=events,
        routes=ROUTES,
        policies=POLICIES,
        charge_payload=charge,
        now=5.0,
        **options,
    )


def test_a_credit_for_a_line_never_booked_is_held_for_a_person() -> None:
    """An orphan credit moves no stock and credits nothing: it is held with an ORPHAN_CREDIT
    work item; sent again it adds nothing; released, it books as it came (stock back, a CD
    charge); a rejected one is closed with nothing booked."""
    repo = InMemoryLedgerRepository()
    repo.seed_onhand([("LOC-CATH", "STENT", Decimal(3), "EA")], 0.0)
    credit = _credit_for_a_line_never_booked()
    assert _book_with(repo, [credit]) == []
    assert repo.onhand("LOC-CATH", "STENT") == Decimal(3)
    assert repo.charges == {}
    (held,) = repo.held_credits()
    assert (held.business_key, held.reverses, held.status) == (
        "CU-OLD|STENT|20260116|CD",
        "CU-OLD|STENT|20260116",
        "held",
    )
    assert [(w["kind"], w["subject"]) for w in repo.work_items] == [
        ("ORPHAN_CREDIT", "CU-OLD|STENT|20260116|CD")
    ]
    assert _book_with(repo, [credit]) == []  # the resend
    assert len(repo.held_credits()) == 1 and len(repo.work_items) == 1
    out = rules.release_credit(
        repo, held, routes=ROUTES, policies=POLICIES, charge_payload=charge, now=6.0
    )
    assert sorted(o.destination for o in out) == ["billing", "erp"]
    assert repo.onhand("LOC-CATH", "STENT") == Decimal(5)
    assert [c["transaction_type"] for c in repo.charges.values()] == ["CD"]
    assert repo.held_credits() == [] and repo.held_credits("released")[0].id == held.id
    with pytest.raises(ValueError, match="released"):
        rules.reject_credit(repo, repo.held_credits("released")[0], 7.0)


def test_orphan_credits_booked_as_they_come_when_the_channel_says_so() -> None:
    """``orphan_credits: book`` (credits of charges posted before go-live): booked at once."""
    repo = InMemoryLedgerRepository()
    out = _book_with(repo, [_credit_for_a_line_never_booked()], orphan_credits="book")
    assert sorted(o.destination for o in out) == ["billing", "erp"]
    assert repo.held_credits() == []


def test_the_par_sweep_orders_for_any_breach_once() -> None:
    """A location below its reorder point for any reason (its starting figure, a count) gets
    one requisition, rounded to the pack, keyed by the requisition; none while one is open."""
    repo = InMemoryLedgerRepository()
    repo.seed_onhand([("LOC-CATH", "STENT", Decimal(2), "EA")], 0.0)
    breaches = rules.par_breaches(repo, POLICIES)
    assert [(p.item_id, q) for p, q, _ in breaches] == [("STENT", Decimal(2))]
    out = rules.par_sweep(
        repo,
        breaches,
        channel="usage",
        destination="erp_req",
        message_id="sweep",
        correlation_id="sweep",
        now=1.0,
    )
    (req,) = out
    doc = json.loads(req.payload)
    assert (doc["quantity"], doc["uom"]) == ("10", "EA")  # par 10 - 2 = 8 -> 2 packs of 5
    assert "par sweep" in doc["reason"]
    assert rules.par_breaches(repo, POLICIES) == []  # one is open now
    repo.seed_onhand([("LOC-CATH", "OTHER", Decimal(0), "EA")], 0.0)  # no policy: nothing
    assert rules.par_breaches(repo, POLICIES) == []


def test_the_ledger_keeps_its_records_for_its_own_retention(store_location: Path | str) -> None:
    """Past the ledger's retention, events with a settled charge (or none) go with their stock
    moves and charges; one whose charge is still pending stays; on-hand is never pruned."""
    ledger = Ledger(store_location)
    ledger.seed(10)
    ledger.book(event("CU-R1", chargeable=False))
    ledger.book(event("CU-R2"))  # its charge stays pending
    with ledger.store.transaction("prune") as tx:
        deleted = repository(tx).prune(time.time() + 1, 100)
    assert deleted == 3  # CU-R1's event, its stock move and its ERP posting
    assert ledger.count("consumption_events") == 1
    assert ledger.count("erp_postings") == 1  # CU-R2's
    assert ledger.count("charges") == 1
    assert ledger.onhand() == Decimal(8)


def test_the_reconciliation_follows_what_the_erp_did_with_each_issue(
    store_location: Path | str,
) -> None:
    """Issues the ERP posted (one a return), one dead-lettered, one refused: by location, item
    and service month, the ledger's value against the postings, with each difference's reason
    and message; the same figures on both dialects."""
    from engine.domains.ledger import reports

    ledger = Ledger(store_location)
    ledger.seed(10)
    used = event("CU-A", qty="1.5")
    _, (issue_a, _charge) = ledger.book(used)
    _, (issue_b, _) = ledger.book(
        event("CU-B", qty="0.5", kind="credit", reverses=used.business_key)
    )
    dead_mid, (issue_c, _) = ledger.book(event("CU-C", service_time="2026-02-03T10:00:00Z"))
    refused_mid, (issue_d, _) = ledger.book(event("CU-D", qty="3"))
    cost = {"STENT": Decimal("100.00")}.get
    sap = b'{"MaterialDocument": "4900001", "MaterialDocumentYear": "2026"}'
    outcomes = [
        (issue_a, "delivered", None, sap),
        (issue_b, "delivered", None, b'{"id": "ISS-2"}'),
        (issue_c, "dead", "gave up after 10 attempts: 503", None),
        (issue_d, "dead", "permanent failure: 422 item blocked", None),
    ]
    with ledger.store.transaction("settle") as tx:
        for issue, outcome, reason, answer in outcomes:
            assert issue["meta"]["effect"] == "issue"
            lines = rules.issue_outcome(
                repository(tx), issue["meta"], outcome, reason, answer, time.time(), cost
            )
            assert lines == 1
    with ledger.store.reading() as rd:
        data = reports.reconciliation(rd, 0.0, cost)
        documents = rd.connection.execute(
            "SELECT document FROM erp_postings WHERE document IS NOT NULL ORDER BY document"
        ).fetchall()
    assert [d[0] for d in documents] == ["4900001/2026", "ISS-2"]
    shown = [
        (
            r["period"],
            *(Decimal(r[k]) for k in reports.RECONCILIATION_FIGURES),
            {k: Decimal(v) for k, v in r["reasons"].items()},
            r["messages"],
        )
        for r in data["rows"]
    ]
    assert shown == [
        ("2026-01", 4, 400, 1, 100, 3, 300, {"rejected by the ERP": 3}, [refused_mid]),
        ("2026-02", 1, 100, 0, 0, 1, 100, {"dead-lettered": 1}, [dead_mid]),
    ]
    assert [(p["period"], Decimal(p["difference_value"])) for p in data["periods"]] == [
        ("2026-01", 300),
        ("2026-02", 100),
    ]


def test_utilization_by_physician_payer_and_procedure(store_location: Path | str) -> None:
    """Usage grouped by what its events carry (ids, payer, procedure; 'not given' where the
    message said nothing), with supply cost and margin; the same on both dialects."""
    from engine.domains.ledger import reports

    ledger = Ledger(store_location)
    ledger.seed(10)
    ledger.book(
        event("CU-1", qty="2", unit_price=Decimal("150.00"), performer="DR1", payer="AET"),
        event("CU-2", qty="1", performer="DR1", procedure="27447", payer_kind="insurer"),
    )
    ledger.book(event("CU-3", qty="0.5", chargeable=False, orderer="DR9", procedure="27447"))
    cost = {"STENT": Decimal("40")}.get
    with ledger.store.reading() as rd:

        def grouped(by: str) -> list[tuple[Any, ...]]:
            return [
                (
                    *(r[c] for c in reports.UTILIZATION_GROUPS[by]),
                    r["events"],
                    *(Decimal(r[k]) for k in reports.UTILIZATION_FIGURES[1:]),
                )
                for r in reports.utilization(rd, 0.0, by=by, cost=cost)
            ]

        assert grouped("physician") == [
            ("DR1", 2, 3, 3, 0, 300, 120, 180),
            ("not given", 1, Decimal("0.5"), 0, Decimal("0.5"), 0, 20, -20),
        ]
        assert grouped("ordering_physician")[0][:2] == ("DR9", 1)
        assert grouped("procedure") == [
            ("27447", 2, Decimal("1.5"), 1, Decimal("0.5"), 0, 60, -60),
            ("not given", 1, 2, 2, 0, 300, 80, 220),
        ]
        assert [r[:3] for r in grouped("payer")] == [
            ("AET", "not given", 1),
            ("not given", "insurer", 1),
            ("not given", "not given", 1),
        ]
