"""Run every benchmark in bench/ and write docs/benchmarks.md: the machine, the date, and each
benchmark's figures and same-run ratios as it printed them.

    python bench/run_all.py [--out docs/benchmarks.md] [--quick] [--only mllp_ack,fhir_http]

Each benchmark runs in its own process, one after the other (they share the machine's cores
with their own load generators, so running two at once would measure neither). ``--quick``
passes shorter settings where a benchmark has them (a smoke run, not figures to publish). A
benchmark that fails is reported as failed in the file, with its last lines, and the run goes
on; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: (script, what it measures, full arguments, quick arguments)
BENCHMARKS: list[tuple[str, str, list[str], list[str]]] = [
    (
        "mllp_ack",
        "MLLP durable ACK (codec-only channel, after_store) against bare Twisted and the durable "
        "floor, with the fsync'd-commit ceiling and the sequential sender",
        ["--seconds", "5", "--senders", "1,8,32"],
        ["--seconds", "1", "--senders", "1,8"],
    ),
    (
        "ledger_flow",
        "usage -> stock issue + charge end to end (shipped usage_ledger channel, sandbox), "
        "8 senders, against the core pipeline and bare Twisted MLLP",
        ["--messages", "600"],
        ["--messages", "60"],
    ),
    (
        "ledger_flow",
        "the same, one sequential sender",
        ["--messages", "300", "--senders", "1"],
        ["--messages", "30", "--senders", "1"],
    ),
    (
        "fhir_http",
        "FHIR SupplyDelivery POST accepted and end to end, against bare twisted.web and the "
        "durable FHIR floor",
        ["--clients", "8,32", "--seconds", "5"],
        ["--clients", "8", "--seconds", "1"],
    ),
    (
        "dropfolder_to_file",
        "core pipeline: drop folder -> hl7v2 -> transform -> file, against a copy loop",
        [],
        ["--files", "200"],
    ),
    (
        "store_growth",
        "the store's paths at 0, 100k, 300k and 1M stored messages",
        [],
        ["--sizes", "0,20000", "--by-methods", "5000", "--seconds", "1"],
    ),
    (
        "x12_invoice",
        "X12 810: validate + 997 + read + match, 10 to 10,000 lines, against stock pyx12",
        [],
        [],
    ),
    ("x12_validate", "X12 validation against stock pyx12 (x12n_document)", [], []),
    ("big_message", "one big HL7 message through the pipeline", [], []),
    ("erp_bulk", "cloud ERP bulk calls against one call per row", [], []),
    ("sftp_pickup", "SFTP upload + pickup against OpenSSH's sshd", [], []),
    ("sftp_login_timing", "SFTP refusal times for known and unknown accounts", [], []),
    ("listener_attack", "MLLP/HTTP listeners under slow and flooding peers", [], []),
    ("prune", "retention on a 1M-message store under load", [], ["--messages", "100000"]),
    (
        "preview",
        "impact preview of a CDM price change over stored messages, against the live pipeline",
        ["--messages", "1000"],
        ["--messages", "200"],
    ),
]


def machine() -> list[str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    disk = shutil.disk_usage(ROOT)
    return [
        f"- Date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- CPU: {cpu}, {os.cpu_count()} cores (client and server share them)",
        f"- Memory: {memory}; disk at the checkout {disk.total / 1e9:,.0f} GB",
        f"- Python {platform.python_version()} ({platform.platform()}), SQLite "
        f"{sqlite3.sqlite_version}",
        f"- Commit: {_git('rev-parse', '--short', 'HEAD')}{_dirty()}",
        f"- Load average when the run started: {LOAD_AT_START} (1, 5, 15 min; above 2 the "
        "machine was shared with other work, which moves absolute figures more than ratios)",
    ]


def _load() -> str:
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


LOAD_AT_START = _load()


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _dirty() -> str:
    return (
        " (with uncommitted changes)"
        if _git("status", "--porcelain", "--untracked-files=no")
        else ""
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks.md")
    p.add_argument("--quick", action="store_true", help="short settings (a smoke run)")
    p.add_argument("--only", default="", help="comma-separated script names")
    p.add_argument("--timeout", type=float, default=1200.0, help="seconds per benchmark")
    args = p.parse_args()
    only = {name for name in args.only.split(",") if name}
    sections: list[str] = []
    failed = 0
    started = time.perf_counter()
    for script, what, full, quick in BENCHMARKS:
        if only and script not in only:
            continue
        argv = [sys.executable, str(HERE / f"{script}.py"), *(quick if args.quick else full)]
        shown = " ".join(["python", f"bench/{script}.py", *(quick if args.quick else full)])
        print(f"== {shown}", flush=True)
        t0 = time.perf_counter()
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT
            )
            output, ok = done.stdout.rstrip(), done.returncode == 0
            if not ok:
                output += "\n" + done.stderr.rstrip()[-3000:]
        except subprocess.TimeoutExpired as exc:
            output, ok = f"timed out after {args.timeout:g} s\n{exc.stdout or ''}", False
        took = time.perf_counter() - t0
        failed += not ok
        print(output, flush=True)
        status = f"{took:,.0f} s" if ok else f"FAILED after {took:,.0f} s"
        sections += [
            f"## {script}",
            "",
            f"{what}. `{shown}` ({status})",
            "",
            "```",
            output,
            "```",
            "",
        ]
    head = [
        "# Benchmarks",
        "",
        "Written by `python bench/run_all.py`"
        + (" --quick (a smoke run: short settings, not figures to compare)" if args.quick else "")
        + f" in {time.perf_counter() - started:,.0f} s. Every ratio is against a baseline "
        "measured in the same run on the same machine (bare Twisted, bare twisted.web, the "
        "durable floors, the fsync'd-commit ceiling, stock pyx12, a copy loop, OpenSSH); "
        "absolute figures move "
        "with the machine's load (5x from one day to the next), the ratios much less. "
        "What each benchmark does: `bench/README.md`. No test asserts a speed.",
        "",
        "## Machine",
        "",
        *machine(),
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(head + sections))
    print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
