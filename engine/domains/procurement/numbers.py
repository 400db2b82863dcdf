"""X12 control numbers and the interchange log's records, as plain values (no storage).

What both procurement repositories (:mod:`~engine.domains.procurement.repository` over SQLite,
:mod:`~engine.domains.procurement.memory` in dicts) count and keep the same way: the 9-digit
counters that wrap ``999999999`` → ``1``, the numbers of one interchange
(:class:`ControlNumbers`), one interchange we sent with what came back for it
(:class:`OutboundRecord`), the ack status a 997/999 code stands for, and how a received control
number is compared (as an integer: ``000000042`` and ``42`` are the same number).
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.x12.writer import MAX_CONTROL

__all__ = [
    "ACK_STATUSES",
    "KINDS",
    "MAX_CONTROL",
    "ControlNumbers",
    "OutboundRecord",
    "ack_status_for",
    "check_ack_status",
    "check_count",
    "check_kind",
    "check_ta1",
    "control_key",
    "next_numbers",
]

KINDS = ("isa13", "gs06", "st02")
ACK_STATUSES = ("none", "accepted", "rejected", "partial")


def check_kind(kind: str) -> None:
    """Refuse a counter that is not ``isa13``, ``gs06`` or ``st02``."""
    if kind not in KINDS:
        raise ValueError(f"'kind' must be one of {', '.join(KINDS)} (got {kind!r})")


def check_count(name: str, n: object) -> None:
    """Refuse a count of numbers (``n``, ``sets``) outside 1..10000."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 10000:
        raise ValueError(f"'{name}' must be an integer in 1..10000 (got {n!r})")


def next_numbers(last: int, n: int) -> list[int]:
    """The ``n`` numbers after ``last``, wrapping ``999999999`` → ``1``."""
    out = []
    for _ in range(n):
        last = 1 if last >= MAX_CONTROL else last + 1
        out.append(last)
    return out


def control_key(value: int | str | None) -> str | None:
    """Control numbers compare as integers: ``000000042`` and ``42`` are the same number."""
    if value is None:
        return None
    text = str(value).strip()
    return str(int(text)) if text.isdigit() else text


@dataclass(frozen=True)
class ControlNumbers:
    """The numbers of one interchange holding one group: ISA13, GS06 and the ST02 of each set."""

    isa13: int
    gs06: int
    st02: tuple[int, ...]


@dataclass(frozen=True)
class OutboundRecord:
    """One interchange we sent, and what came back for it."""

    id: int
    partner: str
    isa13: int
    gs06: int
    st02: tuple[int, ...]
    document: str  # "850"
    business_key: str  # e.g. the PO number
    message_id: str | None
    sent_at: float
    ack_due_at: float | None
    ack_status: str  # none | accepted | rejected | partial
    ack_codes: tuple[str, ...]
    ack_at: float | None
    ta1_status: str | None  # A | E | R
    ta1_code: str | None  # TA105
    ta1_at: float | None


def ack_status_for(code: str) -> str:
    """The outbound ack status for a 997/999 AK9-01 (or AK5/IK5-01) code:
    A and E (accepted with errors) → accepted, P → partial, R, M, W, X → rejected."""
    status = {"A": "accepted", "E": "accepted", "P": "partial"}.get(code)
    if status is None:
        if code not in ("R", "M", "W", "X"):
            raise ValueError(f"'code' must be one of A, E, P, R, M, W, X (got {code!r})")
        status = "rejected"
    return status


def check_ack_status(status: str) -> None:
    """Refuse an ack status other than accepted, rejected or partial."""
    if status not in ACK_STATUSES[1:]:
        raise ValueError(f"'status' must be one of {', '.join(ACK_STATUSES[1:])} (got {status!r})")


def check_ta1(ta104: str) -> None:
    """Refuse a TA104 other than A, E or R."""
    if ta104 not in ("A", "E", "R"):
        raise ValueError(f"'ta104' must be one of A, E, R (got {ta104!r})")
