"""YAML configuration of Wharf's SFTP server (``sftp_server:`` in routes.yaml)."""

from __future__ import annotations

from typing import Any

import yaml

from engine.errors import ConfigError, LintFailed
from engine.net.admission import Cidr
from engine.spec import ByteSize, Context, Duration, Enum, Field, Int, ListOf, Spec, Str, join

#: Algorithms offered by default: no CBC, no SHA-1, no MD5.
DEFAULT_CIPHERS = ("aes256-ctr", "aes192-ctr", "aes128-ctr")
DEFAULT_MACS = ("hmac-sha2-512", "hmac-sha2-256")
DEFAULT_KEX = (
    "mlkem768x25519-sha256",
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "ecdh-sha2-nistp256",
    "ecdh-sha2-nistp384",
    "ecdh-sha2-nistp521",
)

PARTNER_NAME = Str(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", "a partner name (letters, digits, _ . -)")


def _check_partner(config: Any, ctx: Context, node: Any, path: str) -> None:
    if not config.authorized_keys and not config.password_bcrypt:
        ctx.error(
            node,
            join(path, "authorized_keys"),
            f"partner '{config.name}' needs at least one public key (or a password_bcrypt)",
        )
    if config.password_bcrypt and not str(config.password_bcrypt).startswith(
        ("$2a$", "$2b$", "$2y$")
    ):
        ctx.error(
            node,
            join(path, "password_bcrypt"),
            "expected a bcrypt hash starting with $2b$ (never a plain password)",
        )


PARTNER_SPEC = Spec(
    "sftp_partner",
    [
        Field("name", PARTNER_NAME, description="Login name of the trading partner."),
        Field(
            "root",
            Str(),
            description="The partner's root folder (relative to the project root); it holds "
            "inbound/, outbound/ and archive/, created if missing.",
            example="var/sftp/acme",
        ),
        Field(
            "authorized_keys",
            ListOf(Str(), scalar_ok=True),
            (),
            "OpenSSH public key lines (`ssh-ed25519 AAAA...`) or paths of files holding them.",
        ),
        Field(
            "password_bcrypt",
            Str(),
            None,
            "Optional password login: the bcrypt hash only (`$2b$12$...`), never the password.",
        ),
        Field("max_file_size", ByteSize(), 100 * 1024**2, "Largest file the partner may upload."),
        Field("quota_bytes", ByteSize(), 1024**3, "Most bytes waiting in inbound/ at once."),
        Field("quota_files", Int(1), 10000, "Most files waiting in inbound/ at once."),
        Field(
            "allow",
            ListOf(Cidr(), scalar_ok=True),
            (),
            "The networks the partner logs in from (CIDRs such as `203.0.113.0/24`, or single "
            "addresses); a login from elsewhere is refused even with the right key or password. "
            "Empty: any address.",
        ),
    ],
    description="One trading partner account, confined to its root.",
    check=_check_partner,
)


def _check_server(config: Any, ctx: Context, node: Any, path: str) -> None:
    from twisted.conch.ssh.transport import SSHTransportBase

    from engine.net.endpoints import check_listen

    check_listen(config, ctx, node, path)
    names = [p.name for p in config.partners]
    for name in sorted({n for n in names if names.count(n) > 1}):
        ctx.error(node, join(path, "partners"), f"partner '{name}' is listed twice")
    for field, supported in (
        ("ciphers", SSHTransportBase.supportedCiphers),
        ("macs", SSHTransportBase.supportedMACs),
        ("kex", SSHTransportBase.supportedKeyExchanges),
    ):
        known = {s.decode() for s in supported}
        for value in getattr(config, field) or ():
            if value not in known:
                ctx.error(
                    node,
                    join(path, field),
                    f"unsupported algorithm {value!r} "
                    f"(expected some of: {', '.join(sorted(known))})",
                )


SFTP_SERVER_SPEC = Spec(
    "sftp_server",
    [
        Field(
            "listen",
            Str(),
            "tcp:2222:interface=127.0.0.1",
            "Twisted server endpoint string.",
            "tcp:2222:interface=0.0.0.0",
        ),
        Field(
            "host_key",
            Str(),
            "var/sftp/host_key",
            "Private host key file (OpenSSH format), created on first start (mode 0600) with its "
            "`.pub` next to it, and kept.",
        ),
        Field("host_key_type", Enum("ed25519", "rsa"), "ed25519", "Type of a new host key."),
        Field("partners", ListOf(PARTNER_SPEC, min_items=1), description="The accounts."),
        Field("idle_timeout", Duration(lo=1), 300.0, "Disconnect after this long without data."),
        Field("login_timeout", Duration(lo=1), 30.0, "Disconnect if not logged in by then."),
        Field(
            "max_failed_logins",
            Int(1, 1000),
            5,
            "Failed logins per connection before disconnecting; that many failures for one "
            "account from one address (an IPv4 address or an IPv6 /64) within `lockout` lock "
            "that account from that address only (the partner's own address still logs in). "
            "Each failure also makes the next refused password from that address wait longer "
            "(`login_delay`, doubling, at most 16 times it). An account that does not exist is "
            "refused the same way, in the same time.",
        ),
        Field(
            "login_delay",
            Duration(lo=0.01),
            1.0,
            "How long a refused password waits after the first failure of its (account, "
            "address) pair; it doubles with each further failure.",
        ),
        Field(
            "lockout",
            Duration(),
            900.0,
            "How long an (account, address) pair stays locked (0 = never), twice as long for "
            "each lockout of the same pair within a day (at most a day). Lockouts and unlocks "
            "are logged and audited.",
        ),
        Field("ciphers", ListOf(Str()), list(DEFAULT_CIPHERS), "Allowed ciphers, preferred first."),
        Field("macs", ListOf(Str()), list(DEFAULT_MACS), "Allowed MACs, preferred first."),
        Field("kex", ListOf(Str()), list(DEFAULT_KEX), "Allowed key exchanges, preferred first."),
        Field("max_sessions", Int(1, 100000), 100, "Most connections at once."),
    ],
    description=(
        "Wharf's own SFTP server: one account per trading partner, public-key login, each "
        "confined to its root with inbound/, outbound/ and archive/. Uploads land in inbound/ "
        "atomically (a hidden temporary name renamed when the client closes the file). "
        "Partner roots and their folders are created owner-only (0700)."
    ),
    example="""
sftp_server:
  listen: tcp:2222:interface=0.0.0.0
  host_key: var/sftp/host_key
  partners:
    - name: acme
      root: var/sftp/acme
      authorized_keys: [keys/acme.pub]
      quota_bytes: 1GiB
""",
    check=_check_server,
)


def parse_server_config(values: dict[str, Any], file: str = "<sftp_server>") -> Any:
    """Parse a plain mapping (as written in YAML) through :data:`SFTP_SERVER_SPEC`."""
    ctx = Context(file)
    config = SFTP_SERVER_SPEC.parse(yaml.compose(yaml.safe_dump(values)), ctx, "sftp_server")
    if ctx.errors:
        raise LintFailed(ctx.errors) if len(ctx.errors) > 1 else ctx.errors[0]
    return config


__all__ = ["PARTNER_SPEC", "SFTP_SERVER_SPEC", "ConfigError", "parse_server_config"]
