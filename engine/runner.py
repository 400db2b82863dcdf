"""``wharf run``: the engine under the real reactor, and the ``--demo`` walk-through."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

DEMO_PORT = 8089
BILLING_PORT = 2576
MLLP_SAMPLES = ("dft_p03_stent_cath.hl7", "dft_p03_latin1.hl7", "broken/unsupported_version.hl7")


def _start_logging() -> None:
    level = LogLevel.levelWithName(os.environ.get("WHARF_LOG_LEVEL", "info"))
    predicate = LogLevelFilterPredicate(defaultLogLevel=level)
    if level > LogLevel.debug:
        # Twisted's own factory start/stop and access-log lines drown the engine's.
        predicate.setLogLevelForNamespace("twisted", LogLevel.warn)
    observer = FilteringLogObserver(textFileLogObserver(sys.stdout), [predicate])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def run(args: argparse.Namespace) -> int:
    from twisted.internet import reactor

    from engine.errors import LintFailed
    from engine.service import Engine

    _start_logging()
    root: Path = args.root
    sandbox = None
    if args.demo and "ERP_URL" not in os.environ:
        from engine.sandbox.service import SandboxService

        sandbox = SandboxService(
            root / "var" / "sandbox.db",
            http_port=DEMO_PORT,
            mllp_port=BILLING_PORT,
            reactor=reactor,
            seed=root / "mappings" / "onhand.csv",
        )
        sandbox.start()
        print(
            f"demo: ERP and billing sandbox on http://127.0.0.1:{DEMO_PORT} and "
            f"mllp://127.0.0.1:{BILLING_PORT} (state in var/sandbox.db)"
        )
    try:
        engine = Engine(root, reactor)
    except LintFailed as exc:
        print(exc, file=sys.stderr)
        return 1
    exit_code = [0]

    async def main() -> None:
        await engine.start()
        print(
            f"wharf: running {len(engine.channels)} channel(s) from {root} "
            f"(store {engine.store.path}); Ctrl-C stops"
        )
        if args.demo:
            ok = await demo(engine, root, reactor, sandbox)
            exit_code[0] = 0 if ok else 1
            if args.exit_when_done:
                reactor.stop()

    async def shutdown() -> None:
        await engine.stop()
        if sandbox is not None:
            await sandbox.stop()

    reactor.addSystemEventTrigger("before", "shutdown", lambda: defer.ensureDeferred(shutdown()))

    def failed(f: Any) -> None:
        print(f"wharf: start failed: {f.getErrorMessage()}", file=sys.stderr)
        exit_code[0] = 1
        reactor.stop()

    reactor.callWhenRunning(lambda: defer.ensureDeferred(main()).addErrback(failed))
    reactor.run()
    return exit_code[0]


async def demo(engine: Any, root: Path, reactor: Any, sandbox: Any = None) -> bool:
    """Drop the shipped samples into each drop folder and report where each message went."""
    samples = sorted((root / "samples" / "hl7").glob("*.hl7"))
    broken = sorted((root / "samples" / "hl7" / "broken").glob("*.hl7"))
    targets = [
        (name, engine.sources[name].folder)
        for name in engine.sources
        if hasattr(engine.sources[name], "folder")
        and getattr(engine.channels.get(name), "codec_name", "") == "hl7v2"
    ]
    if not targets:
        print("demo: no drop-folder channel is running")
        return False
    started = time.time()
    dropped = []
    for _, folder in targets:
        for path in [*samples, *broken]:
            tmp = folder / f".{path.name}.part"
            shutil.copyfile(path, tmp)
            os.replace(tmp, folder / f"demo-{int(started)}-{path.name}")
            dropped.append(path.name)
        print(f"demo: dropped {len(samples) + len(broken)} sample(s) into {folder}")
    for name, src in engine.sources.items():
        if getattr(src, "answers", False) and getattr(src, "port", None) is not None:
            picks = [root / "samples/hl7" / n for n in MLLP_SAMPLES]
            await send_over_mllp(name, src.port.getHost().port, picks, reactor)
    deadline = time.time() + 60
    rows: list[Any] = []
    while time.time() < deadline:
        await task.deferLater(reactor, 0.5, lambda: None)
        rows = await engine.executor.submit(engine.store.search, since=started - 1, limit=1000)
        busy = [r for r in rows if r.status in ("received", "queued")]
        pending_files = any(
            p.name.startswith("demo-") for _, f in targets for p in f.iterdir() if p.is_file()
        )
        if not busy and not pending_files and rows:
            break
    print("demo: results")
    for r in sorted(rows, key=lambda r: r.received_at):
        deliveries = await engine.executor.submit(engine.store.deliveries_for, r.id)
        where = ", ".join(f"{d['destination']}={d['status']}" for d in deliveries) or "-"
        note = f"  ({r.error})" if r.error else ""
        print(f"  {r.channel:<12} {r.control_id or '-':<14} {r.status:<8} {where}{note}")
    for _, folder in targets:
        errors = sorted(p.name for p in (folder / "error").glob("*.reason.txt"))
        for name in errors:
            reason = (folder / "error" / name).read_text().strip()
            print(f"  {name.removesuffix('.reason.txt')}: refused at the door: {reason}")
    sent = sum(1 for r in rows if r.status == "sent")
    if sandbox is not None:
        await task.deferLater(reactor, 0.5, lambda: None)
        c = sandbox.state.counts()
        shown = ("issues", "issue_lines", "charges", "requisitions")
        print(
            "demo: the sandbox ERP/billing now holds "
            + ", ".join(f"{k} {c.get(k, 0)}" for k in shown)
        )
        for req in sandbox.state.requisitions():
            print(
                f"  requisition {req.get('id')}: {req.get('quantity')} {req.get('uom')} of "
                f"{req.get('item')} for {req.get('location')} "
                f"({req.get('reason')}, {req.get('status')})"
            )
    print(
        f"demo: {sent} message(s) delivered. Look at: `wharf messages`, var/out/, "
        "`wharf sandbox` state in var/sandbox.db. Drop more files into the inbox, or Ctrl-C."
    )
    return sent > 0


async def send_over_mllp(channel: str, port: int, paths: list[Path], reactor: Any) -> None:
    """Send a few samples to an MLLP listener, the way a hospital system would, and show the
    ACKs; the second send of the first sample shows a resend answered with the same ACK."""
    from twisted.internet import endpoints

    from engine.codecs.hl7v2 import tokenize
    from engine.destinations.mllp import MLLPClientProtocol

    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    client = await endpoints.connectProtocol(endpoint, MLLPClientProtocol())
    await client.ready
    print(f"demo: sending {len(paths) + 1} message(s) over MLLP to {channel} on port {port}")
    for path in [paths[0], *paths]:
        ack = tokenize(await client.send(path.read_bytes()))
        err = ack.get("ERR-8") or ack.get("MSA-3") or ""
        print(
            f"  {path.name:<34} -> MSA-1 {ack.get('MSA-1')} MSA-2 {ack.get('MSA-2') or '-'} "
            f"(ACK {ack.get('MSH-10')}) {err}"
        )
    client.transport.loseConnection()
