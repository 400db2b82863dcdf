"""X12 code lists (docs/x12-code-lists.md): what the maps check and what they leave to the
partner maps and the readers, and the complete lists an installation drops in
``mappings/x12/codelists/`` (engine.domains.procurement.codelists), checked by the validator."""

from __future__ import annotations

import itertools
import shutil
import xml.etree.ElementTree as ET
from datetime import datetime
from pathlib import Path

import pytest

from engine.domains.procurement import codelists as codelists_mod
from engine.domains.procurement.codelists import CODELISTS_DIR, load_codelists
from engine.errors import LintFailed
from engine.x12 import mapgen
from engine.x12.ack import acknowledge
from engine.x12.documents import read_po_ack
from engine.x12.documents.common import ACK_STATUS
from engine.x12.mapdefs import CODED_WITHOUT_LIST, LINE_STATUS_668
from engine.x12.scan import scan
from engine.x12.validate import validate

ROOT = Path(__file__).resolve().parents[2]
THIRDPARTY = ROOT / "samples" / "x12" / "thirdparty"
EXAMPLE_LIST = ROOT / "samples" / "x12" / "codelists" / "355.csv"
DOC = ROOT / "docs" / "x12-code-lists.md"
NOW = datetime(2026, 1, 21, 9, 30)


def ack_segments(data: bytes, kind: str = "997") -> list[list[str]]:
    """The 997 (or 999) ``acknowledge`` writes for ``validate(data)``, as split segments."""
    answers = acknowledge(validate(data), kind=kind, control_numbers=itertools.count(1), now=NOW)
    text = answers.ack.decode()
    sep, term = text[3], text[105]
    return [s.strip().split(sep) for s in text.split(term) if s.strip()]


def drop(root: Path, name: str, text: str | bytes) -> Path:
    folder = root / CODELISTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


# --- what the maps check --------------------------------------------------------------------


def test_valid_standard_codes_outside_the_old_subsets_are_accepted() -> None:
    """The 850 with BEG02 NP (new product introduction), REF L1 (letters or notes) and N1 FA
    (facility), and the 855 with ACK01 R5 and IH: every one a code of the standard that the
    supply-chain subsets of the maps refused. Now each gets a 997 AK5*A."""
    for name in ("850_4010_standard_codes.x12", "855_4010_standard_codes.x12"):
        data = (THIRDPARTY / name).read_bytes()
        result = validate(data)
        assert result.ok, (name, result.issues)
        segs = ack_segments(data)
        assert [s for s in segs if s[0] == "AK5"] == [["AK5", "A"]], (name, segs)
        assert not [s for s in segs if s[0] in ("AK3", "AK4")], (name, segs)


@pytest.mark.parametrize(
    ("old", "new", "ak3", "ak4"),
    [
        # elements checked for form only: a value that is no X12 code is still refused
        (
            b"BEG|00|NP|",
            b"BEG|0!|NP|",
            ["AK3", "BEG", "2", "", "8"],
            ["AK4", "1", "353", "7", "0!"],
        ),
        (b"REF|L1|", b"REF|l1|", ["AK3", "REF", "5", "", "8"], ["AK4", "1", "128", "7", "l1"]),
        (b"N1|FA|", b"N1|F-|", ["AK3", "N1", "8", "", "8"], ["AK4", "1", "98", "7", "F-"]),
    ],
)
def test_what_is_no_code_is_still_refused(old: bytes, new: bytes, ak3: list, ak4: list) -> None:
    data = (THIRDPARTY / "850_4010_standard_codes.x12").read_bytes()
    assert data.count(old) == 1
    segs = ack_segments(data.replace(old, new))
    assert [s[: len(ak3)] for s in segs if s[0] == "AK3"] == [ak3], segs
    assert [s[: len(ak4)] for s in segs if s[0] == "AK4"] == [ak4], segs
    assert [s for s in segs if s[0] == "AK5"] == [["AK5", "R", "5"]], segs


def test_every_line_status_the_maps_accept_has_a_behaviour() -> None:
    """ACK01 (668) is an element Wharf acts on: each code the maps let through says what the
    PO line becomes, so none reaches the ERP as a silent 'acknowledged'."""
    assert set(LINE_STATUS_668) == set(ACK_STATUS)
    assert set(ACK_STATUS.values()) == {"accepted", "backordered", "changed", "held", "rejected"}


def test_r5_rejects_the_line_and_ih_holds_it() -> None:
    data = (THIRDPARTY / "855_4010_standard_codes.x12").read_bytes()
    (ic,) = scan(data).interchanges
    ack = read_po_ack(ic.groups[0].sets[0])
    assert [(ln.line_number, ln.status, ln.kind) for ln in ack.lines] == [
        ("1", "IA", "accepted"),
        ("2", "R5", "rejected"),
        ("3", "IH", "held"),
    ]


def test_elements_without_a_list_carry_the_code_form_and_no_codes() -> None:
    checked = set()
    for path in sorted(mapgen.MAP_PATH.glob("*.xml")):
        for el in ET.parse(path).getroot().iter("element"):
            ref = el.get("data_ele")
            if ref in CODED_WITHOUT_LIST:
                assert el.find("valid_codes") is None, (path.name, el.get("xid"))
                assert el.findtext("regex") == "^[A-Z0-9]+$", (path.name, el.get("xid"))
                checked.add(ref)
    assert checked == set(CODED_WITHOUT_LIST)


def test_the_document_names_every_element_the_maps_check() -> None:
    """docs/x12-code-lists.md has a row for each element with a list and each checked for form
    only, so what a partner is told matches what the maps do."""
    rows = [ln.split("|")[1] for ln in DOC.read_text().splitlines() if ln.startswith("| ")]
    named = {ref.strip() for cell in rows for ref in cell.split(",")}
    missing = {*CODED_WITHOUT_LIST, "353", "668", "248", "1250", "479", "143"} - named
    assert not missing


# --- complete lists an installation drops in ------------------------------------------------


def test_a_dropped_in_list_makes_a_code_outside_it_refused(tmp_path: Path) -> None:
    """With 355.csv (BX CA DZ EA LB PK) dropped in, HARBOR's ASN in CS is refused: the 997 names
    SN1, its position, element 3, data element 355 and the value; BX and PK lines pass."""
    drop(tmp_path, "355.csv", EXAMPLE_LIST.read_bytes())
    lists = load_codelists(tmp_path)
    assert lists.used == {"355": ("BX", "CA", "DZ", "EA", "LB", "PK")}
    map_path = lists.map_path()
    assert map_path is not None and map_path.parent == tmp_path / "var" / "x12"
    data = (THIRDPARTY / "856_4010_cases.x12").read_bytes()
    result = validate(data, map_path=map_path)
    bad = [(i.segment, i.element, i.data_element, i.code, i.value) for i in result.issues]
    assert bad == [("SN1", 3, "355", "7", "CS")], result.issues
    answers = acknowledge(result, kind="997", control_numbers=itertools.count(1), now=NOW)
    text = answers.ack.decode()
    assert "AK4|3|355|7|CS~" in text and "AK5|R|5~" in text, text
    # the same file against Wharf's own maps: units are the partner map's business
    assert validate(data).ok
    # CA in place of CS is on the list: accepted
    assert validate(data.replace(b"|CS", b"|CA"), map_path=map_path).ok


def test_a_list_for_an_element_wharf_acts_on_does_not_widen_its_own(tmp_path: Path) -> None:
    drop(tmp_path, "668.csv", "code,description\nIA,Accepted\nQQ,Not a code of ours\n")
    drop(tmp_path, "1336.csv", "code,description\nAB,An element no map of Wharf's uses\n")
    lists = load_codelists(tmp_path)
    assert (lists.kept, lists.unused, lists.used) == (("668",), ("1336",), {})
    assert lists.map_path() is None  # Wharf's own maps


def test_maps_are_written_once_per_content(tmp_path: Path, monkeypatch) -> None:
    drop(tmp_path, "355.csv", EXAMPLE_LIST.read_bytes())
    calls = []
    real = mapgen.write
    monkeypatch.setattr(
        codelists_mod.mapgen, "write", lambda *a, **k: calls.append(a) or real(*a, **k)
    )
    first = load_codelists(tmp_path).map_path()
    second = load_codelists(tmp_path).map_path()
    assert first == second and len(calls) == 1
    drop(tmp_path, "355.csv", EXAMPLE_LIST.read_bytes() + b"KT,Kit\n")
    third = load_codelists(tmp_path).map_path()
    assert third != first and len(calls) == 2
    assert sorted(p.name for p in (tmp_path / "var" / "x12").iterdir()) == sorted(
        [first.name, third.name]
    )


def test_no_folder_no_lists(tmp_path: Path) -> None:
    lists = load_codelists(tmp_path)
    assert (dict(lists.lists), lists.map_path()) == ({}, None)


@pytest.mark.parametrize(
    ("name", "content", "where", "says"),
    [
        ("units.csv", b"code,description\nCA,Case\n", "units.csv", "named after its X12 data"),
        ("127.csv", b"code,description\nAB,x\n", "127.csv", "type AN, not a coded (ID)"),
        ("355.csv", b"# units\nunit,name\nCA,Case\n", "355.csv:2:1", "header row 'code,desc"),
        ("355.csv", b"code,description\nCA,Case\nca,case\n", "355.csv:3:1", "got 'ca'"),
        ("355.csv", b"code,description\nCAS,Case\n", "355.csv:2:1", "takes 2 to 2"),
        ("355.csv", b"code,description\nCA,Case\nBX,Box\nCA,Again\n", "355.csv:4:1", "line 2"),
        ("355.csv", b"code,description\nCA,Case, 60 PK\n", "355.csv:2:9", "quote a desc"),
        ("355.csv", b"code,description\nCA,Caf\xe9\n", "355.csv:2:7", "0xe9"),
        ("355.csv", b"code,description\n", "355.csv", "at least one code"),
        ("355.csv", b"", "355.csv", "got an empty file"),
    ],
)
def test_a_bad_file_names_file_line_and_column(
    tmp_path: Path, name: str, content: bytes, where: str, says: str
) -> None:
    drop(tmp_path, name, content)
    with pytest.raises(LintFailed) as caught:
        load_codelists(tmp_path)
    (error,) = caught.value.errors
    assert str(error).startswith(f"{CODELISTS_DIR}/{where}"), str(error)
    assert says in str(error), str(error)


def test_a_windows_1252_list_that_says_so_is_read(tmp_path: Path) -> None:
    drop(tmp_path, "355.csv", b"# encoding: windows-1252\ncode,description\nCA,Caf\xe9 case\n")
    lists = load_codelists(tmp_path)
    assert lists.lists["355"].descriptions == {"CA": "Café case"}


def test_the_example_list_is_a_valid_drop_in(tmp_path: Path) -> None:
    shutil.copy(EXAMPLE_LIST, drop(tmp_path, "355.csv", b""))
    assert load_codelists(tmp_path).lists["355"].codes == ("BX", "CA", "DZ", "EA", "LB", "PK")
