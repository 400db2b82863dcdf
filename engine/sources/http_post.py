"""The ``http`` source: documents POSTed to one path (an ERP's outbound webhook, for example).

Each POST body is ingested as one message (stored with the engine's commit) and answered after
the commit: 202 for a new message, 200 for a resend of a stored one (the codec's dedup key),
409 when the key was seen with other content, 400/413 for a body the codec refuses, 401 without
a valid bearer token, 503 with ``Retry-After`` when the store cannot take more. Answers are JSON
``{"outcome", "message_id", "error"}``. Bodies are never logged. A body that came with a token
is stored with the origin ``token:<name>`` (the token's name), which a domain may bind to a
party (a trading partner).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.internet import defer, endpoints
from twisted.logger import Logger
from twisted.web import resource, server

from engine.registry import source
from engine.sources import Ingest, IngestOutcome
from engine.spec import ByteSize, Duration, Field, ListOf, Spec, Str
from engine.tokens import bearer_holder

log = Logger()

TOKEN_SPEC = Spec(
    "token",
    [
        Field(
            "name", Str(), description="Who holds the token (shown in the audit, never the token)."
        ),
        Field(
            "sha256",
            Str(r"[0-9a-fA-F]{64}", "64 hex digits (the SHA-256 of the token)"),
            description="Hex SHA-256 of the token (`wharf token` makes one); never the token.",
        ),
    ],
    description="A bearer token, kept as its SHA-256 only.",
)

HTTP_SPEC = Spec(
    "http",
    [
        Field(
            "listen",
            Str(),
            description="Twisted server endpoint, e.g. `tcp:8091:interface=127.0.0.1`.",
        ),
        Field("path", Str(), "/", "The path that takes POSTs."),
        Field(
            "tokens",
            ListOf(TOKEN_SPEC),
            (),
            "Bearer tokens accepted (as SHA-256). Empty: no authentication (closed networks only).",
        ),
        Field("max_body", ByteSize(), 5 * 1024 * 1024, "Larger bodies get 413."),
        Field("timeout", Duration(lo=0.1), 30.0, "Idle connections are closed after this."),
    ],
    description=(
        "Takes documents POSTed to `path`, one message each, and answers after the store's "
        "commit: 202 stored, 200 a resend, 409 the same key with other content, 400/413 refused "
        "by the codec, 401 without a valid bearer token, 503 with Retry-After when over capacity."
    ),
    example=(
        "source:\n  http:\n    listen: tcp:8091:interface=127.0.0.1\n"
        "    path: /erp/purchase-orders\n"
        "    tokens:\n      - name: erp\n"
        "        sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    ),
)

_STATUS = {"stored": 202, "duplicate": 200, "conflict": 409, "rejected": 400}


class PostResource(resource.Resource):
    isLeaf = True

    def __init__(self, src: HttpPostSource) -> None:
        super().__init__()
        self.src = src

    def render(self, request: Any) -> Any:
        opts = self.src.options
        if request.path.rstrip(b"/") != opts.path.rstrip("/").encode():
            return _answer(request, 404, {"error": f"no such path (this source takes {opts.path})"})
        if request.method != b"POST":
            request.setHeader(b"allow", b"POST")
            return _answer(request, 405, {"error": "only POST is taken here"})
        holder = None
        if opts.tokens:
            holder = bearer_holder(request.getHeader(b"authorization"), opts.tokens)
            if holder is None:
                request.setHeader(b"www-authenticate", b'Bearer realm="wharf"')
                return _answer(request, 401, {"error": "a valid bearer token is required"})
        body = request.content.read(opts.max_body + 1) if request.content is not None else b""
        if len(body) > opts.max_body:
            return _answer(request, 413, {"error": f"body over {opts.max_body} bytes"})
        peer = request.getClientAddress()
        where = f"http:{getattr(peer, 'host', '?')}"
        # the token's name is the credential the body came with (never the token itself)
        kw = {} if holder is None else {"origin": f"token:{holder.name}"}
        d = defer.ensureDeferred(self.src.ingest(body, where, **kw))
        d.addCallbacks(
            lambda outcome: self._done(request, outcome), lambda f: self._failed(request, f)
        )
        return server.NOT_DONE_YET

    def _done(self, request: Any, outcome: IngestOutcome) -> None:
        if outcome.kind == "refused":
            request.setHeader(b"retry-after", b"5")
            status = 503
        else:
            status = _STATUS.get(outcome.kind, 400)
        doc = {"outcome": outcome.kind, "message_id": outcome.message_id}
        if outcome.reason:
            doc["error"] = outcome.reason
        _finish(request, status, doc)

    def _failed(self, request: Any, failure: Any) -> None:
        log.failure("http source: ingest failed", failure)
        request.setHeader(b"retry-after", b"5")
        _finish(request, 503, {"outcome": "refused", "error": "internal error; retry"})


def _answer(request: Any, status: int, doc: dict) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(doc).encode()


def _finish(request: Any, status: int, doc: dict) -> None:
    if request.finished or getattr(request, "_disconnected", False):
        return
    request.write(_answer(request, status, doc))
    request.finish()


class _Site(server.Site):
    def log(self, request: Any) -> None:  # method, path, status: never the body
        log.debug(
            "http {method} {path} {status}",
            method=request.method.decode("ascii", "replace"),
            path=request.path.decode("utf-8", "replace"),
            status=request.code,
        )


class HttpPostSource:
    answers = False

    def __init__(
        self, options: Any, *, reactor: Any, channel: str, base_dir: Path, ingest: Ingest
    ) -> None:
        self.options = options
        self.reactor = reactor
        self.channel = channel
        self.ingest = ingest
        self.site = _Site(PostResource(self), timeout=options.timeout, reactor=reactor)
        self.site.displayTracebacks = False
        self.site.noisy = False
        self.port: Any = None
        self.listening: defer.Deferred | None = None

    def start(self) -> None:
        ep = endpoints.serverFromString(self.reactor, self.options.listen)

        def listening(port: Any) -> Any:
            self.port = port
            return port

        def failed(f: Any) -> None:
            log.error(
                "http source of {channel} cannot listen on {listen}: {error}",
                channel=self.channel,
                listen=self.options.listen,
                error=f.getErrorMessage(),
            )

        self.listening = ep.listen(self.site).addCallbacks(listening, failed)

    async def stop(self) -> None:
        if self.listening is not None:
            await self.listening
        if self.port is not None:
            port, self.port = self.port, None
            await port.stopListening()


@source("http", HTTP_SPEC)
def make_http(
    options: Any, *, reactor: Any, channel: str, base_dir: Path, ingest: Ingest
) -> HttpPostSource:
    return HttpPostSource(
        options, reactor=reactor, channel=channel, base_dir=base_dir, ingest=ingest
    )
