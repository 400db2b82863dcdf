"""The console's people and roles: passwords, sessions with idle and absolute timeouts (a
Clock) kept in the store, lockout by (account, address) kept there too, CSRF tokens, roles and channel scopes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet import task

from engine.store import SqliteStore
from engine.web.auth import (
    ROLES,
    Principal,
    Sessions,
    check_password,
    check_roles,
    hash_password,
    token_digest,
)


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = SqliteStore(tmp_path / "w.db").open()
    for name in ("ann", "bob"):
        s.save_user(name, actor="t", action="user.add", now=0.0, roles=["viewer"], channels=["*"])
    yield s
    s.close()


@pytest.fixture
def make(store: Any) -> Any:
    def sessions(**kw: float) -> tuple[task.Clock, Sessions]:
        clock = task.Clock()
        clock.advance(1_800_000_000)
        return clock, Sessions(store, clock.seconds, **kw)

    return sessions


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


def test_a_session_ends_after_the_idle_timeout(make: Any) -> None:
    clock, s = make(idle_timeout=60, absolute_timeout=600)
    token, session = s.open(Principal("ann", ["viewer"], ["*"]), "10.0.0.1")
    for _ in range(2):
        clock.advance(59)
        found = s.get(token)
        assert found is not None and found.csrf == session.csrf
        assert s.stale(found)  # a use past touch_every is written
        s.touch(found)  # a use keeps it alive
    clock.advance(61)
    assert s.get(token) is None
    assert s.get(token) is None  # and it stays gone


def test_a_use_is_written_at_most_every_touch_interval(make: Any, store: Any) -> None:
    clock, s = make(idle_timeout=600, absolute_timeout=6000)
    assert s.touch_every == 60.0
    token, _ = s.open(Principal("ann", ["viewer"], ["*"]), "10.0.0.1")
    clock.advance(30)
    found = s.get(token)
    assert found is not None and not s.stale(found)
    clock.advance(30)
    assert s.stale(found)
    s.touch(found)
    assert store.session(found.key)["seen_at"] == clock.seconds()


def test_a_session_ends_after_the_absolute_timeout_however_busy(make: Any) -> None:
    clock, s = make(idle_timeout=60, absolute_timeout=300)
    token, _ = s.open(Principal("ann", ["viewer"], ["*"]), "10.0.0.1")
    for _ in range(5):
        clock.advance(50)
        found = s.get(token)
        assert found is not None
        s.touch(found)
    clock.advance(51)
    assert s.get(token) is None


def test_the_cookie_is_not_kept_and_unknown_cookies_find_nothing(make: Any, store: Any) -> None:
    _, s = make()
    token, session = s.open(Principal("ann", ["viewer"], ["*"]), "10.0.0.1")
    rows = store._query("t", "SELECT token_hash, csrf FROM console_sessions")
    assert [tuple(r) for r in rows] == [(token_digest(token), session.csrf)]  # only its digest
    assert token not in {r[0] for r in rows}
    assert s.get("forged") is None and s.get(None) is None


def test_a_session_is_in_the_store_another_sessions_object_finds_it(make: Any, store: Any) -> None:
    """What a restart or a second node sees: a new Sessions on the same store."""
    clock, s = make()
    token, session = s.open(Principal("ann", ["viewer"], ["*"]), "10.0.0.1")
    other = Sessions(store, clock.seconds)
    found = other.get(token)
    assert found is not None
    assert (found.principal.name, found.csrf, found.address) == ("ann", session.csrf, "10.0.0.1")


def test_a_session_carries_the_accounts_roles_as_they_are_now(make: Any, store: Any) -> None:
    _, s = make()
    token, _ = s.open(Principal("ann", ["viewer"], ["*"]), "10.0.0.1")
    store.save_user("ann", actor="t", action="user.change", now=1.0, roles=["operator"])
    assert s.get(token).principal.roles == ["operator"]
    store.save_user("ann", actor="t", action="user.disable", now=2.0, disabled=True)
    assert s.get(token) is None  # a disabled account's sessions find nothing


def test_lockout_is_per_account_and_address(make: Any) -> None:
    clock, s = make(max_failed=3, lockout=100)
    for _ in range(2):
        assert not s.failed("ann", "10.0.0.1")
    assert s.failed("ann", "10.0.0.1")  # the third locks
    assert s.locked("ann", "10.0.0.1")
    assert not s.locked("ann", "10.0.0.2")  # her own address still logs in
    assert not s.locked("bob", "10.0.0.1")  # and others from that one
    clock.advance(100)
    assert not s.locked("ann", "10.0.0.1")
    assert not s.failed("ann", "10.0.0.1")  # counting starts again


def test_a_lockout_is_in_the_store_another_sessions_object_honours_it(
    make: Any, store: Any
) -> None:
    clock, s = make(max_failed=2, lockout=100)
    s.failed("ann", "10.0.0.1")
    again = Sessions(store, clock.seconds, max_failed=2, lockout=100)  # a restart
    assert again.failed("ann", "10.0.0.1")  # the count went on: the second locks
    assert Sessions(store, clock.seconds).locked("ann", "10.0.0.1")


def test_a_success_forgets_the_failures(make: Any) -> None:
    _, s = make(max_failed=3, lockout=100)
    s.failed("ann", "10.0.0.1")
    s.failed("ann", "10.0.0.1")
    s.succeeded("ann", "10.0.0.1")
    assert not s.failed("ann", "10.0.0.1")
    assert not s.failed("ann", "10.0.0.1")


def test_failures_spread_beyond_the_window_do_not_lock(make: Any) -> None:
    clock, s = make(max_failed=3, lockout=100)
    for _ in range(5):
        assert not s.failed("ann", "10.0.0.1")
        clock.advance(60)
    assert not s.locked("ann", "10.0.0.1")


def test_csrf_tokens_belong_to_their_session(make: Any) -> None:
    _, s = make()
    _, a = s.open(Principal("ann", ["viewer"], ["*"]), "x")
    _, b = s.open(Principal("bob", ["viewer"], ["*"]), "x")
    assert s.csrf_ok(a, a.csrf)
    assert not s.csrf_ok(a, b.csrf)
    assert not s.csrf_ok(a, None) and not s.csrf_ok(a, "")


def test_ending_an_accounts_sessions(make: Any) -> None:
    _, s = make()
    t1, _ = s.open(Principal("ann", ["viewer"], ["*"]), "x")
    t2, _ = s.open(Principal("ann", ["viewer"], ["*"]), "y")
    t3, _ = s.open(Principal("bob", ["viewer"], ["*"]), "y")
    assert s.end_all("ann") == 2
    assert s.get(t1) is None and s.get(t2) is None and s.get(t3) is not None
    assert s.close(t3) and s.get(t3) is None and not s.close(t3)


def test_a_login_drops_the_sessions_that_timed_out(make: Any, store: Any) -> None:
    clock, s = make(idle_timeout=60, absolute_timeout=600)
    s.open(Principal("ann", ["viewer"], ["*"]), "x")
    clock.advance(61)
    s.open(Principal("bob", ["viewer"], ["*"]), "x")
    names = [r[0] for r in store._query("t", "SELECT name FROM console_sessions")]
    assert names == ["bob"]


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
