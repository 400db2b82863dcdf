"""The ``http`` destination: POST/PUT/PATCH each delivery to a URL with treq.

One persistent :class:`~twisted.web.client.HTTPConnectionPool` per destination. Every request
carries ``Content-Type`` (the delivery's), ``Idempotency-Key`` and ``X-Correlation-ID``.
Outcomes map to :class:`~engine.errors.DeliveryError` flags:

========================================================  =========  =========
outcome                                                   retryable  ambiguous
========================================================  =========  =========
2xx                                                       (success)
408, 425, 429, 5xx (``Retry-After`` honoured)             yes        no
other 3xx/4xx                                             no         no
refused, DNS failure, connect timeout, TLS handshake      yes        no
timeout or connection lost after the request was sent     yes        yes
========================================================  =========  =========

Credentials never live in YAML: ``bearer_token_env`` / ``basic_password_env`` name environment
variables read at send time. Payloads and response bodies are never logged.
"""

from __future__ import annotations

import base64
import email.utils
import os
import pathlib
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

import treq
from OpenSSL import SSL
from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import client as web_client
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http import PotentialDataLoss

from engine.errors import DeliveryError
from engine.model import Delivery
from engine.net.tls import tls_policy
from engine.registry import destination
from engine.spec import Bool, ByteSize, Context, Duration, Enum, Field, MapOf, Spec, Str, join
from engine.templating import check_template, render_template, template_values, url_quote

log = Logger(namespace="wharf.destination.http")

#: Seconds an idle pooled connection is kept; below common server/LB keep-alive limits so a
#: POST rarely lands on a connection the server is closing (which would be ambiguous).
IDLE_CONNECTION_TIMEOUT = 30.0
MAX_CONNECTIONS_PER_HOST = 8

#: Headers Wharf sets itself; configuring them is an error.
RESERVED_HEADERS = (
    "content-type",
    "content-length",
    "host",
    "idempotency-key",
    "x-correlation-id",
    "authorization",
    "transfer-encoding",
)
RETRYABLE_STATUS = frozenset({408, 425, 429})


def _check(config: Any, ctx: Context, node: Any, path: str) -> None:
    url = config.url
    problem = check_template(url)
    if problem:
        ctx.error(node, join(path, "url"), problem)
    elif not url.startswith("{") and urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        ctx.error(node, join(path, "url"), f"must start with http:// or https:// (got {url!r})")
    for key, value in config.headers.items():
        where = join(join(path, "headers"), key)
        if key.lower() in RESERVED_HEADERS:
            ctx.error(
                node,
                where,
                f"header '{key}' is set by Wharf (Content-Type from the delivery, auth from "
                "bearer_token_env or basic_user/basic_password_env)",
            )
        elif not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", key):
            ctx.error(node, where, f"is not a valid header name (got {key!r})")
        else:
            problem = check_template(value)
            if problem:
                ctx.error(node, where, problem)
    if config.bearer_token_env and (config.basic_user or config.basic_password_env):
        ctx.error(
            node,
            join(path, "bearer_token_env"),
            "use either bearer_token_env or basic_user/basic_password_env (got both)",
        )
    if bool(config.basic_user) != bool(config.basic_password_env):
        ctx.error(
            node,
            join(path, "basic_user" if not config.basic_user else "basic_password_env"),
            "basic_user and basic_password_env must be given together (got only one)",
        )
    if config.ca_file and not config.tls_verify:
        ctx.error(
            node, join(path, "ca_file"), "ca_file needs tls_verify: true (got tls_verify: false)"
        )
    if config.max_response < 0:
        ctx.error(node, join(path, "max_response"), f"must be >= 0 (got {config.max_response})")


_ENV_NAME = Str(pattern=r"[A-Za-z_][A-Za-z0-9_]*", hint="an environment variable name")

HTTP_SPEC = Spec(
    "http",
    [
        Field(
            "url",
            Str(),
            description=(
                "Target URL. Placeholders {message_id}, {correlation_id}, {idempotency_key}, "
                "{channel}, {destination} and the keys of the delivery's meta are substituted "
                "(values are percent-encoded); an unknown placeholder fails the delivery."
            ),
            example="https://erp.example.org/api/requisitions/{message_id}",
        ),
        Field("method", Enum("POST", "PUT", "PATCH"), "POST", "HTTP method.", "PUT"),
        Field(
            "headers",
            MapOf(Str(nonempty=False)),
            {},
            "Extra request headers; values take the same placeholders as url.",
            {"X-Site": "{site}"},
        ),
        Field("timeout", Duration(lo=0.001), 30.0, "Total time for one request.", "20s"),
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
            "PEM bundle of the CAs trusted for this destination instead of the system store "
            "(as curl --cacert), e.g. an internal ERP's CA. Relative to the project root.",
            "certs/erp-ca.pem",
        ),
        Field(
            "bearer_token_env",
            _ENV_NAME,
            None,
            "Name of the environment variable holding a bearer token (read at send time).",
            "ERP_TOKEN",
        ),
        Field("basic_user", Str(), None, "User name for HTTP basic auth.", "wharf"),
        Field(
            "basic_password_env",
            _ENV_NAME,
            None,
            "Name of the environment variable holding the basic auth password.",
            "ERP_PASSWORD",
        ),
        Field(
            "max_response",
            ByteSize(),
            1024 * 1024,
            "Response bodies longer than this are truncated when stored.",
            "256KiB",
        ),
    ],
    description=(
        "Send each delivery as the body of an HTTP request. 2xx is success; 408, 425, 429 and "
        "5xx are retried (honouring Retry-After); other statuses are permanent failures. A "
        "timeout or reset after the request went out is ambiguous: retried when the "
        "destination is idempotent, otherwise quarantined."
    ),
    example="""
http:
  url: https://erp.example.org/api/requisitions
  method: POST
  headers:
    X-Site: "{site}"
  timeout: 20s
  bearer_token_env: ERP_TOKEN
  ca_file: certs/erp-ca.pem
""",
    check=_check,
)


# --------------------------------------------------------------------------- body reading


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


# --------------------------------------------------------------------------- the destination


def _retry_after(value: str | None, now: float) -> float | None:
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


class HttpDestination:
    """Sends deliveries over HTTP(S); see the module docstring for the outcome mapping."""

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
        self.environ = os.environ if environ is None else environ
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = MAX_CONNECTIONS_PER_HOST
        self.pool.cachedConnectionTimeout = IDLE_CONNECTION_TIMEOUT
        agent = Agent(
            reactor,
            contextFactory=tls_policy(options, base_dir),
            connectTimeout=options.connect_timeout,
            pool=self.pool,
        )
        self.client = treq.client.HTTPClient(agent)

    def close(self) -> Deferred[None]:
        """Close the pooled connections."""
        return self.pool.closeCachedConnections()

    # ------------------------------------------------------------------ request building

    def _secret(self, field: str, var: str) -> str:
        value = self.environ.get(var)
        if not value:
            raise DeliveryError(
                f"environment variable '{var}' ({field}) is not set", retryable=False
            )
        return value

    def _headers(self, delivery: Delivery, values: Mapping[str, Any]) -> dict[bytes, list[bytes]]:
        headers: dict[bytes, list[bytes]] = {}
        for key, template in self.options.headers.items():
            value = render_template(template, values, what=f"header '{key}'")
            if "\r" in value or "\n" in value:
                raise DeliveryError(
                    f"header '{key}': value must not contain a line break", retryable=False
                )
            headers[key.encode("ascii")] = [value.encode("utf-8")]
        headers[b"Content-Type"] = [delivery.content_type.encode("ascii", "replace")]
        headers[b"Idempotency-Key"] = [delivery.idempotency_key.encode("ascii", "replace")]
        headers[b"X-Correlation-ID"] = [delivery.correlation_id.encode("ascii", "replace")]
        opts = self.options
        if opts.bearer_token_env:
            token = self._secret("bearer_token_env", opts.bearer_token_env)
            headers[b"Authorization"] = [b"Bearer " + token.encode("utf-8")]
        elif opts.basic_user:
            password = self._secret("basic_password_env", opts.basic_password_env)
            pair = f"{opts.basic_user}:{password}".encode()
            headers[b"Authorization"] = [b"Basic " + base64.b64encode(pair)]
        return headers

    # ------------------------------------------------------------------ sending

    async def send(self, delivery: Delivery) -> bytes | None:
        """Send ``delivery``; the (possibly truncated) response body on 2xx, else raise
        :class:`DeliveryError`."""
        values = template_values(delivery)
        url = render_template(self.options.url, values, what="url", quote=url_quote)
        headers = self._headers(delivery, values)
        origin = _origin(url)

        current: list[Deferred[Any]] = []
        timed_out = [False]

        def on_timeout() -> None:
            timed_out[0] = True
            if current:
                current[-1].cancel()  # forwarded to a Deferred it waits on; no-op once fired

        timer = self.reactor.callLater(self.options.timeout, on_timeout)
        try:
            request_d = self.client.request(
                self.options.method,
                url,
                headers=headers,
                data=delivery.payload,
                allow_redirects=False,
                unbuffered=True,
                reactor=self.reactor,
            )
            current.append(request_d)
            try:
                response = await request_d
            except Exception as e:
                raise self._transport_error(e, timed_out[0], origin) from None
            reader = _BodyReader(self.options.max_response)
            current.append(reader.finished)
            response.deliverBody(reader)
            try:
                body = await reader.finished
            except Exception as e:
                if timed_out[0]:
                    raise DeliveryError(
                        f"{self.options.method} {origin}: HTTP {response.code} received but the "
                        f"body did not arrive within the timeout of {self.options.timeout:g}s",
                        retryable=True,
                        ambiguous=True,
                    ) from None
                raise DeliveryError(
                    f"{self.options.method} {origin}: HTTP {response.code} received, then the "
                    f"body failed: {_describe(e)}",
                    retryable=True,
                    ambiguous=True,
                ) from None
        finally:
            if timer.active():
                timer.cancel()

        code = response.code
        log.debug(
            "destination {channel}/{destination}: delivery {delivery_id}: HTTP {code}",
            channel=self.channel,
            destination=self.name,
            delivery_id=delivery.id,
            code=code,
        )
        if 200 <= code < 300:
            return body
        text = f"{self.options.method} {origin}: HTTP {code}"
        phrase = response.phrase.decode("latin-1", "replace") if response.phrase else ""
        if phrase:
            text += f" {phrase}"
        if code in RETRYABLE_STATUS or 500 <= code < 600:
            header = response.headers.getRawHeaders(b"Retry-After")
            retry_after = _retry_after(
                header[0].decode("latin-1") if header else None, self.reactor.seconds()
            )
            return_text = text + (f" (Retry-After {retry_after:g}s)" if retry_after else "")
            raise DeliveryError(return_text, retryable=True, retry_after=retry_after, response=body)
        raise DeliveryError(text, retryable=False, response=body)

    def _transport_error(self, exc: BaseException, timed_out: bool, origin: str) -> DeliveryError:
        """Classify a failure before a response arrived: was anything sent?"""
        method = self.options.method
        reasons = _reasons(exc)
        detail = _describe(exc)
        if any(isinstance(r, _TLS_ERRORS) for r in reasons):
            return DeliveryError(
                f"{method} {origin}: TLS handshake failed: {detail}",
                retryable=True,
                ambiguous=False,
            )
        if isinstance(exc, _NOT_SENT) or (
            timed_out and isinstance(exc, CancelledError) and not getattr(exc, "reasons", None)
        ):
            what = (
                f"timed out after {self.options.timeout:g}s before connecting"
                if timed_out
                else f"could not connect: {detail}"
            )
            return DeliveryError(f"{method} {origin}: {what}", retryable=True, ambiguous=False)
        if timed_out:
            return DeliveryError(
                f"{method} {origin}: no response within {self.options.timeout:g}s "
                "(the request may have been processed)",
                retryable=True,
                ambiguous=True,
            )
        return DeliveryError(
            f"{method} {origin}: connection failed after the request was sent "
            f"(it may have been processed): {detail}",
            retryable=True,
            ambiguous=True,
        )


def _origin(url: str) -> str:
    """``scheme://host:port`` of a URL: what error text shows (paths may carry ids)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


@destination("http", HTTP_SPEC)
def make_http(
    options: Any, *, reactor: Any, channel: str, name: str, base_dir: pathlib.Path
) -> HttpDestination:
    """Build the ``http`` destination of channel ``channel`` named ``name``."""
    return HttpDestination(options, reactor=reactor, channel=channel, name=name, base_dir=base_dir)
