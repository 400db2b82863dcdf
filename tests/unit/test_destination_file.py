"""The file destination: atomic writes named by idempotency key, path traversal refused."""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
from typing import Any

import yaml
from twisted.internet import defer
from twisted.python.threadpool import ThreadPool
from twisted.trial import unittest

from engine.destinations.file import FILE_SPEC, FileDestination
from engine.errors import DeliveryError
from engine.model import Delivery
from engine.net.files import extension_for
from engine.spec import Context


class _SyncThreadPool(ThreadPool):
    """Runs work at once on the calling thread, so tests need no reactor."""

    def callInThreadWithCallback(self, onResult: Any, func: Any, *args: Any, **kw: Any) -> None:
        try:
            result = func(*args, **kw)
        except BaseException:
            from twisted.python.failure import Failure

            onResult(False, Failure())
        else:
            onResult(True, result)


class _ImmediateReactor:
    """Enough of a reactor for deferToThreadPool: callFromThread runs the call now."""

    def callFromThread(self, f: Any, *args: Any, **kw: Any) -> None:
        f(*args, **kw)

    def getThreadPool(self) -> ThreadPool:
        raise AssertionError("the injected thread pool must be used")


def options(**values: Any) -> Any:
    ctx = Context("<test>")
    config = FILE_SPEC.parse(yaml.compose(yaml.safe_dump(values)), ctx, "")
    assert not ctx.errors, [str(e) for e in ctx.errors]
    return config


def delivery(**overrides: Any) -> Delivery:
    values: dict[str, Any] = dict(
        id=1,
        message_id="m-1",
        channel="erp",
        destination="drop",
        payload=b"MSH|^~\\&|...",
        content_type="x-application/hl7-v2+er7",
        idempotency_key="key-1",
        correlation_id="corr-1",
        order_key=None,
        attempts=0,
        created_at=0.0,
        meta={"site": "north"},
    )
    values.update(overrides)
    return Delivery(**values)


class FileDestinationTests(unittest.SynchronousTestCase):
    def tmpdir(self) -> pathlib.Path:
        """A fresh temporary directory, removed after the test (not under the cwd)."""
        path = pathlib.Path(tempfile.mkdtemp(prefix="wharf-file-"))
        self.addCleanup(shutil.rmtree, path, True)
        return path

    def make(self, **values: Any) -> FileDestination:
        self.base = self.tmpdir() / "base"
        return FileDestination(
            options(**values),
            reactor=_ImmediateReactor(),
            channel="erp",
            name="drop",
            base_dir=self.base,
            threadpool=_SyncThreadPool(),
        )

    def send(self, dest: FileDestination, d: Delivery) -> Any:
        return self.successResultOf(defer.ensureDeferred(dest.send(d)))

    def test_writes_payload_named_by_idempotency_key(self) -> None:
        """The payload lands in dir (relative to base_dir) as <idempotency_key><ext>; no
        temporary file is left; the response is None."""
        dest = self.make(dir="out")
        self.assertIsNone(self.send(dest, delivery()))
        out = self.base / "out"
        self.assertEqual(os.listdir(out), ["key-1.hl7"])
        self.assertEqual((out / "key-1.hl7").read_bytes(), b"MSH|^~\\&|...")

    def test_same_key_overwrites(self) -> None:
        """A redelivery with the same idempotency key rewrites the same file: one file, last
        content."""
        dest = self.make(dir="out")
        self.send(dest, delivery(payload=b"one"))
        self.send(dest, delivery(id=2, payload=b"two"))
        out = self.base / "out"
        self.assertEqual(os.listdir(out), ["key-1.hl7"])
        self.assertEqual((out / "key-1.hl7").read_bytes(), b"two")

    def test_write_is_atomic_via_rename(self) -> None:
        """The payload is written to a dot-prefixed temp file in the same dir and renamed over
        the final name with os.replace."""
        dest = self.make(dir="out")
        seen: list[tuple[str, str]] = []
        real_replace = os.replace

        def spy(src: Any, dst: Any) -> None:
            seen.append((os.path.basename(src), os.path.basename(dst)))
            self.assertEqual(os.path.dirname(src), os.path.dirname(dst))
            real_replace(src, dst)

        self.patch(os, "replace", spy)
        self.send(dest, delivery())
        [(src, dst)] = seen
        self.assertTrue(src.startswith("."))
        self.assertEqual(dst, "key-1.hl7")

    def test_filename_template_and_extensions(self) -> None:
        """filename takes the delivery placeholders, meta keys and {ext}."""
        dest = self.make(dir=str(self.tmpdir() / "abs"), filename="{site}-{message_id}{ext}")
        self.send(dest, delivery(content_type="application/json"))
        self.assertEqual(os.listdir(dest.directory), ["north-m-1.json"])
        self.assertEqual(extension_for("application/edi-x12"), ".x12")
        self.assertEqual(extension_for("application/hl7-v2"), ".hl7")
        self.assertEqual(extension_for("application/xml; charset=utf-8"), ".xml")
        self.assertEqual(extension_for("application/octet-stream"), ".bin")

    def test_traversal_is_rejected(self) -> None:
        """A file name that after formatting holds a path separator or '..' is a permanent
        failure, and nothing is written."""
        dest = self.make(dir="out", filename="{site}{ext}")
        for bad in ("../etc/passwd", "a/b", ".."):
            f = self.failureResultOf(
                defer.ensureDeferred(dest.send(delivery(meta={"site": bad}))), DeliveryError
            )
            self.assertFalse(f.value.retryable)
            self.assertIn("path separator", f.value.message)
        self.assertFalse((self.base / "out").exists())

    def test_write_error_is_retryable(self) -> None:
        """An OS error while writing (here: dir is a file) is a retryable failure."""
        dest = self.make(dir="out")
        self.base.mkdir(parents=True)
        (self.base / "out").write_bytes(b"not a dir")
        f = self.failureResultOf(defer.ensureDeferred(dest.send(delivery())), DeliveryError)
        self.assertTrue(f.value.retryable)

    def test_spec_rejects_directory_in_filename(self) -> None:
        """A filename template with a '/' is a config error pointing at 'dir'."""
        ctx = Context("<test>")
        FILE_SPEC.parse(yaml.compose("{dir: out, filename: 'sub/{message_id}'}"), ctx, "")
        self.assertIn("put the directory in 'dir'", str(ctx.errors[0]))


def test_leftover_temp_files_of_a_crashed_attempt_are_removed(tmp_path: pathlib.Path) -> None:
    """A temp file left by a crash between write and rename is cleaned up by the next attempt."""
    from engine.net.files import write_atomically

    (tmp_path / ".k1.json.abc123.tmp").write_bytes(b"half")
    (tmp_path / ".other.json.x.tmp").write_bytes(b"not ours")
    write_atomically(tmp_path, "k1.json", b"{}", fsync=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.json.x.tmp", "k1.json"]
