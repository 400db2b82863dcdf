"""The console's people and roles: passwords, sessions with idle and absolute timeouts (a
Clock), lockout by (account, address), CSRF tokens, roles and channel scopes."""

from __future__ import annotations

import pytest
from twisted.internet import task

from engine.web.auth import (
    ROLES,
    Principal,
    Sessions,
    check_password,
    check_roles,
    hash_password,
)


def sessions(**kw: float) -> tuple[task.Clock, Sessions]:
    clock = task.Clock()
    return clock, Sessions(clock.seconds, **kw)


def test_passwords_are_bcrypt_and_long() -> None:
    hashed = hash_password("a long passphrase", rounds=4)
    assert hashed.startswith("$2b$04$")
    assert check_password("a long passphrase", hashed)
    assert not check_password("a long passphrasE", hashed)
    assert not check_password("a long passphrase", None)  # no account: refused all the same
    with pytest.raises(ValueError, match="at least 12 characters \\(got 5\\)"):
        hash_password("short")


def test_unknown_roles_are_named() -> None:
    assert check_roles(["finance", "viewer", "finance"]) == ["finance", "viewer"]
    with pytest.raises(ValueError, match=r"unknown role 'operater'.*did you mean 'operator'"):
        check_roles(["operater"])
    with pytest.raises(ValueError, match="at least one role"):
        check_roles([])


def test_a_session_ends_after_the_idle_timeout() -> None:
    clock, s = sessions(idle_timeout=60, absolute_timeout=600)
    token, session = s.open(Principal("ann", ["viewer"], ["*"]), "10.0.0.1")
    clock.advance(59)
    assert s.get(token) is session  # a use keeps it alive
    clock.advance(59)
    assert s.get(token) is session
    clock.advance(61)
    assert s.get(token) is None
    assert s.get(token) is None  # and it stays gone


def test_a_session_ends_after_the_absolute_timeout_however_busy() -> None:
    clock, s = sessions(idle_timeout=60, absolute_timeout=300)
    token, _ = s.open(Principal("ann", ["viewer"], ["*"]), "10.0.0.1")
    for _ in range(5):
        clock.advance(50)
        assert s.get(token) is not None
    clock.advance(51)
    assert s.get(token) is None


def test_the_cookie_is_not_kept_and_unknown_cookies_find_nothing() -> None:
    _, s = sessions()
    token, _ = s.open(Principal("ann", ["viewer"], ["*"]), "10.0.0.1")
    assert token not in s._live  # only its digest
    assert s.get("forged") is None and s.get(None) is None


def test_lockout_is_per_account_and_address() -> None:
    clock, s = sessions(max_failed=3, lockout=100)
    for _ in range(2):
        assert not s.failed("ann", "10.0.0.1")
    assert s.failed("ann", "10.0.0.1")  # the third locks
    assert s.locked("ann", "10.0.0.1")
    assert not s.locked("ann", "10.0.0.2")  # her own address still logs in
    assert not s.locked("bob", "10.0.0.1")  # and others from that one
    clock.advance(100)
    assert not s.locked("ann", "10.0.0.1")
    assert not s.failed("ann", "10.0.0.1")  # counting starts again


def test_failures_spread_beyond_the_window_do_not_lock() -> None:
    clock, s = sessions(max_failed=3, lockout=100)
    for _ in range(5):
        assert not s.failed("ann", "10.0.0.1")
        clock.advance(60)
    assert not s.locked("ann", "10.0.0.1")


def test_csrf_tokens_belong_to_their_session() -> None:
    _, s = sessions()
    _, a = s.open(Principal("ann", ["viewer"], ["*"]), "x")
    _, b = s.open(Principal("bob", ["viewer"], ["*"]), "x")
    assert s.csrf_ok(a, a.csrf)
    assert not s.csrf_ok(a, b.csrf)
    assert not s.csrf_ok(a, None) and not s.csrf_ok(a, "")


def test_ending_an_accounts_sessions() -> None:
    _, s = sessions()
    t1, _ = s.open(Principal("ann", ["viewer"], ["*"]), "x")
    t2, _ = s.open(Principal("ann", ["viewer"], ["*"]), "y")
    t3, _ = s.open(Principal("bob", ["viewer"], ["*"]), "y")
    assert s.end_all("ann") == 2
    assert s.get(t1) is None and s.get(t2) is None and s.get(t3) is not None


@pytest.mark.parametrize(
    ("role", "may", "may_not"),
    [
        ("viewer", {"integration", "messages", "work_items"}, {"body", "replay", "pause"}),
        ("analyst", {"body", "edit_replay"}, {"replay", "pause", "users"}),
        ("operator", {"replay", "pause", "resolve"}, {"body", "users", "finance"}),
        ("admin", {"users", "audit", "release", "pause"}, set()),
        ("supply_chain", {"supply", "resolve"}, {"integration", "finance", "messages"}),
        ("finance", {"finance", "release", "utilization"}, {"integration", "revenue"}),
        ("revenue_cycle", {"revenue", "utilization"}, {"finance", "release", "messages"}),
    ],
)
def test_what_each_role_may(role: str, may: set[str], may_not: set[str]) -> None:
    p = Principal("x", [role], ["*"])
    assert may <= p.permissions
    assert not (may_not & p.permissions)


def test_every_role_is_listed() -> None:
    assert set(ROLES) == {
        "viewer",
        "analyst",
        "operator",
        "admin",
        "supply_chain",
        "finance",
        "revenue_cycle",
    }


def test_business_roles_see_their_own_work_item_kinds_and_scopes_limit_channels() -> None:
    fin = Principal("f", ["finance"], ["x12_from_vendors"])
    assert fin.kinds is not None and "INVOICE_HELD" in fin.kinds
    assert "CHARGE_REJECTED" not in fin.kinds
    assert Principal("o", ["operator", "finance"], ["*"]).kinds is None
    assert fin.sees_channel("x12_from_vendors") and not fin.sees_channel("usage_to_erp")
    assert fin.channel_scope == ["x12_from_vendors"]
    assert Principal("o", ["operator"], ["*"]).channel_scope is None
