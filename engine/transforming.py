"""What a transform sees: the message, its options, mapping lookups, and a place to put output.

A transform is a plain function ``run(message, ctx) -> body`` registered with
``@engine.registry.transform(name, spec)``. It does no I/O and imports nothing from Twisted. It
returns the new body (handed to the next step and, by default, to every destination) and may
``ctx.emit`` payloads for one destination and ``ctx.key`` business keys for search.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.mappings import MISSING, Mappings
from engine.model import Outbound, to_json_bytes


@dataclass
class TransformContext:
    options: Any
    mappings: Mappings
    channel: str
    message_id: str
    correlation_id: str
    emitted: list[tuple[str, Any, str | None, str | None, dict[str, Any]]] = field(
        default_factory=list
    )
    keys: list[tuple[str, str]] = field(default_factory=list)
    events: list[Any] = field(default_factory=list)
    extras: Mapping[str, Any] = field(default_factory=dict)  # what domains loaded, by name
    # the credential the message came with, as its source authenticated it (``sftp:ACCOUNT``,
    # ``token:NAME``, ``tls:CN``); None when the source has none (a local folder, a test)
    origin: str | None = None

    def lookup(self, table: str, key: Any, default: Any = MISSING) -> Any:
        """The row for ``key`` in mapping table ``table``; raises MappingMiss without a default."""
        return self.mappings.lookup(table, key, default)

    def resource(self, name: str) -> Any:
        """What a domain loaded with the project (``trading_partners``); None when absent."""
        return self.extras.get(name)

    def emit(
        self,
        destination: str,
        payload: Any,
        *,
        order_key: str | None = None,
        content_type: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        """Queue ``payload`` for ``destination`` (instead of the final body)."""
        self.emitted.append((destination, payload, order_key, content_type, dict(meta or {})))

    def book(self, event: Any) -> None:
        """Hand a record (a ConsumptionEvent, a PoRelease...) to the channel's domain section
        that takes it (``ledger:``, ``procurement:``); it is booked in the same commit as this
        message's result, once per business key."""
        self.events.append(event)

    def key(self, name: str, value: Any) -> None:
        """Record a business key (po_number, invoice_number, encounter, item) for search."""
        if value not in (None, ""):
            self.keys.append((name, str(value)))


def encode_payload(value: Any, content_type: str | None) -> tuple[bytes, str]:
    if isinstance(value, bytes):
        return value, content_type or "application/octet-stream"
    if isinstance(value, str):
        return value.encode("utf-8"), content_type or "text/plain; charset=utf-8"
    return to_json_bytes(value), content_type or "application/json"


def outbound_for(
    destinations: list[str], body: Any, ctx: TransformContext, default_content_type: str
) -> list[Outbound]:
    """Each destination gets what was emitted for it, else the final body (unless None)."""
    out: list[Outbound] = []
    emitted_for = {d for d, *_ in ctx.emitted}
    for dest, payload, order_key, ctype, meta in ctx.emitted:
        data, ct = encode_payload(payload, ctype)
        out.append(Outbound(dest, data, ct, order_key, meta))
    if body is not None:
        for dest in destinations:
            if dest not in emitted_for:
                ctype = default_content_type if isinstance(body, bytes) else None
                data, ct = encode_payload(body, ctype)
                out.append(Outbound(dest, data, ct))
    return out
