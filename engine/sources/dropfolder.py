"""Drop-folder source: poll local folders, ingest complete files, move them after the commit.

A file is taken once it is older than ``min_age`` (a writer still appending keeps it younger),
and hidden names (``.part`` uploads, temporary files) are never taken. The file is moved to
``processed/`` only after the store committed it, or to ``error/`` with a ``.reason.txt`` when
the codec refused it. A crash between the commit and the move leaves the file in place: the next
poll ingests it again and the store answers it as a duplicate, so nothing runs twice.

``path`` may be a glob (``var/sftp/*/inbound``): one source then serves every folder it matches,
listed again at each poll (a folder that appears later is served from then on), and each ``*``
in ``processed_dir``/``error_dir`` stands for what the wildcards of ``path`` matched, in order
(``var/sftp/*/archive``).

Several nodes on one PostgreSQL store may watch the same folders (a shared volume): each folder
is picked up by one node at a time, the one holding its lease (``resources.coordination``,
rows of the shared store; renewed while it polls, taken over by another node once ``lease``
ran out), and a file of an SFTP account is recorded in the SFTP server's upload registry as
handed over (which node, which message) once stored and moved.

Each file is ingested with its ``arrival`` (name, inode, mtime and
size: a retake after a crash is the same arrival, a new upload of the same bytes is not) and,
when its folder lies inside an account of Wharf's own SFTP server, the ``origin``
``sftp:<account>``: the credential it came with.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import defer, task, threads
from twisted.logger import Logger

from engine.coordination import Leases
from engine.registry import source
from engine.resources import Resources
from engine.sources import Ingest, IngestOutcome
from engine.spec import ByteSize, Context, Duration, Field, Int, Spec, Str, join
from engine.uploads import OpenUploads

log = Logger()

_WILD = frozenset("*?[")


def _wild(part: str) -> bool:
    return any(c in part for c in _WILD)


def _check(config: Any, ctx: Context, node: Any, path: str) -> None:
    wildcards = sum(_wild(part) for part in Path(config.path).parts)
    for name in ("processed_dir", "error_dir"):
        value = getattr(config, name)
        if value and value.count("*") > wildcards:
            ctx.error(
                node,
                join(path, name),
                f"has {value.count('*')} '*' but path {config.path!r} has {wildcards} wildcard "
                "folder(s) for them to stand for",
            )


DROPFOLDER_SPEC = Spec(
    "dropfolder",
    [
        Field(
            "path",
            Str(),
            description="Folder to watch; relative to the project root. A glob "
            "(`var/sftp/*/inbound`) watches every folder it matches.",
        ),
        Field("pattern", Str(), "*", "Glob of file names to take."),
        Field("poll_interval", Duration(lo=0.01), 1.0, "How often to list the folder."),
        Field("min_age", Duration(), 1.0, "Take a file only when unchanged for this long."),
        Field(
            "processed_dir",
            Str(),
            None,
            "Where committed files go (default `<folder>/processed`); each `*` stands for what "
            "the wildcards of `path` matched, in order.",
        ),
        Field(
            "error_dir",
            Str(),
            None,
            "Where refused files go (default `<folder>/error`); `*` as in `processed_dir`.",
        ),
        Field("max_file_size", ByteSize(), 10 * 1024 * 1024, "Bigger files go to `error/`."),
        Field("batch", Int(1, 100000), 500, "Most files taken in one poll."),
        Field("concurrency", Int(1, 4096), 64, "Most files being ingested at once."),
        Field(
            "lease",
            Duration(lo=0.5),
            10.0,
            "Several nodes on one PostgreSQL store sharing the folders: how long one node holds "
            "a folder's pickup (renewed while it runs); a dead node's folders are taken over "
            "once this ran out.",
        ),
    ],
    description=(
        "Polls a local folder (or every folder a glob matches). Files move to `processed/` "
        "only after the store's commit; refused files move to `error/` with a reason file. "
        "Names starting with `.` are never taken: a writer should write `.name.part` and "
        "rename it when complete (or rely on `min_age`). Narrow `pattern` (e.g. `*.hl7`) so "
        "that other temporary names are skipped. A file inside an account of Wharf's SFTP "
        "server is ingested with the origin `sftp:<account>`."
    ),
    example="source:\n  dropfolder:\n    path: var/inbox/usage\n    min_age: 500ms",
    check=_check,
)


@dataclass(frozen=True)
class Folder:
    """One watched folder, where its files go, and the SFTP account it belongs to (if any)."""

    path: Path
    processed: Path
    errors: Path
    origin: str | None = None


@dataclass(frozen=True)
class _Ready:
    folder: Folder
    name: str
    arrival: str

    @property
    def path(self) -> Path:
        return self.folder.path / self.name


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
        self.resources = resources
        self.reactor = reactor
        self.channel = channel
        self.ingest = ingest
        self.base_dir = Path(base_dir)
        self.glob = any(_wild(part) for part in Path(options.path).parts)
        # one folder (path is no glob): where it is and where its files go, fixed
        self.folder = (self.base_dir / options.path).resolve()
        self.processed = (
            self.base_dir / (options.processed_dir or f"{options.path}/processed")
        ).resolve()
        self.errors = (self.base_dir / (options.error_dir or f"{options.path}/error")).resolve()
        self.inflight: set[str] = set()
        self.coordination = resources.coordination if resources is not None else None
        self.leases = (
            Leases(self.coordination, options.lease, reactor)
            if self.coordination is not None
            else None
        )
        self.taken = 0
        self.loop: task.LoopingCall | None = None
        self.renewing: task.LoopingCall | None = None
        self._polling: defer.Deferred | None = None
        self._sem = defer.DeferredSemaphore(options.concurrency)

    def folders(self) -> list[Folder]:
        """The folders watched now (a glob is matched again at each call)."""
        if not self.glob:
            return [Folder(self.folder, self.processed, self.errors, self._origin(self.folder))]
        pattern = str(self.base_dir / self.options.path)
        wild = [i for i, part in enumerate(Path(pattern).parts) if _wild(part)]
        out = []
        for found in sorted(glob.glob(pattern)):
            path = Path(found)
            if not path.is_dir():
                continue
            captured = [path.parts[i] for i in wild]
            processed = self._fill(self.options.processed_dir, captured, path, "processed")
            errors = self._fill(self.options.error_dir, captured, path, "error")
            out.append(Folder(path.resolve(), processed, errors, self._origin(path)))
        return out

    def _fill(self, template: str | None, captured: list[str], folder: Path, default: str) -> Path:
        if not template:
            return (folder / default).resolve()
        parts = template.split("*")
        text = parts[0] + "".join(c + rest for c, rest in zip(captured, parts[1:], strict=False))
        return (self.base_dir / text).resolve()

    def _origin(self, folder: Path) -> str | None:
        if self.resources is None:
            return None
        account = self.resources.sftp_account(folder)
        return None if account is None else f"sftp:{account}"

    def start(self) -> None:
        if not self.glob:
            for folder in (self.folder, self.processed, self.errors):
                folder.mkdir(parents=True, exist_ok=True)
        self.loop = task.LoopingCall(self._tick)
        self.loop.clock = self.reactor
        self.loop.start(self.options.poll_interval, now=True)
        if self.leases is not None and self.leases.coordination.shared:
            self.renewing = task.LoopingCall(self._renew)
            self.renewing.clock = self.reactor
            self.renewing.start(self.options.lease / 3, now=False)

    def _renew(self) -> defer.Deferred:
        """Keep this node's folders while a poll is busy with many files."""
        assert self.leases is not None
        d = defer.ensureDeferred(self.leases.renew())
        return d.addErrback(
            lambda f: log.failure("drop folder {c}: lease renewal failed", f, c=self.channel)
        )

    def _tick(self) -> None:
        if self._polling is None:
            self._polling = defer.ensureDeferred(self.poll())
            self._polling.addErrback(lambda f: log.failure("drop folder poll failed", f))
            self._polling.addBoth(self._done_polling)

    def _done_polling(self, _: Any) -> None:
        self._polling = None

    async def stop(self) -> None:
        if self.renewing is not None and self.renewing.running:
            self.renewing.stop()
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        while self._polling is not None:
            await self._polling
        if self.leases is not None:
            try:
                await self.leases.release()  # the next node need not wait for them to run out
            except Exception as e:
                log.warn(
                    "drop folder {channel}: leases not released ({e})", channel=self.channel, e=e
                )

    def lease_name(self, folder: Folder) -> str:
        """The name of ``folder``'s pickup lease: its path relative to the project root (the
        same on every node sharing the folders), absolute when outside it."""
        try:
            where = str(folder.path.relative_to(self.base_dir.resolve()))
        except ValueError:
            where = str(folder.path)
        return f"dropfolder:{where}"

    async def _held(self) -> list[Folder]:
        """The folders this node picks up from now (each of them while it holds its lease)."""
        pool = self.reactor.getThreadPool()
        folders = await threads.deferToThreadPool(self.reactor, pool, self.folders)
        if self.leases is None or not self.leases.coordination.shared:
            return folders
        held = await self.leases.held([self.lease_name(f) for f in folders])
        return [f for f in folders if self.lease_name(f) in held]

    def _ready(self, folders: list[Folder]) -> list[_Ready]:
        now = time.time()
        out: list[tuple[float, str, _Ready]] = []
        for folder in folders:
            try:
                it = os.scandir(folder.path)
            except FileNotFoundError:
                continue  # a glob's folder removed meanwhile, or not made yet
            with it:
                for entry in it:
                    name = entry.name
                    if name.startswith(".") or entry.path in self.inflight:
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
                    arrival = f"{name}:{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"
                    out.append((st.st_mtime, entry.path, _Ready(folder, name, arrival)))
        out.sort(key=lambda x: (x[0], x[1]))
        return [r for _, _, r in out[: self.options.batch]]

    async def poll(self) -> int:
        """List once and ingest every ready file; returns how many were taken."""
        folders = await self._held()
        ready = await threads.deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), self._ready, folders
        )
        pending = []
        for r in ready:
            self.inflight.add(str(r.path))
            pending.append(self._sem.run(lambda r=r: defer.ensureDeferred(self._take(r))))
        handed = await defer.gatherResults(pending, consumeErrors=True)
        uploads = [h for h in handed if h is not None]
        if uploads and self.coordination is not None and self.coordination.shared:
            await self.coordination.handed(uploads)
        return len(ready)

    async def _take(self, r: _Ready) -> tuple[str, str | None] | None:
        """Ingest one file and move it; returns ``(path, message id)`` when it was an SFTP
        account's upload, stored and moved (the upload registry records it as handed over)."""
        name, folder = r.name, r.folder
        try:
            path = r.path
            pool = self.reactor.getThreadPool()
            size = path.stat().st_size
            if size > self.options.max_file_size:
                reason = f"file is {size} bytes; the limit is {self.options.max_file_size}"
                await threads.deferToThreadPool(
                    self.reactor, pool, self._move_error, folder, name, reason
                )
                return
            raw = await threads.deferToThreadPool(self.reactor, pool, path.read_bytes)
            kw: dict[str, Any] = {"arrival": r.arrival}
            if folder.origin is not None:
                kw["origin"] = folder.origin
            outcome: IngestOutcome = await self.ingest(raw, name, **kw)
            if outcome.accepted:
                await threads.deferToThreadPool(
                    self.reactor, pool, self._move, folder, name, folder.processed
                )
                self.taken += 1
                if folder.origin is not None:
                    return (str(path), outcome.message_id)
            elif outcome.kind == "rejected":
                await threads.deferToThreadPool(
                    self.reactor, pool, self._move_error, folder, name, outcome.reason
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
            self.inflight.discard(str(r.path))
        return None

    def _move(self, folder: Folder, name: str, to: Path) -> Path:
        to.mkdir(parents=True, exist_ok=True)
        target = to / name
        if target.exists():
            target = to / f"{name}.{time.time_ns()}"
        os.replace(folder.path / name, target)
        return target

    def _move_error(self, folder: Folder, name: str, reason: str) -> None:
        target = self._move(folder, name, folder.errors)
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
