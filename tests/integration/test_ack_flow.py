"""What an answering source gets back from the engine: ACKs after the commit, resends answered
byte for byte, conflicts, refusals, respond_from, and enhanced mode (HL7 v2.5.1 §2.9)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from engine.codecs.hl7v2 import tokenize
from engine.errors import Overloaded
from engine.runtime import Engine

ROOT = Path(__file__).resolve().parents[2]
#: The shipped sample asks for enhanced mode (MSH-15=AL, MSH-16=NE); these tests start from
#: original mode and set MSH-15/16 where they test enhanced mode.
SCREW = (ROOT / "samples/hl7/dft_p03_screw.hl7").read_bytes().replace(b"|||AL|NE\r", b"\r", 1)
UNKNOWN = (ROOT / "samples/hl7/broken/broken_unknown_item.hl7").read_bytes()

CHANNEL = """\
codec: {{hl7v2: {{}}}}
respond_from: {respond_from}
respond_timeout: 5s
application_ack: acks
transformer:
  - transform: hl7_usage_to_issue
destinations:
  - name: out
    file: {{dir: var/out}}
  - name: acks
    file: {{dir: var/acks, filename: "{{idempotency_key}}.hl7"}}
"""


def with_msh(raw: bytes, field: int, value: str) -> bytes:
    """Set MSH-``field`` (MSH-1 is the separator) of a standard-delimiter message."""
    head, _, rest = raw.partition(b"\r")
    parts = head.decode().split("|")
    while len(parts) < field:
        parts.append("")
    parts[field - 1] = value
    return "|".join(parts).encode() + b"\r" + rest


def ack(reply: bytes) -> Any:
    return tokenize(reply)


@pytest.mark.integration
class AckFlowTests(unittest.TestCase):
    respond_from = "after_store"

    def setUp(self) -> Any:
        base = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, base, True)
        self.root = base / "p"
        self.root.mkdir()
        shutil.copytree(ROOT / "mappings", self.root / "mappings")
        (self.root / "channels").mkdir()
        (self.root / "routes.yaml").write_text("store: var/wharf.db\nreload_interval: 0\n")
        (self.root / "channels/c.yaml").write_text(CHANNEL.format(respond_from=self.respond_from))
        self.engine = Engine(self.root, reactor)
        d = defer.ensureDeferred(self.engine.start())
        self.addCleanup(lambda: defer.ensureDeferred(self.engine.stop()))
        return d

    def send(self, raw: bytes) -> defer.Deferred:
        return defer.ensureDeferred(self.engine.ingest("c", raw, "127.0.0.1:1", answers=True))

    async def settle(self) -> list[Any]:
        for _ in range(200):
            rows = await self.engine.executor.submit(self.engine.store.search, limit=50)
            if rows and all(r.status not in ("received", "queued") for r in rows):
                return rows
            await task.deferLater(reactor, 0.02, lambda: None)
        raise AssertionError(f"messages did not settle: {[r.status for r in rows]}")

    @defer.inlineCallbacks
    def test_aa_after_commit_and_the_same_bytes_for_a_resend(self) -> Any:
        """AA echoes MSH-10 in MSA-2; a resend gets the stored ACK byte for byte and is not
        processed again (RELIABILITY P3)."""
        first = yield self.send(SCREW)
        self.assertEqual(first.kind, "stored")
        a = ack(first.response)
        self.assertEqual((a.get("MSA-1"), a.get("MSA-2")), ("AA", "POU-000123"))
        self.assertEqual(
            [a.get(f"MSH-{n}") for n in (3, 4, 5, 6)],
            ["WHARF", "GENHOSP", "POU_CABINET", "GENHOSP"],
        )
        again = yield self.send(SCREW)
        self.assertEqual(again.kind, "duplicate")
        self.assertEqual(again.response, first.response)
        rows = yield defer.ensureDeferred(self.settle())
        self.assertEqual(len(rows), 1)
        self.assertEqual(len(list((self.root / "var/out").iterdir())), 1)

    @defer.inlineCallbacks
    def test_same_control_id_other_content_is_ae_205(self) -> Any:
        """The same MSH-3/4/10 with other bytes is AE with ERR-3 205 and kept as a conflict."""
        yield self.send(SCREW)
        changed = SCREW.replace(b"|2|450.00", b"|3|675.00")
        reply = yield self.send(changed)
        a = ack(reply.response)
        self.assertEqual(reply.kind, "conflict")
        self.assertEqual(a.get("MSA-1"), "AE")
        self.assertEqual(a.get("ERR-3.1"), "205")
        self.assertEqual(a.get("ERR-2"), "MSH^1^10")
        rows = yield self.engine.executor.submit(self.engine.store.search, status="conflict")
        self.assertEqual(len(rows), 1)

    @defer.inlineCallbacks
    def test_unparseable_and_unsupported_are_ar_and_nothing_is_stored(self) -> Any:
        """Not HL7 → AR with ERR 100; an unsupported version → AR with ERR 203 at MSH-12."""
        self.assertNotIn(b"|AL|", SCREW)
        reply = yield self.send(b"hello")
        self.assertEqual(reply.kind, "rejected")
        self.assertEqual(ack(reply.response).get("MSA-1"), "AR")
        self.assertEqual(ack(reply.response).get("ERR-3.1"), "100")
        reply = yield self.send(with_msh(SCREW, 12, "2.9"))
        a = ack(reply.response)
        self.assertEqual(
            (a.get("MSA-1"), a.get("ERR-3.1"), a.get("ERR-2")), ("AR", "203", "MSH^1^12")
        )
        self.assertEqual(a.get("MSA-2"), "POU-000123")
        rows = yield self.engine.executor.submit(self.engine.store.search)
        self.assertEqual(rows, [])

    @defer.inlineCallbacks
    def test_pre_25_err_uses_err_1_and_msa_3(self) -> Any:
        """Before v2.5, ERR has one field (ERR-1: segment^seq^field^code&text&HL70357) and the
        text goes to MSA-3 (HL7 v2.4 §2.16.5)."""
        yield self.send(SCREW)
        old = with_msh(SCREW.replace(b"|2|450.00", b"|9|1.00"), 12, "2.4")
        reply = yield self.send(old)
        a = ack(reply.response)
        self.assertEqual(a.get("MSH-12"), "2.4")
        self.assertEqual(a.get("ERR-1.1"), "MSH")
        self.assertEqual(a.get("ERR-1.4.1"), "205")
        self.assertIn("different content", a.get("MSA-3"))

    @defer.inlineCallbacks
    def test_over_capacity_is_ar_207_and_not_stored(self) -> Any:
        """When the store cannot take more, the answer is AR 207 and nothing is acknowledged."""
        self.patch(self.engine.executor, "ingest", lambda inbound: defer.fail(Overloaded("full")))
        reply = yield self.send(SCREW)
        a = ack(reply.response)
        self.assertEqual((reply.kind, a.get("MSA-1"), a.get("ERR-3.1")), ("refused", "AR", "207"))

    @defer.inlineCallbacks
    def test_enhanced_mode_commit_ack_and_application_ack(self) -> Any:
        """MSH-15=AL, MSH-16=AL: CA on the connection after the commit, and an application ACK
        (AA) through the application_ack destination after processing (HL7 v2.5.1 §2.9.3)."""
        raw = with_msh(with_msh(SCREW, 15, "AL"), 16, "AL")
        reply = yield self.send(raw)
        self.assertEqual(ack(reply.response).get("MSA-1"), "CA")
        yield defer.ensureDeferred(self.settle())
        acks = list((self.root / "var/acks").iterdir())
        self.assertEqual(len(acks), 1)
        app = tokenize(acks[0].read_bytes())
        self.assertEqual((app.get("MSA-1"), app.get("MSA-2")), ("AA", "POU-000123"))

    @defer.inlineCallbacks
    def test_enhanced_mode_error_application_ack_and_never_commit_ack(self) -> Any:
        """MSH-15=NE: no commit ACK is sent; MSH-16=ER: an AE application ACK for a failure."""
        raw = with_msh(with_msh(UNKNOWN, 15, "NE"), 16, "ER")
        reply = yield self.send(raw)
        self.assertEqual(reply.response, b"")
        rows = yield defer.ensureDeferred(self.settle())
        self.assertEqual(rows[0].status, "error")
        (app_file,) = list((self.root / "var/acks").iterdir())
        app = tokenize(app_file.read_bytes())
        self.assertEqual(app.get("MSA-1"), "AE")
        self.assertIn("MappingMiss", app.get("ERR-8"))


class AfterTransformTests(AckFlowTests):
    respond_from = "after_transform"

    @defer.inlineCallbacks
    def test_aa_after_commit_and_the_same_bytes_for_a_resend(self) -> Any:
        """after_transform: AA once transformed; AE with the error for a mapping miss; both are
        stored and a resend gets the same bytes."""
        good = yield self.send(SCREW)
        self.assertEqual(ack(good.response).get("MSA-1"), "AA")
        bad = yield self.send(UNKNOWN)
        a = ack(bad.response)
        self.assertEqual(a.get("MSA-1"), "AE")
        self.assertIn("MappingMiss: no row for '999999999'", a.get("ERR-8"))
        again = yield self.send(UNKNOWN)
        self.assertEqual(again.response, bad.response)


class DestinationsCompletedTests(AckFlowTests):
    respond_from = "destinations_completed"

    @defer.inlineCallbacks
    def test_aa_after_commit_and_the_same_bytes_for_a_resend(self) -> Any:
        """destinations_completed: the AA comes only after the file destination wrote its file."""
        good = yield self.send(SCREW)
        self.assertEqual(ack(good.response).get("MSA-1"), "AA")
        self.assertEqual(len(list((self.root / "var/out").iterdir())), 1)
        again = yield self.send(SCREW)
        self.assertEqual(again.response, good.response)


class ThroughTheSourceCallable:
    """The same tests through the callable a source is handed (``FrontDoor.ingest_for``): a
    message like these takes the fast path (plain callbacks, no coroutine); what it cannot
    take (unparseable bytes, answers that wait for the pipeline or a conflict) goes on as
    before, with the same answers."""

    engine: Engine

    def send(self, raw: bytes) -> defer.Deferred:
        self.engine.door._answers = lambda key: True  # type: ignore[method-assign]
        return self.engine.door.ingest_for("c")(raw, "127.0.0.1:1")


class AckFlowSourceTests(ThroughTheSourceCallable, AckFlowTests):
    @defer.inlineCallbacks
    def test_a_plain_message_is_stored_without_the_coroutine(self) -> Any:
        """A message that decodes and fits is stored and answered without ``receive``."""

        async def unused(*args: Any, **kw: Any) -> Any:
            raise AssertionError("the fast path was not taken")

        self.patch(self.engine.door, "receive", unused)
        first = yield self.send(SCREW)
        self.assertEqual((first.kind, ack(first.response).get("MSA-1")), ("stored", "AA"))
        again = yield self.send(SCREW)
        self.assertEqual((again.kind, again.response), ("duplicate", first.response))


class AfterTransformSourceTests(ThroughTheSourceCallable, AfterTransformTests):
    pass


class DestinationsCompletedSourceTests(ThroughTheSourceCallable, DestinationsCompletedTests):
    pass


@pytest.mark.integration
class StrictOnAckTests(unittest.TestCase):
    def setUp(self) -> Any:
        base = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, base, True)
        self.root = base / "p"
        (self.root / "channels").mkdir(parents=True)
        shutil.copytree(ROOT / "mappings", self.root / "mappings")
        (self.root / "routes.yaml").write_text("store: var/wharf.db\nreload_interval: 0\n")
        (self.root / "channels/c.yaml").write_text(
            "codec: {hl7v2: {validation: strict, strict_on_ack: true}}\n"
        )
        self.engine = Engine(self.root, reactor)
        d = defer.ensureDeferred(self.engine.start())
        self.addCleanup(lambda: defer.ensureDeferred(self.engine.stop()))
        return d

    @defer.inlineCallbacks
    def test_structure_error_is_ae_and_nothing_is_stored(self) -> Any:
        """strict_on_ack: a DFT^P03 without its required EVN gets AE (ERR 100) before any
        commit; a valid one gets AA."""
        no_evn = SCREW.replace(b"EVN|P03|20260115103000\r", b"")
        bad = yield defer.ensureDeferred(self.engine.ingest("c", no_evn, "p", answers=True))
        a = ack(bad.response)
        self.assertEqual((bad.kind, a.get("MSA-1"), a.get("ERR-3.1")), ("rejected", "AE", "100"))
        self.assertIn("Missing required child DFT_P03.EVN", a.get("ERR-8"))
        rows = yield self.engine.executor.submit(self.engine.store.search)
        self.assertEqual(rows, [])
        good = yield defer.ensureDeferred(self.engine.ingest("c", SCREW, "p", answers=True))
        self.assertEqual(ack(good.response).get("MSA-1"), "AA")
