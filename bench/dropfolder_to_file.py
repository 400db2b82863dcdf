"""Benchmark: drop folder -> hl7v2 codec -> hl7_usage_to_issue -> one file destination.

Builds a throw-away project in a temporary folder (routes.yaml, mappings/ and samples/ copied
from the repository, plus its own channel), writes N distinct DFT^P03 files (MSH-10 and FT1-2
vary), and measures in the same run, on the same files:

* the floor: a plain Python loop that reads each file and writes a copy into another folder,
  fsyncing each copy (the file destination fsyncs each file too);
* Wharf: the Engine, in-process under the real Twisted reactor, from ``start()`` until every
  message is ``sent`` (the store's counts are polled through the store executor).

Usage::

    .venv/bin/python bench/dropfolder_to_file.py [--files N] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "samples/hl7/dft_p03_screw.hl7"

CHANNEL_YAML = """\
description: benchmark channel (drop folder -> hl7v2 -> hl7_usage_to_issue -> file)
source:
  dropfolder:
    path: inbox
    min_age: 0s
    poll_interval: 50ms
codec:
  hl7v2: {}
transformer:
  - transform: hl7_usage_to_issue
    items: items
    locations: locations
destinations:
  - name: out
    file:
      dir: out
"""


def build_project(root: Path) -> None:
    """routes.yaml, mappings/ and samples/ from the repository; one benchmark channel."""
    shutil.copy(REPO / "routes.yaml", root / "routes.yaml")
    shutil.copytree(REPO / "mappings", root / "mappings")
    shutil.copytree(REPO / "samples", root / "samples")
    (root / "channels").mkdir()
    (root / "channels" / "bench.yaml").write_text(CHANNEL_YAML, encoding="utf-8")


def write_messages(folder: Path, n: int) -> int:
    """N distinct DFT^P03 files (MSH-10 and FT1-2 differ); returns the total bytes."""
    template = SAMPLE.read_bytes()
    for old in (b"POU-000123", b"CU-7f3a9c"):
        if old not in template:
            raise SystemExit(f"{SAMPLE} no longer contains {old!r}; update the benchmark")
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for i in range(n):
        data = template.replace(b"POU-000123", b"BENCH-%07d" % i).replace(
            b"CU-7f3a9c", b"U-%07d" % i
        )
        (folder / f"msg-{i:07d}.hl7").write_bytes(data)
        total += len(data)
    return total


def copy_loop(src: Path, dst: Path) -> tuple[int, float]:
    """The floor: read each file, write a copy, fsync it. Returns (files, seconds)."""
    dst.mkdir(parents=True, exist_ok=True)
    names = sorted(os.listdir(src))
    t0 = time.perf_counter()
    for name in names:
        data = (src / name).read_bytes()
        with open(dst / name, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return len(names), time.perf_counter() - t0


async def run_wharf(reactor: Any, root: Path, n: int, timeout: float) -> dict[str, Any]:
    """Start the Engine on ``root`` and wait until ``n`` messages are sent."""
    from twisted.internet import task

    from engine.runtime import Engine

    engine = Engine(root, reactor)
    t0 = time.perf_counter()
    await engine.start()
    started = time.perf_counter() - t0
    counts: dict[str, Any] = {}
    try:
        while True:
            counts = await engine.executor.submit(engine.store.counts)
            messages = counts["messages"]
            if messages.get("sent", 0) >= n:
                break
            if messages.get("error") or counts["dead_letters"]:
                raise RuntimeError(f"benchmark messages failed: {counts}")
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"timed out after {timeout:.0f}s: {counts}")
            await task.deferLater(reactor, 0.05, lambda: None)
        elapsed = time.perf_counter() - t0
    finally:
        await engine.stop()
    return {
        "elapsed": elapsed,
        "startup": started,
        "counts": counts,
        "batches": engine.executor.batches,
        "ingested": engine.executor.ingested,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=2000, help="number of messages (2000)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary project")
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="give up on Wharf after this many seconds"
    )
    args = parser.parse_args(argv)
    if args.files < 1:
        parser.error("--files must be at least 1")

    tmp = Path(tempfile.mkdtemp(prefix="wharf-bench-"))
    root = tmp / "project"
    root.mkdir()
    os.environ["WHARF_DB"] = str(tmp / "wharf.db")
    try:
        build_project(root)
        staging = tmp / "staging"
        size = write_messages(staging, args.files)
        print(f"{args.files} DFT^P03 files, {size / args.files:.0f} bytes each, in {tmp}")

        files, copy_s = copy_loop(staging, tmp / "copy")

        inbox = root / "inbox"
        inbox.mkdir()
        for name in os.listdir(staging):  # same file system: renames, nothing is rewritten
            os.replace(staging / name, inbox / name)

        from twisted.internet import defer, task
        from twisted.logger import (
            FilteringLogObserver,
            LogLevel,
            LogLevelFilterPredicate,
            globalLogBeginner,
            textFileLogObserver,
        )

        warnings = FilteringLogObserver(
            textFileLogObserver(sys.stderr),
            [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)],
        )
        globalLogBeginner.beginLoggingTo([warnings], redirectStandardIO=False)
        result: dict[str, Any] = {}

        def go(reactor: Any) -> defer.Deferred:
            async def body() -> None:
                result.update(await run_wharf(reactor, root, args.files, args.timeout))

            return defer.ensureDeferred(body())

        try:
            task.react(go)
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise

        written = len(list((root / "out").glob("*.json")))
        processed = len(os.listdir(inbox / "processed"))
        if written != args.files or processed != args.files:
            print(f"expected {args.files} outputs, got {written} files and {processed} processed")
            return 1

        wharf_rate = args.files / result["elapsed"]
        copy_rate = files / copy_s
        print()
        print(
            f"Wharf  dropfolder -> hl7v2 -> hl7_usage_to_issue -> file: {args.files} messages "
            f"in {result['elapsed']:.2f} s = {wharf_rate:,.0f} messages/s "
            f"(engine start {result['startup'] * 1000:.0f} ms; {result['batches']} ingest "
            f"commits for {result['ingested']} messages)"
        )
        print(
            f"floor  copy loop (read + write + fsync per file, no temp/rename/dir fsync): "
            f"{files} files in {copy_s:.2f} s = {copy_rate:,.0f} files/s"
        )
        print(f"ratio  Wharf / copy = {wharf_rate / copy_rate:.3f}")
        print(
            "Wharf per message: read + SQLite commit of the raw bytes (group commit, "
            "synchronous=FULL), pipeline commit, transform, file destination "
            "(temp file + fsync + rename + dir fsync), outbox commit, move to processed/."
        )
        return 0
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
