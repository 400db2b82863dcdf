"""The ``oracle_fusion`` destination: the supply ledger's stock issues and requisitions posted to
Oracle Fusion Cloud SCM over REST (field by field in docs/erp-profiles.md).

* A stock issue (the ledger's ``inventory_issue``) becomes one ``inventoryStagedTransactions``
  row per line: a *Miscellaneous Issue* with a negative quantity for usage, a *Miscellaneous
  Receipt* for a credit; the line's event key is its ``TransactionReference``. Several lines
  (or, with ``bulk``, several deliveries) go in one batch request
  (``application/vnd.oracle.adf.batch+json``), all or nothing: when a part fails, its delivery
  fails and the others are sent again in a new batch without counting an attempt.
* A requisition becomes a ``purchaseRequisitions`` create (header, one line) followed by its
  ``submitRequisition`` action; its ``Description`` carries the request's key.

Oracle's REST API takes no idempotency key, so a resend looks before it creates (finder
``q=TransactionReference='...'`` or ``q=Description='...'``) and skips what is there. What comes
back (``TransactionInterfaceId``, ``RequisitionHeaderId``) is kept with the delivery. OAuth2
client credentials (or basic) with secrets from the environment or files; HTTP 429 holds the
queue; other errors read as for ``http``, with Oracle's ``o:errorDetails`` kept in the stored
text (not logged).
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

from twisted.internet.defer import Deferred

from engine.errors import DeliveryError
from engine.model import Delivery, ItemOutcome
from engine.net.auth import AUTH_SPEC, call_with_auth, make_authenticator
from engine.net.bulk import bulk_of, bulk_spec
from engine.net.http import HttpAnswer, caller_for, connection_fields, origin, status_error
from engine.registry import destination
from engine.spec import Context, Field, Int, MapOf, Spec, Str, join

JSON = b"application/json"
BATCH = b"application/vnd.oracle.adf.batch+json"
ACTION = b"application/vnd.oracle.adf.action+json"
STAGED = "inventoryStagedTransactions"
REQUISITIONS = "purchaseRequisitions"


def _check(config: Any, ctx: Context, node: Any, path: str) -> None:
    if urllib.parse.urlsplit(config.base_url).scheme not in ("http", "https"):
        ctx.error(
            node,
            join(path, "base_url"),
            f"must start with http:// or https:// (got {config.base_url!r})",
        )
    if config.ca_file and not config.tls_verify:
        ctx.error(node, join(path, "ca_file"), "ca_file needs tls_verify: true (got false)")


ORACLE_FUSION_SPEC = Spec(
    "oracle_fusion",
    [
        Field(
            "base_url",
            Str(),
            description="The Fusion pod, without the REST path.",
            example="https://fa-abcd-saasfaprod1.fa.ocs.oraclecloud.com",
        ),
        Field("api_version", Str(), "11.13.18.05", "The REST API version in the path."),
        Field(
            "auth",
            AUTH_SPEC,
            description="OAuth2 client credentials (an IDCS/IAM confidential app) or basic.",
        ),
        Field(
            "organization_code", Str(), description="Inventory organization code.", example="GH1"
        ),
        Field(
            "subinventories",
            MapOf(Str()),
            {},
            "Our location ids to subinventory codes; a location not listed is sent as it is.",
            {"LOC-OR-MAIN": "ORMAIN"},
        ),
        Field(
            "business_unit",
            Str(),
            None,
            "Requisitioning business unit name (needed for requisitions).",
            "GENHOSP BU",
        ),
        Field("preparer_email", Str(), None, "Preparer of requisitions (a Fusion user's email)."),
        Field(
            "need_by_days",
            Int(0, 365),
            2,
            "Requested delivery date of a requisition without its own need_by, in days.",
        ),
        Field(
            "bulk",
            bulk_spec(
                "oracle_fusion",
                most=500,
                description="Several stock issues in one batch request (all or nothing).",
                example="bulk: {max_items: 50, max_wait: 250ms}",
            ),
            None,
            "Several deliveries in one batch request.",
        ),
        *connection_fields(60.0),
    ],
    description=(
        "Post the supply ledger's stock issues (inventoryStagedTransactions) and requisitions "
        "(purchaseRequisitions, then submitRequisition) to Oracle Fusion Cloud SCM over REST, "
        "with OAuth2; a resend looks before it creates. See docs/erp-profiles.md."
    ),
    example="""
oracle_fusion:
  base_url: ${ORACLE_URL}
  auth:
    oauth2:
      token_url: ${ORACLE_TOKEN_URL}
      client_id: wharf
      client_secret: {env: ORACLE_CLIENT_SECRET}
      scope: urn:opc:resource:consumer::all
  organization_code: GH1
  subinventories: {LOC-OR-MAIN: ORMAIN}
  business_unit: GENHOSP BU
  preparer_email: supply.chain@genhosp.org
  bulk: {max_items: 50, max_wait: 250ms}
""",
    check=_check,
)


def effect_of(delivery: Delivery, doc: Any) -> str:
    """``issue``, ``requisition`` or ``ap_invoice``: the ledger's or procurement's effect."""
    effect = delivery.meta.get("effect")
    if isinstance(effect, str):
        return effect
    if isinstance(doc, dict) and doc.get("type") == "inventory_issue":
        return "issue"
    if isinstance(doc, dict) and doc.get("type") == "ap_invoice":
        return "ap_invoice"
    return "requisition"


def _decimal(value: Any, what: str) -> Decimal:
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise DeliveryError(
            f"{what}: expected a decimal (got {value!r})", retryable=False
        ) from None


def _date(value: Any) -> str:
    """An ISO date from an HL7 TS (``20260116073000``) or an ISO timestamp; today when none."""
    text = str(value or "")
    digits = text.replace("-", "")[:8]
    if len(digits) == 8 and digits.isdigit():
        return f"{digits[:4]}-{digits[4:6]}-{digits[6:8]}"
    return datetime.date.today().isoformat()


def _load(delivery: Delivery) -> Any:
    try:
        return json.loads(delivery.payload)
    except ValueError:
        raise DeliveryError("the payload is not JSON", retryable=False) from None


def _error_detail(answer: HttpAnswer) -> tuple[str, str | None]:
    """Oracle's first error detail and its path (``/parts/3/payload/ItemNumber``)."""
    try:
        doc = json.loads(answer.body)
    except ValueError:
        return "", None
    details = doc.get("o:errorDetails") if isinstance(doc, dict) else None
    if not isinstance(details, list) or not details or not isinstance(details[0], dict):
        return "", None
    first = details[0]
    return str(first.get("detail") or ""), first.get("o:errorPath")


class OracleFusionDestination:
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
        self.root = f"{options.base_url.rstrip('/')}/fscmRestApi/resources/{options.api_version}"

    def close(self) -> Deferred[None]:
        return self.caller.close()

    # ------------------------------------------------------------------ payloads

    def _subinventory(self, location: str) -> str:
        return self.options.subinventories.get(location, location)

    def staged(self, doc: Any) -> list[dict[str, Any]]:
        """The inventoryStagedTransactions rows of a stock issue, one per line."""
        lines = doc.get("lines") if isinstance(doc, dict) else None
        if not isinstance(lines, list) or not lines:
            raise DeliveryError("issue: expected lines", retryable=False)
        rows = []
        for i, line in enumerate(lines):
            qty = _decimal(line.get("quantity"), f"lines[{i}].quantity")
            row: dict[str, Any] = {
                "OrganizationCode": self.options.organization_code,
                "ItemNumber": line["item_id"],
                "SubinventoryCode": self._subinventory(line["location_id"]),
                "TransactionTypeName": "Miscellaneous Issue"
                if qty > 0
                else "Miscellaneous Receipt",
                "TransactionQuantity": str(-qty),
                "TransactionUnitOfMeasure": line["uom"],
                "TransactionDate": _date(line.get("service_date")),
                "TransactionReference": line.get("event_key") or line.get("usage_id"),
                "SourceCode": "WHARF",
            }
            if line.get("lot"):
                row["lots"] = [{"LotNumber": line["lot"], "TransactionQuantity": str(abs(qty))}]
            if line.get("serial"):
                row["serials"] = [
                    {"FromSerialNumber": line["serial"], "ToSerialNumber": line["serial"]}
                ]
            rows.append(row)
        return rows

    def requisition(self, delivery: Delivery, doc: Any) -> dict[str, Any]:
        """The purchaseRequisitions create of a requisition (header and one line)."""
        opts = self.options
        if not opts.business_unit or not opts.preparer_email:
            raise DeliveryError(
                "oracle_fusion: business_unit and preparer_email are needed for requisitions",
                retryable=False,
            )
        need_by = (
            doc.get("need_by")
            or (datetime.date.today() + datetime.timedelta(days=opts.need_by_days)).isoformat()
        )
        key = doc.get("request_key") or delivery.meta.get("event_key") or delivery.idempotency_key
        return {
            "RequisitioningBUName": opts.business_unit,
            "PreparerEmail": opts.preparer_email,
            "Description": f"Wharf {key}"[:240],
            "Justification": str(doc.get("reason") or "")[:240],
            "lines": [
                {
                    "LineNumber": 1,
                    "ItemNumber": doc["item_id"],
                    "Quantity": str(doc["quantity"]),
                    "UOM": doc["uom"],
                    "DestinationTypeCode": "INVENTORY",
                    "DestinationOrganizationCode": opts.organization_code,
                    "DestinationSubinventory": self._subinventory(doc["location_id"]),
                    "RequestedDeliveryDate": _date(need_by),
                }
            ],
        }

    # ------------------------------------------------------------------ calls

    async def _call(
        self, method: str, url: str, body: Any = None, ctype: bytes = JSON
    ) -> HttpAnswer:
        headers = {b"Accept": [b"application/json"], b"REST-Framework-Version": [b"4"]}
        data = None
        if body is not None:
            headers[b"Content-Type"] = [ctype]
            data = json.dumps(body).encode()
        return await call_with_auth(self.caller, self.auth, method, url, headers, data)

    def _failure(self, method: str, answer: HttpAnswer) -> DeliveryError:
        detail, _ = _error_detail(answer)
        error = status_error(
            method, origin(self.root), answer, self.reactor.seconds(), detail=detail
        )
        if detail:
            error.log_text = error.message.replace(f": {detail}", "")
        return error

    async def _find(self, resource: str, attribute: str, value: str) -> list[dict[str, Any]]:
        query = urllib.parse.quote(f"{attribute}='{value}'", safe="")
        answer = await self._call("GET", f"{self.root}/{resource}?q={query}&onlyData=true")
        if not answer.ok:
            raise self._failure("GET", answer)
        try:
            items = json.loads(answer.body).get("items")
        except (ValueError, AttributeError):
            items = None
        if not isinstance(items, list):
            raise DeliveryError("GET: expected items in the finder's answer", retryable=True)
        return items

    async def _unsent(self, rows: list[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
        """Split a resend's rows: those not in Oracle yet, and those found (by reference)."""
        todo, found = [], []
        for row in rows:
            ref = row.get("TransactionReference")
            hits = await self._find(STAGED, "TransactionReference", ref) if ref else []
            (found if hits else todo).append(hits[0] if hits else row)
        return todo, found

    async def _batch(self, parts: list[dict[str, Any]]) -> HttpAnswer:
        body = {
            "parts": [
                {"id": f"part{i + 1}", "path": f"/{STAGED}", "operation": "create", "payload": p}
                for i, p in enumerate(parts)
            ]
        }
        return await self._call("POST", f"{self.root}/", body, BATCH)

    @staticmethod
    def _created(answer: HttpAnswer) -> list[dict[str, Any]]:
        try:
            doc = json.loads(answer.body)
        except ValueError:
            raise DeliveryError(
                "the batch answer is not JSON", retryable=True, ambiguous=True
            ) from None
        parts = doc.get("parts") if isinstance(doc, dict) else None
        if not isinstance(parts, list):
            raise DeliveryError("the batch answer has no parts", retryable=True, ambiguous=True)
        return [p.get("payload") or {} for p in parts]

    @staticmethod
    def _summary(rows: list[dict[str, Any]]) -> bytes:
        kept = [
            {k: r.get(k) for k in ("TransactionInterfaceId", "TransactionReference", "ItemNumber")}
            for r in rows
        ]
        return json.dumps({STAGED: kept}).encode()

    async def _send_issue(self, delivery: Delivery, doc: Any) -> bytes:
        rows = self.staged(doc)
        found: list[dict] = []
        if delivery.attempts:
            rows, found = await self._unsent(rows)
        if not rows:
            return self._summary(found)
        if len(rows) == 1:
            answer = await self._call("POST", f"{self.root}/{STAGED}", rows[0])
            if not answer.ok:
                raise self._failure("POST", answer)
            return self._summary([*found, json.loads(answer.body)])
        answer = await self._batch(rows)
        if not answer.ok:
            raise self._failure("POST", answer)
        return self._summary(found + self._created(answer))

    async def _send_requisition(self, delivery: Delivery, doc: Any) -> bytes:
        body = self.requisition(delivery, doc)
        header: dict[str, Any] | None = None
        if delivery.attempts:
            hits = await self._find(REQUISITIONS, "Description", body["Description"])
            header = hits[0] if hits else None
        if header is None:
            answer = await self._call("POST", f"{self.root}/{REQUISITIONS}", body)
            if not answer.ok:
                raise self._failure("POST", answer)
            header = json.loads(answer.body)
        assert header is not None
        if header.get("DocumentStatusCode") in (None, "INCOMPLETE"):
            header_id = header["RequisitionHeaderId"]
            url = f"{self.root}/{REQUISITIONS}/{header_id}/action/submitRequisition"
            answer = await self._call("POST", url, {}, ACTION)
            if not answer.ok:
                raise self._failure("POST", answer)
        kept = {k: header.get(k) for k in ("RequisitionHeaderId", "Requisition", "Description")}
        return json.dumps({REQUISITIONS: kept, "submitted": True}).encode()

    async def send(self, delivery: Delivery) -> bytes:
        doc = _load(delivery)
        effect = effect_of(delivery, doc)
        if effect == "issue":
            return await self._send_issue(delivery, doc)
        if effect == "requisition":
            return await self._send_requisition(delivery, doc)
        raise DeliveryError(
            f"oracle_fusion takes stock issues and requisitions (got {effect!r})", retryable=False
        )

    async def send_batch(self, deliveries: list[Delivery], key: str) -> list[ItemOutcome]:
        """Stock issues in one all-or-nothing batch; anything else one by one."""
        outcomes: list[ItemOutcome | None] = [None] * len(deliveries)
        parts: list[dict[str, Any]] = []
        owner: list[int] = []
        found: dict[int, list[dict]] = {}
        for i, delivery in enumerate(deliveries):
            try:
                doc = _load(delivery)
                if effect_of(delivery, doc) != "issue":
                    outcomes[i] = await self._one(delivery)
                    continue
                rows = self.staged(doc)
                if delivery.attempts:
                    rows, found[i] = await self._unsent(rows)
            except DeliveryError as e:
                if not e.retryable or e.throttled:
                    outcomes[i] = ItemOutcome(error=e)
                    continue
                raise
            if not rows:
                outcomes[i] = ItemOutcome(self._summary(found.get(i, [])))
            parts += rows
            owner += [i] * len(rows)
        if parts:
            answer = await self._batch(parts)
            if answer.ok:
                created = self._created(answer)
                for i in sorted(set(owner)):
                    mine = [c for c, o in zip(created, owner, strict=False) if o == i]
                    outcomes[i] = ItemOutcome(self._summary(found.get(i, []) + mine))
            elif answer.code == 400:
                culprit = self._culprit(answer, owner)
                if culprit is None:  # not attributable: each delivery on its own
                    for i in sorted(set(owner)):
                        outcomes[i] = await self._one(deliveries[i])
                else:
                    error = self._failure("POST", answer)
                    for i in sorted(set(owner)):
                        outcomes[i] = (
                            ItemOutcome(answer.body, error)
                            if i == culprit
                            else ItemOutcome(requeue=True)
                        )
            else:
                raise self._failure("POST", answer)
        return [o if o is not None else ItemOutcome(requeue=True) for o in outcomes]

    @staticmethod
    def _culprit(answer: HttpAnswer, owner: list[int]) -> int | None:
        _, path = _error_detail(answer)
        if not isinstance(path, str) or not path.startswith("/parts/"):
            return None
        index = path.split("/")[2]
        return owner[int(index)] if index.isdigit() and int(index) < len(owner) else None

    async def _one(self, delivery: Delivery) -> ItemOutcome:
        try:
            return ItemOutcome(await self.send(delivery))
        except DeliveryError as e:
            return ItemOutcome(e.response, e)


@destination("oracle_fusion", ORACLE_FUSION_SPEC)
def make_oracle_fusion(
    options: Any, *, reactor: Any, channel: str, name: str, base_dir: pathlib.Path
) -> OracleFusionDestination:
    """Build the ``oracle_fusion`` destination of channel ``channel`` named ``name``."""
    return OracleFusionDestination(
        options, reactor=reactor, channel=channel, name=name, base_dir=base_dir
    )
