"""How the command line shows what it lists.

A table prints its header and its count on stderr and its rows on stdout, so that a person
at a terminal sees the columns named while a pipe (``| wc -l``, ``| cut``) gets rows only;
``--json`` prints the rows as one JSON array instead. Times are ISO 8601 with the zone
(``2026-01-17T10:22:03+01:00``), durations as a person writes them (``100d``, ``90m``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, TextIO

from engine.spec import duration_text

__all__ = ["duration_text", "iso", "table", "text"]


def iso(ts: float | None) -> str | None:
    """``ts`` (seconds since the epoch) as local ISO 8601 with the zone; None stays None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


def text(value: Any) -> str:
    """One table cell: ``-`` for nothing, the value as text otherwise."""
    if value is None or value == "":
        return "-"
    return str(value)


def table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[tuple[str, str]],
    *,
    noun: str,
    as_json: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> None:
    """Print ``rows`` as a table of ``columns`` ((title, key) pairs; the last one is not
    padded) or, with ``as_json``, as a JSON array of the whole rows. ``noun`` names the
    count (``message(s)``)."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    if as_json:
        json.dump(list(rows), out, indent=2, default=str)
        out.write("\n")
        out.flush()
        return
    if rows:
        cells = [[text(row.get(key)) for _, key in columns] for row in rows]
        widths = [
            max(len(title), *(len(c[i]) for c in cells)) for i, (title, _) in enumerate(columns)
        ]

        def line(values: Sequence[str]) -> str:
            padded = [v.ljust(w) for v, w in zip(values[:-1], widths, strict=False)]
            return "  ".join([*padded, values[-1]])

        err.write(line([title for title, _ in columns]) + "\n")
        err.flush()
        for c in cells:
            out.write(line(c) + "\n")
        out.flush()
    err.write(f"{len(rows)} {noun}\n")
    err.flush()
