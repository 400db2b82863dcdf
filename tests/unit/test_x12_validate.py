"""X12 validation with pyx12 and the Wharf maps: results, and the 997/999 and TA1 written from
them (DOMAIN §3)."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from pyx12.nodeCounter import NodeCounter

from engine.x12 import mapgen, samplegen
from engine.x12 import validate as validate_mod
from engine.x12.ack import Acknowledgments, acknowledge
from engine.x12.results import InterchangeResult, Issue, Validation
from engine.x12.samplegen import (
    HOSPITAL,
    VENDOR,
    Separators,
    group,
    interchange,
    invoice_810,
    render,
    transaction_set,
)
from engine.x12.ta1 import check_header, ta1_ack_code, ta1_segment
from engine.x12.validate import load_maps, validate

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples" / "x12"
BROKEN = SAMPLES / "broken"
NOW = datetime(2026, 1, 17, 10, 30)
GOOD = ("850", "855", "856", "810")


def segments(data: bytes) -> list[list[str]]:
    """The segments of an acknowledgment written by ``acknowledge`` (separators from its ISA)."""
    text = data.decode()
    out: list[list[str]] = []
    pos = 0
    while pos < len(text):
        while pos < len(text) and text[pos] in " \r\n":
            pos += 1
        if pos >= len(text):
            break
        sep, term = text[pos + 3], text[pos + 105]
        end = text.index(f"{term}", text.index(f"IEA{sep}", pos))
        for piece in text[pos:end].split(term):
            piece = piece.strip("\r\n")
            if piece:
                out.append(piece.split(sep))
        pos = end + 1
    return out


def ids(segs: list[list[str]], tag: str) -> list[list[str]]:
    return [s for s in segs if s[0] == tag]


@dataclass(frozen=True)
class Answer:
    """What ``validate`` found in a file and the 997/999 and TA1 ``acknowledge`` wrote from it."""

    validation: Validation
    answers: Acknowledgments

    @property
    def ok(self) -> bool:
        return self.validation.ok

    @property
    def issues(self) -> tuple[Issue, ...]:
        return self.validation.issues

    @property
    def interchanges(self) -> tuple[InterchangeResult, ...]:
        return self.validation.interchanges

    @property
    def ack(self) -> bytes:
        return self.answers.ack

    @property
    def ta1(self) -> bytes:
        return self.answers.ta1


def answer(
    data: bytes | str, ack: str, control_numbers: Iterator[int] | Callable[[], int]
) -> Answer:
    checked = validate(data)
    return Answer(checked, acknowledge(checked, kind=ack, control_numbers=control_numbers, now=NOW))


def run(data: bytes | str, ack: str = "997") -> Answer:
    return answer(data, ack, itertools.count(1))


# --- good samples ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["4010", "5010"])
@pytest.mark.parametrize("set_id", GOOD)
def test_good_samples_are_accepted(set_id: str, version: str) -> None:
    """Every good 850/855/856/810 sample is accepted and gets an all-A acknowledgment."""
    r = run((SAMPLES / f"{set_id}_{version}.x12").read_bytes(), ack="999")
    assert r.ok, r.issues
    assert r.issues == ()
    segs = segments(r.ack)
    st = ids(segs, "ST")[0]
    # a 004010 group gets a 997; a 005010 group a 999 when asked (DOMAIN §3.4)
    assert st[1] == ("997" if version == "4010" else "999")
    assert ids(segs, "AK2")[0][1] == set_id
    ak5 = ids(segs, "AK5") or ids(segs, "IK5")
    assert ak5 == [[ak5[0][0], "A"]]
    assert ids(segs, "AK9") == [["AK9", "A", "1", "1", "1"]]


@pytest.mark.parametrize("name", ["997_4010", "997_5010", "999_5010", "TA1_4010", "TA1_5010"])
def test_acknowledgment_samples_validate_and_are_not_acknowledged(name: str) -> None:
    """997/999/TA1 are validated against their maps but never acknowledged themselves."""
    r = run((SAMPLES / f"{name}.x12").read_bytes())
    assert r.ok, r.issues
    assert r.ack == b""


def test_ta1_answers_isa14_1_with_accepted() -> None:
    """ISA14 = 1 asks for a TA1: TA1*ISA13*ISA09*ISA10*A*000 in its own interchange."""
    r = run((SAMPLES / "850_4010.x12").read_bytes())
    segs = segments(r.ta1)
    assert [s[0] for s in segs] == ["ISA", "TA1", "IEA"]
    assert segs[1] == ["TA1", "000001001", "260115", "1030", "A", "000"]
    assert segs[2] == ["IEA", "0", segs[0][13]]
    # the answer goes from the receiver of the 850 back to its sender
    assert (segs[0][5], segs[0][6].strip(), segs[0][8].strip()) == ("ZZ", "ACMEMED", "GENHOSP")
    assert r.interchanges[0].ta1_sent and r.interchanges[0].ta1_ack == "A"


def test_no_ta1_when_not_requested_and_fine() -> None:
    r = run((SAMPLES / "810_4010.x12").read_bytes())
    assert r.ta1 == b""
    assert not r.interchanges[0].ta1_sent


# --- broken samples -------------------------------------------------------------------------

# file -> (TA1 notes per interchange ("" = none sent), expectations on the 997/999)
BROKEN_EXPECT: dict[str, dict] = {
    "se_count_810_4010.x12": {
        "ta1": [""],
        "ack": {"AK5": [["AK5", "R", "4"]], "AK9": [["AK9", "R", "1", "1", "0"]]},
        "issue": ("set", "4", "ST", None, None, ""),
    },
    "iea_control_mismatch_850_4010.x12": {
        "ta1": ["E001"],
        "ack": {"AK5": [["AK5", "A"]], "AK9": [["AK9", "A", "1", "1", "1"]]},
        "issue": ("interchange", "001", "IEA", None, None, ""),
    },
    "ge_control_mismatch_856_4010.x12": {
        "ta1": [""],
        "ack": {"AK5": [["AK5", "A"]], "AK9": [["AK9", "R", "1", "1", "1", "4"]]},
        "issue": ("group", "4", "GS", None, None, ""),
    },
    "ge_count_810_4010.x12": {
        "ta1": [""],
        "ack": {"AK9": [["AK9", "R", "2", "1", "1", "5"]]},
        "issue": ("group", "5", "GS", None, None, ""),
    },
    "missing_element_850_5010.x12": {
        "ta1": ["A000"],
        "ack": {
            "IK3": [["IK3", "BEG", "2", "", "8"]],
            "IK4": [["IK4", "3", "324", "1"]],
            "IK5": [["IK5", "R", "5"]],
            "AK9": [["AK9", "R", "1", "1", "0"]],
        },
        "issue": ("element", "1", "BEG", 2, 3, "324"),
    },
    "invalid_qualifier_856_5010.x12": {
        "ta1": [""],
        "ack": {
            "IK3": [["IK3", "LIN", "13", "", "8"]],
            "IK4": [["IK4", "2", "235", "7", "Z!"]],
            "IK5": [["IK5", "R", "5"]],
        },
        "issue": ("element", "7", "LIN", 13, 2, "235"),
    },
    "invalid_date_810_4010.x12": {
        "ta1": [""],
        "ack": {
            "AK3": [["AK3", "BIG", "2", "", "8"]],
            "AK4": [["AK4", "1", "373", "8", "20260231"]],
            "AK5": [["AK5", "R", "5"]],
        },
        "issue": ("element", "8", "BIG", 2, 1, "373"),
    },
    "missing_segment_810_5010.x12": {
        "ta1": [""],
        "ack": {"IK3": [["IK3", "TDS", "14", "", "3"]], "IK5": [["IK5", "R", "5"]]},
        "issue": ("segment", "3", "TDS", 14, None, ""),
    },
    "separator_component_equals_element.x12": {
        "ta1": ["R027"],
        "ack": None,
        "issue": ("interchange", "027", "ISA", None, None, ""),
    },
    "separator_inconsistent.x12": {
        "ta1": ["R026"],
        "ack": None,
        "issue": ("interchange", "026", "ISA", None, None, ""),
    },
    "isa_short_sender.x12": {
        "ta1": ["R006"],
        "ack": None,
        "issue": ("interchange", "006", "ISA", None, None, ""),
    },
    "missing_iea_810_4010.x12": {
        "ta1": ["R023"],
        "ack": None,
        "issue": ("interchange", "023", "IEA", None, None, ""),
    },
    "duplicate_isa13.x12": {
        "ta1": ["", "R025"],
        "ack": {"AK9": [["AK9", "A", "1", "1", "1"]]},
        "issue": ("interchange", "025", "ISA", None, None, ""),
    },
    "unsupported_version_850.x12": {
        "ta1": ["A000"],
        "ack": {
            "AK1": [["AK1", "PO", "1001"]],
            "AK2": [],
            "AK9": [["AK9", "R", "1", "1", "0", "2"]],
        },
        "issue": ("group", "2", "GS", None, None, ""),
    },
    "stray_segment_810_4010.x12": {
        "ta1": ["R024"],
        "ack": None,
        "issue": ("interchange", "024", "REF", None, None, ""),
    },
    "multi_interchange_855_5010_bad_status.x12": {
        "ta1": ["", ""],
        "ack": {
            "AK9": [["AK9", "A", "1", "1", "1"], ["AK9", "R", "1", "1", "0"]],
            "IK3": [["IK3", "ACK", "6", "", "8"]],
            "IK4": [["IK4", "1", "668", "7", "XX"]],
            "IK5": [["IK5", "R", "5"]],
        },
        "issue": ("element", "7", "ACK", 6, 1, "668"),
    },
}


def test_every_broken_sample_has_an_expectation_and_a_readme_line() -> None:
    files = {p.name for p in BROKEN.glob("*.x12")}
    assert files == set(BROKEN_EXPECT)
    readme = (BROKEN / "README.md").read_text()
    for name in files:
        assert f"`{name}`" in readme, name


@pytest.mark.parametrize("name", sorted(BROKEN_EXPECT))
def test_broken_sample_gets_the_expected_answer(name: str) -> None:
    """Each broken sample is rejected with the TA1 note or AK3/AK4/AK5/AK9 (IK…) codes and
    the segment and element positions its README line states."""
    exp = BROKEN_EXPECT[name]
    r = run((BROKEN / name).read_bytes(), ack="999")
    assert not r.ok
    got_ta1 = [f"{ic.ta1_ack}{ic.ta1_code}" if ic.ta1_sent else "" for ic in r.interchanges]
    assert got_ta1 == exp["ta1"]
    ta1_segs = ids(segments(r.ta1), "TA1") if r.ta1 else []
    assert [s[4] + s[5] for s in ta1_segs] == [t for t in exp["ta1"] if t]
    if exp["ack"] is None:
        assert r.ack == b""
    else:
        segs = segments(r.ack)
        for tag, want in exp["ack"].items():
            assert ids(segs, tag) == want, tag
    level, code, seg, position, element, data_element = exp["issue"]
    match = [
        i
        for i in r.issues
        if (i.level, i.code, i.segment, i.position, i.element, i.data_element)
        == (level, code, seg, position, element, data_element)
    ]
    assert match, r.issues


def test_mutually_defined_product_qualifier_is_a_code() -> None:
    """ZZ (Mutually Defined) is a code of element 235: the broken sample's LIN02 with ZZ in
    place of its invalid ``Z!`` is accepted (the sample used ZZ as its invalid code)."""
    bad = (BROKEN / "invalid_qualifier_856_5010.x12").read_bytes()
    assert b"LIN*1*Z!*" in bad
    r = run(bad.replace(b"LIN*1*Z!*", b"LIN*1*ZZ*"), ack="999")
    assert r.ok and not r.issues, r.issues


def test_rejected_interchange_gets_no_functional_ack_and_its_groups_are_not_read() -> None:
    r = run((BROKEN / "isa_short_sender.x12").read_bytes())
    ic = r.interchanges[0]
    assert ic.ta1_ack == "R" and ic.groups == ()
    # the TA1 still reaches the sender: ISA06/ISA08 swapped, TA101 = the inbound ISA13
    segs = segments(r.ta1)
    assert segs[0][6].strip() == "GENHOSP" and segs[0][8].strip() == "ACMEMED"
    assert segs[1][1] == "000008101"


# --- several interchanges, separators -------------------------------------------------------


def _po(
    control: int, version: str, po: str, uom: str = "EA", separators: Separators = Separators()
) -> list[list[str]]:
    body = [
        ["BEG", "00", "SA", po, "", "20260115"],
        ["N1", "ST", "GENERAL HOSPITAL", "UL", samplegen.gln(29)],
        ["PO1", "1", "4", uom, "10.00", "PE", "VC", "GLV-7"],
        ["CTT", "1"],
    ]
    return interchange(
        [
            group(
                "PO",
                control,
                [transaction_set("850", "0001", body)],
                version=version,
                sender=HOSPITAL,
                receiver=VENDOR,
            )
        ],
        control=control,
        version=version,
        sender=HOSPITAL,
        receiver=VENDOR,
        separators=separators,
    )


def test_several_interchanges_with_their_own_separators() -> None:
    """One file, three interchanges (4010 '*' '>' '~', 5010 '|' '^' '\\n', 4010 bad UoM: one
    character where element 355 takes two): each is read with its own separators and answered
    with them, in order."""
    a = render(_po(11, "004010", "PO-A"))
    b_seps = Separators(element="|", component="^", segment="\n", repetition="{")
    b = render(_po(12, "005010", "PO-B", separators=b_seps), b_seps, newline="")
    c = render(_po(13, "004010", "PO-C", uom="Q"))
    r = answer(a + b + c, "999", itertools.count(500))
    assert [ic.control_number for ic in r.interchanges] == ["000000011", "000000012", "000000013"]
    assert [ic.ok for ic in r.interchanges] == [True, True, False]
    bad = r.interchanges[2].groups[0].sets[0]
    assert [
        (i.segment, i.position, i.element, i.data_element, i.code, i.value) for i in bad.issues
    ] == [("PO1", 4, 3, "355", "4", "Q")]
    text = r.ack.decode()
    acks = re.findall(r"ISA.{103}", text, re.DOTALL)
    assert len(acks) == 3
    # the second answer uses the second interchange's separators and version
    assert acks[1][3] == "|" and acks[1][104] == "^" and acks[1][105] == "\n"
    assert acks[1][82] == "{" and acks[1][84:89] == "00501"
    # control numbers come from the iterator, one per envelope, in order
    assert [a[90:99] for a in acks] == ["000000500", "000000502", "000000504"]
    segs = segments(r.ack)
    assert [s[8] for s in ids(segs, "GS")] == ["004010", "005010X231A1", "004010"]
    assert ids(segs, "AK4") == [["AK4", "3", "355", "4", "Q"]]


def test_005010_group_gets_997_when_asked_and_004010_always_997() -> None:
    data = render(_po(21, "005010", "PO-5")) + render(_po(22, "004010", "PO-4"))
    r = run(data, ack="997")
    segs = segments(r.ack)
    assert [s[8] for s in ids(segs, "GS")] == ["005010", "004010"]
    assert [s[1] for s in ids(segs, "ST")] == ["997", "997"]
    # 005010: AK103 carries the version of the acknowledged group; 004010 has two elements
    assert ids(segs, "AK1") == [["AK1", "PO", "21", "005010"], ["AK1", "PO", "22"]]
    r999 = run(data, ack="999")
    assert [s[1] for s in ids(segments(r999.ack), "ST")] == ["999", "997"]


def test_ack_kind_must_be_997_or_999() -> None:
    with pytest.raises(ValueError, match=r"'kind' must be one of 997, 999 \(got '998'\)"):
        acknowledge(validate(b""), kind="998")


def test_partially_accepted_group_is_p() -> None:
    """Two sets in one group, one bad: AK901 = P, AK904 = 1 accepted."""
    good = [["BEG", "00", "SA", "PO-1", "", "20260115"], ["PO1", "1", "1", "EA", "1.00"]]
    bad = [["BEG", "00", "SA", "PO-2", "", "20261315"], ["PO1", "1", "1", "EA", "1.00"]]
    g = group(
        "PO",
        31,
        [transaction_set("850", "0001", good), transaction_set("850", "0002", bad)],
        sender=HOSPITAL,
        receiver=VENDOR,
    )
    r = run(render(interchange([g], control=31, sender=HOSPITAL, receiver=VENDOR)))
    gr = r.interchanges[0].groups[0]
    assert gr.ack_code == "P" and gr.accepted_sets == 1
    segs = segments(r.ack)
    assert ids(segs, "AK9") == [["AK9", "P", "2", "2", "1"]]
    assert ids(segs, "AK5") == [["AK5", "A"], ["AK5", "R", "5"]]
    assert ids(segs, "AK4") == [["AK4", "5", "373", "8", "20261315"]]


def test_bad_value_with_a_separator_is_not_copied_into_ak404() -> None:
    """A composite where a simple element belongs: AK403 = 6, but the bad value holds the
    component separator, so AK404 is left out (it would break the 997)."""
    body = [["BEG", "00", "SA", "PO>1", "", "20260115"], ["PO1", "1", "1", "EA", "1.00"]]
    g = group("PO", 41, [transaction_set("850", "0001", body)], sender=HOSPITAL, receiver=VENDOR)
    r = run(render(interchange([g], control=41, sender=HOSPITAL, receiver=VENDOR)))
    assert ids(segments(r.ack), "AK4") == [["AK4", "3", "324", "6"]]


def test_unknown_functional_group_is_rejected_with_ak905_1() -> None:
    body = [["BGN", "00", "X", "20260115"]]
    g = group("RA", 51, [transaction_set("820", "0001", body)])
    r = run(render(interchange([g], control=51)))
    gr = r.interchanges[0].groups[0]
    assert gr.codes == ("1",) and gr.received_sets == 1 and gr.sets == ()
    assert ids(segments(r.ack), "AK9") == [["AK9", "R", "1", "1", "0", "1"]]


@pytest.mark.parametrize(
    ("data", "code"),
    [(b"", "023"), (b"   \n", "023"), (b"GS*PO*X~", "022"), (b"ISA*00*", "022")],
)
def test_no_interchange_is_reported_not_raised(data: bytes, code: str) -> None:
    r = run(data)
    assert not r.ok
    assert [i.code for i in r.issues] == [code]
    assert r.ack == b"" and r.ta1 == b""


# --- ISA checks and TA1 ---------------------------------------------------------------------

ISA = (
    "ISA*00*          *00*          *ZZ*ACMEMED        *ZZ*GENHOSP        *260117*1030*U*00401"
    "*000000042*1*P*>~"
)


@pytest.mark.parametrize(
    ("old", "new", "code"),
    [
        ("ISA*00*", "ISA*09*", "010"),
        ("*ZZ*ACMEMED", "*XX*ACMEMED", "005"),
        ("ACMEMED        *", "ACMEMED*", "006"),
        ("*ZZ*GENHOSP", "*QQ*GENHOSP", "007"),
        ("GENHOSP        *", "GENHOSP         *", "008"),
        ("*260117*", "*260230*", "014"),
        ("*1030*", "*2460*", "015"),
        ("*U*00401", "*X*00401", "016"),
        ("*00401*", "*0040A*", "017"),
        ("*00401*", "*00305*", "003"),
        ("*000000042*", "*00000004X*", "018"),
        ("*1*P*", "*2*P*", "019"),
        ("*1*P*", "*1*Q*", "020"),
        ("*>~", "**~", "027"),
        ("*>~", "*>>", "004"),
    ],
)
def test_isa_header_problems_have_their_ta1_note(old: str, new: str, code: str) -> None:
    text = ISA.replace(old, new, 1) + "GS*PO*A*B*20260117*1030*1*X*004010~"
    h = check_header(text)
    assert code in [c for c, _ in h.problems], h.problems
    assert ta1_ack_code(code) == "R"


def test_good_isa_has_no_problem_and_its_separators() -> None:
    h = check_header(ISA + "GS*")
    assert h.ok and (h.element, h.component, h.segment) == ("*", ">", "~")
    assert h.end == 106 and h.repetition is None
    isa5 = ISA.replace("*U*00401", "*^*00501")
    h5 = check_header(isa5)
    assert h5.ok and h5.repetition == "^"


def test_isa_problem_message_says_expected_and_got() -> None:
    h = check_header(ISA.replace("ACMEMED        *", "ACMEMED*"))
    assert (
        "006",
        "ISA06 must be 15 characters wide (got 7: 'ACMEMED'); the ISA is 106 "
        "characters including its terminator",
    ) in h.problems


def test_ta1_segment() -> None:
    assert ta1_segment("000000042", "260117", "1030", "021") == [
        "TA1",
        "000000042",
        "260117",
        "1030",
        "E",
        "021",
    ]
    # a broken ISA13/date/time cannot be echoed as is: zeros keep the TA1 valid
    assert ta1_segment("42", "2601", "x", "006")[1:4] == ["000000000", "000101", "0000"]
    with pytest.raises(ValueError, match=r"'note' must be a TA105 code 000..031 \(got '099'\)"):
        ta1_segment("000000042", "260117", "1030", "099")


# --- pyx12 parity, map cache ----------------------------------------------------------------


def _all_samples() -> list[Path]:
    return sorted(SAMPLES.glob("*.x12")) + sorted(BROKEN.glob("*.x12"))


def _mutations() -> list[bytes]:
    base = (SAMPLES / "856_5010.x12").read_text()
    swaps = [
        ("SN1*2*2*EA", "SN1*2*2*EA**3"),  # P0506: SN105 without SN106
        ("TD1*CTN25*1", "TD1**1"),  # C0102 fine, TD101 empty
        ("PRF*4500012399", "PRF*"),  # mandatory missing
        ("N1*SF*ACME MEDICAL SUPPLY*UL", "N1*SF*ACME MEDICAL SUPPLY*UL "),  # trailing space
        ("REF*CN*771234567890", "REF*CN*7712\x0734567890"),  # control character
        ("HL*3*2*I*0", "HL*3*2*I*0*9"),  # too many elements
        ("CTT*4*3", "CTT*4*3*****" + "X" * 90),  # CTT07 too long
        ("DTM*036*20310101", "DTM*036*20310101*1261"),  # bad time
        ("BSN*00*SHP778950*20260117*0900*0004", "BSN*00*SHP778950*20260117*0900*0004**ABC"),
        ("DTM*011*20260117", "~\n".join(["DTM*011*20260117"] * 11)),  # DTM max use 10
        ("HL*4*2*I*0", "HL*4*2*I*0~\nHL*5*4*I*0"),  # an item under an item: HL counts
    ]
    return [base.replace(old, new, 1).encode() for old, new in swaps]


def test_speedups_change_nothing_pyx12_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast segment check only skips pyx12's validator for valid segments, and the string
    keyed loop counter counts like pyx12's: with both turned off (pyx12's validator on every
    segment, its own NodeCounter) the issues are exactly the same."""
    docs = [p.read_bytes() for p in _all_samples()] + _mutations()
    fast = [run(d, ack="999").issues for d in docs]
    monkeypatch.setattr(validate_mod, "segment_check", lambda node: None)
    monkeypatch.setattr(validate_mod, "PathCounter", NodeCounter)
    slow = [run(d, ack="999").issues for d in docs]
    assert fast == slow
    assert sum(1 for f in fast if f) >= 20  # the comparison covers many errors


def test_maps_are_loaded_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    maps = load_maps(fresh=True)
    calls: list[str] = []
    real = validate_mod.pyx12.map_if.load_map_file

    def counting(name, param, path=None):
        calls.append(name)
        return real(name, param, path)

    monkeypatch.setattr(validate_mod.pyx12.map_if, "load_map_file", counting)
    data = (SAMPLES / "810_4010.x12").read_bytes()
    first = run(data)
    assert sorted(calls) == ["810.4010.xml", "x12.control.00401.xml"]
    for _ in range(3):
        assert run(data) == first
    assert len(calls) == 2
    assert load_maps() is maps


def test_shared_maps_carry_no_state_between_documents() -> None:
    """A document full of errors, then a good one, then the bad one again: same answers as
    with freshly loaded maps."""
    bad = (BROKEN / "multi_interchange_855_5010_bad_status.x12").read_bytes()
    good = (SAMPLES / "856_4010.x12").read_bytes()
    load_maps(fresh=True)
    fresh_bad = run(bad, ack="999")
    load_maps(fresh=True)
    fresh_good = run(good)
    seq = [run(bad, ack="999"), run(good), run(bad, ack="999"), run(good)]
    assert seq == [fresh_bad, fresh_good, fresh_bad, fresh_good]


def test_map_files_are_up_to_date_with_mapdefs() -> None:
    """The XML in engine/x12/maps is what mapgen writes from mapdefs (run
    ``python -m engine.x12.mapgen`` after editing mapdefs)."""
    built = mapgen.build()
    on_disk = {p.name: p.read_bytes() for p in mapgen.MAP_PATH.iterdir() if p.suffix == ".xml"}
    assert set(built) == set(on_disk)
    stale = [name for name, data in built.items() if on_disk[name] != data]
    assert stale == []


def test_no_map_checks_units_against_a_list_of_ours() -> None:
    """Element 355 (PO103, IT103, SN103, PO403, ACK03, CTP05's composite…) carries no
    valid_codes in any map, nor a codes.xml set: which units a partner sends is its uom map's
    business (MISSING_MAPPING), not ours to reject."""
    import xml.etree.ElementTree as ET

    units = []
    for path in sorted(mapgen.MAP_PATH.glob("*.xml")):
        root = ET.parse(path).getroot()
        for el in root.iter("element"):
            if el.get("data_ele") == "355":
                units.append(el.get("xid"))
                assert el.find("valid_codes") is None, (path.name, el.get("xid"))
        sets = [c.findtext("data_ele") for c in root.iter("codeset")]
        assert "355" not in sets, path.name
    assert {"PO103", "PO403", "IT103", "SN103", "ACK03"} <= set(units)


def test_map_path_must_hold_maps_xml(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"'map_path' must be a folder holding maps\.xml"):
        validate(b"", map_path=tmp_path)


# --- the big-invoice generator --------------------------------------------------------------


def test_invoice_810_generator_counts_and_totals() -> None:
    data = invoice_810(250, version="005010")
    segs = segments(data)
    it1 = ids(segs, "IT1")
    assert len(it1) == 250
    lines = sum(int(s[2]) * int(s[4].replace(".", "")) for s in it1)
    assert ids(segs, "TDS") == [["TDS", str(lines + 1500)]]
    assert ids(segs, "CTT") == [["CTT", "250"]]
    se = ids(segs, "SE")[0]
    st_at = next(i for i, s in enumerate(segs) if s[0] == "ST")
    se_at = next(i for i, s in enumerate(segs) if s[0] == "SE")
    assert int(se[1]) == se_at - st_at + 1


def test_big_invoice_validates_with_all_lines() -> None:
    r = run(invoice_810(3000))
    assert r.ok, r.issues[:5]
    assert ids(segments(r.ack), "AK9") == [["AK9", "A", "1", "1", "1"]]


def test_big_invoice_with_one_bad_line_names_its_position() -> None:
    """Line 2999's IT1 sits at set position 2 + 6 + 3 * 2998 (ST = 1, six heading segments,
    three segments per line); in the file it is two segments later (ISA, GS). The fault: a
    one-character unit where element 355 takes two."""
    data = invoice_810(3000).replace(b"IT1*2999*11*EA", b"IT1*2999*11*E")
    r = run(data)
    position = 2 + 6 + 3 * 2998
    assert [(i.segment, i.position, i.element, i.code, i.value, i.ordinal) for i in r.issues] == [
        ("IT1", position, 3, "4", "E", position + 2)
    ]


def test_concurrent_validation_gives_the_sequential_answers() -> None:
    """The shared maps are read-only: four threads validating at once answer as one does."""
    docs = [p.read_bytes() for p in _all_samples()] + [invoice_810(400)]
    sequential = [run(d, ack="999") for d in docs]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda d: run(d, ack="999"), docs * 3))
    assert parallel == sequential * 3
