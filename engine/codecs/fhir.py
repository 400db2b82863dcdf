"""FHIR codec (groundwork for the HTTP/FHIR source): JSON resources and Bundles validated with
fhir.resources (R5 by default, R4B for R4 peers), the required code bindings fhir.resources does
not check, and OperationOutcome answers that name each problem's FHIRPath.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
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

_MODULES = {
    "SupplyDelivery": "supplydelivery",
    "SupplyRequest": "supplyrequest",
    "ChargeItem": "chargeitem",
    "Bundle": "bundle",
    "Device": "device",
}


@dataclass(frozen=True)
class Issue:
    """One OperationOutcome issue: severity, code (issue-type) and the FHIRPath it is about."""

    code: str
    text: str
    expression: str
    severity: str = "error"


def operation_outcome(issues: list[Issue]) -> dict[str, Any]:
    """An OperationOutcome resource listing ``issues``."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": i.severity,
                "code": i.code,
                "diagnostics": i.text,
                "expression": [i.expression] if i.expression else [],
            }
            for i in issues
        ],
    }


class FhirInvalid(CodecError):
    """A body that is FHIR-shaped but fails validation (HTTP 422), with its issues."""

    def __init__(self, issues: list[Issue]) -> None:
        super().__init__("; ".join(f"{i.expression}: {i.text}" for i in issues), code="invalid")
        self.issues = issues


def _model(version: str, resource_type: str) -> Any:
    module = _MODULES.get(resource_type)
    if module is None:
        return None
    base = "fhir.resources.R4B" if version == "R4B" else "fhir.resources"
    mod = importlib.import_module(f"{base}.{module}")
    return getattr(mod, resource_type)


def _path(resource_type: str, loc: tuple[Any, ...]) -> str:
    out = resource_type
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "__root__":
            out += f".{part}"
    return out


def validate_resource(data: dict[str, Any], version: str = "R5") -> list[Issue]:
    """Structure and data types (fhir.resources) plus the required bindings above."""
    rtype = data.get("resourceType")
    if not isinstance(rtype, str):
        return [Issue("structure", "expected a resourceType", "")]
    model = _model(version, rtype)
    if model is None:
        return [Issue("not-supported", f"resource type {rtype} is not taken here", rtype)]
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
    return issues


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
        "fhir.resources does not check. The dedup key is the first identifier "
        "(system|value), else the content's SHA-256."
    ),
    example="codec:\n  fhir: {version: R4B}",
)


class FhirCodec:
    content_type = CONTENT_TYPE

    def __init__(self, options: Any) -> None:
        self.options = options

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
        key = (
            f"{first.get('system', '')}|{first['value']}"
            if isinstance(first, dict) and first.get("value")
            else sha256_key(raw)
        )
        return Parsed(data, CONTENT_TYPE, rtype, key if "|" in key else None, key)


@codec("fhir", FHIR_SPEC)
def make_fhir(options: Any) -> FhirCodec:
    return FhirCodec(options)
