"""What the console and the alert job keep in the store (a part of the store, schema 22), so
that a restart forgets none of it and several nodes on one PostgreSQL share it:

- console sessions by the SHA-256 of their cookie (the cookie itself is never stored), with
  the account, the session's CSRF token, its address, and its login and last-use times;
- failed logins per (account, source address), and until when that pair is locked out;
- each alert rule's subjects: firing or cleared, firing since when, and when its fire and its
  clear were sent.

Every write is one short transaction; the console and the alert job run them through the
store's executor (the writer thread), their reads on reader threads.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

_SESSION_COLUMNS = (
    "s.token_hash, s.name, s.csrf, s.address, s.created_at, s.seen_at, u.roles, u.channels, "
    "u.disabled"
)
_ALERT_COLUMNS = (
    "rule",
    "subject",
    "kind",
    "state",
    "summary",
    "since",
    "changed_at",
    "fired_sent_at",
    "cleared_sent_at",
)


class ConsoleStateStore:
    """Sessions, login lockouts and alert state; mixed into :class:`SqliteStore`."""

    # (SqliteStore's: a read on this thread's connection, a write transaction)
    _query: Callable[..., list[sqlite3.Row]]
    transaction: Callable[..., AbstractContextManager[Any]]

    # ------------------------------------------------------------------ sessions

    def open_session(
        self,
        token_hash: str,
        name: str,
        csrf: str,
        address: str,
        now: float,
        *,
        expired_before: float | None = None,
        idle_before: float | None = None,
    ) -> None:
        """Keep a new session; with ``expired_before``/``idle_before``, first drop every
        session that logged in before the one or was last used before the other (timed out)."""
        with self.transaction("open_session", durable=True) as tx:
            conn = tx.connection
            if expired_before is not None and idle_before is not None:
                conn.execute(
                    "DELETE FROM console_sessions WHERE created_at < ? OR seen_at < ?",
                    (expired_before, idle_before),
                )
            conn.execute(
                "INSERT INTO console_sessions (token_hash, name, csrf, address, created_at, "
                "seen_at) VALUES (?, ?, ?, ?, ?, ?)",
                (token_hash, name, csrf, address, now, now),
            )

    def session(self, token_hash: str) -> dict[str, Any] | None:
        """The session kept under ``token_hash`` with its account's roles and channels (as they
        are now) and whether the account is disabled; None when there is none."""
        rows = self._query(
            "session",
            f"SELECT {_SESSION_COLUMNS} FROM console_sessions AS s "
            "JOIN console_users AS u ON u.name = s.name WHERE s.token_hash = ?",
            (token_hash,),
        )
        if not rows:
            return None
        r = rows[0]
        return {
            "token_hash": r[0],
            "name": r[1],
            "csrf": r[2],
            "address": r[3],
            "created_at": float(r[4]),
            "seen_at": float(r[5]),
            "roles": json.loads(r[6]),
            "channels": json.loads(r[7]),
            "disabled": bool(r[8]),
        }

    def touch_session(self, token_hash: str, now: float) -> None:
        """A session was used at ``now``."""
        with self.transaction("touch_session", durable=False) as tx:
            tx.connection.execute(
                "UPDATE console_sessions SET seen_at = ? WHERE token_hash = ? AND seen_at < ?",
                (now, token_hash, now),
            )

    def close_session(self, token_hash: str) -> bool:
        """End one session; whether there was one."""
        with self.transaction("close_session") as tx:
            cur = tx.connection.execute(
                "DELETE FROM console_sessions WHERE token_hash = ?", (token_hash,)
            )
            return bool(cur.rowcount)

    def end_sessions(self, name: str) -> int:
        """End every session of account ``name``; how many."""
        with self.transaction("end_sessions") as tx:
            cur = tx.connection.execute("DELETE FROM console_sessions WHERE name = ?", (name,))
            return int(cur.rowcount)

    # ------------------------------------------------------------------ login lockouts

    def login_locked(self, account: str, address: str, now: float) -> bool:
        """Whether (``account``, ``address``) is locked out at ``now``."""
        rows = self._query(
            "login_locked",
            "SELECT locked_until FROM login_failures WHERE account = ? AND address = ?",
            (account, address),
        )
        return bool(rows) and rows[0][0] is not None and now < float(rows[0][0])

    def login_failed(
        self, account: str, address: str, now: float, *, max_failed: int, window: float
    ) -> bool:
        """Count a failed login of (``account``, ``address``): failures count from the first
        of them for ``window`` seconds (then counting starts again); the ``max_failed``-th
        locks the pair out for ``window`` seconds. True when this one locked it."""
        with self.transaction("login_failed") as tx:
            conn = tx.connection
            row = conn.execute(
                "SELECT failures, first_at FROM login_failures WHERE account = ? AND address = ?",
                (account, address),
            ).fetchone()
            if row is None or now - float(row[1]) >= window:
                failures, first = 1, now
            else:
                failures, first = int(row[0]) + 1, float(row[1])
            until = now + window if failures >= max_failed else None
            conn.execute(
                "INSERT INTO login_failures (account, address, failures, first_at, locked_until) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (account, address) DO UPDATE SET "
                "failures = excluded.failures, first_at = excluded.first_at, "
                "locked_until = excluded.locked_until",
                (account, address, failures, first, until),
            )
            return until is not None

    def login_succeeded(self, account: str, address: str) -> None:
        """Forget the failures of (``account``, ``address``)."""
        with self.transaction("login_succeeded", durable=False) as tx:
            tx.connection.execute(
                "DELETE FROM login_failures WHERE account = ? AND address = ?", (account, address)
            )

    # ------------------------------------------------------------------ alert state

    def alert_states(self, state: str | None = "firing") -> list[dict[str, Any]]:
        """The alert subjects in ``state`` (None: every one kept), by rule and subject."""
        where, params = ("WHERE state = ?", (state,)) if state else ("", ())
        rows = self._query(
            "alert_states",
            f"SELECT {', '.join(_ALERT_COLUMNS)} FROM alert_state {where} ORDER BY rule, subject",
            params,
        )
        return [dict(zip(_ALERT_COLUMNS, r, strict=True)) for r in rows]

    def alert_changes(self, events: Sequence[Any]) -> None:
        """Record what one evaluation decided: each event (``rule``, ``when``, ``subject``,
        ``state``, ``summary``, ``at``) makes its subject firing since ``at`` or cleared."""
        with self.transaction("alert_changes") as tx:
            for e in events:
                if e.state == "firing":
                    tx.connection.execute(
                        "INSERT INTO alert_state (rule, subject, kind, state, summary, since, "
                        "changed_at) VALUES (?, ?, ?, 'firing', ?, ?, ?) "
                        "ON CONFLICT (rule, subject) DO UPDATE SET kind = excluded.kind, "
                        "state = 'firing', summary = excluded.summary, since = excluded.since, "
                        "changed_at = excluded.changed_at, fired_sent_at = NULL, "
                        "cleared_sent_at = NULL",
                        (e.rule, e.subject, e.when, e.summary, e.at, e.at),
                    )
                else:
                    tx.connection.execute(
                        "UPDATE alert_state SET state = 'cleared', summary = ?, changed_at = ?, "
                        "cleared_sent_at = NULL WHERE rule = ? AND subject = ?",
                        (e.summary, e.at, e.rule, e.subject),
                    )

    def alerts_sent(self, events: Sequence[Any], now: float) -> None:
        """The notification of ``events`` went out at ``now``."""
        with self.transaction("alerts_sent", durable=False) as tx:
            for e in events:
                column = "fired_sent_at" if e.state == "firing" else "cleared_sent_at"
                tx.connection.execute(
                    f"UPDATE alert_state SET {column} = ? WHERE rule = ? AND subject = ? "
                    "AND state = ?",
                    (now, e.rule, e.subject, e.state),
                )
