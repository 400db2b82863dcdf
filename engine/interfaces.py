"""The spine's contracts, as :class:`typing.Protocol` classes.

Every component kind has one contract here; :mod:`engine.registry` checks a factory against it
when the component registers (its signature takes the keywords the runtime passes) and the
runtime checks the object it gets back (``isinstance`` against the runtime-checkable protocol)
before it uses it. ``docs/architecture.md`` draws how they fit together.

- :class:`Codec`: bytes in, a :class:`~engine.model.Parsed` out, no I/O.
- :class:`Source`: frames bytes from a transport and hands them to ``ingest``.
- a **filter** is ``predicate(parsed) -> bool``; a **transform** is ``run(body, ctx) -> body``
  (plain functions: :data:`Filter`, :data:`Transform`).
- :class:`Destination`: ``await send(delivery)`` and ``close()``.
- :class:`Domain`: a business domain (the supply ledger, procurement) plugged into the spine:
  it parses its own channel section, books a message's records inside that message's commit
  through a :class:`Transaction`, hears settled deliveries, and contributes its own periodic
  :class:`Job` s, migrations and loaded files. The store, the pipeline and the runtime know this
  protocol, never a domain.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from engine.errors import ConfigError
    from engine.model import Bulk, Delivery, ItemOutcome, Outbound, Parsed
    from engine.spec import Field, Spec

__all__ = [
    "COMPONENT_KEYWORDS",
    "Binding",
    "Booking",
    "BulkDestination",
    "Codec",
    "Destination",
    "Domain",
    "Filter",
    "Job",
    "Migration",
    "Source",
    "Transaction",
    "Transform",
]


@runtime_checkable
class Codec(Protocol):
    """Parses one inbound message; raises :class:`~engine.errors.CodecError` when it can't."""

    content_type: str

    def decode(self, raw: bytes) -> Parsed: ...


@runtime_checkable
class Source(Protocol):
    """Listens or polls; every message goes to the ``ingest`` it was built with."""

    def start(self) -> None: ...

    def stop(self) -> Awaitable[None]: ...


@runtime_checkable
class Destination(Protocol):
    """Delivers one outbox row; raises :class:`~engine.errors.DeliveryError` on failure."""

    def send(self, delivery: Delivery) -> Awaitable[bytes | None]: ...

    def close(self) -> Any: ...


@runtime_checkable
class BulkDestination(Destination, Protocol):
    """A destination that also takes several rows in one call (``bulk`` None: it does not
    now). ``send_batch`` returns one :class:`~engine.model.ItemOutcome` per row, in order, or
    raises :class:`~engine.errors.DeliveryError` when the call failed as a whole; ``key`` is
    the call's own idempotency key (the same rows always make the same key)."""

    bulk: Bulk | None

    def send_batch(self, deliveries: list[Delivery], key: str) -> Awaitable[list[ItemOutcome]]: ...


Filter = Callable[["Parsed"], bool]
Transform = Callable[[Any, Any], Any]

#: The keywords the runtime passes to a factory of each kind, besides the parsed options (first
#: positional argument). A factory may take more, optional ones (``services``, ``resources``).
COMPONENT_KEYWORDS: Mapping[str, tuple[str, ...]] = {
    "source": ("reactor", "channel", "base_dir", "ingest"),
    "destination": ("reactor", "channel", "name", "base_dir"),
    "codec": (),
    "filter": (),
    "transform": (),
    "domain": (),
}


# --------------------------------------------------------------------------- the store side


@runtime_checkable
class Transaction(Protocol):
    """One write transaction of the store, as a domain sees it.

    ``dialect`` (``"sqlite"``, later ``"postgresql"``) and ``connection`` let a domain pick its
    own repository; everything else is the store's public API inside the transaction.
    """

    dialect: str
    connection: Any

    def enqueue(
        self,
        message_id: str,
        outbound: Sequence[Outbound],
        now: float,
        *,
        correlation_id: str | None = None,
    ) -> list[int]: ...

    def audit(
        self, actor: str, action: str, target: str, detail: dict[str, Any], now: float
    ) -> int: ...

    def open_work_item(
        self,
        kind: str,
        subject: str,
        detail: str,
        message_id: str | None,
        correlation_id: str | None,
        now: float,
        *,
        once: str = "per_message",
    ) -> bool: ...

    def resolve_work_items(
        self, kind: str, *, subject: str | None = None, message_id: str | None = None, now: float
    ) -> int: ...

    def refresh_work_items(self, kind: str, *, subject: str, detail: str, now: float) -> int: ...

    def message_channel(self, message_id: str) -> str | None: ...

    def internal_message(
        self, channel: str, source: str, body: bytes, content_type: str, now: float
    ) -> tuple[str, str]: ...


#: A schema step: SQL statements, or a callable taking the dialect's connection. Domains
#: write theirs so that running them on a schema that already has the objects changes nothing.
MigrationStep = Sequence[str] | Callable[[Any], None]
Migration = tuple[int, str, MigrationStep]


# --------------------------------------------------------------------------- domains


@dataclass(frozen=True)
class Booking:
    """The message whose records a domain books."""

    message_id: str
    correlation_id: str
    channel: str
    now: float


@dataclass(frozen=True)
class Job:
    """A periodic job a domain contributes: ``run(tx, now)`` in one store transaction every
    ``interval`` seconds; a non-zero result is logged with ``alert`` (``{n}`` is the result) at
    ``alert_level``: ``warn`` for business exceptions that wait for a person (unbilled usage,
    an overdue 997), ``info`` for the job's normal work (requisitions a par sweep raised).
    ``error`` is for faults of the engine, which a job's findings are not."""

    name: str
    interval: float
    run: Callable[[Transaction, float], int]
    alert: str = ""
    durable: bool = False
    alert_level: Literal["info", "warn", "error"] = "warn"


@runtime_checkable
class Binding(Protocol):
    """One domain's section on one channel, ready to book."""

    domain: Domain
    #: destination names the domain's effects go to (they don't get the message body)
    destinations: frozenset[str]

    def accepts(self, record: Any) -> bool: ...

    def book(self, tx: Transaction, message: Booking, records: Sequence[Any]) -> list[Outbound]: ...

    def work_item_for(self, error: Exception) -> tuple[str, str, str] | None: ...

    def settled(
        self, tx: Transaction, delivery: Delivery, outcome: str, reason: str | None, now: float
    ) -> None: ...


@runtime_checkable
class Domain(Protocol):
    """A business domain plugged into the spine (see the module docstring).

    ``name`` is the key of its channel section (``ledger:``), parsed by ``spec``;
    ``settings`` are the fields it adds to ``routes.yaml``; ``durable``: its bookings allocate
    what must never come back after a power loss (control numbers): their commit is fully
    synced.
    """

    name: str
    spec: Spec
    description: str
    settings: Sequence[Field]
    durable: bool

    def migrations(self, dialect: str) -> Sequence[Migration]:
        """Its own schema history for the store's dialect."""
        ...

    def roles(self, section: Any) -> Mapping[str, str | None]:
        """Which destination of the channel takes each of its effects (lint checks them)."""
        ...

    def load(
        self, root: Any, env: Mapping[str, str], settings: Any
    ) -> tuple[Mapping[str, Any], list[ConfigError]]:
        """Files of its own beside the mappings (trading partners), linted like the rest;
        what it returns is what the runtime lends components by name."""
        ...

    def bind(self, channel: str, section: Any, snapshot: Any) -> Binding:
        """Its section of one channel, with the configuration version it runs with."""
        ...

    def jobs(self, settings: Any) -> Sequence[Job]:
        """Its periodic jobs for these ``routes.yaml`` settings."""
        ...

    def start(self, tx: Transaction, sections: Mapping[str, Any], snapshot: Any, now: float) -> int:
        """Once when the runtime starts, with every running channel's section by channel."""
        ...
