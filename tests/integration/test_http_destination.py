"""The http destination against a real twisted.web server on 127.0.0.1 in the same reactor.

trial's TestCase runs the real reactor, lets tests return Deferreds and fails a test that
leaves connections, listeners or timers behind; it runs fine under pytest.
"""

from __future__ import annotations

import datetime
import ipaddress
import pathlib
import shutil
import tempfile
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer, protocol, reactor
from twisted.internet.ssl import PrivateCertificate
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.trial import unittest
from twisted.web import resource, server

from engine.destinations.http import HTTP_SPEC, HttpDestination
from engine.errors import DeliveryError
from engine.model import Delivery
from engine.spec import Context

pytestmark = [
    pytest.mark.integration,
    # Twisted's PrivateCertificate.options() still hands pyOpenSSL objects to pyOpenSSL.
    pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning"),
]


def options(**values: Any) -> Any:
    """Parse ``values`` through HTTP_SPEC the way a channel file would be."""
    ctx = Context("<test>")
    config = HTTP_SPEC.parse(yaml.compose(yaml.safe_dump(values)), ctx, "")
    assert not ctx.errors, [str(e) for e in ctx.errors]
    return config


def delivery(**overrides: Any) -> Delivery:
    values: dict[str, Any] = dict(
        id=1,
        message_id="m-1",
        channel="erp",
        destination="orders",
        payload=b'{"po": 42}',
        content_type="application/json",
        idempotency_key="key-1",
        correlation_id="corr-1",
        order_key=None,
        attempts=0,
        created_at=0.0,
        meta={"site": "north wing"},
    )
    values.update(overrides)
    return Delivery(**values)


class Recorder(resource.Resource):
    """Answers by path: /status/<code>[/<retry-after>] or 200 with b'accepted'; keeps requests."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[dict[str, Any]] = []

    def render(self, request: server.Request) -> bytes:
        self.requests.append(
            {
                "method": request.method,
                "path": request.uri,
                "headers": {
                    k.decode().lower(): v[0].decode()
                    for k, v in request.requestHeaders.getAllRawHeaders()
                },
                "body": request.content.read(),
            }
        )
        parts = request.path.decode().strip("/").split("/")
        if parts[0] == "status":
            request.setResponseCode(int(parts[1]))
            if len(parts) > 2:
                request.setHeader(b"Retry-After", parts[2].encode())
            return b"server said no"
        if parts[0] == "big":
            return b"x" * 5000
        return b"accepted"


class _Tracked(ProtocolWrapper):
    def connectionMade(self) -> None:
        self.lost: defer.Deferred[None] = defer.Deferred()
        super().connectionMade()

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        self.lost.callback(None)


class TrackingFactory(WrappingFactory):
    """Wraps a server factory, remembering each connection so cleanup can close it."""

    protocol = _Tracked

    async def close_all(self) -> None:
        waits = []
        for proto in list(self.protocols):
            proto.transport.abortConnection()
            waits.append(proto.lost)
        await defer.DeferredList(waits)


class Silent(protocol.Protocol):
    """Accepts the connection and the request, never answers."""


def self_signed(tmp: pathlib.Path) -> tuple[PrivateCertificate, pathlib.Path]:
    """A self-signed certificate for 127.0.0.1 / localhost and the path of its PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wharf test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "ca.pem"
    path.write_bytes(cert_pem)
    return PrivateCertificate.loadPEM(cert_pem + key_pem), path


class HttpDestinationTests(unittest.TestCase):
    timeout = 10  # seconds per test (trial)

    def tmpdir(self) -> pathlib.Path:
        """A fresh temporary directory, removed after the test (not under the cwd)."""
        path = pathlib.Path(tempfile.mkdtemp(prefix="wharf-http-"))
        self.addCleanup(shutil.rmtree, path, True)
        return path

    def setUp(self) -> None:
        self.recorder = Recorder()
        self.site = TrackingFactory(server.Site(self.recorder))
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.addCleanup(self.site.close_all)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"

    def destination(self, environ: dict[str, str] | None = None, **values: Any) -> HttpDestination:
        dest = HttpDestination(
            options(**values),
            reactor=reactor,
            channel="erp",
            name="orders",
            base_dir=self.tmpdir(),
            environ=environ or {},
        )
        # Runs before the server cleanups (LIFO): client side closes first.
        self.addCleanup(dest.close)
        return dest

    async def failure(self, dest: HttpDestination, d: Delivery | None = None) -> DeliveryError:
        try:
            await dest.send(d or delivery())
        except DeliveryError as e:
            return e
        raise AssertionError("send did not fail")

    @defer.inlineCallbacks
    def test_post_carries_keys_templated_url_headers_and_bearer_token(self) -> Any:
        """A 2xx returns the body; the request has the payload, Content-Type, Idempotency-Key,
        X-Correlation-ID, templated URL (values percent-encoded) and headers, and the bearer
        token read from the environment at send time."""
        dest = self.destination(
            environ={"ERP_TOKEN": "s3cret"},
            url=self.base + "/api/{channel}/{message_id}?site={site}",
            headers={"X-Site": "{site}", "X-Key": "{idempotency_key}"},
            bearer_token_env="ERP_TOKEN",
        )
        body = yield defer.ensureDeferred(dest.send(delivery()))
        self.assertEqual(body, b"accepted")
        [req] = self.recorder.requests
        self.assertEqual(req["method"], b"POST")
        self.assertEqual(req["path"], b"/api/erp/m-1?site=north%20wing")
        self.assertEqual(req["body"], b'{"po": 42}')
        headers = req["headers"]
        self.assertEqual(headers["content-type"], "application/json")
        self.assertEqual(headers["idempotency-key"], "key-1")
        self.assertEqual(headers["x-correlation-id"], "corr-1")
        self.assertEqual(headers["x-site"], "north wing")
        self.assertEqual(headers["x-key"], "key-1")
        self.assertEqual(headers["authorization"], "Bearer s3cret")

    @defer.inlineCallbacks
    def test_connection_is_reused(self) -> Any:
        """Two sends to the same server go over one pooled, persistent connection."""
        dest = self.destination(url=self.base + "/ok", method="PUT")
        yield defer.ensureDeferred(dest.send(delivery()))
        yield defer.ensureDeferred(dest.send(delivery(id=2)))
        self.assertEqual([r["method"] for r in self.recorder.requests], [b"PUT", b"PUT"])
        self.assertEqual(len(self.site.protocols), 1)

    @defer.inlineCallbacks
    def test_basic_auth(self) -> Any:
        """basic_user + basic_password_env send an HTTP basic Authorization header."""
        dest = self.destination(
            environ={"ERP_PW": "pw"},
            url=self.base + "/ok",
            basic_user="wharf",
            basic_password_env="ERP_PW",
        )
        yield defer.ensureDeferred(dest.send(delivery()))
        self.assertEqual(
            self.recorder.requests[0]["headers"]["authorization"], "Basic d2hhcmY6cHc="
        )

    @defer.inlineCallbacks
    def test_missing_token_variable_is_permanent_and_names_it(self) -> Any:
        """An unset bearer_token_env variable fails permanently, naming the variable; nothing
        is sent."""
        dest = self.destination(url=self.base + "/ok", bearer_token_env="ERP_TOKEN")
        err = yield defer.ensureDeferred(self.failure(dest))
        self.assertFalse(err.retryable)
        self.assertIn("'ERP_TOKEN'", err.message)
        self.assertEqual(self.recorder.requests, [])

    @defer.inlineCallbacks
    def test_unknown_placeholder_is_permanent(self) -> Any:
        """A URL placeholder that is neither a core field nor a meta key fails permanently,
        naming the placeholder."""
        dest = self.destination(url=self.base + "/{nope}")
        err = yield defer.ensureDeferred(self.failure(dest))
        self.assertFalse(err.retryable)
        self.assertIn("{nope}", err.message)

    @defer.inlineCallbacks
    def test_503_with_retry_after_is_retryable(self) -> Any:
        """503 with Retry-After: 7 is retryable with retry_after 7 and keeps the body."""
        dest = self.destination(url=self.base + "/status/503/7")
        err = yield defer.ensureDeferred(self.failure(dest))
        self.assertTrue(err.retryable)
        self.assertFalse(err.ambiguous)
        self.assertEqual(err.retry_after, 7.0)
        self.assertEqual(err.response, b"server said no")
        self.assertIn("HTTP 503", err.message)
        self.assertNotIn("server said no", err.message)

    @defer.inlineCallbacks
    def test_429_is_retryable_without_retry_after(self) -> Any:
        """429 without Retry-After is retryable with retry_after None."""
        dest = self.destination(url=self.base + "/status/429")
        err = yield defer.ensureDeferred(self.failure(dest))
        self.assertTrue(err.retryable)
        self.assertIsNone(err.retry_after)

    @defer.inlineCallbacks
    def test_400_is_permanent(self) -> Any:
        """400 is a permanent failure (not retryable, not ambiguous)."""
        dest = self.destination(url=self.base + "/status/400")
        err = yield defer.ensureDeferred(self.failure(dest))
        self.assertFalse(err.retryable)
        self.assertFalse(err.ambiguous)
        self.assertEqual(err.response, b"server said no")

    @defer.inlineCallbacks
    def test_big_response_is_truncated(self) -> Any:
        """A response longer than max_response is truncated to max_response bytes."""
        dest = self.destination(url=self.base + "/big", max_response=1000)
        body = yield defer.ensureDeferred(dest.send(delivery()))
        self.assertEqual(body, b"x" * 1000)

    @defer.inlineCallbacks
    def test_connection_refused_is_retryable_not_ambiguous(self) -> Any:
        """Connection refused: nothing was sent, so retryable and not ambiguous."""
        probe = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
        port = probe.getHost().port
        yield probe.stopListening()
        dest = self.destination(url=f"http://127.0.0.1:{port}/ok")
        err = yield defer.ensureDeferred(self.failure(dest))
        self.assertTrue(err.retryable)
        self.assertFalse(err.ambiguous)
        self.assertIn("could not connect", err.message)

    @defer.inlineCallbacks
    def test_no_answer_within_timeout_is_ambiguous(self) -> Any:
        """A server that takes the request and never answers: after timeout the failure is
        retryable and ambiguous (the request may have been processed)."""
        silent = TrackingFactory(protocol.Factory.forProtocol(Silent))
        port = reactor.listenTCP(0, silent, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(silent.close_all)
        dest = self.destination(url=f"http://127.0.0.1:{port.getHost().port}/ok", timeout=0.5)
        started = reactor.seconds()
        err = yield defer.ensureDeferred(self.failure(dest))
        self.assertTrue(err.retryable)
        self.assertTrue(err.ambiguous)
        self.assertIn("no response within 0.5s", err.message)
        self.assertLess(reactor.seconds() - started, 5)

    @defer.inlineCallbacks
    def test_https_with_ca_file(self) -> Any:
        """HTTPS to a server with a self-signed certificate works when ca_file holds it."""
        cert, ca_path = self_signed(self.tmpdir())
        tls_site = TrackingFactory(server.Site(self.recorder))
        port = reactor.listenSSL(0, tls_site, cert.options(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(tls_site.close_all)
        dest = self.destination(
            url=f"https://127.0.0.1:{port.getHost().port}/ok", ca_file=str(ca_path)
        )
        body = yield defer.ensureDeferred(dest.send(delivery()))
        self.assertEqual(body, b"accepted")

    @defer.inlineCallbacks
    def test_https_untrusted_certificate_is_retryable_tls_failure(self) -> Any:
        """Without ca_file the self-signed certificate is not trusted: a retryable TLS
        failure that is not ambiguous (the handshake failed, nothing was sent)."""
        cert, _ = self_signed(self.tmpdir())
        tls_site = TrackingFactory(server.Site(self.recorder))
        port = reactor.listenSSL(0, tls_site, cert.options(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(tls_site.close_all)
        dest = self.destination(url=f"https://127.0.0.1:{port.getHost().port}/ok")
        err = yield defer.ensureDeferred(self.failure(dest))
        self.assertTrue(err.retryable)
        self.assertFalse(err.ambiguous)
        self.assertIn("TLS handshake failed", err.message)
        self.assertEqual(self.recorder.requests, [])

    @defer.inlineCallbacks
    def test_tls_verify_false_accepts_any_certificate(self) -> Any:
        """tls_verify: false (test rigs only) accepts an untrusted certificate."""
        cert, _ = self_signed(self.tmpdir())
        tls_site = TrackingFactory(server.Site(self.recorder))
        port = reactor.listenSSL(0, tls_site, cert.options(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(tls_site.close_all)
        dest = self.destination(url=f"https://127.0.0.1:{port.getHost().port}/ok", tls_verify=False)
        body = yield defer.ensureDeferred(dest.send(delivery()))
        self.assertEqual(body, b"accepted")


class HttpSpecTests(unittest.SynchronousTestCase):
    def errors(self, **values: Any) -> list[str]:
        ctx = Context("<test>")
        HTTP_SPEC.parse(yaml.compose(yaml.safe_dump(values)), ctx, "")
        return [str(e) for e in ctx.errors]

    def test_defaults(self) -> None:
        """Only url is required; the documented defaults apply."""
        config = options(url="http://erp/api")
        self.assertEqual(config.method, "POST")
        self.assertEqual(config.timeout, 30.0)
        self.assertEqual(config.connect_timeout, 10.0)
        self.assertEqual(config.max_response, 1024 * 1024)
        self.assertTrue(config.tls_verify)

    def test_config_mistakes_are_reported(self) -> None:
        """Reserved headers, half-configured basic auth, ca_file without verification and a
        non-http URL are config errors naming the field."""
        errors = "\n".join(
            self.errors(
                url="ftp://erp/api",
                headers={"Authorization": "x"},
                basic_user="wharf",
                tls_verify=False,
                ca_file="ca.pem",
            )
        )
        self.assertIn("url: must start with http:// or https://", errors)
        self.assertIn("headers.Authorization:", errors)
        self.assertIn("basic_user and basic_password_env must be given together", errors)
        self.assertIn("ca_file needs tls_verify: true", errors)


class ClassificationTests(unittest.SynchronousTestCase):
    def test_timeout_while_connecting_is_not_ambiguous(self) -> None:
        """Our timeout cancelling the connect attempt (ConnectingCancelledError from the
        endpoint) means nothing was sent: retryable, not ambiguous."""
        from twisted.internet import address, error

        dest = HttpDestination(
            options(url="http://erp.invalid/api", timeout=1),
            reactor=reactor,
            channel="erp",
            name="orders",
            base_dir=pathlib.Path("."),
        )
        self.addCleanup(dest.close)
        exc = error.ConnectingCancelledError(address.IPv4Address("TCP", "10.0.0.1", 80))
        err = dest._transport_error(exc, True, "http://erp.invalid")
        self.assertTrue(err.retryable)
        self.assertFalse(err.ambiguous)
        self.assertIn("before connecting", err.message)
