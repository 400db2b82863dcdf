"""Definitions behind the pyx12 maps in ``engine/x12/maps/``: data elements, segments, and the
structure of the generic (non-HIPAA) 850, 855, 856, 810, 997 and 999 in 004010 and 005010.

The XML maps are generated from these tables by :mod:`engine.x12.mapgen`; edit here, then run
``python -m engine.x12.mapgen`` (a unit test fails when the XML files are stale).

Conventions:

* usage ``R`` = mandatory (X12 ``M``), ``S`` = optional or relational (X12 ``O``/``X``; the
  relation is a syntax note such as ``P0304``), ``N`` = not used.
* ``since="005010"`` marks an element that only exists from 005010 on (N407, AK103, AK203…).
* Data element lengths are those of 005010 where the two versions differ (pyx12 reads one
  ``dataele.xml`` per map folder): REF02 (127) 1/50 instead of 1/30, PER04 (364) 1/256 instead
  of 1/80, AK302 (719) 1/10 instead of 1/6. A 4010 value between the two limits is accepted.
* Code lists (docs/x12-code-lists.md): an element carries a list only where Wharf acts on its
  code and would do the wrong thing with another one (668 line status, 248 allowance/charge,
  1250 date format, the envelope and the acknowledgment codes); a code
  outside it is an "invalid code value" (997 AK403 / 999 IK403 = 7). The other coded elements
  (:data:`CODED_WITHOUT_LIST`: 355 units, 235 product id qualifiers, 128 reference and 374 date
  qualifiers...) are checked for type, length and the form of a code only, so that a valid
  standard code is never refused: X12's complete lists are a licensed product and Wharf ships
  none. Units (355) are the partner's uom map's business (``mappings/trading_partners.yaml``):
  a unit it lacks becomes a MISSING_MAPPING work item. An installation that licenses the
  complete lists drops them in ``mappings/x12/codelists/``
  (:mod:`engine.domains.procurement.codelists`).
* Each transaction lists the segments of DOMAIN §3.2 plus the usual companions (N2-N4, PER,
  FOB, ITD, TD1/TD5, MAN, TXI, SAC, N9/MSG, PO4, MEA, SCH…) in standard order and with the
  standard repeats. A standard segment not listed (TAX, CTP, PKG, SLN…) is "segment not
  found" (AK304 = 1); add it to the structure when a partner sends it.
* The HEADER/DETAIL/SUMMARY tables are written flattened into ST_LOOP (see
  :func:`engine.x12.mapgen._flatten`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "CODED_WITHOUT_LIST",
    "CODE_FORM",
    "DATA_ELEMENTS",
    "SEGMENTS",
    "TRANSACTIONS",
    "VERSIONS",
    "Composite",
    "DataElement",
    "Element",
    "Loop",
    "SegmentDef",
    "Transaction",
    "Use",
    "transaction_loop",
]

VERSIONS = ("004010", "005010")


@dataclass(frozen=True)
class DataElement:
    """An entry of the X12 data element dictionary (``dataele.xml``)."""

    number: str
    type: str  # AN ID DT TM R N0 N2
    min: int
    max: int
    name: str


@dataclass(frozen=True)
class Element:
    """A simple element of a segment or composite."""

    ref: str  # data element number
    usage: str  # R S N
    name: str = ""
    codes: tuple[str, ...] = ()
    since: str = ""


@dataclass(frozen=True)
class Composite:
    ref: str  # C040
    usage: str
    name: str
    parts: tuple[Element, ...]
    since: str = ""


@dataclass(frozen=True)
class SegmentDef:
    id: str
    name: str
    elements: tuple[Element | Composite, ...]
    syntax: tuple[str, ...] = ()


@dataclass(frozen=True)
class Use:
    """A segment placed in a transaction structure."""

    id: str
    pos: int
    usage: str
    max_use: str = "1"
    codes: dict[int, tuple[str, ...]] = field(default_factory=dict)  # element seq -> codes


@dataclass(frozen=True)
class Loop:
    id: str
    name: str
    usage: str
    pos: int
    repeat: str
    children: tuple[Use | Loop, ...]
    type: str | None = None  # "wrapper" for HEADER/DETAIL/SUMMARY tables, "explicit" envelopes


def _de(spec: str) -> dict[str, DataElement]:
    out: dict[str, DataElement] = {}
    for line in spec.strip().splitlines():
        number, dtype, lo, hi, name = line.split(None, 4)
        out[number] = DataElement(number, dtype, int(lo), int(hi), name.strip())
    return out


# number type min max name
DATA_ELEMENTS = _de(
    """
I01 ID 2 2 Authorization Information Qualifier
I02 AN 10 10 Authorization Information
I03 ID 2 2 Security Information Qualifier
I04 AN 10 10 Security Information
I05 ID 2 2 Interchange ID Qualifier
I06 AN 15 15 Interchange Sender ID
I07 AN 15 15 Interchange Receiver ID
I08 DT 6 6 Interchange Date
I09 TM 4 4 Interchange Time
I10 ID 1 1 Interchange Control Standards Identifier
I11 ID 5 5 Interchange Control Version Number
I12 N0 9 9 Interchange Control Number
I13 ID 1 1 Acknowledgment Requested
I14 ID 1 1 Interchange Usage Indicator
I15 AN 1 1 Component Element Separator
I16 N0 1 5 Number of Included Functional Groups
I17 ID 1 1 Interchange Acknowledgment Code
I18 ID 3 3 Interchange Note Code
I65 AN 1 1 Repetition Separator
2 N0 1 6 Number of Accepted Transaction Sets
19 AN 2 30 City Name
22 AN 1 30 Commodity Code
23 ID 1 1 Commodity Code Qualifier
26 ID 2 3 Country Code
28 N0 1 9 Group Control Number
54 ID 2 2 Risk of Loss Code
66 ID 1 2 Identification Code Qualifier
67 AN 2 80 Identification Code
76 AN 1 22 Invoice Number
79 AN 1 50 Lading Description
80 N0 1 7 Lading Quantity
81 R 1 10 Weight
82 R 1 8 Size
87 AN 1 48 Marks and Numbers
88 ID 1 2 Marks and Numbers Qualifier
91 ID 1 2 Transportation Method/Type Code
92 ID 2 2 Purchase Order Type Code
93 AN 1 60 Name
96 N0 1 10 Number of Included Segments
97 N0 1 6 Number of Transaction Sets Included
98 ID 2 3 Entity Identifier Code
100 ID 3 3 Currency Code
103 AN 3 5 Packaging Code
107 ID 1 2 Payment Method Code
116 ID 3 15 Postal Code
118 R 1 9 Rate
123 N0 1 6 Number of Received Transaction Sets
124 AN 2 15 Application Receiver's Code
127 AN 1 50 Reference Identification
128 ID 2 3 Reference Identification Qualifier
133 ID 1 2 Routing Sequence Code
140 ID 2 4 Standard Carrier Alpha Code
142 AN 2 15 Application Sender's Code
143 ID 3 3 Transaction Set Identifier Code
146 ID 2 2 Shipment Method of Payment
156 ID 2 2 State or Province Code
166 AN 1 55 Address Information
183 R 1 8 Volume
187 ID 1 2 Weight Qualifier
206 AN 1 4 Equipment Initial
207 AN 1 10 Equipment Number
212 R 1 17 Unit Price
234 AN 1 48 Product/Service ID
235 ID 2 2 Product/Service ID Qualifier
248 ID 1 1 Allowance or Charge Indicator
280 R 4 10 Exchange Rate
284 ID 1 2 Service Level Code
306 ID 1 2 Action Code
309 ID 1 2 Location Qualifier
310 AN 1 30 Location Identifier
324 AN 1 22 Purchase Order Number
325 AN 1 20 Tax Identification Number
326 AN 1 45 Request Reference Number
327 AN 1 8 Change Order Sequence Number
328 AN 1 30 Release Number
329 AN 4 9 Transaction Set Control Number
330 R 1 15 Quantity Ordered
331 ID 2 2 Allowance or Charge Method of Handling Code
332 R 1 6 Percent
333 ID 1 2 Terms Basis Date Code
334 ID 2 2 Transportation Terms Qualifier Code
335 ID 3 3 Transportation Terms Code
336 ID 2 2 Terms Type Code
337 TM 4 8 Time
338 R 1 6 Terms Discount Percent
342 R 1 5 Percent of Invoice Payable
347 R 1 10 Hash Total
349 ID 1 1 Item Description Type
350 AN 1 20 Assigned Identification
351 N0 1 3 Terms Discount Days Due
352 AN 1 80 Description
353 ID 2 2 Transaction Set Purpose Code
354 N0 1 6 Number of Line Items
355 ID 2 2 Unit or Basis for Measurement Code
356 N0 1 6 Pack
357 R 1 8 Size
358 R 1 10 Quantity Invoiced
362 N2 1 10 Terms Discount Amount
364 AN 1 256 Communication Number
365 ID 2 2 Communication Number Qualifier
366 ID 2 2 Contact Function Code
367 AN 1 30 Contract Number
368 ID 2 2 Shipment/Order Status Code
369 AN 1 45 Free-form Description
370 DT 8 8 Terms Discount Due Date
373 DT 8 8 Date
374 ID 3 3 Date/Time Qualifier
378 ID 1 1 Allowance/Charge Percent Qualifier
380 R 1 15 Quantity
382 R 1 10 Number of Units Shipped
384 R 1 9 Gross Weight per Pack
385 R 1 9 Gross Volume per Pack
386 N0 1 3 Terms Net Days
387 AN 1 35 Routing
388 DT 8 8 Terms Deferred Due Date
389 N2 1 10 Deferred Amount Due
396 AN 2 30 Shipment Identification
441 ID 1 1 Tax Exempt Code
443 AN 1 20 Contact Inquiry Reference
446 DT 8 8 Terms Net Due Date
447 AN 1 4 Loop Identifier Code
455 ID 1 2 Responsible Agency Code
478 ID 1 1 Credit/Debit Flag Code
479 ID 2 2 Functional Identifier Code
480 AN 1 12 Version / Release / Industry Identifier Code
522 ID 1 3 Amount Qualifier Code
559 ID 2 2 Agency Qualifier Code
587 ID 2 2 Acknowledgment Type
610 N2 1 15 Amount
618 ID 1 3 Implementation Transaction Set Syntax Error Code
620 ID 1 3 Implementation Segment Syntax Error Code
621 ID 1 3 Implementation Data Element Syntax Error Code
623 ID 2 2 Time Code
628 AN 1 12 Hierarchical ID Number
639 ID 2 2 Basis of Unit Price Code
640 ID 2 2 Transaction Type Code
641 ID 3 3 Status Reason Code
646 R 1 15 Quantity Shipped to Date
668 ID 2 2 Line Item Status Code
669 ID 3 3 Currency Market/Exchange Code
706 ID 2 2 Entity Relationship Code
715 ID 1 1 Functional Group Acknowledge Code
716 ID 1 3 Functional Group Syntax Error Code
717 ID 1 1 Transaction Set Acknowledgment Code
718 ID 1 3 Transaction Set Syntax Error Code
719 N0 1 10 Segment Position in Transaction Set
720 ID 1 3 Segment Syntax Error Code
721 ID 2 3 Segment ID Code
722 N0 1 2 Element Position in Segment
723 ID 1 3 Data Element Syntax Error Code
724 AN 1 99 Copy of Bad Data Element
725 N0 1 4 Data Element Reference Number
728 ID 2 2 Returnable Container Load Make-Up Code
731 ID 2 2 Transit Direction Code
732 ID 2 2 Transit Time Direction Qualifier
733 R 1 4 Transit Time
734 AN 1 12 Hierarchical Parent ID Number
735 ID 1 2 Hierarchical Level Code
736 ID 1 1 Hierarchical Child Code
750 ID 2 3 Product/Process Characteristic Code
751 AN 1 12 Product Description Code
752 ID 2 2 Surface/Layer/Position Code
765 N0 1 2 Day of Month
770 AN 1 20 Option Number
782 R 1 18 Monetary Amount
786 ID 2 2 Security Level Code
810 N0 1 6 Inner Pack
819 ID 2 3 Language Code
822 AN 1 15 Source Subqualifier
828 R 1 9 Dollar Basis For Percent
933 AN 1 264 Free-Form Message Text
934 ID 2 2 Printer Carriage Control Code
954 R 1 10 Percent
955 ID 2 2 Tax Jurisdiction Code Qualifier
956 AN 1 10 Tax Jurisdiction Code
963 ID 2 2 Tax Type Code
1005 ID 4 4 Hierarchical Structure Code
1019 ID 3 3 Invoice Type Code
1025 ID 1 1 Relationship Code
1073 ID 1 1 Yes/No Condition or Response Code
1166 ID 2 2 Contract Type Code
1232 ID 2 2 Purchase Category
1250 ID 2 3 Date Time Period Format Qualifier
1251 AN 1 35 Date Time Period
1271 AN 1 30 Industry Code
1300 ID 4 4 Service, Promotion, Allowance, or Charge Code
1301 AN 1 10 Agency Service, Promotion, Allowance, or Charge Code
1470 N0 1 9 Number
1528 N0 1 2 Component Data Element Position in Composite
1686 N0 1 4 Repeating Data Element Position
1705 AN 1 35 Implementation Convention Reference
1715 ID 1 3 Country Subdivision Code
9998 AN 1 35 Context Reference
9999 AN 1 35 Context Name
"""
)


def _codes(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# ---- code lists: only where Wharf acts on the code (docs/x12-code-lists.md) ----
# A code outside one of these lists is rejected (997 AK403 / 999 IK403 = 7).
# Line item status: every code of the standard's list (004030 and later: 26 codes); each has a
# behaviour in engine.x12.documents.common.ACK_STATUS.
LINE_STATUS_668 = _codes(
    "AA AC AR BP DR IA IB IC ID IE IF IH IP IQ IR IS IW R1 R2 R3 R4 R5 R6 R7 R8 SP"
)
# Allowance or charge: decides the sign of a SAC amount in the invoice match.
SAC_248 = _codes("A C N")
# Date/time format qualifier: pyx12 checks DTM06 against the format it names.
DATE_FORMAT_1250 = _codes("D8 RD8 DT")
# ---- envelope and acknowledgment codes (the standard's lists; Wharf acts on each) ----
ISA_QUAL_I05 = _codes(
    "01 02 03 04 07 08 09 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 "
    "31 32 33 34 35 36 AM NR SA SN ZZ"
)
FIC_479 = _codes("IN PO PR SH FA")
ACKED_FIC_479 = _codes("IN PO PR SH RA PS")
ACKED_SET_143 = _codes("810 820 830 832 846 850 855 856 860 865")
SEG_ERR_720 = _codes("1 2 3 4 5 6 7 8")
SEG_ERR_720_5010 = _codes("1 2 3 4 5 6 7 8 I4 I6 I7 I8 I9")
ELE_ERR_723 = _codes("1 2 3 4 5 6 7 8 9 10")
ELE_ERR_723_5010 = _codes("1 2 3 4 5 6 7 8 9 10 12 13")
ELE_ERR_621 = _codes("1 2 3 4 5 6 7 8 9 10 12 13 I10 I11 I12 I13 I6 I9")
SET_ERR_718 = _codes("1 2 3 4 5 6 7 8 9 10 11 12 13 15 16 17 18 19 23 24 25 26 27")
SET_ERR_618 = (*SET_ERR_718, "I5", "I6")
SET_ACK_717 = _codes("A E M R W X")
GROUP_ACK_715 = _codes("A E M P R W X")
GROUP_ERR_716 = _codes("1 2 3 4 5 6 10 11 12 13 14 15 16 17 18 19 23 24 25 26")
TA1_NOTE_I18 = tuple(f"{n:03d}" for n in range(32))

#: Coded elements of the transaction sets checked for type, length and the form of an X12 code
#: (letters and digits, :data:`CODE_FORM`) but against no list of ours: Wharf does not act on
#: their codes, or acts on some and reads the others as documented in docs/x12-code-lists.md.
#: A list dropped in ``mappings/x12/codelists/`` (engine.domains.procurement.codelists) makes
#: the check complete.
CODED_WITHOUT_LIST = frozenset(
    "66 88 91 92 98 128 235 349 353 355 365 366 374 587 639 640 735 1005".split()
)
#: What an X12 code value looks like (upper-case letters and digits), for the elements above.
CODE_FORM = "^[A-Z0-9]+$"


def _e(ref: str, usage: str = "S", name: str = "", codes: tuple[str, ...] = (), since: str = ""):
    return Element(ref, usage, name, codes, since)


def _pairs(n: int, first_usage: str = "S") -> tuple[Element, ...]:
    """``n`` Product/Service ID qualifier (235) / ID (234) pairs."""
    out: list[Element] = []
    for i in range(n):
        usage = first_usage if i == 0 else "S"
        out.append(_e("235", usage))
        out.append(_e("234", usage))
    return tuple(out)


def _pair_syntax(first: int, n: int) -> tuple[str, ...]:
    return tuple(f"P{first + 2 * i:02d}{first + 2 * i + 1:02d}" for i in range(n))


_C040 = Composite(
    "C040",
    "S",
    "Reference Identifier",
    (_e("128", "R"), _e("127", "R"), _e("128"), _e("127"), _e("128"), _e("127")),
)


def _seg(id_: str, name: str, *elements: Element | Composite, syntax: tuple[str, ...] = ()):
    return SegmentDef(id_, name, tuple(elements), syntax)


_SEGMENT_LIST = [
    # ---- envelope ----
    _seg(
        "ISA",
        "Interchange Control Header",
        _e("I01", "R", codes=_codes("00 01 02 03 04 05 06")),
        _e("I02", "R"),
        _e("I03", "R", codes=_codes("00 01")),
        _e("I04", "R"),
        _e("I05", "R", codes=ISA_QUAL_I05),
        _e("I06", "R"),
        _e("I05", "R", codes=ISA_QUAL_I05),
        _e("I07", "R"),
        _e("I08", "R"),
        _e("I09", "R"),
        _e("I10", "R", codes=("U",)),  # 005010: I65 repetition separator, see _isa()
        _e("I11", "R"),
        _e("I12", "R"),
        _e("I13", "R", codes=("0", "1")),
        _e("I14", "R", codes=("P", "T", "I")),
        _e("I15", "R"),
    ),
    _seg(
        "GS",
        "Functional Group Header",
        _e("479", "R", codes=FIC_479),
        _e("142", "R"),
        _e("124", "R"),
        _e("373", "R"),
        _e("337", "R"),
        _e("28", "R"),
        _e("455", "R", codes=("X", "T")),
        _e("480", "R"),
    ),
    _seg(
        "ST", "Transaction Set Header", _e("143", "R"), _e("329", "R"), _e("1705", since="005010")
    ),
    _seg("SE", "Transaction Set Trailer", _e("96", "R"), _e("329", "R")),
    _seg("GE", "Functional Group Trailer", _e("97", "R"), _e("28", "R")),
    _seg("IEA", "Interchange Control Trailer", _e("I16", "R"), _e("I12", "R")),
    _seg(
        "TA1",
        "Interchange Acknowledgment",
        _e("I12", "R"),
        _e("I08", "R"),
        _e("I09", "R"),
        _e("I17", "R", codes=("A", "E", "R")),
        _e("I18", "R", codes=TA1_NOTE_I18),
    ),
    # ---- heading segments ----
    _seg(
        "BEG",
        "Beginning Segment for Purchase Order",
        _e("353", "R"),
        _e("92", "R"),
        _e("324", "R"),
        _e("328"),
        _e("373", "R"),
        _e("367"),
        _e("587"),
        _e("1019"),
        _e("1166"),
        _e("1232"),
        _e("786"),
        _e("640"),
    ),
    _seg(
        "BAK",
        "Beginning Segment for Purchase Order Acknowledgment",
        _e("353", "R"),
        _e("587", "R"),
        _e("324", "R"),
        _e("373", "R"),
        _e("328"),
        _e("326"),
        _e("367"),
        _e("127"),
        _e("373"),
        _e("640"),
        _e("1019", since="005010"),
    ),
    _seg(
        "BSN",
        "Beginning Segment for Ship Notice",
        _e("353", "R"),
        _e("396", "R"),
        _e("373", "R"),
        _e("337", "R"),
        _e("1005"),
        _e("640"),
        _e("641"),
        syntax=("C0706",),
    ),
    _seg(
        "BIG",
        "Beginning Segment for Invoice",
        _e("373", "R"),
        _e("76", "R"),
        _e("373"),
        _e("324"),
        _e("328"),
        _e("327"),
        _e("640"),
        _e("353"),
        _e("306"),
        _e("76"),
    ),
    _seg(
        "CUR",
        "Currency",
        _e("98", "R"),
        _e("100", "R"),
        _e("280"),
        _e("98"),
        _e("100"),
        _e("669"),
        *(x for _ in range(5) for x in (_e("374"), _e("373"), _e("337"))),
        syntax=("C0807", "C0907", "L101112", "C1110", "C1210", "L131415", "C1413", "C1513"),
    ),
    _seg(
        "REF",
        "Reference Identification",
        _e("128", "R"),
        _e("127"),
        _e("352"),
        _C040,
        syntax=("R0203",),
    ),
    _seg(
        "PER",
        "Administrative Communications Contact",
        _e("366", "R"),
        _e("93"),
        _e("365"),
        _e("364"),
        _e("365"),
        _e("364"),
        _e("365"),
        _e("364"),
        _e("443"),
        syntax=("P0304", "P0506", "P0708"),
    ),
    _seg(
        "FOB",
        "F.O.B. Related Instructions",
        _e("146", "R"),
        _e("309"),
        _e("352"),
        _e("334"),
        _e("335"),
        _e("309"),
        _e("352"),
        _e("54"),
        _e("352"),
        syntax=("C0302", "C0405", "C0504", "C0706", "C0809"),
    ),
    _seg(
        "ITD",
        "Terms of Sale/Deferred Terms of Sale",
        _e("336"),
        _e("333"),
        _e("338"),
        _e("370"),
        _e("351"),
        _e("446"),
        _e("386"),
        _e("362"),
        _e("388"),
        _e("389"),
        _e("342"),
        _e("352"),
        _e("765"),
        _e("107"),
        _e("954"),
        syntax=("L03040513", "L08040513", "L091011"),
    ),
    _seg(
        "DTM",
        "Date/Time Reference",
        _e("374", "R"),
        _e("373"),
        _e("337"),
        _e("623"),
        _e("1250", codes=DATE_FORMAT_1250),
        _e("1251"),
        syntax=("R020305", "C0403", "P0506"),
    ),
    _seg(
        "TD1",
        "Carrier Details (Quantity and Weight)",
        _e("103"),
        _e("80"),
        _e("23"),
        _e("22"),
        _e("79"),
        _e("187"),
        _e("81"),
        _e("355"),
        _e("183"),
        _e("355"),
        syntax=("C0102", "C0304", "C0607", "P0708", "P0910"),
    ),
    _seg(
        "TD5",
        "Carrier Details (Routing Sequence/Transit Time)",
        _e("133"),
        _e("66"),
        _e("67"),
        _e("91"),
        _e("387"),
        _e("368"),
        _e("309"),
        _e("310"),
        _e("731"),
        _e("732"),
        _e("733"),
        _e("284"),
        _e("284"),
        _e("26"),
        _e("156", since="005010"),
        syntax=("R0204050612", "C0203", "C0708", "C1011", "C1312", "C1413", "C1512"),
    ),
    _seg(
        "MAN",
        "Marks and Numbers",
        _e("88", "R"),
        _e("87", "R"),
        _e("87"),
        _e("88"),
        _e("87"),
        _e("87"),
        syntax=("P0405", "C0605"),
    ),
    _seg(
        "TXI",
        "Tax Information",
        _e("963", "R"),
        _e("782"),
        _e("954"),
        _e("955"),
        _e("956"),
        _e("441"),
        _e("1025"),
        _e("828"),
        _e("325"),
        _e("350"),
        syntax=("R020306", "P0405", "C0803"),
    ),
    _seg(
        "SAC",
        "Service, Promotion, Allowance, or Charge Information",
        _e("248", "R", codes=SAC_248),
        _e("1300"),
        _e("559"),
        _e("1301"),
        _e("610"),
        _e("378"),
        _e("332"),
        _e("118"),
        _e("355"),
        _e("380"),
        _e("380"),
        _e("331"),
        _e("127"),
        _e("770"),
        _e("352"),
        _e("819"),
        syntax=("R0203", "P0304", "P0607", "P0910", "C1110", "C1413", "L130204", "C1615"),
    ),
    _seg(
        "N9",
        "Reference Identification",
        _e("128", "R"),
        _e("127"),
        _e("369"),
        _e("373"),
        _e("337"),
        _e("623"),
        _C040,
        syntax=("R0203", "C0605"),
    ),
    _seg("MSG", "Message Text", _e("933", "R"), _e("934"), _e("1470")),
    _seg(
        "N1",
        "Name",
        _e("98", "R"),
        _e("93"),
        _e("66"),
        _e("67"),
        _e("706"),
        _e("98"),
        syntax=("R0203", "P0304"),
    ),
    _seg("N2", "Additional Name Information", _e("93", "R"), _e("93")),
    _seg("N3", "Address Information", _e("166", "R"), _e("166")),
    _seg(
        "N4",
        "Geographic Location",
        _e("19"),
        _e("156"),
        _e("116"),
        _e("26"),
        _e("309"),
        _e("310"),
        _e("1715", since="005010"),
        syntax=("C0605",),
    ),
    # ---- detail segments ----
    _seg(
        "PO1",
        "Baseline Item Data",
        _e("350"),
        _e("330"),
        _e("355"),
        _e("212"),
        _e("639"),
        *_pairs(10),
        syntax=("C0302", "C0504", *_pair_syntax(6, 10)),
    ),
    _seg(
        "PID",
        "Product/Item Description",
        _e("349", "R"),
        _e("750"),
        _e("559"),
        _e("751"),
        _e("352"),
        _e("752"),
        _e("822"),
        _e("1073"),
        _e("819"),
        syntax=("C0403", "R0405", "C0703", "C0804", "C0905"),
    ),
    _seg(
        "PO4",
        "Item Physical Details",
        _e("356"),
        _e("357"),
        _e("355"),
        _e("103"),
        _e("187"),
        _e("384"),
        _e("355"),
        _e("385"),
        _e("355"),
        _e("82"),
        _e("82"),
        _e("82"),
        _e("355"),
        _e("810"),
        _e("752"),
        _e("350"),
        _e("350"),
        _e("1470"),
        syntax=("C0203", "C0506", "C0605", "C0706", "C0807", "C0907"),
    ),
    _seg(
        "MEA",
        "Measurements",
        _e("737"),
        _e("738"),
        _e("739"),
        Composite(
            "C001",
            "S",
            "Composite Unit of Measure",
            (
                _e("355", "R"),
                _e("1018"),
                _e("649"),
                *(_e(r) for _ in range(4) for r in ("355", "1018", "649")),
            ),
        ),
        _e("740"),
        _e("741"),
        _e("935"),
        _e("936"),
        _e("752"),
        _e("1373"),
        _e("1270"),
        _e("1271"),
    ),
    _seg(
        "SCH",
        "Line Item Schedule",
        _e("380", "R"),
        _e("355", "R"),
        _e("98"),
        _e("93"),
        _e("374", "R"),
        _e("373", "R"),
        _e("337"),
        _e("374"),
        _e("373"),
        _e("337"),
        _e("326"),
        _e("350"),
        syntax=("C0304", "L08091010"),
    ),
    _seg(
        "ACK",
        "Line Item Acknowledgment",
        _e("668", "R", codes=LINE_STATUS_668),
        _e("380"),
        _e("355"),
        _e("374"),
        _e("373"),
        _e("326"),
        *_pairs(10),
        _e("559"),
        _e("822"),
        _e("1271"),
        syntax=("P0203", "C0405", *_pair_syntax(7, 10), "C2827"),
    ),
    _seg(
        "HL",
        "Hierarchical Level",
        _e("628", "R"),
        _e("734"),
        _e("735", "R"),
        _e("736", codes=("0", "1")),
    ),
    _seg(
        "PRF",
        "Purchase Order Reference",
        _e("324", "R"),
        _e("328"),
        _e("327"),
        _e("373"),
        _e("350"),
        _e("367"),
        _e("92"),
    ),
    _seg(
        "LIN",
        "Item Identification",
        _e("350"),
        *_pairs(15, first_usage="R"),
        syntax=_pair_syntax(4, 14),
    ),
    _seg(
        "SN1",
        "Item Detail (Shipment)",
        _e("350"),
        _e("382", "R"),
        _e("355", "R"),
        _e("646"),
        _e("330"),
        _e("355"),
        _e("728"),
        _e("668", codes=LINE_STATUS_668),
        syntax=("P0506",),
    ),
    _seg(
        "IT1",
        "Baseline Item Data (Invoice)",
        _e("350"),
        _e("358"),
        _e("355"),
        _e("212"),
        _e("639"),
        *_pairs(10),
        syntax=("P020304", *_pair_syntax(6, 10)),
    ),
    _seg("TDS", "Total Monetary Value Summary", _e("610", "R"), _e("610"), _e("610"), _e("610")),
    _seg(
        "CAD",
        "Carrier Detail",
        _e("91"),
        _e("206"),
        _e("207"),
        _e("140"),
        _e("387"),
        _e("368"),
        _e("128"),
        _e("127"),
        _e("284"),
        syntax=("R0405", "C0708"),
    ),
    _seg(
        "ISS",
        "Invoice Shipment Summary",
        _e("382"),
        _e("355"),
        _e("81"),
        _e("355"),
        _e("183"),
        _e("355"),
        syntax=("P0102", "P0304", "P0506", "R010305"),
    ),
    _seg(
        "CTT",
        "Transaction Totals",
        _e("354", "R"),
        _e("347"),
        _e("81"),
        _e("355"),
        _e("183"),
        _e("355"),
        _e("352"),
        syntax=("P0304", "P0506"),
    ),
    _seg("AMT", "Monetary Amount", _e("522", "R"), _e("782", "R"), _e("478")),
    # ---- acknowledgments ----
    _seg(
        "AK1",
        "Functional Group Response Header",
        _e("479", "R", codes=ACKED_FIC_479),
        _e("28", "R"),
        _e("480", since="005010"),
    ),
    _seg(
        "AK2",
        "Transaction Set Response Header",
        _e("143", "R", codes=ACKED_SET_143),
        _e("329", "R"),
        _e("1705", since="005010"),
    ),
    _seg(
        "AK3",
        "Data Segment Note",
        _e("721", "R"),
        _e("719", "R"),
        _e("447"),
        _e("720", codes=SEG_ERR_720),
    ),
    _seg(
        "AK4",
        "Data Element Note",
        Composite(
            "C030",
            "R",
            "Position in Segment",
            (_e("722", "R"), _e("1528"), _e("1686", since="005010")),
        ),
        _e("725"),
        _e("723", "R", codes=ELE_ERR_723),
        _e("724"),
    ),
    _seg(
        "AK5",
        "Transaction Set Response Trailer",
        _e("717", "R", codes=SET_ACK_717),
        *(_e("718", codes=SET_ERR_718) for _ in range(5)),
    ),
    _seg(
        "AK9",
        "Functional Group Response Trailer",
        _e("715", "R", codes=GROUP_ACK_715),
        _e("97", "R"),
        _e("123", "R"),
        _e("2", "R"),
        *(_e("716", codes=GROUP_ERR_716) for _ in range(5)),
    ),
    _seg(
        "IK3",
        "Implementation Data Segment Note",
        _e("721", "R"),
        _e("719", "R"),
        _e("447"),
        _e("620", codes=SEG_ERR_720_5010),
    ),
    _seg(
        "CTX",
        "Context",
        Composite("C998", "R", "Context Identification", (_e("9999", "R"), _e("9998"))),
        _e("721"),
        _e("719"),
        _e("447"),
        Composite("C030", "S", "Position in Segment", (_e("722", "R"), _e("1528"), _e("1686"))),
        Composite("C999", "S", "Reference in Segment", (_e("725", "R"), _e("725"))),
        syntax=("P0203",),
    ),
    _seg(
        "IK4",
        "Implementation Data Element Note",
        Composite("C030", "R", "Position in Segment", (_e("722", "R"), _e("1528"), _e("1686"))),
        _e("725"),
        _e("621", "R", codes=ELE_ERR_621),
        _e("724"),
    ),
    _seg(
        "IK5",
        "Implementation Transaction Set Response Trailer",
        _e("717", "R", codes=SET_ACK_717),
        *(_e("618", codes=SET_ERR_618) for _ in range(5)),
    ),
]

SEGMENTS: dict[str, SegmentDef] = {s.id: s for s in _SEGMENT_LIST}

DATA_ELEMENTS.update(
    _de(
        """
649 R 1 10 Multiplier
737 ID 2 2 Measurement Reference ID Code
738 ID 1 3 Measurement Qualifier
739 R 1 20 Measurement Value
1018 R 1 15 Exponent
740 R 1 20 Range Minimum
741 R 1 20 Range Maximum
935 ID 2 2 Measurement Significance Code
936 ID 2 2 Measurement Attribute Code
1373 ID 1 2 Measurement Method or Device
1270 ID 1 3 Code List Qualifier Code
"""
    )
)


# ---- transaction structures (standard table order, generic 004010/005010) ----
def _u(id_: str, pos: int, usage: str = "S", max_use: str = "1", **codes: tuple[str, ...]) -> Use:
    return Use(id_, pos, usage, max_use, {int(k[1:]): v for k, v in codes.items()})


def _loop(id_: str, name: str, usage: str, pos: int, repeat: str, *children: Use | Loop, type=None):
    return Loop(id_, name, usage, pos, repeat, tuple(children), type)


def _n1_loop(pos: int, repeat: str = "200") -> Loop:
    return _loop(
        "N1",
        "Name",
        "S",
        pos,
        repeat,
        _u("N1", pos, "R"),
        _u("N2", pos + 10, max_use="2"),
        _u("N3", pos + 20, max_use="2"),
        _u("N4", pos + 30, max_use=">1"),
        _u("REF", pos + 40, max_use="12"),
        _u("PER", pos + 50, max_use=">1"),
        _u("FOB", pos + 70),
        _u("TD5", pos + 90, max_use="12"),
    )


def _n9_loop(pos: int) -> Loop:
    return _loop(
        "N9",
        "Reference Identification",
        "S",
        pos,
        "1000",
        _u("N9", pos, "R"),
        _u("DTM", pos + 1, max_use=">1"),
        _u("MSG", pos + 5, max_use="1000"),
    )


def _sac_loop(pos: int) -> Loop:
    return _loop(
        "SAC",
        "Service, Promotion, Allowance, or Charge Information",
        "S",
        pos,
        "25",
        _u("SAC", pos, "R"),
        _u("CUR", pos + 5),
        _u("TXI", pos + 7, max_use="10"),
    )


def _header(first: Use, *rest: Use | Loop) -> Loop:
    return _loop("HEADER", "Table 1 - Header", "R", 20, "1", first, *rest, type="wrapper")


def _summary(*children: Use | Loop, usage: str = "S") -> Loop:
    return _loop("SUMMARY", "Table 3 - Summary", usage, 40, "1", *children, type="wrapper")


def _850_or_855(set_id: str) -> tuple[Loop, ...]:
    begin = _u("BEG", 20, "R") if set_id == "850" else _u("BAK", 20, "R")
    header = _header(
        begin,
        _u("CUR", 40),
        _u("REF", 50, max_use=">1"),
        _u("PER", 60, max_use="3"),
        _u("FOB", 80, max_use=">1"),
        _sac_loop(120),
        _u("ITD", 130, max_use=">1"),
        _u("DTM", 150, max_use="10"),
        _u("PID", 190, max_use="200"),
        _u("TD1", 230, max_use="2"),
        _u("TD5", 240, max_use="12"),
        _u("MAN", 270, max_use="10"),
        _u("TXI", 285, max_use=">1"),
        _n9_loop(295),
        _n1_loop(310),
    )
    line = [
        _u("PO1", 10, "R"),
        _u("CUR", 20),
        _u("MEA", 49, max_use="40"),
        _loop(
            "PID",
            "Product/Item Description",
            "S",
            50,
            "1000",
            _u("PID", 50, "R"),
            _u("MEA", 60, max_use="10"),
        ),
        _u("PO4", 90, max_use=">1"),
        _u("REF", 100, max_use=">1"),
        _u("PER", 110, max_use="3"),
        _sac_loop(130),
        _u("ITD", 150, max_use="2"),
        _u("FOB", 170, max_use=">1"),
        _u("DTM", 210, max_use="10"),
        _u("TD1", 240),
        _u("TD5", 250, max_use="12"),
        _u("MAN", 280, max_use="10"),
        _u("MSG", 285, max_use=">1"),
        _u("TXI", 291, max_use=">1"),
    ]
    if set_id == "855":
        line.append(
            _loop(
                "ACK",
                "Line Item Acknowledgment",
                "S",
                300,
                "104",
                _u("ACK", 300, "R"),
                _u("DTM", 301, max_use="10"),
            )
        )
    line += [
        _loop(
            "SCH",
            "Line Item Schedule",
            "S",
            310,
            "200",
            _u("SCH", 310, "R"),
            _u("TD1", 311),
            _u("TD5", 312, max_use="12"),
            _u("REF", 315, max_use="33"),
        ),
        _n9_loop(330),
        _n1_loop(350),
    ]
    detail = _loop(
        "DETAIL",
        "Table 2 - Detail",
        "R" if set_id == "850" else "S",
        30,
        "1",
        _loop("PO1", "Baseline Item Data", "R" if set_id == "850" else "S", 10, "100000", *line),
        type="wrapper",
    )
    summary = _summary(
        _loop("CTT", "Transaction Totals", "S", 10, "1", _u("CTT", 10, "R"), _u("AMT", 20)),
    )
    return (header, detail, summary)


def _856() -> tuple[Loop, ...]:
    header = _header(_u("BSN", 20, "R"), _u("DTM", 40, max_use="10"))
    hl = _loop(
        "HL",
        "Hierarchical Level",
        "R",
        10,
        "200000",
        _u("HL", 10, "R"),
        _u("LIN", 20),
        _u("SN1", 30),
        _u("PRF", 50),
        _u("PO4", 60, max_use=">1"),
        _u("PID", 70, max_use="200"),
        _u("MEA", 80, max_use="40"),
        _u("TD1", 110, max_use="20"),
        _u("TD5", 120, max_use="12"),
        _u("REF", 150, max_use=">1"),
        _u("PER", 160, max_use="3"),
        _u("MAN", 190, max_use=">1"),
        _u("DTM", 200, max_use="10"),
        _u("FOB", 210),
        _n1_loop(220),
        _sac_loop(270),
    )
    detail = _loop("DETAIL", "Table 2 - Detail", "R", 30, "1", hl, type="wrapper")
    summary = _summary(_u("CTT", 10))
    return (header, detail, summary)


def _810() -> tuple[Loop, ...]:
    header = _header(
        _u("BIG", 20, "R"),
        _u("CUR", 40),
        _u("REF", 50, max_use="12"),
        _u("PER", 60, max_use="3"),
        _n1_loop(70),
        _u("ITD", 130, max_use=">1"),
        _u("DTM", 140, max_use="10"),
        _u("FOB", 150),
        _u("PID", 160, max_use="200"),
        _n9_loop(230),
    )
    it1 = _loop(
        "IT1",
        "Baseline Item Data (Invoice)",
        "S",
        10,
        "200000",
        _u("IT1", 10, "R"),
        _u("CUR", 15),
        _u("TXI", 40, max_use="10"),
        _loop(
            "PID",
            "Product/Item Description",
            "S",
            60,
            "1000",
            _u("PID", 60, "R"),
            _u("MEA", 70, max_use="10"),
        ),
        _u("PO4", 100),
        _u("ITD", 110, max_use="2"),
        _u("REF", 120, max_use=">1"),
        _u("PER", 130, max_use="5"),
        _u("DTM", 150, max_use="10"),
        _u("CAD", 160, max_use=">1"),
        _sac_loop(180),
        _n1_loop(220),
    )
    detail = _loop("DETAIL", "Table 2 - Detail", "S", 30, "1", it1, type="wrapper")
    summary = _summary(
        _u("TDS", 10, "R"),
        _u("TXI", 20, max_use="10"),
        _u("CAD", 30),
        _loop(
            "AMT",
            "Monetary Amount",
            "S",
            35,
            ">1",
            _u("AMT", 35, "R"),
            _u("REF", 36, max_use=">1"),
            _u("DTM", 37),
        ),
        _sac_loop(40),
        _loop("ISS", "Invoice Shipment Summary", "S", 60, ">1", _u("ISS", 60, "R"), _u("PID", 61)),
        _u("CTT", 70),
        usage="R",
    )
    return (header, detail, summary)


def _997(version: str) -> tuple[Loop, ...]:
    v5 = version == "005010"
    ak2 = _loop(
        "AK2",
        "Transaction Set Response Header",
        "S",
        30,
        "999999",
        _u("AK2", 30, "R"),
        _loop(
            "AK3",
            "Data Segment Note",
            "S",
            40,
            "999999",
            _u("AK3", 40, "R", c4=SEG_ERR_720_5010 if v5 else SEG_ERR_720),
            _u("AK4", 50, max_use="99", c3=ELE_ERR_723_5010 if v5 else ELE_ERR_723),
        ),
        _u("AK5", 60, "R"),
    )
    return (_header(_u("AK1", 20, "R"), ak2, _u("AK9", 70, "R")),)


def _999() -> tuple[Loop, ...]:
    ak2 = _loop(
        "2000",
        "Transaction Set Response Header",
        "S",
        30,
        ">1",
        _u("AK2", 30, "R"),
        _loop(
            "2100",
            "Error Identification",
            "S",
            40,
            ">1",
            _u("IK3", 40, "R"),
            _u("CTX", 50, max_use="10"),
            _loop(
                "2110",
                "Implementation Data Element Note",
                "S",
                60,
                ">1",
                _u("IK4", 60, "R"),
                _u("CTX", 70, max_use="10"),
            ),
        ),
        _u("IK5", 80, "R"),
    )
    return (_header(_u("AK1", 20, "R"), ak2, _u("AK9", 90, "R")),)


@dataclass(frozen=True)
class Transaction:
    set_id: str  # ST01
    functional_id: str  # GS01
    name: str
    versions: tuple[str, ...]  # GS08 values per map (first is the dictionary version)
    file_stem: str


TRANSACTIONS = (
    Transaction("850", "PO", "Purchase Order", ("004010",), "850.4010"),
    Transaction("850", "PO", "Purchase Order", ("005010",), "850.5010"),
    Transaction("855", "PR", "Purchase Order Acknowledgment", ("004010",), "855.4010"),
    Transaction("855", "PR", "Purchase Order Acknowledgment", ("005010",), "855.5010"),
    Transaction("856", "SH", "Ship Notice/Manifest", ("004010",), "856.4010"),
    Transaction("856", "SH", "Ship Notice/Manifest", ("005010",), "856.5010"),
    Transaction("810", "IN", "Invoice", ("004010",), "810.4010"),
    Transaction("810", "IN", "Invoice", ("005010",), "810.5010"),
    Transaction("997", "FA", "Functional Acknowledgment", ("004010",), "997.4010"),
    Transaction("997", "FA", "Functional Acknowledgment", ("005010",), "997.5010"),
    Transaction(
        "999",
        "FA",
        "Implementation Acknowledgment",
        ("005010X231A1", "005010X231"),
        "999.5010.X231.A1",
    ),
)


def transaction_loop(tx: Transaction) -> tuple[Loop, ...]:
    """The tables (HEADER, DETAIL, SUMMARY) between ST and SE of ``tx``."""
    version = tx.versions[0][:6]
    if tx.set_id in ("850", "855"):
        return _850_or_855(tx.set_id)
    if tx.set_id == "856":
        return _856()
    if tx.set_id == "810":
        return _810()
    if tx.set_id == "997":
        return _997(version)
    if tx.set_id == "999":
        return _999()
    raise ValueError(f"no structure for transaction set {tx.set_id!r}")
