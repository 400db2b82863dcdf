"""The emulated SAP S/4HANA OData V2 APIs (see the package docstring)."""

from __future__ import annotations

import base64
import hmac
import json
import re
import secrets
import time
import uuid
from decimal import Decimal
from typing import Any

from engine.sandbox.cloud.common import (
    MATERIAL_DOCUMENT,
    PURCHASE_REQUISITION,
    SAP,
    SAP_BASE,
    Invalid,
    dumps,
    need_decimal,
    need_odata_date,
    need_text,
    ok_json,
)
from engine.sandbox.erp import Answer
from engine.sandbox.state import decimal_text


class SapApi:
    def _sap(self, method: str, path: str, query: dict, body: bytes, headers: dict) -> Answer:
        c = self.credentials
        auth = headers.get("authorization", "")
        ok = False
        if auth.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(auth[6:].strip()).decode().partition(":")
                ok = user == c.sap_user and hmac.compare_digest(password, c.sap_password)
            except (ValueError, UnicodeDecodeError):
                ok = False
        if not ok:
            return Answer(401, b"Logon failed", {"www-authenticate": 'Basic realm="SAP"'})
        rest = path[len(SAP_BASE) :].strip("/").split("/")
        service = rest[0]
        if service not in (MATERIAL_DOCUMENT, PURCHASE_REQUISITION):
            return _sap_error(
                404, "/IWFND/MED/170", f"No service found for namespace '', name '{service}'"
            )
        if method == "GET":
            if headers.get("x-csrf-token", "").lower() == "fetch":
                session = secrets.token_hex(12)
                token = secrets.token_urlsafe(18)
                self.sessions.tokens[session] = token
                return Answer(
                    200,
                    dumps({"d": {"EntitySets": ["A_MaterialDocumentHeader"]}}),
                    {
                        "x-csrf-token": token,
                        "set-cookie": f"SAP_SESSIONID_EMU={session}; path=/; HttpOnly",
                        "content-type": "application/json",
                    },
                )
            return ok_json({"d": {}})
        if method != "POST":
            return _sap_error(405, "/IWFND/CM_MGW/004", f"{method} not allowed")
        session = _cookie(headers.get("cookie", ""), "SAP_SESSIONID_EMU")
        token = headers.get("x-csrf-token", "")
        expected = self.sessions.tokens.get(session or "")
        if not token or expected is None or not hmac.compare_digest(token, expected):
            return Answer(403, b"CSRF token validation failed", {"x-csrf-token": "Required"})
        entity = "/".join(rest[1:])
        if entity == "$batch":
            return self._sap_batch(service, body, headers)
        return self._sap_one(service, entity, body, headers)

    def _sap_one(self, service: str, entity: str, body: bytes, headers: dict) -> Answer:
        request_id = headers.get("repeatability-request-id")
        if request_id:
            seen = self.state.db.execute(
                "SELECT status, body FROM erp_repeatability WHERE system = ? AND request_id = ?",
                (SAP, request_id),
            ).fetchone()
            if seen is not None:
                return Answer(
                    seen["status"],
                    bytes(seen["body"]),
                    {"repeatability-result": "accepted", "content-type": "application/json"},
                )
            if "repeatability-first-sent" not in headers:
                return _sap_error(
                    400,
                    "/IWFND/CM_MGW/100",
                    "Repeatability-First-Sent is required with Repeatability-Request-ID",
                )
        try:
            doc = json.loads(body, parse_float=Decimal)
        except ValueError:
            return _sap_error(400, "/IWFND/CM_MGW/100", "The request body is not valid JSON")
        db = self.state.db
        db.execute("SAVEPOINT sap_one")
        try:
            if service == MATERIAL_DOCUMENT and entity == "A_MaterialDocumentHeader":
                created = self._sap_material_document(doc)
            elif service == PURCHASE_REQUISITION and entity == "A_PurchaseRequisitionHeader":
                created = self._sap_requisition(doc)
            else:
                db.execute("RELEASE sap_one")
                return _sap_error(
                    404, "/IWFND/MED/170", f"Resource not found for segment '{entity}'"
                )
        except Invalid as e:
            db.execute("ROLLBACK TO sap_one")
            db.execute("RELEASE sap_one")
            return _sap_error(400, e.code or "/IWBEP/CM_MGW_RT/022", e.message, e.path)
        db.execute("RELEASE sap_one")
        answer = dumps({"d": created})
        if request_id:
            db.execute(
                "INSERT INTO erp_repeatability (system, request_id, status, body) VALUES (?,?,?,?)",
                (SAP, request_id, 201, answer),
            )
        return Answer(201, answer, {"content-type": "application/json"})

    def _sap_material_document(self, doc: Any) -> dict[str, Any]:
        if not isinstance(doc, dict):
            raise Invalid("", "expected an entity")
        if doc.get("GoodsMovementCode") != "03":
            raise Invalid(
                "GoodsMovementCode",
                "the emulation posts goods issues: GoodsMovementCode "
                f"03 (got {doc.get('GoodsMovementCode')!r})",
                "M7/301",
            )
        for name in ("PostingDate", "DocumentDate"):
            need_odata_date(doc.get(name), name)
        items = doc.get("to_MaterialDocumentItem")
        if isinstance(items, dict):
            items = items.get("results")
        if not isinstance(items, list) or not items:
            raise Invalid("to_MaterialDocumentItem", "at least one item is required", "M7/049")
        posted = []
        for i, item in enumerate(items):
            p = f"to_MaterialDocumentItem[{i}]."
            if not isinstance(item, dict):
                raise Invalid(p, "expected an entity")
            material = need_text(item, "Material", p)
            plant = need_text(item, "Plant", p)
            sloc = need_text(item, "StorageLocation", p)
            kind = need_text(item, "GoodsMovementType", p)
            qty = need_decimal(
                item.get("QuantityInEntryUnit"), f"{p}QuantityInEntryUnit", positive=True
            )
            unit = need_text(item, "EntryUnit", p)
            if kind not in ("201", "202", "261", "262"):
                raise Invalid(
                    f"{p}GoodsMovementType",
                    f"Movement type {kind} is not allowed with GoodsMovementCode 03",
                    "M7/092",
                )
            if kind in ("201", "202") and not item.get("CostCenter"):
                raise Invalid(
                    f"{p}CostCenter",
                    "Account assignment mandatory for G/L account (enter a cost center)",
                    "KI/235",
                )
            if kind in ("261", "262") and not item.get("OrderID"):
                raise Invalid(f"{p}OrderID", "Enter an order", "M7/160")
            if plant not in self.credentials.sap_plants:
                raise Invalid(f"{p}Plant", f"Plant {plant} does not exist", "M7/001")
            if not self.books.knows_item(SAP, material):
                raise Invalid(f"{p}Material", f"Material {material} does not exist", "M7/018")
            location = f"{plant}:{sloc}"
            stock = self.books.stock(SAP, location, material)
            if stock is None:
                raise Invalid(
                    f"{p}StorageLocation",
                    f"Material {material} is not maintained in storage location {plant} {sloc}",
                    "M7/024",
                )
            if stock[1] != unit:
                raise Invalid(
                    f"{p}EntryUnit",
                    f"Unit {unit} is not defined for material {material} (base unit {stock[1]})",
                    "M7/025",
                )
            delta = -qty if kind in ("201", "261") else qty
            if stock[0] + delta < 0:
                raise Invalid(
                    f"{p}QuantityInEntryUnit",
                    f"Deficit of SL Unrestricted-use "
                    f"{decimal_text(-(stock[0] + delta))} {unit} : {material} {plant} "
                    f"{sloc}",
                    "M7/021",
                )
            self.books.move(SAP, location, material, delta)
            posted.append({**item, "MaterialDocumentItem": str(i + 1)})
        ref = doc.get("MaterialDocumentHeaderText") or None
        created = {**doc, "to_MaterialDocumentItem": {"results": posted}}
        created["MaterialDocumentYear"] = time.strftime("%Y", time.gmtime(self.clock()))
        self.books.add(SAP, "material_document", ref, "POSTED", created, "MaterialDocument")
        return created

    def _sap_requisition(self, doc: Any) -> dict[str, Any]:
        if not isinstance(doc, dict):
            raise Invalid("", "expected an entity")
        if doc.get("PurchaseRequisitionType") != "NB":
            raise Invalid(
                "PurchaseRequisitionType",
                f"Document type {doc.get('PurchaseRequisitionType')!r} is not defined",
                "ME/055",
            )
        items = doc.get("to_PurchaseReqnItem")
        if isinstance(items, dict):
            items = items.get("results")
        if not isinstance(items, list) or not items:
            raise Invalid("to_PurchaseReqnItem", "at least one item is required", "06/026")
        for i, item in enumerate(items):
            p = f"to_PurchaseReqnItem[{i}]."
            if not isinstance(item, dict):
                raise Invalid(p, "expected an entity")
            material = need_text(item, "Material", p)
            plant = need_text(item, "Plant", p)
            need_decimal(item.get("RequestedQuantity"), f"{p}RequestedQuantity", positive=True)
            need_text(item, "BaseUnit", p)
            need_text(item, "PurchasingGroup", p)
            need_odata_date(item.get("DeliveryDate"), f"{p}DeliveryDate")
            if plant not in self.credentials.sap_plants:
                raise Invalid(f"{p}Plant", f"Plant {plant} does not exist", "ME/039")
            if not self.books.knows_item(SAP, material):
                raise Invalid(f"{p}Material", f"Material {material} does not exist", "ME/042")
        ref = doc.get("PurReqnDescription") or None
        created = dict(doc)
        self.books.add(SAP, "purchase_requisition", ref, "CREATED", created, "PurchaseRequisition")
        return created

    def _sap_batch(self, service: str, body: bytes, headers: dict) -> Answer:
        ctype = headers.get("content-type", "")
        m = re.search(r'boundary="?([^";]+)"?', ctype)
        if not ctype.startswith("multipart/mixed") or not m:
            return _sap_error(
                400, "/IWFND/CM_MGW/100", "a $batch is multipart/mixed with a boundary"
            )
        responses = []
        for part_headers, part_body in _multipart(body, m.group(1)):
            inner = re.search(r'boundary="?([^";]+)"?', part_headers.get("content-type", ""))
            if inner is None:
                return _sap_error(400, "/IWFND/CM_MGW/100", "the emulation takes changesets only")
            changeset = list(_multipart(part_body, inner.group(1)))
            if len(changeset) != 1:
                return _sap_error(
                    400, "/IWFND/CM_MGW/100", "the emulation takes one request per changeset"
                )
            request_line, req_headers, req_body = _http_message(changeset[0][1])
            verb, _, target = request_line.partition(" ")
            if verb != "POST":
                return _sap_error(400, "/IWFND/CM_MGW/100", "a changeset holds POSTs only")
            target = target.rsplit(" ", 1)[0]
            answer = self._sap_one(service, target.strip("/"), req_body, req_headers)
            responses.append((answer, changeset[0][0].get("content-id")))
        boundary = "batchresponse_" + uuid.uuid4().hex
        out = bytearray()
        for answer, content_id in responses:
            out += f"--{boundary}\r\n".encode()
            http = _http_response(answer, content_id)
            if 200 <= answer.status < 300:
                inner = "changesetresponse_" + uuid.uuid4().hex
                out += f"Content-Type: multipart/mixed; boundary={inner}\r\n\r\n".encode()
                out += f"--{inner}\r\n".encode() + http + f"\r\n--{inner}--\r\n".encode()
            else:  # a failed changeset is answered by one error response in its place
                out += http + b"\r\n"
        out += f"--{boundary}--\r\n".encode()
        return Answer(202, bytes(out), {"content-type": f"multipart/mixed; boundary={boundary}"})


def _sap_error(status: int, code: str, message: str, target: str = "") -> Answer:
    doc = {
        "error": {
            "code": code,
            "message": {"lang": "en", "value": message},
            "innererror": {"transactionid": uuid.uuid4().hex.upper(), "target": target},
        }
    }
    return Answer(status, dumps(doc), {"content-type": "application/json"})


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def _multipart(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart body: (headers with lower-case names, body)."""
    delimiter = b"--" + boundary.encode()
    out = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        chunk = chunk[2:] if chunk.startswith(b"\r\n") else chunk.lstrip(b"\n")
        head, _, rest = chunk.partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        out.append((headers, rest[:-2] if rest.endswith(b"\r\n") else rest))
    return out


def _http_message(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers, body


_REASONS = {
    200: "OK",
    201: "Created",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    429: "Too Many Requests",
}


def _http_response(answer: Answer, content_id: str | None) -> bytes:
    head = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if content_id:
        head.append(f"Content-ID: {content_id}")
    inner = [f"HTTP/1.1 {answer.status} {_REASONS.get(answer.status, 'Status')}"]
    inner += [
        f"{k}: {v}" for k, v in {"content-type": "application/json", **answer.headers}.items()
    ]
    inner.append(f"Content-Length: {len(answer.body)}")
    return ("\r\n".join(head) + "\r\n\r\n" + "\r\n".join(inner) + "\r\n\r\n").encode() + answer.body
