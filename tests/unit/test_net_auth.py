"""engine.net.auth and engine.net.secrets: OAuth2 client credentials (fetch, cache, renew
ahead of expiry, one fetch for many waiters, one renewal after a 401), basic and bearer, and
secrets from environment variables and files, with task.Clock and a scripted HTTP caller."""

from __future__ import annotations

import base64
import json
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml
from twisted.internet import defer, task
from twisted.web.http_headers import Headers

from engine.errors import DeliveryError
from engine.net.auth import AUTH_SPEC, OAuth2ClientCredentials, call_with_auth, make_authenticator
from engine.net.http import HttpAnswer
from engine.net.secrets import SECRET_SPEC, read_secret
from engine.spec import Context

SECRET = "s3cr3t-client-secret"


def parse(spec: Any, text: str) -> tuple[Any, list[str]]:
    ctx = Context("<test>")
    config = spec.parse(yaml.compose(text), ctx, "auth")
    return config, [str(e) for e in ctx.errors]


class Caller:
    """Answers token requests from ``tokens`` (a list of (status, doc)) and API calls with
    ``api`` (a list of statuses); pending token answers when ``hold`` is set."""

    def __init__(self, tokens: list[tuple[int, Any]], api: list[int] | None = None) -> None:
        self.tokens = tokens
        self.api = api or []
        self.requests: list[dict[str, Any]] = []
        self.hold: defer.Deferred[None] | None = None

    async def call(
        self, method: str, url: str, headers: dict[bytes, list[bytes]], body: bytes | None
    ) -> HttpAnswer:
        self.requests.append({"url": url, "headers": headers, "body": body})
        if url.endswith("/token"):
            if self.hold is not None:
                await self.hold
            status, doc = self.tokens.pop(0)
            return HttpAnswer(status, "", Headers(), json.dumps(doc).encode())
        return HttpAnswer(self.api.pop(0), "", Headers(), b"api")


def oauth(caller: Caller, clock: task.Clock, **extra: Any) -> OAuth2ClientCredentials:
    doc = {
        "oauth2": {
            "token_url": "https://login.example/token",
            "client_id": "wharf client",
            "client_secret": {"env": "ERP_SECRET"},
            "scope": "inventory",
            **extra,
        }
    }
    config, errors = parse(AUTH_SPEC, yaml.safe_dump(doc))
    assert errors == []
    auth = make_authenticator(config, caller=caller, clock=clock, environ={"ERP_SECRET": SECRET})
    assert isinstance(auth, OAuth2ClientCredentials)
    return auth


def token(name: str, expires_in: Any = 100) -> tuple[int, dict[str, Any]]:
    return 200, {"access_token": name, "token_type": "Bearer", "expires_in": expires_in}


def run(d: Any) -> Any:
    result = defer.ensureDeferred(d)
    out: list[Any] = []
    result.addBoth(out.append)
    assert out, "did not finish"
    if isinstance(out[0], defer.Failure):
        out[0].raiseException()
    return out[0]


def test_the_token_is_fetched_once_cached_and_renewed_before_it_expires() -> None:
    """A token lasting 100 s is reused until refresh_before (10 s) ahead of its expiry; then a
    new one is fetched. The request is a client-credentials grant with the client's id and
    secret in a basic header, form-encoded first (RFC 6749 section 2.3.1)."""
    clock = task.Clock()
    caller = Caller([token("t1"), token("t2")])
    auth = oauth(caller, clock, refresh_before="10s")
    assert run(auth.authorization()) == b"Bearer t1"
    clock.advance(89)
    assert run(auth.authorization()) == b"Bearer t1"
    assert auth.fetches == 1
    clock.advance(2)
    assert run(auth.authorization()) == b"Bearer t2"
    assert auth.fetches == 2
    first = caller.requests[0]
    form = urllib.parse.parse_qs(first["body"].decode())
    assert form == {"grant_type": ["client_credentials"], "scope": ["inventory"]}
    basic = first["headers"][b"Authorization"][0].split(b" ")[1]
    assert base64.b64decode(basic) == f"wharf+client:{SECRET}".encode()


def test_sends_waiting_for_a_token_share_one_fetch() -> None:
    """Five sends asking while the token request is out make one token request."""
    clock = task.Clock()
    caller = Caller([token("t1")])
    caller.hold = defer.Deferred()
    auth = oauth(caller, clock)
    waiting = [defer.ensureDeferred(auth.authorization()) for _ in range(5)]
    assert not any(d.called for d in waiting)
    caller.hold.callback(None)
    assert [d.result for d in waiting] == [b"Bearer t1"] * 5
    assert auth.fetches == 1


def test_a_401_renews_the_token_once_and_sends_again() -> None:
    """The API refuses a token it revoked (401): a new token is fetched and the request sent
    once more; a second 401 is the answer (no loop)."""
    clock = task.Clock()
    caller = Caller([token("t1"), token("t2"), token("t3")], api=[401, 200, 401, 401])
    auth = oauth(caller, clock)
    answer = run(call_with_auth(caller, auth, "POST", "https://erp/api", {}, b"{}"))
    assert answer.code == 200
    api = [r for r in caller.requests if not r["url"].endswith("/token")]
    assert [r["headers"][b"Authorization"] for r in api] == [[b"Bearer t1"], [b"Bearer t2"]]
    answer = run(call_with_auth(caller, auth, "POST", "https://erp/api", {}, b"{}"))
    assert answer.code == 401
    assert auth.fetches == 3


def test_a_refused_client_is_permanent_and_says_nothing_secret() -> None:
    """invalid_client from the token endpoint is a permanent failure naming the OAuth error;
    no secret in the text. A 503 from it is retryable and never ambiguous."""
    clock = task.Clock()
    auth = oauth(Caller([(401, {"error": "invalid_client"})]), clock)
    with pytest.raises(DeliveryError) as refused:
        run(auth.authorization())
    assert not refused.value.retryable
    assert "invalid_client" in refused.value.message
    assert SECRET not in refused.value.message
    auth = oauth(Caller([(503, {})]), clock)
    with pytest.raises(DeliveryError) as down:
        run(auth.authorization())
    assert down.value.retryable and not down.value.ambiguous


def test_a_token_without_expiry_is_kept_until_refused() -> None:
    """No expires_in: the token is used until a 401."""
    clock = task.Clock()
    caller = Caller([token("t1", expires_in=None), token("t2")], api=[200, 401, 200])
    auth = oauth(caller, clock)
    clock.advance(86400 * 30)
    run(call_with_auth(caller, auth, "GET", "https://erp/api", {}, None))
    assert auth.fetches == 1
    run(call_with_auth(caller, auth, "GET", "https://erp/api", {}, None))
    assert auth.fetches == 2


def test_secrets_come_from_environment_variables_or_files(tmp_path: Path) -> None:
    """env and file both work (a file's trailing newline dropped, read at each use so a
    rotated file counts); unset, missing or empty is a permanent error naming where it
    looked and never the value; giving both or neither is a config error."""
    config, errors = parse(SECRET_SPEC, "{env: A}")
    assert errors == []
    assert read_secret(config, field="x", environ={"A": "va"}) == "va"
    with pytest.raises(DeliveryError, match="x: environment variable 'A' is not set"):
        read_secret(config, field="x", environ={})
    (tmp_path / "s.txt").write_text("from-file\n")
    config, errors = parse(SECRET_SPEC, "{file: s.txt}")
    assert read_secret(config, field="x", environ={}, base_dir=tmp_path) == "from-file"
    (tmp_path / "s.txt").write_text("rotated")
    assert read_secret(config, field="x", environ={}, base_dir=tmp_path) == "rotated"
    (tmp_path / "s.txt").write_text("")
    with pytest.raises(DeliveryError, match=r"file 's\.txt' is empty"):
        read_secret(config, field="x", environ={}, base_dir=tmp_path)
    _, errors = parse(SECRET_SPEC, "{env: A, file: b}")
    assert (
        "expected exactly one of env (a variable name) or file (a path) (got both)" in (errors[0])
    )


def test_auth_config_takes_exactly_one_scheme() -> None:
    _, errors = parse(
        AUTH_SPEC, "{basic: {user: u, password: {env: P}}, bearer: {token: {env: T}}}"
    )
    assert "expected exactly one of oauth2, basic, bearer (got basic, bearer)" in errors[0]
    _, errors = parse(
        AUTH_SPEC,
        "{oauth2: {token_url: 'ftp://x', client_id: c, client_secret: {env: S}}}",
    )
    assert "token_url: must start with http:// or https://" in errors[0]
