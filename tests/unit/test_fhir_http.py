"""The ``fhir_http`` source without sockets: the FHIR interactions (engine.sources.fhir_http.rest)
over a real SqliteStore in a temp folder (the engine's ingest reproduced without its threads),
and the HTTP side (engine.sources.fhir_http) driven byte by byte through StringTransport and
MemoryReactorClock: head checks before the body, body caps, deadlines, the connection cap.

FHIR references: R5 http.html §3.2.0.7 (create: 201, Location, ETag; If-None-Exist §3.2.0.7.1),
§3.2.0.13 (batch/transaction), OperationOutcome.issue.expression (FHIRPath of the problem).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from fhir.resources.capabilitystatement import CapabilityStatement
from fhir.resources.operationoutcome import OperationOutcome
from fhir.resources.R4B.capabilitystatement import CapabilityStatement as CapabilityStatementR4B
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher

from engine import cli
from engine.codecs.fhir import FHIR_SPEC, dump_json, make_fhir, parse_json
from engine.codecs.fhir_xml import parse_xml, to_xml
from engine.config.project import load_project
from engine.errors import CodecError, LintFailed
from engine.model import Inbound
from engine.registry import REGISTRY
from engine.sources import IngestOutcome, SourceServices
from engine.sources.fhir_http import FHIR_HTTP_SPEC, FhirSite
from engine.sources.fhir_http.rest import Answer, Call, FhirEndpoint, bearer_holder, token_sha256
from engine.spec import Context
from engine.store import SqliteStore

TOKEN_A = "tok-A-7b1f0c2e9d5a4e21b0f3"  # SupplyDelivery and Bundle
TOKEN_B = "tok-B-5d2c81f6a0e94c7d8e11"  # ChargeItem only
BASE_URL = "http://fhir.test/fhir/R5"


def delivery(value: str | None = "CU-1", **over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "resourceType": "SupplyDelivery",
        "status": "completed",
        "patient": {"reference": "Patient/p1"},
        "suppliedItem": [
            {
                "quantity": {"value": 2, "unit": "EA"},
                "itemCodeableConcept": {"coding": [{"system": "urn:cdm", "code": "278000123"}]},
            }
        ],
        "occurrenceDateTime": "2026-01-15T09:30:00Z",
        "destination": {"reference": "Location/or-main"},
    }
    if value is not None:
        data["identifier"] = [{"system": "urn:pou:line", "value": value}]
    data.update(over)
    return data


def bundle(kind: str, *resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": kind,
        "entry": [
            {
                "fullUrl": f"urn:uuid:00000000-0000-0000-0000-00000000000{i}",
                "resource": r,
                "request": {"method": "POST", "url": r["resourceType"]},
            }
            for i, r in enumerate(resources)
        ],
    }


def source_options(**kw: Any) -> Any:
    values: dict[str, Any] = {
        "listen": "tcp:0:interface=127.0.0.1",
        "base": "/fhir/R5",
        "auth": {
            "tokens": [
                {
                    "name": "pou",
                    "sha256": token_sha256(TOKEN_A),
                    "resources": ["SupplyDelivery", "Bundle"],
                },
                {"name": "billing", "sha256": token_sha256(TOKEN_B), "resources": ["ChargeItem"]},
            ]
        },
        **kw,
    }
    ctx = Context("t.yaml", env={}, registry=REGISTRY)
    parsed = FHIR_HTTP_SPEC.parse(yaml.compose(yaml.safe_dump(values)), ctx, "source.fhir_http")
    assert not ctx.errors, [str(e) for e in ctx.errors]
    return parsed


def spec_errors(**kw: Any) -> list[str]:
    values = {"listen": "tcp:8090", "base": "/fhir/R5", "auth": "none", **kw}
    ctx = Context("t.yaml", env={}, registry=REGISTRY)
    FHIR_HTTP_SPEC.parse(yaml.compose(yaml.safe_dump(values)), ctx, "source.fhir_http")
    return [str(e) for e in ctx.errors]


def codec(version: str = "R5", resources: tuple[str, ...] | None = None) -> Any:
    options = FHIR_SPEC.defaults()
    kw = {**options.__dict__, "version": version}
    if resources is not None:
        kw["resources"] = resources
    return make_fhir(options.__class__(**kw))


class Harness:
    """A FhirEndpoint over a real store: ``ingest`` does what Engine.ingest does (the codec's
    Parsed, dedup key and window, one ingest_batch commit) without the executor thread."""

    def __init__(self, version: str = "R5", window: float = 7 * 86400.0, **source_kw: Any) -> None:
        self.window = window  # the channel's dedup.window
        self.dir = Path(tempfile.mkdtemp(prefix="wharf-fhir-unit-"))
        self.store = SqliteStore(self.dir / "wharf.db").open()
        self.codec = codec(version)
        self.options = source_options(**source_kw)
        self.refuse: str | None = None
        self.ingests = 0
        self.services = SourceServices(
            codec=lambda: self.codec,
            load=lambda mid: defer.succeed(
                (self.store.get_message(mid), self.store.get_content(mid, "raw"))
            ),
            run=lambda fn, *args: defer.maybeDeferred(fn, *args),
        )
        self.endpoint = FhirEndpoint(
            self.options, channel="fhir", ingest=self.ingest, services=self.services
        )

    def close(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def ingest(
        self, raw: bytes, peer: str, parsed: Any = None, min_dedup_window: float = 0.0
    ) -> defer.Deferred:
        self.ingests += 1
        if self.refuse:
            return defer.succeed(IngestOutcome("refused", reason=self.refuse))
        parsed = parsed if parsed is not None else self.codec.decode(raw)
        inbound = Inbound(
            channel="fhir",
            source="fhir_http",
            raw=raw,
            content_type=parsed.content_type,
            received_at=time.time(),
            peer=peer,
            control_id=parsed.control_id,
            dedup_key=parsed.dedup_key,
            dedup_window=max(self.window, min_dedup_window),
        )
        (result,) = self.store.ingest_batch([inbound], time.time())
        return defer.succeed(IngestOutcome(result.outcome, result.message_id))

    def call(
        self,
        method: str,
        path: str,
        body: Any = b"",
        *,
        token: str | None = TOKEN_A,
        ctype: str = "application/fhir+json",
        **headers: str,
    ) -> Answer:
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        hdrs = {k.replace("_", "-").lower(): v for k, v in headers.items()}
        if token is not None:
            hdrs["authorization"] = f"Bearer {token}"
        if body:
            hdrs["content-type"] = ctype
        path, _, query = path.partition("?")
        call = Call(
            method=method,
            segments=tuple(s for s in path.split("/") if s),
            headers=hdrs,
            query={k: [v] for k, v in (p.split("=", 1) for p in query.split("&") if p)},
            body=body,
            peer="127.0.0.1:5000",
            base_url=BASE_URL,
        )
        d = defer.ensureDeferred(self.endpoint.handle(call))
        results: list[Any] = []
        d.addBoth(results.append)
        assert results and isinstance(results[0], Answer), results
        return results[0]

    def messages(self, status: str | None = None) -> list[Any]:
        return self.store.search(channel="fhir", status=status, limit=1000)


@pytest.fixture
def h() -> Any:
    harness = Harness()
    yield harness
    harness.close()


@pytest.fixture
def make() -> Any:
    """Harnesses with other source options, closed after the test."""
    made: list[Harness] = []

    def build(**kw: Any) -> Harness:
        made.append(Harness(**kw))
        return made[-1]

    yield build
    for harness in made:
        harness.close()


def expressions(answer: Answer) -> list[str]:
    assert answer.resource is not None and answer.resource["resourceType"] == "OperationOutcome"
    OperationOutcome.model_validate(answer.resource)
    return [e for issue in answer.resource["issue"] for e in issue.get("expression", [])]


def header(answer: Answer, name: str) -> str | None:
    return dict(answer.headers).get(name)


# -- the spec and lint ----------------------------------------------------------------------


def test_the_brief_s_yaml_shape_parses_with_hashed_tokens_and_explicit_none() -> None:
    """The contract's shape parses (sizes and durations converted); `auth: none` is explicit."""
    opts = source_options(max_body="1MiB", header_timeout="10s", request_timeout="30s")
    assert (opts.max_body, opts.header_timeout, opts.request_timeout) == (1048576, 10.0, 30.0)
    assert opts.max_connections == 512
    assert [t.name for t in opts.auth.tokens] == ["pou", "billing"]
    assert spec_errors() == []


def test_spec_refuses_plaintext_tokens_bad_auth_and_inverted_timeouts() -> None:
    """A token that is not 64 hex digits, an auth scalar other than `none`, a head timeout
    longer than the request timeout, a missing or empty auth (it must be explicit) and a base
    that is not a path are errors naming the field."""
    errors = spec_errors(auth={"tokens": [{"name": "x", "sha256": "secret"}]})
    assert any("auth.tokens[0].sha256" in e and "64 hex digits" in e for e in errors), errors
    errors = spec_errors(auth="open")
    assert any("source.fhir_http.auth" in e and "got 'open'" in e for e in errors), errors
    errors = spec_errors(header_timeout="40s", request_timeout="30s")
    assert any("header_timeout must be at most request_timeout" in e for e in errors), errors
    assert _missing("auth") == [
        "t.yaml:1:1: source.fhir_http.auth: required field is missing "
        "(expected `none`, or a mapping with `tokens`)"
    ]
    assert any("got None" in e for e in spec_errors(auth=None))  # `auth:` left empty
    assert any("expected a URL path" in e for e in spec_errors(base="fhir/R5"))


def _missing(field: str) -> list[str]:
    values = {"listen": "tcp:8090", "base": "/fhir/R5", "auth": "none"}
    del values[field]
    ctx = Context("t.yaml", env={}, registry=REGISTRY)
    FHIR_HTTP_SPEC.parse(yaml.compose(yaml.safe_dump(values)), ctx, "source.fhir_http")
    return [str(e) for e in ctx.errors]


def _project(tmp: Path, channels: dict[str, str]) -> Path:
    (tmp / "channels").mkdir(parents=True)
    (tmp / "routes.yaml").write_text("store: var/w.db\n")
    for name, text in channels.items():
        (tmp / "channels" / f"{name}.yaml").write_text(text)
    return tmp


CHANNEL = """\
source:
  fhir_http:
    listen: tcp:18099:interface=127.0.0.1
    base: {base}
    auth: none
    request_timeout: {timeout}
codec:
  {codec}
"""


def test_lint_refuses_a_duplicate_base_on_one_listen_string_and_disagreeing_ports() -> None:
    """Two channels may share a listen string on different bases; the same base twice, or
    different port settings, is a lint error at the channel file's line."""
    tmp = Path(tempfile.mkdtemp(prefix="wharf-fhir-lint-"))
    try:
        ok = {
            "a": CHANNEL.format(base="/fhir/R5", timeout="30s", codec="fhir: {version: R5}"),
            "b": CHANNEL.format(base="/fhir/R4", timeout="30s", codec="fhir: {version: R4B}"),
        }
        assert set(load_project(_project(tmp / "ok", ok)).channels) == {"a", "b"}
        bad = {
            "a": CHANNEL.format(base="/fhir/R5", timeout="30s", codec="fhir: {version: R5}"),
            "b": CHANNEL.format(base="/fhir/R5", timeout="20s", codec="fhir: {version: R5}"),
            "c": CHANNEL.format(base="/fhir/X", timeout="30s", codec="hl7v2: {}"),
        }
        with pytest.raises(LintFailed) as info:
            load_project(_project(tmp / "bad", bad))
        text = str(info.value)
        assert re.search(
            r"channels/b\.yaml:4:11: source\.fhir_http\.base: base /fhir/R5 is "
            r"already served .* by channel 'a'",
            text,
        ), text
        assert "must agree on request_timeout" in text
        assert "channels/c.yaml" in text and "needs `codec: fhir`" in text
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_lint_refuses_a_token_type_the_codec_does_not_serve() -> None:
    """A token allowed a resource type the channel's codec does not take is a lint error."""
    tmp = Path(tempfile.mkdtemp(prefix="wharf-fhir-lint-"))
    try:
        text = CHANNEL.format(
            base="/fhir/R5", timeout="30s", codec="fhir: {resources: [SupplyDelivery]}"
        )
        text = text.replace(
            "auth: none",
            "auth:\n      tokens:\n        - {name: x, sha256: "
            + "a" * 64
            + ", resources: [ChargeItem]}",
        )
        with pytest.raises(LintFailed) as info:
            load_project(_project(tmp, {"a": text}))
        assert "auth.tokens[0].resources: ChargeItem is not among the codec's resources" in str(
            info.value
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- tokens ------------------------------------------------------------------------------------


def test_wharf_token_prints_a_token_whose_sha256_is_accepted(capsys: Any) -> None:
    """`wharf token` prints a high-entropy token and its SHA-256; that hash, configured,
    authenticates that token and no other."""
    assert cli.main(["token", "--name", "pou"]) == 0
    out = capsys.readouterr().out
    token = re.search(r"^token:\s+(\S+)$", out, re.M).group(1)  # type: ignore[union-attr]
    digest = re.search(r"^sha256:\s+([0-9a-f]{64})$", out, re.M).group(1)  # type: ignore[union-attr]
    assert len(token) >= 40 and hashlib.sha256(token.encode()).hexdigest() == digest
    assert f"- {{name: pou, sha256: {digest}}}" in out

    class Tok:
        name, sha256, resources = "pou", digest, ()

    assert bearer_holder(f"Bearer {token}", [Tok]) is Tok
    assert bearer_holder(f"Bearer {token}x", [Tok]) is None
    assert bearer_holder(f"Basic {token}", [Tok]) is None
    assert bearer_holder(None, [Tok]) is None


def test_401_without_or_with_an_unknown_token_and_403_for_a_type_the_token_may_not_use(
    h: Harness,
) -> None:
    """No token or an unknown one: 401 with WWW-Authenticate: Bearer; a known token on a type
    it may not use: 403. Nothing reaches the store."""
    for token in (None, "not-a-token"):
        a = h.call("POST", "SupplyDelivery", delivery(), token=token)
        assert a.status == 401 and header(
            a,
            "WWW-Authenticate",
        ).startswith("Bearer")  # type: ignore[union-attr]
        assert expressions(a) == ["http.Authorization"]
    a = h.call("POST", "SupplyDelivery", delivery(), token=TOKEN_B)
    assert a.status == 403 and expressions(a) == ["http.Authorization"]
    a = h.call("GET", "SupplyDelivery/x", token=TOKEN_B)
    assert a.status == 403
    assert h.ingests == 0 and h.messages() == []


def test_metadata_is_public_and_validates_with_fhir_resources(h: Harness) -> None:
    """GET [base]/metadata needs no token; the CapabilityStatement validates (R5), is kind
    instance, lists exactly the codec's types with create/read and conditional create, and
    names the bearer token service."""
    a = h.call("GET", "metadata", token=None)
    assert a.status == 200
    cs = CapabilityStatement.model_validate(a.resource)
    assert (cs.status, cs.kind, cs.fhirVersion) == ("active", "instance", "5.0.0")
    assert set(cs.format) == {"json", "xml"}
    (rest,) = cs.rest
    assert rest.mode == "server"
    assert [r.type for r in rest.resource] == list(h.codec.options.resources)
    for r in rest.resource:
        assert {"create", "read"} <= {i.code for i in r.interaction}
        assert r.conditionalCreate is True
    assert {i.code for i in rest.interaction} == {"transaction", "batch"}
    assert "Bearer" in rest.security.service[0].text
    assert cs.implementation.url == BASE_URL


def test_metadata_of_an_r4b_base_validates_as_r4b() -> None:
    """An R4B channel's CapabilityStatement says 4.3.0 and validates with the R4B models."""
    harness = Harness(version="R4B", auth="none")
    try:
        a = harness.call("GET", "metadata")
        cs = CapabilityStatementR4B.model_validate(a.resource)
        assert cs.fhirVersion == "4.3.0"
        assert cs.rest[0].security.description.startswith("No authentication")
    finally:
        harness.close()


# -- routes and media types -----------------------------------------------------------------


def test_unknown_types_and_paths_are_404_and_other_methods_405_with_allow(h: Harness) -> None:
    """A type the codec does not take, or an unknown path: 404; DELETE on a resource, GET on a
    type (search is not offered): 405 naming the allowed methods."""
    assert h.call("POST", "Patient", {"resourceType": "Patient"}).status == 404
    assert h.call("GET", "SupplyDelivery/a/b").status == 404
    a = h.call("DELETE", "SupplyDelivery/abc")
    assert a.status == 405 and header(a, "Allow") == "GET"
    a = h.call("GET", "SupplyDelivery")
    assert a.status == 405 and header(a, "Allow") == "POST"


def test_415_for_other_media_types_charsets_and_fhir_versions(h: Harness) -> None:
    """Only application/fhir+json, application/json, application/fhir+xml, application/xml,
    in UTF-8, with this base's fhirVersion (if given) are taken."""
    body = json.dumps(delivery()).encode()
    for ctype in (
        "text/plain",
        "application/fhir+json; charset=latin-1",
        "application/fhir+json; fhirVersion=4.0",
    ):
        a = h.call("POST", "SupplyDelivery", body, ctype=ctype)
        assert a.status == 415, ctype
        assert expressions(a) == ["http.Content-Type"]
    a = h.call("POST", "SupplyDelivery", body, ctype="application/json; fhirVersion=5.0")
    assert a.status == 201
    assert h.ingests == 1


# -- create, read, resend -------------------------------------------------------------------


def test_create_answers_201_after_the_store_with_location_etag_and_last_modified(
    h: Harness,
) -> None:
    """201 with Location [base]/SupplyDelivery/{id}/_history/1, ETag W/"1", Last-Modified;
    the id is the stored message's, and the body is the stored resource with meta."""
    a = h.call("POST", "SupplyDelivery", delivery(id="client-id", meta={"versionId": "7"}))
    assert a.status == 201
    (row,) = h.messages()
    assert header(a, "Location") == f"{BASE_URL}/SupplyDelivery/{row.id}/_history/1"
    assert header(a, "ETag") == 'W/"1"'
    assert header(a, "Last-Modified") == time.strftime(
        "%a, %d %b %Y %H:%M:%S GMT", time.gmtime(row.received_at)
    )
    assert a.resource["id"] == row.id and a.resource["meta"]["versionId"] == "1"
    stored = json.loads(h.store.get_content(row.id, "raw"))
    assert "id" not in stored and "meta" not in stored  # server-managed: not stored
    assert stored["identifier"] == delivery()["identifier"]


def test_read_and_vread_give_back_what_was_stored(h: Harness) -> None:
    """GET [base]/SupplyDelivery/{id} (and /_history/1) returns the stored resource with
    meta.versionId 1, meta.lastUpdated, ETag and Last-Modified; other versions and ids: 404."""
    created = h.call("POST", "SupplyDelivery", delivery())
    rid = created.resource["id"]
    read = h.call("GET", f"SupplyDelivery/{rid}")
    assert read.status == 200 and read.resource == created.resource
    assert header(read, "ETag") == 'W/"1"'
    assert h.call("GET", f"SupplyDelivery/{rid}/_history/1").resource == created.resource
    assert h.call("GET", f"SupplyDelivery/{rid}/_history/2").status == 404
    assert h.call("GET", f"ChargeItem/{rid}", token=TOKEN_B).status == 404  # other type
    assert h.call("GET", "SupplyDelivery/0000").status == 404


def test_a_resend_returns_the_original_with_200_and_is_stored_once(h: Harness) -> None:
    """The same identifier and content again (even with other whitespace, id and meta):
    200 with the original resource (same id); one message in the store."""
    first = h.call("POST", "SupplyDelivery", delivery())
    again = json.dumps(delivery(id="other"), indent=2).encode()
    second = h.call("POST", "SupplyDelivery", again)
    assert (first.status, second.status) == (201, 200)
    assert second.resource == first.resource
    assert header(second, "Location") == header(first, "Location")
    assert len(h.messages()) == 1


def test_the_same_identifier_with_other_content_is_409_and_kept_as_a_conflict(h: Harness) -> None:
    """Same identifier, different content: 409 naming SupplyDelivery.identifier[0]; the store
    keeps a conflict row for a person; resending that conflicting content is 409 again. (A
    status change is not a conflict: the status is part of the key.)"""
    h.call("POST", "SupplyDelivery", delivery())
    changed = delivery(occurrenceDateTime="2026-01-16T09:30:00Z")
    a = h.call("POST", "SupplyDelivery", changed)
    assert a.status == 409 and expressions(a) == ["SupplyDelivery.identifier[0]"]
    assert len(h.messages("conflict")) == 1
    assert h.call("POST", "SupplyDelivery", changed).status == 409
    assert len(h.messages("received")) == 1


def test_422_names_each_failing_element_and_stores_nothing(h: Harness) -> None:
    """A resource failing validation: 422 whose issues name SupplyDelivery.status (binding) and
    the element fhir.resources refused; nothing stored."""
    bad = delivery(status="bogus", quantityX=1)
    a = h.call("POST", "SupplyDelivery", bad)
    assert a.status == 422
    found = expressions(a)
    assert "SupplyDelivery.status" in found
    assert any(e.startswith("SupplyDelivery.quantityX") for e in found), found
    assert h.messages() == []


def test_400_for_bodies_that_are_not_fhir_or_not_the_url_s_type(h: Harness) -> None:
    """Broken JSON, JSON without resourceType, duplicate keys, a ChargeItem posted to
    /SupplyDelivery: 400, nothing stored."""
    for body in (b'{"resourceType": "SupplyDelivery",', b"[1]", b'{"a": 1, "a": 2}'):
        assert h.call("POST", "SupplyDelivery", body).status == 400, body
    a = h.call("POST", "SupplyDelivery", {"resourceType": "ChargeItem", "status": "billable"})
    assert a.status == 400 and expressions(a) == ["ChargeItem"]
    assert h.messages() == []


def test_if_none_exist_resend_gives_200_and_the_original(h: Harness) -> None:
    """Conditional create: the identifier named in If-None-Exist is the dedup key; the resend
    gets 200 and the original; a condition naming an identifier the resource does not carry,
    or another search parameter, is 400."""
    cond = "identifier=urn:pou:line|CU-9"
    first = h.call("POST", "SupplyDelivery", delivery("CU-9"), if_none_exist=cond)
    second = h.call("POST", "SupplyDelivery", delivery("CU-9"), if_none_exist=cond)
    assert (first.status, second.status) == (201, 200)
    assert second.resource["id"] == first.resource["id"]
    (row,) = h.messages()
    assert row.dedup_key == "urn:pou:line|CU-9"
    a = h.call("POST", "SupplyDelivery", delivery("CU-10"), if_none_exist=cond)
    assert a.status == 400 and expressions(a) == ["SupplyDelivery.identifier"]
    a = h.call("POST", "SupplyDelivery", delivery("CU-10"), if_none_exist="status=completed")
    assert a.status == 400 and expressions(a) == ["http.If-None-Exist"]
    changed = delivery("CU-9", status="abandoned")
    a = h.call("POST", "SupplyDelivery", changed, if_none_exist=cond)
    assert a.status == 409 and expressions(a) == ["SupplyDelivery.identifier[0]"]


def test_idempotency_key_resend_gives_200_and_other_content_409(h: Harness) -> None:
    """With Idempotency-Key the key is the dedup key (a resource without identifier too):
    the resend is 200 with the original, other content with that key 409."""
    body = delivery(None)
    first = h.call("POST", "SupplyDelivery", body, idempotency_key='"k-1"')
    second = h.call("POST", "SupplyDelivery", body, idempotency_key="k-1")
    assert (first.status, second.status) == (201, 200)
    assert second.resource == first.resource
    a = h.call("POST", "SupplyDelivery", delivery(None, status="abandoned"), idempotency_key="k-1")
    assert a.status == 409 and expressions(a) == ["http.Idempotency-Key"]
    (row,) = h.messages("received")
    assert row.dedup_key == "idempotency-key:k-1"
    bad = h.call("POST", "SupplyDelivery", body, idempotency_key="has space")
    assert bad.status == 400 and expressions(bad) == ["http.Idempotency-Key"]


def test_conditions_hold_on_a_channel_without_message_dedup(make: Any) -> None:
    """A channel with `dedup: {window: 0}` (status updates re-use the identifier): plain
    POSTs of one identifier are each stored (201, no conflict), yet If-None-Exist and
    Idempotency-Key resends are still recognised (200 and the original)."""
    h = make(window=0.0)
    assert h.call("POST", "SupplyDelivery", delivery("W-1", status="in-progress")).status == 201
    assert h.call("POST", "SupplyDelivery", delivery("W-1")).status == 201
    cond = "identifier=urn:pou:line|W-2"
    first = h.call("POST", "SupplyDelivery", delivery("W-2"), if_none_exist=cond)
    again = h.call("POST", "SupplyDelivery", delivery("W-2"), if_none_exist=cond)
    assert (first.status, again.status) == (201, 200) and again.resource == first.resource
    first = h.call("POST", "SupplyDelivery", delivery("W-3"), idempotency_key="w3")
    again = h.call("POST", "SupplyDelivery", delivery("W-3"), idempotency_key="w3")
    assert (first.status, again.status) == (201, 200) and again.resource == first.resource
    assert len(h.messages()) == 4 and h.messages("conflict") == []


def test_prefer_return_minimal_and_operation_outcome(h: Harness) -> None:
    """Prefer: return=minimal gives no body (headers still); return=OperationOutcome an
    informational OperationOutcome."""
    a = h.call("POST", "SupplyDelivery", delivery("P-1"), prefer="return=minimal")
    assert a.status == 201 and a.resource is None and header(a, "Location")
    a = h.call("POST", "SupplyDelivery", delivery("P-2"), prefer="return=OperationOutcome")
    assert a.status == 201 and a.resource["resourceType"] == "OperationOutcome"
    assert a.resource["issue"][0]["severity"] == "information"


def test_503_with_retry_after_when_the_engine_refuses(h: Harness) -> None:
    """The engine refusing (over capacity, store unavailable): 503 with Retry-After."""
    h.refuse = "over capacity"
    a = h.call("POST", "SupplyDelivery", delivery())
    assert a.status == 503 and header(a, "Retry-After") == "5"
    assert "over capacity" in a.resource["issue"][0]["diagnostics"]


# -- XML ----------------------------------------------------------------------------------------


XML_DELIVERY = b"""<?xml version="1.0" encoding="UTF-8"?>
<SupplyDelivery xmlns="http://hl7.org/fhir">
  <identifier><system value="urn:pou:line"/><value value="X-1"/></identifier>
  <status value="completed"/>
  <patient><reference value="Patient/p1"/></patient>
  <suppliedItem>
    <quantity><value value="2"/><unit value="EA"/></quantity>
    <itemCodeableConcept><coding><system value="urn:cdm"/><code value="278000123"/></coding>
    </itemCodeableConcept>
  </suppliedItem>
  <occurrenceDateTime value="2026-01-15T09:30:00Z"/>
  <destination><reference value="Location/or-main"/></destination>
</SupplyDelivery>"""


def test_xml_create_is_stored_as_json_and_read_back_as_xml(h: Harness) -> None:
    """An XML body is converted and stored as JSON (the peer notes the format); the same
    content sent as JSON is the same message; read back as XML it parses to the stored
    resource."""
    a = h.call("POST", "SupplyDelivery", XML_DELIVERY, ctype="application/fhir+xml")
    assert a.status == 201
    (row,) = h.messages()
    stored = json.loads(h.store.get_content(row.id, "raw"))
    assert stored == delivery("X-1")
    assert row.peer.endswith(" pou xml")
    again = h.call("POST", "SupplyDelivery", delivery("X-1"))
    assert again.status == 200 and again.resource["id"] == row.id
    read = h.call("GET", f"SupplyDelivery/{row.id}")
    back = parse_xml(to_xml(read.resource))
    assert back["id"] == row.id and back["identifier"] == stored["identifier"]


def test_xml_with_a_doctype_or_entities_is_400_and_never_expanded(h: Harness) -> None:
    """A DOCTYPE (external entity, billion laughs) is refused before parsing: 400."""
    xxe = (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        b'<SupplyDelivery xmlns="http://hl7.org/fhir"><status value="&e;"/></SupplyDelivery>'
    )
    a = h.call("POST", "SupplyDelivery", xxe, ctype="application/fhir+xml")
    assert a.status == 400 and "DOCTYPE" in a.resource["issue"][0]["diagnostics"]
    assert "root:" not in json.dumps(a.resource)
    latin = (
        b'<?xml version="1.0" encoding="ISO-8859-1"?><SupplyDelivery xmlns="http://hl7.org/fhir"/>'
    )
    with pytest.raises(CodecError, match="UTF-8"):
        parse_xml(latin, "R5")
    assert h.messages() == []


def test_xml_problems_are_named_by_fhirpath(h: Harness) -> None:
    """An unknown XML element and a malformed decimal are 422 issues at their FHIRPath."""
    xml = XML_DELIVERY.replace(b"<status ", b'<bogus value="1"/><status ').replace(
        b'<value value="2"/>', b'<value value="two"/>'
    )
    assert xml.count(b"bogus") == 1 and xml.count(b'"two"') == 1
    a = h.call("POST", "SupplyDelivery", xml, ctype="application/fhir+xml")
    assert a.status == 422
    assert set(expressions(a)) == {
        "SupplyDelivery.bogus",
        "SupplyDelivery.suppliedItem[0].quantity.value",
    }


def test_json_decimals_keep_their_written_precision() -> None:
    """2.50 stays 2.50 through parse and dump (FHIR decimals carry their precision)."""
    assert dump_json(parse_json(b'{"resourceType": "X", "v": 2.50}')) == (
        b'{"resourceType":"X","v":2.50}'
    )


# -- transaction and batch ------------------------------------------------------------------


def test_a_transaction_with_one_bad_entry_stores_nothing_and_names_the_entry(h: Harness) -> None:
    """All or nothing: a bad entry gives 422 naming Bundle.entry[1].resource.status and no
    message is stored."""
    tx = bundle("transaction", delivery("T-1"), delivery("T-2", status="bogus"))
    a = h.call("POST", "", tx)
    assert a.status == 422 and expressions(a) == ["Bundle.entry[1].resource.status"]
    assert h.messages() == []
    tx = bundle("transaction", delivery("T-1"))
    tx["entry"][0]["request"]["method"] = "PUT"
    a = h.call("POST", "", tx)
    assert a.status == 400 and expressions(a) == ["Bundle.entry[0].request.method"]
    assert h.messages() == []


def test_a_good_transaction_is_one_message_with_an_id_per_entry(h: Harness) -> None:
    """A transaction is stored as ONE message; the transaction-response has 201 and a
    location per entry, each readable; the resend answers the same locations with 200 OK."""
    tx = bundle("transaction", delivery("T-1"), delivery("T-2"))
    a = h.call("POST", "", tx)
    assert a.status == 200 and a.resource["type"] == "transaction-response"
    (row,) = h.messages()
    locations = [e["response"]["location"] for e in a.resource["entry"]]
    assert locations == [f"SupplyDelivery/{row.id}.{i}/_history/1" for i in range(2)]
    assert {e["response"]["status"] for e in a.resource["entry"]} == {"201 Created"}
    read = h.call("GET", f"SupplyDelivery/{row.id}.1")
    assert read.status == 200 and read.resource["identifier"][0]["value"] == "T-2"
    assert h.call("GET", f"SupplyDelivery/{row.id}.2").status == 404
    again = h.call("POST", "", tx)
    assert [e["response"]["location"] for e in again.resource["entry"]] == locations
    assert {e["response"]["status"] for e in again.resource["entry"]} == {"200 OK"}
    assert len(h.messages()) == 1


def test_a_transaction_carries_its_device_and_procedure_which_read_back_by_entry_id(
    h: Harness,
) -> None:
    """A transaction's entries may be of types the channel does not take on their own (the
    implant's Device, the Procedure): validated, stored with the SupplyDelivery as one
    message, each readable at its entry id; a bad Device date is 422 at its entry."""
    device = {
        "resourceType": "Device",
        "udiCarrier": [
            {
                "deviceIdentifier": "00844588003288",
                "issuer": "http://hl7.org/fhir/NamingSystem/gs1-di",
            }
        ],
        "lotNumber": "L-77",
        "expirationDate": "2027-01-31",
    }
    procedure = {
        "resourceType": "Procedure",
        "status": "completed",
        "subject": {"reference": "Patient/p1"},
    }
    tx = bundle("transaction", device, procedure, delivery("TX-IMPLANT"))
    a = h.call("POST", "", tx)
    assert a.status == 200, a.resource
    (row,) = h.messages()
    read = h.call("GET", f"Device/{row.id}.0")
    assert read.status == 200 and read.resource["lotNumber"] == "L-77"
    assert h.call("GET", f"Procedure/{row.id}.1").resource["status"] == "completed"
    assert h.call("GET", f"Device/{row.id}.1").status == 404  # entry 1 is the Procedure
    assert h.call("GET", f"Device/{row.id}").status == 404  # only entries, by entry id
    bad = bundle("transaction", {**device, "expirationDate": "soon"}, delivery("TX-2"))
    a = h.call("POST", "", bad)
    assert a.status == 422 and expressions(a) == ["Bundle.entry[0].resource.expirationDate"]
    assert len(h.messages()) == 1


def test_a_transaction_entry_the_token_may_not_use_is_403() -> None:
    """A token may post Bundles but not ChargeItems: a transaction holding one is 403."""
    harness = Harness()
    try:
        charge = {
            "resourceType": "ChargeItem",
            "status": "billable",
            "code": {"text": "x"},
            "subject": {"reference": "Patient/p1"},
        }
        a = harness.call("POST", "", bundle("transaction", delivery("T-3"), charge))
        assert a.status == 403 and expressions(a) == ["Bundle.entry[1].resource"]
        assert harness.messages() == []
    finally:
        harness.close()


def test_a_batch_stores_the_good_entries_and_answers_each(h: Harness) -> None:
    """Batch: each good entry is its own message (201 with its location); the bad one gets
    422 with an OperationOutcome naming Bundle.entry[1].resource.status and is not stored."""
    b = bundle("batch", delivery("B-1"), delivery("B-2", status="bogus"), delivery("B-3"))
    a = h.call("POST", "", b)
    assert a.status == 200 and a.resource["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in a.resource["entry"]]
    assert statuses == ["201 Created", "422 Unprocessable Entity", "201 Created"]
    outcome = a.resource["entry"][1]["response"]["outcome"]
    assert outcome["issue"][0]["expression"] == ["Bundle.entry[1].resource.status"]
    rows = h.messages()
    assert sorted(
        json.loads(h.store.get_content(r.id, "raw"))["identifier"][0]["value"] for r in rows
    ) == ["B-1", "B-3"]
    again = h.call("POST", "", b)
    assert [e["response"]["status"] for e in again.resource["entry"]] == [
        "200 OK",
        "422 Unprocessable Entity",
        "200 OK",
    ]
    assert len(h.messages()) == 2


def test_other_bundle_types_and_if_none_exist_on_the_base_are_400(h: Harness) -> None:
    """POST [base] takes batch and transaction Bundles only."""
    a = h.call("POST", "", {"resourceType": "Bundle", "type": "collection"})
    assert a.status == 400 and expressions(a) == ["Bundle.type"]
    a = h.call("POST", "", bundle("batch", delivery()), if_none_exist="identifier=a|b")
    assert a.status == 400 and expressions(a) == ["http.If-None-Exist"]


# -- HTTP: head checks, caps, deadlines (StringTransport, MemoryReactorClock) ----------------


class Wire:
    """A FhirSite on a MemoryReactorClock with the harness's endpoint mounted; connections
    are StringTransports fed byte strings."""

    def __init__(self, harness: Harness, **settings: Any) -> None:
        self.clock = MemoryReactorClock()
        self.site = FhirSite(source_options(**settings), self.clock)
        assert self.site.mount("/fhir/R5", harness.endpoint)
        self.n = 0

    def connect(self) -> tuple[Any, StringTransport]:
        self.n += 1
        addr = IPv4Address("TCP", "127.0.0.1", 40000 + self.n)
        proto = self.site.buildProtocol(addr)
        transport = StringTransport(peerAddress=addr)
        proto.makeConnection(transport)
        return proto, transport


def request(
    path: str,
    body: bytes = b"",
    *,
    token: str | None = TOKEN_A,
    length: int | None = None,
    extra: str = "",
) -> bytes:
    head = f"POST /fhir/R5/{path} HTTP/1.1\r\nHost: fhir.test\r\n"
    head += "Content-Type: application/fhir+json\r\n"
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    head += f"Content-Length: {len(body) if length is None else length}\r\n{extra}\r\n"
    return head.encode() + body


def status_of(data: bytes) -> int:
    return int(data.split(b" ", 2)[1])


def test_a_whole_request_through_the_site_gets_201_with_the_stored_resource(h: Harness) -> None:
    """Bytes in, 201 out: the absolute Location uses the Host header; the body is the JSON of
    the stored resource."""
    wire = Wire(h)
    proto, t = wire.connect()
    proto.dataReceived(request("SupplyDelivery", json.dumps(delivery()).encode()))
    out = t.value()
    assert status_of(out) == 201, out[:300]
    assert b"Location: http://fhir.test/fhir/R5/SupplyDelivery/" in out
    body = json.loads(out.split(b"\r\n\r\n", 1)[1])
    assert body["identifier"][0]["value"] == "CU-1"


def test_oversize_content_length_is_413_before_any_body_byte_and_no_100_continue(
    make: Any,
) -> None:
    """Content-Length over max_body: 413 written at once (the body was never sent), no
    100 Continue, the connection closes; later body bytes are dropped, not buffered."""
    h = make(max_body="1KiB")
    wire = Wire(h)
    proto, t = wire.connect()
    proto.dataReceived(
        request("SupplyDelivery", length=10_000_000, extra="Expect: 100-continue\r\n")
    )
    out = t.value()
    assert status_of(out) == 413 and b"100 Continue" not in out
    assert b"http.Content-Length" in out
    proto.dataReceived(b"x" * 1024)
    assert t.disconnecting  # drained up to max_body: closed
    assert h.ingests == 0


def test_an_unauthenticated_post_is_answered_401_before_its_body(h: Harness) -> None:
    """The token is checked on the head: 401 goes out before any body byte arrives."""
    wire = Wire(h)
    proto, t = wire.connect()
    proto.dataReceived(request("SupplyDelivery", token=None, length=500))
    assert status_of(t.value()) == 401 and b"WWW-Authenticate: Bearer" in t.value()


def test_a_chunked_body_is_cut_at_max_body(make: Any) -> None:
    """Transfer-Encoding: chunked has no length up front: bytes are counted and the request
    is answered 413 as soon as they pass max_body; the buffer never holds more."""
    h = make(max_body="1KiB")
    wire = Wire(h)
    proto, t = wire.connect()
    head = request("SupplyDelivery", length=0).replace(
        b"Content-Length: 0\r\n", b"Transfer-Encoding: chunked\r\n"
    )
    proto.dataReceived(head)
    chunk = b"400\r\n" + b"x" * 1024 + b"\r\n"
    proto.dataReceived(chunk)
    assert t.value() == b""  # exactly max_body so far
    req = proto.requests[-1]
    proto.dataReceived(b"1\r\nx\r\n")
    assert status_of(t.value()) == 413
    assert req.content.tell() <= 1024
    assert h.ingests == 0


def test_a_head_trickled_one_byte_a_second_is_cut_at_header_timeout(h: Harness) -> None:
    """The idle timeout never fires for a client sending a byte a second; the head deadline
    (from the request's first byte) does: 408 and close at header_timeout."""
    wire = Wire(h, header_timeout="5s", request_timeout="10s")
    proto, t = wire.connect()
    data = request("SupplyDelivery", b"{}")
    for i, byte in enumerate(data[:20]):
        proto.dataReceived(bytes([byte]))
        if i < 4:
            assert t.value() == b""
        wire.clock.advance(1.0)
        if t.value():
            break
    assert status_of(t.value()) == 408 and t.disconnecting
    assert wire.clock.seconds() == pytest.approx(5.0)
    assert wire.site.stats["header_timeouts"] == 1


def test_a_body_trickled_slowly_is_cut_at_request_timeout(h: Harness) -> None:
    """Head in time, body one byte a second: cut when the whole request passes
    request_timeout from its first byte."""
    wire = Wire(h, header_timeout="2s", request_timeout="6s")
    proto, t = wire.connect()
    body = json.dumps(delivery()).encode()
    proto.dataReceived(request("SupplyDelivery", length=len(body)))
    for byte in body:
        proto.dataReceived(bytes([byte]))
        wire.clock.advance(1.0)
        if t.value():
            break
    assert status_of(t.value()) == 408 and t.disconnecting
    assert wire.clock.seconds() == pytest.approx(6.0)
    assert wire.site.stats["request_timeouts"] == 1 and h.ingests == 0


def test_a_quick_request_cancels_its_deadline(h: Harness) -> None:
    """A request that arrives whole leaves no deadline behind (the reactor has no call that
    would cut the keep-alive connection at request_timeout)."""
    wire = Wire(h, header_timeout="2s", request_timeout="6s")
    proto, t = wire.connect()
    proto.dataReceived(request("SupplyDelivery", json.dumps(delivery()).encode()))
    assert status_of(t.value()) == 201
    pending = [c.getTime() for c in wire.clock.getDelayedCalls() if c.active()]
    assert pending == [pytest.approx(2.0)]  # only the keep-alive idle timer is left
    wire.clock.advance(1.5)
    assert not t.disconnecting
    wire.clock.advance(1.0)
    assert t.disconnecting  # idle for header_timeout: twisted's idle timeout closes it
    assert wire.site.stats["request_timeouts"] == wire.site.stats["header_timeouts"] == 0


def test_connections_over_max_connections_get_503_and_are_closed(h: Harness) -> None:
    """max_connections open at most: one more gets 503 with Retry-After and is closed; once
    one closes, a new connection is taken again."""
    wire = Wire(h, max_connections=2)
    (p1, t1), (_p2, t2) = wire.connect(), wire.connect()
    p3, t3 = wire.connect()
    assert status_of(t3.value()) == 503 and b"Retry-After: 5" in t3.value() and t3.disconnecting
    assert not t1.disconnecting and not t2.disconnecting
    p3.connectionLost(None)
    p1.connectionLost(None)
    _p4, t4 = wire.connect()
    assert t4.value() == b"" and not t4.disconnecting
    assert wire.site.open == 2


def test_two_bases_share_one_site_and_route_by_path() -> None:
    """An R5 and an R4B endpoint on one site: each path reaches its own base; a second mount
    of a base is refused."""
    r5, r4 = Harness(), Harness(version="R4B", base="/fhir/R4", auth="none")
    try:
        wire = Wire(r5)
        assert wire.site.mount("/fhir/R4", r4.endpoint)
        assert not wire.site.mount("/fhir/R4/", r5.endpoint)
        proto, t = wire.connect()
        proto.dataReceived(b"GET /fhir/R4/metadata HTTP/1.1\r\nHost: h\r\n\r\n")
        assert b'"fhirVersion":"4.3.0"' in t.value()
        proto2, t2 = wire.connect()
        proto2.dataReceived(b"GET /fhir/R5/metadata?_format=xml HTTP/1.1\r\nHost: h\r\n\r\n")
        assert b'<fhirVersion value="5.0.0"/>' in t2.value()
        proto3, t3 = wire.connect()
        proto3.dataReceived(b"GET /other/metadata HTTP/1.1\r\nHost: h\r\n\r\n")
        assert status_of(t3.value()) == 404
    finally:
        r5.close()
        r4.close()


def test_the_log_has_method_path_status_and_no_body_or_query(h: Harness) -> None:
    """One log line per request with method, path, status, sizes, duration and peer; the
    identifier in the body, the query string and the token appear nowhere in the log."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        wire = Wire(h)
        proto, _t = wire.connect()
        body = json.dumps(delivery("ZZCANARY-1")).encode()
        proto.dataReceived(request("SupplyDelivery?_format=json&secret=ZZCANARY-Q", body))
        proto2, _t2 = wire.connect()
        proto2.dataReceived(request("SupplyDelivery", body, token="ZZCANARY-TOKEN"))
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [e for e in events if e.get("log_namespace") == "engine.sources.fhir_http"]
    text = json.dumps([{k: str(v) for k, v in e.items()} for e in events])
    assert "ZZCANARY" not in text
    statuses = sorted(int(e["status"]) for e in lines if "status" in e)
    assert statuses == [201, 401]
    first = next(e for e in lines if e.get("status") == 201)
    assert first["path"] == "/fhir/R5/SupplyDelivery" and first["method"] == "POST"
    assert first["size"] == len(body) and first["peer"].startswith("127.0.0.1:")


def test_pipelined_requests_are_answered_in_order(h: Harness) -> None:
    """Three requests in one write (HTTP/1.1 pipelining): three answers, in request order."""
    wire = Wire(h)
    proto, t = wire.connect()
    bodies = [json.dumps(delivery(f"PL-{i}")).encode() for i in range(3)]
    proto.dataReceived(b"".join(request("SupplyDelivery", b) for b in bodies))
    out = t.value()
    assert [int(m) for m in re.findall(rb"HTTP/1.1 (\d{3}) ", out)] == [201, 201, 201]
    values = re.findall(rb'"value":"(PL-\d)"', out)
    assert values == [b"PL-0", b"PL-1", b"PL-2"]


def test_sources_with_one_listen_string_share_one_port_until_the_last_stops(make: Any) -> None:
    """Two fhir_http sources with the same listen string make ONE listening port with both
    bases; stopping one unmounts its base only; stopping the last stops listening."""
    from engine.sources.fhir_http import _PORTS, FhirHttpSource

    reactor = MemoryReactorClock()
    r5, r4 = make(), make(version="R4B", base="/fhir/R4", auth="none")
    sources = [
        FhirHttpSource(
            h.options,
            reactor=reactor,
            channel=name,
            base_dir=h.dir,
            ingest=h.ingest,
            services=h.services,
        )
        for name, h in (("r5", r5), ("r4", r4))
    ]
    for src in sources:
        src.start()
    assert len(reactor.tcpServers) == 1
    site = reactor.tcpServers[0][1]
    assert site.find(b"/fhir/R4/metadata")[0] is sources[1].endpoint
    assert site.find(b"/fhir/R5/SupplyDelivery")[0] is sources[0].endpoint
    shared = sources[0].shared
    key = (id(reactor), r5.options.listen)
    assert shared is sources[1].shared and _PORTS[key] is shared and shared.port is not None
    d = defer.ensureDeferred(sources[1].stop())
    assert d.called and site.find(b"/fhir/R4/metadata") is None
    assert _PORTS[key] is shared and shared.port is not None  # still listening for r5
    d = defer.ensureDeferred(sources[0].stop())
    assert d.called and shared.port is None and key not in _PORTS
