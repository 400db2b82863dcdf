"""Server endpoints from Twisted listen strings: parsing, the spec check of a ``listen`` field,
TLS 1.2+ and mutual TLS (``client_ca``), and :func:`peer_name` for log lines.

Used by the listening sources (``mllp``, ``fhir_http``): ``tcp:2575``,
``tcp:2575:interface=127.0.0.1``, ``ssl:2576:privateKey=key.pem:certKey=cert.pem`` (PEM paths
relative to the project).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto
from twisted.internet import endpoints, ssl

from engine.spec import Context


def peer_name(transport: Any) -> str:
    """``host:port`` of the other side (``[v6]:port``; the path of a UNIX socket)."""
    try:
        addr = transport.getPeer()
    except Exception:
        return "?"
    host = getattr(addr, "host", None)
    if host is None:
        return str(getattr(addr, "name", None) or "?")
    port = getattr(addr, "port", "?")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_listen(listen: str) -> tuple[str, list[str], dict[str, str]]:
    """``(type, positional args, keyword args)`` of a Twisted endpoint string (``\\:`` escapes)."""
    args, kwargs = endpoints._parse(listen)  # the parser serverFromString uses
    if not args:
        raise ValueError("empty endpoint string")
    return str(args[0]).lower(), [str(a) for a in args[1:]], {k: str(v) for k, v in kwargs.items()}


def check_listen(config: Any, ctx: Context, node: yaml.Node, path: str) -> None:
    """Spec check of ``config.listen`` (a Twisted endpoint string; ``ssl:`` needs a port and a
    ``privateKey``) and of ``config.client_ca`` (needs an ``ssl:`` listen string)."""
    try:
        kind, args, kwargs = parse_listen(config.listen)
    except Exception:
        ctx.error(
            node, f"{path}.listen", f"expected a Twisted endpoint string (got {config.listen!r})"
        )
        return
    if getattr(config, "client_ca", None) is not None and kind != "ssl":
        ctx.error(
            node,
            f"{path}.client_ca",
            f"client_ca needs an ssl: listen string (got {config.listen!r})",
        )
    if kind == "ssl":
        if not args and "port" not in kwargs:
            ctx.error(node, f"{path}.listen", f"ssl: needs a port (got {config.listen!r})")
        if "privateKey" not in kwargs:
            ctx.error(
                node,
                f"{path}.listen",
                f"ssl: needs privateKey=<PEM file> (got {config.listen!r})",
            )


def load_certs(pem: bytes, name: str) -> list[x509.Certificate]:
    """Every certificate of a PEM file, in order (ValueError naming the file if none)."""
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        certs = []
    if not certs:
        raise ValueError(f"no PEM certificate in {name}")
    return certs


def _path(base_dir: Path, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() else Path(base_dir) / p


def tls_options(listen: str, client_ca: str | None, base_dir: Path) -> ssl.CertificateOptions:
    """CertificateOptions of an ssl: listen string (mutual TLS when ``client_ca`` is set).

    ``privateKey`` (unencrypted PEM) and ``certKey`` (PEM certificate, optionally followed
    by its chain; default: the ``privateKey`` file), ``extraCertChain`` (more chain);
    TLS 1.2 at least. Relative paths are relative to ``base_dir``.
    """
    _, _args, kw = parse_listen(listen)
    cert_name = kw.get("certKey", kw["privateKey"])
    key = serialization.load_pem_private_key(
        _path(base_dir, kw["privateKey"]).read_bytes(), password=None
    )
    certs = load_certs(_path(base_dir, cert_name).read_bytes(), cert_name)
    chain = certs[1:]
    if "extraCertChain" in kw:
        name = kw["extraCertChain"]
        chain += load_certs(_path(base_dir, name).read_bytes(), name)
    kwargs: dict[str, Any] = {}
    if client_ca is not None:
        cas = load_certs(_path(base_dir, client_ca).read_bytes(), client_ca)
        # (the trust store takes pyOpenSSL X509 objects only)
        x509s = [crypto.X509.from_cryptography(c) for c in cas]
        kwargs = dict(verify=True, caCerts=x509s, requireCertificate=True)
    return ssl.CertificateOptions(
        privateKey=key,
        certificate=certs[0],
        extraCertChain=chain or None,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        **kwargs,
    )


#: Pending connections the kernel queues for a listener unless the listen string says
#: ``backlog=`` (Twisted's own default, 50, drops a burst's SYNs: a sender arriving during a
#: connection flood would wait for its SYN to be resent, a second or more).
BACKLOG = 1024


def server_endpoint(
    reactor: Any, listen: str, client_ca: str | None = None, base_dir: Path = Path(".")
) -> Any:
    """The server endpoint of ``listen``: ``serverFromString`` for everything but ``ssl:``,
    which gets :func:`tls_options` (TLS 1.2+, mutual TLS with ``client_ca``). TCP listeners
    queue :data:`BACKLOG` pending connections unless ``backlog=`` is given."""
    kind, args, kw = parse_listen(listen)
    if kind != "ssl":
        if kind in ("tcp", "tcp6") and "backlog" not in kw:
            listen = f"{listen}:backlog={BACKLOG}"
        return endpoints.serverFromString(reactor, listen)
    port = int(args[0] if args else kw["port"])
    return endpoints.SSL4ServerEndpoint(
        reactor,
        port,
        tls_options(listen, client_ca, base_dir),
        backlog=int(kw.get("backlog", BACKLOG)),
        interface=kw.get("interface", ""),
    )
