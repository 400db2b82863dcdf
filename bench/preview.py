"""Impact preview benchmark: stored messages previewed per second, against the live pipeline's
messages per second on the same messages in the same run.

Live: the Engine runs in-process under the real reactor with the shipped ``usage_ledger``
channel (its destinations made ``file`` destinations, so that nothing leaves the machine); N
DFT^P03 messages with 2 FT1 lines each go in through the front door (ingest commit, pipeline,
ledger booking, one commit per batch), and the clock stops when every delivery is done.
Preview: ``engine.preview`` replays the N stored messages through the live configuration and
through a candidate (one CDM price changed), each in its own throw-away store, and compares
them (payload diffs and business totals). A preview processes every message twice; its rate
counts each message once, as a user sees it ("N messages previewed in S seconds").

    python bench/preview.py [--messages 1000]

Prints both rates and the ratio preview / live (issue 16's target: at least 0.5).
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from twisted.internet import defer, reactor, task  # noqa: E402

from engine.config.project import load_project  # noqa: E402
from engine.config.store_path import store_path  # noqa: E402
from engine.preview.impact import preview  # noqa: E402
from engine.preview.replay import read_stored  # noqa: E402
from engine.runtime import Engine  # noqa: E402
from tests.integration.preview_corpus import usage_corpus  # noqa: E402

ROW = "272100049,ITEM-160004,FOLEY CATHETER TRAY 14F,0272,,,EA,{},"  # the Foley tray's price


def make_project(base: Path) -> Path:
    root = base / "live"
    (root / "channels").mkdir(parents=True)
    shutil.copytree(ROOT / "mappings", root / "mappings")
    text = (ROOT / "channels/usage_ledger.yaml").read_text().split("\ntests:")[0]
    text = re.sub(r"    http: \{url: '[^']*/(\w+)'\}\n", r"    file: {dir: out/\1}\n", text)
    text = re.sub(
        r"    mllp:\n      host: [^\n]*\n      port: [^\n]*\n",
        "    file: {dir: out/billing}\n",
        text,
    )
    text = re.sub(r"  mllp:\n    listen: [^\n]*\n", "  dropfolder: {path: in}\n", text, count=1)
    (root / "channels/usage_ledger.yaml").write_text(text)
    (root / "routes.yaml").write_text("store: var/wharf.db\nreload_interval: 0\n")
    return root


async def run_live(root: Path, n: int) -> float:
    engine = Engine(root, reactor)
    await engine.start()
    corpus = usage_corpus(n)
    started = time.perf_counter()
    try:
        for start in range(0, n, 50):  # 50 senders' worth at a time
            await defer.gatherResults(
                [
                    defer.ensureDeferred(engine.ingest("usage_ledger", raw, "bench", answers=True))
                    for _, raw, _ in corpus[start : start + 50]
                ]
            )
        while True:
            c = await engine.executor.submit(engine.store.counts)
            busy = c["messages"].get("received", 0) + c["messages"].get("queued", 0)
            if (
                not busy
                and not c["deliveries"].get("pending")
                and not c["deliveries"].get("inflight")
            ):
                break
            await task.deferLater(reactor, 0.02, lambda: None)
        return time.perf_counter() - started
    finally:
        await engine.stop()


def run_preview(root: Path, base: Path) -> tuple[float, Any]:
    cand = base / "candidate"
    shutil.copytree(root, cand, ignore=shutil.ignore_patterns("var", "out", "in"))
    cdm = cand / "mappings/charge_codes.csv"
    cdm.write_text(cdm.read_text().replace(ROW.format("44.00"), ROW.format("47.50")))
    started = time.perf_counter()
    messages = read_stored(store_path(root))
    impact = preview(load_project(root), load_project(cand), messages)
    return time.perf_counter() - started, impact


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=1000)
    args = p.parse_args()
    base = Path(tempfile.mkdtemp(prefix="wharf-bench-preview-"))
    result: dict[str, Any] = {}

    async def go() -> None:
        try:
            root = make_project(base)
            result["live"] = await run_live(root, args.messages)
            result["preview"], result["impact"] = run_preview(root, base)
        finally:
            reactor.stop()

    reactor.callWhenRunning(lambda: defer.ensureDeferred(go()).addErrback(print))
    reactor.run()
    shutil.rmtree(base, True)
    n = args.messages
    live, prev = n / result["live"], n / result["preview"]
    impact = result["impact"]
    print(f"live pipeline: {n} messages in {result['live']:.2f}s = {live:.0f} messages/s")
    print(
        f"preview:       {n} messages in {result['preview']:.2f}s = {prev:.0f} messages/s "
        f"({impact.outputs_compared} outputs compared, {len(impact.outputs)} changed)"
    )
    print(f"ratio preview / live: {prev / live:.2f} (target >= 0.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
