"""X12 envelope writer: ISA/GS/ST … SE/GE/IEA with a partner's separators (DOMAIN §3.1).

The ISA is fixed width, 106 characters including its terminator: ISA02/ISA04 are padded to
10, ISA06/ISA08 to 15, ISA13 is 9 digits, ISA11 is the repetition separator for ``00501``
and ``U`` for ``00401``, ISA16 the component separator. GS04 is CCYYMMDD, GS05 HHMM, GS08 the
version string (``004010`` / ``005010``). SE01 counts the segments from ST to SE inclusive,
GE01 the sets of the group, IEA01 the groups of the interchange.

Data is never escaped (X12 has no escape mechanism): a value holding a separator, the segment
terminator, a control character or a non-ASCII character raises
:class:`~engine.errors.X12WriteError` naming the field, and nothing is emitted. Trailing empty
elements and trailing empty components are dropped, as X12 requires.

A segment is a sequence whose first item is the segment id; each element is a ``str`` (or
``int``), ``None`` / ``""`` (empty), a ``tuple`` of components (a composite) or a ``list`` of
repeats (005010 only).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from engine.errors import X12WriteError
from engine.x12.segments import Separators

__all__ = [
    "ISA_LENGTH",
    "MAX_CONTROL",
    "VERSIONS",
    "FunctionalGroup",
    "InterchangeHeader",
    "Separators",
    "TransactionSet",
    "check_separators",
    "check_text",
    "encode_segment",
    "write_interchange",
]

ISA_LENGTH = 106
#: The largest ISA13 / GS06 / ST02 (9 digits); control numbers run 1..MAX_CONTROL.
MAX_CONTROL = 999_999_999
#: GS08 version → ISA12 control version.
VERSIONS = {"004010": "00401", "005010": "00501"}
NEWLINES = ("", "\n", "\r\n")

Element = str | int | None | tuple | list
Segment = Sequence[Element]

_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{1,2}")
_NAMES = {"\n": "LF", "\r": "CR", "\t": "TAB", " ": "space"}


def _show(ch: str) -> str:
    return _NAMES.get(ch, repr(ch))


def check_separators(seps: Separators, version: str, newline: str = "") -> str | None:
    """What is wrong with ``seps`` for ``version`` (``004010`` / ``005010``), or None.

    Each delimiter is one character that is not a letter, digit or space, all are distinct,
    005010 needs a repetition separator and 004010 has none (ISA11 is ``U``), and ``newline``
    (written after each terminator) is empty, LF or CRLF.
    """
    named = [("element", seps.element), ("component", seps.component), ("segment", seps.segment)]
    if version == "005010":
        if seps.repetition is None:
            return "005010 needs a repetition separator (ISA11), e.g. '^'"
        named.append(("repetition", seps.repetition))
    elif seps.repetition is not None:
        return (
            f"004010 has no repetition separator: ISA11 is 'U' (got repetition {seps.repetition!r})"
        )
    for name, ch in named:
        if not isinstance(ch, str) or len(ch) != 1:
            return f"the {name} separator must be one character (got {ch!r})"
        if ch.isalnum() or ch == " " or not ch.isascii():
            return f"the {name} separator must not be a letter, digit or space (got {ch!r})"
        if ch in "\r\n" and name != "segment":
            return f"only the segment terminator may be CR or LF (got {name} {_show(ch)})"
    for i, (name, ch) in enumerate(named):
        for other, och in named[:i]:
            if och == ch:
                return f"the {other} and {name} separators must differ (both {ch!r})"
    if newline not in NEWLINES:
        return f"newline must be '', LF or CRLF (got {newline!r})"
    if newline and seps.segment in "\r\n":
        return "no newline after a segment terminator that is itself CR or LF"
    return None


def check_text(text: str, seps: Separators, field: str) -> str:
    """``text`` when it can be written as X12 data with ``seps``; else X12WriteError."""
    if not isinstance(text, str):
        raise X12WriteError(field, f"expected text (got {type(text).__name__})")
    for ch in text:
        what = None
        if ch == seps.element:
            what = "the element separator"
        elif ch == seps.component:
            what = "the component separator"
        elif ch == seps.segment:
            what = "the segment terminator"
        elif seps.repetition is not None and ch == seps.repetition:
            what = "the repetition separator"
        elif ord(ch) < 32 or ord(ch) == 127:
            what = "a control character"
        elif not ch.isascii():
            what = "a non-ASCII character"
        if what is not None:
            shown = text if len(text) <= 40 else text[:37] + "..."
            raise X12WriteError(
                field,
                f"expected text without {_show(ch)} ({what}; X12 cannot escape it) (got {shown!r})",
            )
    return text


def _element_text(value: Element, seps: Separators, field: str, repeat_ok: bool) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        raise X12WriteError(field, f"expected text or a number (got {value!r})")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return check_text(value, seps, field)
    if isinstance(value, tuple):
        parts = [
            _element_text(v, seps, f"{field}-{i}", False)
            for i, v in enumerate(value, 1)
            if not isinstance(v, tuple | list)
        ]
        if len(parts) != len(value):
            raise X12WriteError(field, "a component cannot itself be composite or repeat")
        while parts and parts[-1] == "":
            parts.pop()
        return seps.component.join(parts)
    if isinstance(value, list):
        if not repeat_ok:
            raise X12WriteError(field, "a repeat cannot hold repeats")
        if seps.repetition is None:
            raise X12WriteError(field, "repeating elements need 005010 (004010 has no ISA11)")
        reps = [_element_text(v, seps, field, False) for v in value]
        while reps and reps[-1] == "":
            reps.pop()
        return seps.repetition.join(reps)
    raise X12WriteError(field, f"expected text, a number, a tuple or a list (got {value!r})")


def encode_segment(segment: Segment, seps: Separators, newline: str = "") -> str:
    """One segment with its terminator (and ``newline``); fields are named ``PO107``."""
    if not segment:
        raise X12WriteError("segment", "expected a segment id (got an empty segment)")
    seg_id = segment[0]
    if not isinstance(seg_id, str) or not _SEGMENT_ID.fullmatch(seg_id):
        raise X12WriteError("segment", f"expected a segment id such as PO1 (got {seg_id!r})")
    parts = [_element_text(v, seps, f"{seg_id}{i:02d}", True) for i, v in enumerate(segment[1:], 1)]
    while parts and parts[-1] == "":
        parts.pop()
    return seps.element.join([seg_id, *parts]) + seps.segment + newline


@dataclass(frozen=True)
class TransactionSet:
    """One set: ``body`` holds the segments between ST and SE (ST/SE are written here)."""

    set_id: str  # ST01, e.g. "850"
    control: int  # ST02, written with at least 4 digits
    body: tuple[Segment, ...]


@dataclass(frozen=True)
class FunctionalGroup:
    functional_id: str  # GS01, e.g. "PO" for 850
    control: int  # GS06
    sets: tuple[TransactionSet, ...]


@dataclass(frozen=True)
class InterchangeHeader:
    """Who sends to whom, how: everything of ISA/GS except control numbers and time."""

    sender_qualifier: str  # ISA05
    sender_id: str  # ISA06 (padded to 15 here)
    receiver_qualifier: str  # ISA07
    receiver_id: str  # ISA08
    gs_sender: str  # GS02
    gs_receiver: str  # GS03
    version: str  # "004010" | "005010" (GS08; ISA12 follows)
    separators: Separators
    usage: str = "P"  # ISA15: P production, T test
    ack_requested: bool = False  # ISA14: a TA1 is wanted
    newline: str = ""  # written after each segment terminator: "", "\n" or "\r\n"
    authorization: tuple[str, str] = ("00", "")  # ISA01/ISA02
    security: tuple[str, str] = ("00", "")  # ISA03/ISA04


def _control(value: int, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CONTROL:
        raise X12WriteError(field, f"must be an integer in 1..{MAX_CONTROL} (got {value!r})")
    return value


def _fixed(value: str, width: int, field: str, seps: Separators, exact: bool = False) -> str:
    check_text(value, seps, field)
    if len(value) > width or (exact and len(value) != width):
        need = f"exactly {width}" if exact else f"at most {width}"
        raise X12WriteError(field, f"must be {need} characters (got {value!r})")
    return value.ljust(width)


def _isa(header: InterchangeHeader, isa13: int, now: datetime) -> str:
    seps = header.separators
    version = VERSIONS.get(header.version)
    if version is None:
        raise X12WriteError(
            "GS08", f"expected one of {', '.join(VERSIONS)} (got {header.version!r})"
        )
    problem = check_separators(seps, header.version, header.newline)
    if problem:
        raise X12WriteError("separators", problem)
    if header.usage not in ("P", "T"):
        raise X12WriteError("ISA15", f"expected P or T (got {header.usage!r})")
    if not header.sender_id.strip() or not header.receiver_id.strip():
        raise X12WriteError("ISA06/ISA08", "sender and receiver ids must not be empty")
    isa11 = seps.repetition if version == "00501" else "U"
    elements = [
        _fixed(header.authorization[0], 2, "ISA01", seps, exact=True),
        _fixed(header.authorization[1], 10, "ISA02", seps),
        _fixed(header.security[0], 2, "ISA03", seps, exact=True),
        _fixed(header.security[1], 10, "ISA04", seps),
        _fixed(header.sender_qualifier, 2, "ISA05", seps, exact=True),
        _fixed(header.sender_id, 15, "ISA06", seps),
        _fixed(header.receiver_qualifier, 2, "ISA07", seps, exact=True),
        _fixed(header.receiver_id, 15, "ISA08", seps),
        now.strftime("%y%m%d"),
        now.strftime("%H%M"),
        isa11,
        version,
        f"{_control(isa13, 'ISA13'):09d}",
        "1" if header.ack_requested else "0",
        header.usage,
        seps.component,
    ]
    text = seps.element.join(["ISA", *elements]) + seps.segment
    assert len(text) == ISA_LENGTH, text
    return text + header.newline


def write_interchange(
    header: InterchangeHeader,
    isa13: int,
    groups: Sequence[FunctionalGroup],
    *,
    now: datetime | None = None,
) -> bytes:
    """The interchange as ASCII bytes; X12WriteError (nothing written) on any bad value."""
    now = datetime.now() if now is None else now
    seps, nl = header.separators, header.newline
    out = [_isa(header, isa13, now)]
    if not groups:
        raise X12WriteError("GS", "an interchange needs at least one functional group")
    for g in groups:
        gs06 = _control(g.control, "GS06")
        if not g.sets:
            raise X12WriteError("ST", f"group {gs06} needs at least one transaction set")
        for name, value in (("GS02", header.gs_sender), ("GS03", header.gs_receiver)):
            if not 2 <= len(value) <= 15:
                raise X12WriteError(name, f"must be 2..15 characters (got {value!r})")
        gs = ("GS", g.functional_id, header.gs_sender, header.gs_receiver)
        gs += (now.strftime("%Y%m%d"), now.strftime("%H%M"), gs06, "X", header.version)
        out.append(encode_segment(gs, seps, nl))
        for ts in g.sets:
            st02 = f"{_control(ts.control, 'ST02'):04d}"
            out.append(encode_segment(("ST", ts.set_id, st02), seps, nl))
            out.extend(encode_segment(s, seps, nl) for s in ts.body)
            out.append(encode_segment(("SE", len(ts.body) + 2, st02), seps, nl))
        out.append(encode_segment(("GE", len(g.sets), gs06), seps, nl))
    out.append(encode_segment(("IEA", len(groups), f"{isa13:09d}"), seps, nl))
    return "".join(out).encode("ascii")
