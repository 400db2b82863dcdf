"""A clean interchange proved clean without pyx12's per-segment machinery.

:func:`engine.x12.validate.validate` runs pyx12 over every interchange, which costs about
100 microseconds a segment (its reader builds an object per element, its walker searches the
map tree and formats paths, its error handler builds a node per segment). Most files are clean,
and for a clean file every one of those steps ends with "no error". :func:`clean_groups`
answers the same question from the tokens :func:`engine.x12.scan.scan` already made:

* **walk plans**: where pyx12's walker goes from a map node for a segment depends only on the
  node, the segment id and the qualifier elements the map matches on (``segment_if.is_match``);
  the loop counters only decide whether an error is raised on the way. So the walk is computed
  once per (node, segment id, qualifier values) by :class:`_Planner`, which mirrors
  ``pyx12.map_walker.walk_tree.walk_errors`` step by step and records each place where the
  walker reads a counter; replaying a plan applies the same counter updates and checks the
  same conditions;
* **element checks**: each map segment node is compiled once into a flat list of element rules
  (:class:`engine.x12.fastcheck.SegmentCheck`: type, length, code set as a frozenset, usage,
  syntax notes); a segment the table cannot settle is checked by pyx12's own segment validator;
* **envelope checks**: the reader's checks (control numbers, counts, unique ids, empty
  segments, trailing separators, leading spaces).

It is conservative: at the first thing pyx12 would report, or that is not modelled here (HL
trees, TA1 segments, an unknown group), it returns None and the caller runs pyx12 over the
interchange, so every error is still found and worded by pyx12. On a clean interchange it
returns the same results pyx12's error tree gives (``tests/unit/test_x12_compiled.py``
compares both on every sample and reject file).
"""

from __future__ import annotations

import re
import threading
from typing import Any

import pyx12.segment
from pyx12.map_if import loop_if, map_if, segment_if
from pyx12.map_walker import pop_to_parent_loop
from pyx12.path import X12Path

from engine.x12.fastcheck import segment_check
from engine.x12.results import GroupResult, SetResult
from engine.x12.segments import ISA_LENGTH, Interchange

__all__ = ["clean_groups", "stats"]

# Plan operations (see _Planner and _Walk.step).
_MISSING = 0  # (op, key, node identity, pos): a required node not counted yet becomes pending
_SEGMENT = 1  # (op, key, node identity, pos, max repeat, not used): a segment matched
_LOOP = 2  # (op, key, max repeat, not used, first segment key): a loop entered

stats = {"plans": 0, "segments": 0, "table": 0, "pyx12": 0}
"""Work counters (regression guard for tests): walk plans built, segments walked, segments
settled by the compiled table, segments handed to pyx12's segment validator."""


class _Bail(Exception):
    """pyx12 would report something here (or it is not modelled): run pyx12."""


def _key(node: Any) -> str:
    return node.x12path.format()


def _same(node: Any) -> tuple[str, str]:
    """What ``x12_node.__eq__`` compares (the walker drops a pending error by equality)."""
    return (node.id, node.parent.id)


class _Planner:
    """``walk_tree.walk_errors`` without its side effects: the matched node and the counter
    reads and updates on the way, as a list of operations."""

    def __init__(self, seg: pyx12.segment.Segment) -> None:
        self.seg = seg
        self.ops: list[tuple] = []

    def walk(self, node: Any) -> Any:
        node_pos = node.pos
        if not (node.is_loop() or node.is_map_root()):
            node = pop_to_parent_loop(node)
        while True:
            found = self._scan(node, node_pos)
            if found is not None:
                return found
            if node.is_map_root():
                return None
            node_pos = node.pos
            node = pop_to_parent_loop(node)

    def _scan(self, node: Any, node_pos: int) -> Any:
        for ord1 in [a for a in sorted(node.pos_map) if a >= node_pos]:
            for child in node.pos_map[ord1]:
                if child.is_segment():
                    if child.is_match(self.seg):
                        if node.is_loop() and self._is_loop_match(node):
                            return self._goto_seg_match(node)
                        self.ops.append(
                            (
                                _SEGMENT,
                                _key(child),
                                _same(child),
                                child.pos,
                                child.get_max_repeat(),
                                child.usage == "N",
                            )
                        )
                        return child
                    if child.usage == "R":
                        self.ops.append((_MISSING, _key(child), _same(child), child.pos))
                elif child.is_loop() and self._is_loop_match(child):
                    return self._goto_seg_match(child)
        return None

    def _is_loop_match(self, loop: Any) -> bool:
        if len(loop) <= 0:
            return False
        first = loop.get_first_node()
        if first.is_loop():
            return any(c.is_loop() and self._is_loop_match(c) for c in loop.childIterator())
        if first.is_segment() and first.is_match(self.seg):
            return True
        if loop.usage == "R":
            self.ops.append((_MISSING, _key(loop), _same(first), first.pos))
        return False

    def _goto_seg_match(self, loop: Any) -> Any:
        first = loop.get_first_seg()
        if first is not None and first.is_match(self.seg):
            self.ops.append(
                (_LOOP, _key(loop), loop.get_max_repeat(), loop.usage == "N", _key(first))
            )
            return first
        for child in loop.childIterator():
            if child.is_loop():
                found = self._goto_seg_match(child)
                if found is not None:
                    return found
        return None


class _MapPlans:
    """The walk plans of one map, built on first use."""

    def __init__(self, m: map_if) -> None:
        self.map = m
        self.plans: dict[tuple, tuple[tuple, Any]] = {}
        # segment id -> the (element, component) positions is_match reads for it
        self.qualifiers: dict[str, tuple[tuple[int, int | None], ...]] = {}
        self._index(m)

    def _index(self, node: Any) -> None:
        for child in (c for pos in sorted(node.pos_map) for c in node.pos_map[pos]):
            if isinstance(child, loop_if):
                self._index(child)
            elif isinstance(child, segment_if):
                field = child._resolve_unique_key_field(child.id, with_qual=False)
                have = self.qualifiers.get(child.id, ())
                if field is not None and (field[1], field[2]) not in have:
                    have = (*have, (field[1], field[2]))
                self.qualifiers[child.id] = have


class _Walk:
    """One interchange's walk: pyx12's loop counters (keyed by path text, as
    :class:`engine.x12.fastcheck.PathCounter`) and the plan replay."""

    def __init__(self, text_of: Any) -> None:
        self.counts: dict[str, int] = {}
        self.text_of = text_of  # els -> the segment text (for pyx12 objects)

    def reset(self, key: str) -> None:
        """``NodeCounter.reset_to_node``: forget every count under ``key``."""
        counts = self.counts
        for k in _descendants(key):
            if k in counts:
                del counts[k]

    def force(self, loop: str, first: str) -> None:
        """``walk_tree.forceWalkCounterToLoopStart``."""
        self.reset(loop)
        counts = self.counts
        counts[loop] = counts.get(loop, 0) + 1
        counts[first] = counts.get(first, 0) + 1

    def step(self, plans: _MapPlans, node: Any, els: list[str]) -> Any:
        seg_id = els[0]
        quals = plans.qualifiers.get(seg_id)
        if quals is None:
            raise _Bail  # no node of the map has this id: pyx12 reports it
        if not quals:
            key: tuple = (id(node), seg_id)
        elif len(quals) == 1:
            e = quals[0][0]
            key = (id(node), seg_id, els[e] if e < len(els) else None)
        else:
            n = len(els)
            key = (id(node), seg_id, *[els[e] if e < n else None for e, _c in quals])
        hit = plans.plans.get(key)
        if hit is None:
            planner = _Planner(self.text_of(els))
            found = planner.walk(node)
            hit = (tuple(planner.ops), found)
            _know(op[k] for op in hit[0] for k in ((1, 4) if op[0] == _LOOP else (1,)))
            plans.plans[key] = hit  # only now can a walk count the keys it names
            stats["plans"] += 1
        ops, found = hit
        if found is None:
            raise _Bail
        counts = self.counts
        pending: list[tuple[tuple[str, str], int]] = []
        for op in ops:
            kind = op[0]
            if kind == _MISSING:
                if counts.get(op[1], 0) < 1:
                    pending.append((op[2], op[3]))
            elif kind == _SEGMENT:
                c = counts.get(op[1], 0) + 1
                counts[op[1]] = c
                if op[5] or c > op[4]:
                    raise _Bail
                if pending:
                    pending = [m for m in pending if m[0] != op[2]]
                    if any(m[1] != op[3] for m in pending):
                        raise _Bail  # a required segment was skipped
            else:
                if op[3]:
                    raise _Bail
                self.reset(op[1])
                c = counts.get(op[1], 0) + 1
                counts[op[1]] = c
                if c > op[2]:
                    raise _Bail
                counts[op[4]] = counts.get(op[4], 0) + 1
                if pending:
                    raise _Bail
        return found


def _check(node: Any, els: list[str], component: str | None, text_of: Any) -> None:
    """Bail unless pyx12's segment validator would find nothing wrong with ``els``
    (``component``: the component separator, None when the interchange holds none)."""
    check = segment_check(node)
    if check is not None and check.ok_values(els, component):
        stats["table"] += 1
        return
    stats["pyx12"] += 1
    _ok, errors = node.is_valid_errors(text_of(els))
    if errors:
        raise _Bail


# Every count key a walk can set: the keys named by the plans built so far and the envelope
# loops. A reset deletes the known keys under its loop instead of scanning the counts.
_KNOWN: set[str] = set()
_DESCENDANTS: dict[str, tuple[str, ...]] = {}
_KNOWN_LOCK = threading.Lock()


def _know(keys: Any) -> None:
    with _KNOWN_LOCK:
        new = set(keys) - _KNOWN
        if new:
            _KNOWN.update(new)
            _DESCENDANTS.clear()


def _descendants(key: str) -> tuple[str, ...]:
    """The known keys ``k`` with ``k.startswith(key + "/")``."""
    found = _DESCENDANTS.get(key)
    if found is None:
        prefix = key + "/"
        with _KNOWN_LOCK:
            found = tuple(k for k in _KNOWN if k.startswith(prefix))
            _DESCENDANTS[key] = found
    return found


_ISA_PATH = X12Path("/ISA_LOOP").format()
_ISA_SEG = X12Path("/ISA_LOOP/ISA").format()
_GS_PATH = X12Path("/ISA_LOOP/GS_LOOP").format()
_GS_SEG = X12Path("/ISA_LOOP/GS_LOOP/GS").format()
_know((_ISA_PATH, _ISA_SEG, _GS_PATH, _GS_SEG))
_PLANS: dict[int, tuple[map_if, _MapPlans]] = {}


def _plans(m: map_if) -> _MapPlans:
    hit = _PLANS.get(id(m))
    if hit is None or hit[0] is not m:
        hit = (m, _MapPlans(m))
        _PLANS[id(m)] = hit
    return hit[1]


def _bad_layout(text: str, term: str) -> bool:
    """pyx12's reader strips only CR/LF before a segment: a leading space or tab, or an empty
    segment (it stops reading there), is something it reports."""
    t = re.escape(term)
    return re.search(t + r"[\r\n]*(?:[ \t]|" + t + ")", text) is not None


def clean_groups(text: str, interchange: Interchange | None, maps: Any) -> tuple | None:
    """The group results of a clean interchange, or None when pyx12 must run over it.

    ``text``: the interchange's text (ISA to IEA); ``interchange``: its tokens from
    :func:`engine.x12.scan.scan` (None when the tokenizer refused it); ``maps``: the
    :class:`engine.x12.validate.MapSet`.
    """
    if interchange is None or interchange.ta1s:
        return None
    seps = interchange.separators
    icvn = interchange.isa[12]
    if icvn not in ("00401", "00501") or _bad_layout(text, seps.segment):
        return None
    try:
        return _walk(text, interchange, maps, icvn)
    except _Bail:
        return None


def _walk(text: str, interchange: Interchange, maps: Any, icvn: str) -> tuple:
    seps = interchange.separators
    esep, comp, term = seps.element, seps.component, seps.segment

    def text_of(els: list[str]) -> pyx12.segment.Segment:
        return pyx12.segment.Segment(esep.join(els), term, esep, comp)

    # the table settles composites only when empty: without a component separator in the
    # segments there are none to look for
    seen = comp if comp in text[ISA_LENGTH:] else None
    control = maps.control(icvn)
    walk = _Walk(text_of)
    step = walk.step
    node = control.getnodebypath("/ISA_LOOP/ISA")
    walk.force(_ISA_PATH, _ISA_SEG)
    _check(node, interchange.isa, comp, text_of)
    groups: list[GroupResult] = []
    gs_ids: set[str] = set()
    for group in interchange.groups:
        gs = group.gs
        gs06 = gs[6]
        if gs06 in gs_ids or group.ge[1:3] != [str(len(group.sets)), gs06]:
            raise _Bail
        gs_ids.add(gs06)
        _plain(gs)
        walk.force(_GS_PATH, _GS_SEG)
        map_file = maps.index.get_filename(icvn, gs[8], gs[1])
        if map_file is None:
            raise _Bail
        plans = _plans(maps.get(map_file))
        node = plans.map.getnodebypath("/ISA_LOOP/GS_LOOP/GS")
        _check(node, gs, seen, text_of)
        sets: list[SetResult] = []
        st_ids: set[str] = set()
        for ts in group.sets:
            segs = ts.segments
            st = segs[0]
            if st[2] in st_ids or ts.se[1:3] != [str(len(segs)), st[2]]:
                raise _Bail
            st_ids.add(st[2])
            settled = 0
            for els in segs:
                if len(els) < 2 or els[-1] == "" or els[0] == "HL":
                    # _plain (a last element that is not empty: the segment is not empty
                    # either); pyx12's reader checks the HL tree: left to it
                    raise _Bail
                node = step(plans, node, els)
                check = segment_check(node)
                if check is not None and check.ok_values(els, seen):
                    settled += 1  # the common case of _check, inline
                else:
                    _check(node, els, seen, text_of)
            stats["segments"] += len(segs)
            stats["table"] += settled
            sets.append(
                SetResult(
                    id=st[1],
                    control_number=st[2].strip(),
                    implementation=st[3] if len(st) > 3 else "",
                    ack_code="A",
                    codes=(),
                    issues=(),
                )
            )
        node = walk.step(plans, node, group.ge)
        _plain(group.ge)
        _check(node, group.ge, seen, text_of)
        groups.append(
            GroupResult(
                functional_id=gs[1],
                sender=gs[2].strip(),
                receiver=gs[3].strip(),
                control_number=gs06,
                version=gs[8],
                declared_sets=len(sets),
                received_sets=len(sets),
                ack_code="A",
                codes=(),
                issues=(),
                sets=tuple(sets),
            )
        )
    iea = interchange.iea
    _plain(iea)
    node = walk.step(plans if interchange.groups else _plans(control), node, iea)
    _check(node, iea, seen, text_of)
    return tuple(groups)


def _plain(els: list[str]) -> None:
    """The reader's own checks of one segment: not empty, no trailing element separator."""
    if len(els) < 2 or els[-1] == "" or not any(els[1:]):
        raise _Bail
