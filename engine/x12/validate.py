"""Validate inbound X12 with pyx12 against the Wharf maps: what is wrong, and where.

::

    result = validate(data)
    result.ok                       # every interchange, group and set accepted
    result.interchanges[0].groups[0].sets[0].issues   # what pyx12 found, with positions
    answers = acknowledge(result, kind="999")   # engine.x12.ack: the 997/999 and TA1 bytes

One call takes a whole file: several interchanges, each with its own separators, several
groups and sets, delimited by :func:`engine.x12.scan.scan` (which also tokenizes them once for
the document readers). For each interchange:

1. its ISA is checked here (:mod:`engine.x12.ta1`); a broken header is answered with a TA1
   ``R`` and nothing else of that interchange is read;
2. pyx12 walks the interchange with the map chosen from (ISA12, GS08, GS01) in ``maps.xml``,
   exactly as its ``x12n_document`` does, and records every error in its error tree;
3. the tree becomes :class:`~engine.x12.results.Issue` records (pyx12's codes, segment id and
   position, element position, data element number, bad value) in the results of
   :mod:`engine.x12.results`, from which :mod:`engine.x12.ack` writes the acknowledgments.

Maps are loaded once per process and map folder (:func:`load_maps`); pyx12 itself re-reads
the map XML, ``dataele.xml`` and ``codes.xml`` for every document. Per document state (loop
counters, the error tree) lives in the walker and error handler created per interchange, and
the map objects are only read (pyx12 caches computed paths on them, the same value every
time), so sharing them between documents and threads is safe.

pyx12 logs each data error with its bad value at ERROR level; the ``pyx12`` logger is raised
to CRITICAL on first use so no message content reaches the logs (the errors are in the result).
"""

from __future__ import annotations

import io
import logging
import threading
from pathlib import Path

import pyx12.error_handler
import pyx12.map_if
import pyx12.map_index
import pyx12.params
import pyx12.x12file
from pyx12.map_if._segment import apply_segment_errors
from pyx12.map_walker import apply_walk_errors, walk_tree

from engine.x12.compiled import clean_groups
from engine.x12.fastcheck import PathCounter, segment_check
from engine.x12.results import GroupResult, InterchangeResult, Issue, SetResult, Validation
from engine.x12.scan import ScannedFile, Span, scan
from engine.x12.ta1 import Header, ta1_ack_code

__all__ = ["DEFAULT_MAP_PATH", "MapSet", "load_maps", "validate"]

DEFAULT_MAP_PATH = Path(__file__).resolve().parent / "maps"
_WS = " \t\r\n"
_ENVELOPE_IDS = frozenset(("ISA", "IEA", "GS", "GE", "TA1"))
_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- map cache
class MapSet:
    """The maps of one map folder, loaded once: ``maps.xml`` and every map used so far."""

    def __init__(self, map_path: Path) -> None:
        self.path = map_path
        self.param = pyx12.params.ParamsBase()  # no config files: charset E, no exclusions
        self.index = pyx12.map_index.map_index(str(map_path))
        self._maps: dict[str, pyx12.map_if.map_if] = {}
        self._lock = threading.Lock()

    def get(self, filename: str) -> pyx12.map_if.map_if:
        m = self._maps.get(filename)
        if m is None:
            with self._lock:
                m = self._maps.get(filename)
                if m is None:
                    m = pyx12.map_if.load_map_file(filename, self.param, str(self.path))
                    self._maps[filename] = m
        return m

    def control(self, icvn: str) -> pyx12.map_if.map_if:
        return self.get("x12.control.00501.xml" if icvn == "00501" else "x12.control.00401.xml")

    def preload(self) -> None:
        """Load every map listed in ``maps.xml`` now (for a service at start-up)."""
        for entry in self.index.maps:
            if entry["map_file"]:
                self.get(entry["map_file"])


_MAPSETS: dict[Path, MapSet] = {}
_MAPSETS_LOCK = threading.Lock()
_QUIET = False


def load_maps(map_path: str | Path | None = None, *, fresh: bool = False) -> MapSet:
    """The cached :class:`MapSet` of ``map_path`` (default: Wharf's maps).

    ``fresh=True`` builds a new one and replaces the cached one (after editing map files).
    """
    global _QUIET
    if not _QUIET:
        logging.getLogger("pyx12").setLevel(logging.CRITICAL)
        _QUIET = True
    path = Path(map_path).resolve() if map_path is not None else DEFAULT_MAP_PATH
    with _MAPSETS_LOCK:
        ms = _MAPSETS.get(path)
        if ms is None or fresh:
            if not (path / "maps.xml").is_file():
                raise FileNotFoundError(
                    f"'map_path' must be a folder holding maps.xml (got {path})"
                )
            ms = MapSet(path)
            _MAPSETS[path] = ms
    return ms


# --------------------------------------------------------------------------- pyx12 run
def _validate_segment(node: pyx12.map_if.segment_if, seg, errh) -> bool:
    check = segment_check(node)
    if check is not None and check.ok(seg):
        return True
    return apply_segment_errors(node, seg, errh)


def _run_pyx12(
    text: str, maps: MapSet, stray: list[tuple[str, int]]
) -> pyx12.error_handler.err_handler:
    """pyx12's ``x12n_document`` loop over one interchange, with cached maps, the fast
    segment check, and unknown groups reported (AK905 = 1/2) instead of aborting.

    Segments found outside ST...SE (other than ISA/GS/GE/IEA/TA1) are appended to ``stray``
    as (segment id, segment number): pyx12 has no set to attach their error to and drops it.
    """
    errh = pyx12.error_handler.err_handler()
    src = pyx12.x12file.X12Reader(io.StringIO(text))
    control_map = maps.control(src.icvn)
    node = control_map.getnodebypath("/ISA_LOOP/ISA")
    walker = walk_tree()
    walker.counter = PathCounter()
    cur_map = None
    icvn = src.icvn
    skipping = False  # inside a group that has no map
    in_set = False
    for seg in src:
        seg_id = seg.get_seg_id()
        if skipping:
            if seg_id == "GE":
                skipping = False
                node = control_map.getnodebypath("/ISA_LOOP/GS_LOOP/GE")
                errh.handle_errors([e for e in src.pop_errors() if e[0] in ("isa", "gs")])
                _close_group(errh, node, seg, src)
                apply_segment_errors(node, seg, errh)
                continue
            if seg_id not in ("GS", "IEA"):
                # Keep envelope-level findings only; the sets of this group are not read.
                errh.handle_errors([e for e in src.pop_errors() if e[0] in ("isa", "gs")])
                continue
            skipping = False  # GE missing: carry on with the next group or the IEA
        if seg_id == "ST":
            in_set = True
        elif seg_id == "SE":
            in_set = False
        elif not in_set and seg_id not in _ENVELOPE_IDS:
            stray.append((seg_id or "", src.get_cur_line()))
        orig_node = node
        if seg_id == "ISA":
            node = control_map.getnodebypath("/ISA_LOOP/ISA")
            walker.forceWalkCounterToLoopStart("/ISA_LOOP", "/ISA_LOOP/ISA")
        elif seg_id == "GS":
            node = control_map.getnodebypath("/ISA_LOOP/GS_LOOP/GS")
            walker.forceWalkCounterToLoopStart("/ISA_LOOP/GS_LOOP", "/ISA_LOOP/GS_LOOP/GS")
        else:
            node, _pop, _push, walk_errors = walker.walk_errors(
                node, seg, src.get_seg_count(), src.get_cur_line(), src.get_ls_id()
            )
            apply_walk_errors(errh, walk_errors)
        if node is None:
            node = orig_node
            continue
        if seg_id == "ISA":
            errh.add_isa_loop(seg, src)
            errh.handle_errors(src.pop_errors())
        elif seg_id == "IEA":
            errh.handle_errors(src.pop_errors())
            errh.close_isa_loop(node, seg, src)
        elif seg_id == "GS":
            fic, vriic = seg.get_value("GS01"), seg.get_value("GS08")
            map_file = maps.index.get_filename(icvn, vriic, fic)
            errh.add_gs_loop(seg, src)
            errh.handle_errors(src.pop_errors())
            if map_file is None:
                known_version = any(
                    m["icvn"] == icvn and m["vriic"] == vriic for m in maps.index.maps
                )
                if known_version:
                    errh.gs_error("1", f"functional group {fic!r} is not supported")
                else:
                    errh.gs_error("2", f"version {vriic!r} is not supported for {fic!r}")
                apply_segment_errors(node, seg, errh)
                skipping = True
                continue
            cur_map = maps.get(map_file)
            node = cur_map.getnodebypath("/ISA_LOOP/GS_LOOP/GS")
        elif seg_id == "GE":
            errh.handle_errors(src.pop_errors())
            _close_group(errh, node, seg, src)
        elif seg_id == "ST":
            errh.add_st_loop(seg, src)
            errh.handle_errors(src.pop_errors())
        elif seg_id == "SE":
            errh.handle_errors(src.pop_errors())
            errh.close_st_loop(node, seg, src)
        else:
            errh.add_seg(node, seg, src.get_seg_count(), src.get_cur_line(), src.get_ls_id())
            errh.handle_errors(src.pop_errors())
        _validate_segment(node, seg, errh)
    src.cleanup()
    errh.handle_errors(src.pop_errors())
    src.close()
    return errh


def _close_group(errh, node, seg, src) -> None:
    try:
        errh.close_gs_loop(node, seg, src)
    except ValueError:  # GE01 is not a number: pyx12 cannot int() it; the map reports it
        gs = errh.cur_gs_node
        gs.cur_line_ge = src.get_cur_line()
        gs.ack_code = "R"
        gs.st_count_orig = None
        gs.st_count_recv = src.st_count
        errh.cur_seg_node = gs
        errh.seg_node_added = True


# --------------------------------------------------------------------------- tree -> results
_SEG_ELEMENT_TA1 = {
    "ISA": {1: "010", 2: "011", 3: "012", 4: "013", 5: "005", 6: "006", 7: "007", 8: "008",
            9: "014", 10: "015", 11: "016", 12: "017", 13: "018", 14: "019", 15: "020",
            16: "027"},
    "IEA": {1: "021", 2: "018"},
}  # fmt: skip
_GROUP_ELEMENT_CODE = {("GS", 6): "6", ("GS", 8): "2", ("GE", 1): "5", ("GE", 2): "4"}
_SET_ELEMENT_CODE = {("ST", 1): "6", ("ST", 2): "7", ("SE", 1): "4", ("SE", 2): "3"}


def _which(err_str: str, *ids: str) -> str:
    """pyx12 element messages name the element as ``(ISA05)``; find which segment it is."""
    for seg_id in ids:
        if f"({seg_id}" in err_str:
            return seg_id
    return ids[0]


def _element_issues(
    level: str, ele, seg_id: str, position: int | None, ordinal: int | None, code_map=None
) -> list[Issue]:
    out = []
    for err_cde, err_str, bad_value in ele.errors:
        sid = seg_id or ""
        code = err_cde
        if code_map is not None:
            sid = _which(err_str, *code_map[0])
            code = code_map[1](sid, ele.ele_pos, err_cde)
        out.append(
            Issue(
                level=level,
                code=code,
                message=err_str,
                segment=sid,
                position=position,
                element=ele.ele_pos,
                component=ele.subele_pos,
                data_element=ele.ele_ref_num or "",
                value=bad_value,
                ordinal=ordinal,
            )
        )
    return out


def _set_result(err_st, base: int) -> SetResult:
    issues: list[Issue] = []
    codes: list[str] = []
    for code, msg in err_st.errors:
        issues.append(Issue("set", code, msg, "ST", ordinal=base + err_st.get_cur_line()))
        codes.append(code)
    for ele in err_st.elements:
        new = _element_issues(
            "set",
            ele,
            "",
            None,
            base + err_st.get_cur_line(),
            (("ST", "SE"), lambda sid, pos, c: _SET_ELEMENT_CODE.get((sid, pos), c)),
        )
        issues += new
        codes += [i.code for i in new]
    seg_issue = False
    for err_seg in err_st.children:
        ordinal = base + err_seg.cur_line if err_seg.cur_line is not None else None
        for code, msg, value in err_seg.errors:
            issues.append(
                Issue(
                    "segment",
                    code,
                    msg,
                    err_seg.seg_id or "",
                    err_seg.seg_count,
                    value=value,
                    ordinal=ordinal,
                )
            )
            seg_issue = True
        for ele in err_seg.elements:
            new = _element_issues("element", ele, err_seg.seg_id or "", err_seg.seg_count, ordinal)
            issues += new
            seg_issue = seg_issue or bool(new)
    if seg_issue:
        codes.append("5")
    ack_code = "R" if issues else "A"
    st = err_st.seg_data
    return SetResult(
        id=st.get_value("ST01") or "",
        control_number=(st.get_value("ST02") or "").strip(),
        implementation=st.get_value("ST03") or "",
        ack_code=ack_code,
        codes=tuple(sorted(set(codes), key=_code_order)),
        issues=tuple(issues),
    )


def _code_order(code: str) -> tuple[int, str]:
    return (int(code), "") if code.isdigit() else (1000, code)


def _group_result(err_gs, base: int) -> GroupResult:
    issues: list[Issue] = []
    for code, msg in err_gs.errors:
        issues.append(Issue("group", code, msg, "GS", ordinal=base + err_gs.get_cur_line()))
    for ele in err_gs.elements:
        issues += _element_issues(
            "group",
            ele,
            "",
            None,
            base + err_gs.get_cur_line(),
            (("GS", "GE"), lambda sid, pos, c: _GROUP_ELEMENT_CODE.get((sid, pos), "1")),
        )
    sets = tuple(_set_result(st, base) for st in err_gs.children)
    accepted = sum(1 for s in sets if s.ok)
    if issues or (sets and accepted == 0):
        ack_code = "R"
    elif accepted == len(sets):
        ack_code = "A"
    else:
        ack_code = "P"
    gs = err_gs.seg_data
    declared = err_gs.st_count_orig if err_gs.is_closed() else None
    received = err_gs.st_count_recv if err_gs.is_closed() else len(err_gs.children)
    return GroupResult(
        functional_id=gs.get_value("GS01") or "",
        sender=(gs.get_value("GS02") or "").strip(),
        receiver=(gs.get_value("GS03") or "").strip(),
        control_number=gs.get_value("GS06") or "",
        version=gs.get_value("GS08") or "",
        declared_sets=declared if isinstance(declared, int) else None,
        received_sets=max(received or 0, len(sets)),
        ack_code=ack_code,
        codes=tuple(sorted({i.code for i in issues}, key=_code_order)),
        issues=tuple(issues),
        sets=sets,
    )


# Interchange findings that reject the interchange, most serious first.
_TA1_PRIORITY = ("022", "024", "023", "025", "026", "027", "004", "003", "017")


def _pick_note(codes: list[str]) -> str:
    if not codes:
        return "000"
    for c in _TA1_PRIORITY:
        if c in codes:
            return c
    rejecting = [c for c in codes if ta1_ack_code(c) == "R"]
    return rejecting[0] if rejecting else codes[0]


def _interchange(span: Span, maps: MapSet, base: int, seen: set) -> InterchangeResult:
    h = span.header
    f = h.field
    issues = [Issue("interchange", code, msg, "ISA", ordinal=base + 1) for code, msg in h.problems]
    groups: tuple[GroupResult, ...] = ()
    key = (f(5), f(6).strip(), f(13))
    if h.ok and key in seen:
        issues.append(
            Issue(
                "interchange",
                "025",
                f"interchange control number {f(13)} was already used by this sender in this file",
                "ISA",
                ordinal=base + 1,
            )
        )
    seen.add(key)
    if not issues:
        issues += _check_first_segment(span, base)
    clean = clean_groups(span.text, span.interchange, maps) if not issues else None
    if clean is not None:
        groups = clean
    elif not issues:
        stray: list[tuple[str, int]] = []
        try:
            errh = _run_pyx12(span.text, maps, stray)
        except Exception as exc:  # any pyx12 failure must still be answered (TA1 024)
            _log.warning("pyx12 could not read interchange %s: %s", f(13), type(exc).__name__)
            issues.append(
                Issue(
                    "interchange",
                    "024",
                    f"the interchange cannot be read ({type(exc).__name__}: {exc})",
                    "ISA",
                    ordinal=base + 1,
                )
            )
        else:
            for seg_id, line in stray:
                issues.append(
                    Issue(
                        "interchange",
                        "024",
                        f"segment {seg_id[:3]!r} is outside a transaction set (ST...SE)",
                        seg_id[:3],
                        ordinal=base + line,
                    )
                )
            for err_isa in errh.children:
                for code, msg in err_isa.errors:
                    issues.append(
                        Issue(
                            "interchange",
                            code,
                            msg,
                            "IEA" if code in ("001", "021", "023") else "ISA",
                            ordinal=base + err_isa.get_cur_line(),
                        )
                    )
                for ele in err_isa.elements:
                    issues += _element_issues(
                        "interchange",
                        ele,
                        "",
                        None,
                        base + 1,
                        (("ISA", "IEA"), lambda sid, pos, c: _SEG_ELEMENT_TA1[sid].get(pos, "024")),
                    )
                groups += tuple(_group_result(g, base) for g in err_isa.children)
                if any(not g.functional_id or not g.control_number for g in groups):
                    issues.append(
                        Issue(
                            "interchange",
                            "024",
                            "a GS segment lacks GS01 or GS06",
                            "GS",
                            ordinal=base + 1,
                        )
                    )
    note = _pick_note([i.code for i in issues])
    if ta1_ack_code(note) == "R":
        groups = ()  # a rejected interchange is not processed: no 997/999 for its groups
    return InterchangeResult(
        control_number=f(13),
        version=f(12),
        sender=(f(5), f(6).strip()),
        receiver=(f(7), f(8).strip()),
        date=f(9),
        time=f(10),
        usage=f(15),
        ack_requested=f(14) == "1",
        ta1_code=note,
        ta1_sent=h.fields is not None and (note != "000" or f(14) == "1"),
        issues=tuple(issues),
        groups=groups,
        separators=(h.element, h.component, h.segment, h.repetition),
    )


def _check_first_segment(span: Span, base: int) -> list[Issue]:
    """The segment after the ISA must be GS, TA1 or IEA written with the ISA's separators;
    otherwise the separators of the data differ from the ones the ISA declares."""
    h = span.header
    text = span.text
    at, n = h.end - h.start, len(text)
    while at < n and text[at] in _WS:
        at += 1
    j = text.find(h.segment, at)  # the first segment only: the rest of the text is not copied
    first = text[at:] if j < 0 else text[at:j]
    tag = first.split(h.element)[0]
    if tag in ("GS", "TA1", "IEA") and not any(c in first for c in "\r\n"):
        return []
    if any(c in first for c in "\r\n") and first[:2] in ("GS", "TA", "IE"):
        code, msg = (
            "004",
            (
                f"the segments after the ISA are not ended by its segment terminator {h.segment!r} "
                "(a line break comes first)"
            ),
        )
    elif first[:2] == "GS" or first[:3] in ("TA1", "IEA"):
        got = first[3] if first.startswith(("TA1", "IEA")) else first[2:3]
        code, msg = (
            "026",
            (
                f"the segments after the ISA separate elements with {got!r}, not with the ISA's "
                f"element separator {h.element!r}"
            ),
        )
    else:
        code, msg = "024", f"the ISA must be followed by GS, TA1 or IEA (got {tag[:10]!r})"
    return [Issue("interchange", code, msg, "ISA", ordinal=base + 2)]


def validate(raw: bytes | str | ScannedFile, *, map_path: str | Path | None = None) -> Validation:
    """Validate every interchange of ``raw``; what was found, per interchange, group and set.

    ``raw``: the file, or what :func:`engine.x12.scan.scan` made of it (a caller that also
    reads the documents scans once and passes the result here). ``map_path``: the pyx12 map
    folder (default: Wharf's ``engine/x12/maps``). Nothing is written here:
    :func:`engine.x12.ack.acknowledge` writes the 997/999 and TA1 from the result.
    """
    maps = load_maps(map_path)
    scanned = raw if isinstance(raw, ScannedFile) else scan(raw)
    results: list[InterchangeResult] = []
    seen: set = set()
    base = 0
    for span in scanned.spans:
        results.append(_interchange(span, maps, base, seen))
        sep = span.header.segment or "~"
        base += span.text.count(sep) if sep else 0
    if not results:
        results.append(
            _interchange(
                Span(
                    Header(0, None, "", "", "", 0, (("023", "the data holds no interchange"),)),
                    0,
                    "",
                ),
                maps,
                0,
                seen,
            )
        )
    return Validation(tuple(results))
