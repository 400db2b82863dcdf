"""The ``x12_partner`` destination delivers to a partner that runs its own SFTP server: HARBOR
in the shipped ``mappings/trading_partners.yaml`` (pointed here at a real OpenSSH ``sshd`` on
loopback, its host key pinned in known_hosts) gets the file under the name the procurement
book gave it, written atomically; a partner without a delivery is a permanent failure."""

from __future__ import annotations

import getpass
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, reactor
from twisted.trial import unittest

from engine.config.project import load_project
from engine.domains.procurement.x12_partner import X12_PARTNER_SPEC, X12PartnerDestination
from engine.errors import DeliveryError
from engine.model import Delivery
from engine.resources import Resources
from tests.conftest import copy_project
from tests.integration.sftp_helpers import OpenSshServer, keygen, missing_openssh

pytestmark = pytest.mark.integration


def delivery(partner: str, filename: str, payload: bytes) -> Delivery:
    return Delivery(
        id=1,
        message_id="m-1",
        channel="po_to_vendor",
        destination="vendors",
        payload=payload,
        content_type="application/edi-x12",
        idempotency_key="idem-1",
        correlation_id="c-1",
        order_key=None,
        attempts=0,
        created_at=time.time(),
        meta={"partner": partner, "filename": filename},
    )


class PartnerServerTests(unittest.TestCase):
    def setUp(self) -> None:
        reason = missing_openssh()
        if reason:
            raise unittest.SkipTest(reason)
        self.base = Path(tempfile.mkdtemp(prefix="wharf-x12-remote-"))
        self.addCleanup(shutil.rmtree, self.base, True)
        self.project = self.base / "project"
        self.project.mkdir()
        copy_project(self.project)
        key, pub = keygen(self.base / "wharf_id")
        self.sshd = OpenSshServer(self.base / "sshd", pub)
        self.sshd.start()
        self.addCleanup(self.sshd.stop)
        known = self.sshd.known_hosts(self.base / "known_hosts")
        self.remote = self.base / "harbor" / "inbound" / "850"
        self.remote.mkdir(parents=True)
        partners = self.project / "mappings" / "trading_partners.yaml"
        text = partners.read_text()
        shipped = (
            "      host: ${HARBOR_SFTP_HOST:-edi.harbormed.example}\n"
            "      port: 22\n"
            "      user: genhosp\n"
            "      private_key: keys/harbor_id_ed25519\n"
            "      known_hosts: keys/harbor_known_hosts\n"
            "      remote_dir: /inbound/850\n"
        )
        assert shipped in text, "the shipped HARBOR delivery block changed"
        partners.write_text(
            text.replace(
                shipped,
                "      host: 127.0.0.1\n"
                f"      port: {self.sshd.port}\n"
                f"      user: {getpass.getuser()}\n"  # sshd runs as the test's user
                f"      private_key: {key}\n"
                f"      known_hosts: {known}\n"
                f"      remote_dir: {self.remote}\n",
            )
        )
        ctx_options: Any = X12_PARTNER_SPEC.defaults()
        self.dest = X12PartnerDestination(
            ctx_options,
            reactor=reactor,
            channel="po_to_vendor",
            name="vendors",
            base_dir=self.project,
            resources=Resources.of_project(load_project(self.project)),
        )
        self.addCleanup(self.dest.close)

    @defer.inlineCallbacks
    def test_an_850_reaches_the_partner_s_own_server(self) -> Any:
        data = b"ISA*00*...~IEA*1*000000007~\n"
        yield defer.ensureDeferred(
            self.dest.send(delivery("harbor", "850_harbor_000000007.x12", data))
        )
        assert (self.remote / "850_harbor_000000007.x12").read_bytes() == data
        assert [p.name for p in self.remote.iterdir()] == ["850_harbor_000000007.x12"]
        # sent again (a retry after a lost answer): the same file, the same bytes
        yield defer.ensureDeferred(
            self.dest.send(delivery("harbor", "850_harbor_000000007.x12", data))
        )
        assert [p.name for p in self.remote.iterdir()] == ["850_harbor_000000007.x12"]

    @defer.inlineCallbacks
    def test_an_unknown_partner_is_a_permanent_failure(self) -> Any:
        try:
            yield defer.ensureDeferred(self.dest.send(delivery("nobody", "x.x12", b"ISA")))
        except DeliveryError as exc:
            assert not exc.retryable and "no trading partner 'nobody'" in exc.message
        else:
            raise AssertionError("expected a DeliveryError")
