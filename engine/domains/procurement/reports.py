"""Procurement's reports for people (the console's supply-chain and finance pages): bounded
reads of procurement's own tables through a store's read handle; nothing here writes. The
invoice desk (``desk.invoices``, ``desk.unmatched_receipts``) is the other half."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine.domains.procurement.repository import in_scope

LIMIT = 200


def purchase_orders(
    tx: Any, limit: int = LIMIT, channels: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Purchase orders newest first, with their line counts by status; of ``channels`` only
    (the channel whose message released them), when given."""
    scope, args = in_scope(channels, "p.channel")
    cur = tx.connection.execute(
        "SELECT p.po_number, p.partner, p.vendor, p.location_id, p.status, p.created_at, "
        "(SELECT COUNT(*) FROM po_lines AS l WHERE l.po_number = p.po_number), "
        "(SELECT COUNT(*) FROM po_lines AS l WHERE l.po_number = p.po_number "
        " AND l.status NOT IN ('ordered', 'accepted')) "
        f"FROM purchase_orders AS p WHERE 1 = 1{scope} ORDER BY p.created_at DESC LIMIT ?",
        (*args, limit),
    )
    names = (
        "po_number",
        "partner",
        "vendor",
        "location",
        "status",
        "created_at",
        "lines",
        "lines_changed",
    )
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def invoice_counts(tx: Any, channels: Sequence[str] | None = None) -> dict[str, int]:
    """Invoices by status (of ``channels`` only, when given)."""
    scope, args = in_scope(channels)
    cur = tx.connection.execute(
        f"SELECT status, COUNT(*) FROM invoices WHERE 1 = 1{scope} GROUP BY status", args
    )
    return {r[0]: int(r[1]) for r in cur.fetchall()}
