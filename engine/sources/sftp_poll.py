"""``sftp_poll`` source: collect files from a partner's own SFTP server.

Each poll connects (host key checked against ``known_hosts`` and/or a pinned
``host_key_fingerprint``: one of the two is required, nothing is trusted on first use), lists
``remote_dir`` and takes a file only when it is complete:

* its size and mtime are the same as in the previous listing (so a file is never taken on the
  listing that first shows it), and
* its mtime is at least ``min_age`` old.

The bytes go to the store; only after the commit is the remote file deleted (``after: delete``)
or renamed into ``move_to`` (``after: move``). A crash between the commit and the delete leaves
the file remote: the next poll ingests it again and the store answers it as a duplicate. A file
the codec refuses is moved to ``error_dir`` when set, else left and skipped while unchanged.
Remote names are never used as local paths (nothing is written locally; the name is only the
ingest's peer label).

When the server is down, polls back off (``backoff_initial`` doubling up to ``backoff_max``); if
it stays down longer than ``alert_after``, ``log.error`` fires once for that outage, naming the
partner and how long it has been down.

Several nodes on one PostgreSQL store running the same channel poll the partner one at a time:
the node holding the remote folder's lease (``resources.coordination``, renewed while it polls;
another node takes it over once ``lease`` ran out) polls, the others skip their turn.
"""

from __future__ import annotations

import fnmatch
import time
from pathlib import Path
from typing import Any

from twisted.conch.ssh.filetransfer import SFTPError
from twisted.internet import defer
from twisted.logger import Logger

from engine.coordination import Leases
from engine.net.sftp import Outage, SftpSession, connect, connection_fields, remote_of
from engine.registry import source
from engine.resources import Resources
from engine.sources import Ingest
from engine.spec import ByteSize, Context, Duration, Enum, Field, Int, Spec, Str, join

log = Logger(namespace="wharf.source.sftp_poll")


def _check(config: Any, ctx: Context, node: Any, path: str) -> None:
    if not config.known_hosts and not config.host_key_fingerprint:
        ctx.error(
            node,
            join(path, "known_hosts"),
            "set known_hosts or host_key_fingerprint: the server's host key must be known "
            "in advance (there is no trust on first use)",
        )
    if config.after == "move" and not config.move_to:
        ctx.error(node, join(path, "move_to"), "required when after is 'move'")


SFTP_POLL_SPEC = Spec(
    "sftp_poll",
    [
        *connection_fields(),
        Field("pattern", Str(), "*", "Glob of remote file names to take."),
        Field("poll_interval", Duration(lo=0.05), 30.0, "How often to list the remote folder."),
        Field("min_age", Duration(), 30.0, "Take a file only when its mtime is this old."),
        Field("after", Enum("delete", "move"), "delete", "What to do remotely after the commit."),
        Field("move_to", Str(), None, "Remote folder for `after: move`."),
        Field("error_dir", Str(), None, "Remote folder for refused files (default: leave)."),
        Field("max_file_size", ByteSize(), 10 * 1024 * 1024, "Bigger files are not taken."),
        Field("batch", Int(1, 100000), 100, "Most files taken in one poll."),
        Field("backoff_initial", Duration(lo=0.01), 1.0, "First delay after a failed poll."),
        Field("backoff_max", Duration(lo=0.01), 300.0, "Longest delay between failed polls."),
        Field(
            "lease",
            Duration(lo=0.5),
            60.0,
            "Several nodes on one PostgreSQL store: how long one node holds this remote "
            "folder's polls (renewed while it polls); another node takes over once it ran out.",
        ),
    ],
    description=(
        "Polls a partner's SFTP server. A file is taken when unchanged across two listings and "
        "older than `min_age`; it is deleted or moved remotely only after the store's commit."
    ),
    example="""source:
  sftp_poll:
    host: sftp.acme.com
    user: wharf
    private_key: keys/acme_id_ed25519
    known_hosts: keys/acme_known_hosts
    remote_dir: /outbound
    after: move
    move_to: /outbound/done""",
    check=_check,
)


class SftpPollSource:
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
        self.reactor = reactor
        self.channel = channel
        self.ingest = ingest
        self.remote = remote_of(options, base_dir)
        self.dir = options.remote_dir.rstrip("/") or "/"
        self.what = f"sftp_poll {channel} ({options.user}@{options.host}:{options.port}{self.dir})"
        self.outage = Outage(
            self.what, options.alert_after, options.backoff_initial, options.backoff_max
        )
        self.previous: dict[str, tuple[int, int]] = {}
        self.refused: dict[str, tuple[int, int]] = {}
        self.taken = 0
        coordination = resources.coordination if resources is not None else None
        self.leases = Leases(coordination, options.lease, reactor) if coordination else None
        self.lease_name = f"sftp_poll:{options.user}@{options.host}:{options.port}{self.dir}"
        self._call: Any = None
        self._polling: defer.Deferred | None = None
        self._stopped = False

    def start(self) -> None:
        self._stopped = False
        self._schedule(0)

    def _schedule(self, delay: float) -> None:
        if not self._stopped:
            self._call = self.reactor.callLater(delay, self._tick)

    def _tick(self) -> None:
        self._call = None
        self._polling = defer.ensureDeferred(self._poll_and_delay())
        self._polling.addErrback(lambda f: log.failure("{what}: poll failed", f, what=self.what))

        def done(_: Any) -> None:
            self._polling = None

        self._polling.addBoth(done)

    async def _poll_and_delay(self) -> None:
        try:
            await self.poll()
        except Exception as e:
            delay = self.outage.failed(str(e) or type(e).__name__)
        else:
            self.outage.ok()
            delay = self.options.poll_interval
        self._schedule(delay)

    async def stop(self) -> None:
        self._stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        while self._polling is not None:
            await self._polling
        if self.leases is not None:
            try:
                await self.leases.release()
            except Exception as e:
                log.warn("{what}: lease not released ({e})", what=self.what, e=e)

    def _path(self, name: str) -> str:
        return f"{self.dir}/{name}" if self.dir != "/" else f"/{name}"

    async def poll(self) -> int:
        """Connect, list once and ingest every complete file; returns how many were taken.
        Raises when the server cannot be reached or listed. Another node sharing the store
        holding this remote's lease: nothing is done (0)."""
        if self.leases is not None and self.lease_name not in await self.leases.held(
            [self.lease_name]
        ):
            self.previous = {}  # the holder takes files meanwhile: list twice again once ours
            return 0
        session = await connect(self.reactor, self.remote)
        try:
            return await self._poll(session)
        finally:
            session.close()

    async def _poll(self, session: SftpSession) -> int:
        o = self.options
        listing = await session.listdir(self.dir)
        now = time.time()
        current: dict[str, tuple[int, int]] = {}
        for name, attrs in listing:
            if name.startswith(".") or not fnmatch.fnmatch(name, o.pattern):
                continue
            current[name] = (int(attrs.get("size", -1)), int(attrs.get("mtime", 0)))
        ready = [
            name
            for name, sig in sorted(current.items(), key=lambda kv: (kv[1][1], kv[0]))
            if self.previous.get(name) == sig
            and now - sig[1] >= o.min_age
            and self.refused.get(name) != sig
        ][: o.batch]
        self.previous = current
        self.refused = {n: s for n, s in self.refused.items() if current.get(n) == s}
        taken = 0
        for name in ready:
            size, _ = current[name]
            path = self._path(name)
            if size > o.max_file_size:
                await self._refuse(session, name, f"{size} bytes; the limit is {o.max_file_size}")
                continue
            raw = await session.read(path, o.max_file_size)
            if len(raw) != size:
                continue  # changed while we read: the next listings decide again
            peer = f"sftp://{o.user}@{o.host}:{o.port}{path}"
            # a retake after a crash is the same arrival (same name, size and mtime)
            outcome = await self.ingest(raw, peer, arrival=f"{name}:{size}:{current[name][1]}")
            if outcome.accepted:
                try:
                    if o.after == "move":
                        await session.rename_over(path, f"{o.move_to.rstrip('/')}/{name}")
                    else:
                        await session.remove(path)
                except SFTPError as e:
                    # committed: the next poll takes it again and the store answers duplicate
                    log.warn(
                        "{what}: {file} is stored but could not be {done} remotely ({error})",
                        what=self.what,
                        file=name,
                        done="moved" if o.after == "move" else "deleted",
                        error=str(e),
                    )
                self.previous.pop(name, None)
                taken += 1
            elif outcome.kind == "rejected":
                await self._refuse(session, name, outcome.reason)
            else:
                log.warn(
                    "{what}: {file} left for the next poll ({reason})",
                    what=self.what,
                    file=name,
                    reason=outcome.reason,
                )
        self.taken += taken
        return taken

    async def _refuse(self, session: SftpSession, name: str, reason: str) -> None:
        o = self.options
        if o.error_dir:
            await session.rename_over(self._path(name), f"{o.error_dir.rstrip('/')}/{name}")
            log.warn(
                "{what}: {file} moved to {dir}: {reason}",
                what=self.what,
                file=name,
                dir=o.error_dir,
                reason=reason,
            )
        else:
            self.refused[name] = self.previous.get(name, (-1, -1))
            log.warn(
                "{what}: {file} refused and left in place: {reason}",
                what=self.what,
                file=name,
                reason=reason,
            )


#: The source is its own factory: the runtime reads the keywords it takes from ``__init__``.
source("sftp_poll", SFTP_POLL_SPEC)(SftpPollSource)
