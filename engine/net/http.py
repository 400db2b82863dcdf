"""An HTTP(S) client for destinations: one persistent connection pool, a whole-request
timeout, a capped body read, and failures sorted by what they mean for a resend.

:class:`HttpCaller` returns an :class:`HttpAnswer` for any status; what a status means is the
caller's business, though :func:`status_error` gives the usual reading:

========================================================  =========  =========  =========
outcome                                                   retryable  ambiguous  throttled
========================================================  =========  =========  =========
408, 425, 5xx (``Retry-After`` honoured)                  yes        no         no
429 (``Retry-After`` honoured)                            yes        no         yes
other 3xx/4xx                                             no         no         no
refused, DNS failure, connect timeout, TLS handshake      yes        no         no
timeout or connection lost after the request was sent     yes        yes        no
========================================================  =========  =========  =========

Nothing here logs a body or a header value.
"""

from __future__ import annotations

import email.utils
import http.cookiejar
import urllib.parse
from dataclasses import dataclass
from typing import Any

import treq
from OpenSSL import SSL
from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web import client as web_client
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

from engine.errors import DeliveryError
from engine.net.tls import tls_policy
from engine.spec import Bool, ByteSize, Duration, Field, Str

__all__ = [
    "RETRYABLE_STATUS",
    "HttpAnswer",
    "HttpCaller",
    "origin",
    "retry_after",
    "status_error",
]

#: Seconds an idle pooled connection is kept; below common server/LB keep-alive limits so a
#: POST rarely lands on a connection the server is closing (which would be ambiguous).
IDLE_CONNECTION_TIMEOUT = 30.0
MAX_CONNECTIONS_PER_HOST = 8
RETRYABLE_STATUS = frozenset({408, 425, 429})


@dataclass(frozen=True)
class HttpAnswer:
    """A response: status, reason phrase, headers and the (possibly truncated) body."""

    code: int
    phrase: str
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name.encode("ascii"))
        return values[0].decode("latin-1") if values else None

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300


class _BodyReader(Protocol):
    """Collects a response body up to ``limit`` bytes; beyond it, stops reading (truncates)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buf = bytearray()
        self.truncated = False
        self.finished: Deferred[bytes] = Deferred(self._cancel)

    def _cancel(self, d: Deferred[bytes]) -> None:
        if self.transport is not None:
            self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.truncated:
            return
        room = self.limit - len(self.buf)
        if len(data) > room:
            self.buf += data[:room]
            self.truncated = True
            self.transport.stopProducing()
        else:
            self.buf += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        assert reason is not None
        if self.finished.called:
            return
        if self.truncated or reason.check(web_client.ResponseDone, PotentialDataLoss):
            self.finished.callback(bytes(self.buf))
        else:
            self.finished.errback(reason)


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a ``Retry-After`` header: delta seconds or an HTTP-date; None if absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(when.timestamp() - now, 0.0)


_TLS_ERRORS: tuple[type[BaseException], ...] = (SSL.Error,)
try:  # service_identity reports host name mismatches
    from service_identity import VerificationError

    _TLS_ERRORS += (VerificationError,)
except ImportError:  # pragma: no cover
    pass

_NOT_SENT = (error.ConnectError, web_client.RequestNotSent, error.ConnectingCancelledError)


def _reasons(exc: BaseException) -> list[BaseException]:
    """The exception and those wrapped in a twisted.web ``_WrapperException``."""
    out = [exc]
    for reason in getattr(exc, "reasons", None) or []:
        inner = reason.value if isinstance(reason, Failure) else reason
        if isinstance(inner, BaseException):
            out.extend(_reasons(inner))
    return out


def _describe(exc: BaseException) -> str:
    parts = []
    for e in _reasons(exc):
        text = str(e) if not getattr(e, "reasons", None) else ""
        parts.append(f"{type(e).__name__}{': ' + text if text else ''}")
    return " <- ".join(parts)


def origin(url: str) -> str:
    """``scheme://host:port`` of a URL: what error text shows (paths may carry ids)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def status_error(
    method: str, where: str, answer: HttpAnswer, now: float, *, detail: str = ""
) -> DeliveryError:
    """The usual reading of a non-2xx answer (the module's table); ``detail`` is appended."""
    text = f"{method} {where}: HTTP {answer.code}"
    if answer.phrase:
        text += f" {answer.phrase}"
    if detail:
        text += f": {detail}"
    code = answer.code
    if code in RETRYABLE_STATUS or 500 <= code < 600:
        wait = retry_after(answer.header("Retry-After"), now)
        return DeliveryError(
            text + (f" (Retry-After {wait:g}s)" if wait else ""),
            retryable=True,
            retry_after=wait,
            response=answer.body,
            throttled=code == 429,
        )
    return DeliveryError(text, retryable=False, response=answer.body)


class HttpCaller:
    """Sends requests over one pooled, persistent connection set (``tls`` is an
    :class:`~twisted.web.iweb.IPolicyForHTTPS`). ``timeout`` bounds a whole request, the body
    read included; bodies past ``max_response`` bytes are truncated."""

    def __init__(
        self,
        reactor: Any,
        *,
        tls: Any,
        connect_timeout: float,
        timeout: float,
        max_response: int,
    ) -> None:
        self.reactor = reactor
        self.timeout = timeout
        self.max_response = max_response
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = MAX_CONNECTIONS_PER_HOST
        self.pool.cachedConnectionTimeout = IDLE_CONNECTION_TIMEOUT
        agent = Agent(reactor, contextFactory=tls, connectTimeout=connect_timeout, pool=self.pool)
        # No cookie is kept between calls unless a destination sends it itself (SAP's CSRF
        # session does): a jar that refuses every cookie.
        jar = http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        self.client = treq.client.HTTPClient(agent, cookiejar=jar)
        self.requests = 0  # requests sent (tests count them)

    def close(self) -> Deferred[None]:
        """Close the pooled connections."""
        return self.pool.closeCachedConnections()

    async def call(
        self,
        method: str,
        url: str,
        headers: dict[bytes, list[bytes]],
        body: bytes | None,
    ) -> HttpAnswer:
        """One request; an :class:`HttpAnswer` whatever the status, or a DeliveryError when
        no complete answer came (classified by whether the request may have been sent)."""
        where = origin(url)
        current: list[Deferred[Any]] = []
        timed_out = [False]

        def on_timeout() -> None:
            timed_out[0] = True
            if current:
                current[-1].cancel()  # forwarded to a Deferred it waits on; no-op once fired

        timer = self.reactor.callLater(self.timeout, on_timeout)
        try:
            self.requests += 1
            request_d = self.client.request(
                method,
                url,
                headers=headers,
                data=body,
                allow_redirects=False,
                unbuffered=True,
                reactor=self.reactor,
            )
            current.append(request_d)
            try:
                response = await request_d
            except Exception as e:
                raise self.transport_error(e, timed_out[0], where, method) from None
            reader = _BodyReader(self.max_response)
            current.append(reader.finished)
            response.deliverBody(reader)
            try:
                data = await reader.finished
            except Exception as e:
                if timed_out[0]:
                    raise DeliveryError(
                        f"{method} {where}: HTTP {response.code} received but the "
                        f"body did not arrive within the timeout of {self.timeout:g}s",
                        retryable=True,
                        ambiguous=True,
                    ) from None
                raise DeliveryError(
                    f"{method} {where}: HTTP {response.code} received, then the "
                    f"body failed: {_describe(e)}",
                    retryable=True,
                    ambiguous=True,
                ) from None
        finally:
            if timer.active():
                timer.cancel()
        phrase = response.phrase.decode("latin-1", "replace") if response.phrase else ""
        return HttpAnswer(response.code, phrase, response.headers, data)

    def transport_error(
        self, exc: BaseException, timed_out: bool, where: str, method: str
    ) -> DeliveryError:
        """Classify a failure before a response arrived: was anything sent?"""
        reasons = _reasons(exc)
        detail = _describe(exc)
        if any(isinstance(r, _TLS_ERRORS) for r in reasons):
            return DeliveryError(
                f"{method} {where}: TLS handshake failed: {detail}",
                retryable=True,
                ambiguous=False,
            )
        if isinstance(exc, _NOT_SENT) or (
            timed_out and isinstance(exc, CancelledError) and not getattr(exc, "reasons", None)
        ):
            what = (
                f"timed out after {self.timeout:g}s before connecting"
                if timed_out
                else f"could not connect: {detail}"
            )
            return DeliveryError(f"{method} {where}: {what}", retryable=True, ambiguous=False)
        if timed_out:
            return DeliveryError(
                f"{method} {where}: no response within {self.timeout:g}s "
                "(the request may have been processed)",
                retryable=True,
                ambiguous=True,
            )
        return DeliveryError(
            f"{method} {where}: connection failed after the request was sent "
            f"(it may have been processed): {detail}",
            retryable=True,
            ambiguous=True,
        )


def connection_fields(timeout: float = 30.0) -> list[Any]:
    """The connection options a destination built on :class:`HttpCaller` offers (timeout,
    connect_timeout, tls_verify, ca_file, client_certificate, max_response)."""
    return [
        Field("timeout", Duration(lo=0.001), timeout, "Total time for one call.", "20s"),
        Field("connect_timeout", Duration(lo=0.001), 10.0, "Time to open the connection.", "5s"),
        Field(
            "tls_verify",
            Bool(),
            True,
            "Verify the server certificate and host name. false is for test rigs only.",
            True,
        ),
        Field(
            "ca_file",
            Str(),
            None,
            "PEM bundle of the CAs trusted instead of the system's.",
            "certs/erp-ca.pem",
        ),
        Field(
            "client_certificate",
            Str(),
            None,
            "PEM file with this client's certificate and private key (mutual TLS).",
            "certs/wharf-client.pem",
        ),
        Field(
            "max_response",
            ByteSize(),
            1024 * 1024,
            "Answers longer than this are truncated when stored.",
            "256KiB",
        ),
    ]


def caller_for(options: Any, reactor: Any, base_dir: Any) -> HttpCaller:
    """An :class:`HttpCaller` from options holding :func:`connection_fields`."""
    return HttpCaller(
        reactor,
        tls=tls_policy(options, base_dir),
        connect_timeout=options.connect_timeout,
        timeout=options.timeout,
        max_response=options.max_response,
    )
