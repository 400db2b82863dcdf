"""The X12 envelope writer and the 850 builder (DOMAIN §3.1 envelopes, §3.2 850, §3.3 bill-only,
§3.4 composed 850): fixed-width ISA, counts, each partner's separators, and refusal of data
that holds a separator (X12 has no escape)."""

from __future__ import annotations

import copy
import dataclasses
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from engine.domains.procurement.control import ControlNumbers
from engine.domains.procurement.partners import BillOnlyRules, Partner, load_partners
from engine.domains.procurement.po850 import build_850, segments_850
from engine.errors import UnmappedUnit, X12WriteError
from engine.x12.segments import parse_interchanges
from engine.x12.writer import (
    FunctionalGroup,
    InterchangeHeader,
    Separators,
    TransactionSet,
    check_separators,
    encode_segment,
    write_interchange,
)

ROOT = Path(__file__).resolve().parents[2]
PARTNERS = load_partners(ROOT / "mappings" / "trading_partners.yaml", env={})
ACME, HARBOR = PARTNERS["acmemed"], PARTNERS["harbor"]
NOW = datetime(2026, 1, 15, 10, 30)

PO: dict[str, Any] = {
    "po_number": "4500012345",
    "order_date": "2026-01-15",
    "vendor": "VND-ACMEMED",
    "currency": "USD",
    "department": "OR-SURG",
    "buyer": {"name": "JANE BUYER", "phone": "5555550100"},
    "need_by": "2026-01-20",
    "bill_to": {"gln": "0614141000012", "name": "GENERAL HOSPITAL"},
    "ship_to": {
        "gln": "0614141000029",
        "name": "GENERAL HOSPITAL OR DOCK",
        "address": {
            "street": ["100 MAIN ST"],
            "city": "SPRINGFIELD",
            "state": "IL",
            "postal_code": "62701",
            "country": "US",
        },
    },
    "lines": [
        {
            "line": "1",
            "item_id": "ITEM-100123",
            "vendor_catalog": "ORTH-SCR-35",
            "gtin": "10614141999993",
            "description": "BONE SCREW 3.5MM BX/5",
            "qty": "2",
            "uom": "BX",
            "unit_price": "125.00",
            "pack": {"qty": 5, "uom": "EA"},
        },
        {
            "line": "2",
            "item_id": "ITEM-100777",
            "vendor_catalog": "GLV-7",
            "description": "SURGICAL GLOVE SZ 7",
            "qty": 5,
            "uom": "EA",
            "unit_price": "12.5",
        },
    ],
}

BILL_ONLY: dict[str, Any] = {
    **PO,
    "po_number": "4500012399",
    "bill_only": {
        "case_id": "CASE-2026-0042",
        "patient": {"mrn": "MRN12345", "name": "DOE^JANE"},
        "procedure_date": "2026-01-14",
        "surgeon": {"name": "SAM SURGEON", "npi": "1234567893"},
    },
    "lines": [
        {
            "line": "1",
            "item_id": "ITEM-100999",
            "vendor_catalog": "FEM-5R",
            "description": "KNEE FEMORAL COMPONENT SZ 5 RIGHT",
            "qty": "1",
            "uom": "EA",
            "unit_price": "2310.00",
            "lot": "LOT2025A",
            "serial": "SN000123",
        }
    ],
}


def po_for(partner: Partner, po: dict[str, Any] = PO) -> dict[str, Any]:
    return {**copy.deepcopy(po), "vendor": partner.vendors[0]}


def split(data: bytes, partner: Partner) -> list[list[str]]:
    """Segments as element lists, split with the partner's own separators."""
    text = data.decode("ascii")
    seps = partner.separators
    out = []
    for raw in text.split(seps.segment):
        raw = raw.lstrip("\r\n")
        if raw:
            out.append(raw.split(seps.element))
    return out


def seg(segments: list[list[str]], seg_id: str, *first: str) -> list[list[str]]:
    return [s for s in segments if s[0] == seg_id and s[1 : 1 + len(first)] == list(first)]


@pytest.mark.parametrize("partner", [ACME, HARBOR], ids=["005010", "004010"])
def test_isa_is_fixed_width_106(partner: Partner) -> None:
    """ISA: 106 characters with its terminator; ids padded to 15; ISA13 9 digits."""
    data = build_850(po_for(partner), partner, ControlNumbers(42, 7, (3,)), now=NOW).decode()
    seps = partner.separators
    isa = data[:106]
    assert isa.endswith(seps.segment) and isa.count(seps.segment) == 1
    assert data[106 : 106 + len(partner.newline)] == partner.newline
    assert isa[3] == seps.element and isa[104] == seps.component
    parts = isa[:-1].split(seps.element)
    assert len(parts) == 17
    assert [len(p) for p in parts[1:]] == [2, 10, 2, 10, 2, 15, 2, 15, 6, 4, 1, 5, 9, 1, 1, 1]
    assert parts[6] == partner.our_isa.id.ljust(15) and parts[8] == partner.isa.id.ljust(15)
    assert (parts[9], parts[10]) == ("260115", "1030")
    assert parts[11] == ("^" if partner.version == "005010" else "U")
    assert parts[12] == partner.isa_version
    assert parts[13] == "000000042"
    assert parts[14] == ("1" if partner.ta1 else "0")
    assert parts[15] == "P"


def test_envelope_counts_and_control_numbers() -> None:
    """SE01 counts ST..SE; GE01 the sets, IEA01 the groups; trailers echo the numbers."""
    seps = Separators("*", ">", "~", "^")
    header = InterchangeHeader(
        "ZZ", "GENHOSP", "ZZ", "ACMEMED", "GENHOSP", "ACMEMED", "005010", seps
    )
    body = (("BEG", "00", "SA", "1", None, "20260115"), ("CTT", "0"))
    groups = [
        FunctionalGroup(
            "PO", 11, (TransactionSet("850", 1, body), TransactionSet("850", 2, body[:1]))
        ),
        FunctionalGroup("PO", 12, (TransactionSet("850", 123456789, ()),)),
    ]
    text = write_interchange(header, 999_999_999, groups, now=NOW).decode()
    segments = [s.split("*") for s in text.split("~") if s]
    assert seg(segments, "SE") == [
        ["SE", "4", "0001"],
        ["SE", "3", "0002"],
        ["SE", "2", "123456789"],
    ]
    assert seg(segments, "GE") == [["GE", "2", "11"], ["GE", "1", "12"]]
    assert seg(segments, "IEA") == [["IEA", "2", "999999999"]]
    assert seg(segments, "GS")[0] == [
        "GS",
        "PO",
        "GENHOSP",
        "ACMEMED",
        "20260115",
        "1030",
        "11",
        "X",
        "005010",
    ]
    (ic,) = parse_interchanges(text)  # the reader agrees on structure and counts
    assert [g.set_count_ok and g.control_number_ok for g in ic.groups] == [True, True]
    assert all(ts.segment_count_ok and ts.control_number_ok for _, ts in ic.sets())


def test_control_numbers_out_of_range_are_refused() -> None:
    seps = Separators("*", ">", "~", "^")
    header = InterchangeHeader("ZZ", "A", "ZZ", "B", "AA", "BB", "005010", seps)
    group = FunctionalGroup("PO", 1, (TransactionSet("850", 1, ()),))
    with pytest.raises(X12WriteError, match=r"ISA13: must be an integer in 1..999999999 \(got 0\)"):
        write_interchange(header, 0, [group], now=NOW)
    with pytest.raises(X12WriteError, match="GS06"):
        write_interchange(header, 1, [dataclasses.replace(group, control=1_000_000_000)], now=NOW)


def test_each_partner_gets_its_own_separators() -> None:
    """ACME: * > ~ ^ and LF; Harbor (004010): | : ~, CRLF, ISA11 U."""
    acme = build_850(po_for(ACME), ACME, ControlNumbers(1, 1, (1,)), now=NOW).decode()
    harbor = build_850(po_for(HARBOR), HARBOR, ControlNumbers(1, 1, (1,)), now=NOW).decode()
    assert "~\nGS*PO*GENHOSP*ACMEMED*20260115*1030*1*X*005010~\n" in acme
    assert "~\r\nGS|PO|GENHOSP|5555550123|20260115|1030|1|X|004010~\r\n" in harbor
    assert "*" not in harbor and "|" not in acme
    assert acme.count("~\n") == acme.count("~") and harbor.count("~\r\n") == harbor.count("~")
    for text, partner in ((acme, ACME), (harbor, HARBOR)):
        (ic,) = parse_interchanges(text)
        assert ic.separators == partner.separators


def test_850_content_follows_the_composed_example() -> None:
    """DOMAIN §3.4: BEG, CUR, REF*DP, PER*BD, DTM*002, N1 BT/ST (GLN, UL)/VN, PO1 with VC/UK/IN,
    PID, PO4, CTT (lines, hash of PO102), AMT*TT; units through the partner's map."""
    segments = split(build_850(po_for(ACME), ACME, ControlNumbers(1, 1, (1,)), now=NOW), ACME)
    body = [s for s in segments if s[0] not in ("ISA", "GS", "ST", "SE", "GE", "IEA")]
    assert [s[0] for s in body] == [
        "BEG", "CUR", "REF", "PER", "DTM", "N1", "N1", "N3", "N4", "N1",
        "PO1", "PID", "PO4", "PO1", "PID", "CTT", "AMT",
    ]  # fmt: skip
    assert body[0] == ["BEG", "00", "SA", "4500012345", "", "20260115"]
    assert seg(segments, "N1", "ST") == [
        ["N1", "ST", "GENERAL HOSPITAL OR DOCK", "UL", "0614141000029"]
    ]
    assert seg(segments, "N1", "VN") == [
        ["N1", "VN", "ACME MEDICAL SUPPLY INC", "92", "VND-ACMEMED"]
    ]
    assert seg(segments, "N4") == [["N4", "SPRINGFIELD", "IL", "62701", "US"]]
    assert seg(segments, "PO1") == [
        [
            "PO1",
            "1",
            "2",
            "BX",
            "125.00",
            "PE",
            "VC",
            "ORTH-SCR-35",
            "UK",
            "10614141999993",
            "IN",
            "ITEM-100123",
        ],
        ["PO1", "2", "5", "EA", "12.50", "PE", "VC", "GLV-7", "IN", "ITEM-100777"],
    ]
    assert seg(segments, "PID")[0] == ["PID", "F", "", "", "", "BONE SCREW 3.5MM BX/5"]
    assert seg(segments, "PO4") == [["PO4", "5", "1", "EA"]]
    assert seg(segments, "CTT") == [["CTT", "2", "7"]]
    assert seg(segments, "AMT") == [["AMT", "TT", "312.50"]]
    (se,) = seg(segments, "SE")
    st_at = next(i for i, s in enumerate(segments) if s[0] == "ST")
    se_at = next(i for i, s in enumerate(segments) if s[0] == "SE")
    assert int(se[1]) == se_at - st_at + 1 == len(body) + 2


def test_units_go_through_the_partner_map() -> None:
    """Our CS is X12 CA (element 355 has no CS); each partner's own map decides; a unit not in
    the map is an error naming the unit and the partner."""
    po = po_for(ACME)
    po["lines"][1]["uom"] = "CS"
    assert seg(split(build_850(po, ACME, ControlNumbers(1, 1, (1,))), ACME), "PO1")[1][3] == "CA"
    odd = dataclasses.replace(HARBOR, uom_out={**HARBOR.uom_out, "CA": "CS"})
    po = po_for(HARBOR)
    po["lines"][1]["uom"] = "CA"
    assert seg(split(build_850(po, odd, ControlNumbers(1, 1, (1,))), HARBOR), "PO1")[1][3] == "CS"
    assert (
        seg(split(build_850(po, HARBOR, ControlNumbers(1, 1, (1,))), HARBOR), "PO1")[1][3] == "CA"
    )
    po["lines"][1]["uom"] = "GAL"
    with pytest.raises(UnmappedUnit) as info:
        build_850(po, HARBOR, ControlNumbers(1, 1, (1,)))
    assert "unit 'GAL'" in str(info.value) and "trading partner 'harbor'" in str(info.value)


@pytest.mark.parametrize(
    ("partner", "bad", "what"),
    [
        (ACME, "GLOVE~7", "'~' (the segment terminator"),
        (ACME, "GLOVE*7", "'*' (the element separator"),
        (ACME, "GLOVE>7", "'>' (the component separator"),
        (ACME, "GLOVE^7", "'^' (the repetition separator"),
        (HARBOR, "GLOVE|7", "'|' (the element separator"),
        (HARBOR, "GLOVE\n7", "LF (a control character"),
        (HARBOR, "GLOVE µ7", "'µ' (a non-ASCII character"),
    ],
)
def test_data_holding_a_separator_is_refused(partner: Partner, bad: str, what: str) -> None:
    po = po_for(partner)
    po["lines"][1]["description"] = bad
    with pytest.raises(X12WriteError) as info:
        build_850(po, partner, ControlNumbers(1, 1, (1,)))
    assert str(info.value).startswith(
        f"X12WriteError: lines[1].description (PID05): expected text without {what}"
    )


def test_a_character_is_only_refused_where_it_is_a_separator() -> None:
    """`*`, `>` and `^` are plain data for Harbor (004010), whose separators are `|` `:` `~`."""
    po = po_for(HARBOR)
    po["lines"][1]["description"] = "GLOVE*7 > NITRILE ^"
    segments = split(build_850(po, HARBOR, ControlNumbers(1, 1, (1,))), HARBOR)
    assert seg(segments, "PID")[1][5] == "GLOVE*7 > NITRILE ^"


def test_writer_names_the_element_when_used_directly() -> None:
    seps = Separators("*", ">", "~", None)
    with pytest.raises(X12WriteError, match=r"^X12WriteError: REF02: expected text without '~'"):
        encode_segment(("REF", "DP", "OR~SURG"), seps)
    with pytest.raises(X12WriteError, match=r"^X12WriteError: PO103-2: expected text without '\*'"):
        encode_segment(("PO1", "1", "2", ("EA", "x*y")), seps)
    assert encode_segment(("N1", "ST", "DOCK", None, None), seps) == "N1*ST*DOCK~"
    assert encode_segment(("C1", ("A", "B", "", "")), Separators("*", ":", "~", None)) == "C1*A:B~"
    with pytest.raises(X12WriteError, match="repeating elements need 005010"):
        encode_segment(("X1", ["a", "b"]), seps)
    assert encode_segment(("X1", ["a", "b"]), Separators("*", ">", "~", "^")) == "X1*a^b~"


def test_separator_rules() -> None:
    assert check_separators(Separators("*", ">", "~", "^"), "005010") is None
    assert check_separators(Separators("*", ">", "~", None), "004010", "\r\n") is None
    assert "needs a repetition separator" in str(
        check_separators(Separators("*", ">", "~"), "005010")
    )
    assert "must differ" in str(check_separators(Separators("*", "~", "~", None), "004010"))
    assert "letter, digit or space" in str(check_separators(Separators("E", ">", "~"), "004010"))
    assert "no newline after" in str(check_separators(Separators("*", ">", "\n"), "004010", "\n"))


def test_bill_only_po_carries_case_surgeon_lot_and_serial() -> None:
    """DOMAIN §3.3: case REF, procedure date, surgeon N1*72 with NPI, lot/serial on PO1;
    no MRN unless the partner requires it, and never the patient's name."""
    data = build_850(po_for(ACME, BILL_ONLY), ACME, ControlNumbers(5, 5, (5,)), now=NOW)
    segments = split(data, ACME)
    assert seg(segments, "REF") == [["REF", "DP", "OR-SURG"], ["REF", "ZZ", "CASE-2026-0042"]]
    assert seg(segments, "DTM") == [["DTM", "002", "20260120"], ["DTM", "472", "20260114"]]
    assert seg(segments, "N1", "72") == [["N1", "72", "SAM SURGEON", "XX", "1234567893"]]
    (po1,) = seg(segments, "PO1")
    assert po1 == ["PO1", "1", "1", "EA", "2310.00", "PE", "VC", "FEM-5R", "IN", "ITEM-100999",
                   "LT", "LOT2025A", "SN", "SN000123"]  # fmt: skip
    assert b"MRN12345" not in data and b"DOE" not in data
    needs_mrn = dataclasses.replace(ACME, bill_only=BillOnlyRules(send_mrn=True, case_id_ref="CZ"))
    segments = split(
        build_850(po_for(ACME, BILL_ONLY), needs_mrn, ControlNumbers(1, 1, (1,))), ACME
    )
    assert seg(segments, "REF")[1:] == [["REF", "CZ", "CASE-2026-0042"], ["REF", "EA", "MRN12345"]]


def test_bill_only_needs_its_case_id() -> None:
    po = po_for(ACME, BILL_ONLY)
    del po["bill_only"]["case_id"]
    with pytest.raises(X12WriteError, match=r"bill_only.case_id \(REF02\): required"):
        segments_850(po, ACME)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda po: po.pop("ship_to"), r"ship_to: required"),
        (lambda po: po["ship_to"].pop("gln"), r"ship_to.gln \(N104\): required"),
        (
            lambda po: po["ship_to"].update(gln="0614141000028"),
            r"ship_to.gln \(N104\): expected a 13-digit GLN with its check digit",
        ),
        (
            lambda po: po["lines"][0].update(gtin="10614141999994"),
            r"lines\[0\].gtin \(PO109\): expected a GTIN",
        ),
        (lambda po: po.update(order_date="2026-02-30"), r"order_date \(BEG05\): expected a date"),
        (
            lambda po: po.update(po_number="X" * 23),
            r"po_number \(BEG03\): must be 1..22 characters",
        ),
        (
            lambda po: po["lines"][1].update(qty="0"),
            r"lines\[1\].qty \(PO102\): must be a number > 0",
        ),
        (
            lambda po: po["lines"][1].update(line="1"),
            r"lines\[1\].line \(PO101\): duplicate line number",
        ),
        (lambda po: po.update(lines=[]), r"lines: expected a non-empty list"),
        (
            lambda po: po.update(vendor="VND-HARBOR"),
            r"vendor \(N104\): expected a vendor of trading partner 'acmemed'",
        ),
    ],
)
def test_bad_po_fields_are_named(change: Any, message: str) -> None:
    po = po_for(ACME)
    change(po)
    with pytest.raises(X12WriteError, match=message):
        build_850(po, ACME, ControlNumbers(1, 1, (1,)))


def test_nothing_is_emitted_for_a_bad_po() -> None:
    """A refused PO leaves no partial output: the bytes come only from a complete build."""
    po = po_for(ACME)
    po["lines"][1]["description"] = "A~B"
    result: list[bytes] = []
    with pytest.raises(X12WriteError):
        result.append(build_850(po, ACME, ControlNumbers(1, 1, (1,))))
    assert result == []


def test_quantities_and_prices_are_explicit_decimals() -> None:
    po = po_for(ACME)
    po["lines"][0].update(qty="2.50", unit_price="10")
    po["lines"][1].update(qty=3, unit_price="0.1234")
    segments = split(build_850(po, ACME, ControlNumbers(1, 1, (1,))), ACME)
    assert [s[2:5] for s in seg(segments, "PO1")] == [["2.5", "BX", "10.00"], ["3", "EA", "0.1234"]]
    assert seg(segments, "CTT") == [["CTT", "2", "5.5"]]
    assert seg(segments, "AMT") == [["AMT", "TT", "25.3702"]]


@pytest.mark.parametrize("partner", [ACME, HARBOR], ids=["005010", "004010"])
def test_the_850_reader_reads_back_what_was_written(partner: Partner) -> None:
    """The 850 reader (with the partner's bill-only map) gets the PO back: PO number, ship-to
    GLN, lines, units, prices, totals, and the bill-only case, date, lot and serial."""
    from datetime import date
    from decimal import Decimal

    from engine.x12.documents import read_purchase_order
    from engine.x12.segments import transaction_sets

    data = build_850(po_for(partner, BILL_ONLY), partner, ControlNumbers(9, 8, (7,)), now=NOW)
    ((ic, group, ts),) = list(transaction_sets(data))
    assert (ic.control_number, group.control_number, ts.control_number) == (
        "000000009",
        "8",
        "0007",
    )
    po = read_purchase_order(ts, bill_only_map=partner.bill_only_map())
    assert (po.po_number, po.po_date, po.currency) == ("4500012399", date(2026, 1, 15), "USD")
    assert po.ship_to_gln == "0614141000029" and po.is_bill_only
    (line,) = po.lines
    assert (line.line_number, line.quantity, line.unit, line.unit_price) == (
        "1",
        Decimal(1),
        "EA",
        Decimal("2310.00"),
    )
    assert line.bill_only is not None
    assert (line.bill_only.lot, line.bill_only.serial) == ("LOT2025A", "SN000123")
    assert line.bill_only.case_id == "CASE-2026-0042"
    assert line.bill_only.procedure_date == date(2026, 1, 14)
    assert (po.line_count, po.hash_total, po.total_amount) == (1, Decimal(1), Decimal("2310.00"))
