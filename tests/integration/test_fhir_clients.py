"""FHIR clients nobody here wrote against the shipped FHIR channels in a real ``wharf run``
(issue 5): SMART on FHIR's ``fhirclient`` (R4 models) on the R4 base, ``curl`` on the R5 base.

One ``wharf run`` on a copy of the shipped project (routes, channels, mappings, samples) and one
``wharf sandbox`` (ERP and billing) serve the whole module; both FHIR channels
(``channels/fhir_supply.yaml`` at /fhir/R5, ``channels/fhir_supply_r4.yaml`` at /fhir/R4) share
FHIR_PORT and take the demo bearer token whose SHA-256 they ship. The shipped samples are
created and read back (by the id in the Location header, or the entry's response.location of a
transaction or batch) and compared with what was sent, modulo ``id`` and ``meta``; the
CapabilityStatements validate with fhir.resources (R5, and R4B for the R4 base); resends with
``If-None-Exist`` and with ``Idempotency-Key`` give one stored message, one stock issue line and
one ChargeItem per delivery in the sandbox.

FHIR R5 http.html: create §3.2.0.7 (201, Location [base]/type/id/_history/vid), conditional
create §3.2.0.7.1 (If-None-Exist: 200 with the existing resource), batch/transaction §3.2.0.13.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import tempfile
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fhir.resources import get_fhir_model_class
from fhir.resources.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.capabilitystatement import CapabilityStatement as CapabilityStatementR4B
from fhirclient import client as fhirclient_client
from fhirclient.models.bundle import Bundle as FcBundle
from fhirclient.models.supplydelivery import SupplyDelivery as FcSupplyDelivery
from fhirclient.models.supplyrequest import SupplyRequest as FcSupplyRequest
from fhirclient.server import FHIRUnauthorizedException
from lxml import etree

from engine.sources.fhir_http.rest import token_sha256
from tests.integration.helpers import (
    Proc,
    Processes,
    free_port,
    port_open,
    wait_until,
    wharf_env,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples" / "fhir"
#: The demo token of the shipped FHIR channels (their default POU_TOKEN_SHA256 is its hash).
TOKEN = "wharf-demo-pou-token"
CURL = shutil.which("curl") or "/usr/bin/curl"
POU_SYSTEM = "urn:genhosp:pou:transaction"  # the identifier system of the shipped samples
R5_RESOURCES = [  # the good R5 samples created one by one (POST [base]/[type])
    "r5_supplydelivery_code.json",
    "r5_supplydelivery_billing_unit.json",
    "r5_supplydelivery_in_progress.json",
    "r5_supplydelivery_entered_in_error.json",
    "r5_supplyrequest.json",
]
R5_BUNDLES = ["r5_bundle_implant.json", "r5_batch.json"]  # POST [base]


# -- the running project --------------------------------------------------------------------


@dataclass(frozen=True)
class Stack:
    """``wharf run`` on the shipped project and the sandbox it delivers to."""

    project: Path
    fhir_port: int
    sandbox_port: int
    db: Path
    wharf: Proc

    def base(self, version: str) -> str:
        return f"http://127.0.0.1:{self.fhir_port}/fhir/{version}"

    def sandbox(self, path: str) -> Any:
        url = f"http://127.0.0.1:{self.sandbox_port}{path}"
        with urllib.request.urlopen(url, timeout=30) as resp:
            return json.loads(resp.read())


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    base = Path(tempfile.mkdtemp(prefix="wharf-fhir-clients-"))
    try:
        project = base / "project"
        project.mkdir()
        shutil.copy(ROOT / "routes.yaml", project / "routes.yaml")
        for folder in ("channels", "mappings", "samples"):
            shutil.copytree(ROOT / folder, project / folder)
        for name in ("fhir_supply.yaml", "fhir_supply_r4.yaml"):
            text = (project / "channels" / name).read_text(encoding="utf-8")
            assert token_sha256(TOKEN) in text, f"channels/{name} no longer takes the demo token"
        sandbox_port, billing_port = free_port(), free_port()
        env = wharf_env(base, sandbox_port)
        env["BILLING_PORT"] = str(billing_port)
        env["BILLING_FHIR_URL"] = f"http://127.0.0.1:{sandbox_port}/fhir"
        env.pop("POU_TOKEN_SHA256", None)  # the shipped default: the demo token's hash
        fhir_port = int(env["FHIR_PORT"])
        with Processes(base) as procs:
            procs.sandbox(
                sandbox_port,
                billing_port,
                base / "sandbox.db",
                project / "mappings" / "onhand.csv",
                env,
            )
            wharf = procs.wharf(project, env)
            wait_until(lambda: port_open(fhir_port), 30, "fhir_http listening", procs=[wharf])
            yield Stack(project, fhir_port, sandbox_port, Path(env["WHARF_DB"]), wharf)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def sample(name: str) -> dict[str, Any]:
    return json.loads((SAMPLES / name).read_text(encoding="utf-8"))


def bare(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource without the server-managed ``id`` and ``meta``."""
    return {k: v for k, v in resource.items() if k not in ("id", "meta")}


def id_of(location: str, rtype: str) -> str:
    """The id in ``.../{rtype}/{id}/_history/1`` (a Location header or response.location)."""
    head, _, version = location.rpartition("/_history/")
    assert version == "1", location
    prefix, _, rid = head.rpartition("/")
    assert prefix.endswith(rtype), (location, rtype)
    return rid


# -- a) fhirclient (SMART on FHIR, R4 models) on the R4 base ----------------------------------


def fhirclient_server(stack: Stack) -> Any:
    """fhirclient's FHIRServer for the R4 base; every request carries the bearer token (the
    package signs headers only for SMART OAuth2, so the token goes on its requests.Session)."""
    smart = fhirclient_client.FHIRClient(
        settings={"app_id": "wharf-integration", "api_base": stack.base("R4")}
    )
    smart.server.session.headers["Authorization"] = f"Bearer {TOKEN}"
    return smart.server


def test_fhirclient_reads_the_r4_capability_statement(stack: Stack) -> None:
    """fhirclient fetches and parses ``metadata`` with its own (strict) R4 models; the same JSON
    validates with fhir.resources R4B; it says what the R4 channel serves."""
    server = fhirclient_server(stack)
    cs = server.capabilityStatement
    assert cs.fhirVersion == "4.3.0" and cs.kind == "instance" and cs.status == "active"
    assert [r.type for r in cs.rest[0].resource] == ["SupplyDelivery", "SupplyRequest", "Bundle"]
    assert all(r.conditionalCreate for r in cs.rest[0].resource)
    assert sorted(i.code for i in cs.rest[0].interaction) == ["batch", "transaction"]
    assert server.ready  # no SMART OAuth2 in the security statement: nothing to authorize
    raw = server.request_json("metadata")
    assert CapabilityStatementR4B.model_validate(raw).fhirVersion == "4.3.0"


def test_fhirclient_without_the_token_is_refused_and_stores_nothing(stack: Stack) -> None:
    """Without the bearer token fhirclient's create raises its FHIRUnauthorizedException (401,
    with WWW-Authenticate Bearer) and nothing is stored; the CapabilityStatement stays public."""
    smart = fhirclient_client.FHIRClient(
        settings={"app_id": "wharf-integration", "api_base": stack.base("R4")}
    )
    value = f"PX-NOAUTH-{uuid.uuid4().hex[:8]}"
    data = sample("r4b_supplydelivery_code.json")
    data.pop("id")
    data["identifier"] = [{"system": POU_SYSTEM, "value": value}]
    with pytest.raises(FHIRUnauthorizedException) as refused:
        FcSupplyDelivery(jsondict=data).create(smart.server)
    assert refused.value.response.status_code == 401
    assert refused.value.response.headers["WWW-Authenticate"].startswith("Bearer")
    assert smart.server.capabilityStatement.fhirVersion == "4.3.0"
    assert stored_with(stack.db, "fhir_supply_r4", value) == []


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("r4b_supplydelivery_code.json", FcSupplyDelivery),
        ("r4b_supplydelivery_billing_unit.json", FcSupplyDelivery),
        ("r4b_supplyrequest.json", FcSupplyRequest),
    ],
)
def test_fhirclient_creates_each_r4_sample_and_reads_it_back(
    stack: Stack, name: str, model: Any
) -> None:
    """The sample as a fhirclient model, POSTed with fhirclient (its own JSON): 201 with a
    Location; read and vread through fhirclient by that id give the resource sent (modulo id and
    meta), and so does the create's answer."""
    server = fhirclient_server(stack)
    resource = model(jsondict=sample(name))
    resource.id = None  # a create carries no id (fhirclient refuses to create one with an id)
    sent = resource.as_json()
    res = server.post_json(resource.relativeBase(), sent)
    assert res.status_code == 201, res.text
    location = res.headers["Location"]
    assert location.startswith(stack.base("R4") + "/" + model.resource_type + "/")
    rid = id_of(location, model.resource_type)
    created = model(jsondict=res.json())
    assert created.id == rid and created.meta.versionId == "1"
    assert bare(created.as_json()) == bare(sent)
    read = model.read(rid, server)
    assert read.id == rid and bare(read.as_json()) == bare(sent)
    vread = model.read_from(location.removeprefix(stack.base("R4") + "/"), server)
    assert bare(vread.as_json()) == bare(sent)


def test_fhirclient_posts_the_r4_transaction_and_reads_every_entry_back(stack: Stack) -> None:
    """The R4 implant transaction (Device, Procedure, SupplyDelivery) as a fhirclient Bundle,
    POSTed to the base: a transaction-response with 201 and a location per entry; each entry
    read back through fhirclient's model of its type is the resource sent (modulo id, meta)."""
    server = fhirclient_server(stack)
    bundle = FcBundle(jsondict=sample("r4b_bundle_implant.json"))
    bundle.id = None
    assert bundle.createPath() is None  # fhirclient posts a transaction to the base itself
    res = server.post_json(bundle.createPath(), bundle.as_json())
    assert res.status_code == 200, res.text
    answer = FcBundle(jsondict=res.json())
    assert answer.type == "transaction-response"
    assert len(answer.entry) == len(bundle.entry) == 3
    for sent, got in zip(bundle.entry, answer.entry, strict=True):
        assert got.response.status == "201 Created"
        cls = type(sent.resource)
        rid = id_of(got.response.location, cls.resource_type)
        read = cls.read(rid, server)
        assert read.id == rid
        assert bare(read.as_json()) == bare(sent.resource.as_json()), cls.resource_type
        vread = cls.read_from(got.response.location, server)
        assert bare(vread.as_json()) == bare(sent.resource.as_json())


# -- b) curl on the R5 base ---------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        assert "json" in self.headers.get("content-type", ""), self.headers
        return json.loads(self.body)


def curl(
    method: str,
    url: str,
    *,
    data: bytes | None = None,
    ctype: str = "application/fhir+json",
    headers: dict[str, str] | None = None,
    token: str | None = TOKEN,
) -> Reply:
    """One request with the curl command line tool: status, headers (lower-case names, of the
    final answer, after any 100 Continue) and body."""
    if not Path(CURL).exists():
        pytest.skip("needs the curl program: apt-get install curl")
    work = Path(tempfile.mkdtemp(prefix="wharf-curl-"))
    try:
        args = [CURL, "-sS", "-X", method, "-D", str(work / "head"), "-o", str(work / "body")]
        args += ["-w", "%{http_code}", "--max-time", "60"]
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        if data is not None:
            (work / "data").write_bytes(data)
            hdrs["Content-Type"] = ctype
            args += ["--data-binary", f"@{work / 'data'}"]
        for name, value in hdrs.items():
            args += ["-H", f"{name}: {value}"]
        done = subprocess.run([*args, url], capture_output=True, text=True, timeout=90, check=False)
        assert done.returncode == 0, f"curl failed ({done.returncode}): {done.stderr}"
        blocks = (work / "head").read_bytes().decode("latin-1").strip().split("\r\n\r\n")
        lines = blocks[-1].split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        assert status == int(done.stdout), (status, done.stdout)
        found: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            found.setdefault(name.strip().lower(), value.strip())
        return Reply(status, found, (work / "body").read_bytes())
    finally:
        shutil.rmtree(work, ignore_errors=True)


def xml_resource(raw: bytes) -> dict[str, Any]:
    """FHIR R5 XML as a dict through fhir.resources (the type from the root element)."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    rtype = etree.QName(etree.fromstring(raw, parser)).localname
    return dict(get_fhir_model_class(rtype).model_validate_xml(raw).model_dump())


def as_model(resource: dict[str, Any]) -> dict[str, Any]:
    """JSON resource as a dict through the same fhir.resources model (for JSON/XML compares)."""
    return dict(
        get_fhir_model_class(resource["resourceType"]).model_validate(resource).model_dump()
    )


def read_both_ways(stack: Stack, location: str, sent: dict[str, Any]) -> None:
    """GET ``location`` with Accept JSON and with _format=xml: both are ``sent`` (modulo id and
    meta; the XML through the R5 models)."""
    url = location if location.startswith("http") else f"{stack.base('R5')}/{location}"
    got = curl("GET", url, headers={"Accept": "application/fhir+json"})
    assert got.status == 200 and got.headers["content-type"].startswith("application/fhir+json")
    assert bare(got.json()) == bare(sent)
    got_xml = curl("GET", url + "?_format=xml")
    assert got_xml.status == 200
    assert got_xml.headers["content-type"].startswith("application/fhir+xml")
    assert bare(xml_resource(got_xml.body)) == bare(as_model(sent))


def test_curl_metadata_of_both_bases_validates_with_fhir_resources(stack: Stack) -> None:
    """GET /metadata with curl (no token: it is public): the R5 statement validates with the
    R5 models (also as XML), the R4 one with the R4B models; each lists its channel's types."""
    r5 = curl("GET", stack.base("R5") + "/metadata", token=None)
    assert r5.status == 200
    cs = CapabilityStatement.model_validate(r5.json())
    assert cs.fhirVersion == "5.0.0" and cs.kind == "instance"
    assert [r.type for r in cs.rest[0].resource] == ["SupplyDelivery", "SupplyRequest", "Bundle"]
    assert cs.implementation.url == stack.base("R5")
    r4 = curl("GET", stack.base("R4") + "/metadata", token=None)
    assert r4.status == 200
    cs4 = CapabilityStatementR4B.model_validate(r4.json())
    assert cs4.fhirVersion == "4.3.0"
    assert [r.type for r in cs4.rest[0].resource] == ["SupplyDelivery", "SupplyRequest", "Bundle"]
    xml = curl("GET", stack.base("R5") + "/metadata?_format=xml", token=None)
    assert xml.headers["content-type"].startswith("application/fhir+xml")
    assert CapabilityStatement.model_validate_xml(xml.body).fhirVersion == "5.0.0"


@pytest.mark.parametrize("name", R5_RESOURCES)
def test_curl_creates_each_r5_sample_and_reads_it_back_as_json_and_xml(
    stack: Stack, name: str
) -> None:
    """POST [base]/[type] with curl: 201, Location, the resource sent as the answer; read back
    with Accept: application/fhir+json and with _format=xml, it is the resource sent."""
    data = sample(name)
    rtype = data["resourceType"]
    got = curl("POST", f"{stack.base('R5')}/{rtype}", data=(SAMPLES / name).read_bytes())
    assert got.status == 201, got.body
    location = got.headers["location"]
    rid = id_of(location, rtype)
    created = got.json()
    assert created["id"] == rid and created["meta"]["versionId"] == "1"
    assert bare(created) == bare(data)
    read_both_ways(stack, location, data)


@pytest.mark.parametrize("name", R5_BUNDLES)
def test_curl_posts_each_r5_bundle_and_reads_every_entry_back(stack: Stack, name: str) -> None:
    """POST [base] with the transaction (implant) and the batch sample: the response Bundle has
    201 and a location per entry; each entry, read back as JSON and as XML, is the one sent."""
    data = sample(name)
    got = curl("POST", stack.base("R5"), data=(SAMPLES / name).read_bytes())
    assert got.status == 200, got.body
    answer = got.json()
    assert answer["type"] == f"{data['type']}-response"
    assert len(answer["entry"]) == len(data["entry"])
    for sent, entry in zip(data["entry"], answer["entry"], strict=True):
        response = entry["response"]
        assert response["status"] == "201 Created", response
        resource = sent["resource"]
        id_of(response["location"], resource["resourceType"])
        read_both_ways(stack, response["location"], resource)


def test_curl_creates_the_r5_xml_sample_and_reads_it_back(stack: Stack) -> None:
    """POST the XML sample (Content-Type application/fhir+xml): 201, answered in XML; read back
    as JSON and with _format=xml it is the sample (through the R5 models, modulo id and meta)."""
    raw = (SAMPLES / "r5_supplydelivery.xml").read_bytes()
    got = curl("POST", stack.base("R5") + "/SupplyDelivery", data=raw, ctype="application/fhir+xml")
    assert got.status == 201, got.body
    assert got.headers["content-type"].startswith("application/fhir+xml")
    sent = xml_resource(raw)
    assert bare(xml_resource(got.body)) == bare(sent)
    location = got.headers["location"]
    rid = id_of(location, "SupplyDelivery")
    as_json = curl("GET", location, headers={"Accept": "application/fhir+json"})
    assert as_json.status == 200 and as_json.json()["id"] == rid
    assert bare(as_model(as_json.json())) == bare(sent)
    as_xml = curl("GET", location + "?_format=xml")
    assert as_xml.status == 200 and b'<id value="' + rid.encode() + b'"/>' in as_xml.body
    assert bare(xml_resource(as_xml.body)) == bare(sent)


# -- c) resends end to end: one issue and one charge per delivery ---------------------------


def foley(value: str) -> bytes:
    """The shipped chargeable Foley delivery (2 EA on 4 West) with its own identifier."""
    data = sample("r5_supplydelivery_code.json")
    data.pop("id")
    data["identifier"] = [{"system": POU_SYSTEM, "value": value}]
    return json.dumps(data).encode()


def settled(db: Path, channel: str) -> bool:
    """No message of ``channel`` waits for the pipeline and none of its deliveries is open."""
    conn = sqlite3.connect(db)
    try:
        waiting = conn.execute(
            "SELECT COUNT(*) FROM messages WHERE channel = ? AND status IN ('received', 'queued')",
            (channel,),
        ).fetchone()[0]
        open_ = conn.execute(
            "SELECT COUNT(*) FROM outbox WHERE channel = ? AND status IN ('pending', 'inflight')",
            (channel,),
        ).fetchone()[0]
    finally:
        conn.close()
    return waiting == 0 and open_ == 0


def stored_with(db: Path, channel: str, value: str) -> list[str]:
    """Statuses of the messages of ``channel`` whose raw content carries ``value``."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute(
            "SELECT m.status FROM messages m JOIN contents c ON c.message_id = m.id "
            "WHERE m.channel = ? AND c.stage = 'raw' AND instr(c.data, ?) > 0",
            (channel, value.encode()),
        ).fetchall()
    finally:
        conn.close()
    return [r[0] for r in rows]


def test_resends_with_if_none_exist_and_idempotency_key_give_one_issue_and_one_charge(
    stack: Stack,
) -> None:
    """The same chargeable SupplyDelivery POSTed twice with If-None-Exist, another twice with
    an Idempotency-Key (curl): the second answers are 200 with the original resource (same id
    and Location), each delivery is stored once, and the sandbox has exactly one stock issue
    line and one ChargeItem per delivery."""
    tag = uuid.uuid4().hex[:10]
    by_condition, by_key = f"PX-IN-{tag}", f"PX-IK-{tag}"
    url = stack.base("R5") + "/SupplyDelivery"
    condition = {"If-None-Exist": f"identifier={POU_SYSTEM}|{by_condition}"}
    idem = {"Idempotency-Key": f"pou-cabinet-{tag}"}
    for value, headers in ((by_condition, condition), (by_key, idem)):
        first = curl("POST", url, data=foley(value), headers=headers)
        second = curl("POST", url, data=foley(value), headers=headers)
        assert (first.status, second.status) == (201, 200), (first.body, second.body)
        assert second.json() == first.json()
        assert second.headers["location"] == first.headers["location"]
    wait_until(lambda: settled(stack.db, "fhir_supply"), 60, "fhir_supply settled")
    for value in (by_condition, by_key):
        assert stored_with(stack.db, "fhir_supply", value) == ["sent"], value
    issues = stack.sandbox("/issues")["issues"]
    charges = stack.sandbox("/charges")["charges"]
    for value in (by_condition, by_key):
        lines = [
            (ln["item"], ln["quantity"], ln["uom"], ln["location"])
            for issue in issues
            for ln in issue["lines"]
            if ln["usage_id"] == value
        ]
        assert lines == [("ITEM-160005", "2", "EA", "LOC-4W-SUPPLY")], (value, lines)
        mine = [
            (c["code"], c["quantity"], c["type"], c["encounter"])
            for c in charges
            if f"{POU_SYSTEM}|{value}|" in c["line_id"]
        ]
        assert mine == [("272100050", "2", "CG", "ENC-112233")], (value, mine)
