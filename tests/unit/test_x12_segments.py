"""X12 tokenizer: separators from the ISA (DOMAIN §3.1), envelopes, TA1 note codes, and work
linear in the size of the document."""

from __future__ import annotations

import pytest

from engine.errors import X12EnvelopeError, X12Error
from engine.x12.segments import (
    detect_separators,
    line_col,
    parse_interchanges,
    transaction_sets,
)
from tests.steps import count_steps

# DOMAIN §3.4 composed examples (the line break after each ~ is for readability).
EX_850 = """\
ISA*00*          *00*          *ZZ*HOSPITALID     *ZZ*VENDORID       *260115*1030*U*00401*000000001*1*P*>~
GS*PO*HOSPITALID*VENDORID*20260115*1030*1*X*004010~
ST*850*0001~
BEG*00*SA*4500012345**20260115~
CUR*BY*USD~
REF*DP*OR-SURG~
PER*BD*JANE BUYER*TE*5555550100~
DTM*002*20260120~
N1*BT*GENERAL HOSPITAL*UL*0614141000012~
N1*ST*GENERAL HOSPITAL OR DOCK*UL*0614141000029~
N1*VN*ACME ORTHO INC*92*V0042~
PO1*1*2*BX*125.00*PE*VC*ORTH-SCR-35*UK*10614141999993*IN*100234~
PID*F****BONE SCREW 3.5MM BX/10~
PO4*10*1*EA~
PO1*2*5*EA*12.50*PE*VC*GLV-7*IN*100777~
PID*F****SURGICAL GLOVE SZ 7~
CTT*2*7~
AMT*TT*312.50~
SE*17*0001~
GE*1*1~
IEA*1*000000001~
"""

EX_999 = """\
ISA*00*          *00*          *ZZ*HOSPITALID     *ZZ*VENDORID       *260115*1030*^*00501*000000008*1*P*>~
GS*FA*HOSPITALID*VENDORID*20260115*1030*8*X*005010X231A1~
ST*999*0001~
AK1*SH*1*005010~
AK2*856*0001~
IK3*LIN*15**8~
IK4*6*235*7*ZZ~
IK5*R*5~
AK9*R*1*1*0~
SE*8*0001~
GE*1*8~
IEA*1*000000008~
"""

EX_997 = """\
ISA*00*          *00*          *ZZ*VENDORID       *ZZ*HOSPITALID     *260115*1030*U*00401*000000007*1*P*>~
GS*FA*VENDORID*HOSPITALID*20260115*1030*7*X*004010~
ST*997*0001~
AK1*PO*1~
AK2*850*0001~
AK5*A~
AK9*A*1*1*1~
SE*6*0001~
GE*1*7~
IEA*1*000000007~
"""

EX_TA1 = """\
ISA*00*          *00*          *ZZ*VENDORID       *ZZ*HOSPITALID     *260115*1030*U*00401*000000009*0*P*>~
TA1*000000001*260115*1030*A*000~
IEA*0*000000009~
"""


def resep(text: str, element: str, component: str, terminator: str, after: str = "") -> str:
    """The example rewritten with other delimiters (its data holds none of * > ~)."""
    out = text.replace("~\n", "\x00").replace("*", element).replace(">", component)
    return out.replace("\x00", terminator + after)


def test_separators_are_read_from_the_isa_positions() -> None:
    """Element = index 3, component = 104, terminator = 105 (DOMAIN §3.1), never assumed."""
    seps, isa = detect_separators(EX_850)
    assert (seps.element, seps.component, seps.segment) == ("*", ">", "~")
    assert seps.repetition is None  # 00401: ISA11 is the standards id 'U'
    assert len(isa) == 17 and isa[13] == "000000001"


def test_repetition_separator_from_isa11_from_00402_on() -> None:
    """In 00501 ISA11 is the repetition separator; composites split on ISA16."""
    seps, _ = detect_separators(EX_999)
    assert seps.repetition == "^"
    text = EX_999.replace("IK4*6*235*7*ZZ", "IK4*6>1*235*7*ZZ^YY")
    (_, _, ts) = next(transaction_sets(text))
    ik4 = ts.segments[4]
    assert ts.components(ik4[1]) == ["6", "1"]
    assert ts.repeats(ik4[4]) == ["ZZ", "YY"]
    (_, _, ts4010) = next(transaction_sets(EX_850))
    assert ts4010.repeats("A^B") == ["A^B"]  # 00401: no repetition separator


@pytest.mark.parametrize(
    ("element", "component", "terminator", "after"),
    [
        ("*", ">", "~", ""),
        ("*", ">", "~", "\r\n"),
        ("*", ">", "~", "\n"),
        ("|", "^", "\n", ""),
        ("|", ">", "~", "\r\n"),
        ("^", ":", "'", ""),
        ("\x1d", "\x1f", "\x1e", ""),
        ("*", ">", "\r", "\n"),
    ],
    ids=[
        "contiguous",
        "crlf",
        "lf",
        "pipe-caret-newline",
        "pipe-crlf",
        "caret-quote",
        "ctrl",
        "cr-terminator-then-lf",
    ],
)
def test_any_delimiters_and_line_endings(
    element: str, component: str, terminator: str, after: str
) -> None:
    """The same 850 tokenizes identically whatever the delimiters and line breaks."""
    text = resep(EX_850, element, component, terminator, after)
    (ic,) = parse_interchanges(text)
    assert ic.separators.element == element
    assert ic.separators.component == component
    assert ic.separators.segment == terminator
    (group,) = ic.groups
    (ts,) = group.sets
    assert ts.id == "850" and ts.control_number == "0001"
    assert [s[0] for s in ts.segments][:4] == ["ST", "BEG", "CUR", "REF"]
    assert ts.segments[9] == [
        "PO1", "1", "2", "BX", "125.00", "PE", "VC", "ORTH-SCR-35", "UK", "10614141999993", "IN", "100234",
    ]  # fmt: skip
    assert ts.segment_count_ok and ts.control_number_ok
    assert group.set_count_ok and group.control_number_ok
    # Offsets point at the segment in the text, past any CR/LF.
    for seg, offset in zip(ts.segments, ts.offsets, strict=True):
        assert text.startswith(seg[0] + element, offset)


def test_segment_positions_count_st_as_one() -> None:
    """positions follow AK3/IK3: ST = 1, so the first PO1 is position 10 in the example."""
    (_, _, ts) = next(transaction_sets(EX_850))
    assert ts.segments[9][0] == "PO1" and ts.position(9) == 10
    assert ts.body[0][0] == "BEG" and ts.se[0] == "SE"


def test_several_interchanges_with_their_own_separators() -> None:
    """Each interchange of a file brings its own delimiters; all are returned in order."""
    text = EX_850 + "\r\n" + resep(EX_997, "|", "^", "\n") + EX_999
    ics = parse_interchanges(text)
    assert [ic.control_number for ic in ics] == ["000000001", "000000007", "000000008"]
    assert [ic.separators.element for ic in ics] == ["*", "|", "*"]
    assert [ic.separators.segment for ic in ics] == ["~", "\n", "~"]
    assert [ts.id for ic in ics for _, ts in ic.sets()] == ["850", "997", "999"]
    assert ics[1].groups[0].sets[0].segments[2] == ["AK2", "850", "0001"]
    assert ics[0].key == ("HOSPITALID", "VENDORID", "000000001")
    assert ics[0].ack_requested and ics[0].usage == "P"


def test_several_groups_and_sets_in_one_interchange() -> None:
    """GS…GE groups and ST…SE sets nest; counts are checked, not assumed."""
    body = EX_850.split("GS*", 1)[1].rsplit("IEA*", 1)[0]
    group2 = ("GS*" + body).replace("*1*X*004010", "*2*X*004010").replace("GE*1*1", "GE*1*2")
    text = EX_850.rsplit("IEA*", 1)[0] + group2 + "IEA*2*000000001~"
    (ic,) = parse_interchanges(text)
    assert [g.control_number for g in ic.groups] == ["1", "2"]
    assert all(g.control_number_ok for g in ic.groups)


def test_ta1_only_interchange() -> None:
    """A TA1 interchange has no groups and IEA01 = 0."""
    (ic,) = parse_interchanges(EX_TA1)
    assert ic.groups == () and ic.ta1s[0][4] == "A"


def test_bytes_with_bom_and_latin1() -> None:
    """Bytes are decoded (UTF-8, else Latin-1) and a BOM is dropped."""
    data = b"\xef\xbb\xbf" + EX_850.replace("SURGICAL", "CHIRURGICAL\xe9").encode("latin-1")
    (_, _, ts) = next(transaction_sets(data))
    assert ts.segments[13][5] == "CHIRURGICAL\xe9 GLOVE SZ 7"


def test_wrong_counts_are_recorded_not_raised() -> None:
    """SE01/GE01 mismatches belong in a 997/999, so the tokenizer reports them as flags."""
    text = EX_850.replace("SE*17*0001", "SE*16*0002").replace("GE*1*1", "GE*2*9")
    (ic,) = parse_interchanges(text)
    ts = ic.groups[0].sets[0]
    assert not ts.segment_count_ok and not ts.control_number_ok
    assert not ic.groups[0].set_count_ok and not ic.groups[0].control_number_ok


ISA_OK = EX_850.splitlines()[0]


@pytest.mark.parametrize(
    ("text", "ta1", "words"),
    [
        (EX_850.replace("*ZZ*VENDORID       *", "*ZZ*VENDORID*"), "008", "ISA08 must be 15"),
        (EX_850.replace("*ZZ*HOSPITALID     *", "*ZZ*HOSPITALID    *"), "006", "ISA06 must be 15"),
        (EX_850.replace("*000000001*1*P", "*00000001X*1*P"), "018", "ISA13"),
        (EX_850.replace("*260115*1030*", "*261315*1030*"), "014", "ISA09"),
        (EX_850.replace("*260115*1030*", "*260115*2560*"), "015", "ISA10"),
        (EX_850.replace("*000000001*1*P", "*000000001*2*P"), "019", "ISA14"),
        (EX_850.replace("*1*P*>", "*1*X*>"), "020", "ISA15"),
        (EX_850.replace("*P*>~", "*P*A~", 1), "027", "ISA16"),
        (EX_850.replace("*P*>~", "*P*>X", 1), "004", "terminator"),
        ("ISA1" + EX_850[4:], "026", "element separator"),
        (EX_850[:80], "023", "106"),
        (EX_850.replace("IEA*1*000000001~\n", ""), "023", "IEA"),
        (EX_850.replace("IEA*1*000000001", "IEA*1*000000002"), "001", "IEA02"),
        (EX_850.replace("IEA*1*000000001", "IEA*2*000000001"), "021", "IEA01"),
        (EX_850.replace("GE*1*1~\n", ""), "024", "GE missing"),
        (EX_850.replace("SE*17*0001~\n", ""), "024", "SE missing"),
        (EX_850.replace("ST*850*0001~\n", ""), "024", "inside a transaction set"),
        (
            EX_850.replace("GS*PO*HOSPITALID*VENDORID*20260115*1030*1*X*004010", "GS*PO*H"),
            "024",
            "GS",
        ),
        ("XSA" + EX_850[3:], "022", "ISA"),
        ("", "023", "empty"),
        (EX_850.replace("GE*1*1~\n", "GE*1*1~\nIEA~\n"), "024", "expected IEA01 and IEA02"),
    ],
    ids=[
        "isa-receiver-short",
        "isa-sender-short",
        "isa13-not-digits",
        "isa09-bad-date",
        "isa10-bad-time",
        "isa14",
        "isa15",
        "isa16-alnum",
        "terminator-alnum",
        "element-sep-digit",
        "truncated-isa",
        "no-iea",
        "iea-control-mismatch",
        "iea-group-count",
        "ge-missing",
        "se-missing",
        "segment-outside-set",
        "gs-too-short",
        "not-isa",
        "empty",
        "bare-iea-before-the-trailer",
    ],
)
def test_envelope_errors_carry_the_ta1_code(text: str, ta1: str, words: str) -> None:
    """A broken envelope raises X12EnvelopeError with the TA105 note code and what was wrong."""
    with pytest.raises(X12EnvelopeError) as info:
        parse_interchanges(text)
    assert info.value.ta1_code == ta1
    assert words in str(info.value)
    assert isinstance(info.value, X12Error)


def test_isa_length_error_names_the_expected_and_received_width() -> None:
    """'ISA not 106 characters': the message says which element, what width, what came."""
    text = EX_850.replace("*ZZ*HOSPITALID     *", "*ZZ*HOSPITALID*")
    with pytest.raises(X12EnvelopeError) as info:
        parse_interchanges(text)
    assert "ISA06 must be 15 characters (got 10: 'HOSPITALID')" in str(info.value)
    assert info.value.ta1_code == "006"


def test_line_col_for_offsets() -> None:
    """Offsets convert to 1-based line:column for error reports."""
    (_, _, ts) = next(transaction_sets(EX_850))
    assert line_col(EX_850, ts.offsets[9]) == (9 + 3, 1)  # after the ISA, GS and ST lines
    assert line_col(EX_850, ts.offsets[9] + 4) == (12, 5)


def big_810(lines: int) -> str:
    segs = ["ST*810*0001", "BIG*20260117*INV-1*20260115*4500012345"]
    for k in range(1, lines + 1):
        segs += [
            f"IT1*{k}*3*BX*12.50*PE*VC*V{k}*IN*I{k}",
            f"PID*F****ITEM NUMBER {k}",
            f"REF*LI*{k}",
            "DTM*011*20260116",
        ][: 3 + (k % 2)]  # 3 or 4 segments per line: ~35k segments for 10,000 lines
    segs += [f"TDS*{lines * 3750}", f"CTT*{lines}"]
    segs.append(f"SE*{len(segs) + 1}*0001")
    return (
        "~\r\n".join(
            [ISA_OK[:-1], "GS*IN*V*H*20260115*1030*1*X*004010", *segs, "GE*1*1", "IEA*1*000000001"]
        )
        + "~\r\n"
    )


def test_tokenizes_a_10000_line_810_with_work_linear_in_the_segments() -> None:
    """~35k segments are read with their count right; the work (Python lines executed in
    engine/, counted, not timed: bench/x12_invoice.py has the speed) grows with the number of
    segments, not faster: 10 times the lines, at most 12 times the steps."""
    (ic,) = parse_interchanges(big_810(10_000))
    ts = ic.groups[0].sets[0]
    assert len(ts.segments) > 34_000
    assert ts.segment_count_ok
    steps = {}
    for lines in (500, 5000):
        (small,), steps[lines] = count_steps(parse_interchanges, big_810(lines))
        assert small.groups[0].sets[0].segment_count_ok
    assert steps[5000] <= 12 * steps[500], steps
