"""Console accounts in the store: added with a one-time setup link (no password is ever set
by anyone but its owner), disabled, reset, and logged in to. Each function takes the store and
runs where writes run (the store's executor, or the CLI's own thread); every change is audited
in the same commit (``user.add``, ``user.setup``, ``user.disable``, ``user.enable``,
``user.reset``)."""

from __future__ import annotations

import time
from typing import Any

from engine.web.auth import (
    ALL_CHANNELS,
    AuthError,
    check_password,
    check_roles,
    hash_password,
    new_setup_token,
    token_digest,
)


def issue_setup(
    store: Any,
    name: str,
    *,
    actor: str,
    ttl: float,
    roles: list[str] | None = None,
    channels: list[str] | None = None,
    create: bool = False,
    now: float | None = None,
) -> str:
    """A one-time setup token for ``name`` (a new account with ``create``, else a reset: the
    old password stops working at once). Returns the token (only its digest is stored)."""
    now = time.time() if now is None else now
    existing = store.user(name)
    if create and existing is not None:
        raise AuthError(f"account {name!r} exists (wharf user reset {name} for a new link)")
    if not create and existing is None:
        raise AuthError(f"no account {name!r} (wharf user add {name} --role ...)")
    token, digest = new_setup_token()
    fields: dict[str, Any] = {"setup_hash": digest, "setup_until": now + ttl}
    if create:
        fields["roles"] = check_roles(roles or [])
        fields["channels"] = list(channels or [ALL_CHANNELS])
        action = "user.add"
    else:
        fields["password_hash"] = None
        action = "user.reset"
    store.save_user(name, actor=actor, action=action, now=now, **fields)
    return token


def complete_setup(store: Any, token: str, password: str, *, now: float | None = None) -> str:
    """Set the password of the account a setup token was issued for; the token is spent.
    Returns the account's name; AuthError when the token is unknown, used or expired."""
    now = time.time() if now is None else now
    digest = token_digest(token)
    for user in store.users():
        if user["setup_hash"] and user["setup_hash"] == digest:
            if user["setup_until"] is None or now > user["setup_until"]:
                raise AuthError("this setup link has expired: ask an admin for a new one")
            hashed = hash_password(password)
            store.save_user(
                user["name"],
                actor=user["name"],
                action="user.setup",
                now=now,
                password_hash=hashed,
                setup_hash=None,
                setup_until=None,
            )
            return str(user["name"])
    raise AuthError("this setup link is not valid (used already, or never issued)")


def set_disabled(store: Any, name: str, disabled: bool, *, actor: str) -> dict[str, Any]:
    if store.user(name) is None:
        raise AuthError(f"no account {name!r}")
    return store.save_user(
        name,
        actor=actor,
        action="user.disable" if disabled else "user.enable",
        now=time.time(),
        disabled=disabled,
    )


def add_with_password(
    store: Any,
    name: str,
    password: str,
    *,
    roles: list[str],
    channels: list[str] | None = None,
    actor: str,
) -> dict[str, Any]:
    """An account with a password its owner chose (``wharf user add --password-stdin``)."""
    if store.user(name) is not None:
        raise AuthError(f"account {name!r} exists")
    return store.save_user(
        name,
        actor=actor,
        action="user.add",
        now=time.time(),
        password_hash=hash_password(password),
        roles=check_roles(roles),
        channels=list(channels or [ALL_CHANNELS]),
    )


def verify(store: Any, name: str, password: str) -> dict[str, Any] | None:
    """The account when ``password`` is its password and it is enabled, else None (one bcrypt
    check either way, so that an unknown name is refused in the same time). The caller audits
    the login or its failure."""
    user = store.user(name)
    ok = check_password(password, user["password_hash"] if user else None)
    return user if ok and user is not None and not user["disabled"] else None
