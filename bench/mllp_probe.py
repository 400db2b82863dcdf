"""Where a durable MLLP ACK's time goes: timestamps on the hand-offs between a frame and its ACK.

``wharf run`` (the codec-only ``after_store`` channel of ``bench/mllp_ack.py``) runs in a
subprocess of this script with a probe: a few methods wrapped to note ``time.perf_counter()``
at each step (the probe lives here only; the engine carries no instrumentation). N senders
(default 1, the sequential sender) send DFT^P03 messages for ``--seconds``; at the engine's exit
the notes are read back and, for the sequential sender, every frame's steps up to its ACK are
laid end to end:

    frame          the MLLP frame is complete (reactor thread)
    ingest         the front door hands the message to the store executor (reactor)
    wake:...       the writer thread took a turn: N ingests (i) and M merged jobs (j)
    record         a pipeline result is being recorded in that turn (writer)
    precommitD/N   the turn's work is done; COMMIT with fsync (D) or without (N) begins
    committed      the COMMIT returned (writer)
    fireN          the reactor fires the turn's N Deferreds (reactor)
    ack            the ACK is written to the socket (reactor)
    pool_start/end the pipeline thread processes a batch; submit_merged hands its result over

It prints the commonest step sequences and, for each pair of consecutive steps, the p50 and
mean gap and the total time spent in it, beside the fsync'd-commit ceiling measured in the same
run. The gaps say which hand-off (reactor -> writer wake-up, writer -> reactor callFromThread,
the commit itself, the pipeline's turn ahead of an ingest) costs what.

    python bench/mllp_probe.py [--seconds 3] [--senders 1]
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from baselines import commit_ceiling  # noqa: E402
from mllp_ack import CHANNEL, free_port, load, pct, wait_port  # noqa: E402


def serve(argv: list[str]) -> int:
    """(The subprocess) ``wharf`` with the probe; the notes go to $WHARF_PROBE_OUT at exit."""
    import atexit

    from engine.cli import main
    from engine.net import mllp
    from engine.runtime import processor
    from engine.store import executor, sqlite

    notes: list[tuple[float, str]] = []
    clock = time.perf_counter

    def note(name: str) -> None:
        notes.append((clock(), name))

    def before(cls: Any, attr: str, name: str) -> None:
        original = getattr(cls, attr)

        def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
            note(name(self, *args) if callable(name) else name)
            return original(self, *args, **kwargs)

        setattr(cls, attr, wrapped)

    before(mllp.MLLPProtocol, "_complete", "frame")
    before(executor.StoreExecutor, "ingest", "ingest")
    before(executor.StoreExecutor, "submit_merged", "submit_merged")
    before(executor.StoreExecutor, "_fire", lambda self, fired: f"fire{len(fired)}")
    flush = mllp.MLLPProtocol._flush

    def _flush(self: Any) -> None:
        if self.pending and self.pending[0].done:
            note("ack")
        flush(self)

    mllp.MLLPProtocol._flush = _flush  # type: ignore[method-assign]
    next_work = executor.StoreExecutor._next_work

    def _next_work(self: Any) -> Any:
        work = next_work(self)
        if work is not None:
            note(f"wake:{work[0]}:{len(work[1])}i{len(work[2])}j")
        return work

    executor.StoreExecutor._next_work = _next_work  # type: ignore[method-assign]
    turn = sqlite.SqliteStore.turn

    @contextmanager
    def _turn(self: Any, durable: bool) -> Any:
        with turn(self, durable):
            yield
            note("precommitD" if durable else "precommitN")
        note("committed")

    sqlite.SqliteStore.turn = _turn  # type: ignore[method-assign]
    process_all, record = processor._process_all, processor.record

    def _process_all(jobs: Any) -> Any:
        note("pool_start")
        try:
            return process_all(jobs)
        finally:
            note("pool_end")

    def _record(*args: Any, **kwargs: Any) -> Any:
        note("record")
        return record(*args, **kwargs)

    processor._process_all, processor.record = _process_all, _record

    def dump() -> None:
        Path(os.environ["WHARF_PROBE_OUT"]).write_text(json.dumps(notes))

    atexit.register(dump)
    return main(argv)


def timeline(notes: list[tuple[float, str]]) -> tuple[collections.Counter, dict]:
    """Each frame's steps up to its ACK (the first quarter is warm-up and left out): the step
    sequences counted, and the gaps between consecutive steps in microseconds."""
    sequences: collections.Counter = collections.Counter()
    gaps: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    frames = [i for i, (_, name) in enumerate(notes) if name == "frame"]
    start = len(frames) // 4
    for a, b in zip(frames[start:], [*frames[start + 1 :], len(notes)], strict=True):
        steps = notes[a:b]
        ack = next((i for i, (_, name) in enumerate(steps) if name == "ack"), None)
        if ack is None:
            continue
        steps = steps[: ack + 1]
        sequences[" ".join(name for _, name in steps)] += 1
        for (t1, n1), (t2, n2) in itertools.pairwise(steps):
            gaps[(n1, n2)].append((t2 - t1) * 1e6)
        gaps[("FRAME", "ACK")].append((steps[-1][0] - steps[0][0]) * 1e6)
    return sequences, gaps


async def main(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="wharf-probe-"))
    try:
        ceiling, commit_ms = commit_ceiling(tmp)
        project = tmp / "project"
        (project / "channels").mkdir(parents=True)
        port = free_port()
        (project / "routes.yaml").write_text("store: var/wharf.db\nreload_interval: 0\n")
        (project / "channels/mllp_bench.yaml").write_text(CHANNEL.format(port=port))
        out = tmp / "notes.json"
        env = {**os.environ, "WHARF_LOG_LEVEL": "warn", "WHARF_PROBE_OUT": str(out)}
        cmd = [sys.executable, __file__, "--serve", "--root", str(project), "run"]
        with open(tmp / "wharf.log", "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)
        try:
            wait_port(port)
            await load(port, args.senders, 0.5)  # warm-up
            elapsed, latencies = await load(port, args.senders, args.seconds)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        sequences, gaps = timeline(json.loads(out.read_text()))
        p50 = pct(latencies, 0.5)
        print(
            f"MLLP ACK probe: {args.senders} sender(s), {args.seconds:g} s, "
            f"{len(latencies) / elapsed:,.0f} msg/s, ACK p50 {p50:.2f} ms at the client"
        )
        print(
            f"commit ceiling, same run: {ceiling:,.0f} commits/s, {commit_ms:.3f} ms per "
            f"commit; ACK p50 = {p50 / commit_ms:.1f} commits"
        )
        print("commonest step sequences from a frame to its ACK (engine side):")
        for sequence, count in sequences.most_common(args.sequences):
            print(f"  {count:6d}  {sequence}")
        print(
            f"{'from':>16} -> {'to':<16} {'count':>6} {'p50 us':>8} {'mean us':>8} {'total ms':>9}"
        )
        for (a, b), values in sorted(gaps.items(), key=lambda kv: -sum(kv[1]))[: args.gaps]:
            print(
                f"{a:>16} -> {b:<16} {len(values):>6} {statistics.median(values):>8.1f} "
                f"{statistics.mean(values):>8.1f} {sum(values) / 1000:>9.1f}"
            )
        print(
            "gaps are per frame (a frame's steps up to its ACK); total = the time all frames "
            "spent in that gap. With more than one sender the frames' steps interleave and the "
            "gaps are only indicative."
        )
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        sys.exit(serve(sys.argv[2:]))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--senders", type=int, default=1)
    p.add_argument("--sequences", type=int, default=6, help="step sequences to print")
    p.add_argument("--gaps", type=int, default=16, help="gaps to print")
    p.add_argument("--keep", action="store_true")
    task.react(lambda _r: defer.ensureDeferred(main(p.parse_args())))
