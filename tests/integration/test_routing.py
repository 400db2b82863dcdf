"""Shared listeners in routes.yaml: one drop folder, messages routed to channels by content."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from engine.config.project import load_project
from engine.errors import LintFailed
from engine.runtime import Engine

ROOT = Path(__file__).resolve().parents[2]

ROUTES = """\
store: var/wharf.db
reload_interval: 0
listeners:
  - name: pou_inbox
    source:
      dropfolder: {path: var/inbox/pou, min_age: 0, poll_interval: 50ms}
    codec: {hl7v2: {}}
    routes:
      - when:
          - message_type: {any_of: [DFT^P03]}
          - field: {path: PV1-3.1, equals: CATH}
        channel: cath_usage
      - when: [{message_type: {any_of: [DFT]}}]
        channel: usage
"""

CHANNEL = """\
transformer:
  - transform: hl7_usage_to_issue
destinations:
  - name: out
    file: {{dir: var/out/{name}}}
"""


def make_project(base: Path) -> Path:
    root = base / "project"
    root.mkdir()
    shutil.copytree(ROOT / "mappings", root / "mappings")
    shutil.copytree(ROOT / "samples", root / "samples")
    (root / "channels").mkdir()
    (root / "routes.yaml").write_text(ROUTES)
    for name in ("cath_usage", "usage"):
        (root / f"channels/{name}.yaml").write_text(CHANNEL.format(name=name))
    return root


@pytest.mark.integration
class RoutingTests(unittest.TestCase):
    def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.base, True)
        self.root = make_project(self.base)

    def test_lint_checks_route_targets(self) -> None:
        """A route to a missing channel, or to a channel with its own source, is a lint error."""
        text = ROUTES.replace("channel: usage\n", "channel: usag\n")
        (self.root / "routes.yaml").write_text(text)
        with self.assertRaises(LintFailed) as info:
            load_project(self.root, env={})
        errors = [str(e) for e in info.exception.errors]
        self.assertTrue(
            any(
                e.startswith("routes.yaml:14:18: listeners[0].routes[1].channel: no channel 'usag'")
                and "did you mean 'usage'?" in e
                for e in errors
            ),
            errors,
        )
        (self.root / "routes.yaml").write_text(ROUTES)
        with (self.root / "channels/usage.yaml").open("a") as fh:
            fh.write("source:\n  dropfolder: {path: var/other}\n")
        with self.assertRaises(LintFailed) as info:
            load_project(self.root, env={})
        self.assertIn("a routed channel must not declare `source:`", str(info.exception))

    def test_routed_channels_take_the_listener_codec(self) -> None:
        """A routed channel without a codec of its own decodes with the listener's codec."""
        project = load_project(self.root, env={})
        self.assertEqual(project.channels["usage"].config.codec.name, "hl7v2")

    @defer.inlineCallbacks
    def test_messages_go_to_the_first_matching_route(self):  # type: ignore[no-untyped-def]
        """Cath lab usage goes to cath_usage, other DFTs to usage, the rest to error/."""
        engine = Engine(self.root, reactor)
        yield defer.ensureDeferred(engine.start())
        self.addCleanup(lambda: defer.ensureDeferred(engine.stop()))
        inbox = self.root / "var/inbox/pou"
        names = [
            "dft_p03_screw",
            "dft_p03_knee_and_sutures",
            "dft_p03_stent_cath",
            "broken/not_hl7",
        ]
        for path in [ROOT / f"samples/hl7/{n}.hl7" for n in names]:
            shutil.copy(path, inbox / f".{path.name}")
            os.replace(inbox / f".{path.name}", inbox / path.name)
        deadline = time.time() + 20
        while time.time() < deadline:
            rows = yield engine.executor.submit(engine.store.search, limit=100)
            errors = list((inbox / "error").glob("*.reason.txt"))
            if len(rows) == 3 and errors and all(r.status == "sent" for r in rows):
                break
            yield task.deferLater(reactor, 0.1, lambda: None)
        by_channel = {r.control_id: (r.channel, r.source) for r in rows}
        self.assertEqual(
            by_channel,
            {
                "CATH-55001": ("cath_usage", "listener:pou_inbox"),
                "POU-000123": ("usage", "listener:pou_inbox"),
                "POU-000124": ("usage", "listener:pou_inbox"),
            },
        )
        self.assertEqual(len(list((self.root / "var/out/cath_usage").glob("*.json"))), 1)
        self.assertEqual(len(list((self.root / "var/out/usage").glob("*.json"))), 2)
        reason = (inbox / "error/not_hl7.hl7.reason.txt").read_text()
        self.assertIn("expected a message starting with 'MSH'", reason)
