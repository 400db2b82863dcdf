"""Sources frame inbound bytes and hand them to the engine with an acknowledge step."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class IngestOutcome:
    """What the engine answers a source, after the store's commit (or a refusal)."""

    kind: str  # stored | duplicate | conflict | rejected | refused
    message_id: str | None = None
    response: bytes | None = None
    reason: str = ""
    received_at: float | None = None  # for a message stored now: its ingest time

    @property
    def accepted(self) -> bool:
        """True when the bytes are durably stored (or were already): the source may let go."""
        return self.kind in ("stored", "duplicate", "conflict")


#: ``await ingest(raw, peer)`` stores one inbound message and says what happened. A source that
#: decoded the bytes with the channel's codec itself may pass ``parsed=`` (the engine then skips
#: its decode and uses that ``Parsed``, its ``dedup_key`` included), and ``min_dedup_window=``
#: (seconds) to have a resend recognised even where the channel's ``dedup.window`` is shorter.
#: ``origin=`` names the credential the bytes came with, as the source authenticated it:
#: ``sftp:ACCOUNT`` (a folder inside an account of Wharf's SFTP server), ``token:NAME`` (the
#: bearer token's name), ``tls:CN`` (the client certificate's common name); it is stored with
#: the message and a domain may bind it to a party (procurement: a trading partner).
#: ``arrival=`` identifies this delivery of the bytes (a file's name, inode, mtime and size):
#: for a codec whose duplicates are per arrival it tells a crash's retake from a resend.
Ingest = Callable[..., Awaitable[IngestOutcome]]


@dataclass(frozen=True)
class SourceServices:
    """What the engine lends a source whose factory takes a ``services`` keyword.

    ``codec()``: the channel's codec now (a hot reload may swap it while the source runs);
    ``load(message_id)``: ``(MessageRow | None, raw bytes | None)``, read on the store thread;
    ``run(fn, *args)``: CPU work (parsing a large body) on the pipeline pool. ``load`` and
    ``run`` return Deferreds.
    """

    codec: Callable[[], Any]
    load: Callable[[str], Awaitable[tuple[Any, bytes | None]]]
    run: Callable[..., Awaitable[Any]]
