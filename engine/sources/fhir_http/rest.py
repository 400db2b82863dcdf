"""The FHIR REST interactions of one base (one channel), independent of the HTTP server.

``GET [base]/metadata`` (CapabilityStatement), ``POST [base]/{type}`` (create; conditional with
``If-None-Exist: identifier=system|value``; idempotent with ``Idempotency-Key``), ``POST [base]``
with a ``batch`` or ``transaction`` Bundle, ``GET [base]/{type}/{id}`` (read) and
``.../_history/1`` (vread). :mod:`engine.sources.fhir_http` turns HTTP requests into a
:class:`Call` and writes back the :class:`Answer`.

Every error is an OperationOutcome; each issue's ``expression`` is the FHIRPath of the element
at fault (``Bundle.entry[2].resource.status``), or ``http.<Header>`` when a request header is at
fault (the convention OperationOutcome.issue.location describes for HTTP errors).

Ids handed out: a resource stored as its own message has the message id; an entry of a stored
transaction Bundle has ``<message id>.<entry index>``.
"""

from __future__ import annotations

import dataclasses
import datetime
import email.utils
import http
import re
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer

from engine._version import __version__
from engine.codecs.fhir import (
    FhirCodec,
    FhirInvalid,
    Issue,
    dump_json,
    for_storage,
    identifiers,
    operation_outcome,
    parse_json,
    with_meta,
    with_meta_json,
)
from engine.codecs.fhir_xml import parse_xml, to_xml
from engine.errors import CodecError
from engine.model import CONFLICT
from engine.sources import Ingest, IngestOutcome, SourceServices
from engine.tokens import bearer_holder, token_sha256  # noqa: F401 (re-exported)

#: FHIR version of a codec -> (CapabilityStatement.fhirVersion, fhirVersion media type values).
VERSIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "R5": ("5.0.0", ("5.0",)),
    "R4B": ("4.3.0", ("4.3", "4.0")),
}
MEDIA_TYPES = {
    "application/fhir+json": "json",
    "application/json": "json",
    "application/fhir+xml": "xml",
    "application/xml": "xml",
}
ANSWER_TYPES = {"json": "application/fhir+json", "xml": "application/fhir+xml"}
OFF_REACTOR = 64 * 1024  # bodies larger than this are parsed on the pipeline pool
RETRY_AFTER = "5"
KEYED_WINDOW = 7 * 86400.0  # how long a conditional create / Idempotency-Key is remembered
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_TYPE = re.compile(r"[A-Z][A-Za-z]{0,63}")
_ISSUE_TYPES = {
    400: "structure",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    408: "timeout",
    409: "duplicate",
    413: "too-costly",
    415: "not-supported",
    422: "invalid",
    500: "exception",
    503: "transient",
}


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: status, a FHIR resource in its JSON form (or none) and headers."""

    status: int
    resource: dict[str, Any] | None = None
    headers: tuple[tuple[str, str], ...] = ()
    json: bytes | None = None  # ``resource`` already written as JSON (dump_json)


@dataclass(frozen=True)
class Call:
    """One HTTP request to this base. ``segments``: the path after the base, unquoted;
    ``headers``: lower-case names, first value."""

    method: str
    segments: tuple[str, ...]
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    query: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)
    body: bytes = b""
    peer: str = "?"
    base_url: str = ""


@dataclass(frozen=True)
class Route:
    """What a request asks: ``metadata``, ``create`` (of ``type``), ``system`` (a batch or
    transaction), or ``read`` (``type``/``id``, ``version`` for a vread)."""

    kind: str
    type: str = ""
    id: str = ""
    version: str = ""


def reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def problem(
    status: int,
    text: str,
    expression: str = "",
    *,
    code: str | None = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> Answer:
    """An OperationOutcome answer with one issue."""
    issue = Issue(code or _ISSUE_TYPES.get(status, "processing"), text, expression)
    return Answer(status, operation_outcome([issue]), headers)


def outcome_answer(status: int, issues: list[Issue]) -> Answer:
    return Answer(status, operation_outcome(issues))


def unavailable(text: str) -> Answer:
    return problem(503, text, headers=(("Retry-After", RETRY_AFTER),))


def instant(ts: float) -> str:
    """A FHIR instant (UTC, milliseconds) of a POSIX time."""
    when = datetime.datetime.fromtimestamp(ts, datetime.UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


# -- media types ------------------------------------------------------------------------------


def media_type(value: str | None) -> tuple[str, dict[str, str]]:
    """``(type, parameters)`` of a Content-Type / Accept item, lower-cased names."""
    if not value:
        return "", {}
    main, *params = value.split(";")
    out = {}
    for p in params:
        name, _, val = p.partition("=")
        out[name.strip().lower()] = val.strip().strip('"')
    return main.strip().lower(), out


def answer_format(
    query: Mapping[str, Sequence[str]], headers: Mapping[str, str], default: str
) -> str:
    """``json`` or ``xml``: the ``_format`` parameter, else the Accept header, else
    ``default`` (the format of the request body, or JSON)."""
    fmt = (query.get("_format") or [""])[0].lower()
    if fmt:
        return "xml" if "xml" in fmt else "json"
    accept = headers.get("accept", "")
    best: tuple[float, str] | None = None
    for i, item in enumerate(accept.split(",")):
        kind, params = media_type(item)
        try:
            q = float(params.get("q", "1"))
        except ValueError:
            q = 0.0
        found = MEDIA_TYPES.get(kind) or ("xml" if kind == "text/xml" else None)
        if found and q > 0 and (best is None or q > best[0]):
            best = (q - i * 1e-6, found)
    return best[1] if best else default


def render(answer: Answer, fmt: str, version: str) -> tuple[str, bytes]:
    """``(Content-Type, body)`` of an answer in ``fmt``; an answer without resource has no
    body. XML that the writer (engine.codecs.fhir_xml.to_xml) cannot carry falls back to JSON."""
    if answer.resource is None:
        return "", b""
    if fmt == "xml":
        try:
            return ANSWER_TYPES["xml"] + "; charset=utf-8", to_xml(answer.resource, version)
        except Exception:
            pass
    body = answer.json if answer.json is not None else dump_json(answer.resource)
    return ANSWER_TYPES["json"] + "; charset=utf-8", body


# -- tokens: engine.tokens (token_sha256, bearer_holder) ------------------------------------


# -- the endpoint -----------------------------------------------------------------------------


class FhirEndpoint:
    """One FHIR base: routes, authorizes and answers calls for one channel.

    ``options``: the ``fhir_http`` source options (``base``, ``auth``, ``max_body``...);
    ``services``: the channel's codec, store reads and worker threads (from the engine).
    """

    def __init__(
        self,
        options: Any,
        *,
        channel: str,
        ingest: Ingest,
        services: SourceServices | None,
        clock: Callable[[], float] = time.time,
        tls_clients: bool = False,
    ) -> None:
        self.options = options
        self.channel = channel
        self.ingest = ingest
        self.services = services
        self.clock = clock
        self.tls_clients = tls_clients
        self.started = clock()

    # -- what the channel serves ---------------------------------------------------------

    def codec(self) -> FhirCodec | None:
        codec = self.services.codec() if self.services is not None else None
        return codec if isinstance(codec, FhirCodec) else None

    def version(self) -> str:
        codec = self.codec()
        return codec.options.version if codec is not None else "R5"

    def types(self) -> tuple[str, ...]:
        codec = self.codec()
        return tuple(codec.options.resources) if codec is not None else ()

    # -- checks made on the request head (before any body byte is read) ------------------

    def route(self, method: str, segments: Sequence[str]) -> Route | Answer:
        """404 for paths this base does not have, 405 (with Allow) for other methods."""
        method = "GET" if method == "HEAD" else method
        types = self.types()
        n = len(segments)

        def allow(route: Route, *methods: str) -> Route | Answer:
            if method in methods:
                return route
            return problem(
                405,
                f"{method} is not supported here (expected {' or '.join(methods)})",
                headers=(("Allow", ", ".join(methods)),),
            )

        if n == 0:
            if "Bundle" not in types:
                return problem(404, f"batch and transaction are not served at {self.options.base}")
            return allow(Route("system"), "POST")
        if n == 1 and segments[0] == "metadata":
            return allow(Route("metadata"), "GET")
        rtype = segments[0]
        # an entry of a stored transaction (id <message>.<n>) may be of any type (its Device)
        entry_read = (
            n in (2, 4) and "." in segments[1] and "Bundle" in types and _TYPE.fullmatch(rtype)
        )
        if rtype not in types and not entry_read:
            served = ", ".join(types) or "none"
            return problem(
                404,
                f"resource type {rtype!r} is not served at {self.options.base} (served: {served})",
            )
        if n == 1:
            return allow(Route("create", rtype), "POST")
        if n == 2 and _ID.fullmatch(segments[1]):
            return allow(Route("read", rtype, segments[1]), "GET")
        if n == 4 and segments[2] == "_history" and _ID.fullmatch(segments[1]):
            return allow(Route("read", rtype, segments[1], segments[3]), "GET")
        return problem(404, f"no such path under {self.options.base}")

    def authorize(self, route: Route, headers: Mapping[str, str]) -> tuple[Any, Answer | None]:
        """``(token, None)`` or ``(None, 401/403)``. The CapabilityStatement is public."""
        auth = self.options.auth
        if auth is None or route.kind == "metadata":
            return None, None
        token = bearer_holder(headers.get("authorization"), auth.tokens)
        if token is None:
            text = (
                "a bearer token is required"
                if "authorization" not in headers
                else "the bearer token is not known here"
            )
            return None, problem(
                401,
                text,
                "http.Authorization",
                headers=(("WWW-Authenticate", 'Bearer realm="wharf", error="invalid_token"'),),
            )
        wanted = route.type
        if route.kind == "system" or route.type not in self.types():
            wanted = "Bundle"  # a batch or transaction, or an entry of a stored transaction
        if not self.token_allows(token, wanted):
            return token, problem(
                403,
                f"token '{token.name}' may not use {wanted} "
                f"(it may use: {', '.join(token.resources or self.types())})",
                "http.Authorization",
            )
        return token, None

    def token_allows(self, token: Any, resource_type: str) -> bool:
        return token is None or not token.resources or resource_type in token.resources

    def body_format(self, headers: Mapping[str, str]) -> str | Answer:
        """``json``/``xml`` from Content-Type (415 for other types, charsets or a fhirVersion
        that is not this base's)."""
        kind, params = media_type(headers.get("content-type"))
        fmt = MEDIA_TYPES.get(kind)
        if fmt is None:
            return problem(
                415,
                f"expected Content-Type {' or '.join(MEDIA_TYPES)} (got {kind or 'none'})",
                "http.Content-Type",
            )
        charset = params.get("charset", "utf-8").lower()
        if charset not in ("utf-8", "utf8"):
            return problem(415, f"expected charset=utf-8 (got {charset})", "http.Content-Type")
        wanted = params.get("fhirversion")
        accepted = VERSIONS[self.version()][1]
        if wanted is not None and wanted not in accepted:
            return problem(
                415,
                f"this base serves FHIR {self.version()}: expected fhirVersion="
                f"{' or '.join(accepted)} (got {wanted})",
                "http.Content-Type",
            )
        return fmt

    def check_head(
        self, method: str, segments: Sequence[str], headers: Mapping[str, str], length: int | None
    ) -> tuple[Route, Any] | Answer:
        """Everything that can be decided before the body: path, method, token, media type,
        declared length. ``(route, token)`` when the request may go on."""
        if self.codec() is None:
            return unavailable(f"channel {self.channel} is not running")
        route = self.route(method, segments)
        if isinstance(route, Answer):
            return route
        token, denied = self.authorize(route, headers)
        if denied is not None:
            return denied
        if route.kind in ("create", "system"):
            fmt = self.body_format(headers)
            if isinstance(fmt, Answer):
                return fmt
        if length is not None and length > self.options.max_body:
            return self.too_large(length)
        return route, token

    def too_large(self, size: int | None = None) -> Answer:
        got = f"{size} bytes" if size is not None else "more"
        return problem(
            413,
            f"the body must be at most {self.options.max_body} bytes (got {got}); not stored",
            "http.Content-Length",
        )

    # -- answering -----------------------------------------------------------------------

    async def handle(self, call: Call) -> Answer:
        head = self.check_head(call.method, call.segments, call.headers, len(call.body))
        if isinstance(head, Answer):
            return head
        route, token = head
        if route.kind == "metadata":
            return Answer(200, self.capability(call.base_url))
        if route.kind == "read":
            return await self._read(route)
        if route.kind == "create":
            return await self._create(call, route, token)
        return await self._system(call, token)

    # -- CapabilityStatement -------------------------------------------------------------

    def capability(self, base_url: str) -> dict[str, Any]:
        """This base's CapabilityStatement (kind instance)."""
        version = self.version()
        types = self.types()
        interactions = [{"code": "create"}, {"code": "read"}, {"code": "vread"}]
        resources = [
            {
                "type": t,
                "interaction": interactions,
                "versioning": "versioned",
                "readHistory": False,
                "updateCreate": False,
                "conditionalCreate": True,
                "conditionalRead": "not-supported",
                "conditionalUpdate": False,
                "conditionalDelete": "not-supported",
                "documentation": "Create takes If-None-Exist: identifier=system|value and "
                "Idempotency-Key; a resend returns the original with 200.",
            }
            for t in types
        ]
        auth = self.options.auth
        if auth is None:
            security: dict[str, Any] = {
                "cors": False,
                "description": "No authentication (a closed network only).",
            }
        else:
            security = {
                "cors": False,
                "service": [{"text": "Bearer token (RFC 6750), one per sending system"}],
                "description": "Authorization: Bearer <token>; each token may write the "
                "resource types listed for it. 401 without a known token, 403 for a type "
                "the token may not use.",
            }
        if self.tls_clients:
            security.setdefault("service", []).append(
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/"
                            "restful-security-service",
                            "code": "Certificates",
                        }
                    ]
                }
            )
        rest: dict[str, Any] = {
            "mode": "server",
            "documentation": f"Wharf channel {self.channel}: messages are stored, then "
            "transformed and delivered; reads return what was stored.",
            "security": security,
            "resource": resources,
        }
        if "Bundle" in types:
            rest["interaction"] = [{"code": "transaction"}, {"code": "batch"}]
        return {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": instant(self.started),
            "publisher": "Wharf",
            "kind": "instance",
            "software": {"name": "Wharf", "version": __version__},
            "implementation": {
                "description": f"Wharf channel {self.channel}",
                "url": base_url or self.options.base,
            },
            "fhirVersion": VERSIONS[version][0],
            "format": ["json", "xml"],
            "rest": [rest],
        }

    # -- read ----------------------------------------------------------------------------

    async def _read(self, route: Route) -> Answer:
        label = f"{route.type}/{route.id}"
        if route.version and route.version != "1":
            return problem(404, f"{label} has no version {route.version} (only 1)")
        message_id, _, index = route.id.partition(".")
        if "." in index or (index and not index.isdigit()):
            return problem(404, f"no {label} here")
        assert self.services is not None  # check_head answered 503 otherwise
        row, raw = await self.services.load(message_id)
        if row is None or raw is None or row.channel != self.channel or row.status == CONFLICT:
            return problem(404, f"no {label} here")
        data = parse_json(raw)
        if index:
            entries = data.get("entry") if data.get("resourceType") == "Bundle" else None
            i = int(index)
            if not isinstance(entries, list) or i >= len(entries):
                return problem(404, f"no {label} here")
            data = (entries[i] or {}).get("resource") or {}
        if data.get("resourceType") != route.type:
            return problem(404, f"no {label} here")
        resource = with_meta(data, route.id, instant(row.received_at))
        return Answer(200, resource, _version_headers(row.received_at))

    # -- create --------------------------------------------------------------------------

    async def _create(self, call: Call, route: Route, token: Any) -> Answer:
        codec = self.codec()
        assert codec is not None
        fmt = self.body_format(call.headers)
        assert isinstance(fmt, str)
        try:
            data, raw, parsed = await self._off_reactor(
                call.body, _prepare, call.body, fmt, codec, route.type
            )
        except CodecError as exc:
            return codec_problem(exc)
        key = self.dedup_key(call.headers, data, route.type)
        if isinstance(key, Answer):
            return key
        if key is not None:
            parsed = dataclasses.replace(parsed, dedup_key=key[0])
        result = await self._store(raw, call, token, fmt, parsed, key)
        where = key[1] if key is not None else _identifier_path(data, None)
        return await self._created(result, data, where, call, raw)

    def dedup_key(
        self, headers: Mapping[str, str], data: dict[str, Any], rtype: str, entry: int | None = None
    ) -> tuple[str, str] | Answer | None:
        """``(dedup key, FHIRPath it comes from)`` from an ``Idempotency-Key`` (which wins) or
        an ``If-None-Exist: identifier=system|value`` header; None: the codec's own key (the
        first identifier, else the content hash)."""
        key = headers.get("idempotency-key")
        if key is not None:
            key = key.strip()
            if len(key) >= 2 and key[0] == key[-1] == '"':
                key = key[1:-1]  # the draft's sf-string form
            if not 1 <= len(key) <= 255 or not all(33 <= ord(c) <= 126 for c in key):
                return problem(
                    400,
                    f"expected an Idempotency-Key of 1..255 visible ASCII characters (got {key!r})",
                    "http.Idempotency-Key",
                )
            suffix = f"#{entry}" if entry is not None else ""
            return f"idempotency-key:{key}{suffix}", "http.Idempotency-Key"
        condition = headers.get("if-none-exist")
        if condition is None:
            return None
        return self.condition_key(condition, data, rtype, "http.If-None-Exist")

    def condition_key(
        self, condition: str, data: dict[str, Any], rtype: str, where: str
    ) -> tuple[str, str] | Answer:
        """The dedup key of a conditional create: the identifier it names, which must be one of
        the resource's identifiers."""
        pairs = urllib.parse.parse_qsl(condition, keep_blank_values=True)
        if len(pairs) != 1 or pairs[0][0] != "identifier" or "|" not in pairs[0][1]:
            return problem(
                400,
                f"expected identifier=system|value (got {condition!r}); "
                "no other search parameter is supported",
                where,
            )
        system, _, value = pairs[0][1].partition("|")
        if not value:
            return problem(400, f"expected identifier=system|value (got {condition!r})", where)
        for i, ident in enumerate(identifiers(data)):
            if ident.get("system", "") == system and ident.get("value") == value:
                path = f"{rtype}.identifier" + ("" if rtype == "Bundle" else f"[{i}]")
                return f"{system}|{value}", path
        return problem(
            400,
            f"the condition names identifier {system}|{value}, which the {rtype} does not carry",
            f"{rtype}.identifier",
        )

    async def _created(
        self,
        result: IngestOutcome,
        data: dict[str, Any],
        where: str,
        call: Call,
        raw: bytes | None = None,
    ) -> Answer:
        """201 (stored now) or 200 (a resend: the original) with Location, ETag and
        Last-Modified; 409, 503 otherwise. ``raw``: the bytes stored for ``data``; a 201's
        JSON body is made from them rather than written again."""
        rtype = data["resourceType"]
        if result.kind == "refused":
            return unavailable(f"not stored ({result.reason}); send it again later")
        if result.kind == "rejected":
            return problem(400, f"not stored: {result.reason}")
        if result.kind == "conflict":
            return conflict(rtype, where)
        assert self.services is not None and result.message_id is not None
        if result.kind == "stored" and result.received_at is not None:
            # Stored by this request: what was sent is what is stored (no read-back).
            stored, message_id, received_at = data, result.message_id, result.received_at
        else:
            row, original = await self.services.load(result.message_id)
            if row is None or original is None:
                return unavailable("the stored message cannot be read back; send it again")
            if row.status == CONFLICT:  # a resend of content that was itself a conflict
                return conflict(rtype, where)
            stored, message_id, received_at = parse_json(original), row.id, row.received_at
            raw = None
        resource = with_meta(stored, message_id, instant(received_at))
        location = f"{call.base_url}/{stored['resourceType']}/{message_id}/_history/1"
        headers = (("Location", location), *_version_headers(received_at))
        status = 201 if result.kind == "stored" else 200
        prefer = _prefer(call.headers)
        if prefer == "minimal":
            return Answer(status, None, headers)
        if prefer == "OperationOutcome":
            done = "created" if status == 201 else "already stored; not processed again"
            info = Issue(
                "informational", f"{rtype}/{message_id} {done}", "", severity="information"
            )
            return Answer(status, operation_outcome([info]), headers)
        body = (
            None if raw is None else with_meta_json(raw, stored, message_id, instant(received_at))
        )
        return Answer(status, resource, headers, body)

    # -- batch and transaction -----------------------------------------------------------

    async def _system(self, call: Call, token: Any) -> Answer:
        codec = self.codec()
        assert codec is not None
        fmt = self.body_format(call.headers)
        assert isinstance(fmt, str)
        if "if-none-exist" in call.headers:
            return problem(
                400,
                "If-None-Exist applies to POST [base]/[type]; in a batch use "
                "entry.request.ifNoneExist",
                "http.If-None-Exist",
            )
        try:
            data = await self._off_reactor(call.body, _parse, call.body, fmt, codec.options.version)
        except CodecError as exc:
            return codec_problem(exc)
        btype = data.get("type")
        if data["resourceType"] != "Bundle" or btype not in ("batch", "transaction"):
            got = data["resourceType"] + (f" of type {btype}" if btype else "")
            return problem(
                400,
                f"expected a Bundle of type batch or transaction (got {got})",
                "Bundle.type" if data["resourceType"] == "Bundle" else data["resourceType"],
            )
        entries = data.get("entry") or []
        if not isinstance(entries, list):
            return problem(400, "expected a list of entries", "Bundle.entry")
        checks = [self._check_entry(i, e, token, btype) for i, e in enumerate(entries)]
        if btype == "transaction":
            return await self._transaction(call, token, fmt, codec, data, checks)
        return await self._batch(call, token, fmt, codec, entries, checks)

    def _check_entry(self, i: int, entry: Any, token: Any, kind: str) -> tuple[int, list[Issue]]:
        """``(status, issues)`` of one entry's shape: a resource created with POST to its
        type, which the token may use if it is one of the channel's types. In a batch (each
        entry its own message) the type must be one the channel takes; a transaction is one
        message, a Bundle, whose entries may be of any type (the Device and Procedure that go
        with a SupplyDelivery). ``(0, [])`` when fine."""
        at = f"Bundle.entry[{i}]"
        if not isinstance(entry, dict):
            return 400, [Issue("structure", "expected an object", at)]
        resource = entry.get("resource")
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            return 400, [Issue("required", "expected a resource", f"{at}.resource")]
        rtype = resource["resourceType"]
        request = entry.get("request")
        if not isinstance(request, dict):
            return 400, [Issue("required", "expected a request (method POST)", f"{at}.request")]
        method = request.get("method")
        if method != "POST":
            return 400, [
                Issue(
                    "not-supported",
                    f"only POST (create) is supported here (got {method!r})",
                    f"{at}.request.method",
                )
            ]
        url = str(request.get("url") or "").split("?", 1)[0].strip("/")
        if url != rtype:
            return 400, [
                Issue(
                    "structure",
                    f"expected request.url {rtype!r} for a {rtype} (got {request.get('url')!r})",
                    f"{at}.request.url",
                )
            ]
        forbidden = (
            403,
            [
                Issue(
                    "forbidden",
                    f"token '{getattr(token, 'name', '')}' may not use {rtype}",
                    f"{at}.resource",
                )
            ],
        )
        if kind == "transaction":  # the channel's own types still need the token's leave
            taken = rtype in self.types() and rtype != "Bundle"
            return forbidden if taken and not self.token_allows(token, rtype) else (0, [])
        if rtype == "Bundle" or rtype not in self.types():
            served = ", ".join(t for t in self.types() if t != "Bundle")
            return 422, [
                Issue(
                    "not-supported",
                    f"resource type {rtype} is not taken in a Bundle here (taken: {served})",
                    f"{at}.resource",
                )
            ]
        if not self.token_allows(token, rtype):
            return forbidden
        return 0, []

    async def _transaction(
        self,
        call: Call,
        token: Any,
        fmt: str,
        codec: FhirCodec,
        data: dict[str, Any],
        checks: list[tuple[int, list[Issue]]],
    ) -> Answer:
        """All or nothing: every entry is checked and validated first; then the Bundle is
        stored as ONE message (the transform books every entry)."""
        if not checks:
            return problem(400, "a transaction needs at least one entry", "Bundle.entry")
        bad = [(s, issues) for s, issues in checks if s]
        if bad:
            statuses = {s for s, _ in bad}
            status = 403 if 403 in statuses else 400 if 400 in statuses else 422
            return outcome_answer(status, [i for _, issues in bad for i in issues])
        try:
            _, raw, parsed = await self._off_reactor(
                call.body, _prepare_data, data, codec, "Bundle"
            )
        except CodecError as exc:
            return codec_problem(exc)
        key = self.dedup_key(call.headers, data, "Bundle")
        if isinstance(key, Answer):
            return key
        if key is not None:
            parsed = dataclasses.replace(parsed, dedup_key=key[0])
        result = await self._store(raw, call, token, fmt, parsed, key)
        where = key[1] if key is not None else _identifier_path(data, None)
        if result.kind not in ("stored", "duplicate"):
            return await self._created(result, data, where, call)
        assert self.services is not None and result.message_id is not None
        row, _ = await self.services.load(result.message_id)
        if row is None:
            return unavailable("the stored message cannot be read back; send it again")
        if row.status == CONFLICT:
            return conflict("Bundle", where)
        status = "201 Created" if result.kind == "stored" else "200 OK"
        entries = []
        for i, entry in enumerate(data["entry"]):
            rtype = entry["resource"]["resourceType"]
            entries.append(
                {
                    "response": {
                        "status": status,
                        "location": f"{rtype}/{row.id}.{i}/_history/1",
                        "etag": 'W/"1"',
                        "lastModified": instant(row.received_at),
                    }
                }
            )
        bundle = {"resourceType": "Bundle", "type": "transaction-response", "entry": entries}
        return Answer(200, bundle)

    async def _batch(
        self,
        call: Call,
        token: Any,
        fmt: str,
        codec: FhirCodec,
        entries: list[Any],
        checks: list[tuple[int, list[Issue]]],
    ) -> Answer:
        """Entry by entry: each good entry is stored as its own message; a bad one is
        answered with its OperationOutcome and not stored."""

        async def one(i: int, entry: Any, check: tuple[int, list[Issue]]) -> Answer:
            status, issues = check
            if status:
                return outcome_answer(status, issues)
            resource = entry["resource"]
            rtype = resource["resourceType"]
            at = f"Bundle.entry[{i}].resource"
            try:
                stored, raw, parsed = await self._off_reactor(
                    call.body, _prepare_data, resource, codec, rtype
                )
            except CodecError as exc:
                return codec_problem(exc, at)
            key: tuple[str, str] | Answer | None = self.dedup_key(call.headers, resource, rtype, i)
            condition = entry["request"].get("ifNoneExist")
            if key is None and condition:
                key = self.condition_key(
                    str(condition), resource, rtype, f"Bundle.entry[{i}].request.ifNoneExist"
                )
                if isinstance(key, Answer):
                    return _rebased(key, rtype, at)
            if isinstance(key, Answer):
                return key
            if key is not None:
                parsed = dataclasses.replace(parsed, dedup_key=key[0])
                where = key[1].replace(rtype, at, 1) if key[1].startswith(rtype) else key[1]
            else:
                where = _identifier_path(resource, at)
            result = await self._store(raw, call, token, fmt, parsed, key)
            return await self._created(result, stored, where, call)

        answers = await defer.gatherResults(
            [
                defer.ensureDeferred(one(i, e, c))
                for i, (e, c) in enumerate(zip(entries, checks, strict=True))
            ],
            consumeErrors=True,
        )
        out = [_batch_entry(a, call.base_url) for a in answers]
        return Answer(200, {"resourceType": "Bundle", "type": "batch-response", "entry": out})

    # -- helpers -------------------------------------------------------------------------

    async def _off_reactor(self, body: bytes, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` here for a small body, on the pipeline pool for a large one."""
        if len(body) > OFF_REACTOR and self.services is not None:
            return await self.services.run(fn, *args)
        return fn(*args)

    async def _store(
        self, raw: bytes, call: Call, token: Any, fmt: str, parsed: Any, key: Any
    ) -> IngestOutcome:
        """Ingest; a key from If-None-Exist or Idempotency-Key is honoured for KEYED_WINDOW
        even on a channel whose dedup window is shorter (or 0)."""
        peer = self._peer(call, token, fmt)
        if key is None:
            return await self.ingest(raw, peer, parsed=parsed)
        return await self.ingest(raw, peer, parsed=parsed, min_dedup_window=KEYED_WINDOW)

    def _peer(self, call: Call, token: Any, fmt: str) -> str:
        """What the store keeps as the peer: address, token name and the body's format."""
        holder = token.name if token is not None else "-"
        return f"{call.peer} {holder} {fmt}"


def _parse(body: bytes, fmt: str, version: str) -> dict[str, Any]:
    return parse_xml(body, version) if fmt == "xml" else parse_json(body)


def _prepare_data(data: dict[str, Any], codec: FhirCodec, expected: str) -> tuple[Any, bytes, Any]:
    """``(stored form, bytes to store, the codec's Parsed)``; CodecError / FhirInvalid."""
    rtype = data.get("resourceType")
    if rtype != expected:
        raise CodecError(
            f"expected a {expected} (the type in the URL) (got {rtype})",
            location=str(rtype),
            code="wrong_type",
        )
    stored = for_storage(data)
    raw = dump_json(stored)
    return stored, raw, codec.decode(raw)


def _prepare(
    body: bytes, fmt: str, codec: FhirCodec, expected: str
) -> tuple[dict[str, Any], bytes, Any]:
    return _prepare_data(_parse(body, fmt, codec.options.version), codec, expected)


def codec_problem(exc: CodecError, at: str | None = None) -> Answer:
    """400 (not FHIR), 413 (too large), 422 (invalid: every issue with its FHIRPath)."""
    if isinstance(exc, FhirInvalid):
        issues = exc.issues
        if at is not None:
            issues = [_rebase(i, at) for i in issues]
        return outcome_answer(422, issues)
    status = {"too_large": 413, "unsupported_message_type": 422}.get(exc.code, 400)
    where = exc.location if at is None else at
    return problem(status, exc.message, where)


def _rebase(issue: Issue, at: str) -> Issue:
    """An issue about ``Type.element`` re-anchored at ``at`` (``Bundle.entry[2].resource``)."""
    head, dot, rest = issue.expression.partition(".")
    if head and _TYPE.fullmatch(head.split("[", 1)[0]):
        return dataclasses.replace(issue, expression=at + dot + rest)
    return issue


def _rebased(answer: Answer, rtype: str, at: str) -> Answer:
    resource = answer.resource or {}
    for issue in resource.get("issue", []):
        if "expression" in issue:
            issue["expression"] = [
                e.replace(rtype, at, 1) if e.startswith(rtype) else e for e in issue["expression"]
            ]
    return answer


def conflict(rtype: str, where: str) -> Answer:
    what = "Idempotency-Key" if where == "http.Idempotency-Key" else "identifier"
    return problem(
        409,
        f"this {what} was already used for a {rtype} with other content; not processed "
        "(kept as a conflict for a person to review)",
        where,
    )


def _identifier_path(data: dict[str, Any], at: str | None) -> str:
    """Where the codec's dedup key comes from: the first identifier (else the resource)."""
    root = at or data.get("resourceType", "")
    if not identifiers(data):
        return root
    return f"{root}.identifier" + ("" if data.get("resourceType") == "Bundle" else "[0]")


def _version_headers(ts: float) -> tuple[tuple[str, str], ...]:
    return (("ETag", 'W/"1"'), ("Last-Modified", http_date(ts)))


def _prefer(headers: Mapping[str, str]) -> str:
    for item in headers.get("prefer", "").split(","):
        name, _, value = item.strip().partition("=")
        if name.strip().lower() == "return":
            value = value.strip().strip('"')
            if value in ("minimal", "representation", "OperationOutcome"):
                return value
    return "representation"


def _batch_entry(answer: Answer, base_url: str) -> dict[str, Any]:
    """One batch-response entry from the answer the entry would get on its own."""
    headers = dict(answer.headers)
    response: dict[str, Any] = {"status": f"{answer.status} {reason(answer.status)}"}
    if "Location" in headers:
        response["location"] = headers["Location"].removeprefix(base_url + "/")
        response["etag"] = headers["ETag"]
        modified = email.utils.parsedate_to_datetime(headers["Last-Modified"])
        response["lastModified"] = instant(modified.timestamp())
    entry: dict[str, Any] = {}
    if answer.status >= 400:
        response["outcome"] = answer.resource
    elif answer.resource is not None:
        entry["resource"] = answer.resource
    entry["response"] = response
    return entry
