"""FHIR codec groundwork: fhir.resources validation, the required bindings it does not check,
and OperationOutcome issues that name the FHIRPath of each problem."""

from __future__ import annotations

import json
import random
from decimal import Decimal
from typing import Any

import pytest
from fhir.resources.operationoutcome import OperationOutcome

from engine.codecs.fhir import (
    FHIR_SPEC,
    FhirInvalid,
    dump_json,
    for_storage,
    make_fhir,
    operation_outcome,
    parse_json,
    validate_resource,
    with_meta,
    with_meta_json,
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


def _values(rnd: random.Random, depth: int = 0) -> Any:
    """Nested JSON values of every kind json.loads makes, with awkward strings and keys."""
    leaves = ["x", 'q"uo\\te', "é\u2028\n\t\x00\x1f/<>", "", 0, -7, 10**30, True, False, None, 2.5]
    r = rnd.random()
    if depth > 3 or r < 0.3:
        return rnd.choice(leaves)
    if r < 0.65:
        keys = ["a", "Zz", "ç", 'k"', "resourceType"]
        return {
            rnd.choice(keys) + str(i): _values(rnd, depth + 1) for i in range(rnd.randint(0, 4))
        }
    return [_values(rnd, depth + 1) for _ in range(rnd.randint(0, 4))]


def test_dump_json_writes_what_the_standard_library_writes() -> None:
    """The stored bytes of a resource (a resend's duplicate check compares them) are compact
    JSON exactly as json.dumps writes it, whatever the strings hold; a Decimal is written as
    written (2.50 stays 2.50), a non-finite number is refused."""
    rnd = random.Random(14)
    for _ in range(2000):
        value = _values(rnd)
        expected = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        assert dump_json(value) == expected.encode("utf-8")
    assert dump_json({"q": [Decimal("2.50"), Decimal("-0.0"), Decimal("1E+3")]}) == (
        b'{"q":[2.50,-0.0,1E+3]}'
    )
    for bad in (Decimal("NaN"), float("inf")):
        with pytest.raises(ValueError):
            dump_json({"x": bad})


def test_for_storage_puts_resource_type_first_then_sorts_the_keys() -> None:
    data = {"status": "completed", "Zed": 1, "resourceType": "SupplyDelivery", "id": "x"}
    data["b"] = {"z": 1, "resourceType": "Inner", "A": [{"y": 1, "x": 2}]}
    stored = for_storage(data)
    assert list(stored) == ["resourceType", "Zed", "b", "status"]
    assert list(stored["b"]) == ["resourceType", "A", "z"]
    assert list(stored["b"]["A"][0]) == ["x", "y"]


def test_the_models_of_a_channels_types_are_loaded_when_its_codec_is_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Loading a resource type's model (imports, about 0.1 s) happens when the channel is
    built, not in the first request's validation on the reactor thread."""
    from engine.codecs import fhir

    asked: list[tuple[str, str]] = []
    real = fhir.model_class

    def spy(version: str, resource_type: str) -> object:
        asked.append((version, resource_type))
        return real(version, resource_type)

    monkeypatch.setattr(fhir, "model_class", spy)
    codec(version="R4B", resources=("SupplyDelivery", "ChargeItem"))
    assert ("R4B", "SupplyDelivery") in asked and ("R4B", "ChargeItem") in asked


def test_the_answer_made_from_the_stored_bytes_is_what_writing_it_again_gives() -> None:
    """A 201's body is the stored bytes with the id and meta put in after the resourceType:
    byte for byte what with_meta + dump_json write, for every shipped sample and generated
    documents; a resource with its own meta is left to them (None)."""
    from pathlib import Path

    samples = sorted((Path(__file__).parents[2] / "samples" / "fhir").glob("*.json"))
    documents = [parse_json(p.read_bytes()) for p in samples]
    rnd = random.Random(15)
    for n in range(300):
        doc = {"resourceType": rnd.choice(["SupplyDelivery", "Bundle", 'Odd"Type']), "id": "x"}
        if n % 2:
            doc["extra"] = _values(rnd)
        if n % 3 == 0:
            doc["a" * (n % 5)] = _values(rnd)
        documents.append(doc)
    checked = 0
    for doc in documents:
        stored = for_storage(doc)
        raw = dump_json(stored)
        made = with_meta_json(raw, stored, "01JB5Q", "2026-01-15T09:30:00.123Z")
        if "meta" in stored:
            assert made is None
            continue
        assert made == dump_json(with_meta(stored, "01JB5Q", "2026-01-15T09:30:00.123Z"))
        checked += 1
    assert checked > 250 and len(samples) > 3
    with_own_meta = for_storage({"resourceType": "ChargeItem", "meta": {"source": "x"}})
    assert with_meta_json(dump_json(with_own_meta), with_own_meta, "a", "b") is None
