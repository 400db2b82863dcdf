"""Benchmark: OpenSSH ``sftp`` upload -> Wharf's SFTP server -> drop folder pickup -> commit.

For 1 KB files and for 1 MB files, in the same run and with the same ``sftp -b`` batch:

* Wharf: SftpServerService + an Engine (in-process, real reactor) whose channel has a
  ``dropfolder`` source on the partner's ``inbound/`` (``min_age: 0``, ``poll_interval: 50ms``,
  codec ``raw``, no destination). Timed from the start of ``sftp`` until every file is in
  ``archive/`` (moved there only after the store's commit). The upload alone (until ``sftp``
  exits) is reported too.
* OpenSSH: a throwaway ``sshd`` with ``internal-sftp`` on a loopback port receiving the same
  files; timed until ``sftp`` exits (no pickup: this is the transport floor).

Reported: files per second and MB/s for each, and the ratio Wharf / OpenSSH.

Usage::

    .venv/bin/python bench/sftp_pickup.py [--small N] [--large N] [--keep]
"""

from __future__ import annotations

import argparse
import getpass
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from twisted.internet import defer, reactor, task, threads  # noqa: E402

from engine.runtime import Engine  # noqa: E402
from engine.sftp.config import parse_server_config  # noqa: E402
from engine.sftp.service import SftpServerService  # noqa: E402
from tests.integration.sftp_helpers import (  # noqa: E402
    OpenSshServer,
    keygen,
    known_hosts_line,
    missing_openssh,
    sftp_batch_sync,
)

CHANNEL = """\
source:
  dropfolder:
    path: {root}/inbound
    processed_dir: {root}/archive
    error_dir: {root}/error
    min_age: 0s
    poll_interval: 50ms
    batch: 1000
    max_file_size: 2MiB
codec:
  raw: {{max_size: 2MiB}}
"""


def make_files(folder: Path, count: int, size: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        p = folder / f"f{i:05d}.dat"
        p.write_bytes(os.urandom(size))  # distinct content: no dedup shortcut
        out.append(p)
    return out


def batch_for(files: list[Path], remote_dir: str) -> list[str]:
    return [f"cd {remote_dir}"] + [f"put {f} {f.name}" for f in files]


async def run_wharf(
    base: Path, key: Path, pub: str, label: str, files: list[Path]
) -> dict[str, float]:
    work = base / f"wharf-{label}"
    project = work / "project"
    (project / "channels").mkdir(parents=True)
    partner = work / "partners/acme"
    (project / "routes.yaml").write_text("store: var/wharf.db\nreload_interval: 0\n")
    (project / "channels/acme_in.yaml").write_text(CHANNEL.format(root=partner))
    engine = Engine(project, reactor)
    await engine.start()
    config = parse_server_config(
        {
            "listen": "tcp:0:interface=127.0.0.1",
            "host_key": str(work / "host_key"),
            "partners": [
                {
                    "name": "acme",
                    "root": str(partner),
                    "authorized_keys": [pub],
                    "quota_files": 100000,
                    "quota_bytes": "10GiB",
                }
            ],
        }
    )

    def audit(actor: str, action: str, target: str, detail: dict) -> Any:
        return engine.executor.submit(
            engine.store.audit, actor, action, target, detail, time.time()
        )

    service = SftpServerService(config, root=work, reactor=reactor, audit=audit)
    await service.start()
    known = work / "known_hosts"
    known.write_text(known_hosts_line(service.port, (work / "host_key.pub").read_text()))
    started = time.perf_counter()
    result = await threads.deferToThread(
        sftp_batch_sync,
        batch_for(files, "/inbound"),
        port=service.port,
        user="acme",
        key=key,
        known_hosts=known,
        timeout=600,
    )
    uploaded = time.perf_counter() - started
    if result.rc != 0:
        raise RuntimeError(f"sftp to Wharf failed: {result.err}")
    archive = partner / "archive"
    while len(os.listdir(archive)) < len(files):
        if time.perf_counter() - started > 600:
            raise RuntimeError("pickup did not finish")
        await task.deferLater(reactor, 0.01, lambda: None)
    total = time.perf_counter() - started
    # not timed: let the pipeline finish the stored messages before stopping the engine
    while True:
        counts = await engine.executor.submit(engine.store.counts)
        if not counts["messages"].get("received"):
            break
        await task.deferLater(reactor, 0.05, lambda: None)
    await service.stop()
    await engine.stop()
    return {"upload": uploaded, "total": total}


def run_openssh(base: Path, key: Path, pub: str, label: str, files: list[Path]) -> float:
    work = base / f"openssh-{label}"
    sshd = OpenSshServer(work / "sshd", pub)
    sshd.start()
    try:
        target = work / "inbound"
        target.mkdir()
        known = sshd.known_hosts(work / "known_hosts")
        started = time.perf_counter()
        result = sftp_batch_sync(
            batch_for(files, str(target)),
            port=sshd.port,
            user=getpass.getuser(),
            key=key,
            known_hosts=known,
            timeout=600,
        )
        elapsed = time.perf_counter() - started
        if result.rc != 0:
            raise RuntimeError(f"sftp to OpenSSH failed: {result.err}")
        assert len(os.listdir(target)) == len(files)
        return elapsed
    finally:
        sshd.stop()


async def main(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="wharf-bench-sftp-"))
    try:
        key, pub = keygen(base / "id")
        rows = []
        for label, count, size in (("1KB", args.small, 1024), ("1MB", args.large, 1024 * 1024)):
            files = make_files(base / f"src-{label}", count, size)
            openssh = await threads.deferToThread(run_openssh, base, key, pub, label, files)
            wharf = await run_wharf(base, key, pub, label, files)
            rows.append((label, count, size, wharf, openssh))
        print(
            f"{'size':>5} {'files':>6} | {'Wharf upload+pickup+commit':>28} | "
            f"{'Wharf upload only':>18} | {'OpenSSH sshd':>14} | ratio"
        )
        for label, count, size, wharf, openssh in rows:
            fps_w = count / wharf["total"]
            fps_u = count / wharf["upload"]
            fps_o = count / openssh
            mb_w = count * size / 1e6 / wharf["total"]
            print(
                f"{label:>5} {count:>6} | {fps_w:9.1f} files/s {mb_w:8.1f} MB/s | "
                f"{fps_u:9.1f} files/s | {fps_o:8.1f} files/s | {fps_w / fps_o:5.2f}"
            )
    finally:
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=500, help="number of 1 KB files")
    parser.add_argument("--large", type=int, default=50, help="number of 1 MB files")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ns = parser.parse_args()
    reason = missing_openssh()
    if reason:
        sys.exit(reason)
    if not shutil.which("sftp"):
        sys.exit("needs the sftp client: apt-get install openssh-client")
    exit_code = 0

    def done(result: Any) -> None:
        global exit_code
        if isinstance(result, Exception) or hasattr(result, "printTraceback"):
            result.printTraceback(file=sys.stderr)
            exit_code = 1
        reactor.stop()

    def go() -> None:
        d = defer.ensureDeferred(main(ns))
        d.addBoth(done)

    reactor.callWhenRunning(go)
    reactor.run()
    sys.stdout.flush()
    sys.stderr.flush()
    # Engine.stop() can leave a non-daemon "PoolThread-wharf-pipeline" thread behind after a
    # few hundred messages, which keeps the interpreter from exiting: leave without joining it.
    os._exit(exit_code)
