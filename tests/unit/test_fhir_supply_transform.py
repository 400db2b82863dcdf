"""FHIR SupplyDelivery → ledger consumption events and SupplyRequest → requisition (issue 5):
R5 and R4B shapes, items by code and by Device UDI, unit conversion, Bundle resolution,
statuses, lot/serial rules, stable business keys, the ledger's booking of requisition requests
and credits, the ChargeItem sent back to billing, and the shipped samples."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from engine.domains.ledger.billing import charge_item
from engine.domains.ledger.domain import LEDGER, repository
from engine.domains.ledger.records import ConsumptionEvent, LedgerRoutes, RequisitionRequest
from engine.domains.ledger.rules import book_events
from engine.errors import CodecError, MappingMiss, MissingField, MissingLotSerial, TransformError
from engine.mappings import load_mappings
from engine.model import Inbound
from engine.registry import REGISTRY
from engine.store import SqliteStore
from engine.transforming import TransformContext
from transforms import fhir_supply_request, fhir_supply_to_ledger

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples" / "fhir"
MAPPINGS, _ERRORS = load_mappings(ROOT / "mappings", ROOT)


def sample(name: str) -> dict[str, Any]:
    return json.loads((SAMPLES / name).read_text(encoding="utf-8"))


def context(spec: Any = fhir_supply_to_ledger.SPEC, **options: Any) -> TransformContext:
    opts = dataclasses.replace(spec.defaults(), **options)
    return TransformContext(opts, MAPPINGS, "fhir_supply", "m-1", "c-1")


def deliver(msg: dict[str, Any], **options: Any) -> tuple[dict[str, Any], list[Any]]:
    ctx = context(**options)
    result = fhir_supply_to_ledger.run(msg, ctx)
    return result, ctx.events


def transaction(*resources: dict[str, Any], ident: str = "B-1") -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "identifier": {"system": "urn:test:bundle", "value": ident},
        "type": "transaction",
        "entry": [
            {"fullUrl": f"urn:uuid:00000000-0000-4000-8000-{i:012d}", "resource": r}
            for i, r in enumerate(resources)
        ],
    }


# --------------------------------------------------------------------------- items by code


def test_r5_delivery_by_charge_code_books_one_event_with_its_references() -> None:
    """Foley trays by CDM code, 2 {each}: item, location (Location/4WEST → LOC-4W-SUPPLY),
    encounter and account from the extensions, patient MRN from the reference's identifier,
    the CDM price, the business key identifier + item + date."""
    result, (ev,) = deliver(sample("r5_supplydelivery_code.json"))
    assert (ev.kind, ev.item_id, ev.location_id, ev.quantity, ev.uom) == (
        "usage",
        "ITEM-160005",
        "LOC-4W-SUPPLY",
        Decimal(2),
        "EA",
    )
    assert (ev.encounter, ev.patient, ev.service_time, ev.cost_center) == (
        "ENC-112233",
        "MRN22222",
        "20260116",
        "CC-6040",
    )
    assert (ev.charge_code, ev.unit_price, ev.billing_quantity, ev.chargeable) == (
        "272100050",
        Decimal("44.00"),
        Decimal(2),
        True,
    )
    assert ev.business_key == "urn:genhosp:pou:transaction|PX-4w000311|ITEM-160005|20260116"
    assert ev.source_line == "PX-4w000311"
    assert ev.encounter_ref == {"reference": "Encounter/ENC-112233"}
    assert ev.account == {
        "reference": "Account/ACCT-112233",
        "identifier": {"system": "urn:genhosp:account", "value": "A-112233"},
    }
    assert ev.source_ref == {
        "reference": "SupplyDelivery/pou-4w-000311",
        "identifier": {"system": "urn:genhosp:pou:transaction", "value": "PX-4w000311"},
    }
    assert result["deliveries"][0]["booked"] == [ev.business_key]


def test_r4b_delivery_by_item_id_and_gln_location() -> None:
    """R4B: one suppliedItem object, the item by our item system, the destination by its GLN
    identifier (ED supply room); read by `auto` and by `version: R4B`."""
    msg = sample("r4b_supplydelivery_code.json")
    for version in ("auto", "R4B"):
        _, (ev,) = deliver(msg, version=version)
        assert (ev.item_id, ev.location_id, ev.encounter, ev.patient) == (
            "ITEM-160008",
            "LOC-ED-SUPPLY",
            "ENC-330022",
            "MRN55555",
        )
        assert ev.source_line == "PX-ed000042"


def test_a_fixed_version_refuses_the_other_shape() -> None:
    """version R5 refuses an R4B suppliedItem object and R4B refuses the R5 list."""
    with pytest.raises(TransformError, match=r"suppliedItem: expected a list \(R5\)"):
        deliver(sample("r4b_supplydelivery_code.json"), version="R5")
    with pytest.raises(TransformError, match=r"suppliedItem: expected one object \(R4B\)"):
        deliver(sample("r5_supplydelivery_code.json"), version="R4B")


def test_codings_naming_different_items_are_an_error() -> None:
    """A GTIN coding and a CDM coding that name different items are refused, not guessed."""
    msg = sample("r5_supplydelivery_billing_unit.json")
    msg["suppliedItem"][0]["itemCodeableConcept"]["coding"][1]["code"] = "272100050"
    with pytest.raises(TransformError, match="codings name different items"):
        deliver(msg)


def test_no_known_coding_system_says_which_systems_are_expected() -> None:
    msg = sample("r5_supplydelivery_code.json")
    msg["suppliedItem"][0]["itemCodeableConcept"]["coding"][0]["system"] = "urn:other:cdm"
    with pytest.raises(TransformError, match=r"expected a coding of urn:wharf:item .*urn:other"):
        deliver(msg)


def test_coding_systems_are_options() -> None:
    """item_system / cdm_system are configurable: a site's own CDM system URI works."""
    msg = sample("r5_supplydelivery_code.json")
    msg["suppliedItem"][0]["itemCodeableConcept"]["coding"][0]["system"] = "urn:site:cdm"
    _, (ev,) = deliver(msg, cdm_system="urn:site:cdm")
    assert ev.item_id == "ITEM-160005"


def test_unknown_gtin_is_a_mapping_miss_on_the_items_table() -> None:
    msg = sample("r5_supplydelivery_billing_unit.json")
    msg["suppliedItem"][0]["itemCodeableConcept"]["coding"] = [
        {"system": "urn:oid:1.3.160", "code": "00614141999989"}
    ]
    with pytest.raises(MappingMiss) as err:
        deliver(msg)
    assert (err.value.table, err.value.key) == ("items", "GTIN 00614141999989")


# --------------------------------------------------------------------------- units


def test_billing_unit_quantity_is_converted_to_the_stocking_unit() -> None:
    """4 EA of a dressing stocked in boxes of 10: 0.4 BX off the shelf, 4 EA charged."""
    _, (ev,) = deliver(sample("r5_supplydelivery_billing_unit.json"))
    assert (ev.item_id, ev.quantity, ev.uom) == ("ITEM-160010", Decimal("0.4"), "BX")
    assert (ev.billing_quantity, ev.billing_uom, ev.unit_price) == (
        Decimal(4),
        "EA",
        Decimal("17.00"),
    )


def test_ucum_each_and_a_box_gtin_without_unit() -> None:
    """{each} means EA; a box GTIN with a unitless quantity counts boxes (1 BX = 10 EA
    charged, 1 BX stocked); CA converts through the table (1 CA = 10 BX)."""
    msg = sample("r5_supplydelivery_billing_unit.json")
    line = msg["suppliedItem"][0]
    line["itemCodeableConcept"]["coding"] = [
        {"system": "https://www.gs1.org/gtin", "code": "10614141102478"}
    ]
    line["quantity"] = {"value": 1}
    _, (ev,) = deliver(msg)
    assert (ev.quantity, ev.uom, ev.billing_quantity, ev.billing_uom) == (
        Decimal(1),
        "BX",
        Decimal(10),
        "EA",
    )
    line["quantity"] = {"value": 1, "unit": "case", "code": "CA"}
    _, (ev,) = deliver(msg)
    assert (ev.quantity, ev.billing_quantity) == (Decimal(10), Decimal(100))
    line["quantity"] = {"value": 2, "system": "http://unitsofmeasure.org", "code": "{each}"}
    _, (ev,) = deliver(msg)
    assert (ev.quantity, ev.billing_quantity) == (Decimal("0.2"), Decimal(2))


def test_a_unit_without_conversion_is_a_mapping_miss() -> None:
    msg = sample("r5_supplydelivery_code.json")
    msg["suppliedItem"][0]["quantity"] = {"value": 1, "code": "BX"}  # Foley trays: no BX row
    with pytest.raises(MappingMiss, match="ITEM-160005:BX->EA"):
        deliver(msg)


def test_quantity_is_required_and_positive() -> None:
    msg = sample("r5_supplydelivery_code.json")
    del msg["suppliedItem"][0]["quantity"]
    with pytest.raises(MissingField, match=r"suppliedItem\[0\].quantity.value"):
        deliver(msg)
    msg["suppliedItem"][0]["quantity"] = {"value": 0, "code": "{each}"}
    with pytest.raises(TransformError, match="must be a positive number"):
        deliver(msg)


# --------------------------------------------------------------------------- devices, bundles


def test_r5_implant_bundle_resolves_devices_and_takes_the_procedure_encounter() -> None:
    """Transaction Bundle: itemReference urn:uuid → Device; its UDI DI is a GTIN of the items
    table; lot/serial/expiry from the Device (the cement's lot from carrierHRF); encounter,
    procedure code and performer from the Procedure that implanted the device."""
    _, (knee, cement) = deliver(sample("r5_bundle_implant.json"))
    assert (knee.item_id, knee.lot, knee.serial, knee.expiry) == (
        "ITEM-100999",
        "KN5R2025",
        "SN88412",
        "20300630",
    )
    assert knee.udi == "(01)00614141101597(17)300630(10)KN5R2025(21)SN88412"
    assert (knee.encounter, knee.patient, knee.procedure, knee.performer) == (
        "ENC-112233",
        "MRN22222",
        "27447",
        "1234567893",
    )
    assert knee.hcpcs == "C1776"
    assert knee.device_ref == {
        "identifier": {"system": "urn:genhosp:or:implant-log", "value": "CASE-112233-1-IMP1"},
        "type": "Device",
    }
    assert knee.procedure_ref == {
        "identifier": {"system": "urn:genhosp:or:case", "value": "CASE-112233"},
        "type": "Procedure",
    }
    assert (cement.item_id, cement.quantity, cement.lot, cement.serial, cement.expiry) == (
        "ITEM-150046",
        Decimal(2),
        "BC40G2611",
        None,
        "20270930",
    )
    assert cement.device_ref is None  # a Device without identifier: only its item goes out
    assert [knee.source_line, cement.source_line] == ["CASE-112233-1-1", "CASE-112233-1-2"]


def test_r4b_implant_bundle_box_gtin_device_with_each_quantity() -> None:
    """R4B Bundle: the Device's DI is the screw's box GTIN, the quantity says 2 {each}: 2 EA."""
    _, (ev,) = deliver(sample("r4b_bundle_implant.json"), version="R4B")
    assert (ev.item_id, ev.quantity, ev.uom, ev.lot, ev.expiry) == (
        "ITEM-100123",
        Decimal(2),
        "EA",
        "LOT2025A",
        "20290630",
    )
    assert (ev.encounter, ev.procedure) == ("ENC-998877", "27766")


def test_the_procedure_that_references_this_delivery_wins_over_other_procedures() -> None:
    """With two Procedures in the Bundle, the encounter comes from the one whose focalDevice
    is this delivery's Device, not from the other."""
    bundle = sample("r5_bundle_implant.json")
    other = copy.deepcopy(bundle["entry"][2])
    other["fullUrl"] = "urn:uuid:7d0c2a4e-1f4b-4c58-9d3e-2b6f0a9c1199"
    other["resource"]["encounter"] = {"reference": "Encounter/ENC-OTHER"}
    other["resource"]["focalDevice"] = []
    other["resource"]["used"] = []
    bundle["entry"].insert(0, other)
    _, events = deliver(bundle)
    assert {ev.encounter for ev in events} == {"ENC-112233"}


def test_device_by_local_reference_and_absolute_url() -> None:
    """itemReference `Device/id` and an absolute URL find the Bundle entry with that id."""
    bundle = sample("r5_bundle_implant.json")
    bundle["entry"][0]["resource"]["id"] = "knee-1"
    line = bundle["entry"][3]["resource"]["suppliedItem"][0]
    for ref in ("Device/knee-1", "https://ehr.example.org/fhir/Device/knee-1"):
        line["itemReference"] = {"reference": ref}
        _, events = deliver(bundle)
        assert events[0].serial == "SN88412"


def test_contained_device_in_a_batch_entry() -> None:
    """Batch entries stand alone: a contained #sheath resolves (lot from the Device), and
    each delivery of the batch books its own event."""
    result, (sheath, pack) = deliver(sample("r5_batch.json"))
    assert (sheath.item_id, sheath.lot, sheath.encounter) == (
        "ITEM-150034",
        "SH6F2510",
        "ENC-550001",
    )
    assert (pack.item_id, pack.chargeable, pack.encounter) == ("ITEM-201001", False, "ENC-550002")
    assert len(result["deliveries"]) == 2


def test_batch_entries_do_not_resolve_each_other() -> None:
    """In a batch, a reference to another entry's fullUrl is not followed (FHIR batch entries
    are independent): the delivery is refused, saying what was expected."""
    batch = sample("r5_bundle_implant.json")
    batch["type"] = "batch"
    with pytest.raises(TransformError, match="expected a contained Device or a Device entry"):
        deliver(batch)


def test_item_reference_to_something_else_than_a_device() -> None:
    msg = sample("r5_supplydelivery_code.json")
    msg["contained"] = [{"resourceType": "Medication", "id": "m1"}]
    msg["suppliedItem"][0] = {"quantity": {"value": 1}, "itemReference": {"reference": "#m1"}}
    with pytest.raises(TransformError, match=r"expected a Device \(got Medication\)"):
        deliver(msg)


# --------------------------------------------------------------------------- statuses


@pytest.mark.parametrize("status", ["in-progress", "abandoned"])
def test_not_completed_deliveries_book_nothing_and_say_why(status: str) -> None:
    msg = sample("r5_supplydelivery_code.json")
    msg["status"] = status
    result, events = deliver(msg)
    assert events == []
    (entry,) = result["deliveries"]
    assert (entry["status"], entry["booked"]) == (status, [])
    assert "only a completed SupplyDelivery is consumption" in entry["why"]


def test_a_status_outside_the_binding_is_an_error() -> None:
    msg = sample("r5_supplydelivery_code.json")
    msg["status"] = "bogus"
    with pytest.raises(TransformError, match=r"SupplyDelivery.status: expected one of .*'bogus'"):
        deliver(msg)


def test_entered_in_error_is_a_credit_of_the_original_line() -> None:
    """The credit's key is the original key + |CD; it reverses the original and only counts
    when the original was booked; the lot rule does not hold it back."""
    _, (original,) = deliver(sample("r5_supplydelivery_code.json"))
    _, (credit,) = deliver(sample("r5_supplydelivery_entered_in_error.json"))
    assert (credit.kind, credit.reverses, credit.reverses_if_booked) == (
        "credit",
        original.business_key,
        True,
    )
    assert credit.business_key == original.business_key + "|CD"
    assert credit.quantity == original.quantity
    msg = sample("r5_batch.json")["entry"][0]["resource"]
    msg["status"] = "entered-in-error"
    msg["contained"][0].pop("lotNumber")
    msg["contained"][0]["udiCarrier"][0].pop("carrierHRF")
    _, (ev,) = deliver(msg)
    assert ev.kind == "credit" and ev.lot is None


# --------------------------------------------------------------------------- lot / serial


def test_lot_controlled_item_by_code_alone_is_held() -> None:
    msg = sample("r5_batch.json")["entry"][1]["resource"]
    msg["suppliedItem"][0]["itemCodeableConcept"]["coding"] = [
        {"system": "urn:wharf:cdm", "code": "272100039"}
    ]
    with pytest.raises(MissingLotSerial) as err:
        deliver(msg)
    assert (err.value.item, err.value.line, err.value.missing) == (
        "ITEM-150039",
        "PX-ca190002",
        ["lot"],
    )
    assert "Device.lotNumber/serialNumber or udiCarrier.carrierHRF" in str(err.value)


def test_serial_controlled_implant_without_serial_is_held() -> None:
    """The knee is lot- and serial-controlled: without serialNumber and without AI (21) in
    the carrier, the delivery is held naming the serial."""
    bundle = sample("r5_bundle_implant.json")
    device = bundle["entry"][0]["resource"]
    device.pop("serialNumber")
    device["udiCarrier"][0]["carrierHRF"] = "(01)00614141101597(17)300630(10)KN5R2025"
    with pytest.raises(MissingLotSerial) as err:
        deliver(bundle)
    assert (err.value.item, err.value.missing) == ("ITEM-100999", ["serial"])


def test_bad_udi_carrier_is_an_error_naming_the_problem() -> None:
    bundle = sample("r5_bundle_implant.json")
    bundle["entry"][0]["resource"]["udiCarrier"][0]["carrierHRF"] = "(01)00614141101598"
    with pytest.raises(TransformError, match="check digit"):
        deliver(bundle)


# --------------------------------------------------------------------------- encounter


def test_encounter_is_required() -> None:
    msg = sample("r5_supplydelivery_code.json")
    msg["extension"] = [e for e in msg["extension"] if not e["url"].endswith("encounter")]
    with pytest.raises(MissingField, match="urn:wharf:extension:encounter"):
        deliver(msg)


def test_extension_urls_are_options() -> None:
    msg = sample("r5_supplydelivery_code.json")
    for ext in msg["extension"]:
        ext["url"] = ext["url"].replace("urn:wharf:extension:", "https://site.example/fhir/")
    _, (ev,) = deliver(
        msg,
        encounter_extension="https://site.example/fhir/encounter",
        account_extension="https://site.example/fhir/account",
    )
    assert (ev.encounter, ev.account["reference"]) == ("ENC-112233", "Account/ACCT-112233")


# --------------------------------------------------------------------------- business keys


def test_business_keys_are_stable_across_resends_and_bundles() -> None:
    """The same delivery alone, again, and inside a transaction Bundle with another Bundle
    identifier gives the same business keys (so the ledger books it once)."""
    msg = sample("r5_supplydelivery_code.json")
    first = [ev.business_key for ev in deliver(msg)[1]]
    again = [ev.business_key for ev in deliver(copy.deepcopy(msg))[1]]
    in_bundle = [ev.business_key for ev in deliver(transaction(msg, ident="B-77"))[1]]
    assert first == again == in_bundle
    other_day = copy.deepcopy(msg)
    other_day["occurrenceDateTime"] = "2026-01-17T08:00:00-05:00"
    assert deliver(other_day)[1][0].business_key != first[0]


def test_two_lines_of_the_same_item_get_distinct_keys() -> None:
    msg = sample("r5_supplydelivery_code.json")
    msg["suppliedItem"].append(copy.deepcopy(msg["suppliedItem"][0]))
    _, (one, two) = deliver(msg)
    assert two.business_key == one.business_key + "|2"
    assert (one.source_line, two.source_line) == ("PX-4w000311-1", "PX-4w000311-2")


def test_identifier_is_required_and_selectable_by_system() -> None:
    msg = sample("r5_supplydelivery_code.json")
    msg["identifier"].insert(0, {"system": "urn:cabinet:local", "value": "77"})
    _, (ev,) = deliver(msg, identifier_system="urn:genhosp:pou:transaction")
    assert ev.business_key.startswith("urn:genhosp:pou:transaction|PX-4w000311|")
    del msg["identifier"]
    with pytest.raises(MissingField, match=r"SupplyDelivery\.identifier"):
        deliver(msg)


def test_other_inputs_are_refused() -> None:
    with pytest.raises(TransformError, match=r"expected a SupplyDelivery, .*\(got ChargeItem\)"):
        deliver({"resourceType": "ChargeItem"})
    with pytest.raises(TransformError, match="holds no SupplyDelivery or SupplyRequest"):
        deliver(transaction({"resourceType": "Device"}))
    with pytest.raises(TransformError, match="expected transaction or batch"):
        deliver({"resourceType": "Bundle", "type": "searchset", "entry": []})


# --------------------------------------------------------------------------- SupplyRequest


def test_r5_supply_request_becomes_a_requisition_request() -> None:
    """2 BX of sheaths for the cath lab: 10 EA in the stocking unit, 2 BX as ordered, need-by
    from occurrenceDateTime; the same through the delivery transform's dispatch."""
    sr = sample("r5_supplyrequest.json")
    ctx = context(fhir_supply_request.SPEC)
    result = fhir_supply_request.run(sr, ctx)
    (req,) = ctx.events
    assert isinstance(req, RequisitionRequest)
    assert (req.business_key, req.item_id, req.location_id) == (
        "urn:genhosp:cabinet:request|RQ-CATH1-0119-01",
        "ITEM-150034",
        "LOC-CATH-1",
    )
    assert (req.quantity, req.uom, req.order_quantity, req.order_uom) == (
        Decimal(10),
        "EA",
        Decimal(2),
        "BX",
    )
    assert (req.need_by, req.priority, req.requester) == (
        "2026-01-20",
        "urgent",
        "PractitionerRole/cath-charge-nurse",
    )
    assert result["requests"][0]["booked"] is True
    _, (same,) = deliver(sr)
    assert same == req


def test_r4b_supply_request_by_case_gtin() -> None:
    """R4B itemCodeableConcept with the case GTIN, 1 CA: 10 BX in the stocking unit; deliverTo
    by GLN; need-by is the end of the occurrence period."""
    ctx = context(fhir_supply_request.SPEC, version="R4B")
    fhir_supply_request.run(sample("r4b_supplyrequest.json"), ctx)
    (req,) = ctx.events
    assert (req.item_id, req.location_id, req.quantity, req.uom, req.need_by) == (
        "ITEM-160010",
        "LOC-4W-SUPPLY",
        Decimal(10),
        "BX",
        "2026-01-19",
    )
    with pytest.raises(TransformError, match="expected the R5 shape"):
        fhir_supply_request.run(
            sample("r4b_supplyrequest.json"), context(fhir_supply_request.SPEC, version="R5")
        )


@pytest.mark.parametrize("status", ["draft", "suspended", "cancelled", "completed"])
def test_only_active_requests_are_booked(status: str) -> None:
    sr = sample("r5_supplyrequest.json")
    sr["status"] = status
    ctx = context(fhir_supply_request.SPEC)
    result = fhir_supply_request.run(sr, ctx)
    assert ctx.events == []
    assert result["requests"][0]["booked"] is False


def test_request_needs_quantity_and_deliver_to() -> None:
    sr = sample("r5_supplyrequest.json")
    del sr["deliverTo"]
    with pytest.raises(MissingField, match=r"SupplyRequest\.deliverTo"):
        fhir_supply_request.run(sr, context(fhir_supply_request.SPEC))
    sr = sample("r5_supplyrequest.json")
    del sr["quantity"]
    with pytest.raises(MissingField, match=r"SupplyRequest\.quantity"):
        fhir_supply_request.run(sr, context(fhir_supply_request.SPEC))
    with pytest.raises(TransformError, match=r"expected a SupplyRequest.*\(got SupplyDelivery\)"):
        fhir_supply_request.run(
            sample("r5_supplydelivery_code.json"), context(fhir_supply_request.SPEC)
        )


# --------------------------------------------------------------------------- ledger booking


class Ledger:
    """A real store; ``book`` ingests a message and books ``events`` in its commit."""

    routes = LedgerRoutes(issue="erp", charge="billing", requisition="req")

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp())
        self.store = SqliteStore(self.dir / "w.db").open()
        self.store.migrate("ledger", LEDGER.migrations("sqlite"))
        self.n = 0

    def close(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def book(self, events: list[Any]) -> list[dict[str, Any]]:
        self.n += 1
        now = time.time()
        item = Inbound("fhir", "t", f"msg {self.n}".encode(), "application/fhir+json", now)
        (result,) = self.store.ingest_batch([item], now)
        mid = result.message_id

        with self.store.transaction("book") as tx:
            out = book_events(
                repository(tx),
                message_id=mid,
                correlation_id=mid,
                channel="fhir",
                events=events,
                routes=self.routes,
                policies={},
                charge_payload=lambda ev: charge_item(ev, "R5"),
                now=now,
            )
            tx.finish(mid, status="sent", now=now, outbound=out)
        return self.store.deliveries_for(mid)

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return self.store._conn().execute(sql).fetchall()


@pytest.fixture
def ledger() -> Any:
    led = Ledger()
    yield led
    led.close()


def test_a_requisition_request_is_booked_and_sent_once(ledger: Ledger) -> None:
    """The ledger records an open requisition with the request's key and queues one delivery
    to the requisition destination; the same request again records and sends nothing."""
    ctx = context(fhir_supply_request.SPEC)
    fhir_supply_request.run(sample("r5_supplyrequest.json"), ctx)
    (delivery,) = ledger.book(ctx.events)
    assert delivery["destination"] == "req"
    assert ledger.book(ctx.events) == []
    assert ledger.rows(
        "SELECT location_id, item_id, quantity, uom, status, business_key FROM requisitions"
    ) == [
        (
            "LOC-CATH-1",
            "ITEM-150034",
            "10",
            "EA",
            "open",
            "urn:genhosp:cabinet:request|RQ-CATH1-0119-01",
        )
    ]


def test_one_erp_issue_per_encounter_of_a_message(ledger: Ledger) -> None:
    """A Bundle with deliveries for two encounters gives two ERP issues, each under its own
    encounter with its own lines (the HL7 path, one encounter per message, still gets one)."""
    _, events = deliver(sample("r5_batch.json"))
    deliveries = ledger.book(events)
    issues = [json.loads(d["payload"]) for d in deliveries if d["destination"] == "erp"]
    assert [(i["encounter"], [ln["item_id"] for ln in i["lines"]]) for i in issues] == [
        ("ENC-550001", ["ITEM-150034"]),
        ("ENC-550002", ["ITEM-201001"]),
    ]


def test_entered_in_error_reverses_only_a_booked_delivery(ledger: Ledger) -> None:
    """A credit for a delivery never booked moves nothing; after the delivery was booked, the
    credit puts the stock back and charges a negative quantity, once."""
    _, usage = deliver(sample("r5_supplydelivery_code.json"))
    _, credit = deliver(sample("r5_supplydelivery_entered_in_error.json"))
    assert ledger.book(credit) == []
    assert ledger.rows("SELECT COUNT(*) FROM consumption_events") == [(0,)]
    assert len(ledger.book(usage)) == 2  # issue + charge
    deliveries = ledger.book(credit)
    assert sorted(d["destination"] for d in deliveries) == ["billing", "erp"]
    assert ledger.book(credit) == []
    assert ledger.rows("SELECT quantity FROM onhand WHERE item_id = 'ITEM-160005'") == [("0",)]
    assert ledger.rows("SELECT transaction_type, quantity FROM charges ORDER BY id") == [
        ("CG", "2"),
        ("CD", "2"),
    ]


# --------------------------------------------------------------------------- ChargeItem out


def _charge(version: str, name: str = "r5_bundle_implant.json") -> dict[str, Any]:
    _, events = deliver(sample(name))
    return json.loads(charge_item(events[0], version)[0])


def test_charge_item_r5_for_a_fhir_delivery() -> None:
    """R5: encounter and account as sent, service → SupplyDelivery and Procedure
    (CodeableReference), product = item concept + Device, CDM + HCPCS codes, quantity in the
    billing unit, unit and total price components from the CDM; validates with R5 models."""
    from fhir.resources.chargeitem import ChargeItem

    doc = _charge("R5")
    ChargeItem.model_validate(doc)
    assert doc["encounter"] == {"reference": "Encounter/ENC-112233"}
    assert doc["subject"]["reference"] == "Patient/pat-22222"
    assert doc["account"] == [{"reference": "Account/ACCT-112233"}]
    assert [s["reference"]["type"] for s in doc["service"]] == ["SupplyDelivery", "Procedure"]
    assert doc["service"][0]["reference"]["identifier"]["value"] == "CASE-112233-1"
    assert doc["product"][0]["reference"]["identifier"]["value"] == "CASE-112233-1-IMP1"
    assert doc["product"][0]["concept"]["coding"][0]["code"] == "ITEM-100999"
    assert [c["code"] for c in doc["code"]["coding"]] == ["278000456", "C1776"]
    assert doc["quantity"] == {"value": 1, "unit": "EA"}
    assert doc["unitPriceComponent"]["amount"] == {"value": 5775.0, "currency": "USD"}
    assert doc["totalPriceComponent"]["amount"]["value"] == 5775.0
    assert doc["costCenter"]["identifier"]["value"] == "CC-7010"


def test_charge_item_r4b_for_a_fhir_delivery() -> None:
    """R4B: context for the encounter, service as plain References, productReference to the
    Device, priceOverride the total; validates with R4B models."""
    from fhir.resources.R4B.chargeitem import ChargeItem

    doc = _charge("R4B")
    ChargeItem.model_validate(doc)
    assert doc["context"] == {"reference": "Encounter/ENC-112233"}
    assert [s["type"] for s in doc["service"]] == ["SupplyDelivery", "Procedure"]
    assert doc["productReference"]["identifier"]["value"] == "CASE-112233-1-IMP1"
    assert doc["priceOverride"] == {"value": 5775.0, "currency": "USD"}
    assert "encounter" not in doc and "unitPriceComponent" not in doc


def test_charge_item_writes_exact_decimals_and_credits_negative() -> None:
    """Amounts are the Decimal digits (88.00, not 88.0); a credit is a negative quantity and
    total under its own identifier."""
    _, (ev,) = deliver(sample("r5_supplydelivery_code.json"))
    text = charge_item(ev, "R5")[0].decode()
    assert '"value": 88.00' in text and '"value": 44.00' in text
    _, (credit,) = deliver(sample("r5_supplydelivery_entered_in_error.json"))
    doc = json.loads(charge_item(credit, "R4B")[0])
    assert doc["quantity"]["value"] == -2
    assert doc["priceOverride"]["value"] == -88.0
    assert doc["identifier"][0]["value"].endswith("|CD")


def test_hl7_events_keep_their_charge_item() -> None:
    """An event without FHIR references (HL7) gets the ChargeItem it always had: encounter as
    an identifier, no service, account or price components."""
    ev = ConsumptionEvent(
        business_key="CU-1|ITEM-100789|20260116",
        kind="usage",
        item_id="ITEM-100789",
        location_id="LOC-CATH-1",
        quantity=Decimal(1),
        uom="EA",
        encounter="ENC-445566",
        service_time="20260116",
        chargeable=True,
        charge_code="278000789",
        unit_price=Decimal("2875.00"),
    )
    doc = json.loads(charge_item(ev, "R5")[0])
    assert sorted(doc) == [
        "code",
        "encounter",
        "identifier",
        "occurrenceDateTime",
        "product",
        "quantity",
        "resourceType",
        "status",
        "subject",
    ]
    assert doc["encounter"] == {
        "identifier": {"system": "urn:wharf:encounter", "value": "ENC-445566"}
    }


# --------------------------------------------------------------------------- samples


GOOD = sorted(p.name for p in SAMPLES.glob("*.json"))


@pytest.mark.parametrize("name", GOOD)
def test_every_good_sample_validates_with_fhir_resources(name: str) -> None:
    """Each JSON sample validates with the fhir.resources models of its version (r5_ / r4b_),
    and not with the other version's (so the version in its name is the real one)."""
    from fhir.resources import get_fhir_model_class as r5
    from fhir.resources.R4B import get_fhir_model_class as r4b

    doc = sample(name)
    own, other = (r4b, r5) if name.startswith("r4b_") else (r5, r4b)
    own(doc["resourceType"]).model_validate(doc)
    with pytest.raises(ValueError):
        other(doc["resourceType"]).model_validate(doc)


def test_xml_sample_is_valid_fhir_xml_and_books_like_json() -> None:
    """The XML SupplyDelivery parses with fhir.resources (R5) and, as a dict, books the NPWT
    canister at the orthopedic unit."""
    from fhir.resources.supplydelivery import SupplyDelivery

    model = SupplyDelivery.model_validate_xml((SAMPLES / "r5_supplydelivery.xml").read_bytes())
    doc = json.loads(model.model_dump_json())
    assert doc["identifier"][0]["value"] == "PX-3e000128"
    _, (ev,) = deliver(doc)
    assert (ev.item_id, ev.location_id, ev.encounter, ev.account["reference"]) == (
        "ITEM-160014",
        "LOC-3E-SUPPLY",
        "ENC-220011",
        "Account/ACCT-220011",
    )


@pytest.mark.parametrize(
    "name, expected",
    [
        ("supplydelivery_status_bogus.json", "SupplyDelivery.status"),
        ("supplyrequest_no_quantity.json", "SupplyRequest.quantity"),
        ("not_json.txt", "FHIR JSON"),
        ("bundle_one_bad_entry.json", "Bundle.entry[1].resource.expirationDate"),
    ],
)
def test_broken_samples_are_refused_by_the_codec(name: str, expected: str) -> None:
    reg = REGISTRY.get("codec", "fhir")
    codec = reg.factory(reg.spec.defaults())
    with pytest.raises(CodecError) as err:
        codec.decode((SAMPLES / "broken" / name).read_bytes())
    assert expected in str(err.value)
