"""The buyer's desk for the PO changes vendors propose in their 855s.

An 855 that acknowledges another quantity, unit, price or date than the PO's is a proposal
(``po_changes``, status ``proposed``), listed by ``wharf po changes``. The buyer decides:

- ``wharf po accept N``: the proposal becomes the PO line's basis (quantity, unit, price) that
  the three-way match uses; the ERP is told (``po_status``, action ``changes``), and the
  PO's held invoices are matched again in the same commit (an invoice at the accepted price
  goes to AP without anyone releasing it by hand);
- ``wharf po reject N``: the PO stays as ordered; the ERP is told.

Both are audited with who and why, and the PO's PO_CHANGED work item is resolved once no
proposal of it is left open. :func:`accept_change` and :func:`reject_change` open a store
transaction and work through the repository, the book and the spine's outbox and audit.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from engine.domains.procurement.book import _their_units, rematch_po
from engine.domains.procurement.domain import PARTNERS, converter, repository, routes_of
from engine.domains.procurement.repository import ProcurementRepository
from engine.errors import StoreError
from engine.model import Outbound, effect_key, to_json_bytes

DECISIONS = {"accept": "accepted", "reject": "rejected"}


def changes(
    repo: ProcurementRepository,
    status: str | None = "proposed",
    po_number: str | None = None,
    channels: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Proposed PO changes (or those with ``status``; None: all), oldest first; of
    ``channels`` only (the vendor's inbound channel), when given."""
    return repo.po_changes(status, po_number, channels)


def _open_change(repo: ProcurementRepository, change_id: int) -> dict[str, Any]:
    found = repo.po_change(change_id)
    if found is None:
        raise StoreError(f"no PO change {change_id}")
    if found["status"] != "proposed":
        raise StoreError(
            f"PO change {change_id} (PO {found['po_number']} line {found['line']}) is "
            f"{found['status']}: only a proposed change can be accepted or rejected"
        )
    return found


def _section(tx: Any, project: Any, message_id: str | None, change_id: int) -> tuple[str, Any]:
    channel = tx.message_channel(message_id) if message_id else None
    defn = project.channels.get(channel) if channel else None
    if defn is None or defn.config.procurement is None:
        raise StoreError(f"channel {channel!r} of PO change {change_id} has no procurement section")
    return channel, defn.config.procurement


def decide_change(
    store: Any,
    project: Any,
    change_id: int,
    decision: str,
    *,
    actor: str,
    note: str,
    now: float,
) -> dict[str, Any]:
    """Accept or reject proposal ``change_id`` (see the module docstring)."""
    if decision not in DECISIONS:
        raise ValueError(f"'decision' must be accept or reject (got {decision!r})")
    status = DECISIONS[decision]
    with store.transaction(f"{decision}_po_change({change_id})") as tx:
        repo = repository(tx)
        change = _open_change(repo, change_id)
        channel, section = _section(tx, project, change["message_id"], change_id)
        partner = project.extras[PARTNERS][change["partner"]]
        po, line = change["po_number"], change["line"]
        basis = None
        if status == "accepted":
            basis = _accept(repo, project, partner, change)
        repo.decide_po_change(change_id, status, actor, note, now)
        tx.audit(
            actor,
            f"po.change.{decision}",
            str(change_id),
            {
                "po_number": po,
                "line": line,
                "partner": partner.id,
                "note": note,
                **({"basis": basis} if basis else {}),
            },
            now,
        )
        body = {
            "status": status,
            "change_id": change_id,
            "line": line,
            "ack_code": change["ack_code"],
            "quantity": _text(change["quantity"]),
            "unit": change["uom"],
            "unit_price": _text(change["unit_price"]),
            "ship_date": change["ship_date"],
            "decided_by": actor,
            "note": note,
        }
        if section.po_status:
            key = effect_key(channel, section.po_status, f"po-change:{change_id}", "po_change")
            tx.enqueue(
                change["message_id"],
                [
                    Outbound(
                        section.po_status,
                        to_json_bytes(body),
                        "application/json",
                        None,
                        {
                            "idempotency_key": key,
                            "effect": "po_change",
                            "po_number": po,
                            "action": "changes",
                        },
                    )
                ],
                now,
                correlation_id=change["correlation_id"],
            )
        rematched = 0
        if status == "accepted":
            for message_id, correlation_id, outbound in rematch_po(
                repo,
                po,
                partner,
                routes=routes_of(section),
                partners=project.extras[PARTNERS],
                converter=lambda p: converter(project.mappings, p),
                channel=channel,
                now=now,
                message_of=lambda invoice_id: _message_of(repo, invoice_id),
            ):
                rematched += 1
                if outbound:
                    tx.enqueue(message_id, outbound, now, correlation_id=correlation_id)
        if not repo.po_changes("proposed", po):
            repo.resolve_work_items("PO_CHANGED", subject=f"{partner.id}:{po}", now=now)
    return {
        "change": change_id,
        "po_number": po,
        "line": line,
        "status": status,
        "invoices_matched_again": rematched,
    }


def _message_of(repo: ProcurementRepository, invoice_id: int) -> tuple[str, str]:
    stored = repo.invoice(invoice_id)
    if stored is None or stored.message_id is None:
        raise StoreError(f"invoice {invoice_id} has no message to post under")
    return stored.message_id, stored.correlation_id or stored.message_id


def _accept(
    repo: ProcurementRepository, project: Any, partner: Any, change: dict[str, Any]
) -> dict[str, str]:
    """The proposal becomes the PO line's basis: its quantity and unit (in the item's base
    unit too) and its price (converted to the new unit when the 855 priced another one)."""
    order = repo.order(change["po_number"])
    line = next(
        (ln for ln in (order.lines if order else ()) if ln.line_number == change["line"]), None
    )
    if line is None:
        raise StoreError(f"PO {change['po_number']} has no line {change['line']}")
    convert = _their_units(partner, converter(project.mappings, partner))
    unit = change["uom"] or line.unit
    quantity = change["quantity"] if change["quantity"] is not None else line.quantity
    price = change["unit_price"] if change["unit_price"] is not None else line.unit_price
    if price is None:
        price = Decimal(0)
    if change["unit_price"] is None and unit != line.unit:
        # the old price was per the old unit: per the new one it scales with the units
        price = price * convert(line.item_id, unit, line.unit)
    base = quantity * convert(line.item_id, unit, line.base_unit)
    repo.set_po_line_basis(
        change["po_number"],
        change["line"],
        quantity=quantity,
        uom=unit,
        unit_price=price,
        base_quantity=base,
    )
    return {"quantity": str(quantity), "uom": unit, "unit_price": str(price)}


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


__all__ = ["changes", "decide_change"]
