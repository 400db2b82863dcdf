"""FHIR XML out (``to_xml``): our own JSON → XML writer (FHIR R5 §2.6), which keeps every value as
the JSON holds it (decimal precision, instants), writes elements in FHIR order and reads back
through ``parse_xml`` to the same JSON and through fhir.resources' own XML parser."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from engine.codecs.fhir import model_class, parse_json
from engine.codecs.fhir_xml import FHIR_NS, XHTML_NS, parse_xml, to_xml

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "fhir"
JSON_SAMPLES = sorted(SAMPLES.glob("*.json"))
NS = {"f": FHIR_NS, "h": XHTML_NS}


def version_of(path: Path) -> str:
    return "R4B" if path.name.startswith("r4b_") else "R5"


def same(a: Any, b: Any) -> bool:
    """Equality that sees precision: numbers compare by their written form (``2.50`` is not
    ``2.5``, an int ``1`` is a decimal ``1``), booleans are not numbers."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    numbers = (int, Decimal)
    if isinstance(a, numbers) and isinstance(b, numbers):
        if isinstance(a, bool) or isinstance(b, bool):
            return type(a) is type(b) and a == b
        return str(a) == str(b)
    return type(a) is type(b) and a == b


def load(raw: str | bytes) -> dict[str, Any]:
    return parse_json(raw.encode() if isinstance(raw, str) else raw)


def root_of(xml: bytes) -> Any:
    return etree.fromstring(xml)


def without_element_ids(value: Any) -> Any:
    """The JSON without the ``id`` of elements (not of resources): fhir.resources' XML reader
    looks for an ``<id>`` child where FHIR XML has an ``id`` attribute, so it does not see them."""
    if isinstance(value, list):
        return [without_element_ids(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        if key == "id" and "resourceType" not in value:
            continue
        item = without_element_ids(item)
        if key.startswith("_") and isinstance(item, list):
            item = [v or None for v in item]
            if all(v is None for v in item):
                continue
        elif key.startswith("_") and not item:
            continue
        out[key] = item
    return out


def through_fhir_resources(data: dict[str, Any], xml: bytes, version: str) -> None:
    """fhir.resources reads the XML back to the same model as the JSON (element ids aside)."""
    klass = model_class(version, data["resourceType"])
    expected = klass.model_validate(without_element_ids(data)).model_dump()
    assert klass.model_validate_xml(xml).model_dump() == expected


def test_same_sees_precision() -> None:
    assert same(Decimal("1"), 1) and same(Decimal("2.50"), Decimal("2.50"))
    assert not same(Decimal("2.50"), Decimal("2.5")) and not same(True, 1)
    assert not same({"a": [Decimal("1.0")]}, {"a": [1]})


@pytest.mark.parametrize("path", JSON_SAMPLES, ids=lambda p: p.name)
def test_every_json_sample_round_trips(path: Path) -> None:
    """JSON → to_xml → parse_xml gives back the stored JSON, digits included; fhir.resources'
    XML parser reads the same resource."""
    version = version_of(path)
    data = load(path.read_bytes())
    xml = to_xml(data, version)
    assert xml.startswith(b"<?xml version='1.0' encoding='UTF-8'?>")
    back = parse_xml(xml, version)
    assert same(back, data), (back, data)
    through_fhir_resources(data, xml, version)


def test_the_samples_cover_both_versions_and_bundles() -> None:
    names = [p.name for p in JSON_SAMPLES]
    assert any(n.startswith("r4b_bundle") for n in names)
    assert any(n.startswith("r5_bundle") for n in names)
    assert any(n.startswith("r5_batch") for n in names)


DELIVERY = """{
  "resourceType": "SupplyDelivery",
  "meta": {"lastUpdated": "2026-01-15T14:30:13.186Z"},
  "status": "completed",
  "suppliedItem": [
    {"quantity": {"value": 2.50, "unit": "BX"}},
    {"quantity": {"value": 1, "unit": "EA"}},
    {"quantity": {"value": 0.040, "unit": "mL"}},
    {"quantity": {"value": 1.5e3, "unit": "mL"}}
  ],
  "occurrenceDateTime": "2026-01-15T09:30:00.100-05:00"
}"""


def test_decimals_and_instants_are_written_as_the_json_holds_them() -> None:
    """``2.50`` stays ``2.50`` and ``1`` stays ``1`` (not ``2.5`` / ``1.0``); instants and
    dateTimes keep their digits and offset."""
    data = load(DELIVERY)
    xml = to_xml(data)
    values = root_of(xml).xpath("f:suppliedItem/f:quantity/f:value/@value", namespaces=NS)
    assert values == ["2.50", "1", "0.040", "1.5E+3"]
    assert b'<value value="2.50"/>' in xml and b'<value value="1"/>' in xml
    assert b'<lastUpdated value="2026-01-15T14:30:13.186Z"/>' in xml
    assert b'<occurrenceDateTime value="2026-01-15T09:30:00.100-05:00"/>' in xml
    back = parse_xml(xml)
    assert same(back, data)
    assert [str(i["quantity"]["value"]) for i in back["suppliedItem"]] == [
        "2.50",
        "1",
        "0.040",
        "1.5E+3",
    ]
    through_fhir_resources(data, xml, "R5")


def test_a_float_or_bool_is_written_in_its_fhir_form() -> None:
    """A resource parsed without Decimal (floats) still writes; booleans are true/false."""
    data = json.loads(DELIVERY)
    data["suppliedItem"][0]["quantity"]["value"] = 2.5
    data["extension"] = [{"url": "urn:x", "valueBoolean": False}]
    xml = to_xml(data)
    assert b'<value value="2.5"/>' in xml
    assert b'<extension url="urn:x"><valueBoolean value="false"/></extension>' in xml


def test_elements_follow_the_fhir_order_not_the_json_key_order() -> None:
    """Keys in reverse (and scrambled inside complex types) come out in the order of the FHIR
    definition (Resource, DomainResource, then SupplyDelivery's own elements)."""
    data = load(DELIVERY)
    data["identifier"] = [{"value": "X-1", "system": "urn:pou:line"}]
    data["patient"] = {"display": "Doe", "reference": "Patient/p1"}
    data["id"] = "d1"
    data["text"] = {
        "div": '<div xmlns="http://www.w3.org/1999/xhtml">two boxes</div>',
        "status": "generated",
    }
    scrambled = dict(reversed(list(data.items())))
    scrambled["suppliedItem"] = [
        {"quantity": dict(reversed(list(i["quantity"].items())))} for i in data["suppliedItem"]
    ]
    assert next(iter(scrambled)) != "resourceType"
    xml = to_xml(scrambled)
    root = root_of(xml)
    names = [etree.QName(c).localname for c in root]
    assert names == [
        "id",
        "meta",
        "text",
        "identifier",
        "status",
        "patient",
        "suppliedItem",
        "suppliedItem",
        "suppliedItem",
        "suppliedItem",
        "occurrenceDateTime",
    ]
    expected = model_class("R5", "SupplyDelivery").elements_sequence()
    assert sorted(set(names), key=names.index) == [n for n in expected if n in names]
    first = root.find("f:suppliedItem/f:quantity", NS)
    assert [etree.QName(c).localname for c in first] == ["value", "unit"]
    assert [etree.QName(c).localname for c in root.find("f:identifier", NS)] == [
        "system",
        "value",
    ]
    assert [etree.QName(c).localname for c in root.find("f:patient", NS)] == [
        "reference",
        "display",
    ]
    assert [etree.QName(c).localname for c in root.find("f:text", NS)] == ["status", "div"]
    assert same(parse_xml(xml), data)
    through_fhir_resources(data, xml, "R5")


PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "p1",
    "text": {
        "status": "generated",
        "div": '<div xmlns="http://www.w3.org/1999/xhtml"><p>Jane <b>Doe</b> &amp; co</p></div>',
    },
    "contained": [
        {"resourceType": "Organization", "id": "org1", "name": "Clinic"},
    ],
    "extension": [
        {
            "url": "urn:x:birth",
            "extension": [{"url": "part", "valueDecimal": Decimal("3.10")}],
        }
    ],
    "identifier": [{"id": "ident-1", "system": "urn:mrn", "value": "M1"}],
    "active": True,
    "name": [
        {
            "family": "Doe",
            "given": ["Jane", None, "Q"],
            "_given": [
                None,
                {"extension": [{"url": "urn:x:absent", "valueCode": "unknown"}]},
                {"id": "g3"},
            ],
        }
    ],
    "gender": "female",
    "_birthDate": {
        "extension": [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                "valueCode": "unknown",
            }
        ]
    },
    "multipleBirthInteger": 2,
    "managingOrganization": {"reference": "#org1"},
}


def test_attributes_primitive_extensions_narrative_and_contained() -> None:
    """``id`` and ``url`` are attributes, ``_name`` gives the id/extensions of a primitive
    (aligned in arrays, nulls allowed), the div is XHTML and contained resources are wrapped;
    everything reads back to the same JSON."""
    xml = to_xml(PATIENT)
    root = root_of(xml)
    assert root.tag == f"{{{FHIR_NS}}}Patient" and root.nsmap == {None: FHIR_NS}
    assert root.find("f:id", NS).get("value") == "p1"  # a resource's id is an element
    assert root.find("f:identifier", NS).get("id") == "ident-1"
    assert root.find("f:identifier/f:id", NS) is None
    ext = root.find("f:extension", NS)
    assert ext.get("url") == "urn:x:birth" and ext.find("f:url", NS) is None
    assert ext.find("f:extension/f:valueDecimal", NS).get("value") == "3.10"
    given = root.findall("f:name/f:given", NS)
    assert [g.get("value") for g in given] == ["Jane", None, "Q"]
    assert given[1].find("f:extension/f:valueCode", NS).get("value") == "unknown"
    assert given[2].get("id") == "g3"
    birth = root.find("f:birthDate", NS)
    assert birth.get("value") is None and len(birth) == 1
    div = root.find("f:text/h:div", NS)
    assert div is not None and div.find("h:p/h:b", NS).text == "Doe"
    assert root.find("f:contained/f:Organization/f:name", NS).get("value") == "Clinic"
    assert root.find("f:active", NS).get("value") == "true"
    assert root.find("f:multipleBirthInteger", NS).get("value") == "2"
    back = parse_xml(xml)
    assert same(back, PATIENT), back
    through_fhir_resources(PATIENT, xml, "R5")


def test_bundle_entries_wrap_their_resource() -> None:
    """Bundle.entry.resource is ``<resource><SupplyDelivery>…</SupplyDelivery></resource>``."""
    bundle = load((SAMPLES / "r5_bundle_implant.json").read_bytes())
    root = root_of(to_xml(bundle))
    resources = root.findall("f:entry/f:resource", NS)
    assert len(resources) == len(bundle["entry"])
    for wrapper, entry in zip(resources, bundle["entry"], strict=True):
        (inner,) = list(wrapper)
        assert inner.tag == f"{{{FHIR_NS}}}{entry['resource']['resourceType']}"


def test_r4b_uses_the_r4b_models() -> None:
    """R4B's SupplyDelivery.suppliedItem is single: written once; R5's list is not R4B."""
    data = load((SAMPLES / "r4b_supplydelivery_code.json").read_bytes())
    root = root_of(to_xml(data, "R4B"))
    assert len(root.findall("f:suppliedItem", NS)) == 1
    with pytest.raises(ValueError, match="array"):
        to_xml(load(DELIVERY), "R4B")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bogus": 1}, "unknown element 'bogus'"),
        ({"_patient": {"id": "x"}}, "unknown element '_patient'"),
        ({"status": ["completed"]}, "single value"),
        ({"identifier": {"value": "x"}}, "expected an array"),
        ({"suppliedItem": [{"quantity": {"value": {"x": 1}}}]}, "primitive value"),
        ({"suppliedItem": [{"quantity": {"value": Decimal("NaN")}}]}, "finite"),
        ({"partOf": [{"reference": "a"}, None]}, "expected an object"),
        ({"text": {"status": "generated", "div": "<p>x</p>"}}, "<div>"),
        ({"text": {"status": "generated", "div": "<div"}}, "XHTML"),
        (
            {
                "text": {
                    "status": "generated",
                    "div": '<!DOCTYPE d [<!ENTITY e "x">]><div xmlns="' + XHTML_NS + '">&e;</div>',
                }
            },
            "DOCTYPE",
        ),
    ],
)
def test_what_xml_cannot_carry_is_a_value_error(change: dict[str, Any], message: str) -> None:
    """An unknown element, a value of the wrong shape or a bad narrative is a ValueError (the
    HTTP source then answers in JSON)."""
    with pytest.raises(ValueError, match=message):
        to_xml({**load(DELIVERY), **change})


def test_a_primitive_array_needs_aligned_extensions() -> None:
    data = load(DELIVERY)
    data["meta"] = {"profile": ["urn:a", "urn:b"], "_profile": [None]}
    with pytest.raises(ValueError, match="differ in length"):
        to_xml(data)
    data["meta"] = {"profile": ["urn:a", None]}
    with pytest.raises(ValueError, match="needs a value"):
        to_xml(data)
