"""An 810 from a trading partner's SFTP inbound/ (``channels/x12_from_vendors.yaml``: the ``x12``
codec, the ``x12_inbound`` transform, then the procurement book) is read once: its text decoded
once, tokenized once by our tokenizer, walked once by the validation (the compiled
clean-interchange walk, or pyx12 when that one finds something to report), and its 999 and
TA1 written once, by the book, with the partner's control numbers.

Before: decoded twice and tokenized twice (the validator's own decode and walk to each IEA,
then ``parse_interchanges`` in the transform), and the 997/999 (and a TA1 asked for by
ISA14) written twice: by ``validate()``, thrown away, then by the book."""

from __future__ import annotations

import importlib
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import pyx12.x12file

from engine import model
from engine.channel import Channel
from engine.config.project import load_project
from engine.domains.procurement.book import book_x12
from engine.domains.procurement.domain import repository
from engine.registry import REGISTRY
from engine.runtime.store import open_store

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "samples" / "x12" / "810_5010.x12"

# What is counted, and the functions that do it. Each is wrapped wherever it is bound (the
# module defining it and every module that imported it by name); a function that does not exist
# (some of these only in earlier versions) is not wrapped, and a count of 0 fails the test as
# surely as a 2.
OPERATIONS: dict[str, list[tuple[str, str]]] = {
    # bytes -> text
    "decode": [("engine.x12.segments", "decode"), ("engine.x12.validate", "_decode")],
    # a pass of our own code over the segments of an interchange: the tokenizer, or a walk of
    # its own to the IEA
    "tokenize": [
        ("engine.x12.segments", "read_interchange"),
        ("engine.x12.segments", "_read_interchange"),
        ("engine.x12.scan", "_find_end"),
        ("engine.x12.validate", "_find_end"),
    ],
    # the validation's walk over the segments: the compiled one (pyx12's reader is counted below)
    "validation walk": [("engine.x12.compiled", "_walk")],
    # 997/999 and TA1 written
    "997/999": [("engine.x12.ack", "functional_ack")],
    "TA1": [("engine.x12.ack", "ta1_interchange")],
}


def _module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        return None


@pytest.fixture()
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter]:
    calls: Counter = Counter()

    def wrap(what: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def counting(*args: Any, **kwargs: Any) -> Any:
            calls[what] += 1
            return fn(*args, **kwargs)

        return counting

    REGISTRY.load()  # the codecs and transforms of the path, imported before they are wrapped
    targets = {
        (module_name, name): getattr(_module(module_name), name, None)
        for places in OPERATIONS.values()
        for module_name, name in places
    }
    ours = [
        m
        for name, m in list(sys.modules.items())
        if name.startswith(("engine.", "transforms.")) and isinstance(m, ModuleType)
    ]
    for what, places in OPERATIONS.items():
        for module_name, name in places:
            fn = targets[module_name, name]
            if fn is None:
                continue
            wrapped = wrap(what, fn)
            for module in ours:
                for attr, value in list(vars(module).items()):
                    if value is fn:
                        monkeypatch.setattr(module, attr, wrapped)

    class CountingReader(pyx12.x12file.X12Reader):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            calls["validation walk"] += 1
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(pyx12.x12file, "X12Reader", CountingReader)
    yield calls


def inbound_and_book(raw: bytes) -> list[Any]:
    """The channel's decode + x12_inbound transform, then the book in the message's commit."""
    project = load_project(REPO, env={})
    channel = Channel.of(project, "x12_from_vendors")
    result = channel.process(raw, "m-810", "m-810")
    assert result.status == model.SENT, result.error
    assert len(result.events) == 1
    store = open_store(Path(tempfile.mkdtemp()) / "w.db")
    try:
        with store.transaction("book") as tx:
            tx.connection.execute(
                "INSERT INTO messages (id, channel, source, content_type, received_at, "
                "updated_at, sha256, size, status) "
                "VALUES ('m-810', 'x12_from_vendors', 'test', 'x', 0, 0, '', 0, 'sent')"
            )
            return book_x12(
                repository(tx),
                records=result.events,
                channel=channel.name,
                message_id="m-810",
                correlation_id="m-810",
                routes=channel.bindings[0].routes,
                partners=project.extras["trading_partners"],
                converter=channel.bindings[0].converter,
                now=1_800_000_000.0,
            )
    finally:
        store.close()


@pytest.mark.parametrize("isa14", ["0", "1"])
def test_an_inbound_810_is_read_and_acknowledged_once(counted: Counter, isa14: str) -> None:
    """ISA14 = 1 asks for a TA1 (the partner wants one anyway): still one TA1 written."""
    raw = SAMPLE.read_bytes()
    assert raw[100:101] == b"0"  # ISA14
    raw = raw[:100] + isa14.encode() + raw[101:]
    out = inbound_and_book(raw)
    files = sorted(o.meta["filename"].split("_")[0] for o in out if o.destination == "vendors")
    assert files == ["999", "TA1"]
    assert dict(counted) == {
        "decode": 1,
        "tokenize": 1,
        "validation walk": 1,
        "997/999": 1,
        "TA1": 1,
    }
