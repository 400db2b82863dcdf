"""YAML configuration of the admin listener (``admin:`` in routes.yaml): where the console and
its JSON API listen (loopback by default, TLS and mutual TLS as the other listeners), session
timeouts and login lockouts."""

from __future__ import annotations

from typing import Any

from engine.spec import Context, Duration, Field, Int, Spec, Str, join

#: The admin listener's port unless routes.yaml says otherwise (``ADMIN_PORT`` moves it).
ADMIN_PORT = 8088


def _check_admin(config: Any, ctx: Context, node: Any, path: str) -> None:
    from engine.net.endpoints import check_listen

    check_listen(config, ctx, node, path)
    if config.absolute_timeout < config.idle_timeout:
        ctx.error(
            node,
            join(path, "absolute_timeout"),
            f"expected an absolute_timeout no shorter than idle_timeout "
            f"({config.idle_timeout:g}s; got {config.absolute_timeout:g}s)",
        )
    url = config.public_url
    if url is not None and not url.startswith(("http://", "https://")):
        ctx.error(
            node, join(path, "public_url"), f"expected an http:// or https:// URL (got {url!r})"
        )


ADMIN_SPEC = Spec(
    "admin",
    [
        Field(
            "listen",
            Str(),
            f"tcp:{ADMIN_PORT}:interface=127.0.0.1",
            "Twisted server endpoint string of the console and its API (`ssl:` for TLS).",
            "ssl:8443:interface=0.0.0.0:privateKey=tls/admin.key:certKey=tls/admin.crt",
        ),
        Field(
            "client_ca",
            Str(),
            None,
            "PEM file of the CAs whose client certificates may connect (mutual TLS; needs an "
            "`ssl:` listen string). A person still logs in.",
        ),
        Field(
            "public_url",
            Str(),
            None,
            "The URL people reach the console at, used in the one-time setup links "
            "(default: from `listen`).",
        ),
        Field("idle_timeout", Duration(lo=1), 900.0, "A session ends after this long unused."),
        Field(
            "absolute_timeout",
            Duration(lo=1),
            12 * 3600.0,
            "A session ends this long after its login, used or not.",
        ),
        Field(
            "max_failed_logins",
            Int(1, 1000),
            5,
            "Failed logins of one account from one address before that pair is locked out "
            "(the account still logs in from elsewhere).",
        ),
        Field("lockout", Duration(lo=1), 900.0, "How long a locked (account, address) waits."),
        Field(
            "setup_link_ttl",
            Duration(lo=60),
            24 * 3600.0,
            "How long a one-time setup link (`wharf user add`, `wharf user reset`, first run) "
            "stays good.",
        ),
    ],
    description=(
        "The admin listener: the web console (integration, messages, work items, supply "
        "chain, finance, revenue cycle, utilization, audit, users), its JSON API "
        "(`/api/openapi.json`), and the health and metrics resources. Accounts come from "
        "`wharf user add`; there is no default password (a store without accounts prints a "
        "one-time setup link at start)."
    ),
    example="""
admin:
  listen: tcp:${ADMIN_PORT:-8088}:interface=127.0.0.1
  idle_timeout: 15m
""",
    check=_check_admin,
)


def base_url(config: Any, port: int | None = None) -> str:
    """The console's URL: ``public_url``, or the scheme, address and port of ``listen`` (an
    unspecified address as 127.0.0.1; ``port``: the port actually bound)."""
    from engine.net.endpoints import parse_listen

    if config.public_url:
        return str(config.public_url).rstrip("/")
    kind, args, kw = parse_listen(config.listen)
    host = kw.get("interface") or "127.0.0.1"
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    host = f"[{host}]" if ":" in host else host
    shown = port if port is not None else (args[0] if args else kw.get("port", "?"))
    return f"{'https' if kind == 'ssl' else 'http'}://{host}:{shown}"
