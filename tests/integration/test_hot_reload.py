"""Hot reload of a running Engine: changed mappings and channels are swapped in, a change that
fails lint is refused while the old channel keeps running, and messages in flight survive.

The shipped project is copied into a tempfile.mkdtemp() folder (the store, inbox and outputs
live there too); the ERP destination points at a twisted.web receiver started by the test on
127.0.0.1. trial's TestCase runs the real reactor and fails a test that leaves timers,
listeners or connections behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, reactor, task
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.trial import unittest
from twisted.web import resource, server

from engine.runtime import Engine
from tests.integration.helpers import free_port, restore_env

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCREW = (REPO / "samples/hl7/dft_p03_screw.hl7").read_bytes()
CHANNEL = "usage_to_erp"
NEW_ITEM = "278000999"
NEW_CDM_ROW = f"{NEW_ITEM},ITEM-300300,HOT RELOAD WIDGET,0272,,,EA,1.00,cdm\n"
NEW_ITEM_ROW = (
    f"ITEM-300300,HOT RELOAD WIDGET,Acme,EA,EA,true,false,false,false,{NEW_ITEM},0272,,"
    "5420-272,1.00,,,\n"
)


def add_item(root: Path) -> None:
    """A new charge code and its item in the shipped master data (CDM and item master)."""
    for name, row in (("charge_codes", NEW_CDM_ROW), ("items", NEW_ITEM_ROW)):
        table = root / "mappings" / f"{name}.csv"
        table.write_text(table.read_text() + row)


def message(control_id: str, item: str = "278000123") -> bytes:
    """The screw sample with its own MSH-10, FT1-2 and charge code (FT1-7.1)."""
    assert b"POU-000123" in SCREW and b"CU-7f3a9c" in SCREW and b"278000123" in SCREW
    return (
        SCREW.replace(b"POU-000123", control_id.encode())
        .replace(b"CU-7f3a9c", f"U-{control_id}".encode())
        .replace(b"278000123", item.encode())
    )


class Receiver(resource.Resource):
    """The ERP: answers 200 after ``delay`` seconds and keeps every body."""

    isLeaf = True

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.delay = delay
        self.bodies: list[dict[str, Any]] = []

    def render_POST(self, request: server.Request) -> Any:
        body = json.loads(request.content.read())

        def answer() -> None:
            self.bodies.append(body)
            request.setResponseCode(200)
            request.write(b'{"ok": true}')
            request.finish()

        if not self.delay:
            answer()
            return server.NOT_DONE_YET
        call = reactor.callLater(self.delay, answer)
        request.notifyFinish().addErrback(lambda _: call.active() and call.cancel())
        return server.NOT_DONE_YET


class _Tracked(ProtocolWrapper):
    def connectionMade(self) -> None:
        self.lost: defer.Deferred[None] = defer.Deferred()
        super().connectionMade()

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        self.lost.callback(None)


class TrackingFactory(WrappingFactory):
    """Remembers server connections so cleanup can close them."""

    protocol = _Tracked

    async def close_all(self) -> None:
        waits = []
        for proto in list(self.protocols):
            proto.transport.abortConnection()
            waits.append(proto.lost)
        await defer.DeferredList(waits)


class HotReloadTest(unittest.TestCase):
    timeout = 60

    def setUp(self) -> defer.Deferred:
        return defer.ensureDeferred(self._setUp())

    async def _setUp(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="wharf-reload-"))
        self.addCleanup(shutil.rmtree, self.root, True)
        shutil.copy(REPO / "routes.yaml", self.root / "routes.yaml")
        for folder in ("channels", "mappings", "samples"):
            shutil.copytree(REPO / folder, self.root / folder)
        # This test is about the drop-folder channel; the others would bind ports (MLLP 2575...).
        for other in (self.root / "channels").glob("*.yaml"):
            if other.stem != CHANNEL:
                other.unlink()
        routes = self.root / "routes.yaml"
        # reloads happen when the test calls reload_if_changed(), not on the 2 s timer
        # and the SFTP server on a port of this worker's, not the shipped 2222 another run holds
        text = routes.read_text().replace("reload_interval: 2s", "reload_interval: 0")
        routes.write_text(text.replace("${SFTP_PORT:-2222}", str(free_port())))
        self.channel_file = self.root / "channels" / f"{CHANNEL}.yaml"
        self.edit_channel(
            ("min_age: 200ms", "min_age: 0s"), ("poll_interval: 500ms", "poll_interval: 50ms")
        )

        self.receiver = Receiver(delay=0.0)
        self.site = TrackingFactory(server.Site(self.receiver))
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.addCleanup(self.site.close_all)

        saved = {
            k: os.environ.get(k) for k in ("ERP_URL", "WHARF_DB", "WHARF_INBOX", "WHARF_ARCHIVE")
        }
        self.addCleanup(self._restore_env, saved)
        for key in saved:
            os.environ.pop(key, None)
        os.environ["ERP_URL"] = f"http://127.0.0.1:{self.port.getHost().port}"

        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

        self.engine = Engine(self.root, reactor)
        await self.engine.start()
        # Runs before the server cleanups (LIFO): the engine's client side closes first.
        self.addCleanup(lambda: defer.ensureDeferred(self.engine.stop()))
        self.assertEqual(sorted(self.engine.channels), [CHANNEL])
        self.inbox = self.root / "var/inbox/usage"
        self.archive = self.root / "var/out/usage"

    _restore_env = staticmethod(restore_env)

    # -- helpers ---------------------------------------------------------------------------

    def edit_channel(self, *replacements: tuple[str, str]) -> None:
        text = self.channel_file.read_text()
        for old, new in replacements:
            self.assertIn(old, text)
            text = text.replace(old, new)
        self.channel_file.write_text(text)

    def drop(self, name: str, data: bytes) -> None:
        """Write a file into the inbox atomically (hidden temp name, then rename)."""
        self.inbox.mkdir(parents=True, exist_ok=True)
        tmp = self.inbox / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.inbox / name)

    async def statuses(self) -> dict[str, str]:
        """control id -> message status."""
        store = self.engine.store
        rows = await self.engine.executor.submit(store.search, channel=CHANNEL, limit=10000)
        return {r.control_id: r.status for r in rows}

    async def counts(self) -> dict[str, int]:
        counts = await self.engine.executor.submit(self.engine.store.counts)
        return counts["messages"]

    async def wait_for(
        self, check: Callable[[], Awaitable[bool]], what: str, timeout: float = 20.0
    ) -> None:
        deadline = time.monotonic() + timeout
        while not await check():
            if time.monotonic() > deadline:
                self.fail(f"timed out waiting for {what}; counts: {await self.counts()}")
            await task.deferLater(reactor, 0.05, lambda: None)

    async def wait_status(self, control_id: str, status: str) -> None:
        async def check() -> bool:
            return (await self.statuses()).get(control_id) in (status,)

        await self.wait_for(check, f"{control_id} to be {status}")

    def archived(self, folder: Path) -> list[dict[str, Any]]:
        if not folder.is_dir():
            return []
        return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]

    def logged(self, text: str) -> list[str]:
        return [formatEvent(e) for e in self.events if text in formatEvent(e)]

    # -- (a) a valid change ------------------------------------------------------------------

    def test_changed_mapping_and_channel_are_used_by_new_messages(self) -> defer.Deferred:
        """Adding an item to the mappings and moving the archive dir in the channel:
        reload_if_changed() returns True and the next message uses both; before the reload the
        same item was a MappingMiss."""

        async def run() -> None:
            self.assertFalse(await self.engine.reload_if_changed())  # nothing changed yet
            self.drop("before.hl7", message("BEFORE-1", NEW_ITEM))
            await self.wait_status("BEFORE-1", "error")

            add_item(self.root)
            self.edit_channel(("${WHARF_ARCHIVE:-var/out/usage}", "var/out/usage-v2"))
            self.assertTrue(await self.engine.reload_if_changed())
            self.assertFalse(await self.engine.reload_if_changed())  # applied once

            self.drop("after.hl7", message("AFTER-1", NEW_ITEM))
            await self.wait_status("AFTER-1", "sent")
            new_dir = self.root / "var/out/usage-v2"
            docs = self.archived(new_dir)
            self.assertEqual([d["source_message"] for d in docs], ["AFTER-1"])
            self.assertEqual([ln["item_id"] for ln in docs[0]["lines"]], ["ITEM-300300"])
            self.assertEqual(self.archived(self.archive), [])  # nothing left in the old dir
            self.assertEqual([b["source_message"] for b in self.receiver.bodies], ["AFTER-1"])
            self.assertEqual((await self.statuses())["BEFORE-1"], "error")  # not re-run

        return defer.ensureDeferred(run())

    # -- (b) a change that fails lint --------------------------------------------------------

    def test_a_change_failing_lint_is_refused_and_the_old_channel_keeps_running(
        self,
    ) -> defer.Deferred:
        """A channel edit with an unknown key fails lint: reload_if_changed() returns False,
        the error is logged, the running channel object stays, and a new message is processed
        with the old configuration (archive dir unchanged, new item still unknown)."""

        async def run() -> None:
            running = self.engine.channels[CHANNEL]
            add_item(self.root)  # valid, but in the same rejected change
            self.edit_channel(
                ("${WHARF_ARCHIVE:-var/out/usage}", "var/out/usage-v2"),
                ("description: >", "bogus_setting: 1\ndescription: >"),
            )
            self.assertFalse(await self.engine.reload_if_changed())
            self.assertIsNotNone(self.engine.rejected_fingerprint)
            self.assertIs(self.engine.channels[CHANNEL], running)
            refused = self.logged("reload refused")
            self.assertEqual(len(refused), 1, refused)
            self.assertIn("bogus_setting", refused[0])
            self.assertIn(f"channels/{CHANNEL}.yaml", refused[0])
            # the same broken files are not linted (and logged) again on every tick
            self.assertFalse(await self.engine.reload_if_changed())
            self.assertEqual(len(self.logged("reload refused")), 1)

            self.drop("old-config.hl7", message("OLD-1"))
            self.drop("old-mapping.hl7", message("OLD-2", NEW_ITEM))
            await self.wait_status("OLD-1", "sent")
            await self.wait_status("OLD-2", "error")
            self.assertEqual([d["source_message"] for d in self.archived(self.archive)], ["OLD-1"])
            self.assertFalse((self.root / "var/out/usage-v2").exists())

            # fixing the file makes the next check apply it
            self.edit_channel(("bogus_setting: 1\n", ""))
            self.assertTrue(await self.engine.reload_if_changed())
            self.assertIsNone(self.engine.rejected_fingerprint)
            self.assertIsNot(self.engine.channels[CHANNEL], running)

        return defer.ensureDeferred(run())

    # -- (c) messages in flight ---------------------------------------------------------------

    def test_messages_in_flight_during_a_reload_are_not_lost(self) -> defer.Deferred:
        """50 files are dropped and a reload that restarts the source and the ERP destination
        happens while some are delivered and others are not: all 50 end `sent`, each reaches
        the ERP and the archive, and the inbox is empty."""

        async def run() -> None:
            self.receiver.delay = 0.03  # keep deliveries in flight for a while
            ids = [f"FLIGHT-{i:03d}" for i in range(50)]
            for cid in ids:
                self.drop(f"{cid}.hl7", message(cid))

            async def some_sent() -> bool:
                return (await self.counts()).get("sent", 0) >= 1

            await self.wait_for(some_sent, "a first message to be sent")
            self.edit_channel(
                ("poll_interval: 50ms", "poll_interval: 60ms"),  # restarts the source
                ("concurrency: 8", "concurrency: 4"),  # restarts the erp worker
            )
            before = await self.counts()
            self.assertLess(before.get("sent", 0), 50, f"reload was not mid-way: {before}")
            self.assertTrue(await self.engine.reload_if_changed())

            async def all_sent() -> bool:
                return (await self.counts()).get("sent", 0) == 50

            await self.wait_for(all_sent, "all 50 messages to be sent", timeout=40)
            statuses = await self.statuses()
            self.assertEqual(sorted(statuses), ids)
            self.assertEqual(set(statuses.values()), {"sent"})
            self.assertEqual(sorted({b["source_message"] for b in self.receiver.bodies}), ids)
            self.assertEqual(sorted(d["source_message"] for d in self.archived(self.archive)), ids)
            left = [p.name for p in self.inbox.iterdir() if p.is_file()]
            self.assertEqual(left, [])
            processed = sorted(p.name for p in (self.inbox / "processed").iterdir())
            self.assertEqual(processed, [f"{cid}.hl7" for cid in ids])

        return defer.ensureDeferred(run())
