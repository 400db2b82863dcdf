"""One pass over an X12 file (engine.x12.scan): the interchanges tokenized as
``parse_interchanges`` tokenizes them, and every interchange delimited, even one whose
envelope is broken, as the validator needs it."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import X12EnvelopeError
from engine.x12.scan import scan
from engine.x12.segments import parse_interchanges
from engine.x12.validate import validate

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "x12"
FILES = sorted(SAMPLES.glob("*.x12")) + sorted((SAMPLES / "broken").glob("*.x12"))


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_scan_tokenizes_as_parse_interchanges_does(path: Path) -> None:
    data = path.read_bytes()
    scanned = scan(data)
    try:
        expected = parse_interchanges(data)
    except X12EnvelopeError as exc:
        with pytest.raises(X12EnvelopeError) as info:
            scanned.interchanges  # noqa: B018
        assert (info.value.ta1_code, str(info.value)) == (exc.ta1_code, str(exc))
    else:
        assert scanned.interchanges == expected
        assert [s.end for s in scanned.spans] == [ic.end for ic in expected]


def test_a_broken_interchange_is_delimited_and_the_tokenizer_stops_there() -> None:
    good = (SAMPLES / "810_4010.x12").read_text()
    no_iea = good[: good.index("IEA*")]
    scanned = scan(good + no_iea + good)
    assert [s.text.startswith("ISA") for s in scanned.spans] == [True, True, True]
    assert [s.interchange is not None for s in scanned.spans] == [True, False, False]
    # nothing but the whitespace between interchanges is left out
    assert "".join("".join(s.text for s in scanned.spans).split()) == "".join(scanned.text.split())
    assert scanned.error is not None and scanned.error.ta1_code == "024"
    with pytest.raises(X12EnvelopeError):
        scanned.interchanges  # noqa: B018


def test_data_that_is_not_x12_is_one_span_to_its_end() -> None:
    scanned = scan(b"  hello")
    ((span,),) = (scanned.spans,)
    assert span.text == "hello" and span.header.problems[0][0] == "022"
    assert span.interchange is None and scanned.error is not None


@pytest.mark.parametrize("path", FILES[:4] + FILES[-4:], ids=lambda p: p.name)
def test_validate_takes_the_scan_or_the_bytes_alike(path: Path) -> None:
    data = path.read_bytes()
    assert validate(scan(data)) == validate(data)
