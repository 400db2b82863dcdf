"""pyx12's own command-line validator, ``x12valid --map-path engine/x12/maps``, run as a
subprocess: it accepts the good samples and every 997/999/TA1 that ``acknowledge()`` writes from
what ``validate()`` found, and it rejects the broken samples whose fault is inside a transaction
set (DOMAIN §3)."""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

import pytest

from engine.domains.procurement.codelists import CODELISTS_DIR, load_codelists
from engine.x12.ack import acknowledge
from engine.x12.mapgen import MAP_PATH
from engine.x12.validate import validate

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples" / "x12"
X12VALID = Path(sys.executable).parent / "x12valid"
STATUS = re.compile(r"^(?P<file>\S+): (?P<status>OK|Failure)$", re.MULTILINE)


def x12valid(files: list[Path], map_path: Path = MAP_PATH) -> dict[str, str]:
    """Run x12valid on ``files`` (in their folder, where it also writes ``<file>.997``)."""
    proc = subprocess.run(
        [str(X12VALID), "--map-path", str(map_path), *(p.name for p in files)],
        cwd=files[0].parent,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    found = {m["file"]: m["status"] for m in STATUS.finditer(proc.stderr)}
    missing = [p.name for p in files if p.name not in found]
    assert not missing, f"x12valid gave no status for {missing}:\n{proc.stderr[-2000:]}"
    return found


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="x12valid-"))


def test_x12valid_accepts_the_good_samples() -> None:
    """Every good 850/855/856/810 (004010 and 005010) and the 997/999/TA1 samples."""
    tmp = workdir()
    try:
        names = [f"{s}_{v}.x12" for s in ("850", "855", "856", "810") for v in ("4010", "5010")]
        names += ["997_4010.x12", "997_5010.x12", "999_5010.x12", "TA1_4010.x12", "TA1_5010.x12"]
        files = []
        for name in names:
            shutil.copy(SAMPLES / name, tmp / name)
            files.append(tmp / name)
        assert x12valid(files) == {name: "OK" for name in names}
    finally:
        shutil.rmtree(tmp)


def test_x12valid_accepts_every_acknowledgment_validate_writes() -> None:
    """997 (004010 and 005010), 999 and TA1 written for all samples, good and broken."""
    tmp = workdir()
    try:
        counter = itertools.count(1)
        when = datetime(2026, 1, 17, 10, 30)
        files = []
        for path in (
            sorted(SAMPLES.glob("*.x12"))
            + sorted((SAMPLES / "broken").glob("*.x12"))
            + sorted((SAMPLES / "thirdparty").glob("*.x12"))
        ):
            for kind in ("997", "999"):
                r = acknowledge(
                    validate(path.read_bytes()), kind=kind, control_numbers=counter, now=when
                )
                # one file per interchange: x12valid takes the version of a file from its
                # first ISA, and an answer to two interchanges may mix 00401 and 00501
                for what, docs in (("ack", r.acks), ("ta1", r.ta1s)):
                    for n, data in enumerate(docs):
                        out = tmp / f"{path.stem}.{kind}.{n}.{what}.x12"
                        out.write_bytes(data)
                        files.append(out)
        kinds = {p.name.split(".")[-2] for p in files}
        assert kinds == {"ack", "ta1"}
        assert any(p.name.endswith(".ack.x12") and ".999." in p.name for p in files)
        result = x12valid(files)
        assert {name: status for name, status in result.items() if status != "OK"} == {}
    finally:
        shutil.rmtree(tmp)


@pytest.mark.parametrize(
    "name",
    [
        "se_count_810_4010.x12",
        "ge_control_mismatch_856_4010.x12",
        "missing_element_850_5010.x12",
        "invalid_qualifier_856_5010.x12",
        "invalid_date_810_4010.x12",
        "missing_segment_810_5010.x12",
    ],
)
def test_x12valid_rejects_broken_samples_like_validate_does(name: str) -> None:
    tmp = workdir()
    try:
        shutil.copy(SAMPLES / "broken" / name, tmp / name)
        assert x12valid([tmp / name]) == {name: "Failure"}
        assert not validate((tmp / name).read_bytes()).ok
    finally:
        shutil.rmtree(tmp)


#: The unit element of each line segment of the 850/855/856/810 samples (PO103, PO403,
#: ACK03, SN103, IT103, CTP05's composite is not used).
UNIT_ELEMENT = {"PO1": 3, "PO4": 3, "ACK": 3, "SN1": 3, "IT1": 3}


def in_cases(data: bytes) -> bytes:
    """A sample as another vendor's system writes it: every unit is CS, how many systems write
    a case (the UN/ECE Rec. 21 package code; in X12 element 355, CS is "cassette" and case is
    CA), a well-formed 355 code whose meaning is the partner's uom map's business."""
    segments = []
    for segment in data.split(b"~"):
        parts = segment.split(b"*")
        at = UNIT_ELEMENT.get(parts[0].strip().decode("ascii", "replace"))
        if at is not None and len(parts) > at and parts[at]:
            parts[at] = b"CS"
        segments.append(b"*".join(parts))
    return b"~".join(segments)


def test_third_party_4010_documents_in_cases_pass_both_validators() -> None:
    """4010 850, 855, 856 and 810 whose units are CS, and samples/x12/thirdparty/: accepted by validate() and by pyx12's
    x12valid over the project's maps (they answered "(CS) is not a valid code for Unit or
    Basis for Measurement Code"); whether a partner may send CS is its uom map's business."""
    tmp = workdir()
    try:
        files = []
        for kind in ("850", "855", "856", "810"):
            data = in_cases((SAMPLES / f"{kind}_4010.x12").read_bytes())
            assert data.count(b"*CS") >= 2, kind
            result = validate(data)
            assert result.ok, (kind, result.issues)
            out = tmp / f"{kind}_4010_cs.x12"
            out.write_bytes(data)
            files.append(out)
        # and the third-party samples as HARBOR's system writes them (`|`, CR LF, CS/BX/PK/DZ)
        for path in sorted((SAMPLES / "thirdparty").glob("*.x12")):
            assert validate(path.read_bytes()).ok, path.name
            shutil.copy(path, tmp / path.name)
            files.append(tmp / path.name)
        # 5 in cases, and the two in standard codes outside the old subsets
        assert len(files) == 4 + 7
        assert x12valid(files) == {p.name: "OK" for p in files}
    finally:
        shutil.rmtree(tmp)


def test_x12valid_checks_a_dropped_in_code_list_like_validate_does(tmp_path: Path) -> None:
    """The maps written for a list dropped in mappings/x12/codelists/ (engine.domains.procurement.codelists)
    are pyx12 maps like Wharf's own: x12valid refuses HARBOR's ASN in CS against
    samples/x12/codelists/355.csv, and takes it in CA."""
    folder = tmp_path / "project" / CODELISTS_DIR
    folder.mkdir(parents=True)
    shutil.copy(SAMPLES / "codelists" / "355.csv", folder / "355.csv")
    map_path = load_codelists(tmp_path / "project").map_path()
    assert map_path is not None
    data = (SAMPLES / "thirdparty" / "856_4010_cases.x12").read_bytes()
    (tmp_path / "in_cs.x12").write_bytes(data)
    (tmp_path / "in_ca.x12").write_bytes(data.replace(b"|CS", b"|CA"))
    files = [tmp_path / "in_cs.x12", tmp_path / "in_ca.x12"]
    assert x12valid(files, map_path) == {"in_cs.x12": "Failure", "in_ca.x12": "OK"}
    assert x12valid(files[:1]) == {"in_cs.x12": "OK"}  # Wharf's own maps: no list for 355
