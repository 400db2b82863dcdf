"""X12 tokenizer: separators from the ISA, then interchanges → groups → transaction sets.

Separators are never assumed (DOMAIN §3.1): the element separator is the character at
index 3 of the ISA, the component separator at index 104 (ISA16), the segment terminator at
index 105, and the repetition separator is ISA11 when ISA12 is ``00402`` or later. CR, LF or
CRLF after a terminator is tolerated (and skipped), as is a text holding several interchanges,
each with its own separators.

A segment is a ``list[str]`` of its elements with the segment id at index 0, so element
``BEG03`` is ``segment[3]``. Splitting is plain :meth:`str.split`; nothing here builds an object
per element or runs a regex per segment.

Envelope errors raise :class:`engine.errors.X12EnvelopeError` with the TA1 note code (TA105)
that applies. Counts and control numbers in GE/SE are *recorded*, not enforced: a wrong SE01
is a 997/999 matter for the set, and the validator decides (``TransactionSet.segment_count_ok``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date

from engine.errors import X12EnvelopeError

__all__ = [
    "ISA_LENGTH",
    "Group",
    "Interchange",
    "Separators",
    "TransactionSet",
    "decode",
    "detect_separators",
    "element",
    "line_col",
    "parse_interchanges",
    "read_interchange",
    "transaction_sets",
]

ISA_LENGTH = 106  # including the segment terminator

# Widths of ISA01..ISA16 and the TA1 note code that applies when one of them is wrong.
_ISA_WIDTHS = (2, 10, 2, 10, 2, 15, 2, 15, 6, 4, 1, 5, 9, 1, 1, 1)
_ISA_TA1 = (
    "010",  # ISA01 authorization information qualifier
    "011",  # ISA02 authorization information
    "012",  # ISA03 security information qualifier
    "013",  # ISA04 security information
    "005",  # ISA05 sender qualifier
    "006",  # ISA06 sender id
    "007",  # ISA07 receiver qualifier
    "008",  # ISA08 receiver id
    "014",  # ISA09 date
    "015",  # ISA10 time
    "016",  # ISA11 standards id / repetition separator
    "017",  # ISA12 version
    "018",  # ISA13 control number
    "019",  # ISA14 acknowledgment requested
    "020",  # ISA15 usage indicator
    "027",  # ISA16 component separator
)
TA1_INVALID_CONTROL_STRUCTURE = "022"
TA1_PREMATURE_END = "023"
TA1_INVALID_CONTENT = "024"

_WS = " \t\r\n"
_CONTROL = frozenset(("ISA", "IEA", "GS", "GE", "ST", "SE", "TA1"))


@dataclass(frozen=True, slots=True)
class Separators:
    """The four delimiters of one interchange (``repetition`` None before version 00402)."""

    element: str
    component: str
    segment: str
    repetition: str | None = None


@dataclass(frozen=True)
class TransactionSet:
    """One ST…SE set.

    ``segments`` holds ST…SE inclusive, so ``segments[i]`` is at position ``i + 1`` (ST = 1,
    the numbering of AK3/IK3). ``offsets[i]`` is the character offset of ``segments[i]`` in the
    decoded text (see :func:`line_col`).
    """

    id: str  # ST01
    control_number: str  # ST02
    segments: tuple[list[str], ...]
    offsets: tuple[int, ...]
    separators: Separators
    implementation: str = ""  # ST03 (005010 implementation convention reference)

    @property
    def body(self) -> tuple[list[str], ...]:
        """The segments between ST and SE."""
        return self.segments[1:-1]

    @property
    def se(self) -> list[str]:
        return self.segments[-1]

    @property
    def segment_count_ok(self) -> bool:
        """SE01 equals the number of segments from ST to SE inclusive."""
        return element(self.se, 1) == str(len(self.segments))

    @property
    def control_number_ok(self) -> bool:
        """SE02 equals ST02."""
        return element(self.se, 2) == self.control_number

    def position(self, index: int) -> int:
        """Position in the set (ST = 1) of ``segments[index]``."""
        return index + 1

    def components(self, value: str) -> list[str]:
        """A composite element split on the component separator."""
        return value.split(self.separators.component)

    def repeats(self, value: str) -> list[str]:
        """A repeated element split on the repetition separator (00402+; else one value)."""
        rep = self.separators.repetition
        return value.split(rep) if rep else [value]


@dataclass(frozen=True)
class Group:
    """One GS…GE functional group."""

    gs: list[str]
    ge: list[str]
    sets: tuple[TransactionSet, ...]
    offset: int

    @property
    def functional_id(self) -> str:
        return element(self.gs, 1)

    @property
    def sender(self) -> str:
        return element(self.gs, 2)

    @property
    def receiver(self) -> str:
        return element(self.gs, 3)

    @property
    def control_number(self) -> str:
        return element(self.gs, 6)

    @property
    def version(self) -> str:
        return element(self.gs, 8)

    @property
    def set_count_ok(self) -> bool:
        """GE01 equals the number of transaction sets."""
        return element(self.ge, 1) == str(len(self.sets))

    @property
    def control_number_ok(self) -> bool:
        """GE02 equals GS06."""
        return element(self.ge, 2) == self.control_number


@dataclass(frozen=True)
class Interchange:
    """One ISA…IEA interchange; ``isa[13]`` is ISA13 (``isa[0]`` is ``"ISA"``)."""

    isa: list[str]
    iea: list[str]
    separators: Separators
    groups: tuple[Group, ...]
    offset: int  # of the ISA
    end: int  # offset just past the IEA terminator
    ta1s: tuple[list[str], ...] = field(default=())

    @property
    def sender_qualifier(self) -> str:
        return self.isa[5]

    @property
    def sender_id(self) -> str:
        return self.isa[6].strip()

    @property
    def receiver_qualifier(self) -> str:
        return self.isa[7]

    @property
    def receiver_id(self) -> str:
        return self.isa[8].strip()

    @property
    def date(self) -> str:
        return self.isa[9]

    @property
    def time(self) -> str:
        return self.isa[10]

    @property
    def version(self) -> str:
        return self.isa[12]

    @property
    def control_number(self) -> str:
        return self.isa[13]

    @property
    def ack_requested(self) -> bool:
        return self.isa[14] == "1"

    @property
    def usage(self) -> str:
        return self.isa[15]

    @property
    def key(self) -> tuple[str, str, str]:
        """The duplicate-detection key (ISA06, ISA08, ISA13)."""
        return (self.sender_id, self.receiver_id, self.control_number)

    def sets(self) -> Iterator[tuple[Group, TransactionSet]]:
        for group in self.groups:
            for ts in group.sets:
                yield group, ts


def element(segment: list[str], index: int, default: str = "") -> str:
    """Element ``index`` (1-based; 0 is the segment id), or ``default`` when absent."""
    return segment[index] if index < len(segment) else default


def decode(data: str | bytes) -> str:
    """Text from bytes: UTF-8 (005010 extended character set), else Latin-1; BOM dropped."""
    if isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
        if raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
    elif isinstance(data, str):
        text = data
    else:
        raise TypeError(f"X12 data must be str or bytes (got {type(data).__name__})")
    return text[1:] if text.startswith("\ufeff") else text


def line_col(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of ``offset`` in ``text`` (for error reports)."""
    line = text.count("\n", 0, offset) + 1
    start = text.rfind("\n", 0, offset) + 1
    return line, offset - start + 1


def _isa_error(message: str, code: str, offset: int) -> X12EnvelopeError:
    return X12EnvelopeError(message, ta1_code=code, offset=offset, segment="ISA")


def detect_separators(text: str, start: int = 0) -> tuple[Separators, list[str]]:
    """The separators of the ISA at ``start`` and its elements (``["ISA", ISA01, … ISA16]``).

    Raises :class:`X12EnvelopeError` when the ISA is not the fixed 106 characters or one of its
    fixed fields is malformed, naming the element and with the TA1 note code for it.
    """
    if not text.startswith("ISA", start):
        got = text[start : start + 3]
        raise _isa_error(
            f"an interchange must start with 'ISA' (got {got!r})",
            TA1_INVALID_CONTROL_STRUCTURE,
            start,
        )
    if len(text) - start < ISA_LENGTH:
        raise _isa_error(
            f"the ISA must be {ISA_LENGTH} characters including its terminator "
            f"(got {len(text) - start} before the end of the data)",
            TA1_PREMATURE_END,
            start,
        )
    sep = text[start + 3]
    if sep.isalnum() or sep in _WS:
        raise _isa_error(
            f"the element separator (ISA character 4) must not be a letter, digit or space "
            f"(got {sep!r})",
            "026",
            start,
        )
    # Find the 16 element separators; ISA16 must follow the 16th at index 104.
    seps = [start + 3]
    pos = start + 3
    for _ in range(15):
        pos = text.find(sep, pos + 1, start + 200)
        if pos < 0:
            raise _isa_error(
                f"the ISA must have 16 elements separated by {sep!r} (got {len(seps)})",
                TA1_INVALID_CONTROL_STRUCTURE,
                start,
            )
        seps.append(pos)
    for i, width in enumerate(_ISA_WIDTHS[:-1]):
        got = seps[i + 1] - seps[i] - 1
        if got != width:
            raise _isa_error(
                f"the ISA must be {ISA_LENGTH} characters with fixed-width elements: "
                f"ISA{i + 1:02d} must be {width} characters (got {got}: "
                f"{text[seps[i] + 1 : seps[i + 1]]!r})",
                _ISA_TA1[i],
                start,
            )
    component = text[start + 104]
    terminator = text[start + 105]
    if component.isalnum() or component == sep or component in _WS:
        raise _isa_error(
            f"ISA16 (component separator) must be a delimiter other than {sep!r} "
            f"(got {component!r})",
            "027",
            start,
        )
    if terminator.isalnum() or terminator in (sep, component, " "):
        raise _isa_error(
            f"the segment terminator (ISA character 106) must be a delimiter distinct from the "
            f"element and component separators (got {terminator!r})",
            "004",
            start,
        )
    isa = text[start : start + 105].split(sep)
    _check_isa_values(isa, start)
    repetition = None
    rep = isa[11]
    if isa[12] >= "00402" and not rep.isalnum() and rep not in (sep, component, terminator, " "):
        repetition = rep
    return Separators(sep, component, terminator, repetition), isa


def _check_isa_values(isa: list[str], start: int) -> None:
    def bad(index: int, expected: str) -> X12EnvelopeError:
        return _isa_error(
            f"ISA{index:02d} must be {expected} (got {isa[index]!r})", _ISA_TA1[index - 1], start
        )

    if not isa[9].isdigit():
        raise bad(9, "a date YYMMDD")
    try:
        date(2000 + int(isa[9][:2]), int(isa[9][2:4]), int(isa[9][4:]))
    except ValueError:
        raise bad(9, "a valid date YYMMDD") from None
    if not isa[10].isdigit() or int(isa[10][:2]) > 23 or int(isa[10][2:]) > 59:
        raise bad(10, "a time HHMM")
    if not isa[12].isdigit():
        raise bad(12, "a 5-digit version such as 00401 or 00501")
    if not isa[13].isdigit():
        raise bad(13, "a 9-digit control number")
    if isa[14] not in ("0", "1"):
        raise bad(14, "0 or 1")
    if isa[15] not in ("P", "T", "I"):
        raise bad(15, "P, T or I")


def _find_iea(text: str, start: int, sep: str, term: str) -> int:
    """Offset of the IEA segment of the interchange starting at ``start``."""
    key = "IEA" + sep
    search = start + ISA_LENGTH
    while True:
        j = text.find(key, search)
        if j < 0:
            raise X12EnvelopeError(
                "the interchange has no IEA trailer (the data ended before it)",
                ta1_code=TA1_PREMATURE_END,
                offset=start,
                segment="IEA",
            )
        k = j
        while k > start and text[k - 1] != term and text[k - 1] in _WS:
            k -= 1
        if text[k - 1] == term:
            return j
        search = j + 1


def _content_error(message: str, offset: int, segment: str) -> X12EnvelopeError:
    return X12EnvelopeError(message, ta1_code=TA1_INVALID_CONTENT, offset=offset, segment=segment)


def read_interchange(text: str, start: int = 0) -> Interchange:
    """The interchange whose ISA starts at ``start`` in ``text`` (decoded), tokenized.

    Raises :class:`X12EnvelopeError` with its TA1 note code when the envelope is broken.
    """
    seps, isa = detect_separators(text, start)
    sep, term = seps.element, seps.segment
    iea_at = _find_iea(text, start, sep, term)
    end = text.find(term, iea_at)
    end = len(text) if end < 0 else end + 1
    groups: list[Group] = []
    ta1s: list[list[str]] = []
    gs: list[str] | None = None
    gs_offset = 0
    sets: list[TransactionSet] = []
    segs: list[list[str]] = []
    offs: list[int] = []
    in_set = False
    iea: list[str] = []
    off = start + ISA_LENGTH
    # The ISA is read; tokenize from the first segment after it up to and including the IEA.
    for piece in text[off:end].split(term):
        at = off
        off += len(piece) + 1
        if piece and piece[0] in _WS:
            stripped = piece.lstrip(_WS)
            at += len(piece) - len(stripped)
            piece = stripped
            if not piece:
                continue
        elif not piece:
            continue
        els = piece.split(sep)
        tag = els[0]
        if tag not in _CONTROL:
            if not in_set:
                raise _content_error(
                    f"segment {tag!r} must be inside a transaction set (ST…SE)", at, tag
                )
            segs.append(els)
            offs.append(at)
            continue
        if tag == "ST":
            if gs is None:
                raise _content_error("ST must be inside a functional group (GS…GE)", at, tag)
            if in_set:
                raise _content_error(
                    f"ST at offset {at} starts a new set before SE closed set {segs[0][2]!r}",
                    at,
                    tag,
                )
            if len(els) < 3 or not els[1] or not els[2]:
                raise _content_error(
                    f"ST must carry ST01 and ST02 (got {sep.join(els)!r})", at, tag
                )
            in_set = True
            segs = [els]
            offs = [at]
        elif tag == "SE":
            if not in_set:
                raise _content_error("SE without a matching ST", at, tag)
            segs.append(els)
            offs.append(at)
            st = segs[0]
            sets.append(
                TransactionSet(
                    id=st[1],
                    control_number=st[2],
                    segments=tuple(segs),
                    offsets=tuple(offs),
                    separators=seps,
                    implementation=element(st, 3),
                )
            )
            in_set = False
        elif tag == "GS":
            if in_set or gs is not None:
                raise _content_error("GS before the previous group's GE", at, tag)
            if len(els) < 9:
                raise _content_error(
                    f"GS must have 8 elements GS01..GS08 (got {len(els) - 1})", at, tag
                )
            gs, gs_offset, sets = els, at, []
        elif tag == "GE":
            if in_set:
                raise _content_error(
                    f"GE before SE closed set {segs[0][2]!r} (SE missing)", at, tag
                )
            if gs is None:
                raise _content_error("GE without a matching GS", at, tag)
            groups.append(Group(gs=gs, ge=els, sets=tuple(sets), offset=gs_offset))
            gs = None
        elif tag == "TA1":
            if in_set or gs is not None:
                raise _content_error("TA1 must be outside functional groups", at, tag)
            ta1s.append(els)
        elif tag == "IEA":
            if len(els) < 2:  # a bare IEA before the trailer (found by "IEA" + separator)
                raise _content_error(
                    f"expected IEA01 and IEA02 in the IEA (got {piece!r})", at, tag
                )
            if in_set or gs is not None:
                raise _content_error("IEA before the open group was closed (GE missing)", at, tag)
            iea = els
        else:  # ISA: a second ISA before this one's IEA
            raise _content_error("ISA before the previous interchange's IEA", at, tag)
    control = isa[13]
    if element(iea, 2) != control:
        raise X12EnvelopeError(
            f"IEA02 must equal ISA13 {control!r} (got {element(iea, 2)!r})",
            ta1_code="001",
            offset=iea_at,
            segment="IEA",
        )
    count = len(groups)  # a TA1-only interchange has IEA01 = 0
    if element(iea, 1) != str(count):
        raise X12EnvelopeError(
            f"IEA01 must be the number of functional groups, {count} (got {element(iea, 1)!r})",
            ta1_code="021",
            offset=iea_at,
            segment="IEA",
        )
    return Interchange(
        isa=isa,
        iea=iea,
        separators=seps,
        groups=tuple(groups),
        offset=start,
        end=end,
        ta1s=tuple(ta1s),
    )


def parse_interchanges(data: str | bytes) -> tuple[Interchange, ...]:
    """Every interchange in ``data``, in order. Whitespace between interchanges is skipped."""
    text = decode(data)
    out: list[Interchange] = []
    pos, n = 0, len(text)
    while True:
        while pos < n and text[pos] in _WS:
            pos += 1
        if pos >= n:
            break
        interchange = read_interchange(text, pos)
        out.append(interchange)
        pos = interchange.end
    if not out:
        raise X12EnvelopeError(
            "no interchange found: the data is empty", ta1_code=TA1_PREMATURE_END, offset=0
        )
    return tuple(out)


def transaction_sets(data: str | bytes) -> Iterator[tuple[Interchange, Group, TransactionSet]]:
    """Each transaction set of ``data`` with its interchange and group."""
    for interchange in parse_interchanges(data):
        for group, ts in interchange.sets():
            yield interchange, group, ts
