"""How a destination proves who it is to an HTTP API: :data:`AUTH_SPEC` (``bearer``,
``basic`` or ``oauth2`` client credentials, secrets from environment variables or files) and
the authenticators built from it.

:class:`OAuth2ClientCredentials` (RFC 6749 section 4.4) fetches a token from the token
endpoint, keeps it in memory only, and fetches a new one ``refresh_before`` seconds ahead of
its expiry; concurrent sends wait on one fetch. :func:`call_with_auth` sends a request with the
current credential and, on a 401 from a renewable credential, fetches a new token once and
sends again (a 401 proves the request had no effect, so the resend is safe).

No secret, token or token response is ever logged or put in an error text.
"""

from __future__ import annotations

import base64
import json
import pathlib
import urllib.parse
from collections.abc import Mapping
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from engine.errors import DeliveryError
from engine.net.http import HttpAnswer, HttpCaller, origin, retry_after
from engine.net.secrets import SECRET_SPEC, Secrets
from engine.spec import Context, Duration, Enum, Field, Spec, Str, join

__all__ = [
    "AUTH_SPEC",
    "Authenticator",
    "BasicAuth",
    "BearerAuth",
    "OAuth2ClientCredentials",
    "call_with_auth",
    "make_authenticator",
]


def _check_oauth2(config: Any, ctx: Context, node: Any, path: str) -> None:
    scheme = urllib.parse.urlsplit(config.token_url).scheme
    if scheme not in ("http", "https"):
        ctx.error(
            node,
            join(path, "token_url"),
            f"must start with http:// or https:// (got {config.token_url!r})",
        )


OAUTH2_SPEC = Spec(
    "oauth2",
    [
        Field(
            "token_url",
            Str(),
            description="The authorization server's token endpoint.",
            example="https://idcs-example.identity.oraclecloud.com/oauth2/v1/token",
        ),
        Field("client_id", Str(), description="The client id (not a secret).", example="wharf"),
        Field(
            "client_secret",
            SECRET_SPEC,
            description="Where the client secret is read from.",
            example="{env: ERP_CLIENT_SECRET}",
        ),
        Field("scope", Str(), None, "Scope to ask for (space separated).", "inventory.write"),
        Field(
            "client_auth",
            Enum("basic", "body"),
            "basic",
            "How the client authenticates to the token endpoint: HTTP basic "
            "(client_secret_basic) or form fields (client_secret_post).",
        ),
        Field(
            "refresh_before",
            Duration(),
            60.0,
            "Fetch a new token this long before the current one expires.",
            "2m",
        ),
    ],
    description="OAuth 2.0 client credentials grant (RFC 6749 section 4.4).",
    check=_check_oauth2,
)

BASIC_SPEC = Spec(
    "basic",
    [
        Field("user", Str(), description="User name.", example="WHARF_COMM_USER"),
        Field("password", SECRET_SPEC, description="Where the password is read from."),
    ],
    description="HTTP basic authentication (RFC 7617).",
)

BEARER_SPEC = Spec(
    "bearer",
    [Field("token", SECRET_SPEC, description="Where the token is read from.")],
    description="A static bearer token (RFC 6750).",
)


def _check_auth(config: Any, ctx: Context, node: Any, path: str) -> None:
    chosen = [n for n in ("oauth2", "basic", "bearer") if getattr(config, n) is not None]
    if len(chosen) != 1:
        ctx.error(
            node,
            path,
            "expected exactly one of oauth2, basic, bearer "
            f"(got {', '.join(chosen) if chosen else 'none'})",
        )


AUTH_SPEC = Spec(
    "auth",
    [
        Field("oauth2", OAUTH2_SPEC, None, "OAuth 2.0 client credentials."),
        Field("basic", BASIC_SPEC, None, "HTTP basic authentication."),
        Field("bearer", BEARER_SPEC, None, "A static bearer token."),
    ],
    description=(
        "How the destination authenticates: exactly one of oauth2, basic or bearer. Secrets "
        "come from environment variables or files and are never logged nor stored."
    ),
    example="""
auth:
  oauth2:
    token_url: https://idcs-example.identity.oraclecloud.com/oauth2/v1/token
    client_id: wharf
    client_secret: {env: ERP_CLIENT_SECRET}
    scope: urn:opc:resource:consumer::all
""",
    check=_check_auth,
)


class Authenticator:
    """The ``Authorization`` header value of the next request; ``renewable`` ones can get a
    fresh credential after a 401."""

    renewable = False

    async def authorization(self) -> bytes | None:
        raise NotImplementedError

    def invalidate(self, used: bytes | None) -> None:
        """The peer refused ``used`` (401): forget it so the next call gets a new one."""


class BearerAuth(Authenticator):
    def __init__(self, token: Any, secrets: Secrets, field: str = "auth.bearer.token") -> None:
        self.token = token
        self.secrets = secrets
        self.field = field

    async def authorization(self) -> bytes:
        return b"Bearer " + self.secrets.read(self.token, self.field).encode("utf-8")


class BasicAuth(Authenticator):
    def __init__(
        self, user: str, password: Any, secrets: Secrets, field: str = "auth.basic.password"
    ) -> None:
        self.user = user
        self.password = password
        self.secrets = secrets
        self.field = field

    async def authorization(self) -> bytes:
        return basic_header(self.user, self.secrets.read(self.password, self.field))


def basic_header(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


class OAuth2ClientCredentials(Authenticator):
    """See the module docstring. ``clock`` is the reactor (or a ``task.Clock``)."""

    renewable = True

    def __init__(self, options: Any, caller: HttpCaller, secrets: Secrets, clock: Any) -> None:
        self.options = options
        self.caller = caller
        self.secrets = secrets
        self.clock = clock
        self._token: bytes | None = None
        self._expires_at: float | None = None  # None: no expiry given (kept until a 401)
        self._waiters: list[Deferred[bytes]] = []
        self.fetches = 0  # token requests made (tests count them)

    def _fresh(self) -> bool:
        if self._token is None:
            return False
        if self._expires_at is None:
            return True
        return self.clock.seconds() < self._expires_at - self.options.refresh_before

    async def authorization(self) -> bytes:
        if self._fresh():
            assert self._token is not None
            return b"Bearer " + self._token
        # One fetch at a time: every send that needs a token waits on the same one.
        waiter: Deferred[bytes] = Deferred()
        self._waiters.append(waiter)
        if len(self._waiters) == 1:
            defer.ensureDeferred(self._fetch()).addBoth(self._fetched)
        return b"Bearer " + await waiter

    def _fetched(self, result: Any) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    def invalidate(self, used: bytes | None) -> None:
        if used is not None and self._token is not None and used == b"Bearer " + self._token:
            self._token = None
            self._expires_at = None

    async def _fetch(self) -> bytes:
        opts = self.options
        secret = self.secrets.read(opts.client_secret, "auth.oauth2.client_secret")
        form = {"grant_type": "client_credentials"}
        if opts.scope:
            form["scope"] = opts.scope
        headers = {
            b"Content-Type": [b"application/x-www-form-urlencoded"],
            b"Accept": [b"application/json"],
        }
        if opts.client_auth == "basic":
            # RFC 6749 section 2.3.1: id and secret form-encoded, then basic.
            headers[b"Authorization"] = [
                basic_header(
                    urllib.parse.quote_plus(opts.client_id), urllib.parse.quote_plus(secret)
                )
            ]
        else:
            form["client_id"] = opts.client_id
            form["client_secret"] = secret
        self.fetches += 1
        where = origin(opts.token_url)
        try:
            answer = await self.caller.call(
                "POST", opts.token_url, headers, urllib.parse.urlencode(form).encode()
            )
        except DeliveryError as e:
            # Nothing of the business request went out: never ambiguous.
            raise DeliveryError(
                f"OAuth2 token request failed: {e.message}", retryable=True, ambiguous=False
            ) from None
        return self._accept(answer, where)

    def _accept(self, answer: HttpAnswer, where: str) -> bytes:
        now = self.clock.seconds()
        doc: Any = None
        try:
            doc = json.loads(answer.body or b"null")
        except ValueError:
            doc = None
        if not answer.ok:
            code = doc.get("error") if isinstance(doc, Mapping) else None
            text = f"OAuth2 token endpoint {where}: HTTP {answer.code}"
            if isinstance(code, str) and code.isascii() and len(code) < 64:
                text += f" ({code})"
            if answer.code == 429 or answer.code >= 500:
                wait = retry_after(answer.header("Retry-After"), now)
                return _raise(DeliveryError(text, retryable=True, retry_after=wait))
            return _raise(DeliveryError(text + ": check the client id and secret", retryable=False))
        if not isinstance(doc, Mapping) or not isinstance(doc.get("access_token"), str):
            return _raise(
                DeliveryError(
                    f"OAuth2 token endpoint {where}: expected JSON with access_token "
                    f"(got HTTP {answer.code} without one)",
                    retryable=True,
                )
            )
        kind = doc.get("token_type", "Bearer")
        if not isinstance(kind, str) or kind.lower() != "bearer":
            return _raise(
                DeliveryError(
                    f"OAuth2 token endpoint {where}: expected token_type Bearer (got {kind!r})",
                    retryable=False,
                )
            )
        expires_in = doc.get("expires_in")
        self._token = doc["access_token"].encode("utf-8")
        if isinstance(expires_in, int | float) and not isinstance(expires_in, bool):
            self._expires_at = now + float(expires_in)
        elif isinstance(expires_in, str) and expires_in.isdigit():
            self._expires_at = now + float(expires_in)
        else:
            self._expires_at = None
        return self._token


def _raise(error: DeliveryError) -> Any:
    raise error


def make_authenticator(
    config: Any,
    *,
    caller: HttpCaller,
    clock: Any,
    environ: Mapping[str, str] | None = None,
    base_dir: pathlib.Path | None = None,
) -> Authenticator | None:
    """The authenticator of a parsed :data:`AUTH_SPEC` config (None: no auth)."""
    if config is None:
        return None
    secrets = Secrets(environ, base_dir)
    if config.oauth2 is not None:
        return OAuth2ClientCredentials(config.oauth2, caller, secrets, clock)
    if config.basic is not None:
        return BasicAuth(config.basic.user, config.basic.password, secrets)
    return BearerAuth(config.bearer.token, secrets)


async def call_with_auth(
    caller: HttpCaller,
    auth: Authenticator | None,
    method: str,
    url: str,
    headers: dict[bytes, list[bytes]],
    body: bytes | None,
) -> HttpAnswer:
    """One request with ``auth``'s credential; after a 401 from a renewable credential, a new
    one is fetched and the request sent once more."""
    used = await auth.authorization() if auth is not None else None
    if used is not None:
        headers = {**headers, b"Authorization": [used]}
    answer = await caller.call(method, url, headers, body)
    if answer.code == 401 and auth is not None and auth.renewable:
        auth.invalidate(used)
        used = await auth.authorization()
        headers = {**headers, b"Authorization": [used]} if used is not None else headers
        answer = await caller.call(method, url, headers, body)
    return answer
