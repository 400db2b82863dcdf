"""A trading partner can only speak for itself, on every path a file reaches Wharf (issue 18
item 1), and what cannot be read is answered all the same (issue 12 item 6), with a real
engine, real sockets and real files:

- an ``http`` source with bearer tokens: the token's name is the credential (``token:NAME``);
- an ``mllp`` source with mutual TLS: the client certificate's CN (``tls:CN``), certificates
  made in the test;
- the drop folder inside an account of Wharf's SFTP server (``sftp:ACCOUNT``; OpenSSH's
  ``sftp`` itself is in test_x12_procurement.py): a malformed ISA and bytes that are no X12
  at all, dropped as the server's upload would leave them.

ACME MEDICAL's token and certificate are bound to it in the project's
``mappings/trading_partners.yaml``; an invoice carrying HARBOR's ids that comes with one of
them is answered with a TA1 R 006 in ACME's outbound/, and nothing of it is booked.
"""

from __future__ import annotations

import http.client
import shutil
import socket
import ssl
import tempfile
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from engine.runtime import Engine
from engine.tokens import token_sha256
from tests.integration.test_mllp_tls import make_cert, pem
from tests.integration.x12_harness import EngineStore, sftp_routes

REPO = Path(__file__).resolve().parents[2]
ACME_TOKEN = "acme-edi-token-for-this-test"
SB, EB = b"\x0b", b"\x1c\x0d"
ACME_810 = (REPO / "samples/x12/810_4010.x12").read_bytes()
HARBOR_810 = (REPO / "samples/x12/810_4010_harbor.x12").read_bytes()


def _procurement_channel(source: str) -> str:
    return (
        f"source:\n{source}"
        "codec:\n  x12: {not_x12: store}\n"
        "transformer:\n  - transform: x12_inbound\n"
        "procurement:\n  partner_out: vendors\n"
        "destinations:\n  - name: vendors\n    x12_partner: {fsync: false}\n"
    )


@pytest.mark.integration
class PartnerIdentity(EngineStore, unittest.TestCase):
    timeout = 120

    def setUp(self) -> Any:
        self.base = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.base, True)
        root = self.root = self.base / "project"
        (root / "channels").mkdir(parents=True)
        shutil.copy(REPO / "channels/x12_from_vendors.yaml", root / "channels")
        shutil.copytree(REPO / "mappings", root / "mappings")
        shutil.copytree(REPO / "samples", root / "samples")
        tp = root / "mappings/trading_partners.yaml"
        text = tp.read_text()
        anchor = "  hold: line\n"
        tp.write_text(
            text.replace(
                anchor,
                anchor + "  inbound:\n    http_tokens: [acme-edi]\n"
                "    tls_clients: [edi.acmemed.example]\n",
                1,
            )
        )
        tls = root / "tls"
        tls.mkdir()
        ca = make_cert("Test CA", None, ca=True)
        server = make_cert("localhost", ca, server=True)
        (tls / "ca.pem").write_bytes(pem(ca[0]))
        (tls / "server.crt").write_bytes(pem(server[0]))
        (tls / "server.key").write_bytes(
            pem(server[0], server[1]).split(b"-----END CERTIFICATE-----\n")[1]
        )
        for name, cn in (("acme", "edi.acmemed.example"), ("other", "pou-cabinet")):
            cert, key = make_cert(cn, ca)
            (tls / f"{name}.pem").write_bytes(pem(cert, key))
        (root / "routes.yaml").write_text(sftp_routes("acmemed", "harbor"))
        (root / "channels/x12_http.yaml").write_text(
            _procurement_channel(
                "  http:\n    listen: tcp:0:interface=127.0.0.1\n    path: /x12\n"
                f"    tokens:\n      - {{name: acme-edi, sha256: {token_sha256(ACME_TOKEN)}}}\n"
            )
        )
        (root / "channels/x12_mllp.yaml").write_text(
            _procurement_channel(
                "  mllp:\n"
                "    listen: ssl:0:interface=127.0.0.1:privateKey=tls/server.key:"
                "certKey=tls/server.crt\n"
                "    client_ca: tls/ca.pem\n"
            )
        )
        self.engine = Engine(root, reactor)
        d = defer.ensureDeferred(self.engine.start())
        self.addCleanup(lambda: defer.ensureDeferred(self.engine.stop()))
        return d

    # ------------------------------------------------------------------ helpers

    def post(self, body: bytes, token: str) -> int:
        port = self.engine.sources["x12_http"].port.getHost().port
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/x12", body, {"Authorization": f"Bearer {token}"})
        status = conn.getresponse().status
        conn.close()
        return status

    def mllp(self, frame: bytes, client: str) -> bytes:
        """Mutual TLS with the given client certificate; one frame; what came back before
        the engine closed the connection (an X12 frame gets no HL7 answer)."""
        port = self.engine.sources["x12_mllp"].port.getHost().port
        ctx = ssl.create_default_context(cafile=str(self.root / "tls/ca.pem"))
        ctx.load_cert_chain(str(self.root / "tls" / client))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(SB + frame + EB)
                got = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        return got
                    got += chunk

    def ta1_files(self) -> list[str]:
        return [n for n in self.outbound() if n.startswith("TA1_")]

    def ta1_codes(self) -> list[str]:
        out = []
        for name in self.ta1_files():
            text = (self.root / "var/sftp/acmemed/outbound" / name).read_text()
            ta1 = next(s for s in text.split("~") if s.strip().startswith("TA1"))
            out.append("*".join(ta1.strip().split("*")[4:6]))
        return out

    # ------------------------------------------------------------------ http token

    @defer.inlineCallbacks
    def test_an_http_token_speaks_for_its_partner_only(self) -> Any:
        """ACME's token with ACME's invoice: booked, acknowledged in ACME's outbound/. ACME's
        token with HARBOR's ids: stored, answered TA1 R 006 in ACME's outbound/, a
        SENDER_REFUSED work item, nothing booked. A wrong token: 401, nothing stored."""
        status = yield threads.deferToThread(self.post, ACME_810, ACME_TOKEN)
        self.assertEqual(status, 202)
        yield defer.ensureDeferred(self.until(lambda: self.idle() and self.ta1_files()))
        self.assertEqual(self.db("SELECT partner FROM invoices"), [("acmemed",)])
        status = yield threads.deferToThread(self.post, HARBOR_810, ACME_TOKEN)
        self.assertEqual(status, 202)
        yield defer.ensureDeferred(self.until(lambda: self.idle() and "R*006" in self.ta1_codes()))
        self.assertEqual(self.db("SELECT partner FROM invoices"), [("acmemed",)])
        self.assertEqual(
            self.db("SELECT DISTINCT origin FROM messages WHERE channel = 'x12_http'"),
            [("token:acme-edi",)],
        )
        self.assertEqual(
            self.db("SELECT kind FROM work_items WHERE kind = 'SENDER_REFUSED'"),
            [("SENDER_REFUSED",)],
        )
        (actor,) = self.db("SELECT actor FROM audit WHERE action = 'x12.sender_refused'")
        self.assertEqual(actor, ("token:acme-edi",))
        status = yield threads.deferToThread(self.post, HARBOR_810, "not-a-token")
        self.assertEqual(status, 401)
        self.assertEqual(
            self.db("SELECT COUNT(*) FROM messages WHERE channel = 'x12_http'"), [(2,)]
        )

    # ------------------------------------------------------------------ mllp client certificate

    @defer.inlineCallbacks
    def test_a_client_certificate_speaks_for_its_partner_only(self) -> Any:
        """Over mutual TLS, ACME's certificate (CN edi.acmemed.example) with HARBOR's ids:
        TA1 R 006 to ACME, nothing booked; with ACME's own invoice: booked. A certificate that
        no partner is bound to: held naming the trading partners table."""
        yield threads.deferToThread(self.mllp, HARBOR_810, "acme.pem")
        yield defer.ensureDeferred(self.until(lambda: self.idle() and self.ta1_files()))
        self.assertEqual(self.ta1_codes(), ["R*006"])
        self.assertEqual(self.db("SELECT COUNT(*) FROM invoices"), [(0,)])
        yield threads.deferToThread(self.mllp, ACME_810, "acme.pem")
        yield defer.ensureDeferred(
            self.until(lambda: self.idle() and self.db("SELECT COUNT(*) FROM invoices")[0][0])
        )
        self.assertEqual(self.db("SELECT partner FROM invoices"), [("acmemed",)])
        self.assertEqual(
            self.db("SELECT DISTINCT origin FROM messages WHERE channel = 'x12_mllp'"),
            [("tls:edi.acmemed.example",)],
        )
        yield threads.deferToThread(self.mllp, ACME_810.replace(b"8101", b"8102"), "other.pem")
        yield defer.ensureDeferred(self.until(self.idle))
        (row,) = self.db("SELECT status, error FROM messages WHERE origin = 'tls:pou-cabinet'")
        self.assertEqual(row[0], "error")
        self.assertIn("'origin tls:pou-cabinet' in mapping table 'trading_partners'", row[1])

    # ------------------------------------------------------------------ issue 12 item 6

    @defer.inlineCallbacks
    def test_unreadable_files_in_a_partner_inbound_are_answered(self) -> Any:
        """Real files in ACME's inbound/ (each a MappingMiss error or a silent error/ before):
        an ISA whose sender qualifier is broken gets TA1 R 005 in ACME's outbound/ (the
        envelope can be read); an ISA missing two elements, and a file that is no X12 at all,
        get a plain-words refusal there and an X12_REFUSED work item each. Every file is
        taken (archive/), nothing goes to error/, nothing is booked."""
        inbound = self.root / "var/sftp/acmemed/inbound"
        yield defer.ensureDeferred(self.until(inbound.is_dir))
        good = ACME_810.decode()
        qualifier = good.replace("*ZZ*ACMEMED        *", "*Z!*ACMEMED        *", 1).encode()
        shifted = good.replace("*00*          *ZZ*ACMEMED", "*ZZ*ACMEMED", 1).encode()
        files = {
            "bad_qualifier.x12": qualifier,
            "shifted_isa.x12": shifted,
            "invoice.pdf": b"%PDF-1.4 this is our invoice\n",
        }
        for name, data in files.items():
            (inbound / name).write_bytes(data)
        archive = self.root / "var/sftp/acmemed/archive"
        yield defer.ensureDeferred(self.until(lambda: all((archive / n).exists() for n in files)))
        yield defer.ensureDeferred(self.until(lambda: self.idle() and len(self.outbound()) == 3))
        refusals = [n for n in self.outbound() if n.startswith("REFUSED_acmemed_")]
        self.assertEqual(len(refusals), 2)
        for name in refusals:
            text = (self.root / "var/sftp/acmemed/outbound" / name).read_text()
            self.assertIn("No interchange header (ISA) could be read", text)
        self.assertEqual(self.ta1_codes(), ["R*005"])
        self.assertEqual(self.db("SELECT kind FROM work_items"), [("X12_REFUSED",)] * 2)
        self.assertEqual(self.db("SELECT DISTINCT status FROM messages"), [("sent",)])
        self.assertEqual(self.db("SELECT COUNT(*) FROM invoices"), [(0,)])
        errors = self.root / "var/sftp/acmemed/error"
        self.assertEqual(sorted(errors.iterdir()) if errors.is_dir() else [], [])

    # ------------------------------------------------------------------ issue 18 item 6

    @defer.inlineCallbacks
    def test_the_same_arrival_twice_is_a_duplicate_a_new_upload_is_not(self) -> Any:
        """The front door scopes X12's dedup key to the arrival: the same file taken twice
        (a crash between the commit and the move) is a duplicate and answered once; the
        same bytes uploaded again are a new message, answered again and applied once."""
        engine = self.engine

        def receive(arrival: str) -> Any:
            return defer.ensureDeferred(
                engine.receive(
                    "x12_from_vendors", ACME_810, "f.x12", origin="sftp:acmemed", arrival=arrival
                )
            )

        first = yield receive("f.x12:1:100:512")
        retake = yield receive("f.x12:1:100:512")
        resend = yield receive("f.x12:2:200:512")
        self.assertEqual([first.kind, retake.kind, resend.kind], ["stored", "duplicate", "stored"])
        self.assertEqual(retake.message_id, first.message_id)
        yield defer.ensureDeferred(self.until(lambda: self.idle() and len(self.ta1_files()) == 2))
        self.assertEqual(self.db("SELECT COUNT(*) FROM invoices"), [(1,)])
        self.assertEqual(sum(n.startswith("999_") for n in self.outbound()), 2)
