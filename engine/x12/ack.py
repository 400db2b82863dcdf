"""Write 997, 999 and TA1 acknowledgments from what :func:`engine.x12.validate.validate` found
(the results of :mod:`engine.x12.results`).

:func:`acknowledge` answers a whole file (control numbers from a counter, for tools and tests);
:func:`functional_ack` and :func:`ta1_interchange` answer one interchange, for a caller that
allocates its own control numbers (the procurement book).

pyx12 ships 997/999 writers, but they answer only the last interchange of a file, use a clock
based ISA13 and a random GS06, put ``00401`` in GS08 of the 997, and drop AK3 notes for its
own ``HL1``/``HL2`` codes. These writers follow the X12 layouts instead:

* one response interchange per inbound interchange (sender and receiver swapped, the same
  ISA12, ISA15 and separators), one FA group per acknowledged functional group, each with
  one 997/999 set;
* a 004010 group gets a 997 (GS08 ``004010``); a 005010 group gets a 999 (GS08 and ST03
  ``005010X231A1``) or, when asked, a 997 (GS08 ``005010``, with AK103/AK203);
* AK1 AK2 [AK3 AK4*] AK5 … AK9, resp. AK1 AK2 [IK3 IK4*] IK5 … AK9;
* AK901/IK: ``A`` all sets accepted, ``P`` some accepted, ``R`` none (or a group error);
* functional groups of acknowledgments (GS01 ``FA``) are never acknowledged;
* a TA1 answers in its own interchange: ``ISA`` ``TA1`` ``IEA*0``.

A copy of a bad value (AK404/IK404) is only written when it is itself a valid AN value for
the response (no separators, no control or non-X12 characters, at most 99 characters).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

from engine.x12.results import GroupResult, InterchangeResult, Issue, SetResult, Validation
from engine.x12.ta1 import ta1_segment

__all__ = [
    "ACK_KINDS",
    "Acknowledgments",
    "ack_version",
    "acknowledge",
    "functional_ack",
    "render",
    "ta1_interchange",
]

ACK_KINDS = ("997", "999")

_DEFAULT_SEPARATORS = ("*", ">", "~", "^")
_SEG_ID = re.compile(r"[A-Z0-9]{2,3}")
_EXTENDED_AN = re.compile(r"""[A-Za-z0-9!"&'()*+,\-./:;?= %~@\[\]_{}\\|<>#$^`]+""")
_ID_QUAL = frozenset(
    "01 02 03 04 07 08 09 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 "
    "32 33 34 35 36 AM NR SA SN ZZ".split()
)
# pyx12 segment codes that are not X12 AK304/IK304 codes: wrong HL01/HL02 counts, 837 LX
# counts and trailing separators all mean "segment has data element errors".
_SEG_CODE = {"HL1": "8", "HL2": "8", "LX": "8", "SEG1": "8"}
_SEG_CODES = frozenset("1 2 3 4 5 6 7 8".split())
_ELE_CODES = frozenset("1 2 3 4 5 6 7 8 9 10 12 13".split())


def _separators(ic: InterchangeResult) -> tuple[str, str, str, str]:
    element, component, segment, repetition = ic.separators
    seps = (element, component, segment)
    if (
        len(set(seps)) != 3
        or any(len(s) != 1 or s.isalnum() or s == " " for s in seps)
        or ic.ta1_code in ("004", "026", "027")
    ):
        return _DEFAULT_SEPARATORS
    rep = repetition if repetition and repetition not in seps and not repetition.isalnum() else "^"
    if rep in seps:
        rep = next(c for c in "^!|" if c not in seps)
    return (element, component, segment, rep)


def render(segments: list[list[str]], separators: tuple[str, str, str, str]) -> bytes:
    """Join segments with the element separator and the segment terminator (plus a newline
    unless the terminator is one)."""
    element, _component, segment, _rep = separators
    end = segment if segment in "\r\n" else segment + "\n"
    return "".join(element.join(s) + end for s in segments).encode("ascii", "replace")


def _isa(ic: InterchangeResult, control: int, now: datetime, seps) -> list[str]:
    version = ic.version if ic.version in ("00401", "00501") else "00401"
    sender_q = ic.receiver[0] if ic.receiver[0] in _ID_QUAL else "ZZ"
    receiver_q = ic.sender[0] if ic.sender[0] in _ID_QUAL else "ZZ"
    return [
        "ISA",
        "00",
        " " * 10,
        "00",
        " " * 10,
        sender_q,
        _clean(ic.receiver[1], seps)[:15].ljust(15),
        receiver_q,
        _clean(ic.sender[1], seps)[:15].ljust(15),
        now.strftime("%y%m%d"),
        now.strftime("%H%M"),
        seps[3] if version == "00501" else "U",
        version,
        f"{control % 1_000_000_000:09d}",
        "0",
        ic.usage if ic.usage in ("P", "T", "I") else "P",
        seps[1],
    ]


def _clean(value: str, seps) -> str:
    return "".join(" " if c in seps else c for c in value)


def ack_version(group: GroupResult, interchange_version: str, kind: str) -> tuple[str, str]:
    """(set id, GS08) of the acknowledgment of ``group``: ("997", "004010"),
    ("997", "005010") or ("999", "005010X231A1")."""
    v = group.version[:6]
    if v not in ("004010", "005010"):
        v = "005010" if interchange_version == "00501" else "004010"
    if v == "005010" and kind == "999":
        return "999", "005010X231A1"
    return "997", v


def _bad_copy(value: str | None, seps) -> str | None:
    if not value:
        return None
    value = value.rstrip()[:99].rstrip()
    if not value or any(c in seps for c in value) or not _EXTENDED_AN.fullmatch(value):
        return None
    return value


def _notes(s: SetResult, is999: bool, seps) -> list[list[str]]:
    """AK3/AK4 (997) or IK3/IK4 (999) for the segment and element issues of ``s``."""
    seg_tag, ele_tag = ("IK3", "IK4") if is999 else ("AK3", "AK4")
    out: list[list[str]] = []
    order: list[tuple[str, int | None]] = []
    by_segment: dict[tuple[str, int | None], tuple[list[str], list[Issue]]] = {}
    for issue in s.issues:
        if issue.level not in ("segment", "element"):
            continue
        key = (issue.segment, issue.position)
        if key not in by_segment:
            by_segment[key] = ([], [])
            order.append(key)
        if issue.level == "segment":
            code = _SEG_CODE.get(issue.code, issue.code)
            if code in _SEG_CODES and code not in by_segment[key][0]:
                by_segment[key][0].append(code)
        else:
            by_segment[key][1].append(issue)
    for key in order:
        seg_id, position = key
        seg_codes, elements = by_segment[key]
        if not _SEG_ID.fullmatch(seg_id or "") or position is None:
            continue  # a segment id that cannot be echoed: the AK5/IK5 code 5 still says it
        if not seg_codes:
            seg_codes = ["8"]
        for code in seg_codes:
            out.append([seg_tag, seg_id, str(position), "", code])
        for issue in elements[:99]:
            if issue.code not in _ELE_CODES or issue.element is None:
                continue
            pos = str(issue.element)
            if issue.component:
                pos += seps[1] + str(issue.component)
            ref = issue.data_element if issue.data_element.isdigit() else ""
            note = [ele_tag, pos, ref, issue.code]
            bad = _bad_copy(issue.value, seps)
            if bad is not None:
                note.append(bad)
            out.append(note)
    return out


def _trim(segment: list[str]) -> list[str]:
    while len(segment) > 1 and segment[-1] == "":
        segment.pop()
    return segment


def _group_body(g: GroupResult, set_id: str, gs08: str, seps) -> list[list[str]]:
    is999 = set_id == "999"
    five = gs08.startswith("005010")
    ak1 = ["AK1", g.functional_id, g.control_number]
    if five:
        ak1.append(g.version)
    body: list[list[str]] = [ak1]
    for s in g.sets:
        ak2 = ["AK2", s.id, s.control_number]
        if five and s.implementation:
            ak2.append(s.implementation)
        body.append(ak2)
        body += [_trim(n) for n in _notes(s, is999, seps)]
        body.append(["IK5" if is999 else "AK5", s.ack_code, *s.codes[:5]])
    received = g.received_sets
    declared = g.declared_sets if g.declared_sets is not None else received
    body.append(
        ["AK9", g.ack_code, str(declared), str(received), str(g.accepted_sets), *g.codes[:5]]
    )
    return body


def functional_ack(
    ic: InterchangeResult, *, kind: str, next_control: Callable[[], int], now: datetime
) -> bytes | None:
    """The 997/999 interchange answering ``ic``, or None when nothing is to be acknowledged
    (the interchange was rejected by TA1, or holds only acknowledgments)."""
    if ic.ta1_ack == "R":
        return None
    groups = [g for g in ic.groups if g.functional_id != "FA"]
    if not groups:
        return None
    seps = _separators(ic)
    isa13 = next_control()
    segments: list[list[str]] = [_isa(ic, isa13, now, seps)]
    for g in groups:
        set_id, gs08 = ack_version(g, ic.version, kind)
        gs06 = next_control()
        segments.append(
            [
                "GS",
                "FA",
                _clean(g.receiver, seps),
                _clean(g.sender, seps),
                now.strftime("%Y%m%d"),
                now.strftime("%H%M"),
                str(gs06),
                "X",
                gs08,
            ]
        )
        body = _group_body(g, set_id, gs08, seps)
        st = ["ST", set_id, "0001"]
        if set_id == "999":
            st.append(gs08)
        segments += [st, *body, ["SE", str(len(body) + 2), "0001"]]
        segments.append(["GE", "1", str(gs06)])
    segments.append(["IEA", str(len(groups)), f"{isa13 % 1_000_000_000:09d}"])
    return render(segments, seps)


def ta1_interchange(ic: InterchangeResult, control: int, now: datetime) -> bytes:
    """``ISA`` ``TA1`` ``IEA*0`` answering ``ic`` with its TA104/TA105."""
    seps = _separators(ic)
    segments = [
        _isa(ic, control, now, seps),
        ta1_segment(ic.control_number, ic.date, ic.time, ic.ta1_code),
        ["IEA", "0", f"{control % 1_000_000_000:09d}"],
    ]
    return render(segments, seps)


@dataclass(frozen=True)
class Acknowledgments:
    """The answers to one file: ``acks`` holds one 997/999 interchange per inbound interchange
    that gets one (each in the version and with the separators of the interchange it answers),
    ``ta1s`` one TA1 interchange per inbound interchange that gets one. ``ack``/``ta1`` join
    them into one file each."""

    acks: tuple[bytes, ...]
    ta1s: tuple[bytes, ...]

    @property
    def ack(self) -> bytes:
        return b"".join(self.acks)

    @property
    def ta1(self) -> bytes:
        return b"".join(self.ta1s)


def _counter(control_numbers: Iterator[int] | Callable[[], int] | None) -> Callable[[], int]:
    if control_numbers is None:
        it = itertools.count(1)
        return lambda: next(it)
    if callable(control_numbers):
        return control_numbers
    return lambda: next(control_numbers)


def acknowledge(
    validation: Validation,
    *,
    kind: str = "997",
    control_numbers: Iterator[int] | Callable[[], int] | None = None,
    now: datetime | None = None,
) -> Acknowledgments:
    """The TA1 and 997/999 answering every interchange of ``validation``, in file order.

    ``kind``: ``"997"`` or ``"999"`` — what a 005010 group gets (a 004010 group always gets a
    997 004010). ``control_numbers``: where the ISA13/GS06 of the answers come from, one number
    per envelope, in order (an iterator or a callable; default 1, 2, 3…): for each interchange
    its TA1's ISA13 first, then the 997/999's ISA13 and GS06s. ``now``: the date and time
    written in the envelopes (default: the local time).
    """
    if kind not in ACK_KINDS:
        raise ValueError(f"'kind' must be one of {', '.join(ACK_KINDS)} (got {kind!r})")
    next_control = _counter(control_numbers)
    when = now or datetime.now()
    acks: list[bytes] = []
    ta1s: list[bytes] = []
    for ic in validation.interchanges:
        if ic.ta1_sent:
            ta1s.append(ta1_interchange(ic, next_control(), when))
        doc = functional_ack(ic, kind=kind, next_control=next_control, now=when)
        if doc is not None:
            acks.append(doc)
    return Acknowledgments(tuple(acks), tuple(ta1s))
