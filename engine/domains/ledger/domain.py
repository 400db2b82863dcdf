"""The supply ledger as a domain plugged into the spine (:class:`engine.interfaces.Domain`).

A channel with a ``ledger:`` section books the consumption events its transforms hand over
(``ctx.book``) in the message's own commit: perpetual on-hand, an ERP issue, a charge for
chargeable items and one requisition per par breach, once per business key. The billing
system's answer to a charge comes back through :meth:`LedgerBinding.settled`; the unbilled-usage
sweep is the domain's :class:`~engine.interfaces.Job`; the starting on-hand is seeded at start.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from engine.domains.ledger import rules, schema
from engine.domains.ledger.billing import charge_dft, charge_item
from engine.domains.ledger.records import (
    ConsumptionEvent,
    LedgerRoutes,
    ParPolicy,
    RequisitionRequest,
)
from engine.domains.ledger.repository import LedgerRepository, SqliteLedgerRepository
from engine.errors import MappingMiss, MissingLotSerial
from engine.interfaces import Booking, Job, Migration, Transaction
from engine.model import Outbound, to_json_bytes
from engine.registry import register_domain
from engine.spec import Duration, Enum, Field, Int, Spec, Str, TableName

NAME = Str(pattern=r"[a-z][a-z0-9_]*", hint="a name of lowercase letters, digits and _")

LEDGER_SPEC = Spec(
    "ledger",
    [
        Field("issue", NAME, None, "Destination that takes ERP inventory issues."),
        Field("charge", NAME, None, "Destination that takes billing charges (DFT^P03)."),
        Field("requisition", NAME, None, "Destination that takes requisitions."),
        Field(
            "par_levels",
            TableName(),
            None,
            "Mapping table of par policies: location_id, item_id, par, reorder_point, "
            "order_qty, order_uom, pack_size.",
        ),
        Field(
            "onhand",
            TableName(),
            None,
            "Mapping table with the starting on-hand snapshot (location_id, item_id, on_hand, "
            "uom); applied at start where the ledger has no figure yet.",
        ),
        Field("billing_application", Str(), "BILLING", "MSH-5 of the charges sent."),
        Field(
            "orphan_credits",
            Enum("hold", "book"),
            "hold",
            "A credit for a line the ledger never booked: held as an ORPHAN_CREDIT work item "
            "until a person releases it (`wharf credits release`), or booked as it comes "
            "(`book`: for credits of charges posted before go-live).",
        ),
        Field(
            "issue_max_lines",
            Int(1),
            500,
            "Most lines in one ERP issue document: a message with more becomes several "
            "documents, each with its own idempotency key (an ERP refuses an over-large body).",
        ),
        Field(
            "charge_format",
            Enum("hl7_dft", "fhir_r5", "fhir_r4b"),
            "hl7_dft",
            "Charges as an HL7 DFT^P03 (for an MLLP destination) or a FHIR ChargeItem "
            "(R5, or R4B for R4 servers; for an HTTP destination).",
        ),
    ],
    description=(
        "Book the consumption events that transforms produce (`ctx.book`) in the supply "
        "ledger, in the same commit as the message: perpetual on-hand, an ERP issue, a charge "
        "for chargeable items, and one requisition per par breach — once per business key."
    ),
    example="ledger:\n  issue: erp\n  charge: billing\n  requisition: erp_requisitions\n"
    "  par_levels: par_levels",
)

PAR_SWEEP = Field(
    "par_sweep",
    Duration(),
    900.0,
    "How often every par'd location and item is checked against its reorder point, whatever "
    "changed its on-hand (also at start; usage is checked as it is booked; 0 = off).",
)

LEDGER_RETENTION = Field(
    "ledger_retention",
    Duration(),
    7 * 365 * 86400.0,
    "`wharf prune` deletes the ledger's events, stock moves, settled charges, requisitions and "
    "decided credits older than this (finance keeps them as long as it says; 0 = for ever). "
    "On-hand figures are never pruned.",
)

UNBILLED_AFTER = Field(
    "unbilled_after",
    Duration(),
    4 * 3600.0,
    "Chargeable usage with no accepted charge after this long opens an UNBILLED_USAGE "
    "work item (checked every minute, or every quarter of this when that is shorter; "
    "0 = off).",
)


def repository(tx: Transaction) -> LedgerRepository:
    """The ledger's repository for the store that opened ``tx``."""
    # One SQL for both dialects: the store's connection speaks SQLite's on PostgreSQL too
    # (engine/store/pgconn.py).
    if tx.dialect in ("sqlite", "postgresql"):
        return SqliteLedgerRepository(tx)
    raise ValueError(f"the ledger has a repository for sqlite and postgresql (got {tx.dialect!r})")


def add_to_onhand(
    tx: Transaction, location: str, item: str, quantity: Decimal, uom: str, now: float
) -> Decimal:
    """Goods received at a location (procurement's receipts): the ledger's on-hand grows, in
    the store transaction ``tx``."""
    return repository(tx).move_stock(location, item, quantity, uom, now)


def item_cost(mappings: Any, item: str) -> Decimal | None:
    """The item master's (mapping table ``items``) ``unit_cost`` of ``item``, or None."""
    if mappings is None or "items" not in mappings:
        return None
    row = mappings.table("items").rows.get(item)
    cost = row.get("unit_cost") if isinstance(row, dict) else None
    try:
        return None if cost in (None, "") else Decimal(str(cost))
    except ArithmeticError:
        return None


def par_policies(mappings: Any, table: str | None) -> dict[tuple[str, str], ParPolicy]:
    """The par policies of mapping table ``table`` by (location, item)."""
    if table is None:
        return {}
    out = {}
    for row in mappings.table(table).rows.values():
        policy = ParPolicy(
            location_id=str(row["location_id"]),
            item_id=str(row["item_id"]),
            par=Decimal(str(row["par"])),
            reorder_point=Decimal(str(row["reorder_point"])),
            order_qty=Decimal(str(row["order_qty"])),
            uom=str(row.get("order_uom") or "EA"),
            pack_size=int(row.get("pack_size") or 1),
        )
        out[(policy.location_id, policy.item_id)] = policy
    return out


class LedgerBinding:
    """The ``ledger:`` section of one channel."""

    def __init__(self, domain: LedgerDomain, channel: str, section: Any, mappings: Any) -> None:
        self.domain = domain
        self.channel = channel
        self.section = section
        self.routes = LedgerRoutes(
            issue=section.issue, charge=section.charge, requisition=section.requisition
        )
        self.mappings = mappings
        self.policies = par_policies(mappings, section.par_levels)
        self.destinations = frozenset(d for d in vars(self.routes).values() if d)

    def accepts(self, record: Any) -> bool:
        return isinstance(record, ConsumptionEvent | RequisitionRequest)

    def unit_cost(self, item: str) -> Decimal | None:
        """The item master's ``unit_cost`` of ``item`` (per stocking unit), or None."""
        return item_cost(self.mappings, item)

    def charge_payload(
        self, event: ConsumptionEvent, now: float | None = None
    ) -> tuple[bytes, str]:
        """The billing call for ``event``, stamped at ``now`` (the booking's time)."""
        fmt = self.section.charge_format
        if fmt.startswith("fhir"):
            return charge_item(event, "R4B" if fmt == "fhir_r4b" else "R5")
        return charge_dft(event, receiving_application=self.section.billing_application, now=now)

    def _charges_at(self, now: float) -> Any:
        return lambda event: self.charge_payload(event, now)

    def book(self, tx: Transaction, message: Booking, records: Sequence[Any]) -> list[Outbound]:
        return rules.book_events(
            repository(tx),
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            channel=message.channel,
            events=records,
            routes=self.routes,
            policies=self.policies,
            charge_payload=self._charges_at(message.now),
            now=message.now,
            issue_max_lines=self.section.issue_max_lines,
            orphan_credits=self.section.orphan_credits,
        )

    def release_credit(self, tx: Transaction, credit: Any, now: float) -> list[Outbound]:
        """Book a held credit a person released; the deliveries to queue on its message."""
        return rules.release_credit(
            repository(tx),
            credit,
            routes=self.routes,
            policies=self.policies,
            charge_payload=self._charges_at(now),
            now=now,
            issue_max_lines=self.section.issue_max_lines,
        )

    def par_sweep(self, tx: Transaction, now: float) -> int:
        """Requisitions for the par'd items below their reorder point with none open, carried
        by a message of the sweep's own; how many."""
        if not self.routes.requisition or not self.policies:
            return 0
        repo = repository(tx)
        breaches = rules.par_breaches(repo, self.policies)
        if not breaches:
            return 0
        body = to_json_bytes(
            {
                "type": "par_sweep",
                "breaches": [
                    {"location_id": p.location_id, "item_id": p.item_id, "on_hand": str(q)}
                    for p, q, _ in breaches
                ],
            }
        )
        mid, corr = tx.internal_message(
            self.channel, "ledger:par-sweep", body, "application/json", now
        )
        out = rules.par_sweep(
            repo,
            breaches,
            channel=self.channel,
            destination=self.routes.requisition,
            message_id=mid,
            correlation_id=corr,
            now=now,
        )
        tx.finish(mid, status="queued", now=now, outbound=out)
        return len(out)

    def work_item_for(self, error: Exception) -> tuple[str, str, str] | None:
        if isinstance(error, MappingMiss):
            return ("MISSING_MAPPING", f"{error.table}:{error.key}", str(error))
        if isinstance(error, MissingLotSerial):
            return ("MISSING_LOT_SERIAL", f"{error.item}:{error.line}", str(error))
        return None

    def settled(
        self, tx: Transaction, delivery: Any, outcome: str, reason: str | None, now: float
    ) -> None:
        """A charge accepted by billing, or given up on (dead, quarantined): the ledger's
        charge status follows; a stock issue posted by the ERP, dead-lettered or rejected: its
        lines' ERP postings follow; a retry changes nothing."""
        if outcome == "retry":
            return
        if delivery.destination == self.routes.issue:
            rules.issue_outcome(
                repository(tx),
                delivery.meta,
                outcome,
                reason,
                getattr(delivery, "response", None),
                now,
                unit_cost=self.unit_cost,
            )
        if delivery.destination != self.routes.charge:
            return
        rules.charge_outcome(
            repository(tx),
            delivery.meta,
            "accepted" if outcome == "delivered" else "rejected",
            reason,
            now,
            message_id=delivery.message_id,
            correlation_id=delivery.correlation_id,
        )


class LedgerDomain:
    """The supply ledger (see the module docstring)."""

    name = "ledger"
    spec = LEDGER_SPEC
    description = "Supply-ledger booking of consumption events."
    settings: Sequence[Field] = (UNBILLED_AFTER, PAR_SWEEP, LEDGER_RETENTION)
    durable = False
    #: mapping tables booking reads besides those the channel names (configuration versions)
    reads = ("items", "charge_codes", "uom_conversions")
    #: tables its triggers keep from its other rows (a store move leaves them to the target's)
    derived_tables = ("usage_daily", "issue_daily")

    def migrations(self, dialect: str) -> Sequence[Migration]:
        return schema.migrations(dialect)

    def roles(self, section: Any) -> Mapping[str, str | None]:
        return {
            "issue": section.issue,
            "charge": section.charge,
            "requisition": section.requisition,
        }

    def load(
        self, root: Any, env: Mapping[str, str], settings: Any
    ) -> tuple[Mapping[str, Any], list[Any]]:
        return {}, []  # everything it reads is a mapping table

    def bind(self, channel: str, section: Any, snapshot: Any) -> LedgerBinding:
        return LedgerBinding(self, channel, section, snapshot.mappings)

    def jobs(self, settings: Any, bindings: Mapping[str, Any]) -> Sequence[Job]:
        jobs = []
        older_than = getattr(settings, "unbilled_after", 0) or 0
        if older_than:

            def unbilled(tx: Transaction, now: float) -> int:
                return rules.find_unbilled(repository(tx), older_than=older_than, now=now)

            jobs.append(
                Job(
                    "unbilled usage",
                    min(60.0, max(1.0, older_than / 4)),
                    unbilled,
                    alert="unbilled usage: {n} new UNBILLED_USAGE work item(s)",
                )
            )
        every = getattr(settings, "par_sweep", 0) or 0
        if every and any(b.routes.requisition and b.policies for b in bindings.values()):

            def sweep(tx: Transaction, now: float) -> int:
                return sum(b.par_sweep(tx, now) for b in bindings.values())

            jobs.append(
                Job(
                    "par sweep",
                    every,
                    sweep,
                    alert="par sweep: {n} requisition(s) for items below their reorder point",
                    alert_level="info",
                )
            )
        return jobs

    def gauges(self, tx: Transaction) -> Mapping[str, float]:
        """Its business counters for the metrics (cheap: indexed counts)."""
        return {"open_requisitions": float(repository(tx).open_requisitions())}

    def judged(
        self, tx: Transaction, measure: str, since: float, until: float, within: float, limit: int
    ) -> list[tuple[float, bool]] | None:
        """For the objectives (engine/runtime/slos.py): ``reconciliation``: each chargeable
        event booked in (since, until] and whether its charge was accepted within ``within``;
        None for a measure it does not keep."""
        if measure != "reconciliation":
            return None
        return repository(tx).charge_outcomes(since, until, within, limit)

    def prune(self, tx: Transaction, settings: Any, now: float, limit: int) -> int:
        keep = getattr(settings, "ledger_retention", 0) or 0
        return repository(tx).prune(now - keep, limit) if keep else 0

    def start(self, tx: Transaction, bindings: Mapping[str, Any], now: float) -> int:
        """Starting on-hand from each channel's ``onhand`` table where the ledger has none,
        then a par sweep (a location may start below its reorder point)."""
        rows = []
        for binding in bindings.values():
            table = binding.section.onhand
            if table:
                for row in binding.mappings.table(table).rows.values():
                    rows.append(
                        (
                            str(row["location_id"]),
                            str(row["item_id"]),
                            Decimal(str(row["on_hand"])),
                            str(row.get("uom") or "EA"),
                        )
                    )
        seeded = rules.seed_onhand(repository(tx), rows, now) if rows else 0
        return seeded + sum(b.par_sweep(tx, now) for b in bindings.values())


LEDGER = register_domain(LedgerDomain())
