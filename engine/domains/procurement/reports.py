"""Procurement's reports for people (the console's supply-chain and finance pages): bounded
reads of procurement's own tables through a store's read handle; nothing here writes. The
invoice desk (``desk.invoices``, ``desk.unmatched_receipts``) is the other half."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from engine.domains.ledger.reports import DAY, DIFFERENCE_REASONS, _sum, day_of, reconciled
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


# -- goods receipts in the inventory-to-finance reconciliation ---------------------------------
#: Why a receipt line and the ERP differ, by its receipt posting's state (None: not sent): the
#: ledger's reasons for its stock issues.
RECEIPT_REASONS = DIFFERENCE_REASONS
#: The figures of a receipt reconciliation row (decimal text).
RECEIPT_FIGURES = (
    "received_quantity",
    "received_value",
    "posted_quantity",
    "posted_value",
    "difference_quantity",
    "difference_value",
)
#: A receipt line's quantity in the PO line's base unit and its value at the PO's price (the
#: line's price per ordered unit times ordered units per base unit).
_VALUE = (
    "CAST(r.base_quantity AS NUMERIC) * CAST(l.unit_price AS NUMERIC) "
    "* CAST(l.quantity AS NUMERIC) / NULLIF(CAST(l.base_quantity AS NUMERIC), 0)"
)
#: The UTC day of a receipt (days since 1970-01-01), rounded down on both dialects.
_DAY = {
    "sqlite": "CAST(r.created_at / 86400 AS INTEGER)",
    "postgresql": "CAST(floor(r.created_at / 86400) AS BIGINT)",
}
_RECEIPTS = (
    "FROM receipts AS r JOIN purchase_orders AS p ON p.po_number = r.po_number "
    "JOIN po_lines AS l ON l.po_number = r.po_number AND l.line = r.po_line "
    "LEFT JOIN receipt_postings AS rp ON rp.receipt_id = r.id "
    "WHERE r.created_at >= ? AND r.source != 'asn_expected'"
)


def receipt_reconciliation(
    tx: Any, since: float, *, limit: int = 1000, drill: int = 10
) -> dict[str, Any]:
    """Goods receipts recorded since ``since`` (from the index of receipts by time, summed in
    the database by day): by location, item and month (UTC) of the receipt, the quantity
    received in the PO line's base unit (an 856 that counts as the receipt, or the ERP's own
    receipts and returns) and its value at the PO's price, against what the ERP acknowledged
    posting: an ERP receipt or return is the ERP's own; an 856's line is posted when the ERP
    took its goods receipt; otherwise the difference with its reason (``RECEIPT_REASONS``) and
    the newest messages behind it (up to ``drill`` a row); totals per month; the first
    ``limit`` rows. An expected receipt (an ASN that does not count as the receipt) is left
    out: the ERP's own receipt of those goods is what counts."""
    day = _DAY.get(tx.dialect, _DAY["sqlite"])
    cur = tx.connection.execute(
        f"SELECT p.location_id, r.item_id, l.base_uom, {day}, r.source, rp.status, "
        f"SUM(CAST(r.base_quantity AS NUMERIC)), SUM({_VALUE}) {_RECEIPTS} "
        f"GROUP BY p.location_id, r.item_id, l.base_uom, {day}, r.source, rp.status",
        (since,),
    )
    zero = Decimal(0)
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    for location, item, uom, on, source, status, qty, value in cur.fetchall():
        key = (location, item, _month(on))
        row = out.get(key)
        if row is None:
            row = out[key] = {
                "location": location,
                "item": item,
                "period": key[2],
                "uom": uom,
                **{k: zero for k in RECEIPT_FIGURES},
                "reasons": {},
                "messages": [],
            }
        qty, value = _sum(qty), _sum(value)
        row["received_quantity"] += qty
        row["received_value"] += value
        if status == "posted" or (status is None and source != "asn"):
            row["posted_quantity"] += qty
            row["posted_value"] += value
            continue
        reason = RECEIPT_REASONS.get(status, RECEIPT_REASONS[None])
        row["reasons"][reason] = row["reasons"].get(reason, zero) + qty
    listed = sorted(out.values(), key=lambda a: (a["period"], a["location"], a["item"]))[:limit]
    differing = {(a["location"], a["item"], a["period"]) for a in listed if a["reasons"]}
    behind = _receipts_behind(tx, since, differing) if differing else {}
    return reconciled(
        listed,
        RECEIPT_FIGURES,
        lambda a: behind.get((a["location"], a["item"], a["period"]), [])[:drill],
        _plain,
    )


def _receipts_behind(
    tx: Any, since: float, rows: set[tuple[str, str, str]], most: int = 2000
) -> dict[tuple[str, str, str], list[str]]:
    """The messages of the newest 856 receipt lines (up to ``most``, from the index of
    receipts by time) the ERP has not posted, for the (location, item, month) ``rows``."""
    out: dict[tuple[str, str, str], list[str]] = {}
    for location, item, at, mid in tx.connection.execute(
        f"SELECT p.location_id, r.item_id, r.created_at, r.message_id {_RECEIPTS} "
        "AND r.source = 'asn' AND (rp.status IS NULL OR rp.status != 'posted') "
        "ORDER BY r.created_at DESC LIMIT ?",
        (since, most),
    ):
        key = (location, item, _month(day_of(float(at))))
        if key in rows and mid:
            found = out.setdefault(key, [])
            if mid not in found:
                found.append(mid)
    return out


def _month(day: Any) -> str:
    """``YYYY-MM`` of a UTC day number."""
    return datetime.fromtimestamp(int(day) * DAY, UTC).strftime("%Y-%m")


def _plain(value: Decimal) -> Decimal:
    """A quantity without trailing zeros (``5``, not ``5.000``)."""
    return value.normalize() + 0
