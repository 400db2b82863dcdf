"""The emulated Workday SOAP web services (see the package docstring)."""

from __future__ import annotations

import base64
import calendar
import hashlib
import hmac
import re
import time
from decimal import Decimal
from typing import Any

from lxml import etree

from engine.net.xml import hardened_parser
from engine.sandbox.api_error import ApiError
from engine.sandbox.cloud.common import (
    SOAP11,
    WD,
    WORKDAY,
    WSSE,
    WSU,
    Invalid,
    need_decimal,
)
from engine.sandbox.erp import Answer


class WorkdayApi:
    def _workday(self, method: str, path: str, body: bytes) -> Answer:
        m = re.fullmatch(
            r"/ccx/service/([^/]+)/(Resource_Management|Inventory)/v(\d+(\.\d+)?)", path
        )
        if m is None:
            raise ApiError(404, f"no such Workday service: {path}")
        if method != "POST":
            raise ApiError(405, "POST only", {"allow": "POST"})
        try:
            root = etree.fromstring(body, parser=hardened_parser())
        except etree.XMLSyntaxError as e:
            return _soap_fault("SOAP-ENV:Client", f"the request is not XML ({e.msg})")
        if root.tag != f"{{{SOAP11}}}Envelope":
            return _soap_fault("SOAP-ENV:VersionMismatch", "expected a SOAP 1.1 envelope")
        problem = self._ws_security(root)
        if problem is not None:
            return _soap_fault("SOAP-ENV:Client.authenticationError", problem)
        request = next(iter(root.find(f"{{{SOAP11}}}Body")), None)
        if request is None:
            return _soap_fault("SOAP-ENV:Client", "an empty Body")
        operation = etree.QName(request).localname
        service = m.group(2)
        if self.server_faults > 0:
            self.server_faults -= 1
            return _soap_fault(
                "SOAP-ENV:Server.processingFault",
                "Processing error occurred. The task could not be completed, try again",
                _wd_fault("Processing_Fault", "Internal processing error", ""),
            )
        handlers = {
            ("Resource_Management", "Submit_Supplier_Invoice_Request"): self._wd_invoice,
            ("Resource_Management", "Submit_Requisition_Request"): self._wd_requisition,
            ("Inventory", "Submit_Inventory_Adjustment_Request"): self._wd_adjustment,
        }
        handler = handlers.get((service, operation))
        if handler is None:
            return _soap_fault("SOAP-ENV:Client", f"{operation} is not an operation of {service}")
        db = self.state.db
        db.execute("SAVEPOINT workday")
        try:
            response = handler(request)
        except Invalid as e:
            db.execute("ROLLBACK TO workday")
            db.execute("RELEASE workday")
            return _soap_fault(
                "SOAP-ENV:Client.validationError",
                "Validation error occurred. " + e.message,
                _wd_fault("Validation_Fault", e.message, e.path),
            )
        db.execute("RELEASE workday")
        return _soap_ok(response)

    def _ws_security(self, root: Any) -> str | None:
        header = root.find(f"{{{SOAP11}}}Header")
        security = header.find(f"{{{WSSE}}}Security") if header is not None else None
        if security is None:
            return "a WS-Security header is required"
        token = security.find(f"{{{WSSE}}}UsernameToken")
        if token is None:
            return "a UsernameToken is required"
        user = token.findtext(f"{{{WSSE}}}Username") or ""
        password = token.find(f"{{{WSSE}}}Password")
        c = self.credentials
        if user != c.workday_user or password is None:
            return "invalid user name or password"
        kind = password.get("Type", "")
        if kind.endswith("#PasswordDigest"):
            nonce = base64.b64decode(token.findtext(f"{{{WSSE}}}Nonce") or "")
            created = token.findtext(f"{{{WSU}}}Created") or ""
            want = base64.b64encode(
                hashlib.sha1(nonce + created.encode() + c.workday_password.encode()).digest()
            ).decode()
            if not hmac.compare_digest(password.text or "", want):
                return "invalid user name or password"
        elif not hmac.compare_digest(password.text or "", c.workday_password):
            return "invalid user name or password"
        stamp = security.find(f"{{{WSU}}}Timestamp")
        if stamp is None:
            return "a Timestamp is required"
        try:
            created = _parse_utc(stamp.findtext(f"{{{WSU}}}Created") or "")
            expires = _parse_utc(stamp.findtext(f"{{{WSU}}}Expires") or "")
        except ValueError:
            return "the Timestamp is not readable"
        now = self.clock()
        if created > now + 300 or expires < now:
            return "the message has expired (Timestamp)"
        return None

    def _wd_reference_id(self, data: Any, name: str, xpath: str) -> str:
        value = _wd_text(data, name)
        if not value:
            raise Invalid(xpath, f"{name} is required")
        return value

    def _wd_ref(self, data: Any, name: str, id_type: str, xpath: str) -> str:
        ref = data.find(f"{{{WD}}}{name}")
        node = None if ref is None else ref.find(f"{{{WD}}}ID")
        if node is None or not (node.text or "").strip():
            raise Invalid(xpath, f"{name} is required")
        if node.get(f"{{{WD}}}type") != id_type:
            raise Invalid(
                xpath,
                f"{name}: expected an ID of type {id_type} (got {node.get(f'{{{WD}}}type')!r})",
            )
        return (node.text or "").strip()

    def _replay(self, kind: str, ref: str, doc: dict, xpath: str) -> dict | None:
        seen = self.books.find(WORKDAY, kind, ref)
        if not seen:
            return None
        if seen[0]["doc"] != doc:
            raise Invalid(xpath, f"The ID {ref} is already in use by another instance")
        return seen[0]

    def _wd_invoice(self, request: Any) -> Any:
        data = request.find(f"{{{WD}}}Supplier_Invoice_Data")
        if data is None:
            raise Invalid("/Submit_Supplier_Invoice_Request", "Supplier_Invoice_Data is required")
        x = "/Submit_Supplier_Invoice_Request/Supplier_Invoice_Data"
        ref = self._wd_reference_id(data, "Supplier_Invoice_ID", f"{x}/Supplier_Invoice_ID")
        company = self._wd_ref(
            data, "Company_Reference", "Company_Reference_ID", f"{x}/Company_Reference"
        )
        if company not in self.credentials.workday_companies:
            raise Invalid(
                f"{x}/Company_Reference",
                f"Invalid ID value. '{company}' is not a "
                "valid ID value for type = 'Company_Reference_ID'",
            )
        supplier = self._wd_ref(
            data, "Supplier_Reference", "Supplier_ID", f"{x}/Supplier_Reference"
        )
        currency = self._wd_ref(
            data, "Currency_Reference", "Currency_ID", f"{x}/Currency_Reference"
        )
        invoice_date = self._wd_reference_id(data, "Invoice_Date", f"{x}/Invoice_Date")
        number = self._wd_reference_id(
            data, "Suppliers_Invoice_Number", f"{x}/Suppliers_Invoice_Number"
        )
        total = need_decimal(
            _wd_text(data, "Control_Amount_Total"), f"{x}/Control_Amount_Total", nonzero=False
        )
        lines = data.findall(f"{{{WD}}}Invoice_Line_Replacement_Data")
        if not lines:
            raise Invalid(f"{x}/Invoice_Line_Replacement_Data", "at least one line is required")
        amount = Decimal(0)
        out_lines = []
        for i, line in enumerate(lines, start=1):
            lx = f"{x}/Invoice_Line_Replacement_Data[{i}]"
            qty = need_decimal(_wd_text(line, "Quantity"), f"{lx}/Quantity", nonzero=False)
            cost = need_decimal(_wd_text(line, "Unit_Cost"), f"{lx}/Unit_Cost", nonzero=False)
            extended = need_decimal(
                _wd_text(line, "Extended_Amount"), f"{lx}/Extended_Amount", nonzero=False
            )
            if (qty * cost).quantize(Decimal("0.01")) != extended.quantize(Decimal("0.01")):
                raise Invalid(
                    f"{lx}/Extended_Amount",
                    f"Extended Amount {extended} must equal "
                    f"Quantity times Unit Cost ({qty * cost})",
                )
            amount += extended
            out_lines.append(
                {
                    "quantity": str(qty),
                    "unit_cost": str(cost),
                    "po": _wd_text(line, "Purchase_Order_Reference", "ID"),
                }
            )
        tax = need_decimal(_wd_text(data, "Tax_Amount") or "0", f"{x}/Tax_Amount", nonzero=False)
        freight = need_decimal(
            _wd_text(data, "Freight_Amount") or "0", f"{x}/Freight_Amount", nonzero=False
        )
        if (amount + tax + freight).quantize(Decimal("0.01")) != total.quantize(Decimal("0.01")):
            raise Invalid(
                f"{x}/Control_Amount_Total",
                f"Control Amount Total {total} does not "
                f"equal the invoice's total {amount + tax + freight}",
            )
        doc = {
            "supplier": supplier,
            "number": number,
            "date": invoice_date,
            "currency": currency,
            "total": str(total),
            "lines": out_lines,
        }
        seen = self._replay("supplier_invoice", ref, doc, f"{x}/Supplier_Invoice_ID")
        wid = (
            seen["id"]
            if seen
            else self.books.add(WORKDAY, "supplier_invoice", ref, "APPROVED", doc)
        )
        return _wd_response(
            "Submit_Supplier_Invoice_Response",
            "Supplier_Invoice_Reference",
            wid,
            "Supplier_Invoice_Reference_ID",
            ref,
        )

    def _wd_requisition(self, request: Any) -> Any:
        data = request.find(f"{{{WD}}}Requisition_Data")
        x = "/Submit_Requisition_Request/Requisition_Data"
        if data is None:
            raise Invalid(x, "Requisition_Data is required")
        ref = self._wd_reference_id(data, "Requisition_ID", f"{x}/Requisition_ID")
        company = self._wd_ref(
            data, "Company_Reference", "Company_Reference_ID", f"{x}/Company_Reference"
        )
        if company not in self.credentials.workday_companies:
            raise Invalid(
                f"{x}/Company_Reference",
                f"Invalid ID value. '{company}' is not a "
                "valid ID value for type = 'Company_Reference_ID'",
            )
        self._wd_ref(data, "Requester_Reference", "Employee_ID", f"{x}/Requester_Reference")
        lines = data.findall(f"{{{WD}}}Requisition_Line_Replacement_Data")
        if not lines:
            raise Invalid(f"{x}/Requisition_Line_Replacement_Data", "at least one line is required")
        out_lines = []
        for i, line in enumerate(lines, start=1):
            lx = f"{x}/Requisition_Line_Replacement_Data[{i}]"
            item = self._wd_ref(
                line, "Purchase_Item_Reference", "Purchase_Item_ID", f"{lx}/Purchase_Item_Reference"
            )
            if not self.books.knows_item(WORKDAY, item):
                raise Invalid(
                    f"{lx}/Purchase_Item_Reference",
                    f"Invalid ID value. '{item}' is "
                    "not a valid ID value for type = 'Purchase_Item_ID'",
                )
            qty = need_decimal(_wd_text(line, "Quantity"), f"{lx}/Quantity", positive=True)
            uom = self._wd_ref(
                line,
                "Unit_of_Measure_Reference",
                "UN_CEFACT_Common_Code_ID",
                f"{lx}/Unit_of_Measure_Reference",
            )
            location = self._wd_ref(
                line,
                "Deliver_To_Location_Reference",
                "Location_ID",
                f"{lx}/Deliver_To_Location_Reference",
            )
            out_lines.append({"item": item, "quantity": str(qty), "uom": uom, "location": location})
        doc = {"lines": out_lines, "memo": _wd_text(data, "Memo")}
        seen = self._replay("wd_requisition", ref, doc, f"{x}/Requisition_ID")
        wid = (
            seen["id"] if seen else self.books.add(WORKDAY, "wd_requisition", ref, "SUBMITTED", doc)
        )
        return _wd_response(
            "Submit_Requisition_Response", "Requisition_Reference", wid, "Requisition_ID", ref
        )

    def _wd_adjustment(self, request: Any) -> Any:
        data = request.find(f"{{{WD}}}Inventory_Adjustment_Data")
        x = "/Submit_Inventory_Adjustment_Request/Inventory_Adjustment_Data"
        if data is None:
            raise Invalid(x, "Inventory_Adjustment_Data is required")
        ref = self._wd_reference_id(data, "Inventory_Adjustment_ID", f"{x}/Inventory_Adjustment_ID")
        location = self._wd_ref(
            data, "Location_Reference", "Location_ID", f"{x}/Location_Reference"
        )
        lines = data.findall(f"{{{WD}}}Inventory_Adjustment_Line_Data")
        if not lines:
            raise Invalid(f"{x}/Inventory_Adjustment_Line_Data", "at least one line is required")
        moves = []
        for i, line in enumerate(lines, start=1):
            lx = f"{x}/Inventory_Adjustment_Line_Data[{i}]"
            item = self._wd_ref(line, "Item_Reference", "Item_ID", f"{lx}/Item_Reference")
            qty = need_decimal(_wd_text(line, "Quantity"), f"{lx}/Quantity")
            uom = self._wd_ref(
                line,
                "Unit_of_Measure_Reference",
                "UN_CEFACT_Common_Code_ID",
                f"{lx}/Unit_of_Measure_Reference",
            )
            stock = self.books.stock(WORKDAY, location, item)
            if stock is None:
                raise Invalid(f"{lx}/Item_Reference", f"Item {item} is not stocked at {location}")
            if stock[1] != uom:
                raise Invalid(
                    f"{lx}/Unit_of_Measure_Reference",
                    f"{item} is stocked in {stock[1]} (got {uom})",
                )
            moves.append((item, qty))
        doc = {
            "location": location,
            "lines": [[i, str(q)] for i, q in moves],
            "reason": _wd_text(data, "Adjustment_Reason_Reference", "ID"),
        }
        seen = self._replay("inventory_adjustment", ref, doc, f"{x}/Inventory_Adjustment_ID")
        if seen:
            wid = seen["id"]
        else:
            for item, qty in moves:
                self.books.move(WORKDAY, location, item, qty)
            wid = self.books.add(WORKDAY, "inventory_adjustment", ref, "COMPLETED", doc)
        return _wd_response(
            "Submit_Inventory_Adjustment_Response",
            "Inventory_Adjustment_Reference",
            wid,
            "Inventory_Adjustment_ID",
            ref,
        )


def _parse_utc(text: str) -> float:
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z", text.strip())
    if m is None:
        raise ValueError(text)
    base = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
    return base + (float(m.group(2)) if m.group(2) else 0.0)


def _wd_text(element: Any, *path: str) -> str:
    node = element
    for name in path:
        node = node.find(f"{{{WD}}}{name}") if node is not None else None
    return (node.text or "").strip() if node is not None else ""


def _wd_fault(kind: str, message: str, xpath: str) -> Any:
    fault = etree.Element(f"{{{WD}}}{kind}", nsmap={"wd": WD})
    error = etree.SubElement(
        fault, f"{{{WD}}}{'Validation_Error' if kind == 'Validation_Fault' else 'Detail_Message'}"
    )
    if kind == "Validation_Fault":
        etree.SubElement(error, f"{{{WD}}}Message").text = message
        etree.SubElement(error, f"{{{WD}}}Detail_Message").text = message
        etree.SubElement(error, f"{{{WD}}}Xpath").text = xpath
    else:
        error.text = message
    return fault


def _wd_response(name: str, ref_name: str, wid: str, id_type: str, ref: str) -> Any:
    response = etree.Element(f"{{{WD}}}{name}", nsmap={"wd": WD})
    response.set(f"{{{WD}}}version", "v42.0")
    reference = etree.SubElement(response, f"{{{WD}}}{ref_name}")
    etree.SubElement(reference, f"{{{WD}}}ID", {f"{{{WD}}}type": "WID"}).text = wid
    etree.SubElement(reference, f"{{{WD}}}ID", {f"{{{WD}}}type": id_type}).text = ref
    return response


def _soap_envelope(content: Any) -> bytes:
    env = etree.Element(f"{{{SOAP11}}}Envelope", nsmap={"SOAP-ENV": SOAP11})
    etree.SubElement(env, f"{{{SOAP11}}}Body").append(content)
    return etree.tostring(env, xml_declaration=True, encoding="UTF-8")


def _soap_ok(response: Any) -> Answer:
    return Answer(200, _soap_envelope(response), {"content-type": "text/xml; charset=utf-8"})


def _soap_fault(code: str, reason: str, detail: Any = None) -> Answer:
    fault = etree.Element(f"{{{SOAP11}}}Fault")
    etree.SubElement(fault, "faultcode").text = code
    etree.SubElement(fault, "faultstring").text = reason
    if detail is not None:
        etree.SubElement(fault, "detail").append(detail)
    return Answer(500, _soap_envelope(fault), {"content-type": "text/xml; charset=utf-8"})
