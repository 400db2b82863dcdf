"""Speed-ups for running pyx12 over large documents, without changing what it reports.

Profiling pyx12 4.0 on a 10,000-line 810 (30,000 segments) showed two hot spots:

1. ``segment_if.is_valid_errors`` -- every element is fetched with ``Segment.get("02")``,
   which parses the reference designator through an ``X12Path`` regex; child map nodes are
   looked up with a list comprehension per element (quadratic in the element count); each
   syntax note re-reads its elements the same way.
2. The walker's ``NodeCounter`` keys its counts by ``X12Path`` objects whose ``__hash__``
   formats the path string on every call, and ``reset_to_node`` formats every key.

Measured with ``bench/x12_validate.py`` (997 included): 2.65 s with pyx12's
``x12n_document``, 2.62 s with the maps cached, 2.17 s with :class:`PathCounter`, 0.60 s with
:class:`SegmentCheck` as well.

The fixes:

* :class:`SegmentCheck` is compiled once per map segment node and answers "is this data
  segment certainly valid?" with plain string operations. It is *conservative*: it returns
  False for anything it does not model exactly (composites with data, trailing spaces,
  control characters, a failed syntax note…), and then pyx12's own validator runs and
  reports. So every error still comes from pyx12; only the work on valid segments is saved.
* :class:`PathCounter` is a ``NodeCounter`` keyed by the path *string*, formatted once per map
  node path object.
"""

from __future__ import annotations

import re
from typing import Any

from pyx12 import validation
from pyx12.map_if import composite_if, element_if, segment_if
from pyx12.nodeCounter import NodeCounter
from pyx12.path import X12Path

__all__ = ["PathCounter", "SegmentCheck", "segment_check"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_N_WHOLE = re.compile(r"-?[0-9]+", validation.REGEX_MODE)
_R_WHOLE = re.compile(r"-?[0-9]*(\.[0-9]+)?", validation.REGEX_MODE)


class _ElementRule:
    __slots__ = (
        "charset",
        "codes",
        "dtype",
        "fast",
        "icvn",
        "max",
        "memo",
        "min",
        "numeric",
        "regex",
        "required",
        "text",
        "usage",
    )

    def __init__(self, node: element_if, ext_codes: Any) -> None:
        self.usage = node.usage
        self.required = node.usage == "R"
        self.dtype = node.get_data_type() or ""
        self.min = node.min_len
        self.max = node.max_len
        self.numeric = self.dtype == "R" or self.dtype.startswith("N")
        self.text = self.dtype in ("AN", "ID")
        codes: set[str | None] = set(node.valid_codes)
        if node.external_codes is not None:
            ext = ext_codes.codes.get(node.external_codes)
            if ext is None or node.external_codes in ext_codes.exclude_list:
                raise _NotModelled
            codes |= set(ext["codes"])
        self.codes = frozenset(codes) if codes else None
        self.regex = node.rec
        self.icvn = node.root.icvn or "00401"
        self.charset = node.root.param.get("charset")
        # ok() is a pure function of the value: its answers are remembered (every code of a
        # code list at once, other values as they come, up to _MEMO of them).
        self.memo: dict[str, bool] = {}
        if self.codes is not None:
            self.memo = {c: self.ok(c) for c in self.codes if c}
        self.fast = self._fast()

    def _fast(self) -> Any:
        """:meth:`ok` specialised to this element's type, for the types whose pyx12 test is a
        regular expression (``ok`` itself for the others)."""
        if self.usage == "N" or self.codes is not None:
            return self.ok
        low, high, regex = self.min, self.max, self.regex
        if self.text and self.charset in ("B", "E"):
            # pyx12's invalid-character class; control characters are outside every charset
            if self.charset == "B":
                bad = validation.rec_ID_B
            else:
                bad = validation.rec_ID_E5 if self.icvn == "00501" else validation.rec_ID_E

            def text_ok(value: str) -> bool:
                return (
                    low <= len(value) <= high
                    and value[-1] != " "
                    and bad.search(value) is None
                    and (regex is None or regex.search(value) is not None)
                )

            return text_ok
        if self.dtype.startswith("N") or self.dtype == "R":
            # pyx12 accepts a value its anchored pattern matches whole (greedy, so a full match)
            whole = _N_WHOLE if self.dtype != "R" else _R_WHOLE

            def number_ok(value: str) -> bool:
                if whole.fullmatch(value) is None:
                    return False
                size = len(value.replace("-", "").replace(".", ""))
                return low <= size <= high and (regex is None or regex.search(value) is not None)

            return number_ok
        return self.ok

    def ok(self, value: str) -> bool:
        if self.usage == "N" or _CONTROL.search(value):
            return False
        size = len(value.replace("-", "").replace(".", "")) if self.numeric else len(value)
        if size < self.min or size > self.max:
            return False
        if self.text and value[-1] == " ":
            return False
        if self.codes is not None and value not in self.codes:
            return False
        if not validation.IsValidDataType(value, self.dtype, self.charset, self.icvn):
            return False
        return not (self.regex is not None and not self.regex.search(value))

    def learn(self, value: str) -> bool:
        """:meth:`ok`, remembered."""
        if self.codes is not None:
            return False  # every code is in the memo already
        answer = self.fast(value)
        if len(self.memo) < _MEMO:
            self.memo[value] = answer
        return answer


class _CompositeRule:
    """A composite position: only an empty one is settled here."""

    __slots__ = ("memo", "required")

    def __init__(self, node: composite_if) -> None:
        self.required = node.usage == "R"
        self.memo: dict[str, bool] = {}

    def learn(self, value: str) -> bool:
        return False  # composite data: let pyx12 check it


_MEMO = 4096


class _NotModelled(Exception):
    """The segment uses a map feature the fast check does not reproduce."""


class SegmentCheck:
    """A compiled, conservative validity test for one map segment node."""

    __slots__ = ("count", "need", "notes", "positions", "rules", "syntax")

    def __init__(self, node: segment_if) -> None:
        if node.id == "DTP":  # pyx12 special-cases DTP dates; leave it to pyx12
            raise _NotModelled
        ext = node.root.ext_codes
        self.count = len(node.children)
        self.rules: list[_ElementRule | _CompositeRule] = []
        for i, child in enumerate(node.children):
            if child.seq != i + 1:
                raise _NotModelled
            if isinstance(child, element_if):
                if child.data_ele == "1250" and child.valid_codes:
                    raise _NotModelled  # pyx12 checks 1251 against these formats
                self.rules.append(_ElementRule(child, ext))
            else:
                self.rules.append(_CompositeRule(child))
        # every required position must be there (an empty one is caught element by element)
        self.need = max([i + 1 for i, c in enumerate(node.children) if c.usage == "R"] or [0])
        self.syntax = [
            (s[0], idx, idx[0]) for s in node.syntax for idx in [tuple(int(x) for x in s[1:])]
        ]
        if any(len(idx) < 2 for _, idx, _first in self.syntax):
            raise _NotModelled  # pyx12 reports such a note as an error in itself
        # what _ok reads of each position (0: the segment id), taken off the rules once
        self.positions = tuple(
            (rule.memo, rule.learn, rule.required) for rule in (_SegmentId(), *self.rules)
        )
        self.notes: dict[int, bool] = {}  # presence mask -> the notes hold

    def ok(self, seg: Any) -> bool:
        """True only if pyx12 would report no error for ``seg`` against this node."""
        elements = seg.elements
        values = [""] * (len(elements) + 1)
        for i, composite in enumerate(elements):
            comp = composite.elements
            if len(comp) > 1:
                return False  # composite data: let pyx12 check it
            values[i + 1] = comp[0].value
        return self._ok(values)

    def ok_values(self, els: list[str], component: str | None) -> bool:
        """:meth:`ok` for a tokenized segment (``els[0]`` the segment id, as
        :mod:`engine.x12.segments` splits it) with ``component`` its component separator
        (None: the caller knows no element holds one)."""
        if component is not None:
            for i in range(1, len(els)):
                if component in els[i]:
                    return False  # composite data: let pyx12 check it
        return self._ok(els)

    def _ok(self, els: list[str]) -> bool:
        n = len(els) - 1
        if n > self.count or n < self.need:
            return False
        mask = 0  # bit k: element k present (bit 0: the segment id)
        bit = 1
        for (memo, learn, required), value in zip(self.positions, els, strict=False):
            # (els may be shorter)
            if value:
                hit = memo.get(value)
                if hit is None:
                    hit = learn(value)
                if not hit:
                    return False
                mask |= bit
            elif required:
                return False
            bit <<= 1
        if not self.syntax:
            return True
        found = self.notes.get(mask)
        if found is None:
            found = self.notes[mask] = self._notes(mask)
        return found

    def _notes(self, mask: int) -> bool:
        """The syntax notes hold for the elements present in ``mask``."""
        for code, idx, first in self.syntax:
            count = sum(1 for k in idx if mask >> k & 1)
            given = mask >> first & 1
            if code == "P":
                if count not in (0, len(idx)):
                    return False
            elif code == "R":
                if count == 0:
                    return False
            elif code == "E":
                if count > 1:
                    return False
            elif code == "C":
                if given and count != len(idx):
                    return False
            elif code == "L":
                if given and count < 2:
                    return False
            else:
                return False
        return True


class _SegmentId:
    """Position 0 of a tokenized segment: the id the walk matched, not an element."""

    __slots__ = ("memo", "required")

    def __init__(self) -> None:
        self.memo: dict[str, bool] = {}
        self.required = False

    def learn(self, value: str) -> bool:
        return True


_CHECKS: dict[int, tuple[segment_if, SegmentCheck | None]] = {}


def segment_check(node: segment_if) -> SegmentCheck | None:
    """The compiled check of ``node`` (None when the node cannot be modelled).

    Cached by node identity; the node is kept alive with its check, and map nodes live as long
    as the map cache in :mod:`engine.x12.validate`.
    """
    hit = _CHECKS.get(id(node))
    if hit is not None and hit[0] is node:
        return hit[1]
    try:
        check: SegmentCheck | None = SegmentCheck(node)
    except _NotModelled:
        check = None
    _CHECKS[id(node)] = (node, check)
    return check


class PathCounter(NodeCounter):
    """``NodeCounter`` with string keys: the same counts, without re-formatting paths."""

    _formatted: dict[int, tuple[Any, str]] = {}

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    @classmethod
    def _key(cls, xpath: str | X12Path) -> str:
        hit = cls._formatted.get(id(xpath))
        if hit is not None and hit[0] is xpath:
            return hit[1]
        if isinstance(xpath, str):
            # Only the ISA and GS loop starts come as strings (once per ISA/GS).
            return X12Path(xpath).format()
        # Map node paths are long-lived (cached on the map nodes) and never mutated by the
        # walker; the cache keeps each one alive next to its formatted text.
        key = xpath.format()
        cls._formatted[id(xpath)] = (xpath, key)
        return key

    def reset_to_node(self, xpath: str | X12Path) -> None:
        prefix = self._key(xpath) + "/"
        for k in [k for k in self._counts if k.startswith(prefix)]:
            del self._counts[k]

    def increment(self, xpath: str | X12Path) -> None:
        k = self._key(xpath)
        self._counts[k] = self._counts.get(k, 0) + 1

    def setCount(self, xpath: str | X12Path, ct: int) -> None:
        self._counts[self._key(xpath)] = ct

    def get_count(self, xpath: str | X12Path) -> int:
        return self._counts.get(self._key(xpath), 0)

    def getState(self) -> Any:
        return dict(self._counts)
