"""Readers from a tokenized transaction set to frozen documents: 850, 855, 856 and 810.

One module per document: :mod:`.purchase_order` (850), :mod:`.po_ack` (855),
:mod:`.ship_notice` (856), :mod:`.invoice` (810); :mod:`.common` holds the element readers and
the parts they share, :mod:`.bill_only` the implant case data of an 850, and :mod:`.document`
picks the reader by ST01. Everything public is re-exported here.

Numbers are :class:`decimal.Decimal`, never float, and read per element type (DOMAIN §3.2
"Decimal rule"): ``R`` elements (PO102, PO104, IT102, IT104, SN102, TXI02, AMT02…) carry their
own decimal point; ``N2`` elements (TDS01-04, SAC05, ITD08) are implied-decimal integers, so
``TDS*26500`` is 265.00 and a point inside an N2 element is an error, not a guess.

The readers accept what they do not use (an unknown segment is skipped) and missing optional
segments; a missing *required* segment (BEG, BAK, BSN, BIG) or a malformed number/date raises
:class:`engine.errors.X12DocumentError` naming the segment, its position in the set (ST = 1)
and the element, so a 997/999 AK3/AK4 can be built from it.

Product ids are kept as ``(qualifier, id)`` pairs in sending order (element 235 qualifiers:
``VC``/``VN``/``VP`` vendor, ``IN``/``BP`` buyer, ``UK`` GTIN-14, ``UP`` UPC, ``EN`` EAN,
``HI`` HIBC, ``N4`` NDC…). Lot (``LT``) and serial (``SN``) pairs are read into ``lot`` /
``serial`` and left out of ``product_ids``.
"""

from engine.x12.documents.bill_only import BILL_ONLY_FIELDS, BillOnly, BillOnlyMap
from engine.x12.documents.common import (
    ACK_STATUS,
    Charge,
    DateRef,
    LineAck,
    Party,
    Reference,
    Tax,
    Terms,
    gtin14,
)
from engine.x12.documents.document import read_document
from engine.x12.documents.invoice import Invoice, InvoiceLine, read_invoice
from engine.x12.documents.po_ack import AckLine, PurchaseOrderAck, read_po_ack
from engine.x12.documents.purchase_order import (
    PurchaseOrder,
    PurchaseOrderLine,
    read_purchase_order,
)
from engine.x12.documents.ship_notice import ShipLine, ShipNotice, read_ship_notice, sscc_of

__all__ = [
    "ACK_STATUS",
    "BILL_ONLY_FIELDS",
    "AckLine",
    "BillOnly",
    "BillOnlyMap",
    "Charge",
    "DateRef",
    "Invoice",
    "InvoiceLine",
    "LineAck",
    "Party",
    "PurchaseOrder",
    "PurchaseOrderAck",
    "PurchaseOrderLine",
    "Reference",
    "ShipLine",
    "ShipNotice",
    "Tax",
    "Terms",
    "gtin14",
    "read_document",
    "read_invoice",
    "read_po_ack",
    "read_purchase_order",
    "read_ship_notice",
    "sscc_of",
]
