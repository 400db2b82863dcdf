"""The SFTP server configured in routes.yaml runs inside `wharf run`'s engine: OpenSSH's sftp
client uploads to a partner's inbound/, the channel on that folder commits it, the file moves
to archive/, and the upload is in the audit log."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from engine.runtime import Engine

SFTP = shutil.which("sftp")
KEYGEN = shutil.which("ssh-keygen")


@pytest.mark.integration
class SftpEngineTests(unittest.TestCase):
    def setUp(self) -> Any:
        if SFTP is None or KEYGEN is None:
            raise unittest.SkipTest(
                "needs OpenSSH's sftp and ssh-keygen (Debian package openssh-client)"
            )
        base = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, base, True)
        self.root = base / "p"
        (self.root / "channels").mkdir(parents=True)
        self.key = base / "partner_key"
        subprocess.run([KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True)
        pub = (base / "partner_key.pub").read_text().strip()
        (self.root / "routes.yaml").write_text(
            "store: var/wharf.db\nreload_interval: 0\n"
            "sftp_server:\n"
            "  listen: tcp:0:interface=127.0.0.1\n"
            "  host_key: var/sftp/host_key\n"
            "  partners:\n"
            "    - name: acme\n"
            "      root: var/sftp/acme\n"
            f"      authorized_keys: ['{pub}']\n"
        )
        (self.root / "channels/acme_inbound.yaml").write_text(
            "source:\n  dropfolder:\n    path: var/sftp/acme/inbound\n"
            "    processed_dir: var/sftp/acme/archive\n    error_dir: var/sftp/acme/error\n"
            "    min_age: 100ms\n    poll_interval: 50ms\n"
            "destinations:\n  - {name: out, file: {dir: var/out}}\n"
        )
        self.engine = Engine(self.root, reactor)
        d = defer.ensureDeferred(self.engine.start())
        self.addCleanup(lambda: defer.ensureDeferred(self.engine.stop()))
        return d

    def upload(self, local: Path) -> None:
        port = self.engine.sftp.listening.getHost().port
        known = self.root.parent / "known_hosts"
        pub = (self.root / "var/sftp/host_key.pub").read_text().split()
        known.write_text(f"[127.0.0.1]:{port} {pub[0]} {pub[1]}\n")
        batch = self.root.parent / "batch"
        batch.write_text(f"put {local} inbound/{local.name}\n")
        subprocess.run(
            [
                SFTP,
                "-b",
                str(batch),
                "-i",
                str(self.key),
                "-P",
                str(port),
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                f"UserKnownHostsFile={known}",
                "-o",
                "BatchMode=yes",
                "acme@127.0.0.1",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )

    @defer.inlineCallbacks
    def test_upload_is_committed_archived_and_audited(self) -> Any:
        """An 850 uploaded by the partner is stored once, moved to archive/ after the commit,
        delivered, and the login and upload (size, SHA-256) are audited."""
        local = self.root.parent / "po_850_0001.x12"
        local.write_bytes(b"ISA*00*          *00*          *ZZ*ACME*" + b"x" * 100 + b"~")
        yield threads.deferToThread(self.upload, local)
        archive = self.root / "var/sftp/acme/archive"
        for _ in range(100):
            if (archive / local.name).exists() and list((self.root / "var/out").glob("[!.]*")):
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertTrue((archive / local.name).exists())
        self.assertEqual(list((self.root / "var/sftp/acme/inbound").iterdir()), [])
        rows = yield self.engine.executor.submit(self.engine.store.search)
        self.assertEqual(len(rows), 1)
        entries = yield self.engine.executor.submit(self.engine.store.audit_entries, 50)
        actions = {e["action"] for e in entries}
        self.assertTrue({"sftp.login", "sftp.upload"} <= actions, actions)
        upload = next(e for e in entries if e["action"] == "sftp.upload")
        self.assertIn(str(len(local.read_bytes())), str(upload["detail"]))
