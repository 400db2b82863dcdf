"""The X12 850 purchase order built from the ERP's released PO, for one trading partner.

The PO is the JSON document the ERP releases (the sandbox ERP's ``POST /purchase-orders``
body, pushed by its release webhook)::

    {
      "po_number": "4500012345",                    BEG03 (1..22 characters)
      "order_date": "2026-01-15",                   BEG05 (YYYY-MM-DD or YYYYMMDD)
      "purpose": "original",                        BEG01: original 00 | cancel 01 |
                                                           replace 05 | confirming 06
      "vendor": "VND-ACMEMED",                      N1*VN*<name>*92*<vendor>
      "vendor_name": "ACME MEDICAL SUPPLY INC",     optional (default: the partner's name)
      "currency": "USD",                            CUR*BY (optional)
      "department": "OR-SURG",                      REF*DP (optional)
      "contract": "CT-2026-0042",                   REF*CT (optional)
      "buyer": {"name": "JANE BUYER", "phone": "5555550100", "email": "..."},   PER*BD
      "need_by": "2026-01-20",                      DTM*002 (optional)
      "ship_to": {"gln": "0614141000029", "name": "GENERAL HOSPITAL OR DOCK",
                  "address": {"street": ["100 MAIN ST"], "city": "SPRINGFIELD",
                              "state": "IL", "postal_code": "62701", "country": "US"}},
                                                    N1*ST*<name>*UL*<gln>, N3, N4 (required)
      "bill_to": {... same shape, gln optional},    N1*BT (optional)
      "lines": [{
        "line": "1",                                PO101
        "item_id": "ITEM-100123",                   PO1 IN (buyer's item number)
        "vendor_catalog": "ORTH-SCR-35",            PO1 VC (optional)
        "gtin": "10614141999993",                   PO1 UK, GTIN-14 with check digit (optional)
        "manufacturer_part": "...",                 PO1 MG (optional)
        "description": "BONE SCREW 3.5MM BX/5",     PID*F****<description> (optional)
        "qty": "2", "uom": "BX",                    PO102, PO103 (through the partner's uom map)
        "unit_price": "125.00",                     PO104, PO105 = PE
        "pack": {"qty": 5, "uom": "EA"},            PO4*5*1*EA (optional)
        "lot": "LOT2025A", "serial": "SN000123"     PO1 LT / SN (bill-only implants)
      }],
      "bill_only": {                                present = a bill-only (consigned implant) PO
        "case_id": "CASE-2026-0042",                REF*<case_id_ref>*<case_id> (required)
        "patient": {"mrn": "MRN12345"},             REF*EA, only if the partner has send_mrn
        "procedure_date": "2026-01-15",             DTM*472 (unless send_procedure_date: false)
        "surgeon": {"name": "SAM SURGEON", "npi": "1234567893"}
                                                    N1*72*<name>*XX*<npi>, if send_surgeon
      }
    }

Lot and serial are per line (each implant has its own). The patient's name is never written.
Summary: ``CTT*<lines>*<sum of PO102>`` and ``AMT*TT*<sum of qty × price>``. Every value is
checked: a missing required field, a value too long for its element, a separator character in
the data or a malformed date/GLN/GTIN raises :class:`~engine.errors.X12WriteError` naming the
PO field and its element (``lines[1].description (PID05)``); a unit missing from the partner's
map raises :class:`~engine.errors.UnmappedUnit` naming the unit and the partner.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from engine.domains.procurement.numbers import ControlNumbers
from engine.domains.procurement.partners import Partner
from engine.errors import X12WriteError
from engine.udi import gln_valid, gtin_valid
from engine.x12.writer import FunctionalGroup, TransactionSet, check_text, write_interchange

__all__ = ["PURPOSES", "build_850", "segments_850"]

PURPOSES = {"original": "00", "cancel": "01", "replace": "05", "confirming": "06"}
_DATE = re.compile(r"(\d{4})-?(\d{2})-?(\d{2})")
_CURRENCY = re.compile(r"[A-Z]{3}")
_STATE = re.compile(r"[A-Z]{2}")


class _Po:
    """Reads values out of the PO with the partner's separators, naming fields in errors."""

    def __init__(self, partner: Partner) -> None:
        self.partner = partner
        self.ref_max = 50 if partner.version == "005010" else 30
        self.per_max = 256 if partner.version == "005010" else 80

    def text(
        self,
        obj: Mapping[str, Any],
        key: str,
        path: str,
        element: str,
        max_len: int,
        *,
        required: bool = False,
        min_len: int = 1,
    ) -> str | None:
        field = f"{path}{key} ({element})"
        value = obj.get(key) if isinstance(obj, Mapping) else None
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                raise X12WriteError(field, f"required (got {value!r})")
            return None
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise X12WriteError(field, f"expected text (got {value!r})")
        text = str(value).strip()
        check_text(text, self.partner.separators, field)
        if not min_len <= len(text) <= max_len:
            raise X12WriteError(
                field, f"must be {min_len}..{max_len} characters (got {len(text)}: {text!r})"
            )
        return text

    def date(self, obj: Mapping[str, Any], key: str, path: str, element: str, **kw: Any) -> Any:
        text = self.text(obj, key, path, element, 10, **kw)
        if text is None:
            return None
        m = _DATE.fullmatch(text)
        try:
            if not m:
                raise ValueError
            date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
        except ValueError:
            raise X12WriteError(
                f"{path}{key} ({element})", f"expected a date YYYY-MM-DD (got {text!r})"
            ) from None
        return "".join(m.groups())

    def decimal(
        self, obj: Mapping[str, Any], key: str, path: str, element: str, *, positive: bool
    ) -> Decimal:
        field = f"{path}{key} ({element})"
        value = obj.get(key)
        if value is None or isinstance(value, bool) or not isinstance(value, str | int | float):
            raise X12WriteError(field, f"expected a decimal number (got {value!r})")
        try:
            number = Decimal(str(value).strip())
        except InvalidOperation:
            raise X12WriteError(field, f"expected a decimal number (got {value!r})") from None
        if not number.is_finite() or number < 0 or (positive and number == 0):
            need = "> 0" if positive else ">= 0"
            raise X12WriteError(field, f"must be a number {need} (got {value!r})")
        return number

    def mapping(self, obj: Mapping[str, Any], key: str, path: str, required: bool) -> Any:
        value = obj.get(key)
        if value is None:
            if required:
                raise X12WriteError(f"{path}{key}", "required (got None)")
            return None
        if not isinstance(value, Mapping):
            raise X12WriteError(f"{path}{key}", f"expected an object (got {value!r})")
        return value


def _r(number: Decimal, field: str, max_digits: int, money: bool = False) -> str:
    """An X12 ``R`` value: explicit decimal point, no exponent, no trailing zeros (money keeps
    at least 2 decimals); ``max_digits`` counts digits only, as X12 lengths do."""
    if money and number.as_tuple().exponent > -2:  # type: ignore[operator]
        number = number.quantize(Decimal("0.01"))
    elif not money:
        number = number.normalize()
    text = format(number, "f")
    if "." in text and not money:
        text = text.rstrip("0").rstrip(".")
    digits = sum(c.isdigit() for c in text)
    if digits > max_digits:
        raise X12WriteError(field, f"must have at most {max_digits} digits (got {text})")
    return text


def _party(
    po: _Po, code: str, party: Mapping[str, Any], path: str, need_gln: bool
) -> list[tuple[Any, ...]]:
    name = po.text(party, "name", path, "N102", 60, required=True)
    gln = po.text(party, "gln", path, "N104", 13, required=need_gln)
    if gln is not None and not gln_valid(gln):
        raise X12WriteError(
            f"{path}gln (N104)", f"expected a 13-digit GLN with its check digit (got {gln!r})"
        )
    out: list[tuple[Any, ...]] = [("N1", code, name, "UL", gln) if gln else ("N1", code, name)]
    address = po.mapping(party, "address", path, False)
    if address is not None:
        apath = f"{path}address."
        street = address.get("street") or []
        if isinstance(street, str):
            street = [street]
        if not isinstance(street, list) or len(street) > 2:
            raise X12WriteError(f"{apath}street", f"expected 1 or 2 lines (got {street!r})")
        lines = [
            po.text({"s": s}, "s", f"{apath}street[{i}]", f"N30{i + 1}", 55)
            for i, s in enumerate(street)
        ]
        if lines:
            out.append(("N3", *lines))
        city = po.text(address, "city", apath, "N401", 30, min_len=2)
        state = po.text(address, "state", apath, "N402", 2, min_len=2)
        if state is not None and not _STATE.fullmatch(state):
            raise X12WriteError(f"{apath}state (N402)", f"expected 2 capitals (got {state!r})")
        postal = po.text(address, "postal_code", apath, "N403", 15, min_len=3)
        country = po.text(address, "country", apath, "N404", 3, min_len=2)
        if city or state or postal or country:
            out.append(("N4", city, state, postal, country))
    return out


def _line(po: _Po, line: Any, i: int, seen: set[str]) -> tuple[list[tuple[Any, ...]], Decimal]:
    path = f"lines[{i}]."
    if not isinstance(line, Mapping):
        raise X12WriteError(f"lines[{i}]", f"expected an object (got {line!r})")
    partner = po.partner
    number = po.text(line, "line", path, "PO101", 20, required=True)
    assert number is not None
    if number in seen:
        raise X12WriteError(f"{path}line (PO101)", f"duplicate line number {number!r}")
    seen.add(number)
    qty = po.decimal(line, "qty", path, "PO102", positive=True)
    unit = po.text(line, "uom", path, "PO103", 10, required=True)
    assert unit is not None
    price = po.decimal(line, "unit_price", path, "PO104", positive=False)
    ids: list[str | None] = []
    for key, qualifier in (
        ("vendor_catalog", "VC"),
        ("gtin", "UK"),
        ("item_id", "IN"),
        ("manufacturer_part", "MG"),
        ("lot", "LT"),
        ("serial", "SN"),
    ):
        element = f"PO1{7 + 2 * (len(ids) // 2):02d}"
        value = po.text(line, key, path, element, 48, required=key == "item_id")
        if value is None:
            continue
        if key == "gtin":
            value = _gtin14(value, f"{path}gtin ({element})")
        ids += [qualifier, value]
    segs: list[tuple[Any, ...]] = [
        (
            "PO1",
            number,
            _r(qty, f"{path}qty (PO102)", 15),
            partner.their_unit(unit),
            _r(price, f"{path}unit_price (PO104)", 17, money=True),
            "PE",
            *ids,
        )
    ]
    description = po.text(line, "description", path, "PID05", 80)
    if description:
        segs.append(("PID", "F", None, None, None, description))
    pack = po.mapping(line, "pack", path, False)
    if pack is not None:
        inner = po.decimal(pack, "qty", f"{path}pack.", "PO401", positive=True)
        if inner != inner.to_integral_value():
            raise X12WriteError(
                f"{path}pack.qty (PO401)", f"expected a whole number of units (got {inner})"
            )
        pack_unit = po.text(pack, "uom", f"{path}pack.", "PO403", 10, required=True)
        assert pack_unit is not None
        segs.append(
            (
                "PO4",
                _r(inner, f"{path}pack.qty (PO401)", 6),
                "1",
                partner.their_unit(pack_unit),
            )
        )
    return segs, qty


def _gtin14(value: str, field: str) -> str:
    if value.isdigit() and len(value) in (8, 12, 13, 14):
        padded = value.rjust(14, "0")
        if gtin_valid(padded):
            return padded
    raise X12WriteError(
        field, f"expected a GTIN (8, 12, 13 or 14 digits, check digit) (got {value!r})"
    )


def _npi_valid(npi: str) -> bool:
    """NPI: 10 digits, Luhn check digit over the prefix 80840 + the first 9 digits."""
    if len(npi) != 10 or not npi.isdigit():
        return False
    digits = [int(c) for c in "80840" + npi[:9]]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 0:
            d *= 2
            d = d - 9 if d > 9 else d
        total += d
    return (10 - total % 10) % 10 == int(npi[9])


def segments_850(po: Mapping[str, Any], partner: Partner) -> list[tuple[Any, ...]]:
    """The segments of the 850 between ST and SE (BEG … AMT) for ``partner``."""
    if not isinstance(po, Mapping):
        raise X12WriteError("po", f"expected a JSON object (got {type(po).__name__})")
    r = _Po(partner)
    po_number = r.text(po, "po_number", "", "BEG03", 22, required=True)
    order_date = r.date(po, "order_date", "", "BEG05", required=True)
    purpose = po.get("purpose", "original")
    if purpose not in PURPOSES:
        raise X12WriteError(
            "purpose (BEG01)", f"expected one of {', '.join(PURPOSES)} (got {purpose!r})"
        )
    vendor = r.text(po, "vendor", "", "N104", 80, required=True, min_len=2)
    if partner.vendors and vendor not in partner.vendors:
        raise X12WriteError(
            "vendor (N104)",
            f"expected a vendor of trading partner '{partner.id}' "
            f"({', '.join(partner.vendors)}) (got {vendor!r})",
        )
    vendor_name = r.text(po, "vendor_name", "", "N102", 60) or partner.name
    if vendor_name is None:
        raise X12WriteError("vendor_name (N102)", "required when the partner has no name")
    check_text(vendor_name, partner.separators, f"trading partner {partner.id} name (N102)")
    bill_only = r.mapping(po, "bill_only", "", False)
    rules = partner.bill_only
    order_type = rules.order_type if bill_only is not None else "SA"

    segs: list[tuple[Any, ...]] = [
        ("BEG", PURPOSES[purpose], order_type, po_number, None, order_date)
    ]
    currency = r.text(po, "currency", "", "CUR02", 3)
    if currency is not None:
        if not _CURRENCY.fullmatch(currency):
            raise X12WriteError(
                "currency (CUR02)", f"expected an ISO 4217 code such as USD (got {currency!r})"
            )
        segs.append(("CUR", "BY", currency))
    for key, qualifier in (("department", "DP"), ("contract", "CT")):
        value = r.text(po, key, "", "REF02", r.ref_max)
        if value is not None:
            segs.append(("REF", qualifier, value))
    if bill_only is not None:
        case_id = r.text(bill_only, "case_id", "bill_only.", "REF02", r.ref_max, required=True)
        segs.append(("REF", rules.case_id_ref, case_id))
        if rules.send_mrn:
            patient = r.mapping(bill_only, "patient", "bill_only.", True)
            mrn = r.text(patient, "mrn", "bill_only.patient.", "REF02", r.ref_max, required=True)
            segs.append(("REF", "EA", mrn))
    buyer = r.mapping(po, "buyer", "", False)
    if buyer is not None:
        name = r.text(buyer, "name", "buyer.", "PER02", 60)
        contact: list[str | None] = []
        for key, qualifier in (("phone", "TE"), ("email", "EM")):
            value = r.text(buyer, key, "buyer.", f"PER0{4 + len(contact)}", r.per_max)
            if value is not None:
                contact += [qualifier, value]
        if name or contact:
            segs.append(("PER", "BD", name, *contact))
    need_by = r.date(po, "need_by", "", "DTM02")
    if need_by is not None:
        segs.append(("DTM", "002", need_by))
    surgeon = None
    if bill_only is not None:
        if rules.send_procedure_date:
            when = r.date(bill_only, "procedure_date", "bill_only.", "DTM02", required=True)
            segs.append(("DTM", "472", when))
        if rules.send_surgeon:
            surgeon = r.mapping(bill_only, "surgeon", "bill_only.", True)
    bill_to = r.mapping(po, "bill_to", "", False)
    if bill_to is not None:
        segs += _party(r, "BT", bill_to, "bill_to.", need_gln=False)
    segs += _party(r, "ST", r.mapping(po, "ship_to", "", True), "ship_to.", need_gln=True)
    segs.append(("N1", "VN", vendor_name, "92", vendor))
    if surgeon is not None:
        name = r.text(surgeon, "name", "bill_only.surgeon.", "N102", 60, required=True)
        npi = r.text(surgeon, "npi", "bill_only.surgeon.", "N104", 10)
        if npi is not None and not _npi_valid(npi):
            raise X12WriteError(
                "bill_only.surgeon.npi (N104)",
                f"expected a 10-digit NPI with its check digit (got {npi!r})",
            )
        segs.append(("N1", "72", name, "XX", npi) if npi else ("N1", "72", name))

    lines = po.get("lines")
    if not isinstance(lines, list) or not lines:
        raise X12WriteError("lines", f"expected a non-empty list of lines (got {lines!r})")
    seen: set[str] = set()
    hash_total = Decimal(0)
    amount = Decimal(0)
    for i, line in enumerate(lines):
        line_segs, qty = _line(r, line, i, seen)
        segs += line_segs
        hash_total += qty
        amount += qty * r.decimal(line, "unit_price", f"lines[{i}].", "PO104", positive=False)
    segs.append(("CTT", len(lines), _r(hash_total, "CTT02", 10)))
    segs.append(("AMT", "TT", _r(amount, "AMT02", 15, money=True)))
    return segs


def build_850(
    po: Mapping[str, Any],
    partner: Partner,
    numbers: ControlNumbers,
    *,
    now: datetime | None = None,
) -> bytes:
    """The whole interchange (ISA … IEA) holding this PO as one 850, for ``partner``, with the
    control numbers allocated (and committed) beforehand (a procurement repository's
    ``allocate_envelope``). ``numbers.st02`` must hold exactly one number."""
    if len(numbers.st02) != 1:
        raise X12WriteError("ST02", f"expected one set control number (got {numbers.st02!r})")
    body = tuple(segments_850(po, partner))
    group = FunctionalGroup("PO", numbers.gs06, (TransactionSet("850", numbers.st02[0], body),))
    return write_interchange(partner.outbound_header(), numbers.isa13, [group], now=now)
