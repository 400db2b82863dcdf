"""A channel's ``limits``: a message over them is refused before it is stored, with an answer
that names the limit; one within them goes through.

Sent over a real MLLP connection to a channel that takes at most 6 lines (segments): a
DFT^P03 with three FT1 (7 segments) gets AR with an ERR naming ``max_lines`` and the channel
file, and nothing is stored; with two FT1 it is AA and stored.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, endpoints, reactor
from twisted.trial import unittest

from engine.codecs.fhir import FhirCodec
from engine.codecs.hl7v2 import tokenize
from engine.model import Parsed
from engine.net.mllp import MLLPClientProtocol
from engine.runtime import Engine

CHANNEL = """\
source:
  mllp: {listen: "tcp:0:interface=127.0.0.1"}
codec: {hl7v2: {}}
limits: {max_lines: 6, max_size: 4KiB}
"""


def dft(lines: int) -> bytes:
    head = (
        f"MSH|^~\\&|POU|GENHOSP|WHARF|GENHOSP|20260115113000||DFT^P03^DFT_P03|LIM-{lines}|P|2.5.1\r"
        "EVN|P03|20260115113000\rPID|1||MRN1\rPV1|1|I|OR^OR02||||||||||||||||ENC-1\r"
    )
    ft1 = "".join(f"FT1|{i}|CU-{i}||20260115|20260115|CG|272100049|||1\r" for i in range(lines))
    return (head + ft1).encode()


@pytest.mark.integration
class ChannelLimits(unittest.TestCase):
    timeout = 30

    def setUp(self) -> Any:
        self.base = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.base, True)
        root = self.base / "project"
        (root / "channels").mkdir(parents=True)
        (root / "channels/capped.yaml").write_text(CHANNEL)
        (root / "routes.yaml").write_text("store: var/wharf.db\nreload_interval: 0\n")
        self.engine = Engine(root, reactor)
        self.addCleanup(lambda: defer.ensureDeferred(self.engine.stop()))
        return defer.ensureDeferred(self.engine.start())

    async def send(self, raw: bytes) -> Any:
        port = self.engine.sources["capped"].port.getHost().port
        client = await endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port), MLLPClientProtocol()
        )
        self.addCleanup(client.transport.loseConnection)
        await client.ready
        return tokenize(await client.send(raw))

    @defer.inlineCallbacks
    def test_over_the_line_limit_is_refused_naming_it_and_not_stored(self) -> Any:
        ack = yield defer.ensureDeferred(self.send(dft(3)))
        self.assertEqual(ack.get("MSA-1"), "AR")
        text = (ack.get("ERR-8") or "") + (ack.get("MSA-3") or "")
        self.assertIn("7 lines", text)
        self.assertIn("max_lines", text)
        self.assertIn("channels/capped.yaml", text)
        rows = yield self.engine.executor.submit(self.engine.store.search, limit=5)
        self.assertEqual(rows, [])
        ok = yield defer.ensureDeferred(self.send(dft(2)))
        self.assertEqual(ok.get("MSA-1"), "AA")
        rows = yield self.engine.executor.submit(self.engine.store.search, limit=5)
        self.assertEqual([r.control_id for r in rows], ["LIM-2"])

    @defer.inlineCallbacks
    def test_over_the_size_limit_is_refused_naming_it(self) -> Any:
        big = dft(2).replace(b"MRN1", b"MRN1" + b"X" * 5000)
        ack = yield defer.ensureDeferred(self.send(big))
        self.assertEqual(ack.get("MSA-1"), "AR")
        text = (ack.get("ERR-8") or "") + (ack.get("MSA-3") or "")
        self.assertIn("max_size", text)


def test_fhir_lines_are_bundle_entries() -> None:
    """For FHIR the lines of a message are its Bundle's entries (one for a lone resource)."""
    bundle = {"resourceType": "Bundle", "entry": [{}, {}, {}]}
    assert FhirCodec.count_lines(Parsed(bundle, "application/fhir+json")) == 3
    assert FhirCodec.count_lines(Parsed({"resourceType": "SupplyDelivery"}, "x")) == 1
