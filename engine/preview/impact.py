"""An impact preview: the same stored messages through the live and a candidate configuration,
each in its own throw-away store, and what differs: every outbound payload by field path, each
message's status, and the business totals.

Both sides are replayed (rather than comparing with what the live store once sent) so that the
only difference between them is the configuration: the same messages in the same order at the
same times, from the same starting on-hand, with nothing else booked in between.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from engine.preview.diff import Change, compare, flat_totals, flatten
from engine.preview.replay import RunResult, Stored, run_configuration
from engine.registry import REGISTRY, Registry


@dataclass(frozen=True)
class OutputDiff:
    """One output (message, destination, index) that differs between the two runs."""

    message_id: str
    channel: str
    destination: str
    index: int
    kind: str  # changed | added (only the candidate has it) | removed
    changes: tuple[Change, ...] = ()

    @property
    def magnitude(self) -> Decimal:
        return sum((c.magnitude for c in self.changes), Decimal(0))


@dataclass
class Impact:
    baseline: str
    candidate: str
    messages: int
    channels: dict[str, int]
    outputs: list[OutputDiff] = field(default_factory=list)
    statuses: list[tuple[str, str, str, str]] = field(default_factory=list)  # id, ch, was, is
    totals: dict[str, list[Change]] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    outputs_compared: int = 0

    @property
    def unchanged(self) -> bool:
        return not (self.outputs or self.statuses or any(self.totals.values()))


def _status(result: RunResult, mid: str) -> str:
    status, error = result.statuses.get(mid, ("not processed", None))
    return f"{status}: {error}" if error else status


def compare_runs(
    base: RunResult, cand: RunResult, messages: Sequence[Stored], impact: Impact
) -> Impact:
    channel_of = {m.id: m.channel for m in messages}
    keys = list(dict.fromkeys([*base.outputs, *cand.outputs]))
    impact.outputs_compared = len(keys)
    for key in keys:
        mid, dest, idx = key
        b, c = base.outputs.get(key), cand.outputs.get(key)
        channel = channel_of.get(mid, mid.split(":")[1] if mid.count(":") >= 2 else "")
        if b is None or c is None:
            kind = "added" if b is None else "removed"
            one = c if c is not None else b
            assert one is not None
            flat = flatten(one.payload, one.content_type)
            changes = tuple(
                Change(p, None, v) if b is None else Change(p, v, None) for p, v in flat.items()
            )
            impact.outputs.append(OutputDiff(mid, channel, dest, idx, kind, changes))
            continue
        if b.payload == c.payload:
            continue
        changes = tuple(
            compare(flatten(b.payload, b.content_type), flatten(c.payload, c.content_type))
        )
        if changes:
            impact.outputs.append(OutputDiff(mid, channel, dest, idx, "changed", changes))
    for m in messages:
        was, now = _status(base, m.id), _status(cand, m.id)
        if was != now:
            impact.statuses.append((m.id, m.channel, was, now))
    for section in dict.fromkeys([*base.totals, *cand.totals]):
        changes = compare(
            flat_totals(base.totals.get(section, {})), flat_totals(cand.totals.get(section, {}))
        )
        impact.totals[section] = changes
    return impact


def preview(
    live: Any,
    candidate: Any,
    messages: Sequence[Stored],
    *,
    baseline_label: str = "live configuration",
    candidate_label: str = "candidate configuration",
    registry: Registry = REGISTRY,
) -> Impact:
    """``messages`` through the ``live`` and ``candidate`` projects; what differs."""
    channels: dict[str, int] = {}
    for m in messages:
        channels[m.channel] = channels.get(m.channel, 0) + 1
    impact = Impact(baseline_label, candidate_label, len(messages), channels)
    with tempfile.TemporaryDirectory(prefix="wharf-preview-") as tmp:
        (Path(tmp) / "live").mkdir()
        (Path(tmp) / "candidate").mkdir()
        base = run_configuration(live, messages, Path(tmp) / "live", registry)
        cand = run_configuration(candidate, messages, Path(tmp) / "candidate", registry)
    impact.skipped = {k: v for k, v in cand.skipped.items()}
    impact.seconds = base.seconds + cand.seconds
    return compare_runs(base, cand, messages, impact)
