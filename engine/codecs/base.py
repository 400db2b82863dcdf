"""What every codec returns: a parsed message with the ids the store and the router need."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Parsed:
    """A decoded inbound message.

    ``value`` is what transforms receive (a tokenized HL7 message, a dict, bytes...).
    ``dedup_key`` identifies a resend of the same message (HL7: MSH-3|MSH-4|MSH-10).
    """

    value: Any
    content_type: str
    message_type: str | None = None
    control_id: str | None = None
    dedup_key: str | None = None

    def get(self, path: str) -> Any:
        """A field for filters and routing (``MSH-9``, ``$.status``...); None when absent."""
        getter = getattr(self.value, "get", None)
        if getter is None:
            return None
        try:
            return getter(path)
        except (KeyError, IndexError, ValueError, TypeError):
            return None


def sha256_key(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()
