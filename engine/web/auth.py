"""People and roles of the console: bcrypt passwords, one-time setup links, sessions (an
HttpOnly SameSite=Strict cookie, a CSRF token per session, idle and absolute timeouts), lockout
by (account, source address), and what each role may see and do.

Sessions and failure counts live in memory (a restart logs everyone out); accounts live in the
store (``console_users``), every change to them audited there.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import bcrypt

from engine.errors import WharfError

#: Every role and what it may do (a permission per page or action).
ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "viewer": frozenset({"integration", "messages", "work_items"}),
    "analyst": frozenset(
        {"integration", "messages", "body", "edit_replay", "work_items", "mappings"}
    ),
    "operator": frozenset({"integration", "messages", "replay", "pause", "work_items", "resolve"}),
    "admin": frozenset(
        {
            "integration",
            "messages",
            "body",
            "replay",
            "edit_replay",
            "pause",
            "work_items",
            "resolve",
            "mappings",
            "supply",
            "finance",
            "release",
            "revenue",
            "utilization",
            "audit",
            "users",
        }
    ),
    "supply_chain": frozenset({"supply", "work_items", "resolve"}),
    "finance": frozenset({"finance", "release", "utilization", "work_items", "resolve"}),
    "revenue_cycle": frozenset({"revenue", "utilization", "work_items", "resolve"}),
}
ROLES = tuple(ROLE_PERMISSIONS)

#: The work-item kinds a business role sees (the integration roles see every kind).
ROLE_KINDS: dict[str, frozenset[str]] = {
    "supply_chain": frozenset(
        {
            "PO_CHANGED",
            "ACK_REJECTED",
            "ACK_OVERDUE",
            "ASN_UNMATCHED",
            "RECEIPT_UNMATCHED",
            "SENDER_REFUSED",
            "X12_REFUSED",
        }
    ),
    "finance": frozenset({"INVOICE_HELD", "INVOICE_DUPLICATE", "RECEIPT_UNMATCHED"}),
    "revenue_cycle": frozenset(
        {"CHARGE_REJECTED", "UNBILLED_USAGE", "MISSING_LOT_SERIAL", "ORPHAN_CREDIT"}
    ),
}
ALL_CHANNELS = "*"
MIN_PASSWORD = 12
COOKIE = "wharf_session"
#: Checked when an account does not exist, so that a refusal takes as long either way.
_DUMMY_HASH = bcrypt.hashpw(b"not a password of anyone", bcrypt.gensalt(rounds=12))


class AuthError(WharfError):
    """A login, setup or session refused (the text is safe to show)."""


def hash_password(password: str, rounds: int = 12) -> str:
    """The bcrypt hash of a password that is long enough (ValueError otherwise)."""
    if len(password) < MIN_PASSWORD:
        raise ValueError(
            f"expected a password of at least {MIN_PASSWORD} characters (got {len(password)})"
        )
    return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(rounds=rounds)).decode()


def check_password(password: str, hashed: str | None) -> bool:
    """Whether ``password`` matches the bcrypt ``hashed`` (always spends one bcrypt check)."""
    target = hashed.encode() if hashed else _DUMMY_HASH
    ok = bcrypt.checkpw(password.encode("utf-8"), target)
    return ok and hashed is not None


def token_digest(token: str) -> str:
    """What the store keeps of a one-time setup token: its SHA-256."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_setup_token() -> tuple[str, str]:
    """A one-time setup token and its digest."""
    token = secrets.token_urlsafe(24)
    return token, token_digest(token)


def check_roles(roles: Iterable[str]) -> list[str]:
    """The roles, each one known (ValueError naming the unknown one and the known ones)."""
    from engine.spec import did_you_mean

    out = []
    for role in roles:
        if role not in ROLE_PERMISSIONS:
            raise ValueError(
                f"unknown role {role!r} (expected some of: {', '.join(ROLES)})"
                f"{did_you_mean(role, ROLES)}"
            )
        out.append(role)
    if not out:
        raise ValueError(f"expected at least one role (of: {', '.join(ROLES)})")
    return sorted(set(out))


@dataclass
class Principal:
    """Who is logged in: name, roles, channel scope."""

    name: str
    roles: list[str]
    channels: list[str]

    @property
    def permissions(self) -> frozenset[str]:
        out: set[str] = set()
        for role in self.roles:
            out |= ROLE_PERMISSIONS.get(role, frozenset())
        return frozenset(out)

    def may(self, permission: str) -> bool:
        return permission in self.permissions

    def sees_channel(self, channel: str) -> bool:
        return ALL_CHANNELS in self.channels or channel in self.channels

    @property
    def channel_scope(self) -> list[str] | None:
        """The channels this person may see, or None for every one."""
        return None if ALL_CHANNELS in self.channels else list(self.channels)

    @property
    def kinds(self) -> frozenset[str] | None:
        """The work-item kinds this person sees, or None for every kind."""
        if any(r in ("viewer", "analyst", "operator", "admin") for r in self.roles):
            return None
        out: set[str] = set()
        for role in self.roles:
            out |= ROLE_KINDS.get(role, frozenset())
        return frozenset(out)


@dataclass
class Session:
    principal: Principal
    csrf: str
    address: str
    created: float
    seen: float


@dataclass
class Sessions:
    """Live sessions by the SHA-256 of their cookie, with idle and absolute timeouts, and the
    failed logins of each (account, address) pair."""

    clock: Callable[[], float]
    idle_timeout: float = 900.0
    absolute_timeout: float = 12 * 3600.0
    max_failed: int = 5
    lockout: float = 900.0
    _live: dict[str, Session] = field(default_factory=dict)
    _failures: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    _locked: dict[tuple[str, str], float] = field(default_factory=dict)

    @classmethod
    def of_config(cls, config: Any, clock: Callable[[], float]) -> Sessions:
        return cls(
            clock,
            idle_timeout=config.idle_timeout,
            absolute_timeout=config.absolute_timeout,
            max_failed=config.max_failed_logins,
            lockout=config.lockout,
        )

    # -- lockout -----------------------------------------------------------------------------
    def locked(self, account: str, address: str) -> bool:
        until = self._locked.get((account, address))
        if until is None:
            return False
        if self.clock() >= until:
            del self._locked[(account, address)]
            self._failures.pop((account, address), None)
            return False
        return True

    def failed(self, account: str, address: str) -> bool:
        """Count a failed login; True when it locks the pair out."""
        now = self.clock()
        pair = (account, address)
        recent = [t for t in self._failures.get(pair, []) if now - t < self.lockout] + [now]
        self._failures[pair] = recent
        if len(recent) >= self.max_failed:
            self._locked[pair] = now + self.lockout
            return True
        return False

    def succeeded(self, account: str, address: str) -> None:
        self._failures.pop((account, address), None)

    # -- sessions ----------------------------------------------------------------------------
    def open(self, principal: Principal, address: str) -> tuple[str, Session]:
        """A new session: the cookie value (kept only as its digest) and the session."""
        token = secrets.token_urlsafe(32)
        now = self.clock()
        session = Session(principal, secrets.token_urlsafe(24), address, now, now)
        self._live[token_digest(token)] = session
        return token, session

    def get(self, token: str | None) -> Session | None:
        """The live session of a cookie (its last use now), or None (unknown or timed out)."""
        if not token:
            return None
        key = token_digest(token)
        session = self._live.get(key)
        if session is None:
            return None
        now = self.clock()
        if now - session.seen > self.idle_timeout or now - session.created > self.absolute_timeout:
            del self._live[key]
            return None
        session.seen = now
        return session

    def close(self, token: str | None) -> Session | None:
        return self._live.pop(token_digest(token), None) if token else None

    def end_all(self, name: str) -> int:
        """End every session of one account (disabled or reset); how many."""
        gone = [k for k, s in self._live.items() if s.principal.name == name]
        for k in gone:
            del self._live[k]
        return len(gone)

    @staticmethod
    def csrf_ok(session: Session, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(session.csrf, str(given))


def principal_of(user: dict[str, Any]) -> Principal:
    return Principal(user["name"], list(user["roles"]), list(user["channels"]))
