"""Requisition to order and receipt to pay, end to end, with OpenSSH's ``sftp`` as the vendor.

The shipped channels ``po_to_vendor`` and ``x12_from_vendors`` run in a real engine with its
SFTP server; the sandbox ERP releases a PO through its webhook. The vendor (OpenSSH ``sftp``
with its key) collects the 850 from ``outbound/``, pyx12's ``x12valid`` accepts it, and the
vendor drops its 999, 855, 856 and two 810s in ``inbound/``. The sandbox then holds the PO's
status and line statuses, a goods receipt (and the on-hand it moved, equal to Wharf's ledger),
one AP invoice (the invoice that matches); the other invoice is held with PRICE; every inbound
interchange got a TA1 and a 999. The same files dropped again change nothing but are answered
again, and a resent interchange (new bytes, same ISA13) is only acknowledged again.

Then (issue 18): ACME uploads an invoice carrying HARBOR's ISA id through its own account: it
gets a TA1 R 006, a SENDER_REFUSED work item and an audit record, and nothing is booked. ACME
acknowledges a second PO with a change (8 BX at 137.50 for 10 BX at 125.00); the ERP gets the
acknowledged quantity and price; the buyer accepts it with ``wharf po accept``; the invoice at
that price is matched and posted. HARBOR, on its own account, is served by the same channel
with its own profile (004010, a 997, no TA1).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from engine.runtime import Engine
from engine.x12.documents import read_purchase_order
from engine.x12.samplegen import (
    VENDOR,
    group,
    interchange,
    render,
    transaction_set,
    vendor_answers,
    vendor_invoice,
)
from engine.x12.segments import transaction_sets
from tests.integration.x12_harness import EngineStore, SandboxErp

REPO = Path(__file__).resolve().parents[2]
SFTP = shutil.which("sftp")
KEYGEN = shutil.which("ssh-keygen")
X12VALID = Path(sys.executable).parent / "x12valid"

PO = json.loads((REPO / "samples/erp/purchase_order_4500012345.json").read_text())


@pytest.mark.integration
class ProcurementEndToEnd(EngineStore, SandboxErp, unittest.TestCase):
    timeout = 180

    def setUp(self) -> Any:
        if SFTP is None or KEYGEN is None:
            raise unittest.SkipTest(
                "needs OpenSSH's sftp and ssh-keygen (Debian package openssh-client)"
            )
        self.base = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.base, True)
        self.root = self.base / "project"
        (self.root / "channels").mkdir(parents=True)
        for name in ("po_to_vendor.yaml", "x12_from_vendors.yaml"):
            shutil.copy(REPO / "channels" / name, self.root / "channels" / name)
        shutil.copytree(REPO / "mappings", self.root / "mappings")
        shutil.copytree(REPO / "samples", self.root / "samples")  # the channels' tests name them
        self.key = self.base / "vendor_key"
        subprocess.run([KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True)
        pub = (self.base / "vendor_key.pub").read_text().strip()
        (self.root / "routes.yaml").write_text(
            "store: var/wharf.db\nreload_interval: 0\n"
            "sftp_server:\n"
            "  listen: tcp:0:interface=127.0.0.1\n"
            "  host_key: var/sftp/host_key\n"
            "  partners:\n"
            "    - name: acmemed\n"
            "      root: var/sftp/acmemed\n"
            f"      authorized_keys: ['{pub}']\n"
            "    - name: harbor\n"
            "      root: var/sftp/harbor\n"
            f"      authorized_keys: ['{pub}']\n"
        )
        # HARBOR collects our files from its account here (it runs its own server otherwise)
        tp = self.root / "mappings/trading_partners.yaml"
        text = tp.read_text()
        start = text.index("  # Harbor runs its own SFTP server")
        tp.write_text(text[:start] + "  delivery:\n    sftp_server: {account: harbor}\n")
        self.start_erp(self.base)
        self.engine = Engine(self.root, reactor)
        d = defer.ensureDeferred(self.engine.start())
        d.addCallback(lambda _: self.webhook.start())
        self.addCleanup(lambda: defer.ensureDeferred(self.engine.stop()))
        return d

    # ------------------------------------------------------------------ helpers

    def sftp(self, commands: list[str], user: str = "acmemed") -> str:
        port = self.engine.sftp.listening.getHost().port
        known = self.base / "known_hosts"
        pub = (self.root / "var/sftp/host_key.pub").read_text().split()
        known.write_text(f"[127.0.0.1]:{port} {pub[0]} {pub[1]}\n")
        batch = self.base / "batch"
        batch.write_text("\n".join(commands) + "\n")
        done = subprocess.run(
            [
                SFTP,
                "-b",
                str(batch),
                "-i",
                str(self.key),
                "-P",
                str(port),
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                f"UserKnownHostsFile={known}",
                "-o",
                "BatchMode=yes",
                f"{user}@127.0.0.1",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.base,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    async def put(self, name: str, data: bytes, user: str = "acmemed") -> None:
        local = self.base / "up" / name
        local.parent.mkdir(exist_ok=True)
        local.write_bytes(data)
        await threads.deferToThread(self.sftp, [f"put {local} inbound/{name}"], user)
        await self.until(lambda: (self.root / f"var/sftp/{user}/archive" / name).exists())
        await self.settled()

    async def settled(self) -> None:
        """Every message processed and every delivery done."""
        await self.until(self.idle)

    def snapshot(self) -> dict[str, Any]:
        state = self.sandbox.state.counts()
        return {
            "gr": state["goods_receipts"],
            "ap": state["ap_invoices"],
            "receipts": self.db("SELECT COUNT(*), SUM(base_quantity) FROM receipts")[0],
            "invoices": self.db("SELECT invoice_number, status FROM invoices ORDER BY id"),
            "onhand": self.db(
                "SELECT item_id, quantity FROM onhand WHERE location_id = 'LOC-OR-MAIN' "
                "AND item_id IN ('ITEM-100123', 'ITEM-202042') ORDER BY item_id"
            ),
            "work": self.db("SELECT kind, subject FROM work_items ORDER BY id"),
            "po_lines": self.db("SELECT line, status FROM po_lines ORDER BY line"),
        }

    # ------------------------------------------------------------------ the flow

    @defer.inlineCallbacks
    def test_po_out_and_vendor_documents_in(self) -> Any:
        yield defer.ensureDeferred(self._flow())

    async def _flow(self) -> None:
        # 1. The ERP releases the PO; it leaves as an 850 the vendor collects.
        await self.erp("/purchase-orders", PO)
        await self.erp("/purchase-orders/4500012345/release", {})
        await self.until(lambda: any(n.startswith("850_") for n in self.outbound()))
        await self.settled()
        (name,) = [n for n in self.outbound() if n.startswith("850_")]
        await threads.deferToThread(self.sftp, [f"get outbound/{name} got_{name}"])
        data = (self.base / f"got_{name}").read_bytes()
        check = subprocess.run(
            [
                str(X12VALID),
                "--map-path",
                str(REPO / "engine/x12/maps"),
                str(self.base / f"got_{name}"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        # x12valid's console script exits with sys.exit(main()) and main() returns True on
        # success: its exit code is 1 then. Its verdict is the "<file>: OK" line.
        assert f"got_{name}: OK" in check.stdout + check.stderr, check.stdout + check.stderr
        ((_ic, grp, ts),) = list(transaction_sets(data))
        po = read_purchase_order(ts)
        assert po.po_number == "4500012345" and [ln.unit for ln in po.lines] == ["BX", "PR"]
        erp_po = await self.erp("/purchase-orders/4500012345")
        assert erp_po["status"] == "sent"
        assert erp_po["transmission"]["isa13"] == _ic.control_number

        answers = vendor_answers("4500012345", grp.control_number, ts.control_number)
        # 2. The vendor's 999 accepts our 850.
        await self.put("999_1.x12", answers["999_for_850.x12"])
        assert self.db("SELECT ack_status FROM x12_outbound WHERE document = '850'") == [
            ("accepted",)
        ]

        # 3. 855: line 1 accepted, line 2 backordered: the ERP gets the line statuses.
        await self.put("855_1.x12", answers["855_ack.x12"])
        erp_po = await self.erp("/purchase-orders/4500012345")
        assert erp_po["status"] == "changed"
        assert {k: v["status"] for k, v in erp_po["lines"].items()} == {
            "1": "accepted",
            "2": "backordered",
        }
        assert self.db("SELECT kind, detail FROM work_items WHERE kind = 'PO_CHANGED'") == [
            ("PO_CHANGED", "855 AC for PO 4500012345: line 2 backordered (IB)")
        ]

        # 4. 856: 2 BX (10 EA) of screws and 3 of 5 pairs of gloves: receipts and on-hand.
        before = dict(self.snapshot()["onhand"])
        await self.put("856_1.x12", answers["856_asn.x12"])
        snap = self.snapshot()
        assert snap["gr"] == 1 and snap["receipts"][0] == 2
        after = dict(snap["onhand"])
        assert Decimal(after["ITEM-100123"]) - Decimal(before.get("ITEM-100123", "0")) == 10
        assert Decimal(after["ITEM-202042"]) - Decimal(before.get("ITEM-202042", "0")) == 3
        gr = (await self.erp("/goods-receipts"))["goods-receipts"][0]["doc"]
        assert [(ln["po_line"], ln["quantity"], ln["lot"]) for ln in gr["lines"]] == [
            ("1", "10", "LOT2025A"),
            ("2", "3", None),
        ]

        # 5. Two invoices: one matches (to AP), one is priced over tolerance (held, PRICE).
        good, dear = answers["810_matching.x12"], answers["810_overpriced.x12"]
        await self.put("810_1.x12", good)
        await self.put("810_2.x12", dear)
        snap = self.snapshot()
        assert snap["invoices"] == [("INV-55501", "matched"), ("INV-55502", "held")]
        assert snap["ap"] == 1
        ap = (await self.erp("/ap-invoices"))["ap-invoices"][0]["doc"]
        assert (ap["invoice_number"], ap["total"]) == ("INV-55501", "250.00")
        held = self.db("SELECT detail FROM work_items WHERE kind = 'INVOICE_HELD'")
        assert len(held) == 1 and held[0][0].startswith("PRICE line 2"), held

        # Every inbound interchange got a TA1 (asked for) and a 999 in outbound/.
        names = self.outbound()
        assert sum(n.startswith("TA1_") for n in names) == 5
        assert sum(n.startswith("999_") for n in names) == 4  # not for the 999 itself

        # 6. The same files again: nothing changes. A resent 810 with new bytes but the same
        #    ISA13 is acknowledged and not applied again.
        before = self.snapshot()
        for i, data in enumerate([answers["855_ack.x12"], answers["856_asn.x12"], good, dear]):
            await self.put(f"again_{i}.x12", data)
        await self.put("resent_810.x12", good.replace(b"V0042", b"V0043"))
        after = self.snapshot()
        assert after == before
        # a new interchange with the same invoice number is a duplicate, for a person
        again = vendor_invoice("4500012345", "INV-55501", ["1", "2", "BX", "125", "PE"], 25000, 106)
        await self.put("dup_810.x12", again)
        assert self.snapshot()["ap"] == 1
        assert [k for k, _ in self.snapshot()["work"]].count("INVOICE_DUPLICATE") == 1
        # every file of step 6 was answered again (the same bytes too): TA1 and 999 each
        names = self.outbound()
        assert sum(n.startswith("TA1_") for n in names) == 5 + 6
        assert sum(n.startswith("999_") for n in names) == 4 + 6

        # 7. The ERP's on-hand moved with the goods receipt, as the ledger's did.
        erp_onhand = {
            r["item"]: Decimal(r["on_hand"])
            for r in self.sandbox.state.inventory("LOC-OR-MAIN")
            if r["item"] in ("ITEM-100123", "ITEM-202042")
        }
        assert erp_onhand == {k: Decimal(v) for k, v in self.snapshot()["onhand"]}

        await self._impersonation()
        await self._change_accepted_then_invoiced()
        await self._harbor_on_its_own_account()

    async def _impersonation(self) -> None:
        """8. An invoice with HARBOR's ISA and GS ids, uploaded through ACME's account: a TA1 R
        006 to ACME, a SENDER_REFUSED work item, an audit record; nothing booked."""
        before = self.snapshot()
        ta1_before = set(self.outbound())
        raw = (REPO / "samples/x12/810_4010_harbor.x12").read_bytes()
        await self.put("harbor_810.x12", raw)
        after = self.snapshot()
        assert after["invoices"] == before["invoices"] and after["ap"] == before["ap"]
        (new,) = set(self.outbound()) - ta1_before
        assert new.startswith("TA1_acmemed_")
        text = (self.root / "var/sftp/acmemed/outbound" / new).read_text()
        assert "*ZZ*ACMEMED        *" in text and "*R*006~" in text
        assert self.db("SELECT kind FROM work_items WHERE kind = 'SENDER_REFUSED'") == [
            ("SENDER_REFUSED",)
        ]
        (entry,) = self.db("SELECT actor, detail FROM audit WHERE action = 'x12.sender_refused'")
        assert entry[0] == "sftp:acmemed" and json.loads(entry[1])["claimed"] == "harbor"
        assert self.db("SELECT origin FROM messages WHERE id = (SELECT target FROM audit "
                       "WHERE action = 'x12.sender_refused')") == [("sftp:acmemed",)]  # fmt: skip
        assert self.outbound("harbor") == [] or all(
            not n.startswith("TA1_") for n in self.outbound("harbor")
        )

    async def _change_accepted_then_invoiced(self) -> None:
        """9. PO 4500012346 (10 BX of screws at 125.00): ACME acknowledges 8 BX at 137.50;
        the ERP gets the acknowledged quantity and price; the buyer accepts the change with
        `wharf po accept`; the ERP's PO takes it; the 856 and the invoice at 137.50 for 8 BX
        match and go to AP with nobody releasing anything."""
        from engine.cli import main

        doc = {**PO, "po_number": "4500012346", "lines": [{**PO["lines"][0], "qty": "10"}]}
        await self.erp("/purchase-orders", doc)
        await self.erp("/purchase-orders/4500012346/release", {})
        await self.until(lambda: len([n for n in self.outbound() if n.startswith("850_")]) == 2)
        await self.settled()
        ack = [
            ["BAK", "00", "AC", "4500012346", "20260115"],
            ["PO1", "1", "8", "BX", "137.5", "PE", "VC", "ORTH-SCR-35"],
            ["ACK", "IQ", "8", "BX", "068", "20260120"],
            ["CTT", "1"],
        ]
        await self.put("855_change.x12", acme_file("PR", "855", ack, 201))
        erp_po = await self.erp("/purchase-orders/4500012346")
        line = erp_po["lines"]["1"]
        assert (line["status"], line["quantity"], line["unit_price"]) == ("changed", "8", "137.5")
        assert (line["ordered_quantity"], line["ordered_price"]) == ("10", "125.00")
        (change_id,) = [
            r[0] for r in self.db("SELECT id FROM po_changes WHERE status = 'proposed'")
        ]
        args = ["--root", str(self.root), "--user", "buyer.jane", "po", "accept", str(change_id)]
        assert await threads.deferToThread(main, [*args, "--note", "8 BX is fine"]) == 0
        await self.settled()
        erp_po = await self.erp("/purchase-orders/4500012346")
        assert erp_po["lines"]["1"]["status"] == "change_accepted"
        assert (erp_po["doc"]["lines"][0]["qty"], erp_po["doc"]["lines"][0]["unit_price"]) == (
            "8",
            "137.5",
        )
        asn = [
            ["BSN", "00", "SHP2", "20260120", "1400", "0001"],
            ["HL", "1", "", "S"],
            ["HL", "2", "1", "O"],
            ["PRF", "4500012346"],
            ["HL", "3", "2", "I"],
            ["LIN", "1", "VC", "ORTH-SCR-35"],
            ["SN1", "1", "8", "BX"],
            ["CTT", "3"],
        ]
        await self.put("856_change.x12", acme_file("SH", "856", asn, 202))
        it1 = ["1", "8", "BX", "137.50", "PE", "VC", "ORTH-SCR-35"]
        await self.put(
            "810_change.x12", vendor_invoice("4500012346", "INV-55601", it1, 110000, 203)
        )
        assert self.snapshot()["invoices"][-1] == ("INV-55601", "matched")
        ap = (await self.erp("/ap-invoices"))["ap-invoices"][-1]["doc"]
        assert (ap["invoice_number"], ap["total"]) == ("INV-55601", "1100.00")
        (posted,) = ap["lines"]
        assert (posted["quantity"], posted["uom"], posted["unit_price"]) == ("8", "BX", "137.5000")
        assert (posted["stock_quantity"], posted["stock_uom"]) == ("40", "EA")
        assert ("po.change.accept",) in self.db("SELECT action FROM audit")

    async def _harbor_on_its_own_account(self) -> None:
        """10. HARBOR uploads through its own account, to the same channel: its 004010 invoice
        is booked as HARBOR's, answered with HARBOR's 997 and no TA1 in HARBOR's outbound/,
        and held NO_PO: it bills ACME's PO."""
        raw = (
            (REPO / "samples/x12/810_4010_harbor.x12")
            .read_bytes()
            .replace(b"000008101", b"000008102")
        )
        await self.put("harbor_own_810.x12", raw, user="harbor")
        (row,) = self.db("SELECT partner, status, reasons FROM invoices WHERE partner = 'harbor'")
        assert row[:2] == ("harbor", "held")
        # it bills ACME's PO: HARBOR may not
        (reason,) = json.loads(row[2])
        assert reason["reason"] == "NO_PO" and "of vendor VND-ACMEMED" in reason["message"]
        answers = [n.split("_")[0] for n in self.outbound("harbor")]
        assert answers == ["997"], answers


def acme_file(fid: str, set_id: str, body: list[list[str]], control: int) -> bytes:
    """One 005010 interchange from ACME holding one set, TA1 asked for."""
    g = group(fid, control, [transaction_set(set_id, "0001", body)], version="005010")
    return render(
        interchange([g], control=control, version="005010", sender=VENDOR, ack_requested=True)
    )
