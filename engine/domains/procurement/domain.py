"""Procurement as a domain plugged into the spine (:class:`engine.interfaces.Domain`).

A channel with a ``procurement:`` section applies the X12 records its transforms hand over
(``ctx.book``) in the message's own commit: purchase orders sent as 850s with durable control
numbers, inbound interchanges acknowledged (TA1, 997/999) and applied once (855 PO statuses,
856 receipts, 810 three-way match to AP or held as an INVOICE_HELD work item). Its trading
partners (``mappings/trading_partners.yaml``) are loaded and linted with the project and lent to
components as the ``trading_partners`` resource; the overdue-acknowledgement watch is its job.
Its records are kept behind :func:`repository` (SQLite for the store's dialect); the
``x12_partner`` destination that takes its X12 files registers with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from engine.domains.ledger.rules import posting_status

# Procurement's own component: imported here so that it registers with the domain.
from engine.domains.procurement import schema, x12_partner  # noqa: F401 (registers it)
from engine.domains.procurement.book import ProcurementRoutes, book_x12, flag_overdue_acks
from engine.domains.procurement.codelists import CodeLists, load_codelists
from engine.domains.procurement.match import converter_from_graph
from engine.domains.procurement.partners import PARTNERS_FILE, TradingPartners, load_partners
from engine.domains.procurement.records import (
    ErpReceipt,
    ErpReturn,
    InboundInterchange,
    PoRelease,
)
from engine.domains.procurement.repository import (
    ProcurementRepository,
    SqliteProcurementRepository,
)
from engine.errors import ConfigError, LintFailed, MappingMiss
from engine.interfaces import Booking, Job, Migration, Transaction
from engine.model import Outbound
from engine.registry import register_domain
from engine.spec import Duration, Field, Int, Spec, Str
from engine.uom import UomGraph, graph_of

NAME = Str(pattern=r"[a-z][a-z0-9_]*", hint="a name of lowercase letters, digits and _")
DAY = 86400.0
PARTNERS = "trading_partners"
CODELISTS = "x12_codelists"

PROCUREMENT_SPEC = Spec(
    "procurement",
    [
        Field(
            "partner_out",
            NAME,
            None,
            "Destination that takes X12 files for trading partners (850, 997/999, TA1); an "
            "`x12_partner` destination delivers each the way its partner is configured.",
        ),
        Field(
            "po_status",
            NAME,
            None,
            "Destination that takes PO transmissions and 855 line statuses (`{po_number}` and "
            "`{action}` in its URL: `transmissions` or `acknowledgements`).",
        ),
        Field("receipts", NAME, None, "Destination that takes goods receipts (from 856s)."),
        Field("ap", NAME, None, "Destination that takes matched invoices for accounts payable."),
        Field(
            "duplicate_window",
            Duration(lo=0),
            30 * DAY,
            "An interchange with the same sender and ISA13 within this window is acknowledged "
            "again and not applied again.",
        ),
        Field(
            "ap_price_decimals",
            Int(0, 10),
            4,
            "Decimals of the unit prices the `ap` destination takes (the AP system's "
            "precision); line amounts are rounded to the cent and tie to the invoice total.",
        ),
    ],
    description=(
        "Apply the X12 records that transforms book (`ctx.book`): purchase orders sent as "
        "850s with durable control numbers, and inbound interchanges acknowledged (TA1, "
        "997/999) and applied once (855 PO statuses, 856 receipts, 810 three-way match to AP "
        "or held as an INVOICE_HELD work item), in the same commit as the message. Trading "
        "partners come from `mappings/trading_partners.yaml`."
    ),
    example="procurement:\n  partner_out: vendors\n  po_status: erp_po\n  receipts: erp_gr\n"
    "  ap: erp_ap",
)


def repository(tx: Transaction) -> ProcurementRepository:
    """Procurement's repository for the store that opened ``tx`` (a transaction, or the
    read-only handle of ``store.reading()``)."""
    # One SQL for both dialects: the store's connection speaks SQLite's on PostgreSQL too
    # (engine/store/pgconn.py).
    if tx.dialect in ("sqlite", "postgresql"):
        return SqliteProcurementRepository(tx)
    raise ValueError(f"procurement has a repository for sqlite and postgresql (got {tx.dialect!r})")


def routes_of(section: Any) -> ProcurementRoutes:
    """Where a channel's ``procurement:`` section sends each effect."""
    return ProcurementRoutes(
        partner_out=section.partner_out,
        po_status=section.po_status,
        receipts=section.receipts,
        ap=section.ap,
        duplicate_window=section.duplicate_window,
        ap_price_decimals=section.ap_price_decimals,
    )


def converter(mappings: Any, partner: Any) -> Any:
    """Unit conversions (``uom_conversions``) for the match, with the partner's vendor rows
    first."""
    if "uom_conversions" in mappings:
        graph = graph_of(mappings.table("uom_conversions"))
    else:
        graph = UomGraph([])
    vendor = partner.vendors[0] if partner.vendors else None
    return converter_from_graph(graph, vendor)


class ProcurementBinding:
    """The ``procurement:`` section of one channel."""

    def __init__(self, domain: ProcurementDomain, channel: str, section: Any, snapshot: Any):
        self.domain = domain
        self.channel = channel
        self.section = section
        self.mappings = snapshot.mappings
        self.partners = snapshot.extras.get(PARTNERS)
        self.routes = routes_of(section)
        self.destinations = frozenset(
            d for d in (section.partner_out, section.po_status, section.receipts, section.ap) if d
        )

    def accepts(self, record: Any) -> bool:
        return isinstance(record, PoRelease | InboundInterchange | ErpReceipt | ErpReturn)

    def converter(self, partner: Any) -> Any:
        return converter(self.mappings, partner)

    def book(self, tx: Transaction, message: Booking, records: Sequence[Any]) -> list[Outbound]:
        return book_x12(
            repository(tx),
            records=records,
            channel=message.channel,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            routes=self.routes,
            partners=self.partners,
            converter=self.converter,
            now=message.now,
        )

    def work_item_for(self, error: Exception) -> tuple[str, str, str] | None:
        if isinstance(error, MappingMiss):
            return ("MISSING_MAPPING", f"{error.table}:{error.key}", str(error))
        return None

    def settled(
        self, tx: Transaction, delivery: Any, outcome: str, reason: str | None, now: float
    ) -> None:
        """A goods receipt the ERP posted, dead-lettered or refused: its lines' receipt
        postings follow (inventory-to-finance reconciliation); otherwise procurement follows its
        documents' acknowledgements, not deliveries; a retry changes nothing."""
        meta = delivery.meta or {}
        status = posting_status(outcome, reason)
        if status is None or delivery.destination != self.routes.receipts:
            return
        if meta.get("effect") != "receipt":
            return
        repository(tx).settle_receipt_postings(
            str(meta.get("idempotency_key") or ""), status, reason, now
        )


class ProcurementDomain:
    """Procurement (see the module docstring)."""

    name = "procurement"
    spec = PROCUREMENT_SPEC
    description = "X12 purchasing and receipt-to-pay."
    settings: Sequence[Field] = ()
    durable = True  # control numbers never come back after a power loss
    #: mapping tables booking reads besides those the channel names (configuration versions)
    reads = ("trading_partners", "uom_conversions", "items", "locations")

    def migrations(self, dialect: str) -> Sequence[Migration]:
        return schema.migrations(dialect)

    def roles(self, section: Any) -> Mapping[str, str | None]:
        return {
            "partner_out": section.partner_out,
            "po_status": section.po_status,
            "receipts": section.receipts,
            "ap": section.ap,
        }

    def load(
        self, root: Any, env: Mapping[str, str], settings: Any
    ) -> tuple[Mapping[str, Any], list[ConfigError]]:
        """The trading partners (``mappings/trading_partners.yaml``) and the complete X12 code
        lists an installation dropped in (``mappings/x12/codelists/``), linted like the rest."""
        server = getattr(settings, "sftp_server", None)
        accounts = [p.name for p in server.partners] if server is not None else None
        errors: list[ConfigError] = []
        try:
            partners = load_partners(
                Path(root) / PARTNERS_FILE, shown=PARTNERS_FILE, env=env, sftp_accounts=accounts
            )
        except LintFailed as exc:
            partners = TradingPartners({}, PARTNERS_FILE)
            errors += exc.errors
        try:
            codelists = load_codelists(root)
        except LintFailed as exc:
            codelists = CodeLists()
            errors += exc.errors
        return {PARTNERS: partners, CODELISTS: codelists}, errors

    def bind(self, channel: str, section: Any, snapshot: Any) -> ProcurementBinding:
        return ProcurementBinding(self, channel, section, snapshot)

    def jobs(self, settings: Any, bindings: Mapping[str, Any]) -> Sequence[Job]:
        def overdue(tx: Transaction, now: float) -> int:
            return flag_overdue_acks(repository(tx), now)

        return [
            Job(
                "x12 acknowledgement watch",
                60.0,
                overdue,
                alert="x12: {n} interchange(s) without their 997/999 in time (ACK_OVERDUE)",
            )
        ]

    def judged(
        self, tx: Transaction, measure: str, since: float, until: float, within: float, limit: int
    ) -> list[tuple[float, bool]] | None:
        """For the objectives (engine/runtime/slos.py): ``receipts_invoiced``: each receipt
        recorded in (since, until] and whether its PO line was invoiced within ``within``;
        None for a measure it does not keep."""
        if measure != "receipts_invoiced":
            return None
        return repository(tx).receipt_outcomes(since, until, within, limit)

    def prune(self, tx: Transaction, settings: Any, now: float, limit: int) -> int:
        return 0  # purchase orders, receipts and invoices are kept (their retention: a follow-up)

    def start(self, tx: Transaction, bindings: Mapping[str, Any], now: float) -> int:
        return 0


PROCUREMENT = register_domain(ProcurementDomain())
