"""One pass over an X12 file: its interchanges delimited, each tokenized once.

Two readers need the interchanges of a file: :func:`engine.x12.validate.validate` needs every
one delimited, even one whose envelope is broken (it is answered with a TA1), and the document
readers need the tokens of the sound ones. :func:`scan` serves both from one pass over the
decoded text. At each interchange it checks the ISA leniently (:func:`engine.x12.ta1.
check_header`) and tokenizes it (:func:`engine.x12.segments.read_interchange`); the interchange
ends where its tokens end (just past the IEA). Only when the tokenizer refuses the envelope is
the end found leniently, segment by segment: at the IEA, at the next ISA, or at the end of the
data. Like :func:`engine.x12.segments.parse_interchanges`, the tokenizer stops at the first
envelope it refuses: the interchanges after it are delimited, not tokenized.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import X12EnvelopeError
from engine.x12.segments import (
    TA1_PREMATURE_END,
    Interchange,
    decode,
    read_interchange,
)
from engine.x12.ta1 import Header, check_header

__all__ = ["ScannedFile", "Span", "scan"]

_WS = " \t\r\n"


@dataclass(frozen=True)
class Span:
    """One interchange of the file: its ISA as checked (``header``; problems carry the TA1
    note codes), its text ``text`` ending at offset ``end`` of the file's text, and its tokens
    (``interchange``; None when the tokenizer refused its envelope or had stopped before it)."""

    header: Header
    end: int
    text: str
    interchange: Interchange | None = None


@dataclass(frozen=True)
class ScannedFile:
    """The decoded text of a file and its interchanges, in order. ``error``: the envelope the
    tokenizer refused first (None when it read every interchange)."""

    text: str
    spans: tuple[Span, ...]
    error: X12EnvelopeError | None = None

    @property
    def interchanges(self) -> tuple[Interchange, ...]:
        """Every interchange, tokenized, as :func:`engine.x12.segments.parse_interchanges`
        returns them; raises :class:`X12EnvelopeError` as it does (the first envelope refused,
        or no interchange at all)."""
        if self.error is not None:
            raise self.error
        if not self.spans:
            raise X12EnvelopeError(
                "no interchange found: the data is empty", ta1_code=TA1_PREMATURE_END, offset=0
            )
        return tuple(s.interchange for s in self.spans if s.interchange is not None)


def scan(data: bytes | str) -> ScannedFile:
    """Decode ``data`` and find its interchanges, tokenizing each once (see the module)."""
    text = decode(data)
    spans: list[Span] = []
    error: X12EnvelopeError | None = None
    pos, n = 0, len(text)
    while True:
        while pos < n and text[pos] in _WS:
            pos += 1
        if pos >= n:
            break
        interchange = None
        if error is None:
            try:
                interchange = read_interchange(text, pos)
            except X12EnvelopeError as exc:
                error = exc
        if not text.startswith("ISA", pos):
            got = text[pos : pos + 3]
            problem = ("022", f"the data must start with an ISA segment (got {got!r})")
            spans.append(Span(Header(pos, None, "", "", "", n, (problem,)), n, text[pos:]))
            break
        header = check_header(text, pos)
        if interchange is not None:
            end = interchange.end
        elif header.fields is None or not header.segment or header.segment.isalnum():
            nxt = text.find("ISA", pos + 3)
            end = nxt if nxt > 0 else n
        else:
            end = _find_end(text, header)
        spans.append(Span(header, end, text[pos:end], interchange))
        pos = end
    return ScannedFile(text, tuple(spans), error)


def _find_end(text: str, h: Header) -> int:
    """Offset just past the IEA of the interchange whose ISA is ``h`` (or of the next ISA /
    the data end when the IEA is missing)."""
    term, sep = h.segment, h.element
    pos = h.end
    n = len(text)
    while pos < n:
        nxt = text.find(term, pos)
        if nxt < 0:
            return n
        seg = text[pos:nxt].lstrip(_WS)
        if seg.startswith("IEA" + sep) or seg == "IEA":
            return nxt + 1
        if seg.startswith("ISA" + sep) and pos != h.end:
            return pos  # the next interchange starts: this one has no IEA
        pos = nxt + 1
    return n
