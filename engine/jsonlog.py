"""``wharf run --log-format json``: one JSON object per log line.

Every line has the same keys: ``time`` (ISO 8601, UTC), ``level``, ``namespace``, ``text`` (the
event's message, as the text log shows it), ``channel``, ``message_id`` and
``correlation_id`` (null when the line is not about one), plus ``destination`` and
``delivery_id`` for a delivery, and ``error`` (the exception's type and message) for a
failure. Nothing else of the event is written: the text is what the text log already shows
(the engine's log lines name messages by id and never carry their content), and the event's
other keys, whatever a caller put there, stay out of the file.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import ILogObserver, formatEvent
from zope.interface import implementer

#: Event keys that name the message a line is about (the processor logs ``id``).
MESSAGE_KEYS = ("message_id", "id")


def line_of(event: dict[str, Any]) -> dict[str, Any]:
    """The JSON object of one log event (see the module docstring)."""
    level = event.get("log_level")
    message_id = next((event[k] for k in MESSAGE_KEYS if event.get(k) is not None), None)
    out: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time") or 0, UTC).isoformat(
            timespec="milliseconds"
        ),
        "level": level.name if level is not None else "info",
        "namespace": event.get("log_namespace", ""),
        "text": formatEvent(event) if event.get("log_format") is not None else "",
        "channel": _str(event.get("channel")),
        "message_id": _str(message_id),
        "correlation_id": _str(event.get("correlation_id")),
    }
    for key in ("destination", "delivery_id"):
        if event.get(key) is not None:
            out[key] = event[key] if isinstance(event[key], int) else str(event[key])
    failure = event.get("log_failure")
    if failure is not None:
        out["error"] = f"{failure.type.__name__}: {failure.getErrorMessage()}"
    return out


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


@implementer(ILogObserver)
class JsonLines:
    """Writes each event as one JSON line to ``stream`` (flushed: another process reads it)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def __call__(self, event: dict[str, Any]) -> None:
        self.stream.write(json.dumps(line_of(event), default=str) + "\n")
        self.stream.flush()
