"""DropFolderSource against a real folder and the real reactor, with a fake ingest function.

trial's TestCase runs each test's Deferred on the real reactor (it runs under pytest too). All
files live in a tempfile.mkdtemp() folder, removed after each test; nothing is written into the
repository (trial's own mktemp() would create folders under the current directory).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from engine.sources import IngestOutcome
from engine.sources.dropfolder import DROPFOLDER_SPEC, DropFolderSource
from engine.spec import Context

pytestmark = pytest.mark.integration

MESSAGE = b"MSH|^~\\&|POU|GENHOSP|WHARF|GENHOSP|20260115103000||DFT^P03|C-1|P|2.5.1\r"


def options(**values: Any) -> Any:
    """Parse ``values`` through DROPFOLDER_SPEC the way a channel file would be."""
    ctx = Context("<test>")
    config = DROPFOLDER_SPEC.parse(yaml.compose(yaml.safe_dump(values)), ctx, "")
    assert not ctx.errors, [str(e) for e in ctx.errors]
    return config


class FakeIngest:
    """Records every call; answers with ``decide(raw, name)`` (default: stored)."""

    def __init__(self, decide: Callable[[bytes, str], IngestOutcome] | None = None) -> None:
        self.calls: list[tuple[str, bytes]] = []
        self.keywords: list[dict[str, Any]] = []
        self.decide = decide or (lambda raw, name: IngestOutcome("stored", f"m-{name}"))

    def __call__(self, raw: bytes, name: str, **kw: Any) -> defer.Deferred:
        self.calls.append((name, raw))
        self.keywords.append(kw)  # arrival (and origin inside an SFTP account)
        # answer on a later reactor turn, as the store's commit would
        return task.deferLater(reactor, 0, self.decide, raw, name)

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


class DropFolderTest(unittest.TestCase):
    def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="wharf-dropfolder-"))
        self.addCleanup(shutil.rmtree, self.base, True)
        self.inbox = self.base / "inbox"
        self.sources: list[DropFolderSource] = []

    def tearDown(self) -> defer.Deferred:
        return defer.ensureDeferred(self._stop_all())

    async def _stop_all(self) -> None:
        for src in self.sources:
            await src.stop()

    def source(self, ingest: FakeIngest, **values: Any) -> DropFolderSource:
        values.setdefault("path", "inbox")
        values.setdefault("poll_interval", "1h")  # tests call poll() themselves unless started
        src = DropFolderSource(
            options(**values), reactor=reactor, channel="usage", base_dir=self.base, ingest=ingest
        )
        for folder in (src.folder, src.processed, src.errors):
            folder.mkdir(parents=True, exist_ok=True)
        self.sources.append(src)
        return src

    def drop(self, name: str, data: bytes = MESSAGE, age: float = 60.0) -> Path:
        """Write a file whose modification time is ``age`` seconds ago."""
        path = self.inbox / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        then = time.time() - age
        os.utime(path, (then, then))
        return path

    def in_folder(self, folder: Path) -> list[str]:
        return sorted(p.name for p in folder.iterdir() if p.is_file())

    # -- min_age and hidden files ------------------------------------------------------------

    def test_a_file_younger_than_min_age_is_not_taken(self) -> defer.Deferred:
        """A file modified less than min_age ago is left alone; once older, it is taken."""

        async def run() -> None:
            ingest = FakeIngest()
            src = self.source(ingest, min_age="30s")
            self.drop("young.hl7", age=0)
            self.assertEqual(await src.poll(), 0)
            self.assertEqual(ingest.calls, [])
            self.assertEqual(self.in_folder(self.inbox), ["young.hl7"])
            self.drop("young.hl7", age=31)  # now unchanged for longer than min_age
            self.assertEqual(await src.poll(), 1)
            self.assertEqual(ingest.names(), ["young.hl7"])
            self.assertEqual(self.in_folder(src.processed), ["young.hl7"])

        return defer.ensureDeferred(run())

    def test_hidden_part_files_are_never_taken(self) -> defer.Deferred:
        """Hidden names (an upload in progress as `.name.part`) are never taken, however old,
        while a visible file next to them is."""

        async def run() -> None:
            ingest = FakeIngest()
            src = self.source(ingest, min_age=0)
            self.drop(".upload-1.hl7.part", age=3600)
            self.drop(".tmp", age=3600)
            self.drop("ready.hl7")
            self.assertEqual(await src.poll(), 1)
            self.assertEqual(await src.poll(), 0)
            self.assertEqual(ingest.names(), ["ready.hl7"])
            self.assertEqual(self.in_folder(self.inbox), [".tmp", ".upload-1.hl7.part"])
            self.assertEqual(self.in_folder(src.processed), ["ready.hl7"])
            self.assertEqual(self.in_folder(src.errors), [])

        return defer.ensureDeferred(run())

    # -- what happens to the file after the ingest -----------------------------------------------

    def test_stored_and_duplicate_move_the_file_to_processed(self) -> defer.Deferred:
        """After `stored` or `duplicate` (both durably stored) the file moves to processed/,
        unchanged; nothing goes to error/."""

        async def run() -> None:
            answers = {"a.hl7": "stored", "b.hl7": "duplicate"}
            ingest = FakeIngest(lambda raw, name: IngestOutcome(answers[name], f"m-{name}"))
            src = self.source(ingest, min_age=0)
            self.drop("a.hl7", b"MSH|A")
            self.drop("b.hl7", b"MSH|B")
            self.assertEqual(await src.poll(), 2)
            self.assertEqual(sorted(ingest.calls), [("a.hl7", b"MSH|A"), ("b.hl7", b"MSH|B")])
            self.assertEqual(self.in_folder(self.inbox), [])
            self.assertEqual(self.in_folder(src.processed), ["a.hl7", "b.hl7"])
            self.assertEqual((src.processed / "b.hl7").read_bytes(), b"MSH|B")
            self.assertEqual(self.in_folder(src.errors), [])
            self.assertEqual(src.taken, 2)

        return defer.ensureDeferred(run())

    def test_rejected_moves_the_file_to_error_with_a_reason_file(self) -> defer.Deferred:
        """After `rejected` the file moves to error/ and `<name>.reason.txt` holds the reason."""

        async def run() -> None:
            reason = "required_field_missing at MSH^1^10: MSH-10 is required but empty"
            ingest = FakeIngest(lambda raw, name: IngestOutcome("rejected", reason=reason))
            src = self.source(ingest, min_age=0)
            self.drop("bad.hl7", b"MSH|bad")
            self.assertEqual(await src.poll(), 1)
            self.assertEqual(self.in_folder(self.inbox), [])
            self.assertEqual(self.in_folder(src.processed), [])
            self.assertEqual(self.in_folder(src.errors), ["bad.hl7", "bad.hl7.reason.txt"])
            self.assertEqual((src.errors / "bad.hl7").read_bytes(), b"MSH|bad")
            self.assertEqual(
                (src.errors / "bad.hl7.reason.txt").read_text(encoding="utf-8").strip(), reason
            )
            self.assertEqual(src.taken, 0)

        return defer.ensureDeferred(run())

    def test_refused_leaves_the_file_for_the_next_poll(self) -> defer.Deferred:
        """After `refused` (store overloaded or channel stopped) the file stays in place and the
        next poll offers it again; once stored it moves to processed/."""

        async def run() -> None:
            answers = ["refused", "refused", "stored"]
            ingest = FakeIngest(lambda raw, name: IngestOutcome(answers.pop(0), reason="busy"))
            src = self.source(ingest, min_age=0)
            self.drop("later.hl7")
            await src.poll()
            self.assertEqual(self.in_folder(self.inbox), ["later.hl7"])
            self.assertEqual(self.in_folder(src.errors), [])
            await src.poll()
            self.assertEqual(self.in_folder(self.inbox), ["later.hl7"])
            await src.poll()
            self.assertEqual(ingest.names(), ["later.hl7"] * 3)
            self.assertEqual(self.in_folder(self.inbox), [])
            self.assertEqual(self.in_folder(src.processed), ["later.hl7"])

        return defer.ensureDeferred(run())

    def test_a_file_over_max_file_size_goes_to_error_without_ingest(self) -> defer.Deferred:
        """A file bigger than max_file_size is not read into the store: it goes to error/ with a
        reason naming the size and the limit."""

        async def run() -> None:
            ingest = FakeIngest()
            src = self.source(ingest, min_age=0, max_file_size="1KiB")
            self.drop("huge.hl7", b"x" * 2048)
            await src.poll()
            self.assertEqual(ingest.calls, [])
            self.assertEqual(self.in_folder(src.errors), ["huge.hl7", "huge.hl7.reason.txt"])
            self.assertIn("2048", (src.errors / "huge.hl7.reason.txt").read_text())

        return defer.ensureDeferred(run())

    # -- a writer still appending ----------------------------------------------------------------

    def test_a_file_appended_slowly_is_taken_once_and_complete(self) -> defer.Deferred:
        """A writer appends a part every 80 ms (less than min_age = 400 ms) while the source polls
        every 20 ms: the file is taken exactly once, after the last write, with all its bytes."""

        async def run() -> None:
            ingest = FakeIngest()
            src = self.source(ingest, min_age="400ms", poll_interval="20ms")
            src.start()
            parts = [MESSAGE] + [b"FT1|%d|U-%d\r" % (i, i) for i in range(1, 8)]
            path = self.inbox / "slow.hl7"
            for part in parts:
                with path.open("ab") as fh:
                    fh.write(part)
                await task.deferLater(reactor, 0.08, lambda: None)
                self.assertEqual(ingest.calls, [], "taken while the writer was still appending")
            deadline = time.monotonic() + 5
            while not ingest.calls and time.monotonic() < deadline:
                await task.deferLater(reactor, 0.02, lambda: None)
            await task.deferLater(reactor, 0.5, lambda: None)  # more polls: no second take
            self.assertEqual(ingest.calls, [("slow.hl7", b"".join(parts))])
            self.assertEqual(self.in_folder(src.processed), ["slow.hl7"])
            self.assertEqual((src.processed / "slow.hl7").read_bytes(), b"".join(parts))
            self.assertEqual(self.in_folder(self.inbox), [])

        return defer.ensureDeferred(run())


class GlobFolderTest(unittest.TestCase):
    """One source for every partner's inbound/ (``path`` a glob), each file with its arrival
    and, inside an account of Wharf's SFTP server, its origin."""

    def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="wharf-dropfolder-glob-"))
        self.addCleanup(shutil.rmtree, self.base, True)

    def resources(self) -> Any:
        from types import SimpleNamespace

        from engine.resources import Resources, Snapshot

        accounts = [
            SimpleNamespace(name="acme", root="var/sftp/acme"),
            SimpleNamespace(name="harbor", root=str(self.base / "var/sftp/harbor")),
        ]
        settings = SimpleNamespace(sftp_server=SimpleNamespace(partners=accounts))
        return Resources(self.base, Snapshot(settings=settings))

    def drop(self, folder: str, name: str, data: bytes) -> None:
        path = self.base / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        then = time.time() - 60
        os.utime(path, (then, then))

    def test_every_matched_folder_is_served_and_files_go_to_their_own_archive(
        self,
    ) -> defer.Deferred:
        """``var/sftp/*/inbound`` serves acme's and harbor's folders (and one made later);
        each file moves to its own ``var/sftp/<account>/archive``, is ingested with the origin
        of the account whose root holds it, and with its arrival (name, inode, mtime, size).
        A folder outside every account has no origin."""

        async def run() -> None:
            ingest = FakeIngest()
            src = DropFolderSource(
                options(
                    path="var/sftp/*/inbound",
                    processed_dir="var/sftp/*/archive",
                    error_dir="var/sftp/*/error",
                    min_age=0,
                    poll_interval="1h",
                ),
                reactor=reactor,
                channel="x12",
                base_dir=self.base,
                ingest=ingest,
                resources=self.resources(),
            )
            self.drop("var/sftp/acme/inbound", "a.x12", b"ISA-A")
            self.drop("var/sftp/harbor/inbound", "h.x12", b"ISA-H")
            self.assertEqual(await src.poll(), 2)
            self.drop("var/sftp/cedar/inbound", "c.x12", b"ISA-C")  # no account: no origin
            self.assertEqual(await src.poll(), 1)
            got = {name: kw for (name, _), kw in zip(ingest.calls, ingest.keywords, strict=True)}
            self.assertEqual(got["a.x12"].get("origin"), "sftp:acme")
            self.assertEqual(got["h.x12"].get("origin"), "sftp:harbor")
            self.assertNotIn("origin", got["c.x12"])
            st = (self.base / "var/sftp/acme/archive/a.x12").stat()
            self.assertEqual(got["a.x12"]["arrival"], f"a.x12:{st.st_ino}:{st.st_mtime_ns}:5")
            for account, name in (("acme", "a.x12"), ("harbor", "h.x12"), ("cedar", "c.x12")):
                self.assertTrue((self.base / f"var/sftp/{account}/archive" / name).exists())
                self.assertEqual(os.listdir(self.base / f"var/sftp/{account}/inbound"), [])

        return defer.ensureDeferred(run())

    def test_more_stars_in_the_archive_than_in_the_path_is_a_lint_error(self) -> None:
        ctx = Context("<test>")
        values = {"path": "var/sftp/*/inbound", "processed_dir": "var/*/*/archive"}
        DROPFOLDER_SPEC.parse(yaml.compose(yaml.safe_dump(values)), ctx, "source.dropfolder")
        (error,) = [str(e) for e in ctx.errors]
        self.assertIn("processed_dir: has 2 '*' but path 'var/sftp/*/inbound' has 1", error)
