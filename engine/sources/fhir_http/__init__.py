"""The ``fhir_http`` source: a FHIR REST server (twisted.web) that stores what point-of-use
systems POST.

Channels whose ``listen`` strings are equal share one port (one :class:`FhirSite`); each mounts
its own ``base`` (``/fhir/R5`` and ``/fhir/R4`` on 8090). The interactions themselves live in
:mod:`engine.sources.fhir_http.rest`; this module is the HTTP side:

* everything that can be decided on the request head (path, method, bearer token, media type,
  ``Content-Length`` over ``max_body``) is answered before a body byte is read, so an
  unauthenticated or oversize request is never buffered; a chunked body is counted and cut at
  ``max_body`` (413);
* a per-connection deadline: the head must arrive within ``header_timeout`` and the whole
  request within ``request_timeout`` of its first byte, however slowly it trickles (twisted's
  own timeout is an idle timeout, which a client sending a byte a second never triggers);
  then 408 and close;
* who may hold connections (:mod:`engine.net.admission`): ``allow`` (CIDRs),
  ``max_connections_per_peer``, and ``max_connections`` shared fairly (when the port is full a
  peer holding fewer connections than the heaviest still gets in; the heaviest peer's quietest
  connection is closed for it); a connection over a cap gets 503 and is closed, one from outside
  ``allow`` is closed unanswered;
* answers go out only after the store's commit (``ingest`` returns after it);
* the log has method, path, status, sizes, duration and peer of each request: never a body,
  a query string or a header value.
"""

from __future__ import annotations

import io
import re
import time
import traceback
import urllib.parse
from pathlib import Path
from typing import Any

import yaml
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import http, resource, server

from engine.errors import ConfigError
from engine.net.admission import (
    BUSY,
    IDLE,
    RECEIVING,
    Admission,
    admission_fields,
    check_admission,
    peer_host,
)
from engine.net.endpoints import check_listen, peer_name, server_endpoint
from engine.registry import source
from engine.sources import Ingest, SourceServices
from engine.sources.fhir_http.rest import (
    MEDIA_TYPES,
    Answer,
    Call,
    FhirEndpoint,
    answer_format,
    media_type,
    problem,
    reason,
    render,
)
from engine.spec import (
    ByteSize,
    Context,
    Duration,
    Field,
    ListOf,
    Spec,
    Str,
    scalar_value,
)

log = Logger()

LINGER = 2.0  # seconds an early answer waits for the rest of the body before closing
LINGER_BYTES = 8 * 1024 * 1024  # bytes read (and dropped) after an early answer, at most
ABORT_AFTER = 5.0  # a closing connection whose peer does not read is aborted after this
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")
_RESOURCE_TYPE = r"[A-Z][A-Za-z]{0,63}"

# -- the spec ---------------------------------------------------------------------------------

TOKEN_SPEC = Spec(
    "token",
    [
        Field("name", Str(), description="Who holds the token (recorded with each message)."),
        Field(
            "sha256",
            Str(r"[0-9a-fA-F]{64}", "64 hex digits (the SHA-256 of the token)"),
            description="Hex SHA-256 of the token (`wharf token` makes a token and its hash); "
            "never the token itself.",
        ),
        Field(
            "resources",
            ListOf(Str(_RESOURCE_TYPE, "a FHIR resource type"), scalar_ok=True),
            (),
            "Resource types the token may create and read (Bundle: batch and transaction). "
            "Empty: every type of the channel's codec.",
        ),
    ],
    description="A bearer token, kept as its SHA-256 only.",
)


class AuthSpec(Spec):
    """``auth: none`` (explicit, closed networks) or ``auth: {tokens: [...]}``."""

    def parse(self, node: yaml.Node, ctx: Context, path: str) -> Any:
        if isinstance(node, yaml.ScalarNode):
            value = scalar_value(node, ctx, path)
            if value == "none":
                return None
            return ctx.error(
                node, path, f"expected `none` or a mapping with tokens (got {value!r})"
            )
        return super().parse(node, ctx, path)

    def expected(self) -> str:
        return "`none`, or a mapping with `tokens`"


AUTH_SPEC = AuthSpec(
    "auth",
    [
        Field(
            "tokens",
            ListOf(TOKEN_SPEC, min_items=1),
            description="The bearer tokens accepted, as SHA-256 hashes.",
        )
    ],
    description="`none` (no authentication: a closed network only), or the bearer tokens "
    "taken: a request without a known token gets 401, one whose token may not use the "
    "resource type 403. The CapabilityStatement (`GET [base]/metadata`) is public.",
)


def _check(config: Any, ctx: Context, node: yaml.Node, path: str) -> None:
    check_listen(config, ctx, node, path)
    check_admission(config, ctx, node, path)
    if config.header_timeout > config.request_timeout:
        ctx.error(
            node,
            f"{path}.header_timeout",
            f"header_timeout must be at most request_timeout ({config.request_timeout}s) "
            f"(got {config.header_timeout}s)",
        )
    if config.max_body < 1:
        ctx.error(
            node, f"{path}.max_body", f"max_body must be at least 1 byte (got {config.max_body})"
        )
    if config.auth is not None:
        seen: dict[str, int] = {}
        hashes: dict[str, int] = {}
        for i, tok in enumerate(config.auth.tokens):
            where = f"{path}.auth.tokens[{i}]"
            if tok.name in seen:
                ctx.error(node, f"{where}.name", f"token name '{tok.name}' twice")
            if tok.sha256.lower() in hashes:
                ctx.error(
                    node,
                    f"{where}.sha256",
                    f"the same token hash as tokens[{hashes[tok.sha256.lower()]}]",
                )
            seen[tok.name] = i
            hashes[tok.sha256.lower()] = i


FHIR_HTTP_SPEC = Spec(
    "fhir_http",
    [
        Field(
            "listen",
            Str(),
            description="Twisted server endpoint: `tcp:8090:interface=127.0.0.1`, or "
            "`ssl:8443:privateKey=key.pem:certKey=cert.pem` (as the MLLP source; TLS 1.2 at "
            "least). Channels with the same listen string share the port, each on its base.",
        ),
        Field(
            "client_ca",
            Str(),
            None,
            "PEM file of CAs; clients must present a certificate signed by one (mutual TLS). "
            "Needs an ssl: listen string.",
        ),
        Field(
            "base",
            Str(r"/([A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*)?", "a URL path such as /fhir/R5"),
            description="The FHIR base this channel serves (unique per listen string).",
        ),
        Field("auth", AUTH_SPEC, description="Bearer tokens, or `none`."),
        Field(
            "max_body",
            ByteSize(),
            1024 * 1024,
            "Larger bodies get 413, from the Content-Length before any body byte is read "
            "(a chunked body is counted and cut).",
        ),
        Field(
            "header_timeout",
            Duration(lo=0.05),
            10.0,
            "The whole request head must arrive within this of its first byte (else 408).",
        ),
        Field(
            "request_timeout",
            Duration(lo=0.05),
            30.0,
            "The whole request (head and body) must arrive within this of its first byte, "
            "however slowly it trickles (else 408 and close).",
        ),
        *admission_fields(512, 64),
    ],
    description=(
        "A FHIR REST server for point-of-use systems: `POST [base]/{type}` (create; "
        "conditional with `If-None-Exist: identifier=system|value`, idempotent with "
        "`Idempotency-Key`), `POST [base]` with a batch or transaction Bundle, "
        "`GET [base]/{type}/{id}` (read back what was stored), `GET [base]/metadata`. JSON "
        "and XML (`application/fhir+json|xml`). The channel's codec must be `fhir`; its "
        "`resources` are the types served. Answers come after the store's commit: 201 "
        "created, 200 a resend (the original resource), 409 the same identifier or key with "
        "other content, 400/413/415/422 refused (an OperationOutcome naming each element), "
        "401/403 token, 503 with Retry-After when the store cannot take more. A conditional "
        "create or Idempotency-Key is remembered 7 days (or the channel's dedup window if "
        "longer), also on a channel with `dedup: {window: 0}`."
    ),
    example=(
        "source:\n"
        "  fhir_http:\n"
        "    listen: tcp:${FHIR_PORT:-8090}:interface=127.0.0.1\n"
        "    base: /fhir/R5\n"
        "    auth:\n"
        "      tokens:\n"
        "        - name: pou-cabinet\n"
        "          sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\n"
        "          resources: [SupplyDelivery, Bundle]\n"
        "    max_body: 1MiB\n"
        "    header_timeout: 10s\n"
        "    request_timeout: 30s\n"
        "    max_connections: 512\n"
        "    max_connections_per_peer: 64\n"
        "    allow: [10.20.0.0/16]"
    ),
    check=_check,
)

#: Settings of the port itself: channels sharing a listen string must agree on them.
SHARED = (
    "client_ca",
    "header_timeout",
    "request_timeout",
    "max_connections",
    "max_connections_per_peer",
    "allow",
)


def check_project(channels: dict[str, Any]) -> list[ConfigError]:
    """Lint across channels: the codec is ``fhir``, token types are served, and channels on
    one listen string mount distinct bases and agree on the port's settings."""
    from engine.config.project import error_at

    errors: list[ConfigError] = []
    by_listen: dict[str, list[tuple[Any, Any]]] = {}
    for defn in channels.values():
        src = defn.config.source
        if src is None or src.name != "fhir_http":
            continue
        opts = src.options
        codec = defn.config.codec
        if codec is None or codec.name != "fhir":
            errors.append(
                error_at(
                    src.where,
                    "source.fhir_http",
                    f"the fhir_http source needs `codec: fhir` "
                    f"(got {codec.name if codec else 'none'})",
                )
            )
        elif opts.auth is not None:
            served = tuple(codec.options.resources)
            for i, tok in enumerate(opts.auth.tokens):
                for t in tok.resources:
                    if t not in served:
                        errors.append(
                            error_at(
                                opts.positions.get("auth", opts.where),
                                f"source.fhir_http.auth.tokens[{i}].resources",
                                f"{t} is not among the codec's resources ({', '.join(served)})",
                            )
                        )
        by_listen.setdefault(opts.listen, []).append((defn, opts))
    for listen, group in by_listen.items():
        first_defn, first = group[0]
        bases: dict[str, Any] = {}
        for defn, opts in group:
            where = opts.positions.get("base", opts.where)
            if opts.base.rstrip("/") in bases:
                other = bases[opts.base.rstrip("/")]
                errors.append(
                    error_at(
                        where,
                        "source.fhir_http.base",
                        f"base {opts.base} is already served on {listen} by channel "
                        f"'{other.name}' ({other.file}); expected a base of its own",
                    )
                )
            bases.setdefault(opts.base.rstrip("/"), defn)
            for name in SHARED:
                if getattr(opts, name) != getattr(first, name):
                    errors.append(
                        error_at(
                            opts.positions.get(name, opts.where),
                            f"source.fhir_http.{name}",
                            f"channels sharing {listen} must agree on {name} "
                            f"(channel '{first_defn.name}': {getattr(first, name)}, "
                            f"'{defn.name}': {getattr(opts, name)})",
                        )
                    )
    return errors


# -- HTTP plumbing ----------------------------------------------------------------------------


def _segments(path: bytes) -> tuple[str, ...]:
    text = path.split(b"?", 1)[0].decode("utf-8", "replace")
    return tuple(urllib.parse.unquote(s) for s in text.split("/") if s)


def _headers(request: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, values in request.requestHeaders.getAllRawHeaders():
        key = name.decode("latin-1").lower()
        if key not in out and values:
            out[key] = values[0].decode("latin-1")
    return out


def _query(target: bytes) -> dict[str, list[str]]:
    _, _, query = target.partition(b"?")
    return urllib.parse.parse_qs(query.decode("utf-8", "replace"), keep_blank_values=True)


def _request_format(headers: dict[str, str]) -> str:
    """The format of the request body (the default format of its answer)."""
    return MEDIA_TYPES.get(media_type(headers.get("content-type"))[0], "json")


def raw_answer(answer: Answer, fmt: str, version: str, head_only: bool = False) -> bytes:
    """A whole HTTP/1.1 response with ``Connection: close`` (for answers written before the
    request was read, when twisted.web's Request is not in play)."""
    ctype, body = render(answer, fmt, version)
    lines = [
        f"HTTP/1.1 {answer.status} {reason(answer.status)}",
        f"Date: {http.datetimeToString().decode('ascii')}",
        "Server: wharf",
        "Connection: close",
        f"Content-Length: {len(body)}",
    ]
    if ctype:
        lines.append(f"Content-Type: {ctype}")
    lines += [f"{k}: {v}" for k, v in answer.headers]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


class FhirRequest(server.Request):
    """A request whose body goes to memory (never a temp file) and is cut at ``limit``."""

    limit: int | None = None  # body bytes at most (set once the head was checked)
    endpoint: FhirEndpoint | None = None
    wharf_started = 0.0

    def gotLength(self, length: int | None) -> None:
        self.content = io.BytesIO()
        self.body_size = 0

    def handleContentChunk(self, data: bytes) -> None:
        channel = self.channel
        if channel is None or channel.early:
            return
        self.body_size += len(data)
        if self.limit is not None and self.body_size > self.limit:
            endpoint = self.endpoint
            answer = endpoint.too_large() if endpoint else problem(413, "body too large")
            channel.answer_early(answer, endpoint)
            return
        self.content.write(data)


class FhirChannel(http.HTTPChannel):
    """HTTPChannel with head checks before the body, a per-request deadline and a cap on
    connections."""

    site: FhirSite

    def __init__(self) -> None:
        super().__init__()
        self.early = False  # an answer went out before the request was read: drop the rest
        self._deadline: Any = None
        self._phase = ""
        self._started = 0.0
        self._dropped = 0
        self._expected = 0  # body bytes announced by the request answered early
        self._linger: Any = None
        self._abort: Any = None
        self._counted = False
        self._admitted = False
        self.peer = "?"
        self.host: str | None = None
        self.on_lost: defer.Deferred = defer.Deferred()

    # -- connection ----------------------------------------------------------------------

    def connectionMade(self) -> None:
        site = self.site
        self.peer = peer_name(self.transport)
        self.host = peer_host(self.transport)
        site.open += 1
        self._counted = True
        site.channels.add(self)
        super().connectionMade()
        refused = site.admission.admit(self, self.host, self.peer)
        if refused is not None:
            site.stats["refused_connections"] += 1
            self.early = True
            self.setTimeout(None)
            if refused.rule == "not_allowed":
                self.transport.abortConnection()  # a stranger hears nothing
                return
            answer = problem(
                503, f"connection refused: {refused.text}", headers=(("Retry-After", "5"),)
            )
            self.transport.write(raw_answer(answer, "json", "R5"))
            self._close()
            return
        self._admitted = True

    # -- admission (engine.net.admission) --------------------------------------------------

    def admission_state(self) -> int:
        """BUSY while a request is being answered, RECEIVING while one arrives, else IDLE."""
        if self._handlingRequest or self.early:
            return BUSY
        return RECEIVING if self._deadline is not None else IDLE

    def evict(self, reason: str) -> None:
        """Closed to make room for another peer (no request of ours is being answered)."""
        self._admitted = False
        self.site.stats["evicted"] += 1
        self.early = True
        self.setTimeout(None)
        self.transport.abortConnection()

    def connectionLost(self, reason: Any) -> None:
        if self._admitted:
            self._admitted = False
            self.site.admission.release(self, self.host)
        if self._counted:
            self._counted = False
            self.site.open -= 1
            self.site.channels.discard(self)
        for call in (self._deadline, self._linger, self._abort):
            if call is not None and call.active():
                call.cancel()
        self._deadline = self._linger = self._abort = None
        super().connectionLost(reason)
        if not self.on_lost.called:
            self.on_lost.callback(None)

    def _close(self) -> None:
        """Close after the answer is written; abort if the peer does not read it."""
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None
        self.transport.loseConnection()
        if self._abort is None:
            self._abort = self.callLater(ABORT_AFTER, self.transport.abortConnection)

    # -- deadlines -----------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.early:
            self._drop(len(data))
            return
        if self._deadline is None and not self._handlingRequest:
            self._started = self.site.reactor.seconds()
            self._phase = "head"
            self._deadline = self.callLater(self.site.settings.header_timeout, self._timed_out)
        super().dataReceived(data)

    def _timed_out(self) -> None:
        self._deadline = None
        settings = self.site.settings
        if self._phase == "head":
            self.site.stats["header_timeouts"] += 1
            text = f"the request head must arrive within {settings.header_timeout}s"
        else:
            self.site.stats["request_timeouts"] += 1
            text = f"the whole request must arrive within {settings.request_timeout}s"
        log.info(
            "fhir_http request from {peer} cut: not complete within its {phase} deadline",
            peer=self.peer,
            phase=self._phase,
        )
        self.early = True
        self.setTimeout(None)
        self.transport.write(raw_answer(problem(408, text), "json", "R5"))
        method, target = "?", b"?"
        if self._phase == "request":  # the head is known
            method, target = self._command.decode("latin-1"), self._path
        self.site.log_line(method, target, 408, self._received(), self._started, self.peer)
        self._close()

    def _received(self) -> int:
        req = self.requests[-1] if self.requests else None
        return getattr(req, "body_size", 0) or 0

    def allHeadersReceived(self) -> None:
        req = self.requests[-1]
        req.wharf_started = self._started
        found = self.site.find(self._path)
        method = self._command.decode("latin-1").upper()
        endpoint = found[0] if found else None
        if found is None:
            head: Any = problem(404, "no FHIR base at this path")
        else:
            head = found[0].check_head(method, found[1], _headers(req), self.length)
        if isinstance(head, Answer):
            self.answer_early(head, endpoint, method)
            return
        req.limit = endpoint.options.max_body if endpoint else None
        req.endpoint = endpoint
        if self._deadline is not None:  # the body now has what is left of request_timeout
            elapsed = self.site.reactor.seconds() - self._started
            self._phase = "request"
            self._deadline.reset(max(0.0, self.site.settings.request_timeout - elapsed))
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        if self.early:
            self.setRawMode()  # nothing more is parsed as a request
            return
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        super().allContentReceived()

    def rawDataReceived(self, data: bytes) -> None:
        if self.early:
            self._drop(len(data))
            return
        super().rawDataReceived(data)

    def _send100Continue(self) -> None:
        if not self.early:
            super()._send100Continue()

    # -- answers before the body ---------------------------------------------------------

    def answer_early(
        self, answer: Answer, endpoint: FhirEndpoint | None, method: str | None = None
    ) -> None:
        """Write ``answer`` now, read and drop what is left of the body (for a while, so
        that a client still sending sees the answer rather than a reset), then close."""
        if self.early:
            return
        self.early = True
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        self.setTimeout(None)
        self.site.stats["early_answers"] += 1
        if answer.status == 413:
            self.site.stats["too_large"] += 1
        req = self.requests[-1] if self.requests else None
        headers = _headers(req) if req is not None else {}
        target = getattr(self, "_path", b"")
        fmt = answer_format(_query(target), headers, _request_format(headers))
        version = endpoint.version() if endpoint is not None else "R5"
        method = method or getattr(self, "_command", b"?").decode("latin-1").upper()
        self.transport.write(raw_answer(answer, fmt, version, head_only=method == "HEAD"))
        received = getattr(req, "body_size", 0) or 0
        self.site.log_line(method, target, answer.status, received, self._started, self.peer)
        # at most max_body more bytes are read (and dropped); a chunked body may have any size
        cap = endpoint.options.max_body if endpoint is not None else LINGER_BYTES
        left = cap if self.length is None else max(0, self.length - received)
        self._expected = min(left, cap, LINGER_BYTES)
        if self._expected <= 0:
            self._close()
            return
        self._linger = self.callLater(LINGER, self._close)

    def _drop(self, n: int) -> None:
        self._dropped += n
        if self._linger is not None and self._dropped >= self._expected:
            self._close()


class _Root(resource.Resource):
    """Dispatches every request to the endpoint mounted at its base."""

    isLeaf = True

    def __init__(self, site: FhirSite) -> None:
        super().__init__()
        self.site = site

    def render(self, request: Any) -> Any:
        request.setHeader(b"server", b"wharf")
        headers = _headers(request)
        found = self.site.find(request.path)
        if found is None:  # unmounted while the body arrived (a reload)
            return self._write(request, problem(404, "no FHIR base at this path"), None, headers)
        endpoint, segments = found
        call = Call(
            method=request.method.decode("latin-1").upper(),
            segments=segments,
            headers=headers,
            query=_query(request.uri),
            body=request.content.getvalue() if request.content is not None else b"",
            peer=peer_name(request.channel.transport) if request.channel else "?",
            base_url=self._base_url(request, headers, endpoint),
        )
        d = defer.ensureDeferred(endpoint.handle(call))
        d.addCallbacks(
            lambda answer: self._write(request, answer, endpoint, headers),
            lambda failure: self._failed(request, failure, endpoint, headers),
        )
        return server.NOT_DONE_YET

    def _base_url(self, request: Any, headers: dict[str, str], endpoint: FhirEndpoint) -> str:
        scheme = "https" if request.isSecure() else "http"
        host = headers.get("host", "")
        if not _HOST.fullmatch(host):  # reflected in Location: only a plain host[:port]
            addr = request.getHost()
            host = f"{getattr(addr, 'host', 'localhost')}:{getattr(addr, 'port', '')}".rstrip(":")
        return f"{scheme}://{host}{endpoint.options.base.rstrip('/')}"

    def _write(
        self,
        request: Any,
        answer: Answer,
        endpoint: FhirEndpoint | None,
        headers: dict[str, str],
    ) -> bytes | None:
        fmt = answer_format(_query(request.uri), headers, _request_format(headers))
        version = endpoint.version() if endpoint is not None else "R5"
        ctype, body = render(answer, fmt, version)
        request.setResponseCode(answer.status)
        for name, value in answer.headers:
            request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
        if ctype:
            request.setHeader(b"content-type", ctype.encode("ascii"))
        if request.finished or request._disconnected:
            return None
        request.setHeader(b"content-length", str(len(body)).encode("ascii"))
        request.write(body)
        request.finish()
        return None

    def _failed(
        self, request: Any, failure: Any, endpoint: FhirEndpoint, headers: dict[str, str]
    ) -> None:
        # the type and the frames only: an exception's text may carry resource content
        frames = "".join(traceback.format_tb(failure.getTracebackObject()))
        log.error(
            "fhir_http {base}: {error} while answering {method} {path}\n{frames}",
            base=endpoint.options.base,
            error=failure.type.__name__,
            method=request.method.decode("latin-1"),
            path=request.path.decode("utf-8", "replace"),
            frames=frames,
        )
        answer = problem(
            500,
            "internal error (logged); the request may be sent again",
            headers=(("Retry-After", "5"),),
        )
        self._write(request, answer, endpoint, headers)


class FhirSite(server.Site):
    """One listening port: the endpoints mounted at their bases, the connections, counters."""

    requestFactory = FhirRequest
    protocol = FhirChannel
    displayTracebacks = False
    noisy = False

    def __init__(self, settings: Any, reactor: Any) -> None:
        super().__init__(
            _Root(self),
            timeout=settings.header_timeout,  # idle between requests of a keep-alive
            reactor=reactor,
            parsePOSTFormSubmission=False,
        )
        self.settings = settings
        self.admission = Admission.of(settings, reactor, "fhir_http")
        self.mounts: dict[tuple[str, ...], FhirEndpoint] = {}
        self.open = 0
        self.channels: set[FhirChannel] = set()
        self.stats: dict[str, int] = dict(
            requests=0,
            early_answers=0,
            too_large=0,
            header_timeouts=0,
            request_timeouts=0,
            refused_connections=0,
            evicted=0,
        )

    def find(self, target: bytes) -> tuple[FhirEndpoint, tuple[str, ...]] | None:
        """The endpoint whose base starts the path (the longest), and the rest of the path."""
        segments = _segments(target)
        for base in sorted(self.mounts, key=len, reverse=True):
            if segments[: len(base)] == base:
                return self.mounts[base], segments[len(base) :]
        return None

    def mount(self, base: str, endpoint: FhirEndpoint) -> bool:
        key = _segments(base.encode("utf-8"))
        if key in self.mounts:
            return False
        self.mounts[key] = endpoint
        return True

    def unmount(self, base: str, endpoint: FhirEndpoint) -> None:
        key = _segments(base.encode("utf-8"))
        if self.mounts.get(key) is endpoint:
            del self.mounts[key]

    def log(self, request: Any) -> None:
        self.log_line(
            request.method.decode("latin-1"),
            request.path,
            request.code,
            getattr(request, "body_size", 0) or 0,
            getattr(request, "wharf_started", 0.0),
            peer_name(request.channel.transport) if request.channel else "?",
            request.sentLength,
        )

    def log_line(
        self,
        method: str,
        target: bytes | str,
        status: int,
        size: int,
        started: float,
        peer: str,
        sent: int | None = None,
    ) -> None:
        """One line per request: never the body, the query string or a header value."""
        self.stats["requests"] += 1
        if isinstance(target, bytes):
            target = target.split(b"?", 1)[0].decode("utf-8", "replace")
        else:
            target = target.split("?", 1)[0]
        elapsed = (self.reactor.seconds() - started) * 1000 if started else 0.0
        log.info(
            "fhir_http {method} {path} {status} in={size}B out={sent}B {ms:.1f}ms {peer}",
            method=method,
            path=target[:200],
            status=status,
            size=size,
            sent=sent if sent is not None else "-",
            ms=elapsed,
            peer=peer,
        )


# -- shared ports -----------------------------------------------------------------------------


class SharedPort:
    """One listening port and its site, shared by the sources with the same listen string."""

    def __init__(self, options: Any, reactor: Any, base_dir: Path) -> None:
        self.listen = options.listen
        self.reactor = reactor
        self.site = FhirSite(options, reactor)
        self.port: Any = None
        self._waiting: list[defer.Deferred] = []
        self._result: Any = None  # the port, or a Failure, once known
        self._done = False
        try:
            endpoint = server_endpoint(reactor, options.listen, options.client_ca, base_dir)
            d = endpoint.listen(self.site)
        except Exception as exc:  # bad PEM files, bad endpoint string
            d = defer.fail(exc)
        d.addBoth(self._listened)

    def _listened(self, result: Any) -> None:
        self._done = True
        self._result = result
        if not isinstance(result, defer.Failure):
            self.port = result
            log.info("fhir_http listening on {addr}", addr=result.getHost())
        else:
            log.error(
                "fhir_http cannot listen on {listen}: {error}",
                listen=self.listen,
                error=result.getErrorMessage(),
            )
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(self.port)

    def listening(self) -> defer.Deferred:
        """Fires with the port (None when listening failed)."""
        if self._done:
            return defer.succeed(self.port)
        d: defer.Deferred = defer.Deferred()
        self._waiting.append(d)
        return d

    async def close(self, grace: float) -> None:
        await self.listening()
        if self.port is not None:
            port, self.port = self.port, None
            await defer.maybeDeferred(port.stopListening)
        channels = list(self.site.channels)
        if not channels:
            return
        for ch in channels:
            ch.transport.loseConnection()

        def abort() -> None:
            for ch in channels:
                if ch.transport is not None and ch.transport.connected:
                    ch.transport.abortConnection()

        timer = self.reactor.callLater(grace, abort)
        try:
            await defer.DeferredList([ch.on_lost for ch in channels])
        finally:
            if timer.active():
                timer.cancel()


_PORTS: dict[tuple[int, str], SharedPort] = {}


class FhirHttpSource:
    """The ``fhir_http`` source of one channel: its base on a (possibly shared) port."""

    answers = False  # the answers are FHIR, built here; the engine builds no HL7 reply

    def __init__(
        self,
        options: Any,
        *,
        reactor: Any,
        channel: str,
        base_dir: Path,
        ingest: Ingest,
        services: SourceServices | None = None,
    ) -> None:
        self.options = options
        self.reactor = reactor
        self.channel = channel
        self.base_dir = Path(base_dir)
        self.endpoint = FhirEndpoint(
            options,
            channel=channel,
            ingest=ingest,
            services=services,
            clock=time.time,
            tls_clients=options.client_ca is not None,
        )
        self.shared: SharedPort | None = None
        self.mounted = False

    @property
    def key(self) -> tuple[int, str]:
        return (id(self.reactor), self.options.listen)

    def start(self) -> None:
        shared = _PORTS.get(self.key)
        if shared is None:
            shared = _PORTS[self.key] = SharedPort(self.options, self.reactor, self.base_dir)
        self.shared = shared
        self.mounted = shared.site.mount(self.options.base, self.endpoint)
        if not self.mounted:
            log.error(
                "fhir_http {channel}: base {base} is already served on {listen}; not mounted",
                channel=self.channel,
                base=self.options.base,
                listen=self.options.listen,
            )
        elif self.endpoint.services is None:
            log.error(
                "fhir_http {channel}: started without the engine's services (as a listener?); "
                "every request gets 503",
                channel=self.channel,
            )

    def listening(self) -> defer.Deferred:
        """Fires with the listening port (None if it could not listen)."""
        if self.shared is None:
            return defer.succeed(None)
        return self.shared.listening()

    @property
    def port(self) -> Any:
        """The listening port (shared with the channels on the same listen string), or None."""
        return self.shared.port if self.shared is not None else None

    async def ready(self) -> None:
        """Returns once listening with the base mounted; raises why not."""
        if self.shared is None:
            return
        await self.shared.listening()
        result = self.shared._result
        if isinstance(result, defer.Failure):
            raise result.value
        if not self.mounted:
            raise ValueError(f"base {self.options.base} is already served on {self.options.listen}")

    async def stop(self, grace: float = 5.0) -> None:
        """Unmount the base; the last source on the port stops listening and closes its
        connections (aborted when not closed within ``grace``)."""
        shared, self.shared = self.shared, None
        if shared is None:
            return
        if self.mounted:
            shared.site.unmount(self.options.base, self.endpoint)
            self.mounted = False
        if shared.site.mounts:
            return
        if _PORTS.get(self.key) is shared:
            del _PORTS[self.key]
        await shared.close(grace)


@source("fhir_http", FHIR_HTTP_SPEC)
def make_fhir_http(
    options: Any,
    *,
    reactor: Any,
    channel: str,
    base_dir: Path,
    ingest: Ingest,
    services: SourceServices | None = None,
) -> FhirHttpSource:
    return FhirHttpSource(
        options,
        reactor=reactor,
        channel=channel,
        base_dir=base_dir,
        ingest=ingest,
        services=services,
    )


make_fhir_http.check_project = check_project  # type: ignore[attr-defined]
