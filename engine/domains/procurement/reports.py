"""Procurement's reports for people (the console's supply-chain and finance pages): bounded
reads of procurement's own tables through a store's read handle; nothing here writes. The
invoice desk (``desk.invoices``, ``desk.unmatched_receipts``) is the other half."""

from __future__ import annotations

from typing import Any

LIMIT = 200


def purchase_orders(tx: Any, limit: int = LIMIT) -> list[dict[str, Any]]:
    """Purchase orders newest first, with their line counts by status."""
    cur = tx.connection.execute(
        "SELECT p.po_number, p.partner, p.vendor, p.location_id, p.status, p.created_at, "
        "(SELECT COUNT(*) FROM po_lines AS l WHERE l.po_number = p.po_number), "
        "(SELECT COUNT(*) FROM po_lines AS l WHERE l.po_number = p.po_number "
        " AND l.status NOT IN ('ordered', 'accepted')) "
        "FROM purchase_orders AS p ORDER BY p.created_at DESC LIMIT ?",
        (limit,),
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


def invoice_counts(tx: Any) -> dict[str, int]:
    """Invoices by status."""
    cur = tx.connection.execute("SELECT status, COUNT(*) FROM invoices GROUP BY status")
    return {r[0]: int(r[1]) for r in cur.fetchall()}
