"""A runnable channel built from its YAML: codec, filters, transform steps, destination names.

``Channel.process`` is the synchronous, I/O-free part of the pipeline: it decodes stored bytes,
runs the filters and the transform steps, and returns what to commit. It runs on a worker
thread, never on the reactor.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from engine import responder
from engine.codecs.base import Parsed
from engine.codecs.hl7ack import is_enhanced
from engine.codecs.hl7v2 import CONTENT_TYPE, Hl7Message
from engine.config.project import ChannelDef
from engine.errors import CodecError, MappingMiss, MissingLotSerial, TransformError, WharfError
from engine.ledger.billing import charge_dft, charge_item
from engine.ledger.records import LedgerRoutes, ParPolicy
from engine.mappings import Mappings
from engine.model import ERROR, FILTERED, SENT, Outbound
from engine.registry import REGISTRY, Registry
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
    def __init__(self, defn: ChannelDef, mappings: Mappings, registry: Registry = REGISTRY) -> None:
        cfg = defn.config
        self.defn = defn
        self.name = defn.name
        self.config = cfg
        self.mappings = mappings
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
        self.ledger = cfg.ledger
        self.ledger_routes = LedgerRoutes(
            issue=cfg.ledger.issue if cfg.ledger else None,
            charge=cfg.ledger.charge if cfg.ledger else None,
            requisition=cfg.ledger.requisition if cfg.ledger else None,
        )
        self.par_policies = _par_policies(mappings, cfg.ledger.par_levels if cfg.ledger else None)
        ledger_dests = {d for d in vars(self.ledger_routes).values() if d}
        self.procurement = cfg.procurement
        self.procurement_routes = None
        if cfg.procurement is not None:
            from engine.domains.procurement.book import ProcurementRoutes

            p = cfg.procurement
            self.procurement_routes = ProcurementRoutes(
                partner_out=p.partner_out,
                po_status=p.po_status,
                receipts=p.receipts,
                ap=p.ap,
                duplicate_window=p.duplicate_window,
            )
            ledger_dests |= {p.partner_out, p.po_status, p.receipts, p.ap} - {None}
        self.body_targets = [
            d for d in self.destinations if d != cfg.application_ack and d not in ledger_dests
        ]
        self.dedup_window = cfg.dedup.window if cfg.dedup is not None else 7 * 86400.0

    def decode(self, raw: bytes) -> Parsed:
        return self.codec.decode(raw)

    def process(
        self, raw: bytes, message_id: str, correlation_id: str, *, parsed: Parsed | None = None
    ) -> Result:
        """Decode, filter and transform; never raises for a message's own faults.

        With ``application_ack`` set and an HL7 message whose MSH-16 asks for it, the
        enhanced-mode application ACK (AA, or AE with the error) joins the outbound payloads.
        """
        parsed, result = self._process(raw, message_id, correlation_id, parsed)
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
        self, raw: bytes, message_id: str, correlation_id: str, given: Parsed | None = None
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
        ctx = TransformContext(None, self.mappings, self.name, message_id, correlation_id)
        for step in self.steps:
            ctx.options = step.options
            try:
                body = step.fn(body, ctx)
            except TransformError as exc:
                work = None
                held = self.ledger is not None or self.procurement is not None
                if isinstance(exc, MappingMiss) and held:
                    work = ("MISSING_MAPPING", f"{exc.table}:{exc.key}", str(exc))
                elif isinstance(exc, MissingLotSerial) and self.ledger is not None:
                    work = ("MISSING_LOT_SERIAL", f"{exc.item}:{exc.line}", str(exc))
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
        if ctx.events and self.ledger is None and self.procurement is None:
            return parsed, Result(
                ERROR,
                error="transform booked records but the channel has no `ledger:` or "
                "`procurement:` section",
                error_location=self.steps[-1].where,
            )
        return parsed, Result(SENT, transformed, outbound, ctx.keys, events=ctx.events)

    def converter(self, partner: Any) -> Any:
        """Unit conversions (``uom_conversions``) for the match, with the partner's vendor
        rows first (``engine.x12.match.Converter``)."""
        from engine.domains.procurement.match import converter_from_graph
        from engine.uom import UomGraph, graph_of

        if "uom_conversions" in self.mappings:
            graph = graph_of(self.mappings.table("uom_conversions"))
        else:
            graph = UomGraph([])
        vendor = partner.vendors[0] if partner.vendors else None
        return converter_from_graph(graph, vendor)

    def charge_payload(self, event: Any) -> tuple[bytes, str]:
        if self.ledger is not None and self.ledger.charge_format.startswith("fhir"):
            return charge_item(event, "R4B" if self.ledger.charge_format == "fhir_r4b" else "R5")
        app = self.ledger.billing_application if self.ledger else "BILLING"
        return charge_dft(event, receiving_application=app)


def _text(value: object) -> str | None:
    return None if value in (None, "") else str(value)


def _par_policies(mappings: Mappings, table: str | None) -> dict[tuple[str, str], ParPolicy]:
    if table is None:
        return {}
    out = {}
    for row in mappings.table(table).rows.values():
        policy = ParPolicy(
            location_id=str(row["location_id"]),
            item_id=str(row["item_id"]),
            par=Decimal(str(row["par"])),
            reorder_point=Decimal(str(row["reorder_point"])),
            order_qty=Decimal(str(row["order_qty"])),
            uom=str(row.get("order_uom") or "EA"),
            pack_size=int(row.get("pack_size") or 1),
        )
        out[(policy.location_id, policy.item_id)] = policy
    return out
