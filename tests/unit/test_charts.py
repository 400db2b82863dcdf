"""The console's SVG bar charts keep every label readable: whole where it fits under its bar,
shortened in the middle where it does not (names that share a beginning stay apart), staggered
onto two rows when some do not fit, and whole in the bar's tooltip."""

from __future__ import annotations

from lxml import etree

from engine.web import charts

SVG = "{http://www.w3.org/2000/svg}"


def labels(svg: str) -> list[tuple[str, float]]:
    """(text, y) of the labels under the bars (the texts below the chart's baseline)."""
    root = etree.fromstring(svg.encode())
    baseline = charts.HEIGHT - charts.PAD
    return [
        (t.text, float(t.get("y")))
        for t in root.iter(f"{SVG}text")
        if float(t.get("y")) > baseline and t.get("class") != "title"
    ]


def tooltips(svg: str) -> list[str]:
    root = etree.fromstring(svg.encode())
    return [t.text for t in root.iter(f"{SVG}title")][1:]  # the first is the chart's own


def test_short_labels_are_whole_on_one_row() -> None:
    svg = charts.bars("held invoices by reason", [("price", 2), ("quantity", 1), ("uom", 4)])
    assert labels(svg) == [("price", 166.0), ("quantity", 166.0), ("uom", 166.0)]
    assert tooltips(svg) == ["price: 2", "quantity: 1", "uom: 4"]


def test_work_item_kinds_that_share_a_beginning_stay_apart() -> None:
    kinds = ["MISSING_MAPPING", "MISSING_LOT_SERIAL", "UNBILLED_USAGE", "ASN_DISCREPANCY"]
    kinds += ["MATCH_HOLD", "ORPHAN_CREDIT", "OVERDUE_ACK", "PAR_BREACH", "REJECTED_CHARGE"]
    kinds += ["DEAD_LETTER", "UNMATCHED_RECEIPT", "MISSING_LOT_NUMBER"]
    svg = charts.bars("open work items by kind", [(k, 1) for k in kinds])
    shown = labels(svg)
    texts = [text for text, _ in shown]
    assert len(set(texts)) == len(kinds), texts  # no two kinds read alike
    # 12 bars of 48.7 px: the labels take two rows, each with the room of two bars
    assert {y for _, y in shown} == {166.0, 177.0}
    assert [y for _, y in shown][:2] == [166.0, 177.0]
    room = (charts.WIDTH - 2 * charts.PAD) / len(kinds) * 1.9
    assert all(len(text) * charts.CHAR <= room for text in texts), texts
    assert texts[1] == charts.fit("MISSING_LOT_SERIAL", room) != "MISSING_LOT_SERIAL"
    assert texts[1].startswith("MISSING") and texts[1].endswith("SERIAL") and "…" in texts[1]
    assert tooltips(svg) == [f"{k}: 1" for k in kinds]  # the whole name on hover


def test_a_label_is_cut_in_its_middle_to_the_room_it_has() -> None:
    assert charts.fit("usage_ledger/erp_issue", 1000) == "usage_ledger/erp_issue"
    cut = charts.fit("usage_ledger/erp_issue", 10 * charts.CHAR)
    assert cut == "usage…ssue" and len(cut) == 10  # the ellipsis counts as one character
    assert charts.fit("abcdefgh", 0) == "a…h"  # never fewer than three characters


def test_labels_are_escaped() -> None:
    svg = charts.bars("depth", [("<b>&", 3)])
    assert labels(svg) == [("<b>&", 166.0)]  # parsed back: it was escaped in the SVG
    assert "<b>&" not in svg
