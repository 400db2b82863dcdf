"""Third-party 004010 documents through the inbound X12 path (issue 12 item 12), with a real
engine, the sandbox ERP over HTTP and real files in HARBOR's inbound/ folder on Wharf's SFTP
server (dropped as the server's upload leaves them; OpenSSH's ``sftp`` itself is in
test_x12_procurement.py).

HARBOR writes its documents as many vendors' systems do: cases are ``CS``, other lines in
``BX``, ``PK`` and ``DZ``, ``|`` and ``:`` as separators, a CR LF after each segment
(``samples/x12/thirdparty/``). Those units are for HARBOR's uom map to read, not for the
X12 maps to refuse: every document is acknowledged with a 997 that accepts it, the 855
reaches the ERP with each line accepted in our own units, the 856 books the receipts and the
810 is matched and posted to AP. A unit that HARBOR's map lacks (``KT``) holds that ASN line
as a MISSING_MAPPING work item while the document is accepted and its other lines post. An
invalid code in a truly coded element (BEG01, ACK01) is still rejected by the 997, which
names the segment, the element and the value, and nothing of it is applied.
"""

from __future__ import annotations

import shutil
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, reactor
from twisted.trial import unittest

from engine.runtime import Engine
from tests.integration.x12_harness import EngineStore, SandboxErp, sftp_routes

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "samples/x12/thirdparty"

#: The PO that HARBOR's 855, 856 and 810 answer, as the ERP releases it (our units: CA, BX, PK).
PO = {
    "po_number": "4500077001",
    "order_date": "2026-01-20",
    "vendor": "VND-HARBOR",
    "currency": "USD",
    "department": "OR-SURG",
    "bill_to": {"gln": "0614141000012", "name": "GENERAL HOSPITAL"},
    "ship_to": {"gln": "0614141000012", "name": "GENERAL HOSPITAL OR DOCK"},
    "lines": [
        {
            "line": "1",
            "item_id": "ITEM-200022",
            "vendor_catalog": "GZ-4X4-S10",
            "description": "GAUZE 4X4 STERILE PK10",
            "qty": "2",
            "uom": "CA",
            "unit_price": "180.00",
        },
        {
            "line": "2",
            "item_id": "ITEM-202016",
            "vendor_catalog": "BLD-10",
            "description": "SURGICAL BLADE #10",
            "qty": "3",
            "uom": "BX",
            "unit_price": "14.00",
        },
        {
            "line": "3",
            "item_id": "ITEM-202015",
            "vendor_catalog": "LAP-1818-S5",
            "description": "LAP SPONGE 18X18 STERILE PK5",
            "qty": "4",
            "uom": "PK",
            "unit_price": "12.00",
        },
    ],
}

#: (item, location) on-hand the 856 moves: 2 CS = 2 CA = 120 PK (HARBOR's case is 60 PK),
#: 3 BX = 150 EA, 4 PK = 20 EA.
RECEIVED = {"ITEM-200022": 120, "ITEM-202016": 150, "ITEM-202015": 20}


@pytest.mark.integration
class ThirdPartyDocuments(EngineStore, SandboxErp, unittest.TestCase):
    timeout = 180

    def setUp(self) -> Any:
        self.base = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.base, True)
        root = self.root = self.base / "project"
        (root / "channels").mkdir(parents=True)
        for name in ("po_to_vendor.yaml", "x12_from_vendors.yaml"):
            shutil.copy(REPO / "channels" / name, root / "channels" / name)
        shutil.copytree(REPO / "mappings", root / "mappings")
        shutil.copytree(REPO / "samples", root / "samples")
        (root / "routes.yaml").write_text(sftp_routes("acmemed", "harbor"))
        # HARBOR collects our 850 from its account here (it runs its own server otherwise),
        # and its 856 counts as the receipt (the ERP's goods receipt otherwise), so that its
        # invoice can be matched in this test.
        tp = root / "mappings/trading_partners.yaml"
        text = tp.read_text()
        assert text.count("  asn_is_receipt: false\n") == 1
        text = text.replace("  asn_is_receipt: false\n", "  asn_is_receipt: true\n")
        start = text.index("  # Harbor runs its own SFTP server")
        tp.write_text(text[:start] + "  delivery:\n    sftp_server: {account: harbor}\n")
        self.start_erp(self.base)
        self.engine = Engine(root, reactor)
        d = defer.ensureDeferred(self.engine.start())
        d.addCallback(lambda _: self.webhook.start())
        self.addCleanup(lambda: defer.ensureDeferred(self.engine.stop()))
        return d

    # ------------------------------------------------------------------ helpers

    def answers_997(self) -> dict[str, list[list[str]]]:
        """HARBOR's 997s by the group control number they answer (AK102), each as its
        segments split into elements (HARBOR's separators: ``|``, ``~`` and CR LF)."""
        out: dict[str, list[list[str]]] = {}
        for name in self.outbound("harbor"):
            if name.startswith("997_"):
                text = (self.root / "var/sftp/harbor/outbound" / name).read_text()
                segments = [s.strip().split("|") for s in text.split("~") if s.strip()]
                (ak1,) = [s for s in segments if s[0] == "AK1"]
                out[ak1[2]] = segments
        return out

    async def drop(self, name: str, data: bytes) -> list[list[str]]:
        """``data`` in HARBOR's inbound/ as ``name``; once taken and settled, the 997 that
        answers its group (the ISA13 of the samples is their GS06 too)."""
        inbound = self.root / "var/sftp/harbor/inbound"
        await self.until(inbound.is_dir)
        (inbound / name).write_bytes(data)
        await self.until(lambda: (self.root / "var/sftp/harbor/archive" / name).exists())
        gs06 = data.split(b"~")[1].split(b"|")[6].decode()
        await self.until(lambda: self.idle() and gs06 in self.answers_997())
        return self.answers_997()[gs06]

    async def release_po(self) -> None:
        """The ERP releases PO 4500077001 to HARBOR; it leaves as an 850 in HARBOR's outbound/."""
        await self.erp("/purchase-orders", PO)
        await self.erp("/purchase-orders/4500077001/release", {})
        await self.until(lambda: any(n.startswith("850_harbor_") for n in self.outbound("harbor")))
        await self.until(self.idle)

    def onhand(self) -> dict[str, Decimal]:
        rows = self.db(
            "SELECT item_id, SUM(quantity) FROM onhand WHERE item_id IN (?, ?, ?) GROUP BY item_id",
            *RECEIVED,
        )
        return {item: Decimal(str(q)) for item, q in rows}

    def work_items(self) -> list[tuple[str, str]]:
        return self.db("SELECT kind, subject FROM work_items ORDER BY id")

    # ------------------------------------------------------------------ accepted

    @defer.inlineCallbacks
    def test_documents_in_cases_are_accepted_and_applied(self) -> Any:
        yield defer.ensureDeferred(self._accepted())

    async def _accepted(self) -> None:
        await self.release_po()
        before = self.onhand()
        for kind in ("850", "855", "856", "810"):
            data = (SAMPLES / f"{kind}_4010_cases.x12").read_bytes()
            assert b"|CS|" in data or b"|CS~" in data, kind
            answer = await self.drop(f"{kind}.x12", data)
            assert_accepted(answer, kind)
        # 855: every line accepted, in our units (HARBOR's CS is our CA); nothing to change
        erp_po = await self.erp("/purchase-orders/4500077001")
        lines = {k: (v["status"], v["quantity"], v["unit"]) for k, v in erp_po["lines"].items()}
        assert lines == {
            "1": ("accepted", "2", "CA"),
            "2": ("accepted", "3", "BX"),
            "3": ("accepted", "4", "PK"),
        }, lines
        # 856: the receipts, converted through HARBOR's case (60 PK) to the stock units
        assert self.db("SELECT COUNT(*) FROM receipts") == [(3,)]
        after = self.onhand()
        moved = {item: after.get(item, 0) - before.get(item, 0) for item in RECEIVED}
        assert moved == RECEIVED, moved
        # 810: matched against PO and receipts, posted to AP with HARBOR's total
        assert self.db("SELECT invoice_number, status FROM invoices") == [
            ("HMD-INV-30077", "matched")
        ]
        (ap,) = (await self.erp("/ap-invoices"))["ap-invoices"]
        assert (ap["doc"]["invoice_number"], ap["doc"]["total"]) == ("HMD-INV-30077", "450.00")
        assert [ln["uom"] for ln in ap["doc"]["lines"]] == ["CA", "BX", "PK"]
        # nothing for a person: no unit was unknown, no document refused
        assert self.work_items() == []
        assert self.db("SELECT DISTINCT status FROM messages") == [("sent",)]

    # ------------------------------------------------------------------ rejected / held

    @defer.inlineCallbacks
    def test_bad_codes_are_rejected_and_unknown_units_are_held(self) -> Any:
        yield defer.ensureDeferred(self._rejected_and_held())

    async def _rejected_and_held(self) -> None:
        await self.release_po()
        # A unit HARBOR's map lacks (KT): the 856 is accepted, its line 3 held for a person,
        # lines 1 and 2 booked.
        before = self.onhand()
        answer = await self.drop("856_kt.x12", (SAMPLES / "856_4010_unknown_unit.x12").read_bytes())
        assert_accepted(answer, "856")
        assert self.work_items() == [("MISSING_MAPPING", "uom:harbor:ITEM-202015:KT->EA")]
        (detail,) = self.db("SELECT detail FROM work_items")[0]
        assert "HMD-ASN-77121 line 3" in detail and "'KT'" in detail, detail
        after = self.onhand()
        moved = {item: after.get(item, 0) - before.get(item, 0) for item in RECEIVED}
        assert moved == {**RECEIVED, "ITEM-202015": 0}, moved

        # An 850 whose BEG01 (353, Transaction Set Purpose Code) is no code: 997 rejects it,
        # naming BEG, its position, element 1, data element 353 and the value.
        po = (SAMPLES / "850_4010_cases.x12").read_bytes()
        bad_beg = renumber(po.replace(b"BEG|00|SA|", b"BEG|X!|SA|"), 9001, 9011)
        answer = await self.drop("850_bad_beg.x12", bad_beg)
        assert_rejected(answer, ["AK3", "BEG", "2", "", "8"], ["AK4", "1", "353", "7", "X!"])

        # An 855 whose line 2 status (ACK01, 668) is no code: rejected, and the ERP's PO
        # hears nothing of it.
        ack = (SAMPLES / "855_4010_cases.x12").read_bytes()
        bad_ack = renumber(ack.replace(b"ACK|IA|3|BX|", b"ACK|I!|3|BX|"), 9002, 9012)
        answer = await self.drop("855_bad_ack.x12", bad_ack)
        assert_rejected(answer, ["AK3", "ACK", "7", "", "8"], ["AK4", "1", "668", "7", "I!"])
        erp_po = await self.erp("/purchase-orders/4500077001")
        assert (erp_po["status"], erp_po["lines"]) == ("sent", {}), erp_po
        assert [k for k, _ in self.work_items()] == ["MISSING_MAPPING"]

        # The 855 with line 3 acknowledged in KT: accepted and applied, and KT is for a
        # person to map (the line's unit goes to the ERP as HARBOR wrote it).
        kt_ack = renumber(ack.replace(b"|4|PK|", b"|4|KT|"), 9002, 9013)
        assert kt_ack.count(b"|4|KT|") == 2
        answer = await self.drop("855_kt.x12", kt_ack)
        assert_accepted(answer, "855")
        assert self.work_items()[1:] == [("MISSING_MAPPING", "uom:harbor:KT")]
        (detail,) = self.db("SELECT detail FROM work_items WHERE subject = 'uom:harbor:KT'")[0]
        assert detail.startswith("855 for PO 4500077001 line 3:") and "'KT'" in detail, detail
        erp_po = await self.erp("/purchase-orders/4500077001")
        assert erp_po["lines"]["3"]["unit"] == "KT" and erp_po["lines"]["1"]["unit"] == "CA"

    # ------------------------------------------------------------------ code lists

    @defer.inlineCallbacks
    def test_standard_codes_outside_the_old_subsets_are_accepted_and_acted_on(self) -> Any:
        yield defer.ensureDeferred(self._standard_codes())

    async def _standard_codes(self) -> None:
        """docs/x12-code-lists.md: BEG02 NP, REF L1 and N1 FA (elements Wharf does not act on)
        and ACK01 R5 and IH (668, acted on: every standard code has a behaviour) are accepted;
        R5 rejects the line, IH holds it, and a person hears of both."""
        await self.release_po()
        answer = await self.drop(
            "850_std.x12", (SAMPLES / "850_4010_standard_codes.x12").read_bytes()
        )
        assert_accepted(answer, "850")
        answer = await self.drop(
            "855_std.x12", (SAMPLES / "855_4010_standard_codes.x12").read_bytes()
        )
        assert_accepted(answer, "855")
        erp_po = await self.erp("/purchase-orders/4500077001")
        lines = {k: (v["status"], v["unit"]) for k, v in erp_po["lines"].items()}
        assert lines == {"1": ("accepted", "CA"), "2": ("rejected", "BX"), "3": ("held", "PK")}
        assert erp_po["status"] == "changed", erp_po
        assert self.work_items() == [("PO_CHANGED", "harbor:4500077001")]
        (detail,) = self.db("SELECT detail FROM work_items")[0]
        assert "line 2 rejected (R5)" in detail and "line 3 held (IH)" in detail, detail

    @defer.inlineCallbacks
    def test_a_cancellation_or_duplicate_is_acknowledged_and_held_not_applied(self) -> Any:
        yield defer.ensureDeferred(self._purposes())

    async def _purposes(self) -> None:
        """BSN01 01 (cancellation) and BAK01 07 (duplicate) are valid X12 (997 AK5*A) that Wharf
        does not apply by itself: no receipt, no line status, an X12_NOT_APPLIED work item each;
        the original (00) of the same ASN is then applied."""
        await self.release_po()
        asn = (SAMPLES / "856_4010_cases.x12").read_bytes()
        assert asn.count(b"BSN|00|") == 1
        cancel = renumber(asn.replace(b"BSN|00|", b"BSN|01|"), 9003, 9041)
        assert_accepted(await self.drop("856_cancel.x12", cancel), "856")
        ack = (SAMPLES / "855_4010_cases.x12").read_bytes()
        dup = renumber(ack.replace(b"BAK|00|", b"BAK|07|"), 9002, 9042)
        assert_accepted(await self.drop("855_dup.x12", dup), "855")
        assert self.db("SELECT COUNT(*) FROM receipts") == [(0,)]
        erp_po = await self.erp("/purchase-orders/4500077001")
        assert (erp_po["status"], erp_po["lines"]) == ("sent", {}), erp_po
        items = self.db("SELECT kind, subject, detail FROM work_items ORDER BY id")
        assert [(k, s) for k, s, _ in items] == [
            ("X12_NOT_APPLIED", "harbor:856:HMD-ASN-77120:0001"),
            ("X12_NOT_APPLIED", "harbor:855:4500077001:0001"),
        ], items
        assert "purpose 01 (cancellation)" in items[0][2], items
        assert "purpose 07 (duplicate)" in items[1][2], items
        assert_accepted(await self.drop("856.x12", asn), "856")
        assert self.db("SELECT COUNT(*) FROM receipts") == [(3,)]

    @defer.inlineCallbacks
    def test_a_dropped_in_unit_list_refuses_a_unit_outside_it(self) -> Any:
        yield defer.ensureDeferred(self._dropped_in_list())

    async def _dropped_in_list(self) -> None:
        """An installation drops a (licensed) list of element 355 in mappings/x12/codelists/;
        after the hot reload, HARBOR's ASN in CS is refused by the 997 naming SN1, element 3,
        data element 355 and CS, and nothing of it is booked."""
        await self.release_po()
        folder = self.root / "mappings/x12/codelists"
        folder.mkdir(parents=True)
        shutil.copy(REPO / "samples/x12/codelists/355.csv", folder / "355.csv")
        assert await self.engine.reload_if_changed()
        assert self.engine.resources.get("x12_codelists").used["355"] == (
            "BX", "CA", "DZ", "EA", "LB", "PK",
        )  # fmt: skip
        answer = await self.drop("856_cs.x12", (SAMPLES / "856_4010_cases.x12").read_bytes())
        assert_rejected(answer, ["AK3", "SN1", "15", "", "8"], ["AK4", "3", "355", "7", "CS"])
        assert self.db("SELECT COUNT(*) FROM receipts") == [(0,)]
        assert self.work_items() == []
        # the same document in CA, a unit on the list, is accepted and booked
        ca = renumber((SAMPLES / "856_4010_cases.x12").read_bytes(), 9003, 9031)
        answer = await self.drop("856_ca.x12", ca.replace(b"|CS", b"|CA"))
        assert_accepted(answer, "856")
        assert self.db("SELECT COUNT(*) FROM receipts") == [(3,)]


def renumber(data: bytes, old: int, new: int) -> bytes:
    """A sample sent again as a new interchange: ISA13/IEA02 and GS06/GE02 ``old`` (the
    samples number both alike) become ``new``."""
    out = data.replace(b"|%09d|" % old, b"|%09d|" % new).replace(b"|%09d~" % old, b"|%09d~" % new)
    out = out.replace(b"|%d|X|" % old, b"|%d|X|" % new).replace(
        b"GE|1|%d~" % old, b"GE|1|%d~" % new
    )
    assert out.count(b"%d" % new) == 4, out
    return out


def assert_accepted(answer: list[list[str]], kind: str) -> None:
    assert [s for s in answer if s[0] == "AK5"] == [["AK5", "A"]], (kind, answer)
    assert [s for s in answer if s[0] == "AK9"] == [["AK9", "A", "1", "1", "1"]], (kind, answer)
    assert not [s for s in answer if s[0] in ("AK3", "AK4")], (kind, answer)


def assert_rejected(answer: list[list[str]], ak3: list[str], ak4: list[str]) -> None:
    assert [s[: len(ak3)] for s in answer if s[0] == "AK3"] == [ak3], answer
    assert [s[: len(ak4)] for s in answer if s[0] == "AK4"] == [ak4], answer
    assert [s for s in answer if s[0] == "AK5"] == [["AK5", "R", "5"]], answer
    assert [s for s in answer if s[0] == "AK9"] == [["AK9", "R", "1", "1", "0"]], answer
