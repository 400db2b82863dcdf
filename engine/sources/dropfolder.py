"""Drop-folder source: poll a local folder, ingest complete files, move them after the commit.

A file is taken once it is older than ``min_age`` (a writer still appending keeps it younger),
and hidden names (``.part`` uploads, temporary files) are never taken. The file is moved to
``processed/`` only after the store committed it, or to ``error/`` with a ``.reason.txt`` when
the codec refused it. A crash between the commit and the move leaves the file in place: the next
poll ingests it again and the store answers it as a duplicate, so nothing runs twice.
"""

from __future__ import annotations

import fnmatch
import os
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, task, threads
from twisted.logger import Logger

from engine.registry import source
from engine.resources import Resources
from engine.sources import Ingest, IngestOutcome
from engine.spec import ByteSize, Duration, Field, Int, Spec, Str
from engine.uploads import OpenUploads

log = Logger()

DROPFOLDER_SPEC = Spec(
    "dropfolder",
    [
        Field("path", Str(), description="Folder to watch; relative to the project root."),
        Field("pattern", Str(), "*", "Glob of file names to take."),
        Field("poll_interval", Duration(lo=0.01), 1.0, "How often to list the folder."),
        Field("min_age", Duration(), 1.0, "Take a file only when unchanged for this long."),
        Field(
            "processed_dir", Str(), None, "Where committed files go (default `<path>/processed`)."
        ),
        Field("error_dir", Str(), None, "Where refused files go (default `<path>/error`)."),
        Field("max_file_size", ByteSize(), 10 * 1024 * 1024, "Bigger files go to `error/`."),
        Field("batch", Int(1, 100000), 500, "Most files taken in one poll."),
        Field("concurrency", Int(1, 4096), 64, "Most files being ingested at once."),
    ],
    description=(
        "Polls a local folder. Files move to `processed/` only after the store's commit; "
        "refused files move to `error/` with a reason file. Names starting with `.` are never "
        "taken: a writer should write `.name.part` and rename it when complete (or rely on "
        "`min_age`). Narrow `pattern` (e.g. `*.hl7`) so that other temporary names are skipped."
    ),
    example="source:\n  dropfolder:\n    path: var/inbox/usage\n    min_age: 500ms",
)


class DropFolderSource:
    def __init__(
        self,
        options: Any,
        *,
        reactor: Any,
        channel: str,
        base_dir: Path,
        ingest: Ingest,
        resources: Resources | None = None,
    ) -> None:
        self.options = options
        # files our own SFTP server is still writing (none without a runtime: a bare source)
        self.uploads = resources.uploads if resources is not None else OpenUploads()
        self.reactor = reactor
        self.channel = channel
        self.ingest = ingest
        self.folder = (base_dir / options.path).resolve()
        self.processed = (
            base_dir / (options.processed_dir or f"{options.path}/processed")
        ).resolve()
        self.errors = (base_dir / (options.error_dir or f"{options.path}/error")).resolve()
        self.inflight: set[str] = set()
        self.taken = 0
        self.loop: task.LoopingCall | None = None
        self._polling: defer.Deferred | None = None
        self._sem = defer.DeferredSemaphore(options.concurrency)

    def start(self) -> None:
        for folder in (self.folder, self.processed, self.errors):
            folder.mkdir(parents=True, exist_ok=True)
        self.loop = task.LoopingCall(self._tick)
        self.loop.clock = self.reactor
        self.loop.start(self.options.poll_interval, now=True)

    def _tick(self) -> None:
        if self._polling is None:
            self._polling = defer.ensureDeferred(self.poll())
            self._polling.addErrback(lambda f: log.failure("drop folder poll failed", f))
            self._polling.addBoth(self._done_polling)

    def _done_polling(self, _: Any) -> None:
        self._polling = None

    async def stop(self) -> None:
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        while self._polling is not None:
            await self._polling

    def _ready(self) -> list[str]:
        now = time.time()
        out: list[tuple[float, str]] = []
        with os.scandir(self.folder) as it:
            for entry in it:
                name = entry.name
                if name.startswith(".") or name in self.inflight:
                    continue
                if not fnmatch.fnmatch(name, self.options.pattern):
                    continue
                if not entry.is_file(follow_symlinks=False):
                    continue
                if self.uploads.is_open(entry.path):
                    continue  # still being written by our own SFTP server
                st = entry.stat(follow_symlinks=False)
                if now - st.st_mtime < self.options.min_age:
                    continue
                out.append((st.st_mtime, name))
        out.sort()
        return [n for _, n in out[: self.options.batch]]

    async def poll(self) -> int:
        """List once and ingest every ready file; returns how many were taken."""
        names = await threads.deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), self._ready
        )
        pending = []
        for name in names:
            self.inflight.add(name)
            pending.append(self._sem.run(lambda n=name: defer.ensureDeferred(self._take(n))))
        await defer.gatherResults(pending, consumeErrors=True)
        return len(names)

    async def _take(self, name: str) -> None:
        try:
            path = self.folder / name
            pool = self.reactor.getThreadPool()
            size = path.stat().st_size
            if size > self.options.max_file_size:
                reason = f"file is {size} bytes; the limit is {self.options.max_file_size}"
                await threads.deferToThreadPool(self.reactor, pool, self._move_error, name, reason)
                return
            raw = await threads.deferToThreadPool(self.reactor, pool, path.read_bytes)
            outcome: IngestOutcome = await self.ingest(raw, name)
            if outcome.accepted:
                await threads.deferToThreadPool(
                    self.reactor, pool, self._move, name, self.processed
                )
                self.taken += 1
            elif outcome.kind == "rejected":
                await threads.deferToThreadPool(
                    self.reactor, pool, self._move_error, name, outcome.reason
                )
            else:
                log.warn(
                    "drop folder {channel}: {file} left for the next poll ({reason})",
                    channel=self.channel,
                    file=name,
                    reason=outcome.reason,
                )
        except FileNotFoundError:
            pass  # taken away meanwhile (another node or a person)
        finally:
            self.inflight.discard(name)

    def _move(self, name: str, folder: Path) -> Path:
        target = folder / name
        if target.exists():
            target = folder / f"{name}.{time.time_ns()}"
        os.replace(self.folder / name, target)
        return target

    def _move_error(self, name: str, reason: str) -> None:
        target = self._move(name, self.errors)
        Path(f"{target}.reason.txt").write_text(reason + "\n", encoding="utf-8")


@source("dropfolder", DROPFOLDER_SPEC)
def make_dropfolder(
    options: Any,
    *,
    reactor: Any,
    channel: str,
    base_dir: Path,
    ingest: Ingest,
    resources: Resources | None = None,
) -> DropFolderSource:
    return DropFolderSource(
        options,
        reactor=reactor,
        channel=channel,
        base_dir=base_dir,
        ingest=ingest,
        resources=resources,
    )
