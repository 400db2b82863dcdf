"""The ``mllp`` destination against MLLP receivers nobody here wrote, over real sockets.

(a) hl7apy's ``MLLPServer`` (a threaded ``socketserver``; one message per connection, the
    handler's reply written as is, then the connection closed);
(b) python-hl7's asyncio ``hl7.mllp.start_hl7_server`` on its own event loop in a thread,
    answering every message with ``hl7.parse(...).create_ack()`` on a kept-open connection;
    also behind Python's own TLS (``ssl=`` of ``loop.create_server``) requiring a client
    certificate (mutual TLS).

Bytes follow the MLLP Release 2 block format; the ACKs follow HL7 v2.5.1 §2.9
(acknowledgment): MSA-1 the code, MSA-2 the MSH-10 acknowledged.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import shutil
import ssl
import tempfile
import threading
from pathlib import Path
from typing import Any

import hl7
import hl7.mllp
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hl7apy.core import Message
from hl7apy.mllp import AbstractHandler, MLLPServer
from hl7apy.parser import parse_message
from twisted.internet import defer, reactor
from twisted.trial import unittest

from engine.codecs.hl7v2 import tokenize
from engine.destinations.mllp import MLLP_DEST_SPEC, MLLPDestination
from engine.errors import DeliveryError
from engine.model import Delivery
from engine.spec import Context

ROOT = Path(__file__).resolve().parents[2]
SCREW = (ROOT / "samples/hl7/dft_p03_screw.hl7").read_bytes()
SCREW_ID = "POU-000123"


def options(**kw: Any) -> Any:
    ctx = Context("t.yaml")
    text = yaml.safe_dump({"host": "127.0.0.1", "ack_timeout": "10s", **kw})
    parsed = MLLP_DEST_SPEC.parse(yaml.compose(text), ctx, "")
    assert not ctx.errors, [str(e) for e in ctx.errors]
    return parsed


def delivery(payload: bytes = SCREW, i: int = 1) -> Delivery:
    return Delivery(
        i,
        "m",
        "charges",
        "billing",
        payload,
        "x-application/hl7-v2+er7",
        "k",
        "c",
        None,
        0,
        0.0,
        {},
    )


def with_control_id(control_id: str) -> bytes:
    return SCREW.replace(SCREW_ID.encode(), control_id.encode(), 1)


# --------------------------------------------------------------------------- (a) hl7apy


class DftHandler(AbstractHandler):
    """hl7apy handler for DFT^P03: parses the message with hl7apy and answers an AA built with
    hl7apy (MSA-2 = the incoming MSH-10). hl7apy writes the reply as is, so it frames it."""

    seen: list[str] = []

    def reply(self) -> str:
        incoming = parse_message(self.incoming_message)
        DftHandler.seen.append(incoming.msh.msh_10.value)
        ack = Message("ACK", version="2.5.1")
        ack.msh.msh_3 = incoming.msh.msh_5.value
        ack.msh.msh_4 = incoming.msh.msh_6.value
        ack.msh.msh_5 = incoming.msh.msh_3.value
        ack.msh.msh_6 = incoming.msh.msh_4.value
        ack.msh.msh_9 = "ACK^P03^ACK"
        ack.msh.msh_10 = "HL7APY-" + incoming.msh.msh_10.value
        ack.msh.msh_11 = "P"
        ack.msa.msa_1 = "AA"
        ack.msa.msa_2 = incoming.msh.msh_10.value
        return "\x0b" + ack.to_er7() + "\x1c\x0d"


@pytest.mark.integration
class Hl7apyPeerTests(unittest.TestCase):
    """hl7apy's MLLPServer on 127.0.0.1, port 0, serve_forever in a thread."""

    def setUp(self) -> None:
        DftHandler.seen = []
        self.server = MLLPServer("127.0.0.1", 0, {"DFT^P03^DFT_P03": (DftHandler,)}, timeout=5)
        self.port = self.server.server_address[1]
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()

        def stop() -> None:
            self.server.shutdown()
            self.server.server_close()
            thread.join(5)

        self.addCleanup(stop)

    def destination(self, **kw: Any) -> MLLPDestination:
        dest = MLLPDestination(
            options(port=self.port, **kw), reactor=reactor, channel="c", name="b", base_dir=ROOT
        )
        self.addCleanup(dest.close)
        return dest

    @defer.inlineCallbacks
    def test_dft_p03_sample_is_delivered_and_the_ack_is_the_response(self) -> Any:
        """The DFT^P03 sample reaches hl7apy's handler unchanged (hl7apy parses it and routes
        it by MSH-9 DFT^P03^DFT_P03); its AA, MSA-2 = POU-000123, comes back as the
        response. keep_alive: false suits a peer that takes one message per connection."""
        dest = self.destination(keep_alive=False)
        response = yield defer.ensureDeferred(dest.send(delivery()))
        ack = tokenize(response)
        self.assertEqual((ack.get("MSA-1"), ack.get("MSA-2")), ("AA", SCREW_ID))
        self.assertEqual(ack.control_id, "HL7APY-" + SCREW_ID)
        self.assertEqual(DftHandler.seen, [SCREW_ID])
        for i in range(2, 5):
            response = yield defer.ensureDeferred(dest.send(delivery(with_control_id(f"P-{i}"))))
            self.assertEqual(tokenize(response).get("MSA-2"), f"P-{i}")
        self.assertEqual(DftHandler.seen, [SCREW_ID, "P-2", "P-3", "P-4"])
        self.assertEqual(dest.connections_opened, 4)

    @defer.inlineCallbacks
    def test_default_pooling_notices_a_peer_that_closes_after_each_ack(self) -> Any:
        """With the default keep_alive and back-to-back sends, hl7apy's close after the first
        ACK is seen before anything is written on that connection (the first reuse waits
        PROBE_DELAY); every message gets its own connection and its AA, none is ambiguous."""
        dest = self.destination()
        yield defer.ensureDeferred(dest.send(delivery()))
        for i in range(2, 6):
            response = yield defer.ensureDeferred(dest.send(delivery(with_control_id(f"Q-{i}"))))
            self.assertEqual(tokenize(response).get("MSA-1"), "AA")
        self.assertEqual(DftHandler.seen, [SCREW_ID, *(f"Q-{i}" for i in range(2, 6))])
        self.assertEqual(dest.connections_opened, 5)
        self.assertEqual(dest.idle, [])


# --------------------------------------------------------------------------- (b) python-hl7


class Hl7AsyncioPeer:
    """python-hl7's ``start_hl7_server`` on its own asyncio loop in a thread. Every message
    is answered with ``message.create_ack(ack_code=self.code)`` on the same connection."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.code = "AA"
        self.ssl_context = ssl_context
        self.connections = 0
        self.client_subjects: list[Any] = []
        self.seen: list[str] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: Any = None
        self.port = 0

    def start(self) -> None:
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(5)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _start(self) -> Any:
        return await hl7.mllp.start_hl7_server(
            self._client, host="127.0.0.1", port=0, ssl=self.ssl_context
        )

    async def _client(
        self, reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter
    ) -> None:
        self.connections += 1
        peercert = writer.get_extra_info("peercert")
        if peercert:
            self.client_subjects.append(peercert.get("subject"))
        try:
            while True:
                message = await reader.readmessage()
                self.seen.append(str(message.segment("MSH")(10)))
                writer.writemessage(message.create_ack(ack_code=self.code))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed the connection
        finally:
            writer.close()

    def stop(self) -> None:
        async def close() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.mark.integration
class PythonHl7PeerTests(unittest.TestCase):
    """python-hl7's asyncio MLLP server, in its own thread and event loop."""

    def setUp(self) -> None:
        self.peer = Hl7AsyncioPeer()
        self.peer.start()
        self.addCleanup(self.peer.stop)
        self.dest = MLLPDestination(
            options(port=self.peer.port), reactor=reactor, channel="c", name="b", base_dir=ROOT
        )
        self.addCleanup(self.dest.close)  # runs before peer.stop (cleanups run last-in first)

    @defer.inlineCallbacks
    def test_fifty_sends_over_reused_connections(self) -> Any:
        """50 deliveries, at most 5 in flight (as a destination with concurrency 5), are all
        acknowledged AA with MSA-2 = their MSH-10 (HL7 v2.5.1 §2.9), over at most 5
        connections: fewer connections than sends."""
        limit = defer.DeferredSemaphore(5)
        ids = [f"PH-{i:03d}" for i in range(50)]

        def one(i: int) -> Any:
            payload = with_control_id(ids[i])
            return limit.run(lambda: defer.ensureDeferred(self.dest.send(delivery(payload, i))))

        results = yield defer.gatherResults([one(i) for i in range(50)], consumeErrors=True)
        answers = [(tokenize(r).get("MSA-1"), tokenize(r).get("MSA-2")) for r in results]
        self.assertEqual(answers, [("AA", cid) for cid in ids])
        self.assertEqual(sorted(self.peer.seen), ids)
        self.assertLessEqual(self.peer.connections, 5)
        self.assertLess(self.peer.connections, 50)
        self.assertEqual(self.dest.connections_opened, self.peer.connections)

    @defer.inlineCallbacks
    def test_sequential_sends_use_one_connection(self) -> Any:
        """One send after the other: a single connection carries all of them."""
        for i in range(10):
            response = yield defer.ensureDeferred(
                self.dest.send(delivery(with_control_id(f"SQ-{i}"), i))
            )
            self.assertEqual(tokenize(response).get("MSA-2"), f"SQ-{i}")
        self.assertEqual(self.peer.connections, 1)

    @defer.inlineCallbacks
    def test_ae_answer_is_not_retryable(self) -> Any:
        """python-hl7's create_ack(ack_code='AE') is an application error (HL7 v2.5.1 §2.9):
        a permanent DeliveryError (not retryable, not ambiguous) that keeps the ACK."""
        self.peer.code = "AE"
        with self.assertRaises(DeliveryError) as info:
            yield defer.ensureDeferred(self.dest.send(delivery()))
        exc = info.exception
        self.assertEqual((exc.retryable, exc.ambiguous), (False, False))
        ack = tokenize(exc.response)
        self.assertEqual((ack.get("MSA-1"), ack.get("MSA-2")), ("AE", SCREW_ID))
        self.assertIn("answered AE", exc.message)
        self.assertEqual(len(self.dest.idle), 1)  # the connection is still in step: kept


# --------------------------------------------------------------------------- (b) over TLS


def _certificate(
    name: str, key: Any, issuer: tuple[x509.Name, Any] | None, ca: bool
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer if issuer else (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate, key: Any = None) -> bytes:
    out = cert.public_bytes(serialization.Encoding.PEM)
    if key is not None:
        out += key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    return out


def make_pki(folder: Path) -> None:
    """certs/ca.pem (a test CA), certs/server.pem (127.0.0.1, cert+key) and
    certs/client.pem (cert+key for mutual TLS), all issued by that CA."""
    certs = folder / "certs"
    certs.mkdir(parents=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("wharf test CA", ca_key, None, ca=True)
    (certs / "ca.pem").write_bytes(_pem(ca))
    for name in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(f"wharf {name}", key, (ca.subject, ca_key), ca=False)
        (certs / f"{name}.pem").write_bytes(_pem(cert, key))


@pytest.mark.integration
class PythonHl7TlsPeerTests(unittest.TestCase):
    """python-hl7's server behind ssl.SSLContext with CERT_REQUIRED (mutual TLS)."""

    def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="wharf-mllp-tls-"))
        self.addCleanup(shutil.rmtree, self.base, True)
        make_pki(self.base)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.base / "certs/server.pem")
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(self.base / "certs/ca.pem")
        self.peer = Hl7AsyncioPeer(context)
        self.peer.start()
        self.addCleanup(self.peer.stop)

    def destination(self, **kw: Any) -> MLLPDestination:
        dest = MLLPDestination(
            options(port=self.peer.port, tls=True, **kw),
            reactor=reactor,
            channel="c",
            name="b",
            base_dir=self.base,
        )
        self.addCleanup(dest.close)
        return dest

    @defer.inlineCallbacks
    def test_mutual_tls_with_ca_file_and_client_certificate(self) -> Any:
        """ca_file and client_certificate (relative to the project root) set up mutual TLS:
        the peer verifies Wharf's certificate, Wharf the peer's (IP SAN 127.0.0.1); the
        message is acknowledged AA, twice over one connection."""
        dest = self.destination(ca_file="certs/ca.pem", client_certificate="certs/client.pem")
        for cid in ("TLS-1", "TLS-2"):
            response = yield defer.ensureDeferred(dest.send(delivery(with_control_id(cid))))
            self.assertEqual(tokenize(response).get("MSA-2"), cid)
        self.assertEqual(self.peer.seen, ["TLS-1", "TLS-2"])
        self.assertEqual(self.peer.connections, 1)
        self.assertEqual(self.peer.client_subjects, [((("commonName", "wharf client"),),)])

    @defer.inlineCallbacks
    def test_untrusted_server_certificate_is_a_tls_failure_not_ambiguous(self) -> Any:
        """Without ca_file the system store does not trust the test CA: the handshake fails
        before anything is written, so the error is retryable and not ambiguous."""
        dest = self.destination(client_certificate="certs/client.pem")
        with self.assertRaises(DeliveryError) as info:
            yield defer.ensureDeferred(dest.send(delivery()))
        exc = info.exception
        self.assertEqual((exc.retryable, exc.ambiguous), (True, False))
        self.assertIn("TLS handshake failed", exc.message)
        self.assertIn("certificate verify failed", exc.message)
        self.assertEqual(self.peer.seen, [])

    @defer.inlineCallbacks
    def test_tls_verify_false_still_presents_the_client_certificate(self) -> Any:
        """tls_verify: false (test rigs) skips checking the peer but still presents
        client_certificate, so a mutual-TLS peer accepts the connection."""
        dest = self.destination(tls_verify=False, client_certificate="certs/client.pem")
        response = yield defer.ensureDeferred(dest.send(delivery()))
        self.assertEqual(tokenize(response).get("MSA-1"), "AA")
        self.assertEqual(len(self.peer.client_subjects), 1)
