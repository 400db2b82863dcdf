"""UDI carrier parsing (GS1 and HIBCC) and GS1 check digits. Pure: no I/O, no clock.

A UDI is a device identifier (DI) plus production identifiers (PI: lot, serial, expiry,
manufacture date), 21 CFR 830.3. :func:`parse_udi` turns a scanned or typed carrier into a
:class:`Udi`; anything it cannot read raises :class:`engine.errors.TransformError` saying what
was expected and what came.

GS1 (issuer ``'GS1'``)
    * Human-readable form: ``(01)10614141999993(17)290630(10)LOT2025A(21)SN000123``.
    * Raw scan data (element string): AIs run together, a variable-length field ends at a GS
      (``\\x1d``, FNC1) or at the end; an optional symbology identifier prefix (``]d2`` Data
      Matrix, ``]C1`` GS1-128, ``]Q3`` QR, ``]e0`` DataBar, ``]J1``) and a leading GS are
      skipped. A GS after a fixed-length field is tolerated.
    * AIs: ``01`` GTIN-14 (check digit verified), ``17`` expiry and ``11`` production date
      (``YYMMDD``; ``DD = 00`` means the last day of the month; years are 2000 + ``YY``),
      ``10`` lot and ``21`` serial (1-20 characters of GS1 character set 82). ``01`` is
      required; any other AI, or one given twice, is an error.

HIBCC (issuer ``'HIBCC'``, ANSI/HIBC 2.x Supplier Labeling Standard)
    * Primary data: ``+`` LIC (4, first a letter) PCN (1-18 alphanumeric) U/M (1 digit) and a
      mod 43 check character. ``di`` is ``LIC + PCN + U/M`` (no ``+``, no check character).
    * Concatenated primary/secondary: ``+`` primary ``/`` secondary ``C`` (one check character
      over everything before it).
    * Primary and secondary as two symbols, on two lines (``\\n``, ``\\r\\n`` or a tab between):
      the secondary is ``+`` secondary data, the link character (the primary's check
      character) and its own check character; the link is verified. A secondary symbol alone
      has no DI and is refused.
    * Secondary data: ``$`` lot; ``$+`` serial; ``$$`` date-format flag + date + lot;
      ``$$+`` date-format flag + date + serial; ``$$8QQ`` / ``$$9QQQQQ`` quantity, then the
      date-format flag, date and lot; ``YYJJJ`` (5-digit Julian expiry) + lot. Date-format flags:
      ``0``/``1`` start ``MMYY`` (expiry = last day of that month), ``2`` ``MMDDYY``,
      ``3`` ``YYMMDD``, ``4`` ``YYMMDDHH``, ``5`` ``YYJJJ``, ``6`` ``YYJJJHH`` (the hour is
      dropped: expiry is a date), ``7`` no date.
    * Supplemental fields after a further ``/``: ``S`` serial, ``14D`` expiry ``YYYYMMDD``,
      ``16D`` manufacture date ``YYYYMMDD``. Others (e.g. ``Q``) are refused.
    * Lot and serial: 1-18 characters. A Code 39 human-readable ``*…*`` wrapper and a symbology
      identifier (``]C0``, ``]A0``, ``]d1``, ``]Q1``) are stripped. Characters must be from the
      HIBC set ``0-9 A-Z - . space $ / + %``; the check character (which may be a space) is
      verified.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date
from typing import Literal

from engine.errors import TransformError

__all__ = [
    "Udi",
    "gln_valid",
    "gtin_check_digit",
    "gtin_valid",
    "hibc_check_character",
    "parse_udi",
]

GS = "\x1d"
HIBC_CHARSET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-. $/+%"
_HIBC_VALUE = {c: i for i, c in enumerate(HIBC_CHARSET)}
_GS1_SYMBOLOGY = ("]d2", "]C1", "]Q3", "]e0", "]J1")
_GS1_FIXED = {"01": 14, "11": 6, "17": 6}
_GS1_VARIABLE = {"10": 20, "21": 20}
_GS1_NAMES = {"01": "GTIN", "10": "lot", "11": "production date", "17": "expiry", "21": "serial"}
# GS1 General Specifications character set 82 (AIs 10 and 21).
_CSET82 = re.compile(r"[!\"%&'()*+,\-./0-9:;<=>?A-Z_a-z]+")
_HIBC_LOT = 18
_HIBC_PCN = 18


@dataclass(frozen=True)
class Udi:
    """A parsed UDI: device identifier plus production identifiers."""

    issuer: Literal["GS1", "HIBCC"]
    di: str
    lot: str | None = None
    serial: str | None = None
    expiry: date | None = None
    manufactured: date | None = None
    quantity: int | None = None  # HIBC $$8 / $$9 secondary data only


def _shown(text: str, limit: int = 60) -> str:
    text = text.replace(GS, "<GS>")
    return repr(text if len(text) <= limit else text[:limit] + "…")


# --- GS1 check digits -------------------------------------------------------------------


def gtin_check_digit(body: str) -> str:
    """The GS1 mod-10 check digit for ``body`` (a GTIN/GLN/SSCC without its last digit).

    Weights 3, 1, 3, … from the rightmost digit of the body.
    """
    if not isinstance(body, str) or not body.isdigit() or not body.isascii():
        raise TransformError(f"GS1 check digit: expected a string of digits (got {body!r})")
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return str((10 - total % 10) % 10)


def _gs1_valid(code: object, length: int) -> bool:
    if not isinstance(code, str) or len(code) != length or not code.isdigit():
        return False
    if not code.isascii():
        return False
    return gtin_check_digit(code[:-1]) == code[-1]


def gtin_valid(gtin: object) -> bool:
    """True when ``gtin`` is a 14-digit GTIN with a correct check digit."""
    return _gs1_valid(gtin, 14)


def gln_valid(gln: object) -> bool:
    """True when ``gln`` is a 13-digit GS1 Global Location Number with a correct check digit."""
    return _gs1_valid(gln, 13)


# --- dates -------------------------------------------------------------------------------


def _last_day(year: int, month: int) -> int:
    return calendar.monthrange(year, month)[1]


def _date(year: int, month: int, day: int, what: str, raw: str) -> date:
    if not 1 <= month <= 12:
        raise TransformError(f"{what}: expected a month 01-12 (got {raw!r})")
    if day == 0:
        day = _last_day(year, month)
    try:
        return date(year, month, day)
    except ValueError:
        raise TransformError(f"{what}: expected a valid calendar date (got {raw!r})") from None


def _yymmdd(raw: str, what: str) -> date:
    if len(raw) != 6 or not raw.isdigit():
        raise TransformError(f"{what}: expected 6 digits YYMMDD (got {raw!r})")
    return _date(2000 + int(raw[:2]), int(raw[2:4]), int(raw[4:6]), what, raw)


def _yyjjj(raw: str, what: str) -> date:
    if len(raw) != 5 or not raw.isdigit():
        raise TransformError(f"{what}: expected 5 digits YYJJJ (got {raw!r})")
    year, day = 2000 + int(raw[:2]), int(raw[2:])
    if not 1 <= day <= (366 if calendar.isleap(year) else 365):
        raise TransformError(f"{what}: expected a day of year 001-365/366 (got {raw!r})")
    return date.fromordinal(date(year, 1, 1).toordinal() + day - 1)


def _yyyymmdd(raw: str, what: str) -> date:
    if len(raw) != 8 or not raw.isdigit():
        raise TransformError(f"{what}: expected 8 digits YYYYMMDD (got {raw!r})")
    day = int(raw[6:])
    if day == 0:
        raise TransformError(f"{what}: expected a day 01-31 (got {raw!r})")
    return _date(int(raw[:4]), int(raw[4:6]), day, what, raw)


# --- entry point -------------------------------------------------------------------------


def parse_udi(text: str) -> Udi:
    """Parse a GS1 or HIBCC UDI carrier (see the module docstring for the forms read)."""
    if not isinstance(text, str):
        raise TransformError(f"UDI: expected a string (got {type(text).__name__})")
    body = text.lstrip(" \r\n\t")
    hibc_body = body.rstrip("\r\n\t")  # a trailing space may be an HIBC check character
    body = body.rstrip()
    if not body:
        raise TransformError("UDI: expected a GS1 or HIBCC carrier (got an empty string)")
    if body.startswith(_GS1_SYMBOLOGY):
        return _parse_gs1_raw(body[3:])
    if body.startswith("]"):
        hibc_body = hibc_body[3:]
        body = body[3:]
    if body.startswith("("):
        return _parse_gs1_hri(body)
    if body.startswith(("+", "*+")):
        return _parse_hibc(hibc_body)
    if body.startswith(GS) or body[:1].isdigit():
        return _parse_gs1_raw(body)
    raise TransformError(
        "UDI: expected a GS1 carrier ('(01)…', ']d2…' or '01…') or an HIBCC carrier ('+…') "
        f"(got {_shown(body)})"
    )


# --- GS1 -----------------------------------------------------------------------------------


def _gs1_value(ai: str, value: str) -> str:
    name = f"GS1 AI ({ai}) {_GS1_NAMES[ai]}"
    if ai in _GS1_FIXED:
        size = _GS1_FIXED[ai]
        if len(value) != size or not value.isdigit() or not value.isascii():
            raise TransformError(f"{name}: expected {size} digits (got {value!r})")
        if ai == "01":
            want = gtin_check_digit(value[:-1])
            if value[-1] != want:
                raise TransformError(
                    f"{name}: expected check digit {want} (got {value[-1]} in {value!r})"
                )
        return value
    limit = _GS1_VARIABLE[ai]
    if not value or len(value) > limit:
        raise TransformError(f"{name}: expected 1-{limit} characters (got {value!r})")
    if not _CSET82.fullmatch(value):
        raise TransformError(
            f"{name}: expected GS1 character set 82 (letters, digits, punctuation) (got {value!r})"
        )
    return value


def _unknown_ai(ai: str, text: str) -> TransformError:
    known = ", ".join(f"({a})" for a in sorted(_GS1_NAMES))
    return TransformError(f"GS1 UDI: expected one of AIs {known} (got ({ai}) in {_shown(text)})")


def _gs1_udi(fields: list[tuple[str, str]], text: str) -> Udi:
    seen: dict[str, str] = {}
    for ai, value in fields:
        if ai in seen:
            raise TransformError(
                f"GS1 UDI: expected AI ({ai}) once (got it twice in {_shown(text)})"
            )
        seen[ai] = _gs1_value(ai, value)
    if "01" not in seen:
        raise TransformError(f"GS1 UDI: expected a device identifier AI (01) (got {_shown(text)})")
    return Udi(
        issuer="GS1",
        di=seen["01"],
        lot=seen.get("10"),
        serial=seen.get("21"),
        expiry=_yymmdd(seen["17"], "GS1 AI (17) expiry") if "17" in seen else None,
        manufactured=(_yymmdd(seen["11"], "GS1 AI (11) production date") if "11" in seen else None),
    )


_HRI = re.compile(r"\((\d{2,4})\)([^()]*)")


def _parse_gs1_hri(text: str) -> Udi:
    fields: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _HRI.match(text, pos)
        if m is None:
            raise TransformError(
                f"GS1 UDI: expected '(AI)value' at position {pos + 1} (got {_shown(text[pos:])})"
            )
        ai = m.group(1)
        if ai not in _GS1_NAMES:
            raise _unknown_ai(ai, text)
        fields.append((ai, m.group(2)))
        pos = m.end()
    return _gs1_udi(fields, text)


def _parse_gs1_raw(text: str) -> Udi:
    fields: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos] == GS:
            pos += 1
            continue
        ai = text[pos : pos + 2]
        if ai not in _GS1_NAMES:
            raise _unknown_ai(ai, text)
        pos += 2
        if ai in _GS1_FIXED:
            end = pos + _GS1_FIXED[ai]
            value = text[pos:end]
        else:
            gs = text.find(GS, pos)
            end = len(text) if gs < 0 else gs
            value = text[pos:end]
        fields.append((ai, value))
        pos = end
    return _gs1_udi(fields, text)


# --- HIBCC ---------------------------------------------------------------------------------


def hibc_check_character(data: str) -> str:
    """The HIBC mod 43 check character of ``data`` (every character before the check)."""
    total = 0
    for i, c in enumerate(data):
        if c not in _HIBC_VALUE:
            raise TransformError(
                f"HIBC: expected characters 0-9 A-Z - . space $ / + % (got {c!r} at position "
                f"{i + 1} of {data!r})"
            )
        total += _HIBC_VALUE[c]
    return HIBC_CHARSET[total % 43]


def _check_hibc(symbol: str) -> None:
    want = hibc_check_character(symbol[:-1])
    if symbol[-1] != want:
        raise TransformError(
            f"HIBC check character: expected {want!r} (got {symbol[-1]!r} in {symbol!r})"
        )


_LIC = re.compile(r"[A-Z][A-Z0-9]{3}")


def _hibc_primary(data: str, symbol: str) -> str:
    """``data`` is LIC + PCN + U/M (between '+' and '/' or the check character)."""
    if len(data) < 6 or not _LIC.fullmatch(data[:4]):
        raise TransformError(
            "HIBC primary data: expected '+', a 4-character labeler code starting with a letter, "
            f"a product code and a unit-of-measure digit (got {symbol!r})"
        )
    pcn, um = data[4:-1], data[-1]
    if not um.isdigit():
        raise TransformError(
            f"HIBC primary data: expected a unit-of-measure digit 0-9 last (got {um!r} in "
            f"{symbol!r})"
        )
    if not 1 <= len(pcn) <= _HIBC_PCN or not pcn.isalnum():
        raise TransformError(
            f"HIBC primary data: expected a product code of 1-{_HIBC_PCN} letters/digits "
            f"(got {pcn!r} in {symbol!r})"
        )
    return data


def _hibc_text(value: str, what: str) -> str:
    if not 1 <= len(value) <= _HIBC_LOT:
        raise TransformError(f"HIBC {what}: expected 1-{_HIBC_LOT} characters (got {value!r})")
    if "$" in value or "+" in value or "%" in value or " " in value:
        raise TransformError(f"HIBC {what}: expected letters, digits, '-' or '.' (got {value!r})")
    return value


def _hibc_dated(rest: str, what: str) -> tuple[date | None, str]:
    """Date-format flag + date; returns (expiry, what follows)."""
    flag = rest[:1]
    if flag in ("0", "1"):
        raw = rest[:4]
        if len(raw) != 4 or not raw.isdigit():
            raise TransformError(f"HIBC {what} expiry MMYY: expected 4 digits (got {raw!r})")
        return _date(2000 + int(raw[2:]), int(raw[:2]), 0, f"HIBC {what} expiry MMYY", raw), rest[
            4:
        ]
    if flag == "2":
        raw = rest[1:7]
        if len(raw) != 6 or not raw.isdigit():
            raise TransformError(f"HIBC {what} expiry MMDDYY: expected 6 digits (got {raw!r})")
        day = int(raw[2:4])
        if day == 0:
            raise TransformError(f"HIBC {what} expiry MMDDYY: expected a day 01-31 (got {raw!r})")
        return _date(2000 + int(raw[4:]), int(raw[:2]), day, f"HIBC {what} expiry", raw), rest[7:]
    if flag == "3":
        return _hibc_ymd(rest[1:7], what), rest[7:]
    if flag == "4":
        raw = rest[1:9]
        if len(raw) != 8 or not raw.isdigit() or int(raw[6:]) > 23:
            raise TransformError(
                f"HIBC {what} expiry YYMMDDHH: expected 8 digits, hour 00-23 (got {raw!r})"
            )
        return _hibc_ymd(raw[:6], what), rest[9:]
    if flag == "5":
        return _yyjjj(rest[1:6], f"HIBC {what} expiry YYJJJ"), rest[6:]
    if flag == "6":
        raw = rest[1:8]
        if len(raw) != 7 or not raw.isdigit() or int(raw[5:]) > 23:
            raise TransformError(
                f"HIBC {what} expiry YYJJJHH: expected 7 digits, hour 00-23 (got {raw!r})"
            )
        return _yyjjj(raw[:5], f"HIBC {what} expiry YYJJJ"), rest[8:]
    if flag == "7":
        return None, rest[1:]
    raise TransformError(
        f"HIBC {what}: expected a date-format flag 0-7 after '$$' (got {rest[:1]!r})"
    )


def _hibc_ymd(raw: str, what: str) -> date:
    if len(raw) != 6 or not raw.isdigit() or raw[4:] == "00":
        raise TransformError(f"HIBC {what} expiry YYMMDD: expected 6 digits (got {raw!r})")
    return _yymmdd(raw, f"HIBC {what} expiry YYMMDD")


@dataclass
class _Secondary:
    lot: str | None = None
    serial: str | None = None
    expiry: date | None = None
    manufactured: date | None = None
    quantity: int | None = None


def _hibc_secondary(data: str, symbol: str) -> _Secondary:
    """``data`` is the secondary data without its '+' or '/' lead and without link/check."""
    main, *supplemental = data.split("/")
    out = _Secondary()
    if main.startswith("$$+"):
        out.expiry, serial = _hibc_dated(main[3:], "serial")
        out.serial = _hibc_text(serial, "serial")
    elif main.startswith("$$"):
        rest = main[2:]
        if rest[:1] in ("8", "9"):
            size = 2 if rest[0] == "8" else 5
            qty = rest[1 : 1 + size]
            if len(qty) != size or not qty.isdigit():
                raise TransformError(
                    f"HIBC quantity after '$${rest[0]}': expected {size} digits (got {qty!r})"
                )
            out.quantity = int(qty)
            rest = rest[1 + size :]
        out.expiry, lot = _hibc_dated(rest, "lot")
        out.lot = _hibc_text(lot, "lot") if lot else None
    elif main.startswith("$+"):
        out.serial = _hibc_text(main[2:], "serial")
    elif main.startswith("$"):
        out.lot = _hibc_text(main[1:], "lot")
    elif main[:1].isdigit():
        out.expiry = _yyjjj(main[:5], "HIBC expiry YYJJJ")
        out.lot = _hibc_text(main[5:], "lot")
    else:
        raise TransformError(
            "HIBC secondary data: expected '$' lot, '$+' serial, '$$' date+lot, '$$+' date+serial"
            f" or a YYJJJ date (got {main[:12]!r} in {symbol!r})"
        )
    for field in supplemental:
        if field.startswith("14D"):
            if out.expiry is not None:
                raise TransformError(f"HIBC: expected one expiry date (got two in {symbol!r})")
            out.expiry = _yyyymmdd(field[3:], "HIBC supplemental 14D expiry")
        elif field.startswith("16D"):
            if out.manufactured is not None:
                raise TransformError(f"HIBC: expected one manufacture date (got two in {symbol!r})")
            out.manufactured = _yyyymmdd(field[3:], "HIBC supplemental 16D manufacture date")
        elif field.startswith("S"):
            if out.serial is not None:
                raise TransformError(f"HIBC: expected one serial number (got two in {symbol!r})")
            out.serial = _hibc_text(field[1:], "serial")
        else:
            raise TransformError(
                "HIBC supplemental data: expected '/S' serial, '/14D' expiry or '/16D' "
                f"manufacture date (got '/{field[:6]}' in {symbol!r})"
            )
    return out


def _is_secondary(symbol: str) -> bool:
    return symbol[1:2] == "$" or symbol[1:2].isdigit()


def _parse_hibc(text: str) -> Udi:
    symbols = [s for s in re.split(r"[\r\n\t]+", text) if s]
    symbols = [s[1:-1] if len(s) > 2 and s[0] == s[-1] == "*" else s for s in symbols]
    for s in symbols:
        if not s.startswith("+") or len(s) < 3:
            raise TransformError(f"HIBC: expected a symbol starting with '+' (got {s!r})")
        _check_hibc(s)
    first = symbols[0]
    if _is_secondary(first):
        raise TransformError(
            "HIBC: expected primary data ('+' labeler code …) before secondary data "
            f"(got {first!r})"
        )
    if len(symbols) > 2:
        raise TransformError(
            f"HIBC: expected one concatenated symbol or a primary and a secondary symbol "
            f"(got {len(symbols)} symbols)"
        )
    inner = first[1:-1]
    slash = inner.find("/")
    if slash >= 0:
        if len(symbols) == 2:
            raise TransformError(
                "HIBC: expected a separate secondary symbol only after a primary-only symbol "
                f"(got a concatenated symbol {first!r} and {symbols[1]!r})"
            )
        di = _hibc_primary(inner[:slash], first)
        sec = _hibc_secondary(inner[slash + 1 :], first)
    else:
        di = _hibc_primary(inner, first)
        sec = _Secondary()
        if len(symbols) == 2:
            second = symbols[1]
            if not _is_secondary(second) or len(second) < 4:
                raise TransformError(
                    f"HIBC: expected a secondary symbol ('+$…' or '+YYJJJ…') (got {second!r})"
                )
            link = second[-2]
            if link != first[-1]:
                raise TransformError(
                    f"HIBC link character: expected {first[-1]!r} (the primary's check character)"
                    f" (got {link!r} in {second!r})"
                )
            sec = _hibc_secondary(second[1:-2], second)
    return Udi(
        issuer="HIBCC",
        di=di,
        lot=sec.lot,
        serial=sec.serial,
        expiry=sec.expiry,
        manufactured=sec.manufactured,
        quantity=sec.quantity,
    )
