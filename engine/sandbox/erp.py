"""The sandbox ERP's HTTP API (twisted.web, JSON in and out).

Routes::

    POST /inventory/issues            one issue, or {"issues": [...]} (bulk)  → 201
    POST /inventory/issues/bulk       {"items": [...]}: each on its own → 200 {"results": [...]}
    GET  /inventory?location=&item=   on-hand rows
    POST /requisitions                → 201 {"id": "REQ-n"}
    GET  /requisitions?status=&location=&item=
    GET  /requisitions/{id}
    POST /requisitions/{id}/close     → 200 (closing a closed one changes nothing)
    POST /goods-receipts              → 201 {"id": "GR-n"}   (stored; a goods_receipt's lines
                                         are added to on-hand at their location_id)
    POST /ap-invoices                 → 201 {"id": "APINV-n"} (stored as sent)
    GET  /issues, /charges, /goods-receipts, /ap-invoices   lists, for looking around
    GET  /state                       counts
    /purchase-orders...               purchasing (see purchasing.py)
    POST /fhir/ChargeItem             FHIR ChargeItem create → 201 (see billing.py)
    GET  /fhir/ChargeItem/{id}
    GET|POST|DELETE /_faults          fault injection for tests: {"fail_next", "status",
                                         "retry_after", "delay_next", "seconds", "path": only
                                         requests to paths starting with it}

Idempotency: a POST with an ``Idempotency-Key`` seen before gets the original status and body
(header ``Idempotent-Replayed: true``) and changes nothing; the same key with another method,
path or body is 409. Only 2xx answers are remembered, so a request refused for bad input or an
injected fault can be sent again with the same key. Bad input is 422 ``{"error": ...}`` naming
the field; unknown paths 404; wrong methods 405. Request bodies are never logged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote

from twisted.logger import Logger
from twisted.web import resource, server

from engine.sandbox.api_error import ApiError, invalid
from engine.sandbox.purchasing import PoError, Purchasing
from engine.sandbox.state import SandboxState, decimal_text, sha256

if TYPE_CHECKING:
    from engine.sandbox.billing import BillingReceiver

log = Logger()

MAX_BODY = 5 * 1024 * 1024


@dataclass
class Answer:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def _json(doc: Any) -> bytes:
    return json.dumps(
        doc, default=lambda v: decimal_text(v) if isinstance(v, Decimal) else str(v)
    ).encode()


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(body: bytes) -> Any:
    if not body.strip():
        raise invalid("body", "expected a JSON object (got an empty body)")
    try:
        return json.loads(body, parse_float=Decimal, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid("body", f"not valid JSON ({exc})") from None


# ---------------------------------------------------------------------------- validation


def need_object(value: Any, name: str) -> dict:
    if not isinstance(value, dict):
        raise invalid(name, f"expected a JSON object (got {type(value).__name__})")
    return value


def need_str(doc: dict, key: str, prefix: str = "", *, required: bool = True) -> str:
    name = prefix + key
    value = doc.get(key)
    if value is None or value == "":
        if required:
            raise invalid(name, "is required")
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise invalid(name, f"expected a string (got {type(value).__name__})")
    return str(value)


def need_quantity(doc: dict, key: str, prefix: str = "", *, negative_ok: bool) -> Decimal:
    name = prefix + key
    value = doc.get(key)
    if value is None or value == "":
        raise invalid(name, "is required")
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise invalid(name, f"expected a decimal string (got {type(value).__name__})")
    try:
        qty = Decimal(str(value).strip())
    except InvalidOperation:
        raise invalid(name, f"expected a decimal string (got {value!r})") from None
    if not qty.is_finite():
        raise invalid(name, f"expected a finite decimal (got {value!r})")
    if qty == 0:
        raise invalid(name, "must not be zero")
    if qty < 0 and not negative_ok:
        raise invalid(name, f"must be positive (got {value!r})")
    return qty


# ---------------------------------------------------------------------------- faults


@dataclass
class Faults:
    """Injected faults: the next ``fail_next`` requests answer ``status`` (with Retry-After),
    the next ``delay_next`` requests are processed at once but answered ``seconds`` later
    (a slow ERP: the client may time out on a request that did take effect); with ``path``,
    only the requests to paths that start with it (``/goods-receipts``)."""

    fail_next: int = 0
    status: int = 503
    retry_after: Any = None
    delay_next: int = 0
    seconds: float = 0.0
    path: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "fail_next": self.fail_next,
            "status": self.status,
            "retry_after": self.retry_after,
            "delay_next": self.delay_next,
            "seconds": self.seconds,
            "path": self.path,
        }


# ---------------------------------------------------------------------------- the API


class ErpApi:
    """Routing and behaviour, independent of twisted.web (``handle`` returns an Answer)."""

    def __init__(self, state: SandboxState, billing: BillingReceiver | None = None) -> None:
        self.state = state
        self.billing = billing
        self.faults = Faults()
        self.purchasing = Purchasing(state)

    # .................................................................. entry

    def handle(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        body: bytes,
        headers: dict[str, str],
    ) -> Answer:
        try:
            return self._handle(method, path, query, body, headers)
        except ApiError as exc:
            if path.startswith("/fhir/"):
                return Answer(
                    exc.status,
                    _json(operation_outcome(exc.message, exc.status)),
                    {"content-type": "application/fhir+json", **exc.headers},
                )
            return Answer(exc.status, _json({"error": exc.message}), exc.headers)

    def _handle(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        body: bytes,
        headers: dict[str, str],
    ) -> Answer:
        parts = [unquote(p) for p in path.strip("/").split("/") if p]
        route, params, allowed = self._route(parts)
        if route is None:
            raise ApiError(404, f"no such path: {path}")
        if method not in allowed:
            raise ApiError(
                405,
                f"{method} is not allowed on {path} (allowed: {', '.join(allowed)})",
                {"allow": ", ".join(allowed)},
            )
        handler = allowed[method]
        if method != "POST" or parts[0] == "_faults":
            return handler(*params, query=query, body=body, headers=headers)
        if headers.get("x-wharf-test", "").strip().lower() == "true":
            # test data (a canary): checked and answered as any other, recorded nowhere
            with self.state.dry_run():
                answer = handler(*params, query=query, body=body, headers=headers)
            return Answer(answer.status, answer.body, {**answer.headers, "x-wharf-test": "true"})
        key = headers.get("idempotency-key", "").strip()
        digest = sha256(body)
        # One request at a time on the reactor thread: the look-up and the work cannot interleave
        # with another request's.
        seen = self.state.remembered(key) if key else None
        if seen is not None:
            if (seen["method"], seen["path"], seen["body_sha256"]) != (method, path, digest):
                self.state.bump("idempotency_conflicts")
                raise ApiError(
                    409,
                    "Idempotency-Key was already used for a different "
                    "request (method, path or body differ)",
                )
            self.state.bump("idempotent_replays")
            return Answer(seen["status"], seen["response"], {"idempotent-replayed": "true"})
        with self.state.transaction():
            answer = handler(*params, query=query, body=body, headers=headers)
            if key and 200 <= answer.status < 300:
                self.state.remember(key, method, path, digest, answer.status, answer.body)
            return answer

    def _route(self, parts: list[str]) -> tuple[str | None, tuple, dict]:
        n = len(parts)
        if parts == ["inventory", "issues"]:
            return "issues", (), {"POST": self.post_issues, "GET": self.list_issues}
        if parts == ["inventory", "issues", "bulk"]:
            return "bulk", (), {"POST": self.post_issues_each}
        if parts == ["inventory"]:
            return "inventory", (), {"GET": self.get_inventory}
        if parts == ["issues"]:
            return "issues", (), {"GET": self.list_issues}
        if parts == ["requisitions"]:
            return "reqs", (), {"POST": self.post_requisition, "GET": self.list_requisitions}
        if n == 2 and parts[0] == "requisitions":
            return "req", (parts[1],), {"GET": self.get_requisition}
        if n == 3 and parts[0] == "requisitions" and parts[2] == "close":
            return "close", (parts[1],), {"POST": self.close_requisition}
        if parts == ["goods-receipts"]:
            return (
                "gr",
                ("goods_receipts", "GR"),
                {"POST": self.post_document, "GET": self.list_documents},
            )
        if parts == ["ap-invoices"]:
            return (
                "ap",
                ("ap_invoices", "APINV"),
                {"POST": self.post_document, "GET": self.list_documents},
            )
        if parts and parts[0] == "purchase-orders":
            return self._po_route(parts)
        if parts == ["charges"]:
            return "charges", (), {"GET": self.list_charges}
        if parts == ["state"]:
            return "state", (), {"GET": self.get_state}
        if parts == ["fhir", "ChargeItem"]:
            return "fhir", (), {"POST": self.post_charge_item}
        if n == 3 and parts[:2] == ["fhir", "ChargeItem"]:
            return "fhir1", (parts[2],), {"GET": self.get_charge_item}
        if parts == ["_faults"]:
            return (
                "faults",
                (),
                {"GET": self.get_faults, "POST": self.post_faults, "DELETE": self.delete_faults},
            )
        return None, (), {}

    # .................................................................. issues

    def post_issues(self, *, body: bytes, **_: Any) -> Answer:
        doc = need_object(parse_json(body), "body")
        if "issues" in doc:
            batch = doc["issues"]
            if not isinstance(batch, list) or not batch:
                raise invalid("issues", "expected a non-empty list of issues")
            uoms: dict[tuple[str, str], str] = {}
            checked = [
                self._check_issue(need_object(one, f"issues[{i}]"), f"issues[{i}].", uoms)
                for i, one in enumerate(batch)
            ]
            results = [
                {"id": self.state.post_issue(enc, lines, one), "lines": len(lines)}
                for (enc, lines), one in zip(checked, batch, strict=True)
            ]
            return Answer(201, _json({"ids": [r["id"] for r in results], "issues": results}))
        encounter, lines = self._check_issue(doc, "", {})
        issue_id = self.state.post_issue(encounter, lines, doc)
        return Answer(201, _json({"id": issue_id, "lines": len(lines)}))

    def post_issues_each(self, *, body: bytes, **_: Any) -> Answer:
        """``{"items": [issue, ...]}``: each issue posted or refused on its own; the answer's
        ``results`` hold one ``{"status", "id" | "error"}`` per item, in order (a partial
        failure is 200 with the failed items' 422s)."""
        doc = need_object(parse_json(body), "body")
        items = doc.get("items")
        if not isinstance(items, list) or not items:
            raise invalid("items", "expected a non-empty list of issues")
        results: list[dict[str, Any]] = []
        db = self.state.db
        for i, one in enumerate(items):
            db.execute("SAVEPOINT bulk_item")
            try:
                item = need_object(one, f"items[{i}]")
                encounter, lines = self._check_issue(item, "", {})
                issue_id = self.state.post_issue(encounter, lines, item)
            except ApiError as exc:
                db.execute("ROLLBACK TO bulk_item")
                db.execute("RELEASE bulk_item")
                results.append({"status": exc.status, "error": exc.message})
                continue
            db.execute("RELEASE bulk_item")
            results.append({"status": 201, "id": issue_id, "lines": len(lines)})
        return Answer(200, _json({"results": results}))

    def _check_issue(
        self, doc: dict, prefix: str, uoms: dict[tuple[str, str], str]
    ) -> tuple[str, list[dict]]:
        kind = need_str(doc, "type", prefix)
        if kind != "inventory_issue":
            raise invalid(prefix + "type", f"expected 'inventory_issue' (got {kind!r})")
        encounter = need_str(doc, "encounter", prefix)
        raw_lines = doc.get("lines")
        if not isinstance(raw_lines, list) or not raw_lines:
            raise invalid(prefix + "lines", "expected a non-empty list of lines")
        lines = []
        for i, raw in enumerate(raw_lines):
            p = f"{prefix}lines[{i}]."
            line = need_object(raw, p.rstrip("."))
            checked = {
                "usage_id": need_str(line, "usage_id", p),
                "item_id": need_str(line, "item_id", p),
                "quantity": need_quantity(line, "quantity", p, negative_ok=True),
                "uom": need_str(line, "uom", p),
                "location_id": need_str(line, "location_id", p),
                "cost_center": need_str(line, "cost_center", p),
                "gl_account": need_str(line, "gl_account", p),
            }
            where = (checked["location_id"], checked["item_id"])
            stocked = uoms.get(where) or self.state.stock_uom(*where)
            if stocked is not None and stocked != checked["uom"]:
                raise invalid(
                    p + "uom",
                    f"{checked['item_id']} is stocked in {stocked} at "
                    f"{checked['location_id']} (got {checked['uom']!r})",
                )
            uoms[where] = checked["uom"]
            lines.append(checked)
        return encounter, lines

    def list_issues(self, **_: Any) -> Answer:
        return Answer(200, _json({"issues": self.state.issues()}))

    def get_inventory(self, *, query: dict[str, list[str]], **_: Any) -> Answer:
        rows = self.state.inventory(_q(query, "location"), _q(query, "item"))
        return Answer(200, _json({"inventory": rows}))

    # .................................................................. requisitions

    def post_requisition(self, *, body: bytes, **_: Any) -> Answer:
        doc = need_object(parse_json(body), "body")
        location = need_str(doc, "location_id")
        item = need_str(doc, "item_id")
        qty = need_quantity(doc, "quantity", negative_ok=False)
        uom = need_str(doc, "uom")
        reason = need_str(doc, "reason", required=False)
        req_id = self.state.create_requisition(location, item, qty, uom, reason, doc)
        return Answer(201, _json({"id": req_id, "status": "open"}))

    def list_requisitions(self, *, query: dict[str, list[str]], **_: Any) -> Answer:
        status = _q(query, "status")
        if status and status not in ("open", "closed"):
            raise invalid("status", f"expected open or closed (got {status!r})")
        rows = self.state.requisitions(status, _q(query, "location"), _q(query, "item"))
        return Answer(200, _json({"requisitions": rows}))

    def get_requisition(self, req_id: str, **_: Any) -> Answer:
        row = self.state.requisition(req_id)
        if row is None:
            raise ApiError(404, f"no requisition {req_id}")
        return Answer(200, _json(row))

    def close_requisition(self, req_id: str, **_: Any) -> Answer:
        row = self.state.close_requisition(req_id)
        if row is None:
            raise ApiError(404, f"no requisition {req_id}")
        return Answer(200, _json({"id": row["id"], "status": row["status"]}))

    # .................................................................. purchasing

    def _po_route(self, parts: list[str]) -> tuple[str | None, tuple, dict]:
        n = len(parts)
        if n == 1:
            return "pos", (), {"POST": self.post_po, "GET": self.list_pos}
        if n == 2:
            return "po", (parts[1],), {"GET": self.get_po}
        if n == 3 and parts[2] in ("release", "acknowledgements", "transmissions", "changes"):
            return "po_" + parts[2], (parts[1], parts[2]), {"POST": self.po_action}
        return None, (), {}

    def post_po(self, *, body: bytes, **_: Any) -> Answer:
        try:
            status, out = self.purchasing.create(parse_json(body))
        except PoError as exc:
            raise ApiError(exc.status, exc.message) from exc
        return Answer(status, _json(out))

    def list_pos(self, *, query: dict[str, list[str]], **_: Any) -> Answer:
        return Answer(200, _json({"purchase_orders": self.purchasing.list(_q(query, "status"))}))

    def get_po(self, po: str, **_: Any) -> Answer:
        try:
            return Answer(200, _json(self.purchasing.get(po)))
        except PoError as exc:
            raise ApiError(exc.status, exc.message) from exc

    def po_action(self, po: str, action: str, *, body: bytes, **_: Any) -> Answer:
        try:
            if action == "release":
                return Answer(202, _json(self.purchasing.release(po)))
            doc = parse_json(body)
            if action == "acknowledgements":
                return Answer(200, _json(self.purchasing.acknowledge(po, doc)))
            if action == "changes":
                return Answer(200, _json(self.purchasing.change(po, doc)))
            return Answer(200, _json(self.purchasing.transmitted(po, doc)))
        except PoError as exc:
            raise ApiError(exc.status, exc.message) from exc

    # .................................................................. GR / AP

    def post_document(self, table: str, prefix: str, *, body: bytes, **_: Any) -> Answer:
        doc = need_object(parse_json(body), "body")
        if table == "goods_receipts":  # received goods move on-hand, as an ERP's would
            try:
                doc_id = self.state.receive_goods(doc)
            except ValueError as exc:
                raise ApiError(422, str(exc)) from exc
        else:
            doc_id = self.state.store_document(table, prefix, doc)
        return Answer(201, _json({"id": doc_id}))

    def list_documents(self, table: str, prefix: str, **_: Any) -> Answer:
        return Answer(200, _json({table.replace("_", "-"): self.state.documents(table)}))

    # .................................................................. charges, state

    def list_charges(self, **_: Any) -> Answer:
        return Answer(200, _json({"charges": self.state.charges()}))

    def get_state(self, **_: Any) -> Answer:
        return Answer(200, _json({**self.state.counts(), **self.purchasing.counts()}))

    def post_charge_item(self, *, body: bytes, headers: dict[str, str], **_: Any) -> Answer:
        from engine.sandbox.billing import charge_item

        doc = need_object(parse_json(body), "body")
        reject = self.billing.reject_codes if self.billing is not None else set()
        status, out, extra = charge_item(self.state, doc, headers.get("if-none-exist", ""), reject)
        return Answer(status, _json(out), {"content-type": "application/fhir+json", **extra})

    def get_charge_item(self, charge_id: str, **_: Any) -> Answer:
        doc = self.state.charge_doc(charge_id)
        if doc is None:
            raise ApiError(404, f"no ChargeItem {charge_id}")
        return Answer(200, _json(doc), {"content-type": "application/fhir+json"})

    # .................................................................. faults

    def get_faults(self, **_: Any) -> Answer:
        out = self.faults.as_dict()
        if self.billing is not None:
            out["billing_reject_codes"] = sorted(self.billing.reject_codes)
        return Answer(200, _json(out))

    def post_faults(self, *, body: bytes, **_: Any) -> Answer:
        doc = need_object(parse_json(body), "body")
        f = self.faults
        if "fail_next" in doc:
            f.fail_next = _count(doc, "fail_next")
            status = doc.get("status", 503)
            if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status < 600:
                raise invalid("status", f"expected an HTTP error status 400..599 (got {status!r})")
            f.status = status
            retry_after = doc.get("retry_after")
            if retry_after is not None and not isinstance(retry_after, str | int):
                raise invalid("retry_after", "expected seconds or an HTTP date")
            f.retry_after = retry_after
        if "path" in doc:
            path = doc["path"]
            if path is not None and (not isinstance(path, str) or not path.startswith("/")):
                raise invalid("path", f"expected a path starting with / or null (got {path!r})")
            f.path = path
        if "delay_next" in doc:
            f.delay_next = _count(doc, "delay_next")
            seconds = doc.get("seconds", 1)
            if isinstance(seconds, bool) or not isinstance(seconds, int | Decimal) or seconds < 0:
                raise invalid("seconds", f"expected a number of seconds >= 0 (got {seconds!r})")
            f.seconds = float(seconds)
        if "billing_reject_codes" in doc:
            codes = doc["billing_reject_codes"]
            if not isinstance(codes, list) or not all(isinstance(c, str) for c in codes):
                raise invalid("billing_reject_codes", "expected a list of charge codes")
            if self.billing is not None:
                self.billing.reject_codes = set(codes)
        return self.get_faults()

    def delete_faults(self, **_: Any) -> Answer:
        self.faults = Faults()
        if self.billing is not None:
            self.billing.reject_codes = set(self.billing.initial_reject_codes)
        return self.get_faults()

    def take_fault(self, path: str) -> tuple[str, Any] | None:
        """The fault for this request, if one is armed for its path ('/_faults' and '/state' are
        exempt)."""
        f = self.faults
        if path.startswith("/_") or path.rstrip("/") == "/state":
            return None
        if f.path is not None and not path.startswith(f.path):
            return None
        if f.fail_next > 0:
            f.fail_next -= 1
            self.state.bump("faults_injected")
            return "fail", f
        if f.delay_next > 0:
            f.delay_next -= 1
            self.state.bump("faults_injected")
            return "delay", f.seconds
        return None


def _q(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


def _count(doc: dict, name: str) -> int:
    value = doc.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise invalid(name, f"expected a count >= 0 (got {value!r})")
    return value


def operation_outcome(message: str, status: int) -> dict[str, Any]:
    code = {404: "not-found", 405: "not-supported", 409: "conflict", 422: "invalid"}.get(
        status, "exception"
    )
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": message}],
    }


# ---------------------------------------------------------------------------- twisted.web


class ErpResource(resource.Resource):
    """The whole API as one leaf resource; injected delays answer through the reactor."""

    isLeaf = True

    def __init__(self, api: ErpApi, reactor: Any, cloud: Any = None) -> None:
        super().__init__()
        self.api = api
        self.reactor = reactor
        self.cloud = cloud  # the emulated cloud ERPs (cloud.py), routed by path prefix
        self.pending: set[Any] = set()  # delayed answers not sent yet (cancelled on stop)

    def render(self, request: Any) -> Any:
        method = request.method.decode("ascii", "replace").upper()
        path = request.path.decode("utf-8", "replace") or "/"
        headers = {
            k.decode("latin-1").lower(): v[0].decode("latin-1")
            for k, v in request.requestHeaders.getAllRawHeaders()
        }
        body = request.content.read(MAX_BODY + 1) if request.content is not None else b""
        if len(body) > MAX_BODY:
            return self._send(
                request, Answer(413, _json({"error": f"body: over {MAX_BODY} bytes"}))
            )
        fault = self.api.take_fault(path)
        if fault is not None and fault[0] == "fail":
            f = fault[1]
            extra = {} if f.retry_after is None else {"retry-after": str(f.retry_after)}
            answer = Answer(f.status, _json({"error": f"injected fault: {f.status}"}), extra)
            return self._send(request, answer)
        late_by = fault[1] if fault is not None else 0.0
        try:
            query = parse_qs(request.uri.decode("utf-8", "replace").partition("?")[2])
            if self.cloud is not None and self.cloud.handles(path):
                answer = self.cloud.handle(method, path, query, body, headers)
                late_by = max(late_by, self.cloud.latency_of(path))
            else:
                answer = self.api.handle(method, path, query, body, headers)
        except Exception:
            log.failure("sandbox ERP: {method} {path} failed", method=method, path=path)
            answer = Answer(500, _json({"error": "internal error (see the sandbox log)"}))
        if late_by > 0:  # a delay or an emulated API's latency: the work is done, answered late
            gone: list[bool] = []
            request.notifyFinish().addErrback(lambda _: gone.append(True))

            def late() -> None:
                self.pending.discard(call)
                if not gone:
                    request.write(self._send(request, answer))
                    request.finish()

            call = self.reactor.callLater(late_by, late)
            self.pending.add(call)
            return server.NOT_DONE_YET
        return self._send(request, answer)

    @staticmethod
    def _send(request: Any, answer: Answer) -> bytes:
        request.setResponseCode(answer.status)
        request.setHeader(b"content-type", b"application/json")
        for name, value in answer.headers.items():
            request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
        return answer.body


class SandboxSite(server.Site):
    """A Site that logs method, path and status only (never the query string nor the body)."""

    def log(self, request: Any) -> None:
        log.info(
            "sandbox HTTP {method} {path} {status}",
            method=request.method.decode("ascii", "replace"),
            path=request.path.decode("utf-8", "replace"),
            status=request.code,
        )


def site(api: ErpApi, reactor: Any, cloud: Any = None) -> SandboxSite:
    s = SandboxSite(ErpResource(api, reactor, cloud))
    s.displayTracebacks = False
    return s


__all__ = ["Answer", "ApiError", "ErpApi", "ErpResource", "Faults", "site"]
