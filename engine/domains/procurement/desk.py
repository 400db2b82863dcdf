"""The AP desk: what a person does with held invoices, and the receipts nobody invoiced.

``wharf invoices`` lists invoices (held ones with their reasons, and how many of their lines a
line-level hold already posted); ``wharf invoices release N`` posts a held invoice's remaining
lines to accounts payable as they are (the person accepts the variance) and ``wharf invoices
reject N`` closes it without posting them; both are audited with who and why.
``wharf receipts --unmatched --older-than 30d`` lists received quantities not yet invoiced.

The reads take a :class:`~engine.domains.procurement.repository.ProcurementRepository` (the
caller's ``repository(store.reading())``); :func:`release_invoice` and :func:`reject_invoice`
open a store transaction and work through the repository and the spine's outbox, audit and
work items. :func:`held_invoice`, :func:`ap_release` and :func:`close` are their steps, over the
repository only.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from engine.domains.procurement.book import (
    _set_from_json,
    _their_units,
    ap_invoice,
    ap_posting_key,
)
from engine.domains.procurement.domain import PARTNERS, converter, repository
from engine.domains.procurement.match import Converter, match_invoice
from engine.domains.procurement.partners import Partner
from engine.domains.procurement.repository import ProcurementRepository, StoredInvoice
from engine.errors import StoreError
from engine.model import Outbound, effect_key, to_json_bytes
from engine.x12.documents import read_invoice


def invoices(
    repo: ProcurementRepository,
    status: str | None = None,
    channels: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Every invoice (or those with ``status``) with its reasons, oldest first; of
    ``channels`` only (the vendor's inbound channel), when given."""
    return repo.invoices(status, channels)


def invoice_channel(repo: ProcurementRepository, invoice_id: int) -> tuple[bool, str | None]:
    """Whether invoice ``invoice_id`` exists, and the channel it came in on (None: unknown,
    recorded before the channel was)."""
    found = repo.invoice(invoice_id)
    return (found is not None, found.channel if found is not None else None)


def unmatched_receipts(
    repo: ProcurementRepository,
    *,
    older_than: float,
    now: float,
    channels: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Per PO line: received (base unit) minus invoiced by matched or released invoices, for
    lines whose oldest receipt is older than ``older_than`` seconds and still not covered;
    with ``channels``, of the receipts recorded by those channels only."""
    received: dict[tuple[str, str], dict[str, Any]] = {}
    for po, line, item, qty, at in repo.received_lines(channels):
        r = received.setdefault(
            (po, line),
            {
                "po_number": po,
                "po_line": line,
                "item_id": item,
                "received": Decimal(0),
                "oldest": at,
            },
        )
        r["received"] += qty
        r["oldest"] = min(r["oldest"], at)
    for po, line, qty in repo.invoiced_lines():
        if (po, line) in received:
            received[(po, line)]["received"] -= qty
    out = []
    for r in received.values():
        if r["received"] > 0 and now - r["oldest"] >= older_than:
            r["uninvoiced"] = str(r.pop("received"))
            r["age_days"] = round((now - r["oldest"]) / 86400, 1)
            out.append(r)
    return sorted(out, key=lambda r: r["oldest"])


def held_invoice(repo: ProcurementRepository, invoice_id: int) -> StoredInvoice:
    """The invoice ``invoice_id``; a StoreError unless it is held."""
    found = repo.invoice(invoice_id)
    if found is None:
        raise StoreError(f"no invoice {invoice_id}")
    if found.status != "held":
        raise StoreError(
            f"invoice {invoice_id} ({found.invoice_number}) is {found.status}: only a held "
            "invoice can be released or rejected"
        )
    return found


def ap_release(
    repo: ProcurementRepository,
    held: StoredInvoice,
    partner: Partner,
    convert: Converter,
    *,
    channel: str,
    destination: str,
    actor: str,
    note: str,
    decimals: int = 4,
) -> Outbound:
    """The AP invoice for a held invoice posted as it is, by ``actor``: the lines not posted
    yet (all of them, with the same idempotency key as the book's, so AP never gets the invoice
    twice; or, after a line-level hold posted some, the rest with the key of those lines)."""
    invoice = read_invoice(_set_from_json(held.body))
    result = match_invoice(
        invoice,
        repo.order(held.po_number),
        (),
        convert=_their_units(partner, convert),
        tolerance=partner.tolerance,
    )
    posted = repo.posted_lines(held.id)
    rest = [ln for ln in result.lines if ln.invoice_line not in posted]
    whole = not posted
    doc = ap_invoice(
        partner,
        invoice,
        result,
        held.correlation_id or "",
        lines=rest,
        with_header=whole,
        decimals=decimals,
    )
    doc.update(match="released", released_by=actor, note=note)
    subject = f"{held.partner}:{held.invoice_number}"
    key = effect_key(
        channel, destination, ap_posting_key(subject, None if whole else rest), "ap_invoice"
    )
    meta = {"idempotency_key": key, "effect": "ap_invoice"}
    repo.mark_posted(held.id, [ln.invoice_line for ln in rest])
    return Outbound(destination, to_json_bytes(doc), "application/json", None, meta)


def close(repo: ProcurementRepository, held: StoredInvoice, status: str, now: float) -> None:
    """Close a held invoice (``released`` or ``rejected``) and its INVOICE_HELD work item."""
    repo.close_invoice(held.id, status, now)
    subject = f"{held.partner}:{held.invoice_number}"
    repo.resolve_work_items("INVOICE_HELD", subject=subject, now=now)


def release_invoice(
    store: Any, project: Any, invoice_id: int, *, actor: str, note: str, now: float
) -> dict[str, Any]:
    """Post a held invoice to AP as it is, through its channel's ``procurement.ap``."""
    with store.transaction(f"release_invoice({invoice_id})") as tx:
        repo = repository(tx)
        held = held_invoice(repo, invoice_id)
        channel = tx.message_channel(held.message_id) if held.message_id else None
        defn = project.channels.get(channel)
        if defn is None or defn.config.procurement is None or not defn.config.procurement.ap:
            raise StoreError(f"channel {channel!r} of invoice {invoice_id} has no procurement.ap")
        partner = project.extras[PARTNERS][held.partner]
        dest = defn.config.procurement.ap
        delivery = ap_release(
            repo,
            held,
            partner,
            converter(project.mappings, partner),
            channel=channel,
            destination=dest,
            actor=actor,
            note=note,
            decimals=defn.config.procurement.ap_price_decimals,
        )
        tx.enqueue(held.message_id, [delivery], now, correlation_id=held.correlation_id)
        close(repo, held, "released", now)
        tx.audit(
            actor,
            "invoice.release",
            str(invoice_id),
            {"invoice": held.invoice_number, "partner": held.partner, "note": note},
            now,
        )
    return {"invoice": held.invoice_number, "status": "released", "ap_destination": dest}


def reject_invoice(
    store: Any, invoice_id: int, *, actor: str, note: str, now: float
) -> dict[str, Any]:
    """Close a held invoice without posting it (the vendor is asked for a corrected one)."""
    with store.transaction(f"reject_invoice({invoice_id})") as tx:
        repo = repository(tx)
        held = held_invoice(repo, invoice_id)
        close(repo, held, "rejected", now)
        tx.audit(
            actor,
            "invoice.reject",
            str(invoice_id),
            {"invoice": held.invoice_number, "partner": held.partner, "note": note},
            now,
        )
    return {"invoice": held.invoice_number, "status": "rejected"}
