"""The 856 ship notice reader (:func:`read_ship_notice`): the HL tree flattened into
expected receipt lines."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from engine.x12.documents.common import (
    Party,
    ProductIds,
    Reference,
    _date,
    _description,
    _dtm,
    _el,
    _err,
    _expect,
    _Identified,
    _int,
    _missing,
    _pairs,
    _party,
    _PartyBuilder,
    _r,
    _ref,
)
from engine.x12.segments import TransactionSet


@dataclass(frozen=True)
class ShipLine(_Identified):
    """One expected receipt line of an 856 (an I-level HL, split per serial / per pack)."""

    po_number: str | None
    po_line: str | None
    quantity: Decimal | None
    unit: str
    product_ids: ProductIds = ()
    lot: str | None = None
    serial: str | None = None
    expiry: date | None = None
    manufactured: date | None = None
    sscc: str | None = None
    description: str = ""
    ordered_quantity: Decimal | None = None  # SN104
    ordered_unit: str = ""  # SN105
    po_date: date | None = None
    hl_id: str = ""


@dataclass(frozen=True)
class ShipNotice:
    """An 856, its HL tree flattened into expected receipt lines."""

    shipment_id: str  # BSN02
    date: date | None = None
    time: str = ""
    purpose: str = ""
    structure: str = ""  # BSN05
    carrier: str = ""  # TD503 SCAC
    bill_of_lading: str = ""  # REF*BM
    tracking: str = ""  # REF*CN
    shipped: date | None = None  # DTM*011
    estimated_delivery: date | None = None  # DTM*017
    parties: tuple[Party, ...] = ()
    refs: tuple[Reference, ...] = ()
    lines: tuple[ShipLine, ...] = ()
    hl_count: int | None = None  # CTT01
    hash_total: Decimal | None = None  # CTT02
    control_number: str = ""

    @property
    def ship_to(self) -> Party | None:
        return _party(self.parties, "ST")

    @property
    def ship_from(self) -> Party | None:
        return _party(self.parties, "SF")

    @property
    def po_numbers(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for line in self.lines:
            if line.po_number:
                seen.setdefault(line.po_number)
        return tuple(seen)


class _Node:
    __slots__ = ("children", "id", "index", "level", "parent", "segs")

    def __init__(self, hl_id: str, parent: str, level: str, index: int) -> None:
        self.id = hl_id
        self.parent = parent
        self.level = level
        self.index = index
        self.segs: list[int] = []  # indexes into ts.segments
        self.children: list[_Node] = []


def sscc_of(number: str) -> str:
    """The 18-digit SSCC from a MAN*GM number, with or without its application identifier 00."""
    if len(number) == 20 and number.startswith("00") and number.isdigit():
        return number[2:]
    return number


def read_ship_notice(ts: TransactionSet) -> ShipNotice:
    """The 856 in ``ts``; HL parents are followed through HL02, not file order."""
    _expect(ts, "856")
    segments = ts.segments
    bsn_i: int | None = None
    heading: list[int] = []
    nodes: dict[str, _Node] = {}
    order: list[_Node] = []
    current: _Node | None = None
    hl_count = hash_total = None
    for i in range(1, len(segments) - 1):
        seg = segments[i]
        tag = seg[0]
        if tag == "HL":
            hl_id, parent, level = _el(seg, 1), _el(seg, 2), _el(seg, 3)
            if not hl_id:
                raise _err(ts, i, "HL01 (hierarchical id) is required but empty", 1)
            if hl_id in nodes:
                raise _err(ts, i, f"HL01 {hl_id!r} is used twice in the set", 1)
            if not level:
                raise _err(ts, i, "HL03 (level code S/O/T/P/I) is required but empty", 3)
            if not parent and level != "S" and current is not None:
                parent = current.id  # no HL02: assume the previous level is the parent
            current = _Node(hl_id, parent, level, i)
            nodes[hl_id] = current
            order.append(current)
        elif tag == "CTT":
            current = None
            hl_count = _int(ts, i, 1)
            hash_total = _r(ts, i, 2)
        elif current is not None:
            current.segs.append(i)
        elif tag == "BSN":
            bsn_i = i
        else:
            heading.append(i)
    if bsn_i is None:
        raise _missing(ts, "BSN", "BSN02 is the shipment id")
    bsn = segments[bsn_i]
    for node in order:
        if node.parent:
            parent = nodes.get(node.parent)
            if parent is None:
                raise _err(
                    ts, node.index, f"HL02 {node.parent!r} names no HL in this set", 2, "hl_parent"
                )
            parent.children.append(node)

    def ancestors(node: _Node):
        seen = 0
        while node.parent:
            node = nodes[node.parent]
            seen += 1
            if seen > len(nodes):
                raise _err(ts, node.index, f"HL {node.id!r} is its own ancestor (HL02 loop)", 2)
            yield node

    # Shipment-level data: heading segments and every S-level HL.
    shipment_segs = list(heading)
    for node in order:
        if node.level == "S":
            shipment_segs.extend(node.segs)
    carrier = bol = tracking = ""
    shipped = eta = None
    refs: list[Reference] = []
    parties: list[_PartyBuilder] = []
    party: _PartyBuilder | None = None
    for i in shipment_segs:
        seg = segments[i]
        tag = seg[0]
        if party is not None:
            if party.take(seg):
                continue
            party = None
        if tag == "TD5" and not carrier:
            carrier = _el(seg, 3)
        elif tag == "REF":
            ref = _ref(seg)
            refs.append(ref)
            if ref.qualifier == "BM" and not bol:
                bol = ref.value
            elif ref.qualifier == "CN" and not tracking:
                tracking = ref.value
        elif tag == "DTM":
            dtm = _dtm(ts, i)
            if dtm.qualifier == "011" and shipped is None:
                shipped = dtm.date
            elif dtm.qualifier == "017" and eta is None:
                eta = dtm.date
        elif tag == "N1":
            party = _PartyBuilder(seg)
            parties.append(party)

    def first(node: _Node, tag: str, qualifier: str | None = None) -> int | None:
        for i in node.segs:
            seg = segments[i]
            if seg[0] == tag and (qualifier is None or _el(seg, 1) == qualifier):
                return i
        return None

    def sscc(node: _Node) -> str | None:
        i = first(node, "MAN", "GM")
        return sscc_of(_el(segments[i], 2)) if i is not None else None

    lines: list[ShipLine] = []
    for node in order:
        if node.level != "I":
            continue
        po_number = po_date = None
        pack = sscc(node)
        for up in ancestors(node):
            if po_number is None and up.level == "O":
                prf = first(up, "PRF")
                if prf is not None:
                    po_number = _el(segments[prf], 1) or None
                    po_date = _date(ts, prf, 4)
            if pack is None and up.level in ("P", "T"):
                pack = sscc(up)
        if po_number is None:
            for i in shipment_segs:
                if segments[i][0] == "PRF":
                    po_number, po_date = _el(segments[i], 1) or None, _date(ts, i, 4)
                    break
        po_line = None
        pairs: list[tuple[str, str]] = []
        qty = ordered = None
        unit = ordered_unit = ""
        description: list[str] = []
        expiry = manufactured = None
        lots: list[str] = []
        serials: list[str] = []
        for i in node.segs:
            seg = segments[i]
            tag = seg[0]
            if tag == "LIN":
                po_line = po_line or _el(seg, 1) or None
                for q, v in _pairs(seg, 2):
                    if q == "LT":
                        lots.append(v)
                    elif q == "SN":
                        serials.append(v)
                    else:
                        pairs.append((q, v))
            elif tag == "SN1" and qty is None:
                qty = _r(ts, i, 2)
                unit = _el(seg, 3)
                ordered = _r(ts, i, 4)
                ordered_unit = _el(seg, 5)
            elif tag == "PID":
                text = _description(seg)
                if text:
                    description.append(text)
            elif tag == "DTM":
                dtm = _dtm(ts, i)
                if dtm.qualifier == "036" and expiry is None:
                    expiry = dtm.date
                elif dtm.qualifier in ("094", "405") and manufactured is None:
                    manufactured = dtm.date
            elif tag == "REF":
                ref = _ref(seg)
                if ref.qualifier == "LT" and ref.value not in lots:
                    lots.append(ref.value)
                elif ref.qualifier == "SE" and ref.value not in serials:
                    serials.append(ref.value)
        base = {
            "po_number": po_number,
            "po_line": po_line,
            "unit": unit,
            "product_ids": tuple(pairs),
            "expiry": expiry,
            "manufactured": manufactured,
            "description": " ".join(description),
            "ordered_quantity": ordered,
            "ordered_unit": ordered_unit,
            "po_date": po_date,
            "hl_id": node.id,
        }
        if len(serials) > 1:
            if qty is None or qty != len(serials):
                raise _err(
                    ts,
                    node.index,
                    f"HL {node.id}: {len(serials)} serials (SN) must ship {len(serials)} units "
                    f"in SN102 (got {qty})",
                    code="serial_count",
                )
            if len(lots) > 1 and len(lots) != len(serials):
                raise _err(
                    ts,
                    node.index,
                    f"HL {node.id}: {len(lots)} lots for {len(serials)} serials: send one lot "
                    "per serial or one I-level HL per lot",
                    code="lot_split",
                )
            for k, serial in enumerate(serials):
                lot = lots[k] if len(lots) > 1 else (lots[0] if lots else None)
                lines.append(
                    ShipLine(**base, quantity=Decimal(1), lot=lot, serial=serial, sscc=pack)
                )
            continue
        if len(lots) > 1:
            raise _err(
                ts,
                node.index,
                f"HL {node.id}: {len(lots)} lots (LT) share one SN1 quantity; send one I-level "
                "HL per lot so each lot has its quantity",
                code="lot_split",
            )
        lot = lots[0] if lots else None
        serial = serials[0] if serials else None
        packs = [c for c in node.children if c.level in ("P", "T") and sscc(c)]
        split = pack is None and len(packs) > 1
        if split and all(first(c, "SN1") is not None for c in packs):
            # Shipment/Order/Item/Pack: each pack under the item carries its own quantity.
            for c in packs:
                i = first(c, "SN1") or 0
                lines.append(
                    ShipLine(
                        **{**base, "unit": _el(segments[i], 3) or unit},
                        quantity=_r(ts, i, 2),
                        lot=lot,
                        serial=serial,
                        sscc=sscc(c),
                    )
                )
            continue
        if pack is None and len(packs) == 1:
            pack = sscc(packs[0])
        lines.append(ShipLine(**base, quantity=qty, lot=lot, serial=serial, sscc=pack))
    return ShipNotice(
        shipment_id=_el(bsn, 2),
        date=_date(ts, bsn_i, 3),
        time=_el(bsn, 4),
        purpose=_el(bsn, 1),
        structure=_el(bsn, 5),
        carrier=carrier,
        bill_of_lading=bol,
        tracking=tracking,
        shipped=shipped,
        estimated_delivery=eta,
        parties=tuple(p.build() for p in parties),
        refs=tuple(refs),
        lines=tuple(lines),
        hl_count=hl_count,
        hash_total=hash_total,
        control_number=ts.control_number,
    )
