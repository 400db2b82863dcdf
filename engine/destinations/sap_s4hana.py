"""The ``sap_s4hana`` destination: the supply ledger's stock issues and requisitions posted to SAP
S/4HANA over OData V2 (field by field in docs/erp-profiles.md).

* A stock issue becomes one material document: a deep insert of ``A_MaterialDocumentHeader``
  (``API_MATERIAL_DOCUMENT_SRV``, ``GoodsMovementCode`` 03) with an item per line, movement
  type 201 (to a cost center) or 261 (to an order) for usage and 202/262 for a credit.
* A requisition becomes a deep insert of ``A_PurchaseRequisitionHeader``
  (``API_PURCHASEREQ_PROCESS_SRV``, type NB) with one item.

Each request carries the OASIS repeatable-request headers (``Repeatability-Request-ID`` from the
delivery's idempotency key, ``Repeatability-First-Sent`` from when it was queued), so a resend
is answered with the first result instead of posting twice. Writes need SAP's CSRF token: it
is fetched with ``x-csrf-token: Fetch`` (with the session cookie it is bound to), kept, and
fetched again once when SAP answers 403 ``x-csrf-token: Required``. With ``bulk``, deliveries
go in one ``$batch`` with a changeset each, so one failing item fails only its own delivery.
What comes back (``MaterialDocument``, ``PurchaseRequisition``) is kept with the delivery; SAP's
error message is kept in the stored text (not logged).
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import urllib.parse
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from engine.errors import DeliveryError
from engine.model import Delivery, ItemOutcome
from engine.net import odata
from engine.net.auth import AUTH_SPEC, call_with_auth, make_authenticator
from engine.net.bulk import bulk_of, bulk_spec
from engine.net.http import HttpAnswer, caller_for, connection_fields, origin, status_error
from engine.registry import destination
from engine.spec import Bool, Context, Enum, Field, Int, MapOf, Spec, Str, join

MATERIAL_DOCUMENT = "API_MATERIAL_DOCUMENT_SRV"
PURCHASE_REQUISITION = "API_PURCHASEREQ_PROCESS_SRV"
ENTITY = {
    MATERIAL_DOCUMENT: "A_MaterialDocumentHeader",
    PURCHASE_REQUISITION: "A_PurchaseRequisitionHeader",
}
REVERSAL = {"201": "202", "261": "262"}


def _check(config: Any, ctx: Context, node: Any, path: str) -> None:
    if urllib.parse.urlsplit(config.base_url).scheme not in ("http", "https"):
        ctx.error(
            node,
            join(path, "base_url"),
            f"must start with http:// or https:// (got {config.base_url!r})",
        )
    for location, sloc in config.storage_locations.items():
        if len(sloc) > 4:
            ctx.error(
                node,
                join(join(path, "storage_locations"), location),
                f"an SAP storage location has at most 4 characters (got {sloc!r})",
            )
    if config.ca_file and not config.tls_verify:
        ctx.error(node, join(path, "ca_file"), "ca_file needs tls_verify: true (got false)")


SAP_S4HANA_SPEC = Spec(
    "sap_s4hana",
    [
        Field(
            "base_url",
            Str(),
            description="The system's API host, without the OData path.",
            example="https://my000000-api.s4hana.cloud.sap",
        ),
        Field("auth", AUTH_SPEC, description="The communication user (basic) or OAuth2."),
        Field("sap_client", Str(), None, "The client (sap-client), when not the default.", "100"),
        Field(
            "plant", Str(), description="Plant of the stock and the requisitions.", example="1010"
        ),
        Field(
            "storage_locations",
            MapOf(Str()),
            description="Our location ids to storage locations (at most 4 characters each).",
            example={"LOC-OR-MAIN": "OR01"},
        ),
        Field(
            "movement_type",
            Enum("201", "261"),
            "201",
            "Goods issue to a cost center (201, the line's cost center) or to an order (261, "
            "the line's cost center read as the order); credits post the reversal (202/262).",
        ),
        Field("purchasing_group", Str(), "001", "Purchasing group of requisitions."),
        Field("requisition_type", Str(), "NB", "Purchase requisition document type."),
        Field(
            "delivery_days",
            Int(0, 365),
            2,
            "Delivery date of a requisition without its own need_by, in days from today.",
        ),
        Field(
            "repeatable",
            Bool(),
            True,
            "Send the OASIS repeatable-request headers (the API answers a resend with the "
            "first result).",
        ),
        Field(
            "bulk",
            bulk_spec(
                "sap_s4hana",
                most=1000,
                description="Several deliveries in one $batch, a changeset each.",
                example="bulk: {max_items: 100, max_wait: 250ms}",
            ),
            None,
            "Several deliveries in one $batch request.",
        ),
        *connection_fields(60.0),
    ],
    description=(
        "Post the supply ledger's stock issues (material documents, movement type 201/261) "
        "and requisitions (purchase requisitions) to SAP S/4HANA over OData V2, with the CSRF "
        "handshake and repeatable requests; $batch for bulk calls. See docs/erp-profiles.md."
    ),
    example="""
sap_s4hana:
  base_url: ${SAP_URL}
  auth:
    basic: {user: WHARF_COMM, password: {env: SAP_PASSWORD}}
  plant: '1010'
  storage_locations: {LOC-OR-MAIN: OR01, LOC-CATH-1: CL01}
  bulk: {max_items: 100, max_wait: 250ms}
""",
    check=_check,
)


def _load(delivery: Delivery) -> Any:
    try:
        return json.loads(delivery.payload)
    except ValueError:
        raise DeliveryError("the payload is not JSON", retryable=False) from None


def _effect(delivery: Delivery, doc: Any) -> str:
    effect = delivery.meta.get("effect")
    if isinstance(effect, str):
        return effect
    if isinstance(doc, dict) and doc.get("type") == "inventory_issue":
        return "issue"
    return "requisition"


def _day(value: Any) -> datetime.date:
    digits = str(value or "").replace("-", "")[:8]
    if len(digits) == 8 and digits.isdigit():
        return datetime.date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    return datetime.date.today()


def _error_message(body: bytes) -> str:
    """``M7/021 Deficit of ...`` from SAP's error body (empty when it has none)."""
    try:
        error = json.loads(body).get("error")
        return f"{error.get('code')} {error['message']['value']}".strip()
    except (ValueError, AttributeError, KeyError, TypeError):
        return ""


class SapS4hanaDestination:
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
        self.caller = caller_for(options, reactor, base_dir)
        self.auth = make_authenticator(
            options.auth,
            caller=self.caller,
            clock=reactor,
            environ=os.environ if environ is None else environ,
            base_dir=base_dir,
        )
        self.bulk = bulk_of(options.bulk)
        self.root = f"{options.base_url.rstrip('/')}/sap/opu/odata/sap"
        self._csrf: dict[str, tuple[bytes, bytes]] = {}  # service -> (token, cookie)
        self._fetching: dict[str, list[Deferred[tuple[bytes, bytes]]]] = {}
        self.csrf_fetches = 0

    def close(self) -> Deferred[None]:
        return self.caller.close()

    # ------------------------------------------------------------------ payloads

    def _sloc(self, location: str) -> str:
        sloc = self.options.storage_locations.get(location)
        if sloc is None:
            known = ", ".join(sorted(self.options.storage_locations)) or "none"
            raise DeliveryError(
                f"sap_s4hana: location {location!r} has no storage location (expected one of: "
                f"{known}; add it to storage_locations)",
                retryable=False,
            )
        return sloc

    def material_document(self, delivery: Delivery, doc: Any) -> dict[str, Any]:
        lines = doc.get("lines") if isinstance(doc, dict) else None
        if not isinstance(lines, list) or not lines:
            raise DeliveryError("issue: expected lines", retryable=False)
        opts = self.options
        items = []
        for i, line in enumerate(lines):
            try:
                qty = Decimal(str(line["quantity"]))
            except (InvalidOperation, KeyError):
                raise DeliveryError(
                    f"lines[{i}].quantity: expected a decimal", retryable=False
                ) from None
            kind = opts.movement_type if qty > 0 else REVERSAL[opts.movement_type]
            item: dict[str, Any] = {
                "Material": line["item_id"],
                "Plant": opts.plant,
                "StorageLocation": self._sloc(line["location_id"]),
                "GoodsMovementType": kind,
                "QuantityInEntryUnit": str(abs(qty)),
                "EntryUnit": line["uom"],
                "MaterialDocumentItemText": str(line.get("usage_id") or "")[:50],
            }
            if opts.movement_type == "201":
                item["CostCenter"] = line.get("cost_center") or ""
                if line.get("gl_account"):
                    item["GLAccount"] = line["gl_account"]
            else:
                item["OrderID"] = line.get("cost_center") or ""
            if line.get("lot"):
                item["Batch"] = str(line["lot"])[:10]
            items.append(item)
        day = odata.odata_date(_day(lines[0].get("service_date")))
        return {
            "GoodsMovementCode": "03",
            "PostingDate": day,
            "DocumentDate": day,
            "MaterialDocumentHeaderText": f"WHARF {delivery.idempotency_key[:19]}",
            "to_MaterialDocumentItem": items,
        }

    def purchase_requisition(self, delivery: Delivery, doc: Any) -> dict[str, Any]:
        opts = self.options
        need_by = doc.get("need_by")
        day = (
            _day(need_by)
            if need_by
            else datetime.date.today() + datetime.timedelta(days=opts.delivery_days)
        )
        return {
            "PurchaseRequisitionType": opts.requisition_type,
            "PurReqnDescription": f"WHARF {delivery.idempotency_key[:34]}",
            "to_PurchaseReqnItem": [
                {
                    "PurchaseRequisitionItem": "10",
                    "Material": doc["item_id"],
                    "Plant": opts.plant,
                    "StorageLocation": self._sloc(doc["location_id"]),
                    "RequestedQuantity": str(doc["quantity"]),
                    "BaseUnit": doc["uom"],
                    "PurchasingGroup": opts.purchasing_group,
                    "DeliveryDate": odata.odata_date(day),
                    "PurchaseRequisitionItemText": str(doc.get("reason") or "")[:40],
                }
            ],
        }

    def _request(self, delivery: Delivery) -> tuple[str, dict[str, Any]]:
        doc = _load(delivery)
        effect = _effect(delivery, doc)
        if effect == "issue":
            return MATERIAL_DOCUMENT, self.material_document(delivery, doc)
        if effect == "requisition":
            return PURCHASE_REQUISITION, self.purchase_requisition(delivery, doc)
        raise DeliveryError(
            f"sap_s4hana takes stock issues and requisitions (got {effect!r})", retryable=False
        )

    def _repeatability(self, delivery: Delivery) -> list[tuple[str, str]]:
        if not self.options.repeatable:
            return []
        return [
            ("Repeatability-Request-ID", delivery.idempotency_key),
            ("Repeatability-First-Sent", odata.imf_fixdate(delivery.created_at)),
        ]

    # ------------------------------------------------------------------ calls

    def _url(self, service: str, tail: str = "") -> str:
        url = f"{self.root}/{service}/{tail}"
        if self.options.sap_client:
            url += f"?sap-client={urllib.parse.quote(self.options.sap_client)}"
        return url

    async def _token(self, service: str, fresh: bool = False) -> tuple[bytes, bytes]:
        """The CSRF token (and its session cookie) of ``service``; one fetch at a time, the
        sends that need it meanwhile wait for that one."""
        if not fresh and service in self._csrf:
            return self._csrf[service]
        waiter: Deferred[tuple[bytes, bytes]] = Deferred()
        waiters = self._fetching.setdefault(service, [])
        waiters.append(waiter)
        if len(waiters) == 1:
            defer.ensureDeferred(self._fetch_token(service)).addBoth(
                lambda result: self._fetched(service, result)
            )
        return await waiter

    def _fetched(self, service: str, result: Any) -> None:
        for waiter in self._fetching.pop(service, []):
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    async def _fetch_token(self, service: str) -> tuple[bytes, bytes]:
        self.csrf_fetches += 1
        headers = {b"x-csrf-token": [b"Fetch"], b"Accept": [b"application/json"]}
        answer = await call_with_auth(
            self.caller, self.auth, "GET", self._url(service), headers, None
        )
        token = answer.header("x-csrf-token")
        if not answer.ok or not token:
            raise status_error(
                "GET", origin(self.root), answer, self.reactor.seconds(), detail="no CSRF token"
            )
        cookies = answer.headers.getRawHeaders(b"set-cookie") or []
        cookie = b"; ".join(c.split(b";", 1)[0].strip() for c in cookies)
        self._csrf[service] = (token.encode("latin-1"), cookie)
        return self._csrf[service]

    async def _post(
        self, service: str, tail: str, ctype: bytes, body: bytes, extra: list[tuple[str, str]]
    ) -> HttpAnswer:
        for fresh in (False, True):
            token, cookie = await self._token(service, fresh)
            headers = {
                b"Content-Type": [ctype],
                b"Accept": [b"application/json"],
                b"x-csrf-token": [token],
                **{k.encode(): [v.encode("latin-1")] for k, v in extra},
            }
            if cookie:
                headers[b"Cookie"] = [cookie]
            answer = await call_with_auth(
                self.caller, self.auth, "POST", self._url(service, tail), headers, body
            )
            required = (answer.header("x-csrf-token") or "").lower() == "required"
            if not (answer.code == 403 and required):
                return answer
        return answer

    def _failure(self, answer: HttpAnswer) -> DeliveryError:
        detail = _error_message(answer.body)
        error = status_error(
            "POST", origin(self.root), answer, self.reactor.seconds(), detail=detail
        )
        if detail:
            error.log_text = error.message.replace(f": {detail}", "")
        return error

    @staticmethod
    def _result(body: bytes) -> bytes:
        """What comes back: the document's number (and year), as JSON."""
        try:
            d = json.loads(body)["d"]
        except (ValueError, KeyError, TypeError):
            return body
        kept = {
            k: d[k]
            for k in ("MaterialDocument", "MaterialDocumentYear", "PurchaseRequisition")
            if k in d
        }
        return json.dumps(kept).encode() if kept else body

    async def send(self, delivery: Delivery) -> bytes:
        service, doc = self._request(delivery)
        answer = await self._post(
            service,
            ENTITY[service],
            b"application/json",
            json.dumps(doc).encode(),
            self._repeatability(delivery),
        )
        if not answer.ok:
            raise self._failure(answer)
        return self._result(answer.body)

    async def send_batch(self, deliveries: list[Delivery], key: str) -> list[ItemOutcome]:
        """One $batch per service, a changeset per delivery: each settles on its own."""
        outcomes: list[ItemOutcome | None] = [None] * len(deliveries)
        groups: dict[str, list[tuple[int, odata.Request]]] = {}
        for i, delivery in enumerate(deliveries):
            try:
                service, doc = self._request(delivery)
            except DeliveryError as e:
                outcomes[i] = ItemOutcome(error=e)
                continue
            request = odata.Request(
                ENTITY[service], json.dumps(doc).encode(), tuple(self._repeatability(delivery))
            )
            groups.setdefault(service, []).append((i, request))
        for service, members in groups.items():
            try:
                answers = await self._batch(service, [r for _, r in members], key)
            except DeliveryError as e:
                if len(groups) == 1:
                    raise  # the call failed as a whole
                for i, _ in members:
                    outcomes[i] = ItemOutcome(error=e)
                continue
            for (i, _), answer in zip(members, answers, strict=True):
                outcomes[i] = self._item(answer)
        return [o if o is not None else ItemOutcome(requeue=True) for o in outcomes]

    async def _batch(
        self, service: str, requests: list[odata.Request], key: str
    ) -> list[odata.BatchAnswer]:
        ctype, body = odata.batch_body(requests)
        extra = [("Idempotency-Key", key)]
        answer = await self._post(service, "$batch", ctype.encode(), body, extra)
        if not answer.ok:
            raise self._failure(answer)
        try:
            answers = odata.read_batch(answer.header("content-type") or "", answer.body)
        except ValueError as e:
            raise DeliveryError(
                f"the $batch answer cannot be read ({e})",
                retryable=True,
                ambiguous=True,
                response=answer.body,
            ) from None
        if len(answers) != len(requests):
            raise DeliveryError(
                f"the $batch answer holds {len(answers)} answer(s) for {len(requests)} "
                "changeset(s)",
                retryable=True,
                ambiguous=True,
                response=answer.body,
            )
        return answers

    def _item(self, answer: odata.BatchAnswer) -> ItemOutcome:
        if 200 <= answer.status < 300:
            return ItemOutcome(self._result(answer.body))
        raw = Headers({k.encode(): [v.encode("latin-1")] for k, v in answer.headers.items()})
        error = self._failure(HttpAnswer(answer.status, "", raw, answer.body))
        return ItemOutcome(answer.body, error)


@destination("sap_s4hana", SAP_S4HANA_SPEC)
def make_sap_s4hana(
    options: Any, *, reactor: Any, channel: str, name: str, base_dir: pathlib.Path
) -> SapS4hanaDestination:
    """Build the ``sap_s4hana`` destination of channel ``channel`` named ``name``."""
    return SapS4hanaDestination(
        options, reactor=reactor, channel=channel, name=name, base_dir=base_dir
    )
