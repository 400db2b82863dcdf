"""FHIR codec: JSON resources and Bundles validated with fhir.resources (R5 by default, R4B for
R4 peers), the required code bindings fhir.resources does not check, and OperationOutcome answers
that name each problem's FHIRPath.

The helpers below serve the ``fhir_http`` source: :func:`parse_json` (decimals kept exact,
duplicate keys refused), :func:`dump_json` (compact, decimals as written), :func:`for_storage`
(the server-managed ``id`` and ``meta`` versions dropped, so a resend stores the same bytes) and
:func:`with_meta` (the id and ``meta`` a read-back shows). FHIR XML lives in
:mod:`engine.codecs.fhir_xml`.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from engine.codecs.base import Parsed, sha256_key
from engine.errors import CodecError
from engine.registry import codec
from engine.spec import ByteSize, Enum, Field, ListOf, Spec, Str

CONTENT_TYPE = "application/fhir+json"

#: Required bindings this flow relies on (fhir.resources checks types, not these codes).
BINDINGS: dict[str, dict[str, frozenset[str]]] = {
    "SupplyDelivery": {
        "status": frozenset({"in-progress", "completed", "abandoned", "entered-in-error"})
    },
    "SupplyRequest": {
        "status": frozenset(
            {
                "draft",
                "active",
                "suspended",
                "cancelled",
                "completed",
                "entered-in-error",
                "unknown",
            }
        )
    },
    "ChargeItem": {
        "status": frozenset(
            {
                "planned",
                "billable",
                "not-billable",
                "aborted",
                "billed",
                "entered-in-error",
                "unknown",
            }
        )
    },
}


@dataclass(frozen=True)
class Issue:
    """One OperationOutcome issue: severity, code (issue-type) and the FHIRPath it is about."""

    code: str
    text: str
    expression: str
    severity: str = "error"


def operation_outcome(issues: list[Issue]) -> dict[str, Any]:
    """An OperationOutcome resource listing ``issues`` (an issue about no element has no
    ``expression``: FHIR JSON arrays are never empty)."""
    out = []
    for i in issues:
        issue: dict[str, Any] = {"severity": i.severity, "code": i.code, "diagnostics": i.text}
        if i.expression:
            issue["expression"] = [i.expression]
        out.append(issue)
    return {"resourceType": "OperationOutcome", "issue": out}


class FhirInvalid(CodecError):
    """A body that is FHIR-shaped but fails validation (HTTP 422), with its issues."""

    def __init__(self, issues: list[Issue]) -> None:
        super().__init__("; ".join(f"{i.expression}: {i.text}" for i in issues), code="invalid")
        self.issues = issues


def _model(version: str, resource_type: str) -> Any:
    """The fhir.resources class of a resource type, or None when FHIR has no such resource
    (which types a channel takes is the codec's ``resources``; a Bundle's entries may be of
    any type: a transaction carries its Device and Procedure with the SupplyDelivery)."""
    try:
        model = model_class(version, resource_type)
        base = model_class(version, "Resource")
    except (ValueError, KeyError, ImportError, AttributeError):
        return None
    return model if isinstance(model, type) and issubclass(model, base) else None


def _path(resource_type: str, loc: tuple[Any, ...]) -> str:
    out = resource_type
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in ("__root__", "root"):  # pydantic root-model levels
            out += f".{part}"
    return out


def validate_resource(data: dict[str, Any], version: str = "R5") -> list[Issue]:
    """Structure and data types (fhir.resources) plus the required bindings above."""
    rtype = data.get("resourceType")
    if not isinstance(rtype, str):
        return [Issue("structure", "expected a resourceType", "")]
    model = _model(version, rtype)
    if model is None:
        return [Issue("not-supported", f"{rtype} is not a FHIR {version} resource type", rtype)]
    issues: list[Issue] = []
    try:
        model.model_validate(data)
    except Exception as exc:  # pydantic.ValidationError: one issue per error
        errors = getattr(exc, "errors", None)
        for err in errors() if callable(errors) else []:
            issues.append(
                Issue(
                    "invalid",
                    str(err.get("msg", "invalid")),
                    _path(rtype, tuple(err.get("loc", ()))),
                )
            )
        if not issues:
            issues.append(Issue("invalid", str(exc), rtype))
    for element, allowed in BINDINGS.get(rtype, {}).items():
        value = data.get(element)
        if value is not None and value not in allowed:
            issues.append(
                Issue(
                    "code-invalid",
                    f"expected one of {', '.join(sorted(allowed))} (got {value!r})",
                    f"{rtype}.{element}",
                )
            )
    if rtype == "Bundle":
        for i, entry in enumerate(data.get("entry") or []):
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(resource, dict):
                for issue in validate_resource(resource, version):
                    expr = issue.expression.replace(
                        resource.get("resourceType", ""), f"Bundle.entry[{i}].resource", 1
                    )
                    issues.append(Issue(issue.code, issue.text, expr, issue.severity))
    # the Bundle's own validation already saw its entries' structure: each problem once
    return list(dict.fromkeys(issues))


FHIR_SPEC = Spec(
    "fhir",
    [
        Field("version", Enum("R5", "R4B"), "R5", "FHIR version (R4B models serve R4 peers)."),
        Field(
            "resources",
            ListOf(Str(), scalar_ok=True),
            ("SupplyDelivery", "SupplyRequest", "ChargeItem", "Bundle"),
            "Resource types this channel takes.",
        ),
        Field("max_size", ByteSize(), 5 * 1024 * 1024, "Larger bodies are refused (413)."),
    ],
    description=(
        "FHIR JSON validated with fhir.resources, plus the required status bindings that "
        "fhir.resources does not check. The dedup key is the first identifier (system|value) "
        "with the status (a resource moving on is a new message; the same identifier and "
        "status with other content is a conflict), else the content's SHA-256."
    ),
    example="codec:\n  fhir: {version: R4B}",
)


class FhirCodec:
    @staticmethod
    def count_lines(parsed: Parsed) -> int:
        """The message's lines for a channel's ``limits.max_lines``: a Bundle's entries."""
        value = parsed.value
        if isinstance(value, dict) and value.get("resourceType") == "Bundle":
            entries = value.get("entry")
            return len(entries) if isinstance(entries, list) else 0
        return 1

    content_type = CONTENT_TYPE

    def __init__(self, options: Any) -> None:
        self.options = options
        # The models of the types this channel takes, imported now (about 0.1 s the first
        # time, on the thread that builds the channel) rather than inside the first request's
        # validation on the reactor thread.
        for resource_type in options.resources:
            _model(options.version, resource_type)

    def decode(self, raw: bytes) -> Parsed:
        if len(raw) > self.options.max_size:
            raise CodecError(
                f"body is {len(raw)} bytes; the limit is {self.options.max_size}", code="too_large"
            )
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise CodecError(f"expected FHIR JSON ({exc})", code="not_fhir") from exc
        if not isinstance(data, dict) or "resourceType" not in data:
            raise CodecError("expected a FHIR resource with a resourceType", code="not_fhir")
        rtype = data["resourceType"]
        if rtype not in self.options.resources:
            raise CodecError(
                f"resource type must be one of {', '.join(self.options.resources)} (got {rtype!r})",
                location=str(rtype),
                code="unsupported_message_type",
            )
        issues = validate_resource(data, self.options.version)
        if issues:
            raise FhirInvalid(issues)
        ident = data.get("identifier") or [{}]
        first = ident[0] if isinstance(ident, list) and ident else ident
        if isinstance(first, dict) and first.get("value"):
            control = f"{first.get('system', '')}|{first['value']}"
            # The status is part of the key: a resource moving on (in-progress, completed,
            # entered-in-error) is a new message; the same identifier and status with other
            # content is a conflict for a person.
            status = data.get("status")
            key = f"{control}|{status}" if isinstance(status, str) else control
            return Parsed(data, CONTENT_TYPE, rtype, control, key)
        key = sha256_key(raw)
        return Parsed(data, CONTENT_TYPE, rtype, None, key)


# -- JSON forms for the HTTP source ------------------------------------------------------------


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice in one object")
        out[key] = value
    return out


def parse_json(raw: bytes) -> dict[str, Any]:
    """A FHIR JSON resource as a dict: UTF-8 (a BOM is tolerated), decimals kept exactly as
    written (``Decimal``), duplicate keys and NaN/Infinity refused. CodecError ``not_fhir``
    when the bytes are not a JSON object with a ``resourceType``."""
    try:
        text = raw.decode("utf-8-sig")
        data = json.loads(
            text,
            parse_float=Decimal,
            parse_constant=_no_constant,
            object_pairs_hook=_no_duplicates,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CodecError(f"expected FHIR JSON ({exc})", code="not_fhir") from exc
    if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
        raise CodecError(
            "expected a FHIR resource: a JSON object with a resourceType", code="not_fhir"
        )
    return data


#: What ``json.dumps(text, ensure_ascii=False)`` writes for a str (the C encoder it calls).
_encode_str = json.encoder.encode_basestring


def _dump(value: Any, out: list[str]) -> None:
    # The exact types json.loads makes come first, written as json.dumps would write them
    # without its per-call cost (a call for every key and value was most of this function).
    kind = type(value)
    if kind is str:
        out.append(_encode_str(value))
    elif kind is bool:
        out.append("true" if value else "false")
    elif kind is int:
        out.append(int.__repr__(value))
    elif value is None:
        out.append("null")
    elif isinstance(value, dict):
        out.append("{")
        for i, (k, v) in enumerate(value.items()):
            if i:
                out.append(",")
            out.append(_encode_str(k) if type(k) is str else json.dumps(k, ensure_ascii=False))
            out.append(":")
            _dump(v, out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, v in enumerate(value):
            if i:
                out.append(",")
            _dump(v, out)
        out.append("]")
    elif isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"a decimal must be finite (got {value})")
        out.append(str(value))
    else:
        out.append(json.dumps(value, ensure_ascii=False, allow_nan=False))


def dump_json(value: Any) -> bytes:
    """Compact UTF-8 JSON; a ``Decimal`` is written as the number it holds (``2.50`` stays
    ``2.50``)."""
    out: list[str] = []
    _dump(value, out)
    return "".join(out).encode("utf-8")


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        keys = sorted(value)  # resourceType first, then the others in order
        if "resourceType" in value and keys[0] != "resourceType":
            keys.remove("resourceType")
            keys.insert(0, "resourceType")
        return {k: _sorted(value[k]) for k in keys}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def for_storage(data: dict[str, Any]) -> dict[str, Any]:
    """The resource as stored: without the server-managed ``id``, ``meta.versionId`` and
    ``meta.lastUpdated`` (a create ignores them), keys sorted (``resourceType`` first), so a
    resend whose JSON differs only in key order, whitespace, id or meta versions, or which
    came as XML the first time, stores the same bytes (and is recognised as the same)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key == "id":
            continue
        if key == "meta" and isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in ("versionId", "lastUpdated")}
            if not value:
                continue
        out[key] = value
    return _sorted(out)


def with_meta(
    data: dict[str, Any], resource_id: str, last_updated: str, version_id: str = "1"
) -> dict[str, Any]:
    """The resource as read back: ``id`` and ``meta.versionId``/``meta.lastUpdated`` set."""
    meta = dict(data.get("meta") or {})
    meta.update(versionId=version_id, lastUpdated=last_updated)
    out: dict[str, Any] = {"resourceType": data["resourceType"], "id": resource_id, "meta": meta}
    for key, value in data.items():
        if key not in out:
            out[key] = value
    return out


def with_meta_json(
    raw: bytes, data: dict[str, Any], resource_id: str, last_updated: str, version_id: str = "1"
) -> bytes | None:
    """``dump_json(with_meta(data, ...))`` made from ``raw`` (``dump_json(data)``, ``data`` as
    :func:`for_storage` leaves it) without writing the resource again: the id and ``meta``
    go in after its ``resourceType``. None when ``data`` has its own ``id`` or ``meta`` (then
    :func:`with_meta` and :func:`dump_json`)."""
    if "id" in data or "meta" in data:
        return None
    head = b'{"resourceType":' + dump_json(data.get("resourceType"))
    if not raw.startswith(head):
        return None
    meta = dump_json({"versionId": version_id, "lastUpdated": last_updated})
    return b"".join((head, b',"id":', dump_json(resource_id), b',"meta":', meta, raw[len(head) :]))


def model_class(version: str, resource_type: str) -> Any:
    """The fhir.resources class of any resource type (ValueError when there is none)."""
    base = "fhir.resources.R4B" if version == "R4B" else "fhir.resources"
    return importlib.import_module(base).get_fhir_model_class(resource_type)


def identifiers(data: dict[str, Any]) -> list[dict[str, Any]]:
    """A resource's identifiers as a list (Bundle.identifier is a single one)."""
    ident = data.get("identifier")
    if isinstance(ident, dict):
        return [ident]
    return [i for i in ident if isinstance(i, dict)] if isinstance(ident, list) else []


@codec("fhir", FHIR_SPEC)
def make_fhir(options: Any) -> FhirCodec:
    return FhirCodec(options)
