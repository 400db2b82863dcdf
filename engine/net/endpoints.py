"""Server endpoints from Twisted listen strings: parsing, the spec check of a ``listen`` field,
TLS 1.2+ and mutual TLS (``client_ca``), and :func:`peer_name` for log lines.

Used by the listening sources (``mllp``, ``fhir_http``): ``tcp:2575``,
``tcp:2575:interface=127.0.0.1``, ``ssl:2576:privateKey=key.pem:certKey=cert.pem`` (PEM paths
relative to the project).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto
from twisted.internet import endpoints, ssl

from engine.spec import Context, did_you_mean


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


#: The server endpoint types a listener takes, and the keywords each understands.
ENDPOINT_KEYWORDS = {
    "tcp": ("port", "interface", "backlog"),
    "tcp6": ("port", "interface", "backlog"),
    "ssl": ("port", "interface", "backlog", "privateKey", "certKey", "extraCertChain"),
    "unix": ("address", "mode", "backlog", "lockfile", "wantPID"),
}


def check_listen(config: Any, ctx: Context, node: yaml.Node, path: str) -> None:
    """Spec check of ``config.listen`` (a Twisted server endpoint string: a known type, a port
    in 0..65535, known keywords; ``ssl:`` needs a ``privateKey``) and of ``config.client_ca``
    (needs an ``ssl:`` listen string). Errors point at the ``listen`` line, and name the
    environment variables the string was built from when their value is what is wrong."""
    listen = config.listen
    where = _value_node(node, "listen") or node
    field = f"{path}.listen"
    try:
        kind, args, kwargs = parse_listen(listen)
    except Exception:
        ctx.error(where, field, f"expected a Twisted endpoint string (got {listen!r})")
        return
    if kind not in ENDPOINT_KEYWORDS:
        ctx.error(
            where,
            field,
            f"expected an endpoint type {', '.join(ENDPOINT_KEYWORDS)} "
            f"(got {kind!r} in {listen!r}){did_you_mean(kind, ENDPOINT_KEYWORDS)}",
        )
        return
    known = ENDPOINT_KEYWORDS[kind]
    for key in kwargs:
        if key not in known:
            ctx.error(
                where,
                field,
                f"{kind}: has no keyword {key!r} (expected some of: {', '.join(known)})"
                f"{did_you_mean(key, known)}",
            )
    if kind == "unix":
        if not args and "address" not in kwargs:
            ctx.error(where, field, f"unix: needs a socket path (got {listen!r})")
    else:
        port = args[0] if args else kwargs.get("port")
        if port is None or port == "":
            ctx.error(where, field, f"{kind}: needs a port (got {listen!r})")
        elif not port.isdigit() or not 0 <= int(port) <= 65535:
            ctx.error(
                where,
                field,
                f"{kind}: the port must be a number in 0..65535 (got {port!r}"
                f"{_from_variables(where, port, ctx)})",
            )
    backlog = kwargs.get("backlog")
    if backlog is not None and not backlog.isdigit():
        ctx.error(where, field, f"backlog must be a number (got {backlog!r})")
    if getattr(config, "client_ca", None) is not None and kind != "ssl":
        ctx.error(
            _value_node(node, "client_ca") or node,
            f"{path}.client_ca",
            f"client_ca needs an ssl: listen string (got {listen!r})",
        )
    if kind == "ssl" and "privateKey" not in kwargs:
        ctx.error(where, field, f"ssl: needs privateKey=<PEM file> (got {listen!r})")


def _value_node(node: yaml.Node, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if k.value == key:
                return v
    return None


def _from_variables(node: yaml.Node, value: str, ctx: Context) -> str:
    """``, from $MLLP_PORT`` when the text came from environment variables set to it."""
    raw = getattr(node, "value", "")
    if not isinstance(raw, str) or "$" not in raw:
        return ""
    names = re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", raw)
    culprits = [n for n in names if ctx.env.get(n) is not None and ctx.env.get(n) in value]
    if culprits:
        return ", from " + ", ".join(f"${n}={ctx.env[n]!r}" for n in culprits)
    return f", from {raw!r}"


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
