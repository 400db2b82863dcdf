"""Any supported document by its ST01: :func:`read_document`."""

from __future__ import annotations

from engine.errors import X12DocumentError
from engine.x12.documents.invoice import Invoice, read_invoice
from engine.x12.documents.po_ack import PurchaseOrderAck, read_po_ack
from engine.x12.documents.purchase_order import PurchaseOrder, read_purchase_order
from engine.x12.documents.ship_notice import ShipNotice, read_ship_notice
from engine.x12.segments import TransactionSet

_READERS = {
    "850": read_purchase_order,
    "855": read_po_ack,
    "856": read_ship_notice,
    "810": read_invoice,
}


def read_document(ts: TransactionSet) -> PurchaseOrder | PurchaseOrderAck | ShipNotice | Invoice:
    """The document in ``ts``, by ST01 (850, 855, 856 or 810)."""
    reader = _READERS.get(ts.id)
    if reader is None:
        raise X12DocumentError(
            f"no reader for transaction set {ts.id!r} (expected one of 810, 850, 855, 856)",
            segment="ST",
            position=1,
            element=1,
            offset=ts.offsets[0],
            code="unsupported_set",
        )
    return reader(ts)  # type: ignore[operator]
