"""A runnable channel built from its YAML: codec, filters, transform steps, destination names,
and the domains bound to it.

``Channel.process`` is the synchronous, I/O-free part of the pipeline: it decodes stored bytes,
runs the filters and the transform steps, and returns what to commit. It runs on a worker
thread, never on the reactor. Records the transforms book (``ctx.book``) are grouped by the
domain binding that takes them (:meth:`Channel.bookings`); the runtime books them inside the
message's commit. The channel names no domain: it asks the registry which ones exist.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine import responder
from engine.codecs.base import Parsed
from engine.codecs.hl7ack import is_enhanced
from engine.codecs.hl7v2 import CONTENT_TYPE, Hl7Message
from engine.config.project import ChannelDef
from engine.errors import CodecError, TransformError, WharfError
from engine.interfaces import Binding
from engine.mappings import Mappings
from engine.model import ERROR, FILTERED, SENT, Outbound
from engine.registry import REGISTRY, Registry
from engine.resources import Snapshot
from engine.transforming import TransformContext, encode_payload, outbound_for


@dataclass(frozen=True)
class Step:
    name: str
    label: str
    where: str
    fn: Any
    options: Any


@dataclass(frozen=True)
class Result:
    status: str
    transformed: bytes | None = None
    outbound: list[Outbound] = field(default_factory=list)
    keys: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None
    events: list[Any] = field(default_factory=list)
    work_item: tuple[str, str, str] | None = None  # (kind, subject, detail) for a person
    error_location: str | None = None


class Channel:
    def __init__(
        self,
        defn: ChannelDef,
        mappings: Mappings,
        registry: Registry = REGISTRY,
        *,
        extras: Mapping[str, Any] | None = None,
    ) -> None:
        """``extras``: what the domains loaded with the project (the trading partners)."""
        cfg = defn.config
        self.defn = defn
        self.name = defn.name
        self.config = cfg
        self.mappings = mappings
        self.extras: Mapping[str, Any] = dict(extras or {})
        self.registry = registry
        if cfg.codec is None:
            codec_reg, codec_opts = (
                registry.get("codec", "raw"),
                registry.get("codec", "raw").spec.defaults(),
            )
        else:
            codec_reg, codec_opts = registry.get("codec", cfg.codec.name), cfg.codec.options
        self.codec_name = codec_reg.name
        self.codec = codec_reg.factory(codec_opts)
        self.filters = [(f, registry.get("filter", f.name).factory(f.options)) for f in cfg.filter]
        self.steps = [
            Step(
                s.transform,
                s.label or s.transform,
                f"{s.where} transformer[{i}] ({s.transform})",
                registry.get("transform", s.transform).factory,
                s.options,
            )
            for i, s in enumerate(cfg.transformer)
        ]
        self.destinations = [d.name for d in cfg.destinations]
        self.order_by = {d.name: d.order_by for d in cfg.destinations if d.order_by}
        snapshot = Snapshot(mappings=mappings, extras=self.extras)
        self.bindings: list[Binding] = [
            domain.bind(self.name, getattr(cfg, domain.name), snapshot)
            for domain in registry.domains()
            if getattr(cfg, domain.name, None) is not None
        ]
        domain_dests = {d for b in self.bindings for d in b.destinations}
        self.body_targets = [
            d for d in self.destinations if d != cfg.application_ack and d not in domain_dests
        ]
        self.dedup_window = cfg.dedup.window if cfg.dedup is not None else 7 * 86400.0
        #: the configuration version its outputs are recorded with (engine/config/versions.py;
        #: set by whoever built it from a project folder, None otherwise)
        self.version: str | None = None

    @classmethod
    def of(cls, project: Any, name: str, registry: Registry = REGISTRY) -> Channel:
        """Channel ``name`` of a loaded project, with what its domains loaded."""
        return cls(project.channels[name], project.mappings, registry, extras=project.extras)

    @property
    def durable(self) -> bool:
        """Whether booking on this channel allocates what must survive a power loss."""
        return any(b.domain.durable for b in self.bindings)

    def bookings(self, records: list[Any]) -> list[tuple[Binding, list[Any]]]:
        """The booked records grouped by the binding that takes them, in binding order."""
        out: list[tuple[Binding, list[Any]]] = []
        for binding in self.bindings:
            taken = [r for r in records if binding.accepts(r)]
            if taken:
                out.append((binding, taken))
        return out

    def decode(self, raw: bytes) -> Parsed:
        return self.codec.decode(raw)

    def process(
        self,
        raw: bytes,
        message_id: str,
        correlation_id: str,
        *,
        parsed: Parsed | None = None,
        origin: str | None = None,
    ) -> Result:
        """Decode, filter and transform; never raises for a message's own faults.

        ``origin``: the credential the message came with (``ctx.origin`` for the transforms).

        With ``application_ack`` set and an HL7 message whose MSH-16 asks for it, the
        enhanced-mode application ACK (AA, or AE with the error) joins the outbound payloads.
        """
        parsed, result = self._process(raw, message_id, correlation_id, parsed, origin)
        msg = parsed.value if parsed is not None else None
        if self.config.application_ack and isinstance(msg, Hl7Message) and is_enhanced(msg):
            ack = responder.application_ack(msg, result.error)
            if ack is not None:
                extra = Outbound(
                    self.config.application_ack, ack, CONTENT_TYPE, meta={"kind": "app_ack"}
                )
                result = dataclasses.replace(result, outbound=[*result.outbound, extra])
        return result

    def _process(
        self,
        raw: bytes,
        message_id: str,
        correlation_id: str,
        given: Parsed | None = None,
        origin: str | None = None,
    ) -> tuple[Parsed | None, Result]:
        try:
            parsed = given if given is not None else self.decode(raw)
        except CodecError as exc:
            return None, Result(
                ERROR, error=f"CodecError: {exc.message}", error_location=f"{self.defn.file} codec"
            )
        if getattr(self.codec, "strict", False) and not self.codec.strict_on_ack:
            try:
                self.codec.validate_strict(raw)
            except CodecError as exc:
                return parsed, Result(
                    ERROR,
                    error=f"CodecError: {exc.message}",
                    error_location=f"{self.defn.file} codec",
                )
        for f, predicate in self.filters:
            if not predicate(parsed):
                return parsed, Result(FILTERED, error_location=f"{f.where} filter ({f.name})")
        body: Any = parsed.value
        ctx = TransformContext(
            None,
            self.mappings,
            self.name,
            message_id,
            correlation_id,
            extras=self.extras,
            origin=origin,
        )
        for step in self.steps:
            ctx.options = step.options
            try:
                body = step.fn(body, ctx)
            except TransformError as exc:
                # a domain holds the message for a person (a missing mapping...)
                work = next(
                    (w for b in self.bindings if (w := b.work_item_for(exc)) is not None), None
                )
                return parsed, Result(
                    ERROR, error=str(exc), error_location=step.where, work_item=work
                )
            except WharfError as exc:
                return parsed, Result(
                    ERROR, error=f"{type(exc).__name__}: {exc}", error_location=step.where
                )
            except Exception as exc:  # a plugin bug: keep the message, say where
                return parsed, Result(
                    ERROR,
                    error=f"{type(exc).__name__} in transform: {exc}",
                    error_location=step.where,
                )
        unknown = sorted({d for d, *_ in ctx.emitted} - set(self.destinations))
        if unknown:
            return parsed, Result(
                ERROR,
                error=f"transform emitted to unknown destination(s) {', '.join(unknown)} "
                f"(channel has: {', '.join(self.destinations) or 'none'})",
                error_location=self.steps[-1].where if self.steps else self.defn.file,
            )
        transformed = None
        if not self.steps:
            body = raw  # no transform: forward the bytes as they came
        elif body is not None:
            transformed = encode_payload(body, None)[0]
        # The application-ACK and ledger destinations take ACKs and ledger effects only.
        outbound = outbound_for(self.body_targets, body, ctx, parsed.content_type)
        if self.order_by:
            outbound = [
                dataclasses.replace(o, order_key=_text(parsed.get(self.order_by[o.destination])))
                if o.order_key is None and o.destination in self.order_by
                else o
                for o in outbound
            ]
        taken = {id(r) for _, records in self.bookings(ctx.events) for r in records}
        unbooked = [r for r in ctx.events if id(r) not in taken]
        if unbooked:
            kinds = sorted({type(r).__name__ for r in unbooked})
            sections = " or ".join(f"`{d.name}:`" for d in self.registry.domains())
            return parsed, Result(
                ERROR,
                error=f"transform booked records ({', '.join(kinds)}) but the channel has no "
                f"section that takes them ({sections or 'no domain is registered'})",
                error_location=self.steps[-1].where,
            )
        return parsed, Result(SENT, transformed, outbound, ctx.keys, events=ctx.events)


def _text(value: object) -> str | None:
    return None if value in (None, "") else str(value)
