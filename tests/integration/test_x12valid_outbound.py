"""What Wharf writes for a vendor passes pyx12's own validator (``x12valid`` with Wharf's maps
on its map path): 850s for both shipped partners (004010 and 005010, their own separators),
standard and bill-only (case, surgeon with NPI, MRN, lot and serial)."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from engine.domains.procurement.control import ControlNumbers
from engine.domains.procurement.partners import BillOnlyRules, load_partners
from engine.domains.procurement.po850 import build_850

ROOT = Path(__file__).resolve().parents[2]
X12VALID = Path(sys.executable).parent / "x12valid"
PARTNERS = load_partners(ROOT / "mappings" / "trading_partners.yaml", env={})
STATUS = re.compile(r"^(?P<file>\S+): (?P<status>OK|Failure)$", re.MULTILINE)

pytestmark = pytest.mark.integration

# The ERP's POs as the samples hold them: a standard PO and a bill-only implant PO.
PO: dict[str, Any] = json.loads((ROOT / "samples/erp/purchase_order_4500012345.json").read_text())
BILL_ONLY: dict[str, Any] = json.loads(
    (ROOT / "samples/erp/purchase_order_bill_only.json").read_text()
)


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
