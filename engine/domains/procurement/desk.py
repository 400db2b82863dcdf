"""The AP desk: what a person does with held invoices, and the receipts nobody invoiced.

``wharf invoices`` lists invoices (held ones with their reasons); ``wharf invoices release N``
posts a held invoice to accounts payable as it is (the person accepts the variance) and
``wharf invoices reject N`` closes it without posting; both are audited with who and why.
``wharf receipts --unmatched --older-than 30d`` lists received quantities not yet invoiced.
"""

from __future__ import annotations

import json
import sqlite3
from decimal import Decimal
from typing import Any

from engine.errors import StoreError
from engine.model import Outbound, effect_key, to_json_bytes


def invoices(conn: sqlite3.Connection, status: str | None = None) -> list[dict[str, Any]]:
    sql = (
        "SELECT id, partner, invoice_number, po_number, status, reasons, total, created_at "
        "FROM invoices"
    )
    args: tuple[str, ...] = ()
    if status:
        sql += " WHERE status = ?"
        args = (status,)
    cols = ("id", "partner", "invoice_number", "po_number", "status", "reasons", "total", "at")
    out = []
    for row in conn.execute(sql + " ORDER BY id", args):
        item = dict(zip(cols, row, strict=True))
        item["reasons"] = json.loads(item["reasons"])
        out.append(item)
    return out


def unmatched_receipts(
    conn: sqlite3.Connection, *, older_than: float, now: float
) -> list[dict[str, Any]]:
    """Per PO line: received (base unit) minus invoiced by matched or released invoices, for
    lines whose oldest receipt is older than ``older_than`` seconds and still not covered."""
    received: dict[tuple[str, str], dict[str, Any]] = {}
    for po, line, item, qty, at in conn.execute(
        "SELECT po_number, po_line, item_id, base_quantity, created_at FROM receipts "
        "WHERE source IN ('asn', 'erp')"
    ):
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
        r["received"] += Decimal(qty)
        r["oldest"] = min(r["oldest"], at)
    for po, line, qty in conn.execute(
        "SELECT i.po_number, l.po_line, l.base_quantity FROM invoice_lines l JOIN invoices i "
        "ON i.id = l.invoice_id WHERE i.status IN ('matched', 'released') AND l.po_line IS NOT NULL"
    ):
        if (po, line) in received:
            received[(po, line)]["received"] -= Decimal(qty)
    out = []
    for r in received.values():
        if r["received"] > 0 and now - r["oldest"] >= older_than:
            r["uninvoiced"] = str(r.pop("received"))
            r["age_days"] = round((now - r["oldest"]) / 86400, 1)
            out.append(r)
    return sorted(out, key=lambda r: r["oldest"])


def _held(conn: sqlite3.Connection, invoice_id: int) -> tuple:
    row = conn.execute(
        "SELECT i.partner, i.invoice_number, i.po_number, i.status, i.body, i.message_id, "
        "i.correlation_id, m.channel FROM invoices i LEFT JOIN messages m ON m.id = i.message_id "
        "WHERE i.id = ?",
        (invoice_id,),
    ).fetchone()
    if row is None:
        raise StoreError(f"no invoice {invoice_id}")
    if row[3] != "held":
        raise StoreError(
            f"invoice {invoice_id} ({row[1]}) is {row[3]}: only a held invoice can be released "
            "or rejected"
        )
    return row


def release_invoice(
    store: Any, project: Any, invoice_id: int, *, actor: str, note: str, now: float
) -> dict[str, Any]:
    """Post a held invoice to AP as it is, through its channel's ``procurement.ap``."""
    from engine.domains.procurement.book import (
        _set_from_json,
        _their_units,
        ap_invoice,
        order_from_store,
    )
    from engine.domains.procurement.domain import PARTNERS, converter
    from engine.domains.procurement.match import match_invoice
    from engine.x12.documents import read_invoice

    with store.transaction(f"release_invoice({invoice_id})") as tx:
        conn = tx.connection
        partner_id, number, po, _s, body, message_id, correlation_id, channel = _held(
            conn, invoice_id
        )
        defn = project.channels.get(channel)
        if defn is None or defn.config.procurement is None or not defn.config.procurement.ap:
            raise StoreError(f"channel {channel!r} of invoice {invoice_id} has no procurement.ap")
        partner = project.extras[PARTNERS][partner_id]
        invoice = read_invoice(_set_from_json(body))
        order = order_from_store(conn, po)
        result = match_invoice(
            invoice,
            order,
            (),
            convert=_their_units(partner, converter(project.mappings, partner)),
            tolerance=partner.tolerance,
        )
        doc = ap_invoice(partner, invoice, result, correlation_id or "")
        doc.update(match="released", released_by=actor, note=note)
        dest = defn.config.procurement.ap
        key = effect_key(channel, dest, f"810:{partner_id}:{number}", "ap_invoice")
        meta = {"idempotency_key": key, "effect": "ap_invoice"}
        delivery = Outbound(dest, to_json_bytes(doc), "application/json", None, meta)
        tx.enqueue(message_id, [delivery], now, correlation_id=correlation_id)
        _close(conn, invoice_id, "released", f"{partner_id}:{number}", now)
        tx.audit(
            actor,
            "invoice.release",
            str(invoice_id),
            {"invoice": number, "partner": partner_id, "note": note},
            now,
        )
    return {"invoice": number, "status": "released", "ap_destination": dest}


def reject_invoice(
    store: Any, invoice_id: int, *, actor: str, note: str, now: float
) -> dict[str, Any]:
    """Close a held invoice without posting it (the vendor is asked for a corrected one)."""
    with store.transaction(f"reject_invoice({invoice_id})") as tx:
        partner_id, number, *_ = _held(tx.connection, invoice_id)
        _close(tx.connection, invoice_id, "rejected", f"{partner_id}:{number}", now)
        tx.audit(
            actor,
            "invoice.reject",
            str(invoice_id),
            {"invoice": number, "partner": partner_id, "note": note},
            now,
        )
    return {"invoice": number, "status": "rejected"}


def _close(
    conn: sqlite3.Connection, invoice_id: int, status: str, subject: str, now: float
) -> None:
    conn.execute(
        "UPDATE invoices SET status = ?, retry_on_receipt = 0, updated_at = ? WHERE id = ?",
        (status, now, invoice_id),
    )
    conn.execute(
        "UPDATE work_items SET status = 'resolved', updated_at = ? WHERE kind = 'INVOICE_HELD' "
        "AND subject = ? AND status = 'open'",
        (now, subject),
    )
