"""Wharf's ``sftp_poll`` source and ``sftp`` destination against OpenSSH's sftp server.

A real ``sshd -D -e`` (own sshd_config, ``Subsystem sftp internal-sftp``) runs on a loopback port
for each test class. Shows: files taken only when stable across two listings and older than
min_age; deleted or moved remotely only after the commit (and left when the ingest is refused);
atomic uploads (temporary name, rename); host key checking by known_hosts and by pinned
fingerprint, a mismatch failing before anything is read, written or deleted; backoff and one
logged alert per outage.
"""

from __future__ import annotations

import getpass
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from twisted.internet import defer, reactor, task
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from engine.destinations.sftp import SFTP_DEST_SPEC, SftpDestination
from engine.errors import DeliveryError
from engine.model import Delivery
from engine.net.sftp import HostKeyError, fingerprint
from engine.sources import IngestOutcome
from engine.sources.sftp_poll import SFTP_POLL_SPEC, SftpPollSource
from engine.spec import Context
from tests.integration.sftp_helpers import OpenSshServer, keygen, missing_openssh

pytestmark = pytest.mark.integration


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


def parse(spec: Any, values: dict[str, Any]) -> Any:
    ctx = Context("<test>")
    config = spec.parse(yaml.compose(yaml.safe_dump(values)), ctx, "")
    assert not ctx.errors, [str(e) for e in ctx.errors]
    return config


class FakeIngest:
    def __init__(self, kind: str = "stored") -> None:
        self.kind = kind
        self.calls: list[tuple[str, bytes]] = []
        self.keywords: list[dict[str, Any]] = []

    def __call__(self, raw: bytes, peer: str, **kw: Any) -> defer.Deferred:
        self.calls.append((peer, raw))
        self.keywords.append(kw)
        return task.deferLater(reactor, 0, lambda: IngestOutcome(self.kind, "m", reason="test"))


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


class RemoteBase(unittest.TestCase):
    def setUp(self) -> None:
        reason = missing_openssh()
        if reason:
            raise unittest.SkipTest(reason)
        self.base = Path(tempfile.mkdtemp(prefix="wharf-sftp-remote-"))
        self.addCleanup(shutil.rmtree, self.base, True)
        self.key, pub = keygen(self.base / "wharf_id")
        self.sshd = OpenSshServer(self.base / "sshd", pub)
        self.sshd.start()
        self.addCleanup(self.sshd.stop)
        self.known_hosts = self.sshd.known_hosts(self.base / "known_hosts")
        self.remote = self.base / "remote"
        (self.remote / "out").mkdir(parents=True)
        (self.remote / "done").mkdir()
        (self.remote / "in").mkdir()
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def conn(self, **extra: Any) -> dict[str, Any]:
        values = {
            "host": "127.0.0.1",
            "port": self.sshd.port,
            "user": getpass.getuser(),  # sshd runs as the test's user (root here)
            "private_key": str(self.key),
            "known_hosts": str(self.known_hosts),
            "connect_timeout": "5s",
        }
        values.update(extra)
        return {k: v for k, v in values.items() if v is not None}

    def poller(self, ingest: FakeIngest, **extra: Any) -> SftpPollSource:
        values = self.conn(**{"remote_dir": str(self.remote / "out"), "min_age": "1s", **extra})
        src = SftpPollSource(
            parse(SFTP_POLL_SPEC, values),
            reactor=reactor,
            channel="acme_in",
            base_dir=self.base,
            ingest=ingest,
        )
        self.addCleanup(lambda: defer.ensureDeferred(src.stop()))
        return src

    def destination(self, **extra: Any) -> SftpDestination:
        values = self.conn(remote_dir=str(self.remote / "in"), **extra)
        dest = SftpDestination(
            parse(SFTP_DEST_SPEC, values),
            reactor=reactor,
            channel="acme_out",
            name="partner",
            base_dir=self.base,
        )
        self.addCleanup(dest.close)
        return dest

    def errors(self) -> list[dict]:
        from twisted.logger import LogLevel

        return [e for e in self.events if e.get("log_level") == LogLevel.error]


def delivery(payload: bytes, key: str = "idem-1") -> Delivery:
    return Delivery(
        id=1,
        message_id="m-1",
        channel="acme_out",
        destination="partner",
        payload=payload,
        content_type="application/edi-x12",
        idempotency_key=key,
        correlation_id="c-1",
        order_key=None,
        attempts=0,
        created_at=time.time(),
        meta={},
    )


class PollerTests(RemoteBase):
    def test_complete_files_are_taken_and_deleted_after_the_commit(self) -> defer.Deferred:
        async def run() -> None:
            out = self.remote / "out"
            (out / "old.x12").write_bytes(b"ISA*old~")
            age(out / "old.x12", 60)
            (out / "young.x12").write_bytes(b"ISA*young~")  # mtime now: younger than min_age
            (out / ".hidden.part").write_bytes(b"partial")
            age(out / ".hidden.part", 60)
            ingest = FakeIngest()
            src = self.poller(ingest, min_age="20s")
            self.assertEqual(await src.poll(), 0)  # first listing: nothing is known stable yet
            self.assertEqual(ingest.calls, [])
            (out / "grows.x12").write_bytes(b"ISA*1~")
            age(out / "grows.x12", 60)
            self.assertEqual(await src.poll(), 1)  # old.x12: same size+mtime in two listings
            self.assertEqual(ingest.calls[0][1], b"ISA*old~")
            self.assertIn("/out/old.x12", ingest.calls[0][0])
            self.assertFalse((out / "old.x12").exists())
            with (out / "grows.x12").open("ab") as fh:  # changes between listings
                fh.write(b"ISA*2~")
            age(out / "grows.x12", 30)
            self.assertEqual(await src.poll(), 0)
            age(out / "young.x12", 60)
            self.assertEqual(await src.poll(), 1)  # grows.x12 now stable; young.x12 changed
            self.assertEqual(await src.poll(), 1)
            self.assertEqual(
                sorted(raw for _, raw in ingest.calls),
                [b"ISA*1~ISA*2~", b"ISA*old~", b"ISA*young~"],
            )
            self.assertEqual(os.listdir(out), [".hidden.part"])

        return defer.ensureDeferred(run())

    def test_move_after_commit_and_refused_ingest_leaves_the_file(self) -> defer.Deferred:
        async def run() -> None:
            out = self.remote / "out"
            (out / "a.x12").write_bytes(b"A")
            age(out / "a.x12", 60)
            refusing = FakeIngest("refused")  # store overloaded: nothing committed
            src = self.poller(refusing, after="move", move_to=str(self.remote / "done"))
            await src.poll()
            await src.poll()
            self.assertEqual(len(refusing.calls), 1)
            self.assertTrue((out / "a.x12").exists())  # not committed: left in place
            src.ingest = FakeIngest("stored")
            await src.poll()
            self.assertFalse((out / "a.x12").exists())
            self.assertEqual((self.remote / "done/a.x12").read_bytes(), b"A")

        return defer.ensureDeferred(run())

    def test_host_key_mismatch_fails_before_anything_is_read(self) -> defer.Deferred:
        async def run() -> None:
            out = self.remote / "out"
            (out / "a.x12").write_bytes(b"A")
            age(out / "a.x12", 60)
            _, other = keygen(self.base / "other")
            bad = self.base / "bad_known_hosts"
            bad.write_text(f"[127.0.0.1]:{self.sshd.port} {' '.join(other.split()[:2])}\n")
            ingest = FakeIngest()
            src = self.poller(ingest, known_hosts=str(bad))
            with self.assertRaises(HostKeyError):
                await src.poll()
            wrong_pin = self.poller(
                ingest, known_hosts=None, host_key_fingerprint="SHA256:" + "A" * 43
            )
            with self.assertRaises(HostKeyError):
                await wrong_pin.poll()
            self.assertEqual(ingest.calls, [])
            self.assertTrue((out / "a.x12").exists())
            from twisted.conch.ssh import keys

            pin = fingerprint(keys.Key.fromString(self.sshd.host_public.encode()))
            pinned = self.poller(ingest, known_hosts=None, host_key_fingerprint=pin)
            await pinned.poll()
            self.assertEqual(await pinned.poll(), 1)

        return defer.ensureDeferred(run())

    def test_spec_requires_a_known_host_key(self) -> None:
        ctx = Context("<test>")
        values = self.conn(known_hosts=None, remote_dir="/x")
        SFTP_POLL_SPEC.parse(yaml.compose(yaml.safe_dump(values)), ctx, "")
        self.assertTrue(any("no trust on first use" in str(e) for e in ctx.errors))

    def test_outage_backs_off_and_alerts_once(self) -> defer.Deferred:
        async def run() -> None:
            self.sshd.stop()
            ingest = FakeIngest()
            src = self.poller(
                ingest,
                poll_interval="50ms",
                backoff_initial="50ms",
                backoff_max="200ms",
                alert_after="500ms",
                connect_timeout="1s",
            )
            src.start()
            await sleep(1.5)
            alerts = [e for e in self.errors() if "partner server down" in e["log_format"]]
            self.assertEqual(len(alerts), 1)
            self.assertIn(f"{getpass.getuser()}@127.0.0.1", alerts[0]["what"])
            self.assertGreaterEqual(alerts[0]["duration"], 0.5)
            self.assertLess(src.outage.failures, 15)  # backed off, not 30 tries at 50ms
            self.sshd.start()
            await sleep(0.6)
            self.assertIsNone(src.outage.since)  # recovered
            await src.stop()

        return defer.ensureDeferred(run())


class DestinationTests(RemoteBase):
    def test_upload_is_atomic_and_idempotent(self) -> defer.Deferred:
        async def run() -> None:
            dest = self.destination()
            payload = os.urandom(200_000)
            self.assertIsNone(await dest.send(delivery(payload)))
            self.assertEqual(os.listdir(self.remote / "in"), ["idem-1.x12"])
            self.assertEqual((self.remote / "in/idem-1.x12").read_bytes(), payload)
            await dest.send(delivery(payload))  # a redelivery rewrites the same file
            await dest.send(delivery(b"second", key="idem-2"))
            self.assertEqual(sorted(os.listdir(self.remote / "in")), ["idem-1.x12", "idem-2.x12"])
            self.assertEqual((self.remote / "in/idem-1.x12").read_bytes(), payload)

        return defer.ensureDeferred(run())

    def test_reconnects_after_the_server_restarts(self) -> defer.Deferred:
        async def run() -> None:
            dest = self.destination()
            await dest.send(delivery(b"one", key="k1"))
            first = dest._session
            first.transport.transport.abortConnection()  # the connection drops between sends
            await sleep(0.2)
            self.assertFalse(first.alive)
            await dest.send(delivery(b"two", key="k2"))
            self.assertIsNot(dest._session, first)
            self.assertEqual(sorted(os.listdir(self.remote / "in")), ["k1.x12", "k2.x12"])

        return defer.ensureDeferred(run())

    def test_host_key_mismatch_and_outage_are_retryable_errors(self) -> defer.Deferred:
        async def run() -> None:
            dest = self.destination(host_key_fingerprint="SHA256:" + "B" * 43, known_hosts=None)
            with self.assertRaises(DeliveryError) as info:
                await dest.send(delivery(b"x"))
            self.assertTrue(info.exception.retryable)
            self.assertIn("host key", str(info.exception))
            self.assertEqual(os.listdir(self.remote / "in"), [])
            self.assertTrue(
                any("expected the pinned" in str(e.get("error")) for e in self.errors())
            )
            self.sshd.stop()
            down = self.destination()
            with self.assertRaises(DeliveryError) as info:
                await down.send(delivery(b"x"))
            self.assertTrue(info.exception.retryable)
            self.assertFalse(info.exception.ambiguous)

        return defer.ensureDeferred(run())

    def test_filename_must_not_leave_remote_dir(self) -> defer.Deferred:
        async def run() -> None:
            dest = self.destination(filename="{correlation_id}.x12")
            bad = delivery(b"x")
            object.__setattr__(bad, "correlation_id", "../../etc/cron.d/x")
            with self.assertRaises(DeliveryError) as info:
                await dest.send(bad)
            self.assertFalse(info.exception.retryable)

        return defer.ensureDeferred(run())
