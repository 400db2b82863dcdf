"""Interchange header checks and the TA1 interchange acknowledgment.

pyx12 cannot answer a broken ISA: it reads the separators from fixed offsets of the first 106
characters and gives up ("does not look like an X12 data file") when they are wrong, and its
own TA1 only ever reports the last interchange. So Wharf checks every ISA here first, and
writes the TA1 itself.

TA104 (I17): ``A`` accepted, ``E`` accepted with errors, ``R`` rejected.
TA105 (I18) note codes used here (X12 control standard):

===  ==========================================================================
000  no error
001  interchange control number in header (ISA13) and trailer (IEA02) do not match
003  this version of the controls (ISA12) is not supported
004  the segment terminator is invalid
005  invalid interchange ID qualifier for sender (ISA05)
006  invalid interchange sender ID (ISA06)
007  invalid interchange ID qualifier for receiver (ISA07)
008  invalid interchange receiver ID (ISA08)
010  invalid authorization information qualifier value (ISA01)
011  invalid authorization information value (ISA02)
012  invalid security information qualifier value (ISA03)
013  invalid security information value (ISA04)
014  invalid interchange date value (ISA09)
015  invalid interchange time value (ISA10)
016  invalid interchange standards identifier value (ISA11)
017  invalid interchange version ID value (ISA12)
018  invalid interchange control number value (ISA13)
019  invalid acknowledgment requested value (ISA14)
020  invalid test indicator value (ISA15)
021  invalid number of included groups value (IEA01)
022  invalid control structure
023  improper (premature) end-of-file (transmission)
024  invalid interchange content (e.g. invalid GS segment)
025  duplicate interchange control number
026  invalid data element separator
027  invalid component element separator
===  ==========================================================================

001 and 021 are trailer errors: the interchange is still processed and acknowledged with
``E``; every other code rejects the interchange (``R``) and no 997/999 is sent for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date as _date

__all__ = [
    "ISA_LENGTH",
    "NOTE_TEXT",
    "SUPPORTED_VERSIONS",
    "Header",
    "check_header",
    "ta1_ack_code",
    "ta1_segment",
]

ISA_LENGTH = 106  # including the segment terminator
SUPPORTED_VERSIONS = ("00401", "00501")

NOTE_TEXT = {
    "000": "no error",
    "001": "interchange control number in header and trailer do not match",
    "003": "this version of the controls is not supported",
    "004": "the segment terminator is invalid",
    "005": "invalid interchange ID qualifier for sender",
    "006": "invalid interchange sender ID",
    "007": "invalid interchange ID qualifier for receiver",
    "008": "invalid interchange receiver ID",
    "010": "invalid authorization information qualifier value",
    "011": "invalid authorization information value",
    "012": "invalid security information qualifier value",
    "013": "invalid security information value",
    "014": "invalid interchange date value",
    "015": "invalid interchange time value",
    "016": "invalid interchange standards identifier value",
    "017": "invalid interchange version ID value",
    "018": "invalid interchange control number value",
    "019": "invalid acknowledgment requested value",
    "020": "invalid test indicator value",
    "021": "invalid number of included groups value",
    "022": "invalid control structure",
    "023": "improper (premature) end-of-file (transmission)",
    "024": "invalid interchange content",
    "025": "duplicate interchange control number",
    "026": "invalid data element separator",
    "027": "invalid component element separator",
}

# ISA01..ISA16: fixed width and the note code for a bad value.
_WIDTHS = (2, 10, 2, 10, 2, 15, 2, 15, 6, 4, 1, 5, 9, 1, 1, 1)
_NOTE = ("010", "011", "012", "013", "005", "006", "007", "008",
         "014", "015", "016", "017", "018", "019", "020", "027")  # fmt: skip
_AUTH_QUAL = frozenset("00 01 02 03 04 05 06".split())
_SEC_QUAL = frozenset(("00", "01"))
_ID_QUAL = frozenset(
    "01 02 03 04 07 08 09 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 "
    "32 33 34 35 36 AM NR SA SN ZZ".split()
)
_WS = " \t\r\n"
# Codes that still let the interchange be processed (trailer problems).
_ACCEPT_WITH_ERRORS = frozenset(("001", "021"))


@dataclass(frozen=True)
class Header:
    """What an ISA holds, read leniently so that even a broken one can be answered.

    ``fields``: ``["ISA", ISA01, … ISA16]`` or None when not even 16 elements were found.
    ``element``/``component``/``segment``: separators as found (may be invalid: see ``problems``).
    ``end``: offset just past the ISA terminator (or of the data end when not found).
    ``problems``: ``(TA105 code, message)`` in the order found; empty for a good ISA.
    """

    start: int
    fields: list[str] | None
    element: str
    component: str
    segment: str
    end: int
    problems: tuple[tuple[str, str], ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def version(self) -> str:
        return self.fields[12] if self.fields else ""

    @property
    def repetition(self) -> str | None:
        if self.fields and self.version >= "00402":
            return self.fields[11]
        return None

    def field(self, index: int) -> str:
        return self.fields[index] if self.fields and index < len(self.fields) else ""


def check_header(text: str, start: int = 0) -> Header:
    """Read and check the ISA at ``start`` (``text[start:start+3] == "ISA"``)."""
    problems: list[tuple[str, str]] = []
    n = len(text)
    sep = text[start + 3] if start + 3 < n else ""
    if not sep:
        return Header(start, None, "", "", "", n, (("023", "the data ends inside the ISA"),))
    # The 16 element separators of the ISA: ISA16 (one character) follows the last one.
    seps = [start + 3]
    pos = start + 3
    limit = min(n, start + 3 * ISA_LENGTH)
    for _ in range(15):
        pos = text.find(sep, pos + 1, limit)
        if pos < 0:
            break
        seps.append(pos)
    if len(seps) < 16 or seps[-1] + 2 >= n:
        code = "023" if len(seps) >= 16 else "022"
        return Header(
            start,
            None,
            sep,
            "",
            "",
            n,
            (
                (
                    code,
                    f"the ISA must have 16 elements separated by {sep!r} (found {len(seps)})",
                ),
            ),
        )
    component = text[seps[-1] + 1]
    terminator = text[seps[-1] + 2]
    fields = [*text[start : seps[-1]].split(sep), component]
    end = seps[-1] + 3
    if sep.isalnum() or sep in _WS:
        problems.append(
            ("026", f"the element separator must not be a letter, digit or space (got {sep!r})")
        )
    if component.isalnum() or component in _WS or component == sep:
        problems.append(
            (
                "027",
                f"ISA16, the component separator, must be a delimiter other "
                f"than the element separator (got {component!r})",
            )
        )
    if terminator.isalnum() or terminator in (" ", sep, component):
        problems.append(
            (
                "004",
                f"the segment terminator (after ISA16) must be a delimiter "
                f"distinct from the element and component separators "
                f"(got {terminator!r})",
            )
        )
    for i, width in enumerate(_WIDTHS[:-1], start=1):
        if len(fields[i]) != width:
            problems.append(
                (
                    _NOTE[i - 1],
                    f"ISA{i:02d} must be {width} characters wide "
                    f"(got {len(fields[i])}: {fields[i]!r}); the ISA is "
                    f"{ISA_LENGTH} characters including its terminator",
                )
            )
    if not problems and end - start != ISA_LENGTH:  # pragma: no cover - implied by the widths
        problems.append(("022", f"the ISA must be {ISA_LENGTH} characters (got {end - start})"))
    problems += _check_values(fields, sep)
    return Header(start, fields, sep, component, terminator, end, tuple(problems))


def _check_values(f: list[str], sep: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []

    def bad(i: int, expected: str) -> None:
        out.append((_NOTE[i - 1], f"ISA{i:02d} must be {expected} (got {f[i]!r})"))

    if f[1] not in _AUTH_QUAL:
        bad(1, "an authorization qualifier 00..06")
    if f[3] not in _SEC_QUAL:
        bad(3, "a security qualifier 00 or 01")
    if f[5] not in _ID_QUAL:
        bad(5, "an interchange ID qualifier such as ZZ, 01 or 14")
    if not f[6].strip():
        bad(6, "a sender ID")
    if f[7] not in _ID_QUAL:
        bad(7, "an interchange ID qualifier such as ZZ, 01 or 14")
    if not f[8].strip():
        bad(8, "a receiver ID")
    try:
        if len(f[9]) != 6 or not f[9].isdigit():
            raise ValueError
        _date(2000 + int(f[9][:2]), int(f[9][2:4]), int(f[9][4:]))
    except ValueError:
        bad(9, "a date YYMMDD")
    if not (len(f[10]) == 4 and f[10].isdigit() and f[10][:2] <= "23" and f[10][2:] <= "59"):
        bad(10, "a time HHMM")
    version = f[12]
    if not (len(version) == 5 and version.isdigit()):
        bad(12, "a 5-digit control version such as 00401 or 00501")
    elif version not in SUPPORTED_VERSIONS:
        out.append(
            (
                "003",
                f"ISA12 control version {version!r} is not supported "
                f"(expected one of {', '.join(SUPPORTED_VERSIONS)})",
            )
        )
    elif version == "00401" and f[11] != "U":
        bad(11, "U (the standards identifier of version 00401)")
    elif version >= "00402" and (f[11].isalnum() or f[11] in _WS or f[11] in (f[16], sep)):
        bad(11, "the repetition separator, a delimiter distinct from the others")
    if not (len(f[13]) == 9 and f[13].isdigit()):
        bad(13, "a 9-digit interchange control number")
    if f[14] not in ("0", "1"):
        bad(14, "0 or 1")
    if f[15] not in ("P", "T", "I"):
        bad(15, "P, T or I")
    return out


def ta1_ack_code(note: str) -> str:
    """TA104 for a TA105 note code."""
    if note == "000":
        return "A"
    return "E" if note in _ACCEPT_WITH_ERRORS else "R"


def ta1_segment(control_number: str, isa_date: str, isa_time: str, note: str) -> list[str]:
    """The TA1 segment answering an interchange (TA101..TA103 echo ISA13, ISA09, ISA10).

    Values that do not fit their fixed width (the ISA was broken) are replaced by zeros, so
    the TA1 itself stays valid.
    """
    if note not in NOTE_TEXT:
        raise ValueError(f"'note' must be a TA105 code 000..031 (got {note!r})")
    ctrl = control_number if len(control_number) == 9 and control_number.isdigit() else "0" * 9
    d = isa_date if len(isa_date) == 6 and isa_date.isdigit() else "000101"
    t = isa_time if len(isa_time) == 4 and isa_time.isdigit() else "0000"
    return ["TA1", ctrl, d, t, ta1_ack_code(note), note]
