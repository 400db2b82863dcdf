"""FHIR codec groundwork: fhir.resources validation, the required bindings it does not check,
and OperationOutcome issues that name the FHIRPath of each problem."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fhir.resources.operationoutcome import OperationOutcome

from engine.codecs.fhir import (
    FHIR_SPEC,
    FhirInvalid,
    make_fhir,
    operation_outcome,
    validate_resource,
)
from engine.errors import CodecError

DELIVERY: dict[str, Any] = {
    "resourceType": "SupplyDelivery",
    "identifier": [{"system": "urn:pou:line", "value": "CU-7f3a9c"}],
    "status": "completed",
    "patient": {"reference": "Patient/p1"},
    "suppliedItem": [
        {
            "quantity": {"value": 2, "unit": "EA"},
            "itemCodeableConcept": {"coding": [{"system": "urn:cdm", "code": "278000123"}]},
        }
    ],
    "occurrenceDateTime": "2026-01-15T09:30:00Z",
    "destination": {"reference": "Location/or-main"},
}


def codec(**kw: Any) -> Any:
    options = FHIR_SPEC.defaults()
    return make_fhir(options.__class__(**{**options.__dict__, **kw}))


def test_valid_supply_delivery_decodes_with_identifier_and_status_as_dedup_key() -> None:
    """A valid R5 SupplyDelivery decodes; its first identifier (the control id) with its status
    is the dedup key, so the same delivery moving on to another status is a new message."""
    parsed = codec().decode(json.dumps(DELIVERY).encode())
    assert parsed.message_type == "SupplyDelivery"
    assert parsed.control_id == "urn:pou:line|CU-7f3a9c"
    assert parsed.dedup_key == f"urn:pou:line|CU-7f3a9c|{DELIVERY['status']}"
    moved = codec().decode(json.dumps({**DELIVERY, "status": "entered-in-error"}).encode())
    assert moved.dedup_key == "urn:pou:line|CU-7f3a9c|entered-in-error"


def test_bogus_status_is_caught_with_its_fhirpath() -> None:
    """fhir.resources lets status='bogus' through; the binding check names SupplyDelivery.status."""
    with pytest.raises(FhirInvalid) as info:
        codec().decode(json.dumps({**DELIVERY, "status": "bogus"}).encode())
    (issue,) = info.value.issues
    assert (issue.code, issue.expression) == ("code-invalid", "SupplyDelivery.status")


def test_r4b_rejects_a_list_of_supplied_items() -> None:
    """R4B's suppliedItem is 0..1: a list is a structure error at SupplyDelivery.suppliedItem."""
    issues = validate_resource(DELIVERY, "R4B")
    assert issues and all(i.expression.startswith("SupplyDelivery.suppliedItem") for i in issues)
    assert validate_resource(DELIVERY, "R5") == []


def test_not_fhir_and_unsupported_types_are_refused() -> None:
    """Bytes that are not FHIR JSON, and resource types the channel does not take, are refused."""
    with pytest.raises(CodecError) as info:
        codec().decode(b"<xml/>")
    assert info.value.code == "not_fhir"
    with pytest.raises(CodecError) as info:
        codec().decode(json.dumps({"resourceType": "Patient"}).encode())
    assert info.value.code == "unsupported_message_type"


def test_operation_outcome_validates() -> None:
    """The OperationOutcome built from the issues is a valid FHIR resource."""
    issues = validate_resource({**DELIVERY, "status": "bogus"})
    OperationOutcome.model_validate(operation_outcome(issues))
