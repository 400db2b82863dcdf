"""One channel's work cannot hold another channel's messages back.

Channel ``slow`` runs a transform that holds its pipeline thread until the test lets it go (a
huge message, as far as the pipeline is concerned); while it holds, more messages of ``slow``
wait their turn and a message of channel ``quick`` goes all the way to ``sent``.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from engine.registry import REGISTRY, Registry
from engine.runtime import Engine
from engine.spec import Spec

ENTERED = threading.Event()
GO = threading.Event()


def hold(body: Any, ctx: Any) -> Any:
    """A transform that takes the pipeline thread until the test says go."""
    ENTERED.set()
    if not GO.wait(30):
        raise RuntimeError("the test never let the slow transform go")
    return body


def registry_with_hold() -> Registry:
    registry = Registry()
    for reg in REGISTRY.all():
        registry.register(reg.kind, reg.name, reg.spec, reg.factory)
    registry.register("transform", "test_hold", Spec("test_hold", []), hold)
    registry._loaded = True
    return registry


CHANNEL = """\
codec: {{raw: {{}}}}
dedup: {{window: 0s}}
transformer:
{steps}
destinations:
  - name: out
    file: {{dir: var/out/{name}}}
"""


@pytest.mark.integration
class ChannelFairness(unittest.TestCase):
    timeout = 60

    def setUp(self) -> Any:
        ENTERED.clear()
        GO.clear()
        self.addCleanup(GO.set)
        self.base = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.base, True)
        root = self.base / "project"
        (root / "channels").mkdir(parents=True)
        (root / "channels/slow.yaml").write_text(
            CHANNEL.format(steps="  - transform: test_hold", name="slow")
        )
        (root / "channels/quick.yaml").write_text(CHANNEL.format(steps="  []", name="quick"))
        (root / "routes.yaml").write_text("store: var/wharf.db\nreload_interval: 0\n")
        self.engine = Engine(root, reactor, registry=registry_with_hold())
        self.addCleanup(lambda: defer.ensureDeferred(self.engine.stop()))
        return defer.ensureDeferred(self.engine.start())

    async def status(self, message_id: str) -> str:
        row = await self.engine.executor.submit(self.engine.store.get_message, message_id)
        return row.status

    @defer.inlineCallbacks
    def test_a_quick_channel_is_not_held_back_by_a_slow_one(self) -> Any:
        first = yield defer.ensureDeferred(self.engine.ingest("slow", b"huge 1", "test"))
        entered = yield threads.deferToThread(ENTERED.wait, 10)
        self.assertTrue(entered, "the slow transform never started")
        second = yield defer.ensureDeferred(self.engine.ingest("slow", b"huge 2", "test"))
        quick = yield defer.ensureDeferred(self.engine.ingest("quick", b"tiny", "test"))
        for _ in range(400):
            if (yield defer.ensureDeferred(self.status(quick.message_id))) == "sent":
                break
            yield task.deferLater(reactor, 0.02, lambda: None)
        self.assertEqual((yield defer.ensureDeferred(self.status(quick.message_id))), "sent")
        # the slow channel is still held: its messages wait, none was skipped or failed
        self.assertEqual((yield defer.ensureDeferred(self.status(first.message_id))), "received")
        self.assertEqual((yield defer.ensureDeferred(self.status(second.message_id))), "received")
        GO.set()
        for message in (first, second):
            for _ in range(400):
                if (yield defer.ensureDeferred(self.status(message.message_id))) == "sent":
                    break
                yield task.deferLater(reactor, 0.02, lambda: None)
            self.assertEqual((yield defer.ensureDeferred(self.status(message.message_id))), "sent")
