"""The MLLP destination against real peers: a scripted Twisted MLLP server and hl7apy's
MLLPServer (a peer nobody here wrote). HL7 v2.5.1 §2.9 acknowledgment; MLLP release 2 framing."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hl7apy.mllp import AbstractHandler, MLLPServer
from twisted.internet import defer, protocol, reactor, threads
from twisted.trial import unittest

from engine.codecs.hl7v2 import tokenize
from engine.destinations.mllp import MLLP_DEST_SPEC, MLLPDestination
from engine.errors import DeliveryError
from engine.model import Delivery
from engine.net.mllp import EB, SB
from engine.spec import Context

ROOT = Path(__file__).resolve().parents[2]
SCREW = (ROOT / "samples/hl7/dft_p03_screw.hl7").read_bytes()


def options(**kw: Any) -> Any:
    text = yaml.safe_dump({"host": "127.0.0.1", **kw})
    ctx = Context("t.yaml")
    return MLLP_DEST_SPEC.parse(yaml.compose(text), ctx, "")


def delivery(payload: bytes = SCREW, i: int = 1) -> Delivery:
    return Delivery(
        i, "m", "c", "billing", payload, "x-application/hl7-v2+er7", "k", "corr", None, 0, 0.0, {}
    )


def ack_for(frame: bytes, code: str, control_id: str | None = None) -> bytes:
    msg = tokenize(frame)
    cid = control_id if control_id is not None else msg.control_id
    return f"MSH|^~\\&|B|B|A|A|20260101||ACK^P03^ACK|X|P|2.5.1\rMSA|{code}|{cid}\r".encode()


class Scripted(protocol.Protocol):
    """Answers each frame as ``factory.mode`` says: AA, AE, AR, wrong (MSA-2), silent."""

    def connectionMade(self) -> None:
        self.factory.connections += 1
        self.buf = b""

    def dataReceived(self, data: bytes) -> None:
        self.buf += data
        while EB in self.buf:
            frame, _, self.buf = self.buf.partition(EB)
            frame = frame.lstrip(SB)
            self.factory.frames.append(frame)
            mode = self.factory.mode
            if mode == "silent":
                continue
            if mode == "wrong":
                reply = ack_for(frame, "AA", "SOMETHING-ELSE")
            else:
                reply = ack_for(frame, mode)
            self.transport.write(b"junk" + SB + reply[:20])  # junk before the block, split ACK
            self.transport.write(reply[20:] + EB)


@pytest.mark.integration
class ScriptedPeerTests(unittest.TestCase):
    def setUp(self) -> None:
        self.factory = protocol.Factory.forProtocol(Scripted)
        self.factory.mode, self.factory.frames, self.factory.connections = "AA", [], 0
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.dest = MLLPDestination(
            options(port=self.port.getHost().port, ack_timeout="300ms"),
            reactor=reactor,
            name="billing",
            base_dir=ROOT,
        )
        self.addCleanup(self.dest.close)

    async def failure(self) -> DeliveryError:
        try:
            await self.dest.send(delivery())
        except DeliveryError as exc:
            return exc
        raise AssertionError("send succeeded")

    @defer.inlineCallbacks
    def test_aa_is_sent_and_connections_are_reused(self) -> Any:
        """AA returns the ACK as the response; five sends use one connection."""
        for i in range(5):
            ack = yield defer.ensureDeferred(self.dest.send(delivery(i=i)))
            self.assertEqual(tokenize(ack).get("MSA-1"), "AA")
        self.assertEqual(self.factory.connections, 1)
        self.assertEqual(self.factory.frames[0], SCREW)

    @defer.inlineCallbacks
    def test_ae_is_not_retried_and_ar_is(self) -> Any:
        """AE is an application error (not retried); AR is retried; both keep the ACK."""
        self.factory.mode = "AE"
        exc = yield defer.ensureDeferred(self.failure())
        self.assertEqual((exc.retryable, exc.ambiguous), (False, False))
        self.assertIn(b"MSA|AE", exc.response)
        self.factory.mode = "AR"
        exc = yield defer.ensureDeferred(self.failure())
        self.assertEqual((exc.retryable, exc.ambiguous), (True, False))

    @defer.inlineCallbacks
    def test_no_ack_and_wrong_ack_are_ambiguous(self) -> Any:
        """No ACK within ack_timeout, or an ACK for another MSH-10, is ambiguous: the peer may
        have the message."""
        self.factory.mode = "silent"
        exc = yield defer.ensureDeferred(self.failure())
        self.assertEqual((exc.retryable, exc.ambiguous), (True, True))
        self.factory.mode = "wrong"
        exc = yield defer.ensureDeferred(self.failure())
        self.assertTrue(exc.ambiguous)
        self.assertIn("SOMETHING-ELSE", exc.message)

    @defer.inlineCallbacks
    def test_refused_connection_is_retryable_not_ambiguous(self) -> Any:
        """Nothing listening: nothing was sent, so a retry is safe."""
        yield self.port.stopListening()
        exc = yield defer.ensureDeferred(self.failure())
        self.assertEqual((exc.retryable, exc.ambiguous), (True, False))

    @defer.inlineCallbacks
    def test_payload_that_is_not_hl7_is_permanent(self) -> Any:
        """A payload without MSH cannot be matched to an ACK: a permanent failure."""
        with self.assertRaises(DeliveryError) as info:
            yield defer.ensureDeferred(self.dest.send(delivery(b"{}")))
        self.assertFalse(info.exception.retryable)


class AckHandler(AbstractHandler):
    def reply(self) -> str:
        msg = tokenize(self.incoming_message.encode())
        AckHandler.seen.append(msg.control_id)
        return "\x0b" + ack_for(self.incoming_message.encode(), "AA").decode() + "\x1c\x0d"


AckHandler.seen = []


@pytest.mark.integration
class Hl7apyPeerTests(unittest.TestCase):
    def setUp(self) -> None:
        AckHandler.seen = []
        self.server = MLLPServer("127.0.0.1", 0, {"DFT^P03^DFT_P03": (AckHandler,)}, timeout=5)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.addCleanup(self._shutdown)

    def _shutdown(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @defer.inlineCallbacks
    def test_delivers_to_hl7apy_mllp_server_and_records_its_ack(self) -> Any:
        """hl7apy's MLLPServer (one message per connection) receives our DFT^P03 and its AA
        comes back as the response, for several messages in a row."""
        port = self.server.server_address[1]
        dest = MLLPDestination(
            options(port=port, keep_alive=False), reactor=reactor, name="b", base_dir=ROOT
        )
        self.addCleanup(dest.close)
        for i in range(3):
            payload = SCREW.replace(b"POU-000123", f"POU-HL7APY-{i}".encode())
            ack = yield defer.ensureDeferred(dest.send(delivery(payload, i)))
            parsed = tokenize(ack)
            self.assertEqual((parsed.get("MSA-1"), parsed.get("MSA-2")), ("AA", f"POU-HL7APY-{i}"))
        yield threads.deferToThread(time.sleep, 0)
        self.assertEqual(AckHandler.seen, [f"POU-HL7APY-{i}" for i in range(3)])
