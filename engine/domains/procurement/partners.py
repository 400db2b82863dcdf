"""Trading partners: who a vendor is in X12 and how Wharf talks to it (DOMAIN §3, §7 Vendor).

``mappings/trading_partners.yaml`` holds one key per partner id (our name for the partner)::

    acmemed:
      name: ACME MEDICAL SUPPLY INC          # N1*VN name on our 850s
      vendors: [VND-ACMEMED]                 # ERP vendor ids served by this partner
      version: "005010"                      # 004010 | 005010 (GS08; ISA12 00401 | 00501)
      isa: {qualifier: ZZ, id: ACMEMED}      # the partner's ISA05/06 (ISA07/08 on our 850s)
      our_isa: {qualifier: ZZ, id: GENHOSP}
      gs_id: ACMEMED                         # GS03 on our groups, GS02 on theirs
      our_gs_id: GENHOSP
      separators: {element: "*", component: ">", segment: "~", repetition: "^"}
      ack: "999"                             # 997 | 999 (999 needs 005010)
      ta1: true                              # ISA14=1: we ask for a TA1
      usage: P                               # ISA15: P | T
      uom: {EA: EA, BX: BX, CS: CA}          # our unit -> their X12 code (element 355)
      uom_inbound: {CA: CS}                  # their code -> our unit where `uom` is ambiguous
      tolerance: {price_pct: 2, price_abs: "5.00"}
      ack_within: 4h                         # a 997/999 not back by then is overdue
      asn_is_receipt: false                  # true: an 856 counts as the goods receipt
      hold: line                             # line | invoice: what a line out of tolerance holds
      inbound:                               # the credentials its documents come with
        sftp_accounts: [acmemed]             # (its delivery.sftp_server account counts too)
        http_tokens: [acmemed-edi]           # names of bearer tokens of an http source
        tls_clients: [edi.acmemed.example]   # client certificate CNs of an mllp source
      delivery:
        sftp: {host: ..., user: ..., private_key: ..., known_hosts: ..., remote_dir: /in}
        # or: sftp_server: {account: acmemed}   (our own server, the account's outbound/)

A document that came with one of a partner's credentials (the origin its source stored with it:
``sftp:ACCOUNT``, ``token:NAME``, ``tls:CN``) must carry that partner's ISA and GS ids; an
origin bound to no partner, or to two, is a lint error.

Every mistake is a :class:`~engine.errors.ConfigError` at ``file:line:column`` with the dotted
field path (``acmemed.separators.repetition``), through the same :mod:`engine.spec` machinery
as channels and routes. Quote the separators: unquoted, ``*`` is a YAML alias, ``~`` is null
and ``>`` starts a folded block.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from engine.config.yamlnodes import compose_file, empty_mapping, mapping_get
from engine.domains.procurement.match import OPTIONAL_LIMITS, SacRule, Tolerance
from engine.errors import ConfigError, LintFailed, UnmappedUnit, X12WriteError
from engine.sftp.config import PARTNER_NAME
from engine.spec import (
    INVALID,
    Bool,
    Context,
    Duration,
    Enum,
    Field,
    ListOf,
    MapOf,
    Spec,
    Str,
    Type,
    did_you_mean,
    interpolate,
    join,
)
from engine.x12.documents import BillOnlyMap
from engine.x12.writer import InterchangeHeader, Separators, check_separators, check_text

__all__ = [
    "PARTNERS_FILE",
    "PARTNER_SPEC",
    "BillOnlyRules",
    "IsaId",
    "OurSftpServer",
    "Partner",
    "PartnerSftp",
    "Tolerance",
    "TradingPartners",
    "load_partners",
    "parse_partners",
]

#: Where the partners live, relative to the project root.
PARTNERS_FILE = "mappings/trading_partners.yaml"

_NEWLINES = {"none": "", "lf": "\n", "crlf": "\r\n"}


class X12Version(Type):
    """``004010`` or ``005010``, read from the text as written (``005010`` unquoted is an octal
    integer to YAML 1.1, so the node's own text is used); ``4010`` / ``5010`` are accepted."""

    label = "004010 or 005010"

    def parse(self, node: yaml.Node, ctx: Context, path: str) -> Any:
        if not isinstance(node, yaml.ScalarNode) or node.tag.endswith(":null"):
            return self.mismatch(node, ctx, path)
        text = interpolate(node.value, node, ctx, path) if "$" in node.value else node.value
        if text is INVALID:
            return INVALID
        value = {"4010": "004010", "5010": "005010"}.get(text, text)
        if value not in ("004010", "005010"):
            return ctx.error(node, path, f"expected {self.label} (got {text!r})", "bad_enum")
        return value

    def schema(self) -> dict[str, Any]:
        return {"enum": ["004010", "005010"]}


class Dec(Type):
    """A decimal number read from its text (never through a float); with ``optional``, ``null``
    (or ``none``) leaves it unset (None)."""

    def __init__(self, lo: Decimal | None = Decimal(0), *, optional: bool = False) -> None:
        self.lo = lo
        self.optional = optional
        self.label = "a decimal number" + (f" >= {lo}" if lo is not None else "")

    def parse(self, node: yaml.Node, ctx: Context, path: str) -> Any:
        if self.optional and isinstance(node, yaml.ScalarNode):
            if node.tag.endswith(":null") or node.value.strip().lower() == "none":
                return None
        if not isinstance(node, yaml.ScalarNode) or node.tag.endswith((":null", ":bool")):
            return self.mismatch(node, ctx, path)
        text = interpolate(node.value, node, ctx, path) if "$" in node.value else node.value
        if text is INVALID:
            return INVALID
        try:
            value = Decimal(str(text).strip())
        except InvalidOperation:
            return self.mismatch(node, ctx, path)
        if not value.is_finite():
            return self.mismatch(node, ctx, path)
        if self.lo is not None and value < self.lo:
            return ctx.error(node, path, f"must be {self.label} (got {value})")
        return value

    def schema(self) -> dict[str, Any]:
        return {"type": ["number", "string", "null"] if self.optional else ["number", "string"]}


ID_NAME = Str(r"[a-z][a-z0-9_]*", "a partner id of lowercase letters, digits and _")
QUALIFIER = Str(r"[0-9A-Z]{2}", "a 2-character ISA qualifier such as ZZ, 01, 12 or 14")
ISA_ID = Str(r"[A-Za-z0-9][A-Za-z0-9 ._/-]{0,14}", "an interchange id of 1..15 characters")
GS_ID = Str(r"[A-Za-z0-9][A-Za-z0-9 ._/-]{1,14}", "an application code of 2..15 characters")
X12_UNIT = Str(r"[A-Z0-9]{2}", "a 2-character X12 unit code (element 355) such as EA, BX, CA")
SEPARATOR = Str(r"[^A-Za-z0-9 ]", "one character in quotes, such as '*'")
REF_QUALIFIER = Str(r"[A-Z0-9]{2,3}", "a REF01 qualifier (element 128) such as ZZ")

ISA_ID_SPEC = Spec(
    "isa_id",
    [
        Field("qualifier", QUALIFIER, description="ISA05/ISA07 qualifier (ZZ mutually defined)."),
        Field("id", ISA_ID, description="ISA06/ISA08 id, padded to 15 by the writer."),
    ],
    description="An interchange sender/receiver id.",
)

SEPARATORS_SPEC = Spec(
    "separators",
    [
        Field("element", SEPARATOR, "*", "Element separator (ISA character 4)."),
        Field("component", SEPARATOR, ">", "Component separator (ISA16)."),
        Field("segment", SEPARATOR, "~", "Segment terminator (ISA character 106)."),
        Field(
            "repetition",
            SEPARATOR,
            "^",
            "Repetition separator (ISA11), 005010 only; 004010 writes `U` in ISA11 and must "
            "not set it.",
        ),
        Field(
            "newline",
            Enum(*_NEWLINES),
            "none",
            "Line break written after each segment terminator (readability; readers skip it).",
        ),
    ],
    description="Outbound delimiters: one character each, not a letter, digit or space, "
    "all different.",
)

_TOLERANCE_HELP = {
    "price_pct": "How far the invoice price per base unit may exceed the PO's, % of the PO "
    "price (null: no percentage limit).",
    "price_abs": "How far the invoice price per base unit may exceed the PO's, money per base "
    "unit (null: no absolute limit).",
    "qty_received_pct": "Invoiced (cumulative) over received, % (0: none, for stock items; "
    "null: no limit).",
    "qty_ordered_pct": "Invoiced (cumulative) over ordered, % (null: no limit).",
    "qty_abs": "Invoiced over received and over ordered, base units (null: no limit).",
    "limits": "`all`: a line passes only within every limit that is set (Oracle Payables, "
    "SAP); `any`: within the larger of the percentage and the absolute limit.",
    "price_below_po": "`pay`: an invoice price below the PO's passes and is paid as billed; "
    "`hold`: the price limits apply below the PO price too.",
    "credit_needs_return": "A credit memo must be covered by returns to the vendor (from the "
    "ERP) not credited before; else it is held (NO_RETURN).",
    "freight_abs": "Freight allowed per invoice, absolute.",
    "freight_pct": "Freight allowed as % of the line subtotal (the larger applies).",
    "freight_codes": "SAC02 codes counted as freight.",
    "sac_rules": "Other SAC02 charge codes and how much of each is accepted.",
    "allow_other_charges": "Accept charges with no sac_rules entry.",
    "total_abs": "Invoice total (TDS) vs lines + charges, absolute.",
    "require_po_unit": "Hold an invoice line whose unit is not the PO's.",
}

SAC_RULE_SPEC = Spec(
    "sac_rule",
    [
        Field("max_amount", Dec(), Decimal(0), "Accepted up to this amount."),
        Field("max_pct", Dec(), Decimal(0), "Or up to this % of the subtotal."),
    ],
    description="How much of one SAC charge code is accepted.",
)


def _tolerance_spec() -> Spec:
    """The fields of :class:`engine.domains.procurement.match.Tolerance`, with its defaults
    (one source)."""
    defaults = Tolerance()
    fields = []
    for f in dataclasses.fields(Tolerance):
        default = getattr(defaults, f.name)
        if f.name in OPTIONAL_LIMITS:
            typ: Type = Dec(optional=True)
        elif f.name in ("limits", "price_below_po"):
            typ = Enum(*{"limits": ("all", "any"), "price_below_po": ("pay", "hold")}[f.name])
        elif isinstance(default, bool):
            typ = Bool()
        elif isinstance(default, Decimal):
            typ = Dec()
        elif isinstance(default, frozenset):
            typ, default = ListOf(Str(), scalar_ok=True), tuple(sorted(default))
        elif f.name == "sac_rules":
            typ, default = MapOf(SAC_RULE_SPEC), {}
        else:  # a field this spec does not know how to read: keep the match's default
            continue
        fields.append(Field(f.name, typ, default, _TOLERANCE_HELP.get(f.name, "")))
    return Spec(
        "tolerance",
        fields,
        description="Three-way match tolerances for this vendor "
        "(engine.domains.procurement.match.Tolerance; every default and the ERP practice "
        "behind it: docs/ap-policy.md).",
    )


TOLERANCE_SPEC = _tolerance_spec()


def _tolerance(config: Any) -> Tolerance:
    values: dict[str, Any] = {}
    for f in TOLERANCE_SPEC.fields:
        value = getattr(config, f.name)
        if f.name == "sac_rules":
            value = {k: SacRule(v.max_amount, v.max_pct) for k, v in value.items()}
        elif f.name == "freight_codes":
            value = frozenset(value)
        values[f.name] = value
    return Tolerance(**values)


BILL_ONLY_SPEC = Spec(
    "bill_only",
    [
        Field("order_type", Str(r"[A-Z]{2}", "a BEG02 code"), "SA", "BEG02 of bill-only POs."),
        Field("case_id_ref", REF_QUALIFIER, "ZZ", "REF01 that carries the surgical case id."),
        Field(
            "send_mrn",
            Bool(),
            False,
            "Send the patient's MRN (REF*EA) only when the vendor requires it (minimum "
            "necessary); the patient's name is never sent.",
        ),
        Field(
            "send_surgeon",
            Bool(),
            False,
            "Send the surgeon as N1*72 (operating physician) with the NPI (N103 XX), for "
            "vendors that ask for it.",
        ),
        Field("send_procedure_date", Bool(), True, "Send the procedure date (DTM*472)."),
    ],
    description="How bill-only (consigned implant) POs carry case, patient and surgeon "
    "(DOMAIN §3.3); lot and serial travel on each PO1 (LT, SN).",
)


INBOUND_SPEC = Spec(
    "partner_inbound",
    [
        Field(
            "sftp_accounts",
            ListOf(PARTNER_NAME, scalar_ok=True),
            (),
            "Accounts of our SFTP server (routes.yaml `sftp_server.partners`) whose inbound/ "
            "files are this partner's; the account of `delivery.sftp_server` counts too.",
        ),
        Field(
            "http_tokens",
            ListOf(Str(), scalar_ok=True),
            (),
            "Names of bearer tokens (an `http` source's `tokens`) that speak for this partner.",
        ),
        Field(
            "tls_clients",
            ListOf(Str(), scalar_ok=True),
            (),
            "Common names (CN) of the client certificates that speak for this partner to an "
            "`mllp` source with `client_ca` (mutual TLS).",
        ),
    ],
    description="The credentials this partner's documents come with. A document that came "
    "with one of them must carry this partner's ISA and GS ids, else it is refused (TA1 006 "
    "or 024, a SENDER_REFUSED work item and an audit record) and nothing of it is booked.",
)


def _sftp_dest_spec() -> Spec:
    from engine.net.sftp import SFTP_UPLOAD_SPEC as SFTP_DEST_SPEC

    return SFTP_DEST_SPEC


OUR_SFTP_SPEC = Spec(
    "sftp_server_outbound",
    [
        Field(
            "account",
            PARTNER_NAME,
            description="The partner's account in routes.yaml `sftp_server.partners`; files go "
            "to its root's outbound/ folder for the partner to collect.",
        )
    ],
    description="Our own SFTP server: the partner collects from its jail's outbound/.",
)


def _check_delivery(config: Any, ctx: Context, node: yaml.Node, path: str) -> None:
    if (config.sftp is None) == (config.sftp_server is None):
        ctx.error(node, path, "expected exactly one of sftp, sftp_server")


DELIVERY_SPEC = Spec(
    "delivery",
    [
        Field("sftp", _sftp_dest_spec(), None, "The partner's SFTP server (`sftp` destination)."),
        Field("sftp_server", OUR_SFTP_SPEC, None, "Our SFTP server's outbound/ for the partner."),
    ],
    description="How our documents reach the partner: exactly one of the two.",
    check=_check_delivery,
)


def _node_at(node: yaml.Node, *keys: str) -> yaml.Node:
    for key in keys:
        sub = mapping_get(node, key)
        if sub is None:
            return node
        node = sub
    return node


def _check_partner(config: Any, ctx: Context, node: yaml.Node, path: str) -> None:
    seps = config.separators
    repetition = seps.repetition if config.version == "005010" else None
    if config.version == "004010" and "repetition" in seps.positions:
        ctx.error(
            _node_at(node, "separators", "repetition"),
            join(path, "separators.repetition"),
            "004010 has no repetition separator: ISA11 is 'U' (remove it, or use 005010)",
        )
    else:
        problem = check_separators(
            Separators(seps.element, seps.component, seps.segment, repetition),
            config.version,
            _NEWLINES[seps.newline],
        )
        if problem:
            ctx.error(_node_at(node, "separators"), join(path, "separators"), problem)
    if config.ack == "999" and config.version == "004010":
        ctx.error(
            _node_at(node, "ack"),
            join(path, "ack"),
            "expected 997 for 004010 (got '999': the 999 exists from 005010)",
        )
    seps_obj = Separators(seps.element, seps.component, seps.segment, repetition)
    for keys in (("isa", "id"), ("our_isa", "id"), ("gs_id",), ("our_gs_id",)):
        value = getattr(config, keys[0]) if len(keys) == 1 else getattr(config, keys[0]).id
        try:
            check_text(value, seps_obj, ".".join(keys))
        except X12WriteError as exc:
            ctx.error(_node_at(node, *keys), join(path, ".".join(keys)), exc.reason)
    back: dict[str, list[str]] = {}
    for ours, theirs in config.uom.items():
        back.setdefault(theirs, []).append(ours)
    for theirs, ours in sorted(back.items()):
        if len(ours) > 1 and theirs not in config.uom_inbound:
            ctx.error(
                _node_at(node, "uom"),
                join(path, "uom"),
                f"X12 unit {theirs!r} maps back to several of our units ({', '.join(ours)}); "
                f"say which in uom_inbound, e.g. uom_inbound: {{{theirs}: {ours[0]}}}",
            )


PARTNER_SPEC = Spec(
    "trading_partner",
    [
        Field("name", Str(), None, "Vendor name for N1*VN when the PO has no vendor_name."),
        Field("vendors", ListOf(Str(), scalar_ok=True), (), "ERP vendor ids of this partner."),
        Field("version", X12Version(), description="X12 version of our documents to them."),
        Field("isa", ISA_ID_SPEC, description="The partner's interchange id."),
        Field("our_isa", ISA_ID_SPEC, description="Our interchange id with this partner."),
        Field("gs_id", GS_ID, description="The partner's application code (GS03 out, GS02 in)."),
        Field("our_gs_id", GS_ID, description="Our application code (GS02 out, GS03 in)."),
        Field(
            "separators",
            SEPARATORS_SPEC,
            SEPARATORS_SPEC.defaults(),
            "Delimiters of our documents.",
        ),
        Field("ack", Enum("997", "999"), None, "Functional ack (default 997/004010, 999/005010)."),
        Field("ta1", Bool(), False, "Ask for a TA1 interchange ack (ISA14=1)."),
        Field("usage", Enum("P", "T"), "P", "ISA15: P production, T test."),
        Field(
            "uom",
            MapOf(X12_UNIT),
            description="Our unit -> the partner's X12 unit code. A unit not listed is an error.",
        ),
        Field(
            "uom_inbound",
            MapOf(Str()),
            {},
            "The partner's unit -> ours, where the inverse of `uom` is ambiguous or differs.",
        ),
        Field("tolerance", TOLERANCE_SPEC, TOLERANCE_SPEC.defaults(), "Match tolerances."),
        Field("ack_within", Duration(lo=1), 4 * 3600.0, "A 997/999 later than this is overdue."),
        Field("asn_is_receipt", Bool(), False, "Accept the partner's 856 as the goods receipt."),
        Field(
            "hold",
            Enum("line", "invoice"),
            "line",
            "`line`: a line out of tolerance is held on its own and the payable lines post to "
            "AP (the held ones are matched again when their receipt comes); `invoice`: any "
            "held line holds the whole invoice. Invoice-level reasons (DUPLICATE, NO_PO, "
            "TOTAL, FREIGHT, SAC) always hold the whole invoice.",
        ),
        Field(
            "inbound",
            INBOUND_SPEC,
            INBOUND_SPEC.defaults(),
            "The credentials (SFTP accounts, bearer tokens, client certificates) this "
            "partner's documents come with.",
        ),
        Field("bill_only", BILL_ONLY_SPEC, BILL_ONLY_SPEC.defaults(), "Bill-only PO content."),
        Field("delivery", DELIVERY_SPEC, None, "How our documents reach the partner."),
    ],
    description="One X12 trading partner (a vendor) in mappings/trading_partners.yaml.",
    check=_check_partner,
)


@dataclass(frozen=True)
class IsaId:
    qualifier: str
    id: str


@dataclass(frozen=True)
class BillOnlyRules:
    order_type: str = "SA"
    case_id_ref: str = "ZZ"
    send_mrn: bool = False
    send_surgeon: bool = False
    send_procedure_date: bool = True


@dataclass(frozen=True)
class PartnerSftp:
    """Upload to the partner's server; ``options`` is an ``sftp`` destination config."""

    options: Any


@dataclass(frozen=True)
class OurSftpServer:
    """Leave files in ``account``'s outbound/ on our SFTP server for the partner to collect."""

    account: str

    def folder(self, server: Any, root: Path | str) -> Path:
        """The outbound folder, given routes.yaml's ``sftp_server`` config and the project root."""
        for p in server.partners:
            if p.name == self.account:
                base = Path(p.root)
                return (base if base.is_absolute() else Path(root) / base) / "outbound"
        names = [p.name for p in server.partners]
        raise KeyError(
            f"no sftp_server partner '{self.account}' (have: {', '.join(names) or 'none'})"
        )


@dataclass(frozen=True)
class Partner:
    """One trading partner, ready to use (see the module docstring for the YAML)."""

    id: str
    version: str  # "004010" | "005010"
    isa: IsaId  # theirs
    our_isa: IsaId
    gs_id: str
    our_gs_id: str
    separators: Separators
    newline: str  # "", "\n" or "\r\n" after each terminator
    ack: str  # "997" | "999"
    ta1: bool
    usage: str  # "P" | "T"
    uom_out: Mapping[str, str]  # our unit -> their code
    uom_in: Mapping[str, str]  # their code -> our unit
    tolerance: Tolerance
    ack_within: float  # seconds
    asn_is_receipt: bool
    bill_only: BillOnlyRules
    delivery: PartnerSftp | OurSftpServer | None
    name: str | None = None
    vendors: tuple[str, ...] = ()
    where: str = ""
    hold: str = "line"  # "line" | "invoice"
    # origins (``sftp:ACCOUNT``, ``token:NAME``, ``tls:CN``) that speak for this partner
    origins: frozenset[str] = frozenset()

    @property
    def isa_version(self) -> str:
        """ISA12: ``00401`` or ``00501``."""
        return "00501" if self.version == "005010" else "00401"

    def their_unit(self, unit: str) -> str:
        """The partner's X12 code for our ``unit``; :class:`UnmappedUnit` when none."""
        code = self.uom_out.get(unit)
        if code is None:
            raise UnmappedUnit(self.id, unit, "out", sorted(self.uom_out))
        return code

    def our_unit(self, code: str) -> str:
        """Our unit for the partner's X12 ``code``; :class:`UnmappedUnit` when none."""
        unit = self.uom_in.get(code)
        if unit is None:
            raise UnmappedUnit(self.id, code, "in", sorted(self.uom_in))
        return unit

    def bill_only_map(self) -> BillOnlyMap:
        """Where this partner's 850s carry bill-only case data, for the 850 reader."""
        refs = {"LT": "lot", "SE": "serial", "EA": "patient_id"}
        refs[self.bill_only.case_id_ref] = "case_id"
        return BillOnlyMap(refs=refs, dates={"472": "procedure_date"})

    def outbound_header(self) -> InterchangeHeader:
        """ISA/GS parties and settings of an interchange from us to this partner."""
        return InterchangeHeader(
            sender_qualifier=self.our_isa.qualifier,
            sender_id=self.our_isa.id,
            receiver_qualifier=self.isa.qualifier,
            receiver_id=self.isa.id,
            gs_sender=self.our_gs_id,
            gs_receiver=self.gs_id,
            version=self.version,
            separators=self.separators,
            usage=self.usage,
            ack_requested=self.ta1,
            newline=self.newline,
        )


def _partner(pid: str, c: Any) -> Partner:
    s = c.separators
    seps = Separators(
        s.element, s.component, s.segment, s.repetition if c.version == "005010" else None
    )
    uom_in = {theirs: ours for ours, theirs in c.uom.items()}
    uom_in.update(c.uom_inbound)
    delivery: PartnerSftp | OurSftpServer | None = None
    if c.delivery is not None:
        if c.delivery.sftp is not None:
            delivery = PartnerSftp(c.delivery.sftp)
        else:
            delivery = OurSftpServer(c.delivery.sftp_server.account)
    b = c.bill_only
    origins = {f"sftp:{a}" for a in c.inbound.sftp_accounts}
    origins |= {f"token:{t}" for t in c.inbound.http_tokens}
    origins |= {f"tls:{n}" for n in c.inbound.tls_clients}
    if isinstance(delivery, OurSftpServer):
        origins.add(f"sftp:{delivery.account}")
    return Partner(
        id=pid,
        version=c.version,
        isa=IsaId(c.isa.qualifier, c.isa.id),
        our_isa=IsaId(c.our_isa.qualifier, c.our_isa.id),
        gs_id=c.gs_id,
        our_gs_id=c.our_gs_id,
        separators=seps,
        newline=_NEWLINES[s.newline],
        ack=c.ack or ("999" if c.version == "005010" else "997"),
        ta1=c.ta1,
        usage=c.usage,
        uom_out=dict(c.uom),
        uom_in=uom_in,
        tolerance=_tolerance(c.tolerance),
        ack_within=c.ack_within,
        asn_is_receipt=c.asn_is_receipt,
        bill_only=BillOnlyRules(**{f: getattr(b, f) for f in BillOnlyRules.__dataclass_fields__}),
        delivery=delivery,
        name=c.name,
        vendors=tuple(c.vendors),
        where=c.where,
        hold=c.hold,
        origins=frozenset(origins),
    )


@dataclass(frozen=True)
class TradingPartners(Mapping[str, Partner]):
    """All partners by id, with lookups by ISA sender and by ERP vendor id."""

    partners: Mapping[str, Partner]
    file: str = PARTNERS_FILE
    _by_isa: Mapping[tuple[str, str], str] = field(default_factory=dict, repr=False)
    _by_vendor: Mapping[str, str] = field(default_factory=dict, repr=False)
    _by_origin: Mapping[str, str] = field(default_factory=dict, repr=False)

    def __getitem__(self, pid: str) -> Partner:
        return self.partners[pid]

    def __iter__(self) -> Iterator[str]:
        return iter(self.partners)

    def __len__(self) -> int:
        return len(self.partners)

    def by_isa(self, qualifier: str, isa_id: str) -> Partner | None:
        """The partner whose ISA05/ISA06 (inbound sender) is this; padding is ignored."""
        pid = self._by_isa.get((qualifier.strip(), isa_id.strip()))
        return None if pid is None else self.partners[pid]

    def by_origin(self, origin: str) -> Partner | None:
        """The partner a credential speaks for (``sftp:acmemed``, ``token:NAME``,
        ``tls:CN``), None when it is bound to none."""
        pid = self._by_origin.get(origin)
        return None if pid is None else self.partners[pid]

    def by_vendor(self, vendor: str) -> Partner | None:
        """The partner serving ERP vendor id ``vendor`` (the PO's ``vendor``)."""
        pid = self._by_vendor.get(str(vendor).strip())
        return None if pid is None else self.partners[pid]


def _error_at(where: str, path: str, message: str) -> ConfigError:
    """A ConfigError at a ``file:line:col`` recorded on a parsed config."""
    parts = where.rsplit(":", 2)
    if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
        return ConfigError(
            message, file=parts[0], line=int(parts[1]), column=int(parts[2]), path=path
        )
    return ConfigError(message, file=where, path=path)


def parse_partners(
    node: yaml.Node | None,
    file: str = PARTNERS_FILE,
    *,
    env: Mapping[str, str] | None = None,
    sftp_accounts: Collection[str] | None = None,
) -> TradingPartners:
    """Partners from a composed YAML node; :class:`LintFailed` with every error found.

    ``sftp_accounts``: the account names of routes.yaml ``sftp_server.partners``; when given,
    a ``delivery.sftp_server.account`` must be one of them.
    """
    ctx = Context(file, env if env is not None else os.environ)
    node = empty_mapping() if node is None else node
    partners: dict[str, Partner] = {}
    if not isinstance(node, yaml.MappingNode):
        ctx.error(node, "", "expected a mapping of partner id to partner (got a list or text)")
        raise LintFailed(ctx.errors)
    errors: list[ConfigError] = []
    seen: set[str] = set()
    for key_node, value_node in node.value:
        pid = ID_NAME.parse(key_node, ctx, str(key_node.value))
        if pid is INVALID:
            continue
        if pid in seen:
            ctx.error(key_node, pid, "partner id appears twice in this file")
            continue
        seen.add(pid)
        config = PARTNER_SPEC.parse(value_node, ctx, pid)
        if config is INVALID:
            continue
        partners[pid] = _partner(pid, config)
        if sftp_accounts is not None:
            for i, account in enumerate(config.inbound.sftp_accounts):
                if account not in sftp_accounts:
                    known = sorted(sftp_accounts)
                    errors.append(
                        _error_at(
                            config.inbound.positions.get("sftp_accounts", config.where),
                            f"{pid}.inbound.sftp_accounts[{i}]",
                            f"expected an account of routes.yaml sftp_server.partners "
                            f"({', '.join(known) or 'none'}) (got {account!r})"
                            f"{did_you_mean(account, known)}",
                        )
                    )
        if sftp_accounts is not None and config.delivery is not None:
            ours = config.delivery.sftp_server
            if ours is not None and ours.account not in sftp_accounts:
                known = sorted(sftp_accounts)
                errors.append(
                    _error_at(
                        ours.positions["account"],
                        f"{pid}.delivery.sftp_server.account",
                        f"expected an account of routes.yaml sftp_server.partners "
                        f"({', '.join(known) or 'none'}) (got {ours.account!r})"
                        f"{did_you_mean(ours.account, known)}",
                    )
                )
    by_isa: dict[tuple[str, str], str] = {}
    by_vendor: dict[str, str] = {}
    by_origin: dict[str, str] = {}
    for pid, p in partners.items():
        for origin in sorted(p.origins):
            if origin in by_origin:
                errors.append(
                    _error_at(
                        p.where,
                        f"{pid}.inbound",
                        f"{origin} also speaks for partner '{by_origin[origin]}': a credential "
                        "is bound to one partner only",
                    )
                )
            by_origin.setdefault(origin, pid)
        key = (p.isa.qualifier, p.isa.id)
        if key in by_isa:
            errors.append(
                _error_at(
                    p.where,
                    f"{pid}.isa",
                    f"expected a distinct ISA id (got {p.isa.qualifier}/{p.isa.id}, "
                    f"also partner '{by_isa[key]}'): inbound files could not be told apart",
                )
            )
        by_isa.setdefault(key, pid)
        for vendor in p.vendors:
            if vendor in by_vendor:
                errors.append(
                    _error_at(
                        p.where,
                        f"{pid}.vendors",
                        f"vendor {vendor!r} is also served by partner '{by_vendor[vendor]}'",
                    )
                )
            by_vendor.setdefault(vendor, pid)
    errors = ctx.errors + errors
    if errors:
        raise LintFailed(errors)
    return TradingPartners(partners, file, by_isa, by_vendor, by_origin)


def load_partners(
    path: Path | str,
    *,
    shown: str | None = None,
    env: Mapping[str, str] | None = None,
    sftp_accounts: Collection[str] | None = None,
) -> TradingPartners:
    """Read and validate a trading partners file (``shown`` is the name used in errors,
    default ``path`` as given). A missing file means no partners."""
    path = Path(path)
    shown = str(path) if shown is None else shown
    if not path.exists():
        return TradingPartners({}, shown)
    try:
        node = compose_file(path, shown)
    except ConfigError as exc:
        raise LintFailed([exc]) from exc
    return parse_partners(node, shown, env=env, sftp_accounts=sftp_accounts)
