"""The ``http`` destination's bulk calls against the sandbox's per-item bulk endpoint, and its
mutual TLS against a server that demands a client certificate; real sockets, real reactor."""

from __future__ import annotations

import datetime
import ipaddress
import json
import shutil
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer, reactor, ssl
from twisted.trial import unittest
from twisted.web import resource, server

from engine.destinations.http import HTTP_SPEC, HttpDestination
from engine.errors import DeliveryError
from engine.model import Delivery
from engine.sandbox.service import SandboxService
from engine.spec import Context

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning"),
]


def options(**values: Any) -> Any:
    ctx = Context("<test>")
    config = HTTP_SPEC.parse(yaml.compose(yaml.safe_dump(values)), ctx, "")
    assert not ctx.errors, [str(e) for e in ctx.errors]
    return config


def issue(n: int, qty: str) -> Delivery:
    doc = {
        "type": "inventory_issue",
        "encounter": "ENC-1",
        "lines": [
            {
                "usage_id": f"CU-{n}",
                "item_id": "ITEM-100123",
                "quantity": qty,
                "uom": "EA",
                "location_id": "LOC-OR-MAIN",
                "cost_center": "CC-7010",
                "gl_account": "5410-278",
            }
        ],
    }
    return Delivery(
        id=n,
        message_id=f"m-{n}",
        channel="usage",
        destination="erp",
        payload=json.dumps(doc).encode(),
        content_type="application/json",
        idempotency_key=f"key-{n}",
        correlation_id=f"c-{n}",
        order_key=None,
        attempts=0,
        created_at=0.0,
        meta={},
    )


class HttpBulkTests(unittest.TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.sandbox = SandboxService(self.tmp / "s.db", http_port=0, mllp_port=0, reactor=reactor)
        self.sandbox.start()
        self.addCleanup(lambda: defer.ensureDeferred(self.sandbox.stop()))
        self.sandbox.state.set_on_hand("LOC-OR-MAIN", "ITEM-100123", Decimal(10), "EA")

    @defer.inlineCallbacks
    def test_a_bulk_call_settles_each_item_and_a_resend_reuses_its_key(self) -> Any:
        """Three issues in one POST {"items": [...]} under the call's own Idempotency-Key; the
        one with a zero quantity is refused (422: permanent, that item only), the others are
        posted. The same call sent again with the same key is answered from the sandbox's
        memory of that key: stock moves once."""
        dest = HttpDestination(
            options(
                url=self.sandbox.http_url + "/inventory/issues/bulk",
                bulk={"max_items": 10, "items_field": "items"},
            ),
            reactor=reactor,
            channel="usage",
            name="erp",
            base_dir=self.tmp,
            environ={},
        )
        self.addCleanup(dest.close)
        self.assertEqual((dest.bulk.max_items, dest.bulk.max_wait), (10, 0.2))
        batch = [issue(1, "2"), issue(2, "0"), issue(3, "3")]
        outcomes = yield defer.ensureDeferred(dest.send_batch(batch, "call-key-1"))
        self.assertIsNone(outcomes[0].error)
        self.assertIsNone(outcomes[2].error)
        self.assertFalse(outcomes[1].error.retryable)
        self.assertIn("bulk item HTTP 422", outcomes[1].error.message)
        self.assertEqual(json.loads(outcomes[0].response)["status"], 201)
        self.assertEqual(self.sandbox.state.on_hand("LOC-OR-MAIN", "ITEM-100123"), Decimal(5))
        again = yield defer.ensureDeferred(dest.send_batch(batch, "call-key-1"))
        self.assertEqual([o.response for o in again], [o.response for o in outcomes])
        self.assertEqual(self.sandbox.state.counts()["idempotent_replays"], 1)
        self.assertEqual(self.sandbox.state.on_hand("LOC-OR-MAIN", "ITEM-100123"), Decimal(5))


def certificate(name: str, issuer: Any = None, key: Any = None) -> tuple[Any, Any]:
    """A certificate for ``name`` (a CA when ``issuer`` is None) and its key."""
    own = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer is not None else subject)
        .public_key(own.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if name == "localhost":
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    cert = builder.sign(key if key is not None else own, hashes.SHA256())
    return cert, own


def pem(cert: Any, key: Any = None) -> bytes:
    out = cert.public_bytes(serialization.Encoding.PEM)
    if key is not None:
        out += key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    return out


class Hello(resource.Resource):
    isLeaf = True

    def render_POST(self, request: Any) -> bytes:
        peer = request.transport.getPeerCertificate()
        if peer is None:
            return b"hello nobody"
        name = peer.to_cryptography().subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return b"hello " + name[0].value.encode()


class MutualTlsTests(unittest.TestCase):
    timeout = 20

    def setUp(self) -> None:
        self.tmp = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.tmp, True)
        ca, ca_key = certificate("wharf test CA")
        server_cert, server_key = certificate("localhost", ca, ca_key)
        client_cert, client_key = certificate("wharf-client", ca, ca_key)
        (self.tmp / "ca.pem").write_bytes(pem(ca))
        (self.tmp / "client.pem").write_bytes(pem(client_cert, client_key))
        authority = ssl.Certificate.loadPEM(pem(ca))
        server_pair = ssl.PrivateCertificate.loadPEM(pem(server_cert, server_key))
        context = server_pair.options(authority)  # verify=True: a client certificate is required
        self.port = reactor.listenSSL(0, server.Site(Hello()), context, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.url = f"https://127.0.0.1:{self.port.getHost().port}/api"

    def destination(self, **extra: Any) -> HttpDestination:
        dest = HttpDestination(
            options(url=self.url, ca_file="ca.pem", **extra),
            reactor=reactor,
            channel="usage",
            name="erp",
            base_dir=self.tmp,
            environ={},
        )
        self.addCleanup(dest.close)
        return dest

    @defer.inlineCallbacks
    def test_the_client_certificate_is_presented(self) -> Any:
        """With client_certificate the server (which demands one signed by its CA) sees the
        client's name; without it the handshake fails: retryable, not ambiguous."""
        body = yield defer.ensureDeferred(
            self.destination(client_certificate="client.pem").send(issue(1, "1"))
        )
        self.assertEqual(body, b"hello wharf-client")
        try:
            yield defer.ensureDeferred(self.destination().send(issue(2, "1")))
        except DeliveryError as e:
            self.assertTrue(e.retryable)
            self.assertFalse(e.ambiguous)
        else:
            self.fail("the handshake without a client certificate succeeded")
