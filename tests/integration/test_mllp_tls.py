"""MLLP over TLS and mutual TLS, with certificates made in the test (cryptography)."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import socket
import ssl
import tempfile
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer, reactor, threads
from twisted.trial import unittest

from engine.codecs.hl7v2 import tokenize
from engine.runtime import Engine

ROOT = Path(__file__).resolve().parents[2]
STENT = (ROOT / "samples/hl7/dft_p03_stent_cath.hl7").read_bytes()
SB, EB = b"\x0b", b"\x1c\x0d"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_cert(
    cn: str, issuer: tuple[Any, Any] | None, *, ca: bool = False, server: bool = False
) -> tuple[Any, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer[0].subject if issuer else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    return cert, key


def pem(cert: Any, key: Any | None = None) -> bytes:
    out = cert.public_bytes(serialization.Encoding.PEM)
    if key is not None:
        out += key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    return out


@pytest.mark.integration
class MllpTlsTests(unittest.TestCase):
    def setUp(self) -> Any:
        base = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, base, True)
        self.root = base / "p"
        (self.root / "channels").mkdir(parents=True)
        (self.root / "tls").mkdir()
        self.ca = make_cert("Test CA", None, ca=True)
        server = make_cert("localhost", self.ca, server=True)
        self.client = make_cert("pou-cabinet", self.ca)
        self.stranger_ca = make_cert("Other CA", None, ca=True)
        self.stranger = make_cert("intruder", self.stranger_ca)
        tls = self.root / "tls"
        (tls / "ca.pem").write_bytes(pem(self.ca[0]))
        (tls / "server.crt").write_bytes(pem(server[0]))
        (tls / "server.key").write_bytes(
            pem(server[0], server[1]).split(b"-----END CERTIFICATE-----\n")[1]
        )
        for name, (cert, key) in {"client": self.client, "stranger": self.stranger}.items():
            (tls / f"{name}.pem").write_bytes(pem(cert, key))
        (self.root / "routes.yaml").write_text("store: var/wharf.db\nreload_interval: 0\n")
        (self.root / "channels/t.yaml").write_text(
            "source:\n  mllp:\n"
            "    listen: ssl:0:interface=127.0.0.1:privateKey=tls/server.key:certKey=tls/server.crt\n"
            "    client_ca: tls/ca.pem\n"
            "codec: {hl7v2: {}}\n"
        )
        self.engine = Engine(self.root, reactor)
        d = defer.ensureDeferred(self.engine.start())
        self.addCleanup(lambda: defer.ensureDeferred(self.engine.stop()))
        return d

    def port(self) -> int:
        return self.engine.sources["t"].port.getHost().port

    def exchange(self, client_pem: str | None) -> bytes:
        """A blocking TLS client (Python's ssl) sending one frame; returns the ACK block."""
        ctx = ssl.create_default_context(cafile=str(self.root / "tls/ca.pem"))
        if client_pem:
            ctx.load_cert_chain(str(self.root / "tls" / client_pem))
        with socket.create_connection(("127.0.0.1", self.port()), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(SB + STENT + EB)
                buf = b""
                while EB not in buf:
                    chunk = s.recv(65536)
                    if not chunk:
                        raise ConnectionError("closed before any ACK")
                    buf += chunk
        return buf.split(EB)[0].lstrip(SB)

    @defer.inlineCallbacks
    def test_client_with_a_certificate_from_the_ca_gets_its_ack(self) -> Any:
        """Mutual TLS: a client certificate signed by client_ca is accepted; AA comes back."""
        ack = yield threads.deferToThread(self.exchange, "client.pem")
        self.assertEqual(tokenize(ack).get("MSA-1"), "AA")

    @defer.inlineCallbacks
    def test_clients_without_a_valid_certificate_are_refused(self) -> Any:
        """No client certificate, or one from another CA: the handshake or the connection
        fails before any ACK, and nothing is stored."""
        for client in (None, "stranger.pem"):
            with self.assertRaises((ssl.SSLError, ConnectionError, OSError)):
                yield threads.deferToThread(self.exchange, client)
        rows = yield self.engine.executor.submit(self.engine.store.search)
        self.assertEqual(rows, [])
