"""The ``workday`` destination: supplier invoices, requisitions and stock issues sent to Workday's
SOAP web services (field by field in docs/erp-profiles.md).

* A matched invoice (procurement's ``ap_invoice``) becomes ``Submit_Supplier_Invoice``
  (Resource_Management) with a line per invoice line.
* A requisition becomes ``Submit_Requisition`` (Resource_Management) with one line.
* A stock issue becomes ``Submit_Inventory_Adjustment`` (Inventory), one per location of its
  lines, with a negative quantity for usage.

Every request carries a reference ID Wharf chooses (``Supplier_Invoice_ID`` from the vendor and
invoice number, the others from the delivery's idempotency key), so a resend names the same
object. Authentication is a WS-Security UsernameToken with a timestamp (SOAP 1.1). A
``Client`` fault (``Client.validationError``: the request is wrong) is permanent, a ``Server``
fault is retried; the answer (the new object's WID) is kept with the delivery.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import urllib.parse
import uuid
from collections.abc import Mapping
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from lxml import etree
from twisted.internet.defer import Deferred

from engine.errors import DeliveryError
from engine.model import Delivery
from engine.net import soap
from engine.net.auth import call_with_auth
from engine.net.http import caller_for, connection_fields, origin, status_error
from engine.net.secrets import SECRET_SPEC, Secrets
from engine.registry import destination
from engine.spec import Bool, Context, Duration, Field, MapOf, Spec, Str, join

WD = "urn:com.workday/bsvc"
CENT = Decimal("0.01")
_IDS = uuid.UUID("8c0c3d3e-2b9f-4f6e-a0a1-776f726b6461")

WD_SECURITY_SPEC = Spec(
    "workday_security",
    [
        Field(
            "username",
            Str(),
            description="The integration system user, as user@tenant.",
            example="ISU_Wharf@genhosp",
        ),
        Field("password", SECRET_SPEC, description="Where its password is read from."),
        Field("ttl", Duration(lo=1), 300.0, "Lifetime of the message's timestamp.", "5m"),
    ],
    description="WS-Security UsernameToken (password as text) with a timestamp.",
)


def _check(config: Any, ctx: Context, node: Any, path: str) -> None:
    if urllib.parse.urlsplit(config.base_url).scheme not in ("http", "https"):
        ctx.error(
            node,
            join(path, "base_url"),
            f"must start with http:// or https:// (got {config.base_url!r})",
        )
    if config.ca_file and not config.tls_verify:
        ctx.error(node, join(path, "ca_file"), "ca_file needs tls_verify: true (got false)")


WORKDAY_SPEC = Spec(
    "workday",
    [
        Field(
            "base_url",
            Str(),
            description="The tenant's web services host.",
            example="https://wd2-impl-services1.workday.com",
        ),
        Field("tenant", Str(), description="Tenant name in the service path.", example="genhosp"),
        Field("version", Str(), "v42.0", "Web service version in the path and requests."),
        Field("ws_security", WD_SECURITY_SPEC, description="WS-Security UsernameToken."),
        Field("company", Str(), description="Company_Reference_ID of invoices and requisitions."),
        Field(
            "requester",
            Str(),
            None,
            "Employee_ID that requests requisitions (needed for requisitions).",
            "21001",
        ),
        Field(
            "suppliers",
            MapOf(Str()),
            {},
            "Our vendor ids to Supplier_IDs; a vendor not listed is sent as it is.",
            {"acmemed": "SUP-000123"},
        ),
        Field(
            "locations",
            MapOf(Str()),
            {},
            "Our location ids to Workday Location_IDs; not listed: sent as it is.",
            {"LOC-OR-MAIN": "OR_MAIN"},
        ),
        Field(
            "units",
            MapOf(Str()),
            {"CA": "CS"},
            "Our unit codes to UN/CEFACT common codes where they differ (CA case is CS).",
        ),
        Field(
            "adjustment_reason",
            Str(),
            "PATIENT_USAGE",
            "Adjustment_Reason ID of stock issues.",
        ),
        Field("auto_complete", Bool(), True, "Business_Process_Parameters/Auto_Complete."),
        *connection_fields(60.0),
    ],
    description=(
        "Send supplier invoices (Submit_Supplier_Invoice), requisitions (Submit_Requisition) "
        "and stock issues (Submit_Inventory_Adjustment) to Workday's SOAP web services with a "
        "WS-Security UsernameToken; Client faults are permanent, Server faults retried. See "
        "docs/erp-profiles.md."
    ),
    example="""
workday:
  base_url: ${WORKDAY_URL}
  tenant: genhosp
  ws_security: {username: ISU_Wharf@genhosp, password: {env: WORKDAY_PASSWORD}}
  company: GENHOSP
  requester: '21001'
  suppliers: {acmemed: SUP-000123}
""",
    check=_check,
)


def _q(name: str) -> str:
    return f"{{{WD}}}{name}"


def _sub(parent: Any, name: str, text: Any = None) -> Any:
    element = etree.SubElement(parent, _q(name))
    if text is not None:
        element.text = str(text)
    return element


def _ref(parent: Any, name: str, id_type: str, value: str) -> Any:
    ref = _sub(parent, name)
    _sub(ref, "ID", value).set(_q("type"), id_type)
    return ref


def _money(value: Any) -> Decimal:
    try:
        return Decimal(str(value)).quantize(CENT, ROUND_HALF_UP)
    except (InvalidOperation, ValueError):
        raise DeliveryError(f"expected an amount (got {value!r})", retryable=False) from None


def _date(value: Any) -> str:
    digits = str(value or "").replace("-", "")[:8]
    if len(digits) == 8 and digits.isdigit():
        return f"{digits[:4]}-{digits[4:6]}-{digits[6:8]}"
    return datetime.date.today().isoformat()


class WorkdayDestination:
    """See the module docstring."""

    def __init__(
        self,
        options: Any,
        *,
        reactor: Any,
        channel: str,
        name: str,
        base_dir: pathlib.Path,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.options = options
        self.reactor = reactor
        self.channel = channel
        self.name = name
        self.secrets = Secrets(os.environ if environ is None else environ, base_dir)
        self.caller = caller_for(options, reactor, base_dir)
        base = options.base_url.rstrip("/")
        self.url = {
            service: f"{base}/ccx/service/{options.tenant}/{service}/{options.version}"
            for service in ("Resource_Management", "Inventory")
        }

    def close(self) -> Deferred[None]:
        return self.caller.close()

    # ------------------------------------------------------------------ requests

    def _request(self, operation: str) -> Any:
        request = etree.Element(_q(f"{operation}_Request"), nsmap={"bsvc": WD})
        request.set(_q("version"), self.options.version)
        params = _sub(request, "Business_Process_Parameters")
        _sub(params, "Auto_Complete", "true" if self.options.auto_complete else "false")
        return request

    def _unit(self, unit: str) -> str:
        return self.options.units.get(unit, unit)

    def supplier_invoice(self, doc: Any) -> tuple[str, Any]:
        """Submit_Supplier_Invoice of a matched invoice; its Supplier_Invoice_ID."""
        vendor = str(doc["vendor"])
        number = str(doc["invoice_number"])
        ref = f"WHARF-{vendor}-{number}"[:60]
        request = self._request("Submit_Supplier_Invoice")
        data = _sub(request, "Supplier_Invoice_Data")
        _sub(data, "Supplier_Invoice_ID", ref)
        _sub(data, "Submit", "true")
        _ref(data, "Company_Reference", "Company_Reference_ID", self.options.company)
        _ref(data, "Currency_Reference", "Currency_ID", doc.get("currency") or "USD")
        _ref(data, "Supplier_Reference", "Supplier_ID", self.options.suppliers.get(vendor, vendor))
        _sub(data, "Invoice_Date", _date(doc.get("invoice_date")))
        _sub(data, "Suppliers_Invoice_Number", number)
        _sub(data, "Control_Amount_Total", _money(doc["total"]))
        _sub(data, "Tax_Amount", _money(doc.get("tax") or 0))
        _sub(data, "Freight_Amount", _money(doc.get("charges") or 0))
        for n, line in enumerate(doc.get("lines") or [], start=1):
            qty = Decimal(str(line.get("quantity") or 0))
            price = Decimal(str(line.get("unit_price") or 0))
            row = _sub(data, "Invoice_Line_Replacement_Data")
            _sub(row, "Line_Order", n)
            if doc.get("po_number"):
                _ref(row, "Purchase_Order_Reference", "Document_Number", str(doc["po_number"]))
            _sub(row, "Quantity", qty)
            _sub(row, "Unit_Cost", price)
            _sub(row, "Extended_Amount", (qty * price).quantize(CENT, ROUND_HALF_UP))
            if line.get("uom"):
                _ref(
                    row,
                    "Unit_of_Measure_Reference",
                    "UN_CEFACT_Common_Code_ID",
                    self._unit(line["uom"]),
                )
        return ref, request

    def requisition(self, delivery: Delivery, doc: Any) -> tuple[str, Any]:
        if not self.options.requester:
            raise DeliveryError("workday: requester is needed for requisitions", retryable=False)
        ref = f"WHARF-REQ-{delivery.idempotency_key}"
        request = self._request("Submit_Requisition")
        data = _sub(request, "Requisition_Data")
        _sub(data, "Requisition_ID", ref)
        _sub(data, "Submit", "true")
        _ref(data, "Company_Reference", "Company_Reference_ID", self.options.company)
        _ref(data, "Requester_Reference", "Employee_ID", self.options.requester)
        _sub(data, "Request_Date", datetime.date.today().isoformat())
        _sub(data, "Memo", str(doc.get("reason") or "")[:200])
        line = _sub(data, "Requisition_Line_Replacement_Data")
        _sub(line, "Line_Number", 1)
        _ref(line, "Purchase_Item_Reference", "Purchase_Item_ID", doc["item_id"])
        _sub(line, "Quantity", doc["quantity"])
        _ref(line, "Unit_of_Measure_Reference", "UN_CEFACT_Common_Code_ID", self._unit(doc["uom"]))
        location = self.options.locations.get(doc["location_id"], doc["location_id"])
        _ref(line, "Deliver_To_Location_Reference", "Location_ID", location)
        return ref, request

    def adjustments(self, delivery: Delivery, doc: Any) -> list[tuple[str, Any]]:
        """Submit_Inventory_Adjustment requests of a stock issue, one per location."""
        by_location: dict[str, list[dict]] = {}
        for line in doc.get("lines") or []:
            by_location.setdefault(line["location_id"], []).append(line)
        if not by_location:
            raise DeliveryError("issue: expected lines", retryable=False)
        out = []
        for location, lines in by_location.items():
            wd_location = self.options.locations.get(location, location)
            ref = "WHARF-IA-" + str(uuid.uuid5(_IDS, f"{delivery.idempotency_key}|{location}"))
            request = self._request("Submit_Inventory_Adjustment")
            data = _sub(request, "Inventory_Adjustment_Data")
            _sub(data, "Inventory_Adjustment_ID", ref)
            _ref(data, "Location_Reference", "Location_ID", wd_location)
            _ref(
                data,
                "Adjustment_Reason_Reference",
                "Adjustment_Reason_ID",
                self.options.adjustment_reason,
            )
            _sub(data, "Adjustment_Date", _date(lines[0].get("service_date")))
            for line in lines:
                row = _sub(data, "Inventory_Adjustment_Line_Data")
                _ref(row, "Item_Reference", "Item_ID", line["item_id"])
                _sub(row, "Quantity", -Decimal(str(line["quantity"])))
                _ref(
                    row,
                    "Unit_of_Measure_Reference",
                    "UN_CEFACT_Common_Code_ID",
                    self._unit(line["uom"]),
                )
                if line.get("lot"):
                    _sub(row, "Lot_ID", line["lot"])
            out.append((ref, request))
        return out

    # ------------------------------------------------------------------ calls

    async def _call(self, service: str, request: Any, delivery: Delivery) -> tuple[str, str]:
        """One SOAP call; the new object's (WID, reference ID)."""
        ws = self.options.ws_security
        security = soap.ws_security(
            "1.1",
            username=ws.username,
            password=self.secrets.read(ws.password, "ws_security.password"),
            now=self.reactor.seconds(),
            ttl=ws.ttl,
        )
        body = soap.envelope("1.1", request, [security])
        ctype, extra = soap.content_type("1.1", None)
        headers = {
            b"Content-Type": [ctype],
            b"X-Correlation-ID": [delivery.correlation_id.encode("ascii", "replace")],
            **{k: [v] for k, v in extra},
        }
        url = self.url[service]
        answer = await call_with_auth(self.caller, None, "POST", url, headers, body)
        where = origin(url)
        looks_xml = answer.body.lstrip()[:1] == b"<"
        if not looks_xml:
            if answer.ok:
                raise DeliveryError(
                    f"POST {where}: HTTP {answer.code} without a SOAP answer",
                    retryable=True,
                    ambiguous=True,
                    response=answer.body,
                )
            raise status_error("POST", where, answer, self.reactor.seconds())
        element, fault = soap.read_answer(answer.body, "1.1")
        if fault is not None:
            error = fault.error(where, answer.body, answer.code)
            message = (
                soap.child_text(fault.detail, "Validation_Error", "Message")
                if (fault.detail is not None)
                else None
            )
            if message:
                error.message += f" ({message})"
            raise error
        ids = {
            node.get(_q("type")): (node.text or "").strip()
            for node in (element.iter(_q("ID")) if element is not None else [])
        }
        return ids.get("WID", ""), next((v for k, v in ids.items() if k != "WID"), "")

    async def send(self, delivery: Delivery) -> bytes:
        try:
            doc = json.loads(delivery.payload)
        except ValueError:
            raise DeliveryError("the payload is not JSON", retryable=False) from None
        effect = delivery.meta.get("effect")
        if not isinstance(effect, str):
            kind = doc.get("type") if isinstance(doc, dict) else None
            effect = {"inventory_issue": "issue", "ap_invoice": "ap_invoice"}.get(
                kind, "requisition"
            )
        if effect == "ap_invoice":
            calls = [("Resource_Management", *self.supplier_invoice(doc))]
        elif effect == "requisition":
            calls = [("Resource_Management", *self.requisition(delivery, doc))]
        elif effect == "issue":
            calls = [("Inventory", ref, req) for ref, req in self.adjustments(delivery, doc)]
        else:
            raise DeliveryError(
                f"workday takes supplier invoices, requisitions and stock issues (got {effect!r})",
                retryable=False,
            )
        done = []
        for service, _ref_id, request in calls:
            wid, ref = await self._call(service, request, delivery)
            done.append({"WID": wid, "reference_id": ref})
        return json.dumps({"workday": done}).encode()


@destination("workday", WORKDAY_SPEC)
def make_workday(
    options: Any, *, reactor: Any, channel: str, name: str, base_dir: pathlib.Path
) -> WorkdayDestination:
    """Build the ``workday`` destination of channel ``channel`` named ``name``."""
    return WorkdayDestination(
        options, reactor=reactor, channel=channel, name=name, base_dir=base_dir
    )
