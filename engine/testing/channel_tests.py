"""Runs the ``tests:`` blocks of channel files: input sample in, expectations on the outputs.

Destinations are mocked: the test sees what each would receive, and nothing is sent. The same
runner serves ``wharf test`` and the pytest plugin.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import responder
from engine.channel import Channel
from engine.codecs.hl7v2 import Hl7Message, tokenize
from engine.config.project import ChannelDef, Project
from engine.errors import CodecError
from engine.model import new_id


@dataclass
class TestOutcome:
    channel: str
    name: str
    where: str
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def subset_problems(expected: Any, actual: Any, path: str = "$") -> list[str]:
    """Where ``actual`` does not contain ``expected`` (dict keys ⊆, lists item by item)."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: expected an object (got {json.dumps(actual)})"]
        out: list[str] = []
        for k, v in expected.items():
            if k not in actual:
                out.append(f"{path}.{k}: missing (expected {json.dumps(v)})")
            else:
                out += subset_problems(v, actual[k], f"{path}.{k}")
        return out
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) < len(expected):
            return [
                f"{path}: expected a list of at least {len(expected)} (got {json.dumps(actual)})"
            ]
        out = []
        for i, v in enumerate(expected):
            out += subset_problems(v, actual[i], f"{path}[{i}]")
        return out
    if expected != actual and str(expected) != str(actual):
        return [f"{path}: expected {json.dumps(expected)} (got {json.dumps(actual)})"]
    return []


def _decode(payload: bytes, content_type: str) -> Any:
    if content_type.startswith("application/json"):
        return json.loads(payload)
    return payload.decode("utf-8", "replace")


def run_test(project: Project, defn: ChannelDef, index: int) -> TestOutcome:
    test = defn.config.tests[index]
    outcome = TestOutcome(defn.name, test.name, f"{defn.file} tests[{index}]")
    fail = outcome.failures.append
    if test.input is not None:
        raw = (project.root / test.input).read_bytes()
    else:
        raw = test.input_text.encode("utf-8")
    channel = Channel(defn, project.mappings, extras=project.extras)
    message_id = new_id()
    result = channel.process(raw, message_id, message_id, origin=test.origin)
    exp = test.expect
    status = "queued" if result.outbound else result.status
    if exp.status is not None and exp.status not in (status, result.status):
        detail = f": {result.error}" if result.error else ""
        fail(f"status: expected {exp.status} (got {status}{detail})")
    if exp.error_contains is not None and exp.error_contains not in (result.error or ""):
        fail(f"error: expected text containing {exp.error_contains!r} (got {result.error!r})")
    if exp.events is not None and len(result.events) != exp.events:
        fail(f"events: expected {exp.events} ledger event(s) (got {len(result.events)})")
    if exp.response_code is not None:
        code = _response_code(channel, raw, result)
        if code != exp.response_code:
            fail(f"response_code: expected {exp.response_code} (got {code})")
    by_dest: dict[str, list[Any]] = {d: [] for d in channel.destinations}
    for out in result.outbound:
        by_dest.setdefault(out.destination, []).append(_decode(out.payload, out.content_type))
    for dest, want in exp.destinations.items():
        got = by_dest.get(dest, [])
        if want.count is not None and len(got) != want.count:
            fail(f"{dest}: expected {want.count} payload(s) (got {len(got)})")
        if want.json is not None:
            expected = want.json
            if isinstance(expected, str):
                expected = json.loads((project.root / expected).read_text(encoding="utf-8"))
            if got != expected:
                fail(f"{dest}: expected payloads {json.dumps(expected)} (got {json.dumps(got)})")
        if want.json_subset is not None:
            for problem in subset_problems(want.json_subset, got, dest):
                fail(problem)
        if want.contains is not None and not any(want.contains in str(g) for g in got):
            fail(f"{dest}: expected a payload containing {want.contains!r}")
    return outcome


def _response_code(channel: Channel, raw: bytes, result: Any) -> str:
    """MSA-1 of the answer an MLLP source would give for this input (``none`` if not HL7)."""
    try:
        parsed = channel.decode(raw)
    except CodecError as exc:
        reply = responder.rejected(raw, exc)
    else:
        if not isinstance(parsed.value, Hl7Message):
            return "none"
        if responder.waits_for_pipeline(parsed, channel.config.respond_from):
            reply = responder.final(parsed, result.status, result.error, result.error_location)
        else:
            reply = responder.commit_reply(parsed)
    return (tokenize(reply).get("MSA-1") or "none") if reply else "none"


def run_all(
    project: Project, names: list[str] | None = None, *, golden: bool = False
) -> list[TestOutcome]:
    """Every test of the channels (``names``: only those); ``golden``: a test with an expected
    file (``wharf test --record``) is also compared with it field by field."""
    from engine.testing.golden import check

    out = []
    for name, defn in project.channels.items():
        if names and name not in names:
            continue
        for i in range(len(defn.config.tests)):
            outcome = run_test(project, defn, i)
            if golden:
                outcome.failures += check(project, defn, i) or []
            out.append(outcome)
    return out


def project_root_for(path: Path) -> Path:
    return path.resolve().parent.parent
