"""Frozen records that cross module boundaries: inbound messages, ingest results, outbox rows."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Literal, TypeVar

#: Message statuses (Mirth's vocabulary). ``received`` and ``queued`` are not terminal.
RECEIVED = "received"  # stored, waiting for the pipeline
FILTERED = "filtered"  # a filter dropped it (terminal)
QUEUED = "queued"  # transformed, deliveries pending
SENT = "sent"  # every delivery succeeded (terminal)
ERROR = "error"  # a step failed, or a delivery was dead-lettered / quarantined
CONFLICT = "conflict"  # same dedup key as an earlier message, different bytes: for a person
MESSAGE_STATUSES = (RECEIVED, FILTERED, QUEUED, SENT, ERROR, CONFLICT)
NON_TERMINAL = (RECEIVED, QUEUED)

#: Delivery (outbox row) statuses.
PENDING = "pending"
INFLIGHT = "inflight"
DELIVERED = "sent"
DEAD = "dead"  # retries exhausted or permanent failure: a dead letter
QUARANTINED = "quarantined"  # ambiguous outcome at a non-idempotent destination
DELIVERY_STATUSES = (PENDING, INFLIGHT, DELIVERED, DEAD, QUARANTINED)

#: How a worker settles one outbox row (:class:`Settlement`): sent, retried later (an attempt
#: counted), held (pending again, the attempt not counted: a rate limit or a rolled-back bulk
#: item), dead or quarantined.
SETTLE_SENT, SETTLE_RETRY, SETTLE_HELD = "sent", "retry", "held"
SETTLE_DEAD, SETTLE_QUARANTINED = "dead", "quarantined"

#: Content stages kept for the message browser.
STAGES = ("raw", "transformed", "sent", "response")

#: Work item statuses: ``resolved`` by the engine when the cause went away (a replay that
#: went through), ``closed`` by a person (``wharf work-items close ID --note``, audited).
WORK_ITEM_STATUSES = ("open", "resolved", "closed")

#: The kinds of work item the engine and its domains open for a person, with what each means
#: (``wharf work-items --kind``; tests/unit/test_cli_commands.py checks that every kind the
#: code opens is listed here).
WORK_ITEM_KINDS: dict[str, str] = {
    "MISSING_MAPPING": "a code has no row in a mapping table or a trading partner's map",
    "MISSING_LOT_SERIAL": "an implant came without the lot or serial its item requires",
    "CHARGE_REJECTED": "billing rejected a charge",
    "UNBILLED_USAGE": "chargeable usage has no accepted charge after the allowed time",
    "PO_CHANGED": "a vendor's 855 changed, backordered, held or rejected lines of a purchase order",
    "ACK_REJECTED": "a trading partner's TA1/997/999 rejected one of our interchanges",
    "ACK_OVERDUE": "no 997/999 from a trading partner in time",
    "ASN_UNMATCHED": "an 856 line names no purchase order line Wharf knows",
    "RECEIPT_UNMATCHED": "an ERP receipt names a purchase order (line) Wharf never sent",
    "INVOICE_HELD": "an 810 failed the three-way match and waits for a person",
    "INVOICE_DUPLICATE": "an 810 repeats an invoice already on file",
    "ORPHAN_CREDIT": "a credit for a line the ledger never booked waits for a person",
    "SENDER_REFUSED": "an interchange came in under another partner's identity than its channel's",
    "X12_REFUSED": "a file in a partner's inbound folder could not be read as X12",
    "X12_NOT_APPLIED": "an accepted 855/856/810 whose purpose (a cancellation, a replacement, a "
    "duplicate...) Wharf does not apply by itself",
}

_R = TypeVar("_R")


def record_maker(cls: type[_R]) -> Callable[..., _R]:
    """A quick constructor for the frozen dataclass ``cls``, for records made by the ten
    thousand (a line of a large X12 document or of its match).

    A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__`` (about
    0.13 us a field: 1.8 us for 14 fields); the maker gives the new record its fields as one
    dict (0.9 us). The record is the same: equal, same hash, repr, ``vars()`` and pickle, and
    as frozen. It costs memory: the fields are kept in a dict of their own (about 320 bytes
    more a record of 14 fields). Every field must be given, by name, in the class's order
    (``TypeError`` otherwise); a class whose ``__init__`` does more than set its fields
    (``__post_init__``, ``init=False`` fields, slots) is refused.
    """
    if not is_dataclass(cls) or not cls.__dataclass_params__.frozen:
        raise TypeError(f"{cls.__name__} is not a frozen dataclass")
    every = fields(cls)
    if (
        hasattr(cls, "__post_init__")
        or "__slots__" in cls.__dict__
        or not all(f.init for f in every)
    ):
        raise TypeError(f"{cls.__name__}.__init__ does more than set its fields")
    names = tuple(f.name for f in every)
    new = object.__new__
    set_dict = object.__setattr__

    def make(**values: Any) -> _R:
        if tuple(values) != names:
            raise TypeError(
                f"{cls.__name__} takes every field in order: {', '.join(names)} "
                f"(got {', '.join(values)})"
            )
        record = new(cls)
        set_dict(record, "__dict__", values)
        return record

    make.__name__ = f"make_{cls.__name__}"
    return make


_NS = uuid.UUID("6f0b1c1e-8a8f-4a55-9a53-77686172660a")


def idempotency_key(channel: str, destination: str, message_id: str, index: int) -> str:
    """Stable UUIDv5 of channel, destination, message and output index (RELIABILITY P2)."""
    return str(uuid.uuid5(_NS, f"{channel}\x1f{destination}\x1f{message_id}\x1f{index}"))


_EFFECTS = uuid.UUID("0b1c6f2e-5a9d-4c43-8d2b-6c6564676572")


def effect_key(channel: str, destination: str, business_key: str, effect: str) -> str:
    """The idempotency key of one effect of a domain record (a charge for a usage line, the
    850 of a PO): stable across messages and replays, so a destination sees the same key for
    the same effect whatever message carried it."""
    return str(uuid.uuid5(_EFFECTS, f"{channel}\x1f{destination}\x1f{business_key}\x1f{effect}"))


_last_ms = 0
_id_lock = threading.Lock()


def new_id() -> str:
    """A new message id: a UUID version 7 (RFC 9562), i.e. 48 bits of Unix milliseconds then
    random bits. Ids made later sort later, so the store's indexes on them grow at their end
    (a random UUID lands on a random page of a big index: a cache miss and a page write per
    insert once the index outgrows memory). Within one millisecond the random part decides."""
    global _last_ms
    with _id_lock:
        ms = max(time.time_ns() // 1_000_000, _last_ms)  # never backwards with the wall clock
        _last_ms = ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64
    value |= 0b10 << 62 | rand & 0x3FFF_FFFF_FFFF_FFFF
    return str(uuid.UUID(int=value))


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


@dataclass(frozen=True)
class Inbound:
    """What a source hands to the store after the codec accepted the bytes."""

    channel: str
    source: str
    raw: bytes
    content_type: str
    received_at: float
    peer: str | None = None
    control_id: str | None = None
    dedup_key: str | None = None
    dedup_window: float = 0.0  # seconds; 0 = no duplicate detection
    correlation_id: str | None = None  # a new one is made when None
    response: bytes | None = None  # the answer the source will give (e.g. ACK), replayed on dups
    message_id: str | None = None  # a new one is made when None
    # the credential the bytes came with, as the source authenticated it (``sftp:ACCOUNT``,
    # ``token:NAME``, ``tls:CN``); None when the source has none (a local folder)
    origin: str | None = None


@dataclass(frozen=True)
class IngestResult:
    message_id: str
    outcome: Literal["stored", "duplicate", "conflict"]
    status: str
    correlation_id: str
    response: bytes | None = None  # for a duplicate: the original's stored response


@dataclass(frozen=True)
class Outbound:
    """One payload a transform run wants a destination to deliver."""

    destination: str
    payload: bytes
    content_type: str = "application/json"
    order_key: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MessageRow:
    id: str
    channel: str
    source: str
    peer: str | None
    content_type: str
    received_at: float
    updated_at: float
    sha256: str
    size: int
    control_id: str | None
    dedup_key: str | None
    correlation_id: str
    status: str
    error: str | None
    error_location: str | None
    origin: str | None = None  # see Inbound.origin


@dataclass(frozen=True)
class Delivery:
    """An outbox row claimed by a delivery worker."""

    id: int
    message_id: str
    channel: str
    destination: str
    payload: bytes
    content_type: str
    idempotency_key: str
    correlation_id: str
    order_key: str | None
    attempts: int  # attempts made before this one
    created_at: float
    meta: dict[str, Any]
    batch_key: str | None = None  # the bulk call it went out in, kept until that call answered


_BATCHES = uuid.UUID("2d3c8e4a-61f0-4c0e-9b7a-626174636865")


def batch_key(deliveries: Sequence[Delivery]) -> str:
    """The idempotency key of one bulk call: a UUIDv5 of its rows' own keys, so the same rows
    always make the same key and other rows another."""
    keys = sorted(d.idempotency_key for d in deliveries)
    return str(uuid.uuid5(_BATCHES, "\x1f".join(keys)))


@dataclass(frozen=True)
class Bulk:
    """A destination that takes several deliveries in one call: up to ``max_items`` rows, or
    what came within ``max_wait`` seconds of the first."""

    max_items: int
    max_wait: float


@dataclass(frozen=True)
class Settlement:
    """The outcome of one outbox row as a delivery worker records it (``kind`` one of the
    ``SETTLE_*`` values). ``next_attempt_at`` for retry and held; ``reason`` the error text
    (retry, held) or the dead letter's reason (dead, quarantined); ``unpin`` forgets the row's
    ``batch_key`` (its bulk call was answered)."""

    delivery_id: int
    kind: str
    response: bytes | None = None
    reason: str | None = None
    next_attempt_at: float | None = None
    unpin: bool = False


@dataclass(frozen=True)
class ItemOutcome:
    """What a bulk call answered for one of its deliveries.

    ``error`` None: delivered, ``response`` is the item's own answer. Otherwise a
    :class:`~engine.errors.DeliveryError` for that item alone. ``requeue``: the item was not
    applied only because the call failed on another item (an all-or-nothing API rolled it
    back): it is sent again at once, in a new call, and the attempt is not counted.
    """

    response: bytes | None = None
    error: Any = None
    requeue: bool = False


def to_json_bytes(value: Any) -> bytes:
    """Encode a transform's output as JSON. Decimals become strings, never floats."""
    return json.dumps(value, default=_json_default, ensure_ascii=False, indent=None).encode()


def _json_default(value: Any) -> Any:
    from dataclasses import asdict, is_dataclass
    from datetime import date, datetime
    from decimal import Decimal

    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if hasattr(value, "__attrs_attrs__"):
        import attrs

        return attrs.asdict(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")
