"""Client-side TLS: CA bundles (:func:`load_ca_bundle`), client certificates for mutual TLS
(:func:`load_client_certificate`), the HTTPS policy of an HTTP client (:func:`tls_policy`) and
the connection creator of a single-host client such as MLLP (:func:`tls_creator`), with the
``tls_verify: false`` variants for test rigs."""

from __future__ import annotations

import ipaddress
import pathlib
import re
from typing import Any

from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import Certificate, trustRootFromCertificates
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from engine.errors import ConfigError


def load_ca_bundle(path: pathlib.Path) -> list[Certificate]:
    """Every certificate of a PEM bundle; ConfigError when unreadable or empty."""
    try:
        text = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"'ca_file' must be a readable PEM file (got {str(path)!r}: {e})") from e
    blocks = re.findall(
        rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, flags=re.DOTALL
    )
    if not blocks:
        raise ConfigError(f"'ca_file' must hold PEM certificates (got none in {str(path)!r})")
    try:
        return [Certificate.loadPEM(block) for block in blocks]
    except Exception as e:
        raise ConfigError(f"'ca_file' holds a bad certificate ({str(path)!r}: {e})") from e


# --------------------------------------------------------------------------- HTTPS (agents)


@implementer(IOpenSSLClientConnectionCreator)
class _NoVerifyHttpsCreator:
    """A TLS client connection that checks neither certificate nor host name (test rigs);
    presents ``client`` (a PrivateCertificate) when given."""

    def __init__(self, hostname: bytes, client: ssl.PrivateCertificate | None = None) -> None:
        self._hostname = hostname
        self._ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        self._ctx.set_verify(SSL.VERIFY_NONE, lambda *a: True)
        if client is not None:
            _use_client_certificate(self._ctx, client)

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        conn = SSL.Connection(self._ctx, None)
        conn.set_app_data(tlsProtocol)
        if not re.fullmatch(rb"[0-9.]+|.*:.*", self._hostname):
            conn.set_tlsext_host_name(self._hostname)
        conn.set_connect_state()
        return conn


def _use_client_certificate(ctx: SSL.Context, client: ssl.PrivateCertificate) -> None:
    ctx.use_certificate(client.original.to_cryptography())
    ctx.use_privatekey(client.privateKey.original.to_cryptography_key())
    ctx.check_privatekey()


@implementer(IPolicyForHTTPS)
class InsecurePolicy:
    """Accepts any server certificate. For test rigs only (``tls_verify: false``)."""

    def __init__(self, client: ssl.PrivateCertificate | None = None) -> None:
        self.client = client

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return _NoVerifyHttpsCreator(hostname, self.client)


@implementer(IPolicyForHTTPS)
class ClientCertificatePolicy:
    """Verifies the server as a browser would (against ``trust``, or the platform's CAs when
    None) and presents ``client``: mutual TLS."""

    def __init__(self, client: ssl.PrivateCertificate, trust: Any = None) -> None:
        self.client = client
        self.trust = trust

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return ssl.optionsForClientTLS(
            hostname.decode("idna"), trustRoot=self.trust, clientCertificate=self.client
        )


def load_client_certificate(value: str, base_dir: pathlib.Path) -> ssl.PrivateCertificate:
    """The certificate and private key of the PEM file ``value`` (relative to ``base_dir``);
    ConfigError when missing, unreadable or without a matching key."""
    path = pathlib.Path(value)
    if not path.is_absolute():
        path = pathlib.Path(base_dir) / path
    try:
        return ssl.PrivateCertificate.loadPEM(path.read_bytes())
    except OSError as e:
        raise ConfigError(
            f"'client_certificate' must be a readable PEM file (got {str(path)!r}: {e})"
        ) from e
    except Exception as e:
        raise ConfigError(
            f"'client_certificate' must hold a certificate and its private key "
            f"(got {str(path)!r}: {type(e).__name__})"
        ) from e


def tls_policy(options: Any, base_dir: pathlib.Path) -> Any:
    """The :class:`IPolicyForHTTPS` for ``options``: platform trust, the ``ca_file`` bundle,
    or (``tls_verify: false``) no verification; with ``client_certificate`` (when the options
    have it) the client presents that certificate (mutual TLS)."""
    client = None
    if getattr(options, "client_certificate", None):
        client = load_client_certificate(options.client_certificate, base_dir)
    if not options.tls_verify:
        return InsecurePolicy(client)
    trust = None
    if options.ca_file:
        path = pathlib.Path(options.ca_file)
        if not path.is_absolute():
            path = base_dir / path
        trust = trustRootFromCertificates(load_ca_bundle(path))
    if client is not None:
        return ClientCertificatePolicy(client, trust)
    if trust is not None:
        return BrowserLikePolicyForHTTPS(trustRoot=trust)
    return BrowserLikePolicyForHTTPS()


# --------------------------------------------------------------------------- one host (MLLP)


@implementer(IOpenSSLClientConnectionCreator)
class _NoVerifyCreator:
    """TLS that checks neither certificate nor host name (``tls_verify: false``, test rigs);
    presents ``client`` (a PrivateCertificate) when given."""

    def __init__(self, hostname: str, client: ssl.PrivateCertificate | None) -> None:
        self._hostname = hostname
        self._ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        self._ctx.set_verify(SSL.VERIFY_NONE, lambda *a: True)
        if client is not None:
            _use_client_certificate(self._ctx, client)

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        conn = SSL.Connection(self._ctx, None)
        conn.set_app_data(tlsProtocol)
        if not _is_ip(self._hostname):
            conn.set_tlsext_host_name(self._hostname.encode("idna"))
        conn.set_connect_state()
        return conn


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def tls_creator(options: Any, base_dir: pathlib.Path) -> Any:
    """The client TLS connection creator for ``options`` (``host``, ``tls_verify``,
    ``ca_file``, ``client_certificate``); ConfigError when a PEM file is missing or
    unreadable."""

    def resolve(value: str) -> pathlib.Path:
        path = pathlib.Path(value)
        return path if path.is_absolute() else pathlib.Path(base_dir) / path

    client = None
    if options.client_certificate:
        client = load_client_certificate(options.client_certificate, base_dir)
    if not options.tls_verify:
        return _NoVerifyCreator(options.host, client)
    trust = None
    if options.ca_file:
        trust = ssl.trustRootFromCertificates(load_ca_bundle(resolve(options.ca_file)))
    return ssl.optionsForClientTLS(options.host, trustRoot=trust, clientCertificate=client)


def client_common_name(transport: Any) -> str | None:
    """The common name (CN) of the certificate the client presented on a TLS ``transport``
    (mutual TLS), None on a plain connection or without a certificate."""
    getter = getattr(transport, "getPeerCertificate", None)
    if getter is None:
        return None
    try:
        cert = getter()
    except Exception:
        return None
    if cert is None:
        return None
    try:
        from cryptography.x509.oid import NameOID

        names = cert.to_cryptography().subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except Exception:
        return None
    return str(names[0].value) if names else None
