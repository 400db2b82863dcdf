"""The emulated Oracle Fusion Cloud SCM REST API (see the package docstring)."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

from engine.sandbox.cloud.common import (
    _ORACLE_JSON,
    ORACLE,
    ORACLE_BASE,
    Invalid,
    dumps,
    need_decimal,
    need_text,
    ok_json,
)
from engine.sandbox.erp import Answer


class OracleApi:
    def _oracle(self, method: str, path: str, query: dict, body: bytes, headers: dict) -> Answer:
        if not self.tokens.check(headers):
            self.tokens.refused += 1
            return Answer(
                401,
                json.dumps({"title": "Unauthorized", "status": "401"}).encode(),
                {"www-authenticate": 'Bearer error="invalid_token"'},
            )
        rest = path[len(ORACLE_BASE) :].strip("/").split("/")
        ctype = headers.get("content-type", "").split(";")[0].strip()
        if rest == [""] and method == "POST":
            if ctype != "application/vnd.oracle.adf.batch+json":
                return _oracle_error(
                    415,
                    "Unsupported Media Type",
                    [("", "batch requests are application/vnd.oracle.adf.batch+json", "")],
                )
            return self._oracle_batch(body)
        resource = rest[0]
        if resource not in ("inventoryStagedTransactions", "purchaseRequisitions"):
            return _oracle_error(404, "Not Found", [("", f"no resource {resource}", "")])
        if len(rest) == 1 and method == "GET":
            return self._oracle_query(resource, query)
        if len(rest) == 1 and method == "POST":
            if ctype not in ("application/json", _ORACLE_JSON):
                return _oracle_error(415, "Unsupported Media Type", [("", f"got {ctype!r}", "")])
            try:
                doc = json.loads(body, parse_float=Decimal)
            except ValueError:
                return _oracle_error(400, "Bad Request", [("", "the body is not JSON", "")])
            try:
                created = self._oracle_create(resource, doc, "")
            except Invalid as e:
                return _oracle_error(400, "Bad Request", [(e.path, e.message, e.code)])
            return Answer(201, dumps(created), {"content-type": _ORACLE_JSON})
        if (
            len(rest) == 4
            and resource == "purchaseRequisitions"
            and rest[2:] == ["action", "submitRequisition"]
            and method == "POST"
        ):
            if ctype != "application/vnd.oracle.adf.action+json":
                return _oracle_error(415, "Unsupported Media Type", [("", f"got {ctype!r}", "")])
            found = self.books.get(ORACLE, "requisition", rest[1])
            if found is None:
                return _oracle_error(404, "Not Found", [("", f"no requisition {rest[1]}", "")])
            self.books.set_status(ORACLE, "requisition", rest[1], "APPROVED")
            return Answer(200, dumps({"result": "SUCCESS"}), {"content-type": "application/json"})
        return _oracle_error(405, "Method Not Allowed", [("", f"{method} {path}", "")])

    def _oracle_query(self, resource: str, query: dict) -> Answer:
        q = (query.get("q") or [""])[0]
        m = re.fullmatch(r"(TransactionReference|Description)\s*=\s*'([^']*)'", q)
        if not m:
            return _oracle_error(400, "Bad Request", [("q", "the emulation takes q=Attr='v'", "")])
        kind = "staged_transaction" if resource == "inventoryStagedTransactions" else "requisition"
        items = [
            {**d["doc"], "DocumentStatusCode": d["status"]} if kind == "requisition" else d["doc"]
            for d in self.books.find(ORACLE, kind, m.group(2))
        ]
        return ok_json({"items": items, "count": len(items), "hasMore": False})

    def _oracle_create(self, resource: str, doc: Any, path: str) -> dict[str, Any]:
        if not isinstance(doc, dict):
            raise Invalid(path, "expected a JSON object")
        if resource == "inventoryStagedTransactions":
            return self._oracle_staged(doc, path)
        return self._oracle_requisition(doc, path)

    def _oracle_staged(self, doc: dict, path: str) -> dict[str, Any]:
        org = need_text(doc, "OrganizationCode", path)
        sub = need_text(doc, "SubinventoryCode", path)
        item = need_text(doc, "ItemNumber", path)
        kind = need_text(doc, "TransactionTypeName", path)
        qty = need_decimal(doc.get("TransactionQuantity"), f"{path}TransactionQuantity")
        uom = need_text(doc, "TransactionUnitOfMeasure", path)
        need_text(doc, "TransactionDate", path)
        ref = need_text(doc, "TransactionReference", path, required=False)
        if kind == "Miscellaneous Issue" and qty > 0:
            raise Invalid(
                f"{path}TransactionQuantity", "an issue takes a negative quantity", "INV-QTY-SIGN"
            )
        if kind == "Miscellaneous Receipt" and qty < 0:
            raise Invalid(
                f"{path}TransactionQuantity", "a receipt takes a positive quantity", "INV-QTY-SIGN"
            )
        if kind not in ("Miscellaneous Issue", "Miscellaneous Receipt"):
            raise Invalid(
                f"{path}TransactionTypeName",
                f"the transaction type {kind} isn't valid",
                "INV-TXN-TYPE",
            )
        if not self.books.knows_item(ORACLE, item):
            raise Invalid(f"{path}ItemNumber", f"The item {item} isn't valid.", "INV-ITEM")
        location = f"{org}:{sub}"
        if not self.books.knows_location(ORACLE, location):
            raise Invalid(
                f"{path}SubinventoryCode",
                f"The subinventory {sub} isn't valid in organization {org}.",
                "INV-SUBINV",
            )
        stock = self.books.stock(ORACLE, location, item)
        if stock is None:
            self.books.seed(
                ORACLE, [{"location": location, "item": item, "on_hand": 0, "uom": uom}]
            )
        elif stock[1] != uom:
            raise Invalid(
                f"{path}TransactionUnitOfMeasure",
                f"{item} is stocked in {stock[1]} (got {uom})",
                "INV-UOM",
            )
        self.books.move(ORACLE, location, item, qty)
        created = {**doc, "ProcessStatus": "SUCCESS"}
        self.books.add(
            ORACLE,
            "staged_transaction",
            ref or None,
            "PROCESSED",
            created,
            "TransactionInterfaceId",
        )
        return created

    def _oracle_requisition(self, doc: dict, path: str) -> dict[str, Any]:
        bu = need_text(doc, "RequisitioningBUName", path)
        if bu not in self.credentials.oracle_business_units:
            raise Invalid(
                f"{path}RequisitioningBUName", f"The business unit {bu} isn't valid.", "POR-BU"
            )
        need_text(doc, "PreparerEmail", path)
        description = need_text(doc, "Description", path, required=False)
        lines = doc.get("lines")
        if not isinstance(lines, list) or not lines:
            raise Invalid(f"{path}lines", "at least one line is required")
        for i, line in enumerate(lines):
            p = f"{path}lines/{i}/"
            if not isinstance(line, dict):
                raise Invalid(p, "expected an object")
            item = need_text(line, "ItemNumber", p)
            if not self.books.knows_item(ORACLE, item):
                raise Invalid(f"{p}ItemNumber", f"The item {item} isn't valid.", "POR-ITEM")
            need_decimal(line.get("Quantity"), f"{p}Quantity", positive=True)
            need_text(line, "UOM", p)
            if line.get("DestinationTypeCode") != "INVENTORY":
                raise Invalid(f"{p}DestinationTypeCode", "expected INVENTORY")
            org = need_text(line, "DestinationOrganizationCode", p)
            sub = need_text(line, "DestinationSubinventory", p)
            if not self.books.knows_location(ORACLE, f"{org}:{sub}"):
                raise Invalid(
                    f"{p}DestinationSubinventory",
                    f"The subinventory {sub} isn't valid.",
                    "POR-SUBINV",
                )
            need_text(line, "RequestedDeliveryDate", p)
        created = {**doc, "DocumentStatusCode": "INCOMPLETE"}
        header = self.books.add(
            ORACLE, "requisition", description or None, "INCOMPLETE", created, "RequisitionHeaderId"
        )
        created["Requisition"] = f"REQ{header[-6:]}"
        return created

    def _oracle_batch(self, body: bytes) -> Answer:
        try:
            doc = json.loads(body, parse_float=Decimal)
        except ValueError:
            return _oracle_error(400, "Bad Request", [("", "the body is not JSON", "")])
        parts = doc.get("parts") if isinstance(doc, dict) else None
        if not isinstance(parts, list) or not parts:
            return _oracle_error(400, "Bad Request", [("parts", "expected a list of parts", "")])
        # All or nothing: a failing part rolls back every part (one transaction).
        db = self.state.db
        db.execute("SAVEPOINT oracle_batch")
        out = []
        for i, part in enumerate(parts):
            where = f"/parts/{i}/"
            try:
                if not isinstance(part, dict) or part.get("operation") != "create":
                    raise Invalid(f"{where}operation", "the emulation takes create parts")
                resource = str(part.get("path", "")).strip("/")
                if resource not in ("inventoryStagedTransactions", "purchaseRequisitions"):
                    raise Invalid(f"{where}path", f"no resource {resource}")
                created = self._oracle_create(resource, part.get("payload"), f"{where}payload/")
            except Invalid as e:
                db.execute("ROLLBACK TO oracle_batch")
                db.execute("RELEASE oracle_batch")
                return _oracle_error(400, "Bad Request", [(e.path, e.message, e.code)])
            out.append({**part, "payload": created})
        db.execute("RELEASE oracle_batch")
        return Answer(200, dumps({"parts": out}), {"content-type": "application/json"})


def _oracle_error(status: int, title: str, details: list[tuple[str, str, str]]) -> Answer:
    doc = {
        "title": title,
        "status": str(status),
        "o:errorDetails": [
            {"detail": message, "o:errorCode": code or "WHARF-EMU", "o:errorPath": path}
            for path, message, code in details
        ],
    }
    return Answer(status, dumps(doc), {"content-type": "application/vnd.oracle.adf.error+json"})
