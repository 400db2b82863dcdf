"""The ``fhir_http`` source in a real ``wharf run`` over real sockets on 127.0.0.1.

A temporary project has two channels on ONE port: ``fhir_r5`` (base /fhir/R5, bearer tokens,
codec R5) and ``fhir_r4`` (base /fhir/R4, ``auth: none``, codec R4B), each delivering to a file
destination. Clients are http.client (requests as a POU system sends them) and raw sockets
(trickling and oversize senders). The engine runs once for the module; every test uses its
own identifiers.

FHIR R5 http.html: create §3.2.0.7 (201, Location [base]/type/id/_history/vid, ETag),
conditional create §3.2.0.7.1 (If-None-Exist), batch/transaction §3.2.0.13.
"""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.capabilitystatement import CapabilityStatement
from fhir.resources.operationoutcome import OperationOutcome
from fhir.resources.R4B.capabilitystatement import CapabilityStatement as CapabilityStatementR4B

from engine.sources.fhir_http.rest import token_sha256
from tests.integration.helpers import Processes, free_port, open_store, port_open, wait_until

pytestmark = pytest.mark.integration

TOKEN_A = "integration-A-" + uuid.uuid4().hex  # SupplyDelivery, Bundle
TOKEN_B = "integration-B-" + uuid.uuid4().hex  # ChargeItem only
MAX_BODY = 64 * 1024

R5 = """\
source:
  fhir_http:
    listen: tcp:${{FHIR_PORT}}:interface=127.0.0.1
    base: /fhir/R5
    auth:
      tokens:
        - {{name: pou-cabinet, sha256: {a}, resources: [SupplyDelivery, Bundle]}}
        - {{name: billing, sha256: {b}, resources: [ChargeItem]}}
    max_body: 64KiB
    header_timeout: 1s
    request_timeout: 2s
codec:
  fhir: {{version: R5, resources: [SupplyDelivery, SupplyRequest, ChargeItem, Bundle]}}
destinations:
  - name: out
    file: {{dir: var/out/r5, fsync: false}}
"""
R4 = """\
source:
  fhir_http:
    listen: tcp:${FHIR_PORT}:interface=127.0.0.1
    base: /fhir/R4
    auth: none
    max_body: 64KiB
    header_timeout: 1s
    request_timeout: 2s
codec:
  fhir: {version: R4B, resources: [SupplyDelivery, Bundle]}
dedup: {window: 0}  # as channels/fhir_supply*.yaml: status updates re-use the identifier
destinations:
  - name: out
    file: {dir: var/out/r4, fsync: false}
"""


class Engine:
    def __init__(self, root: Path, port: int, proc: Any) -> None:
        self.root = root
        self.port = port
        self.proc = proc
        self.db = root / "var" / "wharf.db"

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = TOKEN_A,
        ctype: str = "application/fhir+json",
        headers: dict[str, str] | None = None,
        timeout: float = 30,
    ) -> tuple[int, dict[str, str], bytes]:
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        if body is not None:
            hdrs["Content-Type"] = ctype
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def post(self, path: str, body: Any, **kw: Any) -> tuple[int, dict[str, str], Any]:
        status, headers, raw = self.request("POST", path, body, **kw)
        return status, headers, _json(raw, headers)

    def get(self, path: str, **kw: Any) -> tuple[int, dict[str, str], Any]:
        status, headers, raw = self.request("GET", path, **kw)
        return status, headers, _json(raw, headers)

    def messages(self, channel: str) -> list[Any]:
        with open_store(self.db) as store:
            return store.search(channel=channel, limit=100000)

    def out_files(self, channel_dir: str, needle: str) -> list[Path]:
        folder = self.root / "var" / "out" / channel_dir
        if not folder.is_dir():
            return []
        return [p for p in folder.iterdir() if p.is_file() and needle in p.read_text()]


def _json(raw: bytes, headers: dict[str, str]) -> Any:
    if raw and "json" in headers.get("content-type", ""):
        return json.loads(raw)
    return raw


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    root = Path(tempfile.mkdtemp(prefix="wharf-fhir-it-"))
    try:
        (root / "channels").mkdir()
        (root / "routes.yaml").write_text("store: var/wharf.db\nreload_interval: 0s\n")
        (root / "channels" / "fhir_r5.yaml").write_text(
            R5.format(a=token_sha256(TOKEN_A), b=token_sha256(TOKEN_B))
        )
        (root / "channels" / "fhir_r4.yaml").write_text(R4)
        port = free_port()
        env = {**__import__("os").environ, "FHIR_PORT": str(port), "PYTHONUNBUFFERED": "1"}
        with Processes(root) as procs:
            proc = procs.wharf(root, env)
            wait_until(lambda: port_open(port), 20, "fhir_http listening", procs=[proc])
            yield Engine(root, port, proc)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def delivery(value: str | None, **over: Any) -> dict[str, Any]:
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
            {"resource": r, "request": {"method": "POST", "url": r["resourceType"]}}
            for r in resources
        ],
    }


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def expressions(outcome: dict[str, Any]) -> list[str]:
    OperationOutcome.model_validate(outcome)
    return [e for issue in outcome["issue"] for e in issue.get("expression", [])]


def stored_values(engine: Engine, channel: str) -> list[str]:
    """The first identifier value of every resource stored on ``channel`` (bundles: entries)."""
    out = []
    with open_store(engine.db) as store:
        for row in store.search(channel=channel, limit=100000):
            data = json.loads(store.get_content(row.id, "raw") or b"{}")
            items = [e["resource"] for e in data.get("entry", [])] if "entry" in data else [data]
            out += [i["identifier"][0]["value"] for i in items if i.get("identifier")]
    return out


# -- create, read, resend -------------------------------------------------------------------


def test_201_then_read_back_then_200_for_the_resend_and_one_delivery(engine: Engine) -> None:
    """201 with Location/ETag/Last-Modified; GET of the Location returns the stored resource;
    the resend is 200 with the original; downstream gets exactly one file."""
    value = uid("CU")
    status, headers, created = engine.post("/fhir/R5/SupplyDelivery", delivery(value))
    assert status == 201, created
    location = headers["location"]
    assert location == (
        f"http://127.0.0.1:{engine.port}/fhir/R5/SupplyDelivery/{created['id']}/_history/1"
    )
    assert headers["etag"] == 'W/"1"' and headers["last-modified"].endswith("GMT")
    path = location.split(str(engine.port), 1)[1]
    status, headers, read = engine.get(path)
    assert status == 200 and read == created and headers["etag"] == 'W/"1"'
    status, _, again = engine.post("/fhir/R5/SupplyDelivery", delivery(value))
    assert status == 200 and again == created
    assert stored_values(engine, "fhir_r5").count(value) == 1
    wait_until(lambda: engine.out_files("r5", value), 20, "the delivery file")
    time.sleep(1.0)  # a second delivery would have had time to arrive
    assert len(engine.out_files("r5", value)) == 1


def test_if_none_exist_and_idempotency_key_resends_get_200_and_the_original(
    engine: Engine,
) -> None:
    """Conditional create and Idempotency-Key: the resend is 200 with the original resource,
    stored and delivered once; other content under the same key is 409."""
    value = uid("CN")
    cond = {"If-None-Exist": f"identifier=urn:pou:line|{value}"}
    s1, _, first = engine.post("/fhir/R5/SupplyDelivery", delivery(value), headers=cond)
    s2, _, second = engine.post("/fhir/R5/SupplyDelivery", delivery(value), headers=cond)
    assert (s1, s2) == (201, 200) and second == first
    key = {"Idempotency-Key": uid("key")}
    body = delivery(None, patient={"reference": "Patient/p1", "display": value})
    s1, _, first = engine.post("/fhir/R5/SupplyDelivery", body, headers=key)
    s2, _, second = engine.post("/fhir/R5/SupplyDelivery", body, headers=key)
    assert (s1, s2) == (201, 200) and second["id"] == first["id"]
    other = delivery(None, patient={"reference": "Patient/p2", "display": value})
    s3, _, outcome = engine.post("/fhir/R5/SupplyDelivery", other, headers=key)
    assert s3 == 409 and expressions(outcome) == ["http.Idempotency-Key"]
    wait_until(lambda: len(engine.out_files("r5", value)) == 2, 20, "two delivery files")
    time.sleep(1.0)
    assert len(engine.out_files("r5", value)) == 2  # one per resource, none for the resends


# -- every error status, from a real request ------------------------------------------------


def test_each_error_status_with_an_operation_outcome_naming_the_element(engine: Engine) -> None:
    """400, 401, 403, 404, 409, 413, 415 and 422 from real requests; each body is an
    OperationOutcome naming what failed."""
    sd = "/fhir/R5/SupplyDelivery"
    status, _, o = engine.post(sd, b'{"resourceType": "SupplyDelivery", ')
    assert status == 400 and o["resourceType"] == "OperationOutcome"
    status, _, o = engine.post(sd, {"resourceType": "ChargeItem", "status": "billable"})
    assert status == 400 and expressions(o) == ["ChargeItem"]
    status, headers, o = engine.post(sd, delivery(uid("A")), token=None)
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert expressions(o) == ["http.Authorization"]
    status, _, o = engine.post(sd, delivery(uid("A")), token="wrong")
    assert status == 401
    status, _, o = engine.post(sd, delivery(uid("A")), token=TOKEN_B)
    assert status == 403 and expressions(o) == ["http.Authorization"]
    status, _, o = engine.post("/fhir/R5/Patient", {"resourceType": "Patient"})
    assert status == 404 and "Patient" in o["issue"][0]["diagnostics"]
    status, _, o = engine.get("/fhir/R5/SupplyDelivery/" + str(uuid.uuid4()))
    assert status == 404
    value = uid("CF")
    assert engine.post(sd, delivery(value))[0] == 201
    status, _, o = engine.post(sd, delivery(value, occurrenceDateTime="2026-01-16T09:30:00Z"))
    assert status == 409 and expressions(o) == ["SupplyDelivery.identifier[0]"]
    conflicts = [m for m in engine.messages("fhir_r5") if m.status == "conflict"]
    assert any(m.dedup_key == f"urn:pou:line|{value}|completed" for m in conflicts)
    status, _, o = engine.post(sd, delivery(uid("X"), note=[{"text": "x" * MAX_BODY}]))
    assert status == 413 and expressions(o) == ["http.Content-Length"]
    status, _, o = engine.post(sd, json.dumps(delivery(uid("T"))), ctype="text/plain")
    assert status == 415 and expressions(o) == ["http.Content-Type"]
    status, _, o = engine.post(
        sd, delivery(uid("V")), ctype="application/fhir+json; fhirVersion=4.0"
    )
    assert status == 415
    status, _, o = engine.post(sd, delivery(uid("I"), status="bogus"))
    assert status == 422 and expressions(o) == ["SupplyDelivery.status"]


@pytest.mark.slow
def test_503_with_retry_after_while_the_store_cannot_commit(engine: Engine) -> None:
    """Another process holds the store's write lock past its busy timeout (10 s): the POST is
    answered 503 with Retry-After and nothing is stored; once the lock is gone, it is 201."""
    value = uid("LK")
    lock = sqlite3.connect(str(engine.db), timeout=5, isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")
        status, headers, o = engine.post("/fhir/R5/SupplyDelivery", delivery(value), timeout=60)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert status == 503 and headers["retry-after"] == "5"
    assert "store unavailable" in o["issue"][0]["diagnostics"]
    assert value not in stored_values(engine, "fhir_r5")
    assert engine.post("/fhir/R5/SupplyDelivery", delivery(value))[0] == 201


# -- metadata, XML, the second base -------------------------------------------------------------


def test_metadata_of_both_bases_validates_with_fhir_resources(engine: Engine) -> None:
    """One port, two bases: the R5 CapabilityStatement validates with the R5 models, the R4
    base's with the R4B models; each lists its channel's types."""
    status, _, r5 = engine.get("/fhir/R5/metadata", token=None)
    assert status == 200
    cs = CapabilityStatement.model_validate(r5)
    assert cs.fhirVersion == "5.0.0" and cs.kind == "instance"
    assert [r.type for r in cs.rest[0].resource] == [
        "SupplyDelivery",
        "SupplyRequest",
        "ChargeItem",
        "Bundle",
    ]
    status, _, r4 = engine.get("/fhir/R4/metadata", token=None)
    cs4 = CapabilityStatementR4B.model_validate(r4)
    assert cs4.fhirVersion == "4.3.0"
    assert [r.type for r in cs4.rest[0].resource] == ["SupplyDelivery", "Bundle"]
    status, headers, raw = engine.request("GET", "/fhir/R5/metadata?_format=xml", token=None)
    assert headers["content-type"].startswith("application/fhir+xml")
    assert CapabilityStatement.model_validate_xml(raw).fhirVersion == "5.0.0"


def test_xml_in_and_out(engine: Engine) -> None:
    """An XML create is stored (as JSON) and answered in XML; read back with Accept XML."""
    value = uid("XM")
    xml = f"""<SupplyDelivery xmlns="http://hl7.org/fhir">
      <identifier><system value="urn:pou:line"/><value value="{value}"/></identifier>
      <status value="completed"/>
      <suppliedItem><quantity><value value="1.50"/></quantity></suppliedItem>
    </SupplyDelivery>""".encode()
    status, headers, raw = engine.request(
        "POST", "/fhir/R5/SupplyDelivery", xml, ctype="application/fhir+xml"
    )
    assert status == 201 and headers["content-type"].startswith("application/fhir+xml")
    assert f'<value value="{value}"/>'.encode() in raw
    path = headers["location"].split(str(engine.port), 1)[1]
    status, headers, raw = engine.request("GET", path, headers={"Accept": "application/fhir+xml"})
    assert status == 200 and raw.startswith(b"<?xml") and value.encode() in raw
    with open_store(engine.db) as store:
        raws = [
            store.get_content(m.id, "raw") or b""
            for m in store.search(channel="fhir_r5", limit=100000)
        ]
    (raw,) = [r for r in raws if value.encode() in r]
    assert b'"quantity":{"value":1.50}' in raw  # stored as JSON, the decimal as written
    evil = b'<!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]><SupplyDelivery/>'
    status, headers, raw = engine.request(
        "POST", "/fhir/R5/SupplyDelivery", evil, ctype="application/fhir+xml"
    )
    assert status == 400 and headers["content-type"].startswith("application/fhir+xml")
    outcome = OperationOutcome.model_validate_xml(raw)  # an XML request is answered in XML
    assert "DOCTYPE" in outcome.issue[0].diagnostics and b"root:" not in raw


def test_the_r4_base_takes_r4b_resources_without_a_token(engine: Engine) -> None:
    """The R4 base (auth: none, R4B codec) takes an R4 SupplyDelivery (suppliedItem 0..1) and
    refuses an R5-shaped one (a list) with 422 naming the element."""
    value = uid("R4")
    status, _, created = engine.post("/fhir/R4/SupplyDelivery", r4_delivery(value), token=None)
    assert status == 201, created
    status, _, o = engine.post("/fhir/R4/SupplyDelivery", delivery(uid("R5")), token=None)
    assert status == 422
    assert all(e.startswith("SupplyDelivery.suppliedItem") for e in expressions(o))
    assert value in stored_values(engine, "fhir_r4")


def r4_delivery(value: str, **over: Any) -> dict[str, Any]:
    data = delivery(value, **over)
    data["suppliedItem"] = data["suppliedItem"][0]
    return data


def test_conditions_hold_on_a_channel_without_message_dedup(engine: Engine) -> None:
    """On the R4 channel (`dedup: {window: 0}`), a status update re-using the identifier is a
    new message (201, no conflict), while If-None-Exist and Idempotency-Key resends are still
    answered 200 with the original and stored once."""
    sd = "/fhir/R4/SupplyDelivery"
    value = uid("W0")
    assert engine.post(sd, r4_delivery(value, status="in-progress"), token=None)[0] == 201
    assert engine.post(sd, r4_delivery(value), token=None)[0] == 201
    cond = {"If-None-Exist": f"identifier=urn:pou:line|{value}-c"}
    s1, _, first = engine.post(sd, r4_delivery(value + "-c"), token=None, headers=cond)
    s2, _, again = engine.post(sd, r4_delivery(value + "-c"), token=None, headers=cond)
    assert (s1, s2) == (201, 200) and again == first
    key = {"Idempotency-Key": uid("k")}
    s1, _, first = engine.post(sd, r4_delivery(value + "-k"), token=None, headers=key)
    s2, _, again = engine.post(sd, r4_delivery(value + "-k"), token=None, headers=key)
    assert (s1, s2) == (201, 200) and again == first
    stored = stored_values(engine, "fhir_r4")
    assert [stored.count(v) for v in (value, value + "-c", value + "-k")] == [2, 1, 1]
    assert not [m for m in engine.messages("fhir_r4") if m.status == "conflict"]


# -- batch and transaction ----------------------------------------------------------------------


def test_a_transaction_with_one_bad_entry_stores_nothing(engine: Engine) -> None:
    """All or nothing: 422 naming Bundle.entry[1].resource.status, no message stored; the
    corrected transaction is one message whose entries are readable."""
    good, bad = uid("TG"), uid("TB")
    before = len(engine.messages("fhir_r5"))
    tx = bundle("transaction", delivery(good), delivery(bad, status="bogus"))
    status, _, o = engine.post("/fhir/R5", tx)
    assert status == 422 and expressions(o) == ["Bundle.entry[1].resource.status"]
    assert len(engine.messages("fhir_r5")) == before
    tx = bundle("transaction", delivery(good), delivery(bad))
    status, _, resp = engine.post("/fhir/R5", tx)
    assert status == 200 and resp["type"] == "transaction-response"
    assert len(engine.messages("fhir_r5")) == before + 1
    location = resp["entry"][1]["response"]["location"]
    status, _, entry = engine.get("/fhir/R5/" + location)
    assert status == 200 and entry["identifier"][0]["value"] == bad


def test_a_batch_with_one_bad_entry_stores_the_rest(engine: Engine) -> None:
    """Batch: good entries are stored (201 each), the bad one is 422 with its OperationOutcome
    and not stored."""
    values = [uid("BA"), uid("BB"), uid("BC")]
    b = bundle(
        "batch", delivery(values[0]), delivery(values[1], status="bogus"), delivery(values[2])
    )
    status, _, resp = engine.post("/fhir/R5", b)
    assert status == 200 and resp["type"] == "batch-response"
    assert [e["response"]["status"] for e in resp["entry"]] == [
        "201 Created",
        "422 Unprocessable Entity",
        "201 Created",
    ]
    outcome = resp["entry"][1]["response"]["outcome"]
    assert expressions(outcome) == ["Bundle.entry[1].resource.status"]
    stored = stored_values(engine, "fhir_r5")
    assert values[0] in stored and values[2] in stored and values[1] not in stored


# -- hostile senders ----------------------------------------------------------------------------


def _trickle(
    port: int, at_once: bytes, trickled: bytes, done: list[str], name: str, every: float = 0.2
) -> tuple[int, bytes]:
    """Send ``at_once``, then ``trickled`` one byte per ``every`` seconds, until the server
    answers or closes: (bytes of ``trickled`` sent, what came back); ``name`` is appended to
    ``done`` when it ends (the order the senders were cut in)."""
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(every)
    got = b""
    sent = 0
    try:
        if at_once:
            s.sendall(at_once)
        for i in range(len(trickled)):
            try:
                s.sendall(trickled[i : i + 1])
                sent += 1
                chunk = s.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            got += chunk
            if b"\r\n\r\n" in got:
                break
    finally:
        s.close()
        done.append(name)
    return sent, got


def test_slow_senders_are_cut_at_their_deadlines_while_others_are_served(engine: Engine) -> None:
    """A head trickled a byte every 0.2 s is cut at header_timeout (1 s), a body trickled the
    same way at request_timeout (2 s), both with 408 while their bytes still flow (twisted's
    idle timeout alone would never fire), the head first; meanwhile a normal client is served
    while the body still trickles. (The deadlines themselves are timed with a Clock in
    tests/unit/test_fhir_http.py; here only the order of events is asserted.)"""
    body = json.dumps(delivery(uid("SL"))).encode()
    head = (
        f"POST /fhir/R5/SupplyDelivery HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN_A}\r\n"
        f"Content-Type: application/fhir+json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    results: dict[str, tuple[int, bytes]] = {}
    done: list[str] = []

    def run(name: str, at_once: bytes, trickled: bytes) -> None:
        results[name] = _trickle(engine.port, at_once, trickled, done, name)

    threads = [
        threading.Thread(target=run, args=("head", b"", head + body)),
        threading.Thread(target=run, args=("body", head, body)),
    ]
    for t in threads:
        t.start()
    time.sleep(0.3)
    status, _, _ = engine.post("/fhir/R5/SupplyDelivery", delivery(uid("OK")))
    done.append("normal")
    for t in threads:
        t.join(30)
    assert status == 201
    assert done.index("normal") < done.index("body") and done.index("head") < done.index("body")
    sent, got = results["head"]
    assert got.startswith(b"HTTP/1.1 408"), got[:80]
    assert b"the request head must arrive within 1.0s" in got
    assert sent < len(head), "the head was cut before it was all sent"
    sent, got = results["body"]
    assert got.startswith(b"HTTP/1.1 408"), got[:80]
    assert b"the whole request must arrive within 2.0s" in got
    assert sent < len(body), "the body was cut before it was all sent"


def test_a_body_over_max_body_is_413_without_reading_it(engine: Engine) -> None:
    """A 50 MiB Content-Length gets 413 at once; the sender is cut off long before 50 MiB
    could go in; a chunked body is cut the same way once past max_body."""
    size = 50 * 1024 * 1024
    head = (
        f"POST /fhir/R5/SupplyDelivery HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN_A}\r\n"
        f"Content-Type: application/fhir+json\r\nContent-Length: {size}\r\n\r\n"
    ).encode()
    s = socket.create_connection(("127.0.0.1", engine.port))
    s.settimeout(10)
    s.sendall(head)
    answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:100]
    sent = _send_until_cut(s, size)
    assert sent < size // 4, sent
    head = head.replace(f"Content-Length: {size}".encode(), b"Transfer-Encoding: chunked")
    s = socket.create_connection(("127.0.0.1", engine.port))
    s.settimeout(10)
    s.sendall(head)
    chunk = b"4000\r\n" + b"x" * 0x4000 + b"\r\n"
    sent = 0
    answer = b""
    try:
        while sent < size and not answer:
            s.sendall(chunk)
            sent += len(chunk)
            s.setblocking(False)
            try:
                answer = s.recv(65536)
            except BlockingIOError:
                pass
            s.setblocking(True)
            s.settimeout(10)
    except OSError:
        pass
    if not answer:
        answer = s.recv(65536)
    s.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:100]
    assert sent < size // 4


def _send_until_cut(s: socket.socket, size: int) -> int:
    sent = 0
    block = b"x" * 65536
    try:
        while sent < size:
            s.sendall(block)
            sent += len(block)
    except OSError:
        pass
    finally:
        s.close()
    return sent


def test_no_body_content_reaches_the_log(engine: Engine) -> None:
    """A canary identifier posted (and rejected) never appears in the engine's output."""
    canary = "ZZCANARY-" + uuid.uuid4().hex[:6]
    engine.post("/fhir/R5/SupplyDelivery", delivery(canary))
    engine.post("/fhir/R5/SupplyDelivery", delivery(canary, status="bogus"))
    engine.post("/fhir/R5/SupplyDelivery?identifier=" + canary, delivery(canary + "x"))
    time.sleep(0.5)
    assert canary not in engine.proc.output()
    assert "fhir_http POST /fhir/R5/SupplyDelivery 201" in engine.proc.output()


# -- TLS ------------------------------------------------------------------------------------------


def test_https_with_mutual_tls_takes_a_client_certificate_and_refuses_none() -> None:
    """An ssl: listen string with client_ca (as the MLLP source): a client presenting a
    certificate signed by that CA gets 201 over HTTPS; one without a certificate is refused
    in the handshake."""
    import ssl

    from tests.integration.test_mllp_tls import make_cert, pem

    root = Path(tempfile.mkdtemp(prefix="wharf-fhir-tls-"))
    try:
        (root / "channels").mkdir()
        (root / "tls").mkdir()
        ca = make_cert("Test CA", None, ca=True)
        server = make_cert("localhost", ca, server=True)
        client = make_cert("pou-cabinet", ca)
        (root / "tls/ca.pem").write_bytes(pem(ca[0]))
        (root / "tls/server.pem").write_bytes(pem(server[0], server[1]))
        (root / "tls/client.pem").write_bytes(pem(client[0], client[1]))
        port = free_port()
        (root / "routes.yaml").write_text("store: var/wharf.db\nreload_interval: 0s\n")
        (root / "channels/fhir_tls.yaml").write_text(
            "source:\n  fhir_http:\n"
            f"    listen: ssl:{port}:interface=127.0.0.1:privateKey=tls/server.pem\n"
            "    client_ca: tls/ca.pem\n    base: /fhir/R5\n    auth: none\n"
            "codec:\n  fhir: {version: R5}\n"
        )
        env = {**__import__("os").environ, "PYTHONUNBUFFERED": "1"}
        with Processes(root) as procs:
            proc = procs.wharf(root, env)
            wait_until(lambda: port_open(port), 20, "fhir_http TLS listening", procs=[proc])
            ctx = ssl.create_default_context(cafile=str(root / "tls/ca.pem"))
            ctx.load_cert_chain(str(root / "tls/client.pem"))
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
            body = json.dumps(delivery(uid("TLS"))).encode()
            conn.request(
                "POST",
                "/fhir/R5/SupplyDelivery",
                body=body,
                headers={"Content-Type": "application/fhir+json"},
            )
            resp = conn.getresponse()
            assert resp.status == 201
            assert resp.getheader("Location", "").startswith(f"https://127.0.0.1:{port}/fhir/R5/")
            conn.close()
            bare = ssl.create_default_context(cafile=str(root / "tls/ca.pem"))
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=bare, timeout=10)
            with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
                conn.request("GET", "/fhir/R5/metadata")
                conn.getresponse().read()
            conn.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
