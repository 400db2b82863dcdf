"""An impact preview as a report: JSON (the structure), the terminal's text and HTML (both
made from the JSON). Changes are grouped by destination and field path, the largest first
(total numeric change, then how many outputs), each group with a few examples; the business
totals follow, section by section. Patient fields are masked unless asked (``show_phi``):
HL7 patient and visit segments, JSON keys naming a patient, and encounter numbers, which
become a stable token so that grouping by encounter still reads.
"""

from __future__ import annotations

import hashlib
import html
import re
from decimal import Decimal
from typing import Any

from engine.preview.diff import Change
from engine.preview.impact import Impact
from engine.preview.totals import SECTIONS

EXAMPLES = 3
MASK = "***"
#: HL7 segments about the patient, the next of kin, the guarantor, insurance
_PHI_SEGMENTS = re.compile(r"^(PID|PD1|NK1|GT1|IN1|IN2|IN3|MRG|ACC)\[")
#: HL7 visit fields that identify the patient: PV1-19 visit number, PV1-50 alternate visit id
_PHI_FIELDS = re.compile(r"^PV1\[\d+\]-(19|50)(\.|$)")
_PHI_KEYS = re.compile(
    r"(patient|mrn|birth|dob|ssn|phone|address|encounter|subject|given|family)", re.I
)
_ENCOUNTER = re.compile(r"\bENC-[A-Za-z0-9-]+")


def is_phi(path: str) -> bool:
    """Whether a field path holds a patient identifier."""
    if _PHI_SEGMENTS.match(path) or _PHI_FIELDS.match(path):
        return True
    return path.startswith("$") and bool(_PHI_KEYS.search(path))


def _token(text: str) -> str:
    return "enc#" + hashlib.sha256(text.encode()).hexdigest()[:8]


def mask_text(text: str | None) -> str | None:
    """Encounter numbers in free text (totals' keys) replaced by a stable token."""
    return None if text is None else _ENCOUNTER.sub(lambda m: _token(m.group(0)), text)


def _value(path: str, value: str | None, show_phi: bool) -> str | None:
    if show_phi or value is None:
        return value
    return MASK if is_phi(path) else value


def _delta(change: Change) -> str | None:
    try:
        return str(Decimal(change.after or "x") - Decimal(change.before or "x"))
    except ArithmeticError:
        return None


def build(impact: Impact, *, show_phi: bool = False) -> dict[str, Any]:
    """The report as a JSON-able structure."""
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    for diff in impact.outputs:
        for change in diff.changes:
            key = (diff.destination, diff.kind, change.path)
            g = groups.setdefault(
                key,
                {
                    "destination": diff.destination,
                    "kind": diff.kind,
                    "path": change.path,
                    "outputs": 0,
                    "total_change": Decimal(0),
                    "examples": [],
                },
            )
            g["outputs"] += 1
            g["total_change"] += change.magnitude
            if len(g["examples"]) < EXAMPLES:
                g["examples"].append(
                    {
                        "message": diff.message_id,
                        "channel": diff.channel,
                        "output": diff.index,
                        "before": _value(change.path, change.before, show_phi),
                        "after": _value(change.path, change.after, show_phi),
                    }
                )
    ordered = sorted(groups.values(), key=lambda g: (-g["total_change"], -g["outputs"]))
    for g in ordered:
        g["total_change"] = str(g["total_change"])
    by_destination: dict[str, dict[str, int]] = {}
    for diff in impact.outputs:
        d = by_destination.setdefault(diff.destination, {"changed": 0, "added": 0, "removed": 0})
        d[diff.kind] += 1
    totals = {}
    for section, changes in impact.totals.items():
        if not changes:
            continue
        rows = [
            {
                "key": c.path if show_phi else mask_text(c.path),
                "before": c.before,
                "after": c.after,
                "change": _delta(c),
            }
            for c in changes
        ]
        rows.sort(key=lambda r: -abs(Decimal(r["change"])) if r["change"] else 0)
        totals[section] = rows
    return {
        "baseline": impact.baseline,
        "candidate": impact.candidate,
        "messages": impact.messages,
        "channels": impact.channels,
        "skipped_channels": impact.skipped,
        "outputs_compared": impact.outputs_compared,
        "outputs_changed": len(impact.outputs),
        "messages_changed": len({d.message_id for d in impact.outputs}),
        "by_destination": by_destination,
        "changes": ordered,
        "status_changes": [
            {"message": mid, "channel": ch, "before": was, "after": now}
            for mid, ch, was, now in impact.statuses
        ],
        "totals": totals,
        "phi": "shown" if show_phi else "masked",
        "seconds": round(impact.seconds, 3),
        "unchanged": impact.unchanged,
    }


def text(report: dict[str, Any], limit: int = 20) -> str:
    """The terminal's report."""
    out = [
        f"impact preview: {report['candidate']} against {report['baseline']}",
        f"  {report['messages']} stored message(s) replayed ("
        + ", ".join(f"{c} {n}" for c, n in report["channels"].items())
        + f") in {report['seconds']}s; patient fields {report['phi']}",
    ]
    if report["skipped_channels"]:
        out.append(
            "  not in the candidate configuration: "
            + ", ".join(f"{c} ({n} message(s))" for c, n in report["skipped_channels"].items())
        )
    if report["unchanged"]:
        out.append("  no change: every output, status and total is the same")
        return "\n".join(out) + "\n"
    out.append(
        f"  {report['outputs_changed']} of {report['outputs_compared']} output(s) differ, "
        f"from {report['messages_changed']} message(s)"
    )
    for dest, counts in report["by_destination"].items():
        shown = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
        out.append(f"    {dest}: {shown}")
    if report["changes"]:
        out.append("payload changes, largest first (destination, field path, outputs):")
        for g in report["changes"][:limit]:
            out.append(
                f"  {g['destination']} {g['path']} ({g['kind']}): {g['outputs']} output(s), "
                f"total change {g['total_change']}"
            )
            for e in g["examples"]:
                out.append(f"      {e['message']}: {e['before']} -> {e['after']}")
        if len(report["changes"]) > limit:
            out.append(f"  ... {len(report['changes']) - limit} more (see --json or --html)")
    if report["status_changes"]:
        out.append(f"message status changes: {len(report['status_changes'])}")
        for s in report["status_changes"][:limit]:
            out.append(f"  {s['message']} ({s['channel']}): {s['before']} -> {s['after']}")
    for section, rows in report["totals"].items():
        out.append(f"{SECTIONS.get(section, section)}: {len(rows)} change(s)")
        for r in rows[:limit]:
            change = f" ({r['change']})" if r["change"] else ""
            out.append(f"  {r['key']}: {r['before']} -> {r['after']}{change}")
    return "\n".join(out) + "\n"


def to_html(report: dict[str, Any]) -> str:
    """A self-contained HTML page of the report (for a CI job's artifacts or a PR comment)."""
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Wharf impact preview</title>",
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}"
        ".before{color:#a00}.after{color:#070}</style></head><body>",
        f"<h1>Impact preview</h1><p>{e(report['candidate'])} against {e(report['baseline'])}: "
        f"{report['messages']} message(s), {report['outputs_changed']} of "
        f"{report['outputs_compared']} output(s) differ; patient fields {report['phi']}.</p>",
    ]
    if report["unchanged"]:
        parts.append("<p>No change: every output, status and total is the same.</p>")
    if report["changes"]:
        parts.append(
            "<h2>Payload changes</h2><table><tr><th>destination</th><th>field</th>"
            "<th>kind</th><th>outputs</th><th>total change</th><th>examples</th></tr>"
        )
        for g in report["changes"]:
            examples = "<br>".join(
                f"{e(x['message'])}: <span class=before>{e(str(x['before']))}</span> &rarr; "
                f"<span class=after>{e(str(x['after']))}</span>"
                for x in g["examples"]
            )
            parts.append(
                f"<tr><td>{e(g['destination'])}</td><td>{e(g['path'])}</td><td>{g['kind']}</td>"
                f"<td>{g['outputs']}</td><td>{g['total_change']}</td><td>{examples}</td></tr>"
            )
        parts.append("</table>")
    if report["status_changes"]:
        parts.append("<h2>Status changes</h2><table><tr><th>message</th><th>before</th>")
        parts.append("<th>after</th></tr>")
        for s in report["status_changes"]:
            parts.append(
                f"<tr><td>{e(s['message'])}</td><td>{e(s['before'])}</td>"
                f"<td>{e(s['after'])}</td></tr>"
            )
        parts.append("</table>")
    for section, rows in report["totals"].items():
        parts.append(f"<h2>{e(SECTIONS.get(section, section))}</h2><table>")
        parts.append("<tr><th>key</th><th>before</th><th>after</th><th>change</th></tr>")
        for r in rows:
            parts.append(
                f"<tr><td>{e(r['key'])}</td><td>{e(str(r['before']))}</td>"
                f"<td>{e(str(r['after']))}</td><td>{e(str(r['change'] or ''))}</td></tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>\n")
    return "".join(parts)
