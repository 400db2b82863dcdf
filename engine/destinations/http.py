"""The ``http`` destination: POST/PUT/PATCH each delivery to a URL with treq.

One persistent :class:`~twisted.web.client.HTTPConnectionPool` per destination
(:class:`~engine.net.http.HttpCaller`). Every request carries ``Content-Type`` (the
delivery's), ``Idempotency-Key`` and ``X-Correlation-ID``. Outcomes map to
:class:`~engine.errors.DeliveryError` flags:

========================================================  =========  =========
outcome                                                   retryable  ambiguous
========================================================  =========  =========
2xx                                                       (success)
408, 425, 429, 5xx (``Retry-After`` honoured)             yes        no
other 3xx/4xx                                             no         no
refused, DNS failure, connect timeout, TLS handshake      yes        no
timeout or connection lost after the request was sent     yes        yes
========================================================  =========  =========

A 429 is *throttled* as well: the worker holds the destination's queue (see
:mod:`engine.delivery`).

Credentials never live in YAML: ``auth`` (OAuth2 client credentials, basic or bearer, see
:mod:`engine.net.auth`) reads its secrets from environment variables or files at send time, as
do the older ``bearer_token_env`` / ``basic_password_env``; ``client_certificate`` presents a
certificate (mutual TLS). With ``bulk``, several deliveries go in one call as
``{"<items_field>": [payload, ...]}`` under the call's own ``Idempotency-Key``, and the answer's
``<results_field>`` list gives each item's own status. Payloads, response bodies and secrets
are never logged.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from engine.errors import DeliveryError
from engine.model import Delivery, ItemOutcome
from engine.net.auth import (
    AUTH_SPEC,
    Authenticator,
    BasicAuth,
    BearerAuth,
    call_with_auth,
    make_authenticator,
)
from engine.net.bulk import bulk_of, bulk_spec
from engine.net.http import RETRYABLE_STATUS, HttpAnswer, HttpCaller, origin, status_error
from engine.net.secrets import ENV_NAME, Secrets
from engine.net.tls import tls_policy
from engine.registry import destination
from engine.spec import Bool, ByteSize, Context, Duration, Enum, Field, MapOf, Spec, Str, join
from engine.templating import check_template, render_template, template_values, url_quote

log = Logger(namespace="wharf.destination.http")

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
                "auth, bearer_token_env or basic_user/basic_password_env)",
            )
        elif not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", key):
            ctx.error(node, where, f"is not a valid header name (got {key!r})")
        else:
            problem = check_template(value)
            if problem:
                ctx.error(node, where, problem)
    if config.auth is not None and (
        config.bearer_token_env or config.basic_user or config.basic_password_env
    ):
        ctx.error(
            node,
            join(path, "auth"),
            "use either auth or bearer_token_env / basic_user+basic_password_env (got both)",
        )
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
    if config.bulk is not None and config.method != "POST":
        ctx.error(node, join(path, "bulk"), f"bulk calls are POSTs (got method {config.method})")
    if config.max_response < 0:
        ctx.error(node, join(path, "max_response"), f"must be >= 0 (got {config.max_response})")


_ENV_NAME = ENV_NAME

HTTP_BULK_SPEC = bulk_spec(
    "http",
    [
        Field(
            "items_field",
            Str(),
            "items",
            "The call's body is a JSON object holding the items' payloads in this list.",
            "issues",
        ),
        Field(
            "results_field",
            Str(),
            "results",
            "The answer's list of per-item results, in the items' order, each with a `status` "
            "(2xx done; 408, 425, 429, 5xx retried; other statuses fail that item only) and "
            "an optional `error`. An answer without it means every item was done.",
            "results",
        ),
    ],
    most=1000,
    description=(
        "Send several JSON deliveries in one POST. The call carries its own Idempotency-Key, "
        "reused when the same call is sent again; each item's result settles its own delivery."
    ),
    example="bulk: {max_items: 50, max_wait: 200ms, items_field: issues}",
)

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
        Field(
            "auth",
            AUTH_SPEC,
            None,
            "Authentication: OAuth2 client credentials (token fetched, cached, renewed before "
            "it expires, and once after a 401), basic or bearer; secrets from environment "
            "variables or files.",
        ),
        Field(
            "client_certificate",
            Str(),
            None,
            "PEM file holding this client's certificate and private key, presented to the "
            "server (mutual TLS). Relative to the project root.",
            "certs/wharf-client.pem",
        ),
        Field("bulk", HTTP_BULK_SPEC, None, "Several deliveries in one call."),
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
  auth:
    oauth2:
      token_url: https://login.example.org/oauth2/token
      client_id: wharf
      client_secret: {env: ERP_CLIENT_SECRET}
  ca_file: certs/erp-ca.pem
""",
    check=_check,
)


# --------------------------------------------------------------------------- the destination


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
        self.caller = HttpCaller(
            reactor,
            tls=tls_policy(options, base_dir),
            connect_timeout=options.connect_timeout,
            timeout=options.timeout,
            max_response=options.max_response,
        )
        self.pool = self.caller.pool
        self.auth = self._authenticator(base_dir)
        self.bulk = bulk_of(options.bulk)

    def _authenticator(self, base_dir: pathlib.Path) -> Authenticator | None:
        opts = self.options
        secrets = Secrets(self.environ, base_dir)
        if opts.auth is not None:
            return make_authenticator(
                opts.auth,
                caller=self.caller,
                clock=self.reactor,
                environ=self.environ,
                base_dir=base_dir,
            )
        if opts.bearer_token_env:
            return BearerAuth(_env(opts.bearer_token_env), secrets, "bearer_token_env")
        if opts.basic_user:
            return BasicAuth(
                opts.basic_user, _env(opts.basic_password_env), secrets, "basic_password_env"
            )
        return None

    def close(self) -> Deferred[None]:
        """Close the pooled connections."""
        return self.caller.close()

    def _transport_error(self, exc: BaseException, timed_out: bool, where: str) -> DeliveryError:
        """Classify a failure before a response arrived (see :class:`HttpCaller`)."""
        return self.caller.transport_error(exc, timed_out, where, self.options.method)

    # ------------------------------------------------------------------ request building

    def _headers(
        self, content_type: str, key: str, correlation_id: str, values: Mapping[str, Any]
    ) -> dict[bytes, list[bytes]]:
        headers: dict[bytes, list[bytes]] = {}
        for name, template in self.options.headers.items():
            value = render_template(template, values, what=f"header '{name}'")
            if "\r" in value or "\n" in value:
                raise DeliveryError(
                    f"header '{name}': value must not contain a line break", retryable=False
                )
            headers[name.encode("ascii")] = [value.encode("utf-8")]
        headers[b"Content-Type"] = [content_type.encode("ascii", "replace")]
        headers[b"Idempotency-Key"] = [key.encode("ascii", "replace")]
        headers[b"X-Correlation-ID"] = [correlation_id.encode("ascii", "replace")]
        return headers

    # ------------------------------------------------------------------ sending

    async def send(self, delivery: Delivery) -> bytes | None:
        """Send ``delivery``; the (possibly truncated) response body on 2xx, else raise
        :class:`DeliveryError`."""
        values = template_values(delivery)
        url = render_template(self.options.url, values, what="url", quote=url_quote)
        headers = self._headers(
            delivery.content_type, delivery.idempotency_key, delivery.correlation_id, values
        )
        if delivery.meta.get("test"):  # test data (a canary): the receiver records nothing
            headers[b"X-Wharf-Test"] = [b"true"]
        answer = await call_with_auth(
            self.caller, self.auth, self.options.method, url, headers, delivery.payload
        )
        log.debug(
            "destination {channel}/{destination}: delivery {delivery_id}: HTTP {code}",
            channel=self.channel,
            destination=self.name,
            delivery_id=delivery.id,
            code=answer.code,
        )
        if answer.ok:
            return answer.body
        raise status_error(self.options.method, origin(url), answer, self.reactor.seconds())

    async def send_batch(self, deliveries: list[Delivery], key: str) -> list[ItemOutcome]:
        """Send ``deliveries`` in one POST (``bulk``); each item's outcome, or a DeliveryError
        when the call failed as a whole."""
        bulk = self.options.bulk
        items: list[Any] = []
        sent: list[int] = []
        outcomes: list[ItemOutcome | None] = []
        for delivery in deliveries:
            try:
                items.append(json.loads(delivery.payload))
            except ValueError:
                outcomes.append(
                    ItemOutcome(
                        error=DeliveryError(
                            "bulk: the payload is not JSON (a bulk call carries JSON items)",
                            retryable=False,
                        )
                    )
                )
                continue
            sent.append(len(outcomes))
            outcomes.append(None)
        if not items:
            return [o for o in outcomes if o is not None]
        first = deliveries[0]
        values = template_values(first, idempotency_key=key)
        url = render_template(self.options.url, values, what="url", quote=url_quote)
        body = json.dumps({bulk.items_field: items}, ensure_ascii=False).encode()
        headers = self._headers("application/json", key, first.correlation_id, values)
        if all(d.meta.get("test") for d in deliveries):
            headers[b"X-Wharf-Test"] = [b"true"]
        answer = await call_with_auth(self.caller, self.auth, "POST", url, headers, body)
        now = self.reactor.seconds()
        if not answer.ok:
            raise status_error("POST", origin(url), answer, now)
        results = _results(answer, bulk.results_field, len(items))
        for index, result in zip(sent, results, strict=True):
            outcomes[index] = _item_outcome(result, answer, now, origin(url))
        return [o for o in outcomes if o is not None]


def _env(name: str) -> Any:
    """A secret config naming an environment variable (the older ``*_env`` options)."""
    return _EnvSecret(name)


class _EnvSecret:
    def __init__(self, env: str) -> None:
        self.env = env
        self.file = None


def _results(answer: HttpAnswer, field: str, count: int) -> list[Any]:
    """The per-item results of a 2xx bulk answer; every item done when it has none."""
    try:
        doc = json.loads(answer.body) if answer.body else None
    except ValueError:
        doc = None
    results = doc.get(field) if isinstance(doc, dict) else None
    if results is None:
        return [None] * count
    if not isinstance(results, list) or len(results) != count:
        got = len(results) if isinstance(results, list) else type(results).__name__
        raise DeliveryError(
            f"bulk answer: expected '{field}' with {count} result(s) (got {got})",
            retryable=True,
            ambiguous=True,
            response=answer.body,
        )
    return results


def _item_outcome(result: Any, answer: HttpAnswer, now: float, where: str) -> ItemOutcome:
    if result is None:
        return ItemOutcome(response=answer.body)
    own = json.dumps(result, ensure_ascii=False).encode()
    status = result.get("status") if isinstance(result, dict) else None
    if isinstance(status, bool) or not isinstance(status, int):
        return ItemOutcome(
            response=own,
            error=DeliveryError(
                f"bulk answer: an item's result has no integer status (got {status!r})",
                retryable=True,
                ambiguous=True,
            ),
        )
    if 200 <= status < 300:
        return ItemOutcome(response=own)
    text = f"POST {where}: bulk item HTTP {status}"
    if status in RETRYABLE_STATUS or 500 <= status < 600:
        return ItemOutcome(
            response=own,
            error=DeliveryError(text, retryable=True, throttled=status == 429, response=own),
        )
    return ItemOutcome(response=own, error=DeliveryError(text, retryable=False, response=own))


@destination("http", HTTP_SPEC)
def make_http(
    options: Any, *, reactor: Any, channel: str, name: str, base_dir: pathlib.Path
) -> HttpDestination:
    """Build the ``http`` destination of channel ``channel`` named ``name``."""
    return HttpDestination(options, reactor=reactor, channel=channel, name=name, base_dir=base_dir)
