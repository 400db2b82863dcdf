"""Sources frame inbound bytes and hand them to the engine with an acknowledge step."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class IngestOutcome:
    """What the engine answers a source, after the store's commit (or a refusal)."""

    kind: str  # stored | duplicate | conflict | rejected | refused
    message_id: str | None = None
    response: bytes | None = None
    reason: str = ""

    @property
    def accepted(self) -> bool:
        """True when the bytes are durably stored (or were already): the source may let go."""
        return self.kind in ("stored", "duplicate", "conflict")


#: ``await ingest(raw, peer)`` stores one inbound message and says what happened.
Ingest = Callable[[bytes, str], Awaitable[IngestOutcome]]
