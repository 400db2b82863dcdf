"""The credits desk: what a person does with credits held for want of the line they reverse.

``wharf credits`` lists them (an ORPHAN_CREDIT work item each); ``wharf credits release N``
books one as it came (stock back, the credit to billing, through the channel's ledger section,
queued on the message that carried it) and ``wharf credits reject N`` closes it without
booking. Both resolve the work item and are audited with who and why.
"""

from __future__ import annotations

from typing import Any

from engine.domains.ledger.domain import LEDGER, repository
from engine.domains.ledger.records import HeldCredit
from engine.domains.ledger.rules import reject_credit
from engine.errors import StoreError
from engine.resources import Snapshot


def held(store: Any, status: str | None = "held") -> list[HeldCredit]:
    """The credits in ``status`` (all with None), oldest first."""
    with store.reading() as rd:
        return repository(rd).held_credits(status)


def _held(tx: Any, credit_id: int) -> HeldCredit:
    credit = repository(tx).held_credit(credit_id)
    if credit is None:
        raise StoreError(f"no held credit {credit_id} (see `wharf credits`)")
    if credit.status != "held":
        raise StoreError(
            f"credit {credit_id} ({credit.business_key}) is {credit.status}: only a held "
            "credit can be released or rejected"
        )
    return credit


def release(
    store: Any, project: Any, credit_id: int, *, actor: str, note: str, now: float
) -> dict[str, Any]:
    """Book a held credit through its channel's ledger section, audited."""
    with store.transaction(f"release_credit({credit_id})") as tx:
        credit = _held(tx, credit_id)
        defn = project.channels.get(credit.channel)
        section = getattr(defn.config, LEDGER.name, None) if defn is not None else None
        if section is None:
            raise StoreError(
                f"channel {credit.channel!r} of credit {credit_id} has no ledger section now"
            )
        snapshot = Snapshot(mappings=project.mappings, extras=project.extras)
        out = LEDGER.bind(credit.channel, section, snapshot).release_credit(tx, credit, now)
        queued = tx.enqueue(credit.message_id, out, now) if out else []
        tx.resolve_work_items("ORPHAN_CREDIT", subject=credit.business_key, now=now)
        detail = {"credit": credit.business_key, "reverses": credit.reverses, "note": note}
        tx.audit(actor, "credit.release", str(credit_id), detail, now)
    return {"credit": credit.business_key, "status": "released", "deliveries": len(queued)}


def reject(store: Any, credit_id: int, *, actor: str, note: str, now: float) -> dict[str, Any]:
    """Close a held credit without booking it, audited."""
    with store.transaction(f"reject_credit({credit_id})") as tx:
        credit = _held(tx, credit_id)
        reject_credit(repository(tx), credit, now)
        tx.resolve_work_items("ORPHAN_CREDIT", subject=credit.business_key, now=now)
        detail = {"credit": credit.business_key, "reverses": credit.reverses, "note": note}
        tx.audit(actor, "credit.reject", str(credit_id), detail, now)
    return {"credit": credit.business_key, "status": "rejected"}
