"""Golden runs: a channel test's input through the whole pipeline, its domains' bookings
included, with what it produced kept as an expected file next to the channels and compared
field by field on every later run.

``wharf test --record`` writes ``channels/expected/<channel>/<NN>-<test name>.json`` for each
test: the message's status and error, every payload it queued by destination (flattened to
field paths, engine/preview/diff.py) and its effects on the business totals (charges, stock,
requisitions, 850s, invoices, work items: what differs between the books before and after
it). A test's ``before:`` messages are booked first, in the same throw-away store: the PO an
855 answers, the charge a credit reverses. ``wharf test`` compares each test that has an
expected file, path by path, and names every field that differs.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

from engine.config.project import ChannelDef, Project
from engine.model import MessageRow
from engine.preview.diff import compare, flat_totals, flatten
from engine.preview.replay import Stored, run_configuration
from engine.registry import REGISTRY, Registry

#: every golden run happens at this time (2026-01-15 00:00 UTC): what a booking stamps is the
#: same on every run
AT = 1_768_435_200.0
FOLDER = "channels/expected"


def expected_path(project: Project, defn: ChannelDef, index: int) -> Path:
    name = defn.config.tests[index].name
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60]
    return project.root / FOLDER / defn.name / f"{index:02d}-{slug}.json"


def _stored(n: int, channel: str, raw: bytes, origin: str | None) -> Stored:
    mid = f"golden-{n:02d}"
    ctype = "application/json" if raw.lstrip()[:1] in (b"{", b"[") else "text/plain"
    row = MessageRow(
        mid, channel, "test", None, ctype, AT + n, AT + n, "", len(raw), None, None, mid,
        "received", None, None, origin,
    )  # fmt: skip
    return Stored(row, raw)


def _bytes(project: Project, item: Any) -> bytes:
    if item.input is not None:
        return (project.root / item.input).read_bytes()
    text = str(item.input_text)
    if text.startswith("MSH"):  # HL7 segments written on separate lines
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    return text.encode("utf-8")


def golden_run(
    project: Project, defn: ChannelDef, index: int, registry: Registry = REGISTRY
) -> dict[str, Any]:
    """What test ``index`` of ``defn`` produces through the pipeline and its domains."""
    test = defn.config.tests[index]
    before = [
        _stored(n, b.channel, _bytes(project, b), b.origin) for n, b in enumerate(test.before)
    ]
    unknown = sorted({b.channel for b in test.before} - set(project.channels))
    if unknown:
        raise ValueError(
            f"before: no channel {', '.join(unknown)} (have: {', '.join(project.channels)})"
        )
    message = _stored(len(before), defn.name, _bytes(project, test), test.origin)
    with tempfile.TemporaryDirectory(prefix="wharf-golden-") as tmp:
        (Path(tmp) / "a").mkdir()
        (Path(tmp) / "b").mkdir()
        books = run_configuration(project, before, Path(tmp) / "a", registry).totals
        run = run_configuration(project, [*before, message], Path(tmp) / "b", registry)
    status, error = run.statuses.get(message.id, ("not processed", None))
    outputs: dict[str, Any] = {}
    counts: dict[str, int] = {}
    for (mid, destination, _), out in run.outputs.items():
        if mid != message.id:
            continue
        n = counts[destination] = counts.get(destination, -1) + 1
        outputs[f"{destination}[{n}]"] = {
            "content_type": out.content_type,
            "fields": flatten(out.payload, out.content_type),
        }
    effects = {}
    for section in dict.fromkeys([*books, *run.totals]):
        changes = compare(
            flat_totals(books.get(section, {})), flat_totals(run.totals.get(section, {}))
        )
        if changes:
            effects[section] = {c.path: [c.before, c.after] for c in changes}
    return {
        "channel": defn.name,
        "test": test.name,
        "status": status,
        "error": error,
        "outputs": outputs,
        "effects": effects,
    }


def _flat(record: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"status": record["status"], "error": record["error"]}
    for key, value in record["outputs"].items():
        out[f"{key} content_type"] = value["content_type"]
        for path, v in value["fields"].items():
            out[f"{key} {path}"] = v
    for section, changes in record["effects"].items():
        for key, pair in changes.items():
            out[f"effects {section}: {key}"] = json.dumps(pair)
    return out


def differences(expected: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """Every field that differs, in words (expected, then what came)."""
    out = []
    for c in compare(_flat(expected), _flat(actual)):
        if c.before is None:
            out.append(f"golden: {c.path}: not expected (got {c.after!r})")
        elif c.after is None:
            out.append(f"golden: {c.path}: expected {c.before!r} (got nothing)")
        else:
            out.append(f"golden: {c.path}: expected {c.before!r} (got {c.after!r})")
    return out


def record(project: Project, defn: ChannelDef, index: int) -> Path:
    """Write test ``index``'s expected file; returns its path."""
    path = expected_path(project, defn, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = golden_run(project, defn, index)
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def check(project: Project, defn: ChannelDef, index: int) -> list[str] | None:
    """The differences from test ``index``'s expected file; None when it has none."""
    path = expected_path(project, defn, index)
    if not path.exists():
        return None
    try:
        expected = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        return [f"golden: {path.relative_to(project.root)} is not JSON: {exc}"]
    try:
        actual = golden_run(project, defn, index)
    except ValueError as exc:
        return [f"golden: {exc}"]
    return differences(expected, actual)
