"""The compiled clean-interchange check (engine.x12.compiled) against pyx12 itself: for every
sample, every broken and third-party file, and a few thousand one-segment mutations of the
good samples, ``validate`` with the compiled check gives exactly the results (and so the
997/999 and TA1 bytes) it gives when pyx12 walks every interchange."""

from __future__ import annotations

import itertools
from datetime import datetime
from pathlib import Path

import pytest

from engine.x12 import compiled, fastcheck
from engine.x12 import validate as validate_mod
from engine.x12.ack import acknowledge
from engine.x12.samplegen import invoice_810
from engine.x12.validate import validate

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "x12"
NOW = datetime(2026, 1, 17, 10, 30)
GOOD = [f"{s}_{v}.x12" for s in ("810", "850", "855", "856") for v in ("4010", "5010")]


def _segments(text: str) -> tuple[str, list[str], str]:
    """(ISA, the segments after it, terminator) of a one-interchange sample."""
    term = text[105]
    rest = [s.strip("\r\n") for s in text[106:].split(term)]
    return text[:106], [s for s in rest if s], term


def _mutations(text: str) -> list[str]:
    """One change at a time: each segment deleted, doubled, swapped with the next, repeated
    twelve times, its first elements emptied or replaced with a bad value or a composite, an
    element appended, a trailing separator, a leading space."""
    isa, segs, term = _segments(text)
    sep = isa[3]
    out: list[list[str]] = []

    def put(i: int, *new: str, drop: int = 1) -> None:
        out.append([*segs[:i], *new, *segs[i + drop :]])

    for i, seg in enumerate(segs):
        els = seg.split(sep)
        put(i)
        put(i, seg, seg)
        put(i, *[seg] * 12)
        if i + 1 < len(segs):
            put(i, segs[i + 1], seg, drop=2)
        for j in (1, 2, 3):
            if j < len(els):
                for bad in ("", "@@", "9" * 40, f"A{isa[104]}B"):
                    put(i, sep.join([*els[:j], bad, *els[j + 1 :]]))
        put(i, seg + sep + "X")
        put(i, seg + sep)
        put(i, " " + seg)
    return [isa + "".join(s + term + "\n" for s in m) for m in out]


def _answers(data: str | bytes) -> tuple:
    checked = validate(data)
    out = [checked]
    for kind in ("997", "999"):
        try:
            acks = acknowledge(checked, kind=kind, control_numbers=itertools.count(1), now=NOW)
        except ValueError as exc:  # 999 for a 004010 group: the same refusal both ways
            out.append(str(exc))
        else:
            out.append((acks.ack, acks.ta1))
    return tuple(out)


def _corpus() -> list[str | bytes]:
    files = sorted(SAMPLES.glob("*.x12")) + sorted((SAMPLES / "broken").glob("*.x12"))
    files += sorted((SAMPLES / "thirdparty").glob("*.x12"))
    docs: list[str | bytes] = [p.read_bytes() for p in files]
    for name in GOOD:
        docs += _mutations((SAMPLES / name).read_text())
    docs += _mutations(invoice_810(3).decode())
    return docs


def test_compiled_check_gives_pyx12s_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = _corpus()
    before = dict(compiled.stats)
    fast = [_answers(d) for d in docs]
    settled = compiled.stats["segments"] - before["segments"]
    monkeypatch.setattr(validate_mod, "clean_groups", lambda *a: None)
    slow = [_answers(d) for d in docs]
    for doc, f, s in zip(docs, fast, slow, strict=True):
        assert f == s, doc
    clean = sum(1 for s in slow if s[0].ok)
    rejected = sum(1 for s in slow if not s[0].ok)
    assert clean >= 100 and rejected >= 1000  # the comparison covers both sides
    assert settled > 0  # and the compiled check did answer for the clean ones


def test_big_clean_invoice_never_reaches_pyx12s_reader_or_walker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Work per segment: a clean 2,000-line 810 is settled from the compiled tables; the walk
    plans are built once per (node, segment, qualifier), not per line, and pyx12's own segment
    validator only sees the envelope segments the table leaves to it (ISA16 is a separator)."""
    data = invoice_810(2000)

    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("pyx12's reader must not run for a clean interchange")

    monkeypatch.setattr(validate_mod.pyx12.x12file, "X12Reader", refuse)
    validate(data)  # plans for this map built (or already there)
    before = dict(compiled.stats)
    checked = validate(data)
    assert checked.ok and len(checked.interchanges[0].groups[0].sets) == 1
    work = {k: compiled.stats[k] - before[k] for k in before}
    assert work["plans"] == 0
    assert work["segments"] == 3 * 2000 + 12
    assert work["pyx12"] <= 2
    assert work["table"] + work["pyx12"] == work["segments"] + 4  # and ISA, GS, GE, IEA


def test_a_bad_line_in_a_big_invoice_is_still_reported_by_pyx12() -> None:
    data = invoice_810(500).decode().replace("IT1*250*", "IT1*250**", 1)
    position = data[: data.index("IT1*250*")].count("~") - 1  # ISA and GS precede ST (1)
    checked = validate(data)
    assert not checked.ok
    issues = checked.interchanges[0].groups[0].sets[0].issues
    assert {(i.segment, i.position) for i in issues} == {("IT1", position)}


TRICKY = [
    "A", "a", "AB", "A ", " A", "A B", "1", "01", "-1", "1-", "--1", "1.", ".5", "-.5", "1.5",
    "-1.50", "1..5", "1e5", "+1", "-", ".", "\x07", "A\x07", "\x7f", "é", "ÀB", "١", "1,000",
    "20260117", "2026013", "99999999", "0930", "2561", "A~B", "^", "`", "{}", "#$", "%", "!",
    "9" * 30, "X" * 80,
]  # fmt: skip


def test_specialised_element_tests_answer_as_the_general_one() -> None:
    """Every element rule of every map: the per-type test (a regular expression and lengths)
    gives the general test's answer (pyx12's own type check) for awkward values."""
    maps = validate_mod.load_maps()
    maps.preload()
    rules = 0
    for m in {id(m): m for m in maps._maps.values()}.values():
        stack = [m]
        while stack:
            node = stack.pop()
            for child in (c for pos in sorted(node.pos_map) for c in node.pos_map[pos]):
                if child.is_loop():
                    stack.append(child)
                    continue
                check = fastcheck.segment_check(child)
                for rule in check.rules if check is not None else ():
                    if isinstance(rule, fastcheck._ElementRule):
                        rules += 1
                        for value in TRICKY:
                            assert rule.fast(value) == rule.ok(value), (child.id, value)
    assert rules > 500
