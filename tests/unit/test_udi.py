"""UDI parsing (GS1 and HIBCC carriers) and GS1 check digits."""

from __future__ import annotations

import dataclasses
from datetime import date

import pytest

from engine.errors import TransformError
from engine.udi import (
    Udi,
    gln_valid,
    gtin_check_digit,
    gtin_valid,
    hibc_check_character,
    parse_udi,
)

GS = "\x1d"
DOMAIN_HRI = "(01)10614141999993(17)290630(10)LOT2025A(21)SN000123"


def hibc(data: str) -> str:
    """``data`` plus its mod 43 check character."""
    return data + hibc_check_character(data)


# --- GS1 check digits ----------------------------------------------------------------------


def test_gtin_check_digit_of_published_examples() -> None:
    """The check digit of GS1's example GTIN 10614141999993 and of the EAN-13 4006381333931."""
    assert gtin_check_digit("1061414199999") == "3"
    assert gtin_check_digit("400638133393") == "1"


def test_gtin_check_digit_refuses_non_digits() -> None:
    """A body with anything but digits raises TransformError naming what came."""
    with pytest.raises(TransformError, match="expected a string of digits"):
        gtin_check_digit("12A4")
    with pytest.raises(TransformError):
        gtin_check_digit("")


def test_gtin_valid() -> None:
    """gtin_valid accepts a 14-digit GTIN with the right check digit and nothing else."""
    assert gtin_valid("10614141999993")
    assert not gtin_valid("10614141999994")
    assert not gtin_valid("0614141999996")  # 13 digits
    assert not gtin_valid(10614141999993)


def test_gln_valid() -> None:
    """gln_valid accepts 13 digits with a correct GS1 check digit only."""
    assert gln_valid("0614141000012")
    assert gln_valid("0614141000029")
    assert not gln_valid("0614141000013")
    assert not gln_valid("061414100001")
    assert not gln_valid("06141410000A2")
    assert not gln_valid(None)


# --- GS1 carriers --------------------------------------------------------------------------


def test_gs1_human_readable_domain_example() -> None:
    """The DOMAIN.md HRI example parses into DI, expiry, lot and serial."""
    udi = parse_udi(DOMAIN_HRI)
    assert udi == Udi("GS1", "10614141999993", "LOT2025A", "SN000123", date(2029, 6, 30), None)


@pytest.mark.parametrize("prefix", ["]d2", "]C1", "]Q3", GS, ""])
def test_gs1_raw_with_symbology_prefix_and_gs_separators(prefix: str) -> None:
    """Raw scan data: an optional symbology identifier or leading FNC1, GS ends the lot."""
    raw = prefix + "0110614141999993" + "17290630" + "10LOT2025A" + GS + "21SN000123"
    assert parse_udi(raw) == parse_udi(DOMAIN_HRI)


def test_gs1_raw_variable_field_last_needs_no_separator_and_gs_after_fixed_is_tolerated() -> None:
    """A variable-length AI at the end runs to the end; a GS after a fixed field is skipped."""
    udi = parse_udi("]d2" + "0110614141999993" + GS + "21SN1" + GS + "10L1")
    assert (udi.serial, udi.lot, udi.expiry) == ("SN1", "L1", None)


def test_gs1_day_00_means_last_day_of_month() -> None:
    """YYMMDD with DD=00 is the last day of that month, leap years included."""
    assert parse_udi("(01)10614141999993(17)290200").expiry == date(2029, 2, 28)
    assert parse_udi("(01)10614141999993(17)280200").expiry == date(2028, 2, 29)


def test_gs1_production_date_ai_11() -> None:
    """AI (11) becomes the manufacture date."""
    udi = parse_udi("(01)10614141999993(11)250630(17)290630")
    assert (udi.manufactured, udi.expiry) == (date(2025, 6, 30), date(2029, 6, 30))


def test_gs1_bad_check_digit() -> None:
    """A GTIN whose check digit is wrong is refused, saying which digit was expected."""
    with pytest.raises(TransformError, match=r"expected check digit 3 \(got 4"):
        parse_udi("(01)10614141999994(10)A")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("(01)1061414199999(10)A", r"\(01\) GTIN: expected 14 digits"),
        ("(10)LOT1(21)S1", r"expected a device identifier AI \(01\)"),
        ("(01)10614141999993(99)X", r"expected one of AIs .*\(got \(99\)"),
        ("]d20110614141999993" + "99X", r"got \(99\)"),
        ("(01)10614141999993(10)A(10)B", r"expected AI \(10\) once"),
        ("(01)10614141999993(10)" + "L" * 21, r"\(10\) lot: expected 1-20 characters"),
        ("(01)10614141999993(21)", r"\(21\) serial: expected 1-20 characters"),
        ("(01)10614141999993(10)A B", r"character set 82"),
        ("(01)10614141999993(17)291301", r"expected a month 01-12"),
        ("(01)10614141999993(17)290231", r"expected a valid calendar date"),
        ("(01)10614141999993(17)2906", r"\(17\) expiry: expected 6 digits"),
        ("(01)10614141999993(10)A)B", r"expected '\(AI\)value' at position"),
        ("(01)10614141999993X", r"\(01\) GTIN: expected 14 digits"),
    ],
)
def test_gs1_errors_say_what_was_expected(text: str, message: str) -> None:
    """Each malformed GS1 carrier raises TransformError with what was expected and what came."""
    with pytest.raises(TransformError, match=message):
        parse_udi(text)


@pytest.mark.parametrize("text", ["", "   ", "hello", "#0110614141999993"])
def test_not_a_udi(text: str) -> None:
    """Text that is neither GS1 nor HIBCC raises TransformError."""
    with pytest.raises(TransformError, match="UDI: expected"):
        parse_udi(text)


def test_udi_is_frozen() -> None:
    """Udi is an immutable record."""
    udi = parse_udi(DOMAIN_HRI)
    with pytest.raises(dataclasses.FrozenInstanceError):
        udi.lot = "X"  # type: ignore[misc]


# --- HIBCC ---------------------------------------------------------------------------------


def test_hibc_check_character_of_published_examples() -> None:
    """The mod 43 check characters of published HIBC examples (hibc Python library docs)."""
    assert hibc_check_character("+A99912345/$$52001510X3/16D20111212/S77DE1G45") == "-"
    assert hibc_check_character("+E20831269/$$8020423286539") == "+"
    assert hibc_check_character("+E20831339/$$8020223283831") == "T"


def test_hibc_published_concatenated_example_with_supplemental_fields() -> None:
    """'+A99912345/$$52001510X3/16D20111212/S77DE1G45-': Julian expiry, lot, mfg date, serial."""
    udi = parse_udi("+A99912345/$$52001510X3/16D20111212/S77DE1G45-")
    assert udi == Udi(
        issuer="HIBCC",
        di="A99912345",
        lot="10X3",
        serial="77DE1G45",
        expiry=date(2020, 1, 15),
        manufactured=date(2011, 12, 12),
    )


def test_hibc_quantity_then_mmyy_expiry() -> None:
    """'$$8' + 2-digit quantity, then MMYY (expiry = last day of the month) and the lot."""
    udi = parse_udi("+E20831269/$$8020423286539+")
    assert (udi.di, udi.quantity, udi.expiry, udi.lot) == (
        "E20831269",
        2,
        date(2023, 4, 30),
        "286539",
    )


def test_hibc_primary_only() -> None:
    """A primary-only symbol gives the DI (LIC + product code + U/M) and no PI."""
    udi = parse_udi(hibc("+A123BJC5D6E71"))
    assert udi == Udi("HIBCC", "A123BJC5D6E71")


def test_hibc_primary_and_secondary_as_two_symbols() -> None:
    """Two scans on two lines: the secondary's link character is the primary's check."""
    primary = hibc("+A123BJC5D6E71")
    secondary = hibc("+$$3290630LOT2025A" + primary[-1])
    udi = parse_udi(primary + "\n" + secondary)
    assert (udi.di, udi.lot, udi.expiry) == ("A123BJC5D6E71", "LOT2025A", date(2029, 6, 30))
    assert parse_udi(primary + "\r\n" + secondary) == udi


def test_hibc_link_character_mismatch() -> None:
    """A secondary symbol that links to another primary is refused."""
    primary = hibc("+A123BJC5D6E71")
    other = "Z" if primary[-1] != "Z" else "Y"
    secondary = hibc("+$LOT1" + other)
    with pytest.raises(TransformError, match="link character: expected"):
        parse_udi(primary + "\n" + secondary)


def test_hibc_secondary_alone_is_refused() -> None:
    """Secondary data without primary data has no device identifier."""
    with pytest.raises(TransformError, match="expected primary data"):
        parse_udi(hibc("+$$3290630LOT1A"))


@pytest.mark.parametrize(
    ("secondary", "lot", "serial", "expiry", "quantity"),
    [
        ("$LOT77", "LOT77", None, None, None),
        ("$+SER9", None, "SER9", None, None),
        ("$$3290630LOT1", "LOT1", None, date(2029, 6, 30), None),
        ("$$0629LOT1", "LOT1", None, date(2029, 6, 30), None),
        ("$$1229LOT1", "LOT1", None, date(2029, 12, 31), None),
        ("$$2063029LOT1", "LOT1", None, date(2029, 6, 30), None),
        ("$$429063015LOT1", "LOT1", None, date(2029, 6, 30), None),
        ("$$529181LOT1", "LOT1", None, date(2029, 6, 30), None),
        ("$$62918123LOT1", "LOT1", None, date(2029, 6, 30), None),
        ("$$7LOT1", "LOT1", None, None, None),
        ("$$3290630", None, None, date(2029, 6, 30), None),
        ("$$9123453290630LOT1", "LOT1", None, date(2029, 6, 30), 12345),
        ("$$+3290630SER1", None, "SER1", date(2029, 6, 30), None),
        ("$$+7SER1", None, "SER1", None, None),
        ("29181LOT1", "LOT1", None, date(2029, 6, 30), None),
        ("$LOT1/SSER1/14D20290630/16D20250101", "LOT1", "SER1", date(2029, 6, 30), None),
    ],
)
def test_hibc_secondary_forms(
    secondary: str, lot: str | None, serial: str | None, expiry: date | None, quantity: int | None
) -> None:
    """Each supported secondary form yields its lot, serial, expiry and quantity."""
    udi = parse_udi(hibc("+H123PART12340/" + secondary))
    assert (udi.di, udi.lot, udi.serial, udi.expiry, udi.quantity) == (
        "H123PART12340",
        lot,
        serial,
        expiry,
        quantity,
    )


def test_hibc_code39_asterisks_and_symbology_prefix_are_stripped() -> None:
    """'*…*' (Code 39 human-readable) and ']C0' are not part of the data."""
    data = hibc("+H123PART12340/$LOT1")
    assert parse_udi(f"*{data}*").lot == "LOT1"
    assert parse_udi(f"]C0{data}").lot == "LOT1"


def test_hibc_space_check_character_is_kept() -> None:
    """A check character that is a space is not stripped as whitespace."""
    data = next(d for n in range(1000) if hibc_check_character(d := f"+H123P{n}0/$LOT1") == " ")
    assert parse_udi(data + " ").lot == "LOT1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("+A123BJC5D6E71X", r"check character: expected"),
        ("+a123BJC5D6E71G", r"expected characters 0-9 A-Z"),
        ("+A$23PCN1", r"4-character labeler code starting with a letter"),
        ("+A123BJCX", r"unit-of-measure digit"),
        ("+A123" + "P" * 19 + "1", r"product code of 1-18"),
        ("+H123PART12340/$" + "L" * 19, r"lot: expected 1-18 characters"),
        ("+H123PART12340/$$A1", r"date-format flag 0-7"),
        ("+H123PART12340/$$3291330L", r"expected a month 01-12"),
        ("+H123PART12340/$$5293661L", r"day of year"),
        ("+H123PART12340/$$8A1", r"quantity after '\$\$8': expected 2 digits"),
        ("+H123PART12340/XYZ", r"expected '\$' lot"),
        ("+H123PART12340/$L/Q5", r"supplemental data"),
        ("+H123PART12340/$L/SA/SB", r"one serial number"),
        ("+H123PART12340/$$3290630L/14D20290630", r"one expiry date"),
    ],
)
def test_hibc_errors_say_what_was_expected(text: str, message: str) -> None:
    """Malformed HIBC data raises TransformError naming what was expected and what came."""
    # Give each case a right check character unless the case is about the check character.
    data = text if "check" in message or "characters 0-9" in message else hibc(text)
    with pytest.raises(TransformError, match=message):
        parse_udi(data)
