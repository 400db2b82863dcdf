"""The ``http`` source: documents POSTed to one path (an ERP's outbound webhook, for example).

Each POST body is ingested as one message (stored with the engine's commit) and answered after
the commit: 202 for a new message, 200 for a resend of a stored one (the codec's dedup key),
409 when the key was seen with other content, 400/413 for a body the codec refuses (a 400 says
what is wrong: not JSON, nested too deep...), 401 without a valid bearer token or (with
``signature``) without a valid HMAC signature, fresh timestamp and unused nonce
(:mod:`engine.net.signing`: a replayed request is refused), 503 with ``Retry-After`` when the
store cannot take more, 500 for a fault of ours (logged with its frames). Answers are JSON
``{"outcome", "message_id", "error"}``. Bodies and secrets are never logged: a refused request
is logged once, with its status, the codec's error code and the peer.

Connections: who may hold them is :mod:`engine.net.admission`'s call (``allow``, a cap per peer,
fair shares of ``max_connections``; a connection over a cap gets 503 and is closed, one from
outside ``allow`` is closed unanswered), and a request must arrive whole within
``request_timeout`` of its first byte however slowly it trickles (else 408 and close).
A body that came with a token is stored with the origin ``token:<name>`` (the token's name),
which a domain may bind to a party (a trading partner).
"""

from __future__ import annotations

import json
import os
import traceback
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import http, resource, server

from engine.errors import DeliveryError
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
from engine.net.secrets import SECRET_SPEC, Secrets
from engine.net.signing import NONCE, SIGNATURE, TIMESTAMP, ReplayGuard, verify
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

SIGNATURE_SPEC = Spec(
    "signature",
    [
        Field(
            "secret",
            SECRET_SPEC,
            description="Where the shared HMAC secret is read from (never YAML).",
            example="{env: ERP_WEBHOOK_SECRET}",
        ),
        Field(
            "tolerance",
            Duration(lo=1),
            300.0,
            "How far the signed timestamp may be from now; nonces are remembered this long.",
            "5m",
        ),
    ],
    description=(
        f"HMAC-SHA256 request signing: `{SIGNATURE}: sha256=<hex of HMAC(secret, "
        f"timestamp.nonce.body)>` with `{TIMESTAMP}` (Unix seconds) and `{NONCE}`. A request "
        "outside the time window, with a wrong signature or with a nonce already used (a "
        "replay) gets 401."
    ),
    example="signature: {secret: {env: ERP_WEBHOOK_SECRET}, tolerance: 5m}",
)


def _check(config: Any, ctx: Any, node: Any, path: str) -> None:
    check_listen(config, ctx, node, path)
    check_admission(config, ctx, node, path)


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
        Field(
            "signature",
            SIGNATURE_SPEC,
            None,
            "Require an HMAC signature with a timestamp and a nonce (in addition to a bearer "
            "token when `tokens` are given); replays are refused.",
        ),
        Field(
            "request_timeout",
            Duration(lo=0.05),
            30.0,
            "A request (head and body) must arrive within this of its first byte, however "
            "slowly it trickles; else 408 and close.",
        ),
        *admission_fields(256, 32),
    ],
    description=(
        "Takes documents POSTed to `path`, one message each, and answers after the store's "
        "commit: 202 stored, 200 a resend, 409 the same key with other content, 400/413 refused "
        "by the codec (the 400 says what is wrong), 401 without a valid bearer token or "
        "signature (a replayed signed request included), 503 with Retry-After when over "
        "capacity. One address cannot take every connection (`max_connections_per_peer`, fair "
        "shares of `max_connections`); `allow` limits the senders; a request trickled slower "
        "than `request_timeout` gets 408."
    ),
    example=(
        "source:\n  http:\n    listen: tcp:8091:interface=127.0.0.1\n"
        "    path: /erp/purchase-orders\n"
        "    tokens:\n      - name: erp\n"
        "        sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\n"
        "    allow: [10.30.0.0/24]"
    ),
    check=_check,
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
        request.wharf_size = len(body)
        if len(body) > opts.max_body:
            return _answer(request, 413, {"error": f"body over {opts.max_body} bytes"})
        if opts.signature is not None:
            problem = self.src.check_signature(request, body)
            if problem is not None:
                request.setHeader(b"www-authenticate", b'Signature realm="wharf"')
                return _answer(request, 401, {"error": problem})
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
        if status >= 400:
            # once per request: the codec's error code, never the body or the error's text
            log.info(
                "http source {channel}: {status} {outcome} ({code}) for a {size}-byte body "
                "from {peer}",
                channel=self.src.channel,
                status=status,
                outcome=outcome.kind,
                code=outcome.reason.split(":", 1)[0].split(" ", 1)[0] or "-",
                size=getattr(request, "wharf_size", 0),
                peer=_peer(request),
            )
        _finish(request, status, doc)

    def _failed(self, request: Any, failure: Any) -> None:
        # the type and the frames only: an exception's text may carry the body (PHI)
        frames = "".join(traceback.format_tb(failure.getTracebackObject()))
        log.error(
            "http source {channel}: {error} while taking a POST from {peer}; answered 500\n"
            "{frames}",
            channel=self.src.channel,
            error=failure.type.__name__,
            peer=_peer(request),
            frames=frames,
        )
        _finish(request, 500, {"outcome": "error", "error": "internal error (logged)"})


def _peer(request: Any) -> str:
    return peer_name(request.channel.transport) if request.channel is not None else "?"


def _answer(request: Any, status: int, doc: dict) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(doc).encode()


def _finish(request: Any, status: int, doc: dict) -> None:
    if request.finished or getattr(request, "_disconnected", False):
        return
    request.write(_answer(request, status, doc))
    request.finish()


class _PostChannel(http.HTTPChannel):
    """HTTPChannel with admission (engine.net.admission) and a deadline per request from its
    first byte (twisted's own timeout is an idle timeout, which a trickle never triggers)."""

    site: _Site

    def __init__(self) -> None:
        super().__init__()
        self.host: str | None = None
        self.peer = "?"
        self.admitted = False
        self.cut = False
        self._deadline: Any = None

    def connectionMade(self) -> None:
        self.host = peer_host(self.transport)
        self.peer = peer_name(self.transport)
        super().connectionMade()
        refused = self.site.admission.admit(self, self.host, self.peer)
        if refused is None:
            self.admitted = True
            return
        self.site.stats["refused_connections"] += 1
        self.cut = True
        self.setTimeout(None)
        if refused.rule == "not_allowed":
            self.transport.abortConnection()  # a stranger hears nothing
            return
        self._answer_and_close(503, f"connection refused: {refused.text}", retry_after=True)

    def connectionLost(self, reason: Any) -> None:
        if self.admitted:
            self.admitted = False
            self.site.admission.release(self, self.host)
        self._stop_deadline()
        super().connectionLost(reason)

    def admission_state(self) -> int:
        if self._handlingRequest or self.cut:
            return BUSY
        return RECEIVING if self._deadline is not None else IDLE

    def evict(self, reason: str) -> None:
        self.admitted = False
        self.site.stats["evicted"] += 1
        self.cut = True
        self._stop_deadline()
        self.setTimeout(None)
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.cut:
            return
        if self._deadline is None and not self._handlingRequest:
            self._deadline = self.callLater(self.site.request_timeout, self._timed_out)
        super().dataReceived(data)

    def allContentReceived(self) -> None:
        self._stop_deadline()
        super().allContentReceived()

    def _stop_deadline(self) -> None:
        call, self._deadline = self._deadline, None
        if call is not None and call.active():
            call.cancel()

    def _timed_out(self) -> None:
        self._deadline = None
        self.site.stats["request_timeouts"] += 1
        log.info(
            "http request from {peer} cut: not complete {seconds}s after its first byte",
            peer=self.peer,
            seconds=self.site.request_timeout,
        )
        self.cut = True
        self.setTimeout(None)
        self._answer_and_close(
            408, f"the whole request must arrive within {self.site.request_timeout}s"
        )

    def _answer_and_close(self, status: int, text: str, retry_after: bool = False) -> None:
        body = json.dumps({"outcome": "refused", "error": text}).encode()
        head = [
            f"HTTP/1.1 {status} {http.RESPONSES.get(status, b'').decode()}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        if retry_after:
            head.append("Retry-After: 5")
        self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        self.transport.loseConnection()


class _Site(server.Site):
    protocol = _PostChannel

    def __init__(self, res: Any, options: Any, reactor: Any) -> None:
        super().__init__(res, timeout=options.timeout, reactor=reactor)
        self.request_timeout = options.request_timeout
        self.admission = Admission.of(options, reactor, "http")
        self.stats: dict[str, int] = dict(refused_connections=0, evicted=0, request_timeouts=0)

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
        self.base_dir = Path(base_dir)
        self.ingest = ingest
        self.site = _Site(PostResource(self), options, reactor)
        self.site.displayTracebacks = False
        self.site.noisy = False
        self.port: Any = None
        self.listening: defer.Deferred | None = None
        self.listen_error: BaseException | None = None
        self.secrets = Secrets(os.environ, base_dir)
        self.guard = (
            ReplayGuard(options.signature.tolerance, reactor.seconds)
            if options.signature is not None
            else None
        )
        self.refused_signatures = 0

    def check_signature(self, request: Any, body: bytes) -> str | None:
        """Why a request's signature is refused, or None (see :mod:`engine.net.signing`)."""
        sig = self.options.signature
        assert self.guard is not None
        try:
            secret = self.secrets.read(sig.secret, "signature.secret")
        except DeliveryError as e:
            log.error("http source of {channel}: {error}", channel=self.channel, error=e.message)
            return "signature checking is not configured on this server"
        headers = {
            name: (request.getHeader(name.encode()) or b"").decode("latin-1") or None
            for name in (SIGNATURE, TIMESTAMP, NONCE)
        }
        problem = verify(headers, body, secret, tolerance=sig.tolerance, guard=self.guard)
        if problem is not None:
            self.refused_signatures += 1
            log.warn(
                "http source of {channel}: signed request refused: {problem}",
                channel=self.channel,
                problem=problem,
            )
        return problem

    def start(self) -> None:
        ep = server_endpoint(self.reactor, self.options.listen, None, self.base_dir)

        def listening(port: Any) -> Any:
            self.port = port
            return port

        def failed(f: Any) -> None:
            self.listen_error = f.value
            log.error(
                "http source of {channel} cannot listen on {listen}: {error}",
                channel=self.channel,
                listen=self.options.listen,
                error=f.getErrorMessage(),
            )

        try:
            d = ep.listen(self.site)
        except Exception as exc:  # a bad endpoint string
            d = defer.fail(exc)
        self.listening = d.addCallbacks(listening, failed)

    async def ready(self) -> None:
        """Returns once listening; raises why it could not listen."""
        if self.listening is not None:
            await self.listening
        if self.listen_error is not None:
            raise self.listen_error

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
