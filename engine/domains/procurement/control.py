"""Durable X12 control numbers, the outbound log with its acknowledgements, inbound duplicates,
in SQLite.

Plain functions over a ``sqlite3`` connection of the store (tables ``x12_control``,
``x12_outbound`` and ``x12_inbound``, procurement's schema v1): the helpers of
:class:`~engine.domains.procurement.repository.SqliteProcurementRepository` (the book sees only
the repository; the values and rules both repositories share are in
:mod:`engine.domains.procurement.numbers`). They run inside the caller's transaction when
there is one (``conn.in_transaction``); otherwise each opens and commits its own
``BEGIN IMMEDIATE`` transaction, so a number is on disk before the call returns.

**Control numbers** (``isa13``, ``gs06``, ``st02``) are counted per partner and kind in
``x12_control``. :func:`allocate` takes the next ``n`` and stores the new last value in the
same transaction. Allocate and commit *before* the document is written or sent: a crash after
the commit loses the numbers (a gap, which is fine); a crash before it loses the document with
them. A number is never handed out twice, whatever the crash. Inside a caller's transaction the
same holds as long as the document leaves only after that transaction commits (an outbox
row in the same commit). Concurrent allocators on separate connections are serialised by
SQLite's write lock (``BEGIN IMMEDIATE``).

All three are 9-digit counters: after ``999999999`` comes ``1`` again (a wrap, not a reuse in
any realistic lifetime: a billion interchanges with one partner). ISA13 is written as 9 digits,
ST02 with at least 4, GS06 as is.

**Outbound log** (``x12_outbound``): one row per interchange sent, with the group and set
control numbers, the document kind and business key (the PO number), when the functional ack
(997/999) is due and what it said (``accepted``, ``rejected``, ``partial`` or ``none`` yet).
A TA1 is recorded apart; a TA1 that rejects the interchange also rejects the row, since no
997/999 will follow.

**Inbound duplicates** (``x12_inbound``): one row per transaction set received, keyed by the
sender's ISA qualifier/id and ISA13/GS06/ST02; :func:`seen_inbound` says whether the same
numbers came within a window (DOMAIN §3.1: duplicates on ISA06+ISA13 and GS02+GS06).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from engine.domains.procurement.numbers import (
    ACK_STATUSES,
    KINDS,
    MAX_CONTROL,
    ControlNumbers,
    OutboundRecord,
    ack_status_for,
    check_ack_status,
    check_count,
    check_kind,
    check_ta1,
    control_key,
    next_numbers,
)

__all__ = [
    "ACK_STATUSES",
    "KINDS",
    "MAX_CONTROL",
    "ControlNumbers",
    "OutboundRecord",
    "ack_status_for",
    "allocate",
    "allocate_envelope",
    "last_allocated",
    "outbound_for",
    "overdue_acks",
    "prune_inbound",
    "raise_floor",
    "record_ack",
    "record_inbound",
    "record_outbound",
    "record_ta1",
    "seen_inbound",
]

T = TypeVar("T")


def _write(conn: sqlite3.Connection, work: Callable[[], T]) -> T:
    """Run ``work`` in the caller's transaction, or in one of its own, committed on return."""
    if conn.in_transaction:
        return work()
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = work()
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


def _allocate_in(
    conn: sqlite3.Connection, partner: str, kind: str, n: int, now: float
) -> list[int]:
    row = conn.execute(
        "SELECT last FROM x12_control WHERE partner = ? AND kind = ?", (partner, kind)
    ).fetchone()
    numbers = next_numbers(int(row[0]) if row else 0, n)
    conn.execute(
        "INSERT INTO x12_control (partner, kind, last, updated_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (partner, kind) DO UPDATE SET last = excluded.last, "
        "updated_at = excluded.updated_at",
        (partner, kind, numbers[-1], now),
    )
    return numbers


def allocate(
    conn: sqlite3.Connection, partner: str, kind: str, n: int = 1, *, now: float | None = None
) -> list[int]:
    """The next ``n`` control numbers of ``kind`` (``isa13``, ``gs06``, ``st02``) for
    ``partner``, stored before returning (see the module docstring). Wraps 999999999 → 1."""
    check_kind(kind)
    check_count("n", n)
    stamp = time.time() if now is None else now
    return _write(conn, lambda: _allocate_in(conn, partner, kind, n, stamp))


def allocate_envelope(
    conn: sqlite3.Connection, partner: str, sets: int = 1, *, now: float | None = None
) -> ControlNumbers:
    """ISA13, GS06 and ``sets`` ST02 numbers for ``partner``, in one transaction."""
    check_count("sets", sets)
    stamp = time.time() if now is None else now

    def work() -> ControlNumbers:
        (isa13,) = _allocate_in(conn, partner, "isa13", 1, stamp)
        (gs06,) = _allocate_in(conn, partner, "gs06", 1, stamp)
        return ControlNumbers(isa13, gs06, tuple(_allocate_in(conn, partner, "st02", sets, stamp)))

    return _write(conn, work)


def last_allocated(conn: sqlite3.Connection, partner: str, kind: str) -> int:
    """The last number of ``kind`` handed out for ``partner`` (0: none yet)."""
    check_kind(kind)
    row = conn.execute(
        "SELECT last FROM x12_control WHERE partner = ? AND kind = ?", (partner, kind)
    ).fetchone()
    return int(row[0]) if row else 0


def raise_floor(
    conn: sqlite3.Connection, partner: str, kind: str, last: int, *, now: float | None = None
) -> int:
    """Make the next number at least ``last + 1`` (e.g. taking over from an old translator).
    Never lowers the counter, so it cannot cause a reuse. Returns the stored last value."""
    check_kind(kind)
    if isinstance(last, bool) or not isinstance(last, int) or not 0 <= last <= MAX_CONTROL:
        raise ValueError(f"'last' must be an integer in 0..{MAX_CONTROL} (got {last!r})")
    stamp = time.time() if now is None else now

    def work() -> int:
        conn.execute(
            "INSERT INTO x12_control (partner, kind, last, updated_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (partner, kind) DO UPDATE SET last = MAX(last, excluded.last), "
            "updated_at = excluded.updated_at",
            (partner, kind, last, stamp),
        )
        return last_allocated(conn, partner, kind)

    return _write(conn, work)


_OUT_COLUMNS = (
    "id, partner, isa13, gs06, st02, document, business_key, message_id, sent_at, ack_due_at, "
    "ack_status, ack_codes, ack_at, ta1_status, ta1_code, ta1_at"
)


def _record(row: Sequence[Any]) -> OutboundRecord:
    return OutboundRecord(
        id=row[0],
        partner=row[1],
        isa13=row[2],
        gs06=row[3],
        st02=tuple(json.loads(row[4])),
        document=row[5],
        business_key=row[6],
        message_id=row[7],
        sent_at=row[8],
        ack_due_at=row[9],
        ack_status=row[10],
        ack_codes=tuple(json.loads(row[11])) if row[11] else (),
        ack_at=row[12],
        ta1_status=row[13],
        ta1_code=row[14],
        ta1_at=row[15],
    )


def record_outbound(
    conn: sqlite3.Connection,
    *,
    partner: str,
    numbers: ControlNumbers,
    document: str,
    business_key: str,
    sent_at: float | None = None,
    ack_within: float | None = None,
    message_id: str | None = None,
) -> int:
    """Log an interchange as sent; its 997/999 is due ``ack_within`` seconds after ``sent_at``
    (None: no ack expected). Returns the row id."""
    sent = time.time() if sent_at is None else sent_at
    due = None if ack_within is None else sent + ack_within

    def work() -> int:
        cur = conn.execute(
            "INSERT INTO x12_outbound (partner, isa13, gs06, st02, document, business_key, "
            "message_id, sent_at, ack_due_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                partner,
                numbers.isa13,
                numbers.gs06,
                json.dumps(list(numbers.st02)),
                document,
                business_key,
                message_id,
                sent,
                due,
            ),
        )
        return int(cur.lastrowid or 0)

    return _write(conn, work)


def _latest(conn: sqlite3.Connection, partner: str, column: str, value: int) -> int | None:
    # After a wrap two rows may share a number: the latest sent is the one acknowledged.
    row = conn.execute(
        f"SELECT id FROM x12_outbound WHERE partner = ? AND {column} = ? "
        "ORDER BY sent_at DESC, id DESC LIMIT 1",
        (partner, value),
    ).fetchone()
    return None if row is None else int(row[0])


def record_ack(
    conn: sqlite3.Connection,
    partner: str,
    gs06: int,
    status: str,
    codes: Iterable[str] = (),
    *,
    at: float | None = None,
) -> OutboundRecord | None:
    """Record the 997/999 for our group ``gs06`` (AK1-02): ``status`` is one of accepted,
    rejected, partial (see :func:`ack_status_for`), ``codes`` the AK5/IK5/AK9 codes to keep.
    Returns the updated record, or None when no interchange of ours has that GS06."""
    check_ack_status(status)
    stamp = time.time() if at is None else at
    kept = json.dumps([str(c) for c in codes])

    def work() -> OutboundRecord | None:
        row_id = _latest(conn, partner, "gs06", int(gs06))
        if row_id is None:
            return None
        conn.execute(
            "UPDATE x12_outbound SET ack_status = ?, ack_codes = ?, ack_at = ? WHERE id = ?",
            (status, kept, stamp, row_id),
        )
        return outbound_for(conn, row_id)

    return _write(conn, work)


def record_ta1(
    conn: sqlite3.Connection,
    partner: str,
    isa13: int,
    ta104: str,
    ta105: str = "000",
    *,
    at: float | None = None,
) -> OutboundRecord | None:
    """Record a TA1 for our interchange ``isa13`` (TA101): ``ta104`` A, E or R, ``ta105`` the
    note code. An R also sets the ack status to rejected (no 997/999 follows a rejected
    interchange). None when no interchange of ours has that ISA13."""
    check_ta1(ta104)
    stamp = time.time() if at is None else at

    def work() -> OutboundRecord | None:
        row_id = _latest(conn, partner, "isa13", int(isa13))
        if row_id is None:
            return None
        conn.execute(
            "UPDATE x12_outbound SET ta1_status = ?, ta1_code = ?, ta1_at = ? WHERE id = ?",
            (ta104, ta105, stamp, row_id),
        )
        if ta104 == "R":
            conn.execute(
                "UPDATE x12_outbound SET ack_status = 'rejected', ack_codes = ?, ack_at = ? "
                "WHERE id = ? AND ack_status = 'none'",
                (json.dumps([f"TA1:{ta105}"]), stamp, row_id),
            )
        return outbound_for(conn, row_id)

    return _write(conn, work)


def outbound_for(conn: sqlite3.Connection, row_id: int) -> OutboundRecord | None:
    row = conn.execute(
        f"SELECT {_OUT_COLUMNS} FROM x12_outbound WHERE id = ?", (row_id,)
    ).fetchone()
    return None if row is None else _record(row)


def overdue_acks(conn: sqlite3.Connection, now: float | None = None) -> list[OutboundRecord]:
    """Interchanges whose 997/999 was due by ``now`` and has not come, oldest due first."""
    stamp = time.time() if now is None else now
    rows = conn.execute(
        f"SELECT {_OUT_COLUMNS} FROM x12_outbound WHERE ack_status = 'none' "
        "AND ack_due_at IS NOT NULL AND ack_due_at <= ? ORDER BY ack_due_at, id",
        (stamp,),
    ).fetchall()
    return [_record(r) for r in rows]


def record_inbound(
    conn: sqlite3.Connection,
    sender: tuple[str, str],
    isa13: int | str,
    gs06: int | str | None,
    st02: int | str | None,
    *,
    receiver: tuple[str, str] | None = None,
    message_id: str | None = None,
    received_at: float | None = None,
) -> None:
    """Remember one received transaction set (``sender`` = ISA05 qualifier, ISA06 id;
    ``receiver`` = ISA07/ISA08, which of our ids it was sent to)."""
    stamp = time.time() if received_at is None else received_at
    qualifier, sender_id = sender[0].strip(), sender[1].strip()
    r_qual, r_id = (receiver[0].strip(), receiver[1].strip()) if receiver else (None, None)

    def work() -> None:
        conn.execute(
            "INSERT INTO x12_inbound (sender_qualifier, sender_id, receiver_qualifier, "
            "receiver_id, isa13, gs06, st02, received_at, message_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                qualifier,
                sender_id,
                r_qual,
                r_id,
                control_key(isa13),
                control_key(gs06),
                control_key(st02),
                stamp,
                message_id,
            ),
        )

    _write(conn, work)


def seen_inbound(
    conn: sqlite3.Connection,
    sender: tuple[str, str],
    isa13: int | str,
    gs06: int | str | None,
    st02: int | str | None,
    window: float,
    now: float | None = None,
    *,
    receiver: tuple[str, str] | None = None,
) -> bool:
    """Whether these numbers came from ``sender`` within ``window`` seconds before ``now``.

    ``gs06`` / ``st02`` None match any: ``seen_inbound(conn, s, isa13, None, None, ...)`` is
    the interchange-level check (TA1 note 025), with ``gs06`` the group-level one.
    ``receiver`` (ISA07/ISA08) narrows it to what was sent to that id of ours (DOMAIN §3.1
    keys on ISA06, ISA08, ISA13); None matches any receiver.
    """
    stamp = time.time() if now is None else now
    sql = (
        "SELECT 1 FROM x12_inbound WHERE sender_qualifier = ? AND sender_id = ? AND isa13 = ? "
        "AND received_at >= ?"
    )
    args: list[Any] = [sender[0].strip(), sender[1].strip(), control_key(isa13), stamp - window]
    if receiver is not None:
        sql += " AND receiver_qualifier = ? AND receiver_id = ?"
        args += [receiver[0].strip(), receiver[1].strip()]
    for column, value in (("gs06", gs06), ("st02", st02)):
        if value is not None:
            sql += f" AND {column} = ?"
            args.append(control_key(value))
    return conn.execute(sql + " LIMIT 1", args).fetchone() is not None


def prune_inbound(conn: sqlite3.Connection, older_than: float, now: float | None = None) -> int:
    """Forget inbound sets received more than ``older_than`` seconds before ``now`` (keep at
    least the duplicate window). Returns the number of rows removed."""
    stamp = time.time() if now is None else now
    return _write(
        conn,
        lambda: (
            conn.execute(
                "DELETE FROM x12_inbound WHERE received_at < ?", (stamp - older_than,)
            ).rowcount
        ),
    )
