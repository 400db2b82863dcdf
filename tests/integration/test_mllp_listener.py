"""The ``mllp`` source over real sockets on 127.0.0.1, with peers nobody here wrote.

(a) python-hl7's blocking ``MLLPClient``; (b) python-hl7's ``mllp_send`` command; (c) 32
concurrent connections of 20 messages each (half of them pipelined); (d) TLS with a client CA
(mutual TLS), with certificates made here with ``cryptography``; plus an oversize frame, the
connection cap and ``stop()`` over real sockets. The engine is replaced by a fake ``ingest``
answering an AA that echoes MSH-10 (MSA-2), so every ACK can be matched to its message.

Bytes follow MLLP Release 2 (HL7 Transport Specification), §block format:
<SB=0x0B> data <EB=0x1C><CR=0x0D>.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import random
import shutil
import socket
import ssl
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import hl7.client
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer, endpoints, protocol, reactor, task, threads, utils
from twisted.trial import unittest

from engine.net.mllp import EB, SB
from engine.registry import REGISTRY
from engine.sources import IngestOutcome
from engine.sources.mllp import MLLP_SPEC, MLLPSource, make_mllp
from engine.spec import Context

MLLP_SEND = Path(sys.executable).parent / "mllp_send"


def message(control_id: str) -> bytes:
    return (
        b"MSH|^~\\&|OR|HOSP|WHARF|HOSP|20260101120000||DFT^P03^DFT_P03|"
        + control_id.encode()
        + b"|P|2.5.1\rEVN|P03|20260101120000\rPID|1||MRN1\rFT1|1||||20260101||CG|SCREW\r"
    )


def control_id(raw: bytes) -> str:
    return raw.split(b"\r", 1)[0].split(b"|")[9].decode()


def ack_for(raw: bytes) -> bytes:
    return (
        b"MSH|^~\\&|WHARF|HOSP|OR|HOSP|20260101120001||ACK^P03|A"
        + control_id(raw).encode()
        + b"|P|2.5.1\rMSA|AA|"
        + control_id(raw).encode()
        + b"\r"
    )


def msa(ack: bytes) -> tuple[str, str]:
    """(MSA-1, MSA-2) of an ACK."""
    for seg in ack.replace(b"\n", b"\r").split(b"\r"):
        if seg.startswith(b"MSA"):
            f = seg.split(b"|")
            return f[1].decode(), (f[2].decode() if len(f) > 2 else "")
    raise AssertionError(f"no MSA in {ack!r}")


def options(**kw: Any) -> Any:
    ctx = Context("t.yaml", env={}, registry=REGISTRY)
    parsed = MLLP_SPEC.parse(yaml.compose(yaml.safe_dump(kw)), ctx, "source.mllp")
    assert not ctx.errors, [str(e) for e in ctx.errors]
    return parsed


class FakeIngest:
    """Stands in for the engine: records what came and answers AA (MSA-2 = MSH-10), after a
    random short delay so that pipelined frames finish out of order."""

    def __init__(self, jitter: float = 0.0) -> None:
        self.seen: list[tuple[bytes, str]] = []
        self.origins: list[str | None] = []
        self.jitter = jitter

    async def __call__(self, raw: bytes, peer: str, origin: str | None = None) -> IngestOutcome:
        self.seen.append((raw, peer))
        self.origins.append(origin)
        if self.jitter:
            await task.deferLater(reactor, random.uniform(0, self.jitter), lambda: None)
        return IngestOutcome("stored", message_id=control_id(raw), response=ack_for(raw))


def recv_frame(sock: socket.socket) -> bytes:
    """One framed reply (without its framing); b'' if the server closed first."""
    buf = b""
    while EB not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return b""
        buf += chunk
    assert buf.startswith(SB), buf[:20]
    return buf[1 : buf.index(EB)]


class ListenerCase(unittest.TestCase):
    def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="wharf-mllp-listener-"))
        self.addCleanup(shutil.rmtree, self.base, True)

    @defer.inlineCallbacks
    def listen(self, ingest: Any, **kw: Any) -> Any:
        kw.setdefault("listen", "tcp:0:interface=127.0.0.1")
        source = make_mllp(
            options(**kw), reactor=reactor, channel="t", base_dir=self.base, ingest=ingest
        )
        self.assertIsInstance(source, MLLPSource)
        source.start()
        yield source.listening
        self.assertIsNotNone(source.port, "the listener did not start")
        self.addCleanup(lambda: defer.ensureDeferred(source.stop()))
        self.port = source.port.getHost().port
        return source


# --------------------------------------------------------------------------- (a), (b)


@pytest.mark.integration
class PythonHl7ClientTests(ListenerCase):
    @defer.inlineCallbacks
    def test_mllpclient_sends_and_gets_the_ack(self) -> Any:
        """python-hl7's MLLPClient (blocking, in a thread) sends two messages over one
        connection and reads each ACK (MSA-1 AA, MSA-2 the MSH-10 sent); the ingest sees the
        bytes without framing (MLLP Release 2 (HL7 Transport Specification), §block format)
        and the peer as host:port."""
        ingest = FakeIngest()
        yield self.listen(ingest)

        def send() -> list[bytes]:
            with hl7.client.MLLPClient("127.0.0.1", self.port) as client:
                return [client.send_message(message(c)) for c in ("A-1", "A-2")]

        acks = yield threads.deferToThread(send)
        self.assertEqual(
            acks, [SB + ack_for(message("A-1")) + EB, SB + ack_for(message("A-2")) + EB]
        )
        self.assertEqual([raw for raw, _ in ingest.seen], [message("A-1"), message("A-2")])
        self.assertRegex(ingest.seen[0][1], r"^127\.0\.0\.1:\d+$")

    @defer.inlineCallbacks
    def test_mllp_send_command_sends_a_file_and_prints_the_acks(self) -> Any:
        """The ``mllp_send`` command (--loose: a plain file, CRLF line ends, two messages)
        sends both and prints both ACKs."""
        ingest = FakeIngest()
        yield self.listen(ingest)
        path = self.base / "two.hl7"
        text = message("CMD-1") + message("CMD-2")
        path.write_bytes(text.replace(b"\r", b"\r\n"))
        out, err, code = yield utils.getProcessOutputAndValue(
            str(MLLP_SEND),
            ["--loose", "--file", str(path), "--port", str(self.port), "127.0.0.1"],
            env=dict(os.environ),
        )
        self.assertEqual(code, 0, err)
        self.assertEqual([control_id(raw) for raw, _ in ingest.seen], ["CMD-1", "CMD-2"])
        self.assertIn(b"MSA|AA|CMD-1", out)
        self.assertIn(b"MSA|AA|CMD-2", out)


# --------------------------------------------------------------------------- (c)


class Sender(protocol.Protocol):
    """Sends its messages, one at a time or all at once (pipelined), and collects the ACKs."""

    def __init__(self, ids: list[str], pipelined: bool) -> None:
        self.ids = ids
        self.pipelined = pipelined
        self.buf = b""
        self.acks: list[bytes] = []
        self.done: defer.Deferred = defer.Deferred()
        self.sent = 0

    def connectionMade(self) -> None:
        if self.pipelined:
            self.transport.write(b"".join(SB + message(c) + EB for c in self.ids))
            self.sent = len(self.ids)
        else:
            self._next()

    def _next(self) -> None:
        self.transport.write(SB + message(self.ids[self.sent]) + EB)
        self.sent += 1

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        while EB in self.buf:
            block, _, self.buf = self.buf.partition(EB)
            self.acks.append(block.removeprefix(SB))
            if len(self.acks) == len(self.ids):
                self.transport.loseConnection()
            elif not self.pipelined:
                self._next()

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(self.acks)


@pytest.mark.integration
class ConcurrencyTests(ListenerCase):
    @defer.inlineCallbacks
    def test_32_connections_of_20_messages_each_get_their_20_acks_in_order(self) -> Any:
        """32 concurrent connections (16 one-at-a-time, 16 pipelining all 20 frames in one
        write) each get 20 ACKs, in the order sent, each answering its own MSH-10, while the
        ingest finishes in random order."""
        ingest = FakeIngest(jitter=0.005)
        source = yield self.listen(ingest, max_connections=64)
        ep = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        senders = []
        for c in range(32):
            ids = [f"C{c:02d}-{i:02d}" for i in range(20)]
            s = Sender(ids, pipelined=c % 2 == 1)
            senders.append(s)
            yield endpoints.connectProtocol(ep, s)
        results = yield defer.gatherResults([s.done for s in senders])
        for s, acks in zip(senders, results, strict=True):
            self.assertEqual([msa(a) for a in acks], [("AA", c) for c in s.ids])
        self.assertEqual(len(ingest.seen), 32 * 20)
        self.assertEqual(source.stats["frames"], 640)
        self.assertEqual(source.stats["refused_connections"], 0)


# --------------------------------------------------------------------------- limits


@pytest.mark.integration
class LimitTests(ListenerCase):
    @defer.inlineCallbacks
    def test_oversize_frame_gets_an_ar_and_the_connection_closes(self) -> Any:
        """A sender writing a 1 MiB frame to a 64 KiB limit gets an AR for its MSH-10,
        framed (MLLP Release 2 (HL7 Transport Specification), §block format), then the close;
        nothing is ingested."""
        ingest = FakeIngest()
        source = yield self.listen(ingest, max_frame="64KiB")

        def send() -> tuple[bytes, bytes]:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                try:
                    s.sendall(SB + message("BIG-1") + b"x" * (1024 * 1024))
                except OSError:
                    pass  # the server may close before we finish writing
                reply = recv_frame(s)
                try:
                    rest = s.recv(100)
                except OSError:
                    rest = b""
                return reply, rest

        reply, rest = yield threads.deferToThread(send)
        self.assertEqual(msa(reply), ("AR", "BIG-1"))
        self.assertEqual(rest, b"")
        self.assertEqual(ingest.seen, [])
        self.assertEqual(source.stats["oversize"], 1)

    @defer.inlineCallbacks
    def test_connection_over_the_cap_is_closed_and_stop_closes_the_others(self) -> Any:
        """With max_connections 2 a third connection is closed at once; stop() stops
        listening and closes the two open connections."""
        ingest = FakeIngest()
        source = yield self.listen(ingest, max_connections=2)
        socks = [socket.create_connection(("127.0.0.1", self.port), timeout=10) for _ in "ab"]
        for s in socks:
            self.addCleanup(s.close)
        yield task.deferLater(reactor, 0.1, lambda: None)  # let the server accept them
        third = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.addCleanup(third.close)
        got = yield threads.deferToThread(third.recv, 10)
        self.assertEqual(got, b"")
        self.assertEqual(source.stats["refused_connections"], 1)
        yield defer.ensureDeferred(source.stop())
        for s in socks:
            got = yield threads.deferToThread(s.recv, 10)
            self.assertEqual(got, b"")
        with self.assertRaises(OSError):
            socket.create_connection(("127.0.0.1", self.port), timeout=2).close()


# --------------------------------------------------------------------------- (d) TLS


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
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_pki(folder: Path) -> None:
    """tls/ca.pem (the clients' CA, which also issues the server certificate),
    tls/server.{pem,key}, tls/client.{pem,key} issued by it, and tls/rogue.{pem,key}: a client
    certificate issued by another CA."""
    tls = folder / "tls"
    tls.mkdir(parents=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("wharf test CA", ca_key, None, ca=True)
    (tls / "ca.pem").write_bytes(_cert_pem(ca))
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = _certificate("another CA", other_key, None, ca=True)
    for name, issuer in (
        ("server", (ca.subject, ca_key)),
        ("client", (ca.subject, ca_key)),
        ("rogue", (other.subject, other_key)),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(f"wharf {name}", key, issuer, ca=False)
        (tls / f"{name}.pem").write_bytes(_cert_pem(cert))
        (tls / f"{name}.key").write_bytes(_key_pem(key))


SSL_LISTEN = "ssl:0:interface=127.0.0.1:privateKey=tls/server.key:certKey=tls/server.pem"


@pytest.mark.integration
class MutualTlsTests(ListenerCase):
    def setUp(self) -> None:
        super().setUp()
        make_pki(self.base)

    def tls_send(self, client: str | None, control: str) -> bytes:
        """Python's ssl module: verify the server against tls/ca.pem, present ``client``'s
        certificate (or none), send one frame, return the reply (b'' if closed)."""
        ctx = ssl.create_default_context(cafile=str(self.base / "tls/ca.pem"))
        if client is not None:
            ctx.load_cert_chain(self.base / f"tls/{client}.pem", self.base / f"tls/{client}.key")
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                s.sendall(SB + message(control) + EB)
                return recv_frame(s)

    def refused(self, client: str | None) -> bytes | str:
        try:
            return self.tls_send(client, "NO")
        except ssl.SSLError as exc:
            return str(exc)  # the server's alert, e.g. 'tlsv1 alert unknown ca'
        except OSError as exc:
            return type(exc).__name__  # reset or EOF

    def assertRefused(self, result: bytes | str, alert: str) -> None:
        """The server's TLS alert (TLS 1.2 during the handshake, TLS 1.3 on the first
        read), or a plain close or reset; never a reply."""
        if isinstance(result, str) and "alert" in result.lower():
            self.assertIn(alert, result)
        else:
            self.assertIn(result, (b"", "ConnectionResetError", "BrokenPipeError"))

    @defer.inlineCallbacks
    def test_client_certificate_signed_by_the_ca_is_accepted(self) -> Any:
        """With client_ca, a client presenting a certificate issued by that CA completes the
        handshake, and its message is answered over TLS."""
        ingest = FakeIngest()
        yield self.listen(ingest, listen=SSL_LISTEN, client_ca="tls/ca.pem")
        reply = yield threads.deferToThread(self.tls_send, "client", "TLS-1")
        self.assertEqual(msa(reply), ("AA", "TLS-1"))
        self.assertEqual([control_id(r) for r, _ in ingest.seen], ["TLS-1"])
        # the certificate's common name is the credential the frame came with
        self.assertEqual(ingest.origins, ["tls:wharf client"])

    @defer.inlineCallbacks
    def test_client_without_certificate_is_refused(self) -> Any:
        """A client presenting no certificate fails the handshake (or is closed right
        after it, in TLS 1.3): no reply, nothing ingested."""
        ingest = FakeIngest()
        yield self.listen(ingest, listen=SSL_LISTEN, client_ca="tls/ca.pem")
        result = yield threads.deferToThread(self.refused, None)
        self.assertRefused(result, "CERTIFICATE_REQUIRED")
        self.assertEqual(ingest.seen, [])

    @defer.inlineCallbacks
    def test_client_certificate_from_another_ca_is_refused(self) -> Any:
        """A certificate issued by a CA not in client_ca is refused: no reply, nothing
        ingested."""
        ingest = FakeIngest()
        yield self.listen(ingest, listen=SSL_LISTEN, client_ca="tls/ca.pem")
        result = yield threads.deferToThread(self.refused, "rogue")
        self.assertRefused(result, "UNKNOWN_CA")
        self.assertEqual(ingest.seen, [])

    @defer.inlineCallbacks
    def test_plain_tls_without_client_ca_needs_no_client_certificate(self) -> Any:
        """Without client_ca the ssl: listener (PEM paths relative to the project) is
        server-authenticated TLS only: a client with no certificate is answered."""
        ingest = FakeIngest()
        yield self.listen(ingest, listen=SSL_LISTEN)
        reply = yield threads.deferToThread(self.tls_send, None, "TLS-2")
        self.assertEqual(msa(reply), ("AA", "TLS-2"))

    @defer.inlineCallbacks
    def test_missing_key_file_means_no_listener_and_stop_still_works(self) -> Any:
        """A privateKey that does not exist: start() logs the error, nothing listens
        (``port`` stays None) and stop() returns."""
        source = make_mllp(
            options(listen="ssl:0:interface=127.0.0.1:privateKey=tls/nope.key"),
            reactor=reactor,
            channel="t",
            base_dir=self.base,
            ingest=FakeIngest(),
        )
        source.start()
        port = yield source.listening
        self.assertIsNone(port)
        self.assertIsNone(source.port)
        yield defer.ensureDeferred(source.stop())

    @defer.inlineCallbacks
    def test_tls_below_1_2_is_refused(self) -> Any:
        """The listener's floor is TLS 1.2: a TLS 1.1 client fails the handshake."""
        ingest = FakeIngest()
        yield self.listen(ingest, listen=SSL_LISTEN)

        def old_client() -> str:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            try:
                ctx.set_ciphers("ALL:@SECLEVEL=0")  # let this client offer TLS 1.1 at all
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    ctx.minimum_version = ssl.TLSVersion.TLSv1_1
                    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
            except (ValueError, ssl.SSLError):
                return "unsupported here"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as raw:
                    with ctx.wrap_socket(raw) as s:
                        return s.version() or "?"
            except ssl.SSLError as exc:
                return str(exc)
            except OSError as exc:
                return type(exc).__name__

        result = yield threads.deferToThread(old_client)
        if result == "unsupported here" or "NO_CIPHERS_AVAILABLE" in result:
            raise unittest.SkipTest("this OpenSSL cannot offer TLS 1.1 at all")
        self.assertTrue(
            "PROTOCOL_VERSION" in result or result in ("ConnectionResetError", "EOF"), result
        )
