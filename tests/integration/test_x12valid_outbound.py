"""What Wharf writes for a vendor passes pyx12's own validator (``x12valid`` with Wharf's maps
on its map path): 850s for both shipped partners (004010 and 005010, their own separators),
standard and bill-only (case, surgeon with NPI, MRN, lot and serial)."""

from __future__ import annotations

import copy
import dataclasses
import re
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from engine.x12.control import ControlNumbers
from engine.x12.partners import BillOnlyRules, load_partners
from engine.x12.po850 import build_850

ROOT = Path(__file__).resolve().parents[2]
X12VALID = Path(sys.executable).parent / "x12valid"
PARTNERS = load_partners(ROOT / "mappings" / "trading_partners.yaml", env={})
STATUS = re.compile(r"^(?P<file>\S+): (?P<status>OK|Failure)$", re.MULTILINE)

pytestmark = pytest.mark.integration

PO: dict[str, Any] = {
    "po_number": "4500012345",
    "order_date": "2026-01-15",
    "currency": "USD",
    "department": "OR-SURG",
    "buyer": {"name": "JANE BUYER", "phone": "5555550100"},
    "need_by": "2026-01-20",
    "bill_to": {"gln": "0614141000012", "name": "GENERAL HOSPITAL"},
    "ship_to": {
        "gln": "0614141000029",
        "name": "GENERAL HOSPITAL OR DOCK",
        "address": {
            "street": ["100 MAIN ST"],
            "city": "SPRINGFIELD",
            "state": "IL",
            "postal_code": "62701",
            "country": "US",
        },
    },
    "lines": [
        {
            "line": "1",
            "item_id": "ITEM-100123",
            "vendor_catalog": "ORTH-SCR-35",
            "gtin": "10614141999993",
            "description": "BONE SCREW 3.5MM BX/5",
            "qty": "2",
            "uom": "BX",
            "unit_price": "125.00",
            "pack": {"qty": 5, "uom": "EA"},
        },
        {
            "line": "2",
            "item_id": "ITEM-202042",
            "vendor_catalog": "GLV-7",
            "description": "GLOVE SURGICAL STERILE SZ7.0",
            "qty": 5,
            "uom": "PR",
            "unit_price": "12.5",
        },
    ],
}
BILL_ONLY: dict[str, Any] = {
    **PO,
    "po_number": "4500012399",
    "bill_only": {
        "case_id": "CASE-2026-0042",
        "patient": {"mrn": "MRN12345"},
        "procedure_date": "2026-01-14",
        "surgeon": {"name": "SAM SURGEON", "npi": "1234567893"},
    },
    "lines": [
        {
            "line": "1",
            "item_id": "ITEM-100999",
            "vendor_catalog": "FEM-5R",
            "description": "KNEE FEMORAL COMPONENT SZ 5 RIGHT",
            "qty": "1",
            "uom": "EA",
            "unit_price": "2310.00",
            "lot": "LOT2025A",
            "serial": "SN000123",
        },
    ],
}


def test_x12valid_accepts_the_850s_wharf_writes() -> None:
    out = Path(tempfile.mkdtemp())
    names = []
    for pid, partner in PARTNERS.items():
        everything = dataclasses.replace(
            partner, bill_only=BillOnlyRules(send_mrn=True, send_surgeon=True)
        )
        for kind, po, who in (("std", PO, partner), ("billonly", BILL_ONLY, everything)):
            doc = {**copy.deepcopy(po), "vendor": partner.vendors[0]}
            data = build_850(
                doc, who, ControlNumbers(7, 7, (7,)), now=datetime(2026, 1, 15, 10, 30)
            )
            path = out / f"850_{pid}_{kind}.x12"
            path.write_bytes(data)
            names.append(path.name)
    done = subprocess.run(
        [str(X12VALID), "--map-path", str(ROOT / "engine/x12/maps"), *sorted(out.iterdir())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    text = done.stdout + done.stderr
    verdicts = {Path(m["file"]).name: m["status"] for m in STATUS.finditer(text)}
    assert verdicts == {n: "OK" for n in names}, text
