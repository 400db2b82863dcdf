"""Stored traffic for the impact preview's tests and bench/preview.py: a copy of the shipped
project whose live store holds messages as the engine's ingest leaves them."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

from engine.config.store_path import store_path
from engine.model import Inbound
from engine.runtime.store import open_store
from engine.x12.samplegen import vendor_invoice

REPO = Path(__file__).resolve().parents[2]
T0 = 1_767_000_000.0  # 2025-12-29, the corpus's first arrival

#: the FT1 lines the usage corpus cycles through: (CDM code, quantity, point of care)
USAGE_LINES = (
    ("278000456", "1", "OR"),  # knee femoral component (implant, needs its lot: ZUD)
    ("272100049", "2", "4WEST"),  # Foley tray, chargeable
    ("272000022", "60", "OR"),  # gauze: billed EA, stocked in PK of 10, no charge
    ("272100052", "1", "MICU"),  # NG tube, chargeable
    ("272000010", "3", "OR"),  # sutures, no charge
)


def project(base: Path) -> Path:
    """A copy of the shipped configuration (routes.yaml, channels/, mappings/, samples/)."""
    root = base / "project"
    root.mkdir(parents=True)
    for folder in ("channels", "mappings", "samples"):
        shutil.copytree(REPO / folder, root / folder)
    shutil.copy(REPO / "routes.yaml", root / "routes.yaml")
    return root


def dft(i: int, lines: Sequence[tuple[str, str, str]]) -> bytes:
    """A DFT^P03 for encounter ENC-{i} with one FT1 per line (an implant gets its lot)."""
    segs = [
        "MSH|^~\\&|POU_CABINET|GENHOSP|WHARF|GENHOSP|20260115113000||DFT^P03^DFT_P03|"
        f"PV-{i:06d}|P|2.5.1",
        "EVN|P03|20260115113000",
        f"PID|1||MRN{i:06d}^^^GENHOSP^MR||DOE^JANE||19600101|F",
        f"PV1|1|I|OR^OR02^01^GENHOSP||||||||||||||||ENC-{i:06d}^^^GENHOSP^VN",
    ]
    for n, (code, qty, point) in enumerate(lines, start=1):
        segs.append(
            f"FT1|{n}|CU-{i:06d}-{n}||20260115093000|20260115113000|CG|{code}^SUPPLY^99CDM"
            f"|||{qty}||||||{point}^R1^01^GENHOSP"
        )
        if code == "278000456":
            segs.append(f"ZUD|{n}|||LOT{i:06d}|SN{i:06d}|20300630")
    return ("\r".join(segs) + "\r").encode()


def usage_corpus(count: int) -> list[tuple[int, bytes, list[tuple[str, str, str]]]]:
    """``count`` DFT^P03s, message i carrying lines i and i+2 of :data:`USAGE_LINES`."""
    out = []
    for i in range(count):
        lines = [USAGE_LINES[i % 5], USAGE_LINES[(i + 2) % 5]]
        out.append((i, dft(i, lines), lines))
    return out


def store_messages(root: Path, messages: Sequence[tuple[str, bytes, str | None]]) -> Path:
    """``(channel, bytes, origin)`` ingested into the project's live store, one second apart;
    returns the store's path."""
    path = store_path(root)
    store = open_store(path)
    try:
        items = [
            Inbound(
                channel,
                "test",
                raw,
                "application/json" if raw[:1] == b"{" else "application/octet-stream",
                T0 + n,
                origin=origin,
            )
            for n, (channel, raw, origin) in enumerate(messages)
        ]
        for start in range(0, len(items), 500):
            store.ingest_batch(items[start : start + 500], T0)
    finally:
        store.close()
    return path


#: the prices ACME invoices for a PO line at 100.00 a box, cycling; 2 % and 5.00 over pass
INVOICE_PRICES = (Decimal("100.50"), Decimal("101.50"), Decimal("102.50"), Decimal("103.50"))


def purchase_corpus(count: int) -> list[tuple[str, bytes, str | None]]:
    """For each of ``count`` POs: the ERP's release, its goods receipt and ACME's invoice at
    :data:`INVOICE_PRICES` (cycling)."""
    po = json.loads((REPO / "samples/erp/purchase_order_4500012345.json").read_text())
    out: list[tuple[str, bytes, str | None]] = []
    for n in range(count):
        number = f"45{n:08d}"
        doc = dict(po, po_number=number)
        doc["lines"] = [dict(po["lines"][0], qty="2", uom="BX", unit_price="100.00")]
        out.append(("po_to_vendor", json.dumps(doc).encode(), "token:erp"))
        receipt = {
            "receipt_id": f"GR-{number}",
            "po_number": number,
            "lines": [{"po_line": "1", "qty": "2", "uom": "BX"}],
        }
        out.append(("erp_receipts", json.dumps(receipt).encode(), "token:erp"))
        price = INVOICE_PRICES[n % len(INVOICE_PRICES)]
        it1 = ["1", "2", "BX", str(price), "PE"]
        invoice = vendor_invoice(number, f"INV-{number}", it1, int(price * 200), 1000 + n)
        out.append(("x12_from_vendors", invoice, "sftp:acmemed"))
    return out
