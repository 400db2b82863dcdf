"""People and roles of the console: bcrypt passwords, one-time setup links, sessions (an
HttpOnly SameSite=Strict cookie, a CSRF token per session, idle and absolute timeouts), lockout
by (account, source address), and what each role may see and do.

Accounts live in the store (``console_users``), every change to them audited there; so do
sessions and failure counts (``console_sessions``, ``login_failures``): a restart logs nobody
out and forgets no lockout, and a session made on one node works on every node of the store.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
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
            "credits",
            "utilization",
            "audit",
            "users",
        }
    ),
    "supply_chain": frozenset({"supply", "work_items", "resolve"}),
    "finance": frozenset({"finance", "release", "utilization", "work_items", "resolve"}),
    "revenue_cycle": frozenset({"revenue", "credits", "utilization", "work_items", "resolve"}),
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
            "X12_NOT_APPLIED",
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
    key: str = ""  # the SHA-256 of its cookie: what the store keeps it under


@dataclass
class Sessions:
    """Sessions and failed logins, kept in the store (``console_sessions``, ``login_failures``:
    a restart forgets neither, and every node on one database knows them): sessions by the
    SHA-256 of their cookie, the idle and absolute timeouts enforced from their stored login
    and last-use times, lockout by (account, address).

    Each method is one store read or one short write and runs where the caller runs it: the
    console reads on its read threads and writes through the store's executor. A session's
    last use is written at most every ``touch_every`` seconds (:meth:`stale`), so that a busy
    page is not a write per request; its idle timeout may therefore end it up to that much
    early, never late."""

    store: Any
    clock: Callable[[], float]
    idle_timeout: float = 900.0
    absolute_timeout: float = 12 * 3600.0
    max_failed: int = 5
    lockout: float = 900.0
    touch_every: float | None = None

    def __post_init__(self) -> None:
        if self.touch_every is None:
            self.touch_every = min(60.0, self.idle_timeout / 10)

    @classmethod
    def of_config(cls, config: Any, store: Any, clock: Callable[[], float]) -> Sessions:
        return cls(
            store,
            clock,
            idle_timeout=config.idle_timeout,
            absolute_timeout=config.absolute_timeout,
            max_failed=config.max_failed_logins,
            lockout=config.lockout,
        )

    # -- lockout (locked: a read; failed and succeeded: writes) -------------------------------
    def locked(self, account: str, address: str) -> bool:
        return bool(self.store.login_locked(account, address, self.clock()))

    def failed(self, account: str, address: str) -> bool:
        """Count a failed login; True when it locks the pair out."""
        return bool(
            self.store.login_failed(
                account, address, self.clock(), max_failed=self.max_failed, window=self.lockout
            )
        )

    def succeeded(self, account: str, address: str) -> None:
        self.store.login_succeeded(account, address)

    # -- sessions (get: a read; the others: writes) ------------------------------------------
    def open(self, principal: Principal, address: str) -> tuple[str, Session]:
        """A new session (the timed-out ones dropped first): the cookie value (kept only as
        its digest) and the session."""
        token = secrets.token_urlsafe(32)
        now = self.clock()
        key = token_digest(token)
        session = Session(principal, secrets.token_urlsafe(24), address, now, now, key)
        self.store.open_session(
            key,
            principal.name,
            session.csrf,
            address,
            now,
            expired_before=now - self.absolute_timeout,
            idle_before=now - self.idle_timeout,
        )
        return token, session

    def get(self, token: str | None) -> Session | None:
        """The live session of a cookie, or None (unknown, timed out, or its account
        disabled). Its principal has the account's roles and channels as they are now."""
        if not token:
            return None
        key = token_digest(token)
        row = self.store.session(key)
        if row is None or row["disabled"]:
            return None
        now = self.clock()
        if now - row["seen_at"] > self.idle_timeout:
            return None
        if now - row["created_at"] > self.absolute_timeout:
            return None
        principal = Principal(row["name"], list(row["roles"]), list(row["channels"]))
        return Session(
            principal, row["csrf"], row["address"], row["created_at"], row["seen_at"], key
        )

    def stale(self, session: Session) -> bool:
        """Whether the session's last use should be written now (:meth:`touch`)."""
        return self.clock() - session.seen >= (self.touch_every or 0.0)

    def touch(self, session: Session) -> None:
        now = self.clock()
        self.store.touch_session(session.key, now)
        session.seen = now

    def close(self, token: str | None) -> bool:
        return bool(self.store.close_session(token_digest(token))) if token else False

    def end_all(self, name: str) -> int:
        """End every session of one account (disabled or reset); how many."""
        return int(self.store.end_sessions(name))

    @staticmethod
    def csrf_ok(session: Session, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(session.csrf, str(given))


def principal_of(user: dict[str, Any]) -> Principal:
    return Principal(user["name"], list(user["roles"]), list(user["channels"]))
