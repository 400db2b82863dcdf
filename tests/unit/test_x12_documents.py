"""850/855/856/810 readers: DOMAIN §3.4 examples, implied decimals, HL parents, credits."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from engine.errors import X12DocumentError
from engine.x12.documents import (
    BillOnlyMap,
    Invoice,
    PurchaseOrder,
    PurchaseOrderAck,
    ShipNotice,
    gtin14,
    read_document,
    read_invoice,
    read_purchase_order,
    read_ship_notice,
)
from engine.x12.segments import transaction_sets

D = Decimal

ISA_OUT = "ISA*00*          *00*          *ZZ*HOSPITALID     *ZZ*VENDORID       *260115*1030*U*00401*000000001*1*P*>~\n"
ISA_IN = "ISA*00*          *00*          *ZZ*VENDORID       *ZZ*HOSPITALID     *260115*1030*U*00401*000000001*1*P*>~\n"

EX_850 = (
    ISA_OUT
    + """\
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
)

EX_855 = (
    ISA_IN
    + """\
GS*PR*VENDORID*HOSPITALID*20260115*1030*1*X*004010~
ST*855*0001~
BAK*00*AC*4500012345*20260115****20260115~
PO1*1*2*BX*125.00*PE*VC*ORTH-SCR-35*IN*100234~
ACK*IA*2*BX*068*20260117~
PO1*2*5*EA*12.50*PE*VC*GLV-7*IN*100777~
ACK*IB*5*EA~
CTT*2~
SE*8*0001~
GE*1*1~
IEA*1*000000001~
"""
)

EX_856 = (
    ISA_IN
    + """\
GS*SH*VENDORID*HOSPITALID*20260115*1030*1*X*004010~
ST*856*0001~
BSN*00*SHP778899*20260116*1400*0001~
HL*1**S~
TD1*CTN25*1****G*4.5*LB~
TD5*B*2*UPSN*U~
REF*CN*1Z999AA10123456784~
DTM*011*20260116~
N1*ST*GENERAL HOSPITAL OR DOCK*UL*0614141000029~
N1*SF*ACME ORTHO INC*UL*0614141000036~
HL*2*1*O~
PRF*4500012345***20260115~
HL*3*2*P~
MAN*GM*00106141411234567897~
HL*4*3*I~
LIN*1*VC*ORTH-SCR-35*UK*10614141999993*LT*LOT2025A~
SN1*1*2*BX~
DTM*036*20290630~
CTT*4*2~
SE*19*0001~
GE*1*1~
IEA*1*000000001~
"""
)

EX_810 = (
    ISA_IN
    + """\
GS*IN*VENDORID*HOSPITALID*20260115*1030*1*X*004010~
ST*810*0001~
BIG*20260117*INV-55501*20260115*4500012345~
REF*VN*SO-99812~
N1*RE*ACME ORTHO INC*92*V0042~
N1*ST*GENERAL HOSPITAL OR DOCK*UL*0614141000029~
ITD*01*3*2**10**30~
IT1*1*2*BX*125.00*PE*VC*ORTH-SCR-35*IN*100234~
TDS*26500~
CAD*M***UPSN*UPS GROUND~
SAC*C*D240***1500**********FREIGHT~
CTT*1~
SE*12*0001~
GE*1*1~
IEA*1*000000001~
"""
)


def one_set(text: str):
    (_, _, ts) = next(transaction_sets(text))
    return ts


def body_set(set_id: str, body: str, *, isa: str = ISA_IN, functional: str = "IN") -> str:
    """A full interchange around ``body`` (segments separated by ~ and newlines)."""
    segs = [s for s in body.strip().split("~\n") if s]
    segs[-1] = segs[-1].rstrip("~")
    st = [f"ST*{set_id}*0001", *segs]
    st.append(f"SE*{len(st) + 1}*0001")
    return (
        isa
        + f"GS*{functional}*VENDORID*HOSPITALID*20260115*1030*1*X*004010~\n"
        + "~\n".join(st)
        + "~\nGE*1*1~\nIEA*1*000000001~\n"
    )


def resep(text: str, element: str, component: str, terminator: str) -> str:
    out = text.replace("~\n", "\x00").replace("*", element).replace(">", component)
    return out.replace("\x00", terminator)


# ---------------------------------------------------------------------------- 850


def test_850_example() -> None:
    """BEG03/05, ship-to GLN (N103 UL), PO1 lines with Decimal qty/price, ids, PID, PO4, CTT."""
    po = read_purchase_order(one_set(EX_850))
    assert po.po_number == "4500012345" and po.po_date == date(2026, 1, 15)
    assert (po.purpose, po.po_type, po.currency) == ("00", "SA", "USD")
    assert po.ship_to_gln == "0614141000029"
    assert po.bill_to is not None and po.bill_to.gln == "0614141000012"
    assert po.vendor is not None and po.vendor.gln is None and po.vendor.id == "V0042"
    first, second = po.lines
    assert first.line_number == "1"
    assert first.quantity == D("2") and isinstance(first.quantity, Decimal)
    assert first.unit == "BX" and first.unit_price == D("125.00")
    assert first.product_ids == (("VC", "ORTH-SCR-35"), ("UK", "10614141999993"), ("IN", "100234"))
    assert (first.vendor_item, first.buyer_item, first.gtin) == (
        "ORTH-SCR-35",
        "100234",
        "10614141999993",
    )
    assert first.description == "BONE SCREW 3.5MM BX/10"
    assert (first.pack, first.pack_size, first.pack_unit) == (D(10), D(1), "EA")
    assert second.amount == D("62.50") and second.gtin is None
    assert (po.line_count, po.hash_total, po.total_amount) == (2, D(7), D("312.50"))
    assert po.bill_only is None and not po.is_bill_only


def test_850_bill_only_case_data_from_ref_dtm_and_po1_pairs() -> None:
    """Bill-only implant data: header REF/DTM (patient, procedure date) flow into each line;
    lot/serial come from PO1 LT/SN pairs or line REF*LT/REF*SE; partner maps add MAN/REF."""
    text = body_set(
        "850",
        """BEG*00*SA*4500099999**20260115~
REF*EA*MRN0042~
REF*ZZ*CASE-77~
DTM*472*20260114~
N1*72*SAM SURGEON*XX*1234567893~
PO1*1*1*EA*950.00*PE*VC*KNEE-TIB-3*LT*L777*SN*S0001~
PO1*2*1*EA*120.00*PE*VC*SCREW-6~
REF*LT*L888~
REF*SE*S0002~
MAN*UD*(01)10614141999993(17)290630(10)L888~
CTT*2~""",
        isa=ISA_OUT,
        functional="PO",
    )
    po = read_purchase_order(one_set(text))
    assert po.is_bill_only
    one, two = po.lines
    assert (one.lot, one.serial) == ("L777", "S0001")
    assert one.product_ids == (("VC", "KNEE-TIB-3"),)  # LT/SN are not item ids
    assert one.bill_only is not None
    assert (one.bill_only.lot, one.bill_only.serial) == ("L777", "S0001")
    assert one.bill_only.patient_id == "MRN0042"
    assert one.bill_only.procedure_date == date(2026, 1, 14)
    assert one.bill_only.case_id is None  # REF*ZZ is not mapped by default
    assert (one.bill_only.physician, one.bill_only.physician_npi) == ("SAM SURGEON", "1234567893")
    assert (two.lot, two.serial) == ("L888", "S0002")
    assert two.marks == (("UD", "(01)10614141999993(17)290630(10)L888"),)
    partner = BillOnlyMap(
        refs={"LT": "lot", "SE": "serial", "EA": "patient_id", "ZZ": "case_id"},
        marks={"UD": "udi"},
    )
    po = read_purchase_order(one_set(text), bill_only_map=partner)
    assert po.lines[0].bill_only.case_id == "CASE-77"
    assert po.lines[1].bill_only.udi == "(01)10614141999993(17)290630(10)L888"


def test_bill_only_map_refuses_unknown_fields() -> None:
    """A partner map naming a field that does not exist is a configuration error."""
    with pytest.raises(ValueError, match="must be one of"):
        BillOnlyMap(refs={"LT": "lot_number"})


# ---------------------------------------------------------------------------- 855


def test_855_example() -> None:
    """BAK03 PO number; line 1 accepted with ship date, line 2 backordered."""
    ack = read_document(one_set(EX_855))
    assert isinstance(ack, PurchaseOrderAck)
    assert ack.po_number == "4500012345" and ack.ack_type == "AC"
    assert ack.po_date == date(2026, 1, 15)
    one, two = ack.lines
    assert (one.status, one.kind, one.ship_date) == ("IA", "accepted", date(2026, 1, 17))
    assert one.acks[0].quantity == D(2) and one.acks[0].unit == "BX"
    assert (two.status, two.kind, two.ship_date) == ("IB", "backordered", None)
    assert ack.line_count == 2 and not ack.rejected


def test_855_changes_and_rejections() -> None:
    """IC/IQ/IP with changed quantity and price (PO1 echo) and IR rejection."""
    text = body_set(
        "855",
        """BAK*00*AC*4500012345*20260115****SO-1*20260116~
PO1*1*2*BX*130.00*PE*VC*ORTH-SCR-35~
ACK*IP*2*BX~
PO1*2*5*EA*12.50*PE*VC*GLV-7~
ACK*IQ*3*EA*068*20260120~
ACK*IB*2*EA*068*20260201~
PO1*3*1*EA*9.00*PE*VC*OLD-1~
ACK*IR*1*EA~""",
        functional="PR",
    )
    ack = read_document(one_set(text))
    assert ack.seller_order == "SO-1" and ack.ack_date == date(2026, 1, 16)
    one, two, three = ack.lines
    assert one.kind == "changed" and one.unit_price == D("130.00")
    assert two.kind == "changed" and [a.quantity for a in two.acks] == [D(3), D(2)]
    assert [a.date for a in two.acks] == [date(2026, 1, 20), date(2026, 2, 1)]
    assert three.kind == "rejected"


# ---------------------------------------------------------------------------- 856


def test_856_example_flattens_to_expected_receipt_lines() -> None:
    """S/O/P/I: PO number from PRF, PO line from LIN01, qty from SN1, lot, expiry, SSCC."""
    asn = read_document(one_set(EX_856))
    assert isinstance(asn, ShipNotice)
    assert (asn.shipment_id, asn.structure, asn.carrier) == ("SHP778899", "0001", "UPSN")
    assert asn.tracking == "1Z999AA10123456784" and asn.shipped == date(2026, 1, 16)
    assert asn.ship_to is not None and asn.ship_to.gln == "0614141000029"
    assert asn.ship_from is not None and asn.ship_from.gln == "0614141000036"
    (line,) = asn.lines
    assert (line.po_number, line.po_line, line.po_date) == ("4500012345", "1", date(2026, 1, 15))
    assert (line.quantity, line.unit) == (D(2), "BX")
    assert line.lot == "LOT2025A" and line.serial is None
    assert line.expiry == date(2029, 6, 30)
    assert line.sscc == "106141411234567897"  # SSCC-18 without the AI 00
    assert line.gtin == "10614141999993" and line.vendor_item == "ORTH-SCR-35"
    assert (asn.hl_count, asn.hash_total) == (4, D(2))
    assert asn.po_numbers == ("4500012345",)


MULTI_856 = """BSN*00*SHP1*20260116*1400*0001~
HL*1**S~
TD5*B*2*FDEG~
REF*BM*BOL-1~
HL*2*1*O~
PRF*PO-A***20260110~
HL*3*1*O~
PRF*PO-B~
HL*4*2*T~
MAN*GM*00106141410000000019~
HL*5*4*P~
MAN*GM*00106141410000000026~
HL*6*3*P~
MAN*GM*106141410000000033~
HL*7*5*I~
LIN*1*VC*A-1~
SN1*1*10*EA~
HL*8*6*I~
LIN*4*VC*B-4~
SN1*1*3*BX~
REF*LT*LOT-B~
DTM*036*20280101~
HL*9*4*I~
LIN*2*VC*A-2~
SN1*1*1*CA~
CTT*9~"""


def test_856_follows_hl02_parents_not_file_order() -> None:
    """Items name their parents by HL02: item 7 is in pack 5 on tare 4 of order PO-A, item 8 in
    pack 6 of order PO-B, item 9 directly on tare 4; a tare (T) level is tolerated."""
    asn = read_ship_notice(one_set(body_set("856", MULTI_856, functional="SH")))
    assert asn.bill_of_lading == "BOL-1" and asn.carrier == "FDEG"
    got = [(x.hl_id, x.po_number, x.po_line, x.quantity, x.unit, x.sscc) for x in asn.lines]
    assert got == [
        ("7", "PO-A", "1", D(10), "EA", "106141410000000026"),
        ("8", "PO-B", "4", D(3), "BX", "106141410000000033"),
        ("9", "PO-A", "2", D(1), "CA", "106141410000000019"),
    ]
    assert asn.lines[1].lot == "LOT-B" and asn.lines[1].expiry == date(2028, 1, 1)
    assert asn.lines[0].po_date == date(2026, 1, 10)
    assert asn.po_numbers == ("PO-A", "PO-B")


def test_856_one_line_per_serial_when_lin_repeats_pairs() -> None:
    """Serialized implants in one LIN: one expected line per serial, lots paired in order."""
    text = body_set(
        "856",
        """BSN*00*SHP2*20260116*1400*0001~
HL*1**S~
HL*2*1*O~
PRF*PO-9~
HL*3*2*I~
LIN*1*VC*KNEE*LT*L1*SN*S1*LT*L2*SN*S2~
SN1*1*2*EA~""",
        functional="SH",
    )
    asn = read_ship_notice(one_set(text))
    got = [(x.lot, x.serial, x.quantity) for x in asn.lines]
    assert got == [("L1", "S1", D(1)), ("L2", "S2", D(1))]


def test_856_item_over_packs_splits_by_pack_quantity() -> None:
    """S/O/I/P (BSN05 0002): packs under the item, each with its SN1, give one line per SSCC."""
    text = body_set(
        "856",
        """BSN*00*SHP3*20260116*1400*0002~
HL*1**S~
HL*2*1*O~
PRF*PO-7~
HL*3*2*I~
LIN*5*VC*GLV-7~
SN1*1*30*EA~
HL*4*3*P~
MAN*GM*00106141410000000040~
SN1**20*EA~
HL*5*3*P~
MAN*GM*00106141410000000057~
SN1**10*EA~""",
        functional="SH",
    )
    asn = read_ship_notice(one_set(text))
    got = [(x.po_line, x.quantity, x.sscc) for x in asn.lines]
    assert got == [("5", D(20), "106141410000000040"), ("5", D(10), "106141410000000057")]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (
            "BSN*00*S*20260116~\nHL*1**S~\nHL*2*9*I~\nLIN*1*VC*X~\nSN1*1*1*EA~",
            "HL02 '9' names no HL",
        ),
        (
            "BSN*00*S*20260116~\nHL*1**S~\nHL*2*1*I~\nLIN*1*VC*X*LT*A*LT*B~\nSN1*1*2*EA~",
            "2 lots (LT) share one SN1 quantity",
        ),
        (
            "BSN*00*S*20260116~\nHL*1**S~\nHL*2*1*I~\nLIN*1*VC*X*SN*A*SN*B~\nSN1*1*3*EA~",
            "2 serials (SN) must ship 2 units",
        ),
        ("BSN*00*S*20260116~\nHL*1**S~\nHL*1**S~", "used twice"),
        ("HL*1**S~\nHL*2*1*I~", "must have a BSN segment"),
        ("BSN*00*S*20260116~\nHL*1**S~\nHL*2*1*I~\nSN1*1*two*EA~", "SN102 must be a decimal"),
    ],
    ids=[
        "unknown-parent",
        "lots-without-split",
        "serial-count",
        "duplicate-hl",
        "no-bsn",
        "bad-qty",
    ],
)
def test_856_errors(body: str, words: str) -> None:
    """Ambiguous or broken hierarchies raise X12DocumentError with the segment position."""
    with pytest.raises(X12DocumentError) as info:
        read_ship_notice(one_set(body_set("856", body, functional="SH")))
    assert words in str(info.value)


# ---------------------------------------------------------------------------- 810


def test_810_example_with_implied_decimals() -> None:
    """TDS01 26500 is 265.00 and SAC05 1500 is 15.00 (N2); IT1 price is R (explicit point)."""
    inv = read_document(one_set(EX_810))
    assert isinstance(inv, Invoice)
    assert (inv.invoice_number, inv.invoice_date) == ("INV-55501", date(2026, 1, 17))
    assert (inv.po_number, inv.po_date) == ("4500012345", date(2026, 1, 15))
    assert inv.total == D("265.00")
    (freight,) = inv.charges
    assert (freight.indicator, freight.code, freight.amount) == ("C", "D240", D("15.00"))
    assert freight.signed_amount == D("15.00") and freight.description == "FREIGHT"
    (line,) = inv.lines
    assert (line.quantity, line.unit, line.unit_price) == (D(2), "BX", D("125.00"))
    assert line.po_line == "1" and line.amount == D("250.00")
    assert inv.subtotal == D("250.00")
    assert inv.terms is not None
    assert (inv.terms.discount_percent, inv.terms.discount_days, inv.terms.net_days) == (
        D(2),
        10,
        30,
    )
    assert (inv.carrier, inv.routing, inv.line_count) == ("UPSN", "UPS GROUND", 1)
    assert inv.remit_to is not None and inv.remit_to.id == "V0042"
    assert not inv.is_credit


@pytest.mark.parametrize(
    ("element", "component", "terminator"),
    [("*", ">", "~"), ("|", "^", "\n"), ("^", ">", "~"), ("|", ">", "~")],
    ids=["star-tilde", "pipe-newline", "caret", "pipe-tilde"],
)
def test_810_reads_the_same_with_other_separators(
    element: str, component: str, terminator: str
) -> None:
    """Separators are data: the invoice reads identically with |, ^, newline terminators."""
    inv = read_invoice(one_set(resep(EX_810, element, component, terminator)))
    assert inv.total == D("265.00") and inv.lines[0].unit_price == D("125.00")
    assert inv.charges[0].amount == D("15.00")


def test_810_repetition_separator_in_5010() -> None:
    """A 00501 interchange with ISA11 '^' still reads; the repetition separator is reported."""
    text = EX_810.replace("*U*00401*", "*^*00501*").replace("004010", "005010")
    (ic, _, ts) = next(transaction_sets(text))
    assert ic.separators.repetition == "^"
    assert read_invoice(ts).total == D("265.00")


def test_810_line_and_summary_charges_tax_and_po_line_ref() -> None:
    """SAC inside IT1 is the line's; SAC after TDS is the invoice's; REF*LI names the PO line."""
    text = body_set(
        "810",
        """BIG*20260117*INV-2*20260115*4500012345~
CUR*SE*USD~
IT1*001*3*EA*10.00*PE*VC*A~
REF*LI*7~
SAC*C*H090***250~
IT1*2*-1*EA*5.5*PE*VC*B~
PID*F****RETURNED ITEM~
TDS*3200~
TXI*ST*0.50~
SAC*A*C310***100~
CTT*2~""",
    )
    inv = read_invoice(one_set(text))
    one, two = inv.lines
    assert one.po_line == "7" and one.line_number == "001"
    assert one.charges[0].amount == D("2.50")
    assert two.po_line == "2" and two.is_credit and two.amount == D("-5.50")
    assert two.description == "RETURNED ITEM"
    assert [c.signed_amount for c in inv.charges] == [D("-1.00")]
    assert [c.code for c in inv.all_charges] == ["C310", "H090"]
    assert inv.taxes[0].amount == D("0.50")
    assert inv.total == D("32.00") and inv.currency == "USD"
    assert not inv.is_credit  # one line is a credit, the invoice is not


def test_810_credit_memo() -> None:
    """BIG07 CR marks a credit memo (quantities may be sent positive)."""
    text = body_set(
        "810",
        """BIG*20260120*CM-1*20260115*4500012345***CR~
IT1*1*1*BX*125.00*PE*VC*ORTH-SCR-35~
TDS*12500~""",
    )
    inv = read_invoice(one_set(text))
    assert inv.is_credit and inv.transaction_type == "CR"
    assert inv.total == D("125.00")


@pytest.mark.parametrize(
    ("body", "segment", "position", "element", "words"),
    [
        ("BIG*20260117*INV*20260115*PO~\nIT1*1*2*EA*1.00~\nTDS*265.00~", "TDS", 4, 1, "N2"),
        ("BIG*20260117*INV*20260115*PO~\nIT1*1*2,5*EA*1.00~\nTDS*100~", "IT1", 3, 2, "decimal"),
        ("BIG*20260117*INV*20260115*PO~\nIT1*1*2*EA*NaN~\nTDS*100~", "IT1", 3, 4, "decimal"),
        ("BIG*20260117*INV*20260115*PO~\nIT1*1*1_0*EA*1~\nTDS*100~", "IT1", 3, 2, "decimal"),
        ("BIG*20261317*INV*20260115*PO~\nTDS*100~", "BIG", 2, 1, "CCYYMMDD"),
        ("BIG*20260117**20260115*PO~\nTDS*100~", "BIG", 2, 2, "invoice number"),
        ("BIG*20260117*INV~\nSAC*C*D240***15.00~\nTDS*100~", "SAC", 3, 5, "N2"),
    ],
    ids=[
        "tds-with-point",
        "comma-qty",
        "nan-price",
        "underscore",
        "bad-date",
        "no-number",
        "sac-point",
    ],
)
def test_810_malformed_values(
    body: str, segment: str, position: int, element: int, words: str
) -> None:
    """Bad numbers/dates raise X12DocumentError naming segment, position (ST = 1), element."""
    with pytest.raises(X12DocumentError) as info:
        read_invoice(one_set(body_set("810", body)))
    err = info.value
    assert (err.segment, err.position, err.element) == (segment, position, element)
    assert words in str(err)


def test_missing_required_heading_segment() -> None:
    """No BIG: a document error, not an empty invoice."""
    with pytest.raises(X12DocumentError, match="must have a BIG segment"):
        read_invoice(one_set(body_set("810", "IT1*1*1*EA*1.00~\nTDS*100~")))


def test_read_document_dispatch_and_wrong_set() -> None:
    """read_document picks the reader by ST01; other sets and wrong readers are refused."""
    assert isinstance(read_document(one_set(EX_850)), PurchaseOrder)
    with pytest.raises(X12DocumentError, match="expected transaction set 810"):
        read_invoice(one_set(EX_850))
    ack997 = body_set("997", "AK1*PO*1~\nAK9*A*1*1*1~", functional="FA")
    with pytest.raises(X12DocumentError, match="no reader for transaction set '997'"):
        read_document(one_set(ack997))


def test_multiple_interchanges_each_read() -> None:
    """A file with an 856 and an 810 in two interchanges (different separators) reads both."""
    text = EX_856 + resep(EX_810, "|", "^", "\n")
    docs = [read_document(ts) for _, _, ts in transaction_sets(text)]
    assert [type(d).__name__ for d in docs] == ["ShipNotice", "Invoice"]
    assert docs[1].total == D("265.00")


@pytest.mark.parametrize(
    ("qualifier", "value", "expected"),
    [
        ("UK", "10614141999993", "10614141999993"),
        ("EN", "0614141999996", "00614141999996"),
        ("UP", "614141999996", "00614141999996"),
        ("VC", "614141999996", None),
        ("UK", "ABC", None),
    ],
)
def test_gtin14_normalisation(qualifier: str, value: str, expected: str | None) -> None:
    """UPC-12 and EAN-13 pad to GTIN-14; other qualifiers are not GTINs."""
    assert gtin14(qualifier, value) == expected


def test_big_invoice_reads_with_decimals() -> None:
    """A 10,000-line 810 reads into Decimal lines whose sum matches TDS."""
    lines = "\n".join(f"IT1*{k}*3*BX*12.50*PE*VC*V{k}~" for k in range(1, 10_001))
    text = body_set("810", f"BIG*20260117*INV-9*20260115*PO~\n{lines}\nTDS*37500000~")
    inv = read_invoice(one_set(text))
    assert len(inv.lines) == 10_000
    assert inv.subtotal == inv.total == D("375000.00")
