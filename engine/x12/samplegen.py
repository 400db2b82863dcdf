"""Build X12 test documents: envelopes with correct counts, and big 810 invoices.

Used by the unit tests, the benchmark (``bench/x12_validate.py``) and to write the samples in
``samples/x12/``. Parties are the sample hospital (``ZZ GENHOSP``) and vendor
(``ZZ ACMEMED``); GLNs and GTINs carry valid GS1 check digits.

A document is built as a list of segments, each a list of strings with the segment id first
(``["BEG", "00", "SA", "4500012345", "", "20260115"]``), then rendered with
:func:`render`, which joins them with the interchange's separators::

    body = [["BIG", "20260117", "INV-1", "", "4500012345"], ...]
    doc = interchange([group("IN", 7, [transaction_set("810", "0001", body)])], control=7)
    data = render(doc)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from engine.udi import gtin_check_digit

__all__ = [
    "HOSPITAL",
    "VENDOR",
    "Party",
    "Separators",
    "gln",
    "group",
    "gtin",
    "interchange",
    "invoice_810",
    "render",
    "transaction_set",
]

Segment = list[str]


@dataclass(frozen=True)
class Party:
    qualifier: str  # ISA05/ISA07
    id: str  # ISA06/ISA08 and GS02/GS03


HOSPITAL = Party("ZZ", "GENHOSP")
VENDOR = Party("ZZ", "ACMEMED")


@dataclass(frozen=True)
class Separators:
    element: str = "*"
    component: str = ">"
    segment: str = "~"
    repetition: str = "^"  # ISA11 from 00501 on


def gtin(n: int, prefix: str = "1061414") -> str:
    """A GTIN-14 with a valid check digit (indicator 1, company prefix ``prefix``)."""
    body = f"{prefix}{n:06d}"[-13:]
    return body + gtin_check_digit(body)


def gln(n: int, prefix: str = "0614141") -> str:
    """A 13-digit GLN with a valid check digit."""
    body = f"{prefix}{n:05d}"[-12:]
    return body + gtin_check_digit(body)


def transaction_set(set_id: str, control: str, body: Sequence[Segment]) -> list[Segment]:
    """ST, ``body`` and SE with the right count; ST03 for a 999 (005010X231A1)."""
    st = ["ST", set_id, control]
    if set_id == "999":
        st.append("005010X231A1")
    return [st, *body, ["SE", str(len(body) + 2), control]]


def group(
    functional_id: str,
    control: int,
    sets: Sequence[Sequence[Segment]],
    *,
    version: str = "004010",
    sender: Party = VENDOR,
    receiver: Party = HOSPITAL,
    date: str = "20260117",
    time: str = "1030",
) -> list[Segment]:
    """GS, the sets, GE (GE01 = number of sets, GE02 = GS06)."""
    out: list[Segment] = [
        ["GS", functional_id, sender.id, receiver.id, date, time, str(control), "X", version]
    ]
    for s in sets:
        out.extend(s)
    out.append(["GE", str(len(sets)), str(control)])
    return out


def interchange(
    groups: Sequence[Sequence[Segment]],
    *,
    control: int,
    version: str = "004010",
    sender: Party = VENDOR,
    receiver: Party = HOSPITAL,
    ack_requested: bool = False,
    usage: str = "P",
    date: str = "260117",
    time: str = "1030",
    separators: Separators = Separators(),
    ta1: Sequence[Segment] = (),
) -> list[Segment]:
    """ISA (fixed width), any TA1 segments, the groups, IEA."""
    isa = [
        "ISA",
        "00",
        " " * 10,
        "00",
        " " * 10,
        sender.qualifier,
        sender.id.ljust(15),
        receiver.qualifier,
        receiver.id.ljust(15),
        date,
        time,
        separators.repetition if version >= "005010" else "U",
        "00501" if version >= "005010" else "00401",
        f"{control:09d}",
        "1" if ack_requested else "0",
        usage,
        separators.component,
    ]
    out: list[Segment] = [isa, *ta1]
    for g in groups:
        out.extend(g)
    out.append(["IEA", str(len(groups)), f"{control:09d}"])
    return out


def render(
    segments: Sequence[Segment], separators: Separators = Separators(), newline: str = "\n"
) -> bytes:
    """The segments joined with ``separators``; ``newline`` after each terminator."""
    end = separators.segment + newline
    return "".join(separators.element.join(s) + end for s in segments).encode("ascii")


def _money(value: Decimal) -> str:
    return f"{value:.2f}"


def invoice_810(
    lines: int,
    *,
    version: str = "004010",
    control: int = 1,
    invoice: str = "INV-100001",
    po: str = "4500012345",
    separators: Separators = Separators(),
    newline: str = "\n",
) -> bytes:
    """An 810 with ``lines`` IT1 lines (each IT1 + PID + REF), freight, TDS and CTT.

    Each line is 2..11 EA of a catalogue item at a price between 1.25 and 80.00; TDS01 is the
    sum of the lines plus 15.00 freight in implied-decimal cents, as DOMAIN §3.2 requires.
    """
    body: list[Segment] = [
        ["BIG", "20260117", invoice, "20260115", po],
        ["REF", "VN", "SO-99812"],
        ["N1", "RE", "ACME MEDICAL SUPPLY", "92", "V0042"],
        ["N1", "ST", "GENERAL HOSPITAL CENTRAL SUPPLY", "UL", gln(2)],
        ["ITD", "01", "3", "2", "", "10", "", "30"],
        ["DTM", "011", "20260116"],
    ]
    total = Decimal(0)
    for i in range(1, lines + 1):
        qty = 2 + i % 10
        price = Decimal(125 + (i * 37) % 7875) / 100
        total += qty * price
        body.append(
            ["IT1", str(i), str(qty), "EA", _money(price), "PE", "VC", f"AC-{i:06d}", "UK", gtin(i)]
        )
        body.append(["PID", "F", "", "", "", f"SURGICAL SUPPLY ITEM {i}"])
        body.append(["REF", "LT", f"LOT{i:07d}"])
    freight = Decimal("15.00")
    total += freight
    body += [
        ["TDS", str(int(total * 100))],
        ["CAD", "M", "", "", "UPSN", "UPS GROUND"],
        ["SAC", "C", "D240", "", "", str(int(freight * 100)), *[""] * 9, "FREIGHT"],
        ["CTT", str(lines)],
    ]
    doc = interchange(
        [group("IN", control, [transaction_set("810", "0001", body)], version=version)],
        control=control,
        version=version,
        separators=separators,
    )
    return render(doc, separators, newline)


def _vendor_file(functional_id: str, set_id: str, body: list[Segment], control: int) -> bytes:
    """One 005010 interchange from the vendor holding one set, TA1 asked for."""
    g = group(
        functional_id,
        control,
        [transaction_set(set_id, "0001", body)],
        version="005010",
        sender=VENDOR,
        receiver=HOSPITAL,
    )
    ic = interchange(
        [g],
        control=control,
        version="005010",
        sender=VENDOR,
        receiver=HOSPITAL,
        ack_requested=True,
    )
    return render(ic)


def vendor_answers(po_number: str, gs06: str, st02: str) -> dict[str, bytes]:
    """What ACME MEDICAL sends back for ``samples/erp/purchase_order_4500012345.json`` (2 BX of
    bone screws, 5 PR of gloves), in order: a 999 accepting our 850 (its GS06/ST02), an 855
    (line 1 accepted, line 2 backordered), an 856 (2 BX with lot and SSCC, 3 of the 5 PR), and
    two 810s: one that matches (the screws) and one priced over tolerance (the gloves)."""
    return {
        "999_for_850.x12": _vendor_file(
            "FA",
            "999",
            [
                ["AK1", "PO", gs06, "005010"],
                ["AK2", "850", st02],
                ["IK5", "A"],
                ["AK9", "A", "1", "1", "1"],
            ],
            101,
        ),
        "855_ack.x12": _vendor_file(
            "PR",
            "855",
            [
                ["BAK", "00", "AC", po_number, "20260115"],
                ["PO1", "1", "2", "BX", "125", "PE", "VC", "ORTH-SCR-35"],
                ["ACK", "IA", "2", "BX", "068", "20260117"],
                ["PO1", "2", "5", "PR", "12.5", "PE", "VC", "GLV-7"],
                ["ACK", "IB", "5", "PR"],
                ["CTT", "2"],
            ],
            102,
        ),
        "856_asn.x12": _vendor_file(
            "SH",
            "856",
            [
                ["BSN", "00", "SHP778899", "20260116", "1400", "0001"],
                ["HL", "1", "", "S"],
                ["TD1", "CTN25", "1"],
                ["TD5", "B", "2", "UPSN", "U"],
                ["REF", "CN", "1Z999AA10123456784"],
                ["DTM", "011", "20260116"],
                ["N1", "ST", "GENERAL HOSPITAL OR DOCK", "UL", "0614141000012"],
                ["HL", "2", "1", "O"],
                ["PRF", po_number, "", "", "20260115"],
                ["HL", "3", "2", "P"],
                ["MAN", "GM", "00106141411234567897"],
                ["HL", "4", "3", "I"],
                ["LIN", "1", "VC", "ORTH-SCR-35", "UK", "10614141999993", "LT", "LOT2025A"],
                ["SN1", "1", "2", "BX"],
                ["DTM", "036", "20290630"],
                ["HL", "5", "3", "I"],
                ["LIN", "2", "VC", "GLV-7"],
                ["SN1", "2", "3", "PR"],
                ["CTT", "5"],
            ],
            103,
        ),
        "810_matching.x12": vendor_invoice(
            po_number, "INV-55501", ["1", "2", "BX", "125", "PE", "VC", "ORTH-SCR-35"], 25000, 104
        ),
        "810_overpriced.x12": vendor_invoice(
            po_number, "INV-55502", ["2", "3", "PR", "19", "PE", "VC", "GLV-7"], 5700, 105
        ),
    }


def vendor_second_shipment(po_number: str) -> bytes:
    """ACME MEDICAL's second 856 for that PO: the 2 PR of gloves backordered in its 855."""
    return _vendor_file(
        "SH",
        "856",
        [
            ["BSN", "00", "SHP778900", "20260119", "0900", "0001"],
            ["HL", "1", "", "S"],
            ["HL", "2", "1", "O"],
            ["PRF", po_number, "", "", "20260115"],
            ["HL", "3", "2", "I"],
            ["LIN", "2", "VC", "GLV-7"],
            ["SN1", "2", "2", "PR"],
            ["CTT", "3"],
        ],
        106,
    )


def vendor_invoice(
    po_number: str, number: str, it1: list[str], total_cents: int, control: int
) -> bytes:
    """A one-line 005010 810 from the vendor (IT1 elements as given, TDS in cents)."""
    body = [
        ["BIG", "20260117", number, "20260115", po_number],
        ["N1", "RE", "ACME MEDICAL SUPPLY INC", "92", "V0042"],
        ["IT1", *it1],
        ["TDS", str(total_cents)],
        ["CTT", "1"],
    ]
    return _vendor_file("IN", "810", body, control)
