"""Shared helpers of the process-level integration tests (real ``wharf`` subprocesses).

Free ports, starting and killing ``wharf run`` / ``wharf demo-erp`` with their output captured
to files, making distinct DFT^P03 messages, dropping files atomically into an inbox, bounded
waits, reading the sample ERP's NDJSON record and looking at the store from the test side.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from engine.store import SqliteStore
from engine.testing.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "samples" / "hl7" / "dft_p03_screw.hl7"
#: The ``wharf`` console script of the venv running the tests.
WHARF = Path(sys.executable).parent / "wharf"
CHANNEL = "usage_to_erp"
SHIPPED_RETRY = "retry: {max_attempts: 8, initial: 1s, max_delay: 1m, max_age: 1d}"

T = TypeVar("T")


# --------------------------------------------------------------------------- ports and env


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wharf_env(tmp_path: Path, erp_port: int) -> dict[str, str]:
    """Environment of a ``wharf run``: store, inbox, archive in ``tmp_path``, ERP on the port."""
    env = dict(os.environ)
    env.update(
        ERP_URL=f"http://127.0.0.1:{erp_port}",
        WHARF_DB=str(tmp_path / "store" / "wharf.db"),
        WHARF_INBOX=str(tmp_path / "inbox"),
        WHARF_ARCHIVE=str(tmp_path / "archive"),
        WHARF_MLLP_ARCHIVE=str(tmp_path / "mllp_archive"),
        MLLP_PORT=str(free_port()),  # the shipped MLLP channels run too: keep them off
        LEDGER_MLLP_PORT=str(free_port()),  # the default ports 2575 and 2577
        BILLING_PORT=str(free_port()),
        PO_HTTP_PORT=str(free_port()),
        RECEIPT_HTTP_PORT=str(free_port()),  # and the PO webhook (8091), FHIR (8090), SFTP (2222)
        FHIR_PORT=str(free_port()),
        SFTP_PORT=str(free_port()),
        ADMIN_PORT=str(free_port()),  # the console (8088)
        PYTHONUNBUFFERED="1",
    )
    return env


def restore_env(saved: dict[str, str | None]) -> None:
    """Put back the environment variables ``saved`` holds (None: unset)."""
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def set_retry(project: Path, retry: str) -> None:
    """Replace the shipped ``retry:`` line of the copied channel with ``retry``."""
    path = project / "channels" / f"{CHANNEL}.yaml"
    text = path.read_text(encoding="utf-8")
    assert SHIPPED_RETRY in text, f"{path} no longer has the shipped retry line {SHIPPED_RETRY!r}"
    path.write_text(text.replace(SHIPPED_RETRY, retry), encoding="utf-8")


# --------------------------------------------------------------------------- processes


class Proc:
    """One subprocess with stdout and stderr captured to ``<logs>/<name>.out|.err``."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.args = args
        logs.mkdir(parents=True, exist_ok=True)
        self.out_path = logs / f"{name}.out"
        self.err_path = logs / f"{name}.err"
        self._out = open(self.out_path, "wb")  # closed in stop() / kill9()
        self._err = open(self.err_path, "wb")
        self.started = time.monotonic()
        self.popen = subprocess.Popen(
            args, env=env, stdout=self._out, stderr=self._err, stdin=subprocess.DEVNULL
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.out_path.read_text(encoding="utf-8", errors="replace")

    def kill9(self) -> None:
        """SIGKILL, as a crash: no shutdown trigger runs."""
        if self.alive():
            os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)
        self._close()

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        self._close()
        return self.popen.returncode

    def _close(self) -> None:
        for fh in (self._out, self._err):
            if not fh.closed:
                fh.close()

    def dump(self, lines: int = 60) -> str:
        parts = [f"===== {self.name} (pid {self.pid}, exit {self.popen.returncode}): {self.args}"]
        for path in (self.out_path, self.err_path):
            text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
            tail = text.splitlines()[-lines:]
            parts.append(f"----- {path} (last {len(tail)} lines)")
            parts.extend(tail)
        return "\n".join(parts)


class Processes:
    """Starts subprocesses and always ends them; prints their output when the block failed.

    ``with Processes(tmp_path) as procs: procs.receiver(...); procs.wharf(...)``.
    """

    def __init__(self, tmp_path: Path) -> None:
        self.logs = tmp_path / "logs"
        self.procs: list[Proc] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        for proc in reversed(self.procs):
            try:
                proc.stop(timeout=5)
            except Exception as e:  # pragma: no cover - teardown is best effort
                print(f"could not stop {proc.name}: {e}", file=sys.stderr)
        if exc_type is not None:
            print("\n".join(p.dump() for p in self.procs), file=sys.stderr)

    def start(self, name: str, args: list[str], env: dict[str, str]) -> Proc:
        proc = Proc(name, args, env, self.logs)
        self.procs.append(proc)
        return proc

    def receiver(self, port: int, record: Path, env: dict[str, str], name: str = "erp") -> Proc:
        """``wharf demo-erp`` on ``port`` recording to ``record``; returns once it listens."""
        args = [str(WHARF), "demo-erp", "--port", str(port), "--record", str(record)]
        proc = self.start(name, args, env)
        wait_until(lambda: port_open(port), 20, f"{name} listening on {port}", procs=[proc])
        return proc

    def sandbox(
        self, http_port: int, mllp_port: int, state: Path, seed: Path, env: dict[str, str]
    ) -> Proc:
        """``wharf sandbox`` (the stateful ERP on ``http_port``, billing's MLLP on ``mllp_port``)
        seeded with ``seed``; returns once both listen."""
        args = [str(WHARF), "sandbox", "--http-port", str(http_port), "--mllp-port", str(mllp_port)]
        proc = self.start("sandbox", [*args, "--state", str(state), "--seed", str(seed)], env)
        wait_until(
            lambda: port_open(http_port) and port_open(mllp_port), 30, "sandbox", procs=[proc]
        )
        return proc

    def wharf(self, root: Path, env: dict[str, str], name: str = "wharf") -> Proc:
        """``wharf --root ROOT run``; returns once it says it is running."""
        proc = self.start(name, [str(WHARF), "--root", str(root), "run"], env)
        wait_until(lambda: "wharf: running" in proc.output(), 30, f"{name} started", procs=[proc])
        return proc


def run_cli(root: Path, env: dict[str, str], *args: str, timeout: float = 60) -> Any:
    """Run one ``wharf --root ROOT ...`` command to completion; returns the CompletedProcess."""
    return subprocess.run(
        [str(WHARF), "--root", str(root), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# --------------------------------------------------------------------------- waiting


def wait_until(
    fn: Callable[[], T],
    timeout: float,
    what: str,
    *,
    interval: float = 0.1,
    procs: list[Proc] | None = None,
) -> T:
    """Call ``fn`` until it returns something truthy (returned) or ``timeout`` seconds pass
    (AssertionError naming ``what`` and the last value). Fails at once if a process in
    ``procs`` has exited."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = fn()
        if last:
            return last
        for proc in procs or ():
            if not proc.alive():
                raise AssertionError(
                    f"{proc.name} exited with {proc.popen.returncode} while waiting for {what}"
                )
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}"
            )
        time.sleep(interval)


# --------------------------------------------------------------------------- messages and files


def make_messages(count: int, prefix: str, sample: Path = SAMPLE) -> list[tuple[str, bytes]]:
    """``count`` distinct DFT^P03 messages from ``sample``: MSH-10 (the control id, hence the
    dedup key) is ``<prefix><n:05d>`` and FT1-2 (the sender's line id) ``<prefix>-LINE-<n>``.
    Returns ``(control_id, bytes)`` pairs."""
    text = sample.read_bytes().decode("utf-8")
    segments = text.split("\r")
    out = []
    for n in range(1, count + 1):
        control_id = f"{prefix}{n:05d}"
        changed = []
        for seg in segments:
            fields = seg.split("|")
            if fields[0] == "MSH":
                fields[9] = control_id  # MSH-10: MSH-1 is the separator itself
            elif fields[0] == "FT1":
                fields[2] = f"{prefix}-LINE-{n}"
            changed.append("|".join(fields))
        out.append((control_id, "\r".join(changed).encode("utf-8")))
    return out


def drop_file(inbox: Path, name: str, data: bytes) -> Path:
    """Write ``data`` as ``inbox/name`` atomically: a hidden ``.name.part``, then os.replace."""
    part = inbox / f".{name}.part"
    part.write_bytes(data)
    target = inbox / name
    os.replace(part, target)
    return target


def visible_files(folder: Path) -> list[Path]:
    """Regular files of ``folder`` (not sub-folders) whose name does not start with a dot."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def hidden_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.startswith("."))


# --------------------------------------------------------------------------- the receiver's record


def read_ndjson(path: Path) -> list[dict[str, Any]]:
    """The receiver's record, one dict per request; a half-written last line is ignored."""
    if not path.exists():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries


def keys_by_control_id(entries: list[dict[str, Any]]) -> dict[str, set[str]]:
    """``body.source_message`` (the HL7 control id) -> the Idempotency-Keys it came with."""
    keys: dict[str, set[str]] = defaultdict(set)
    for e in entries:
        keys[e.get("body", {}).get("source_message")].add(e["idempotency_key"])
    return dict(keys)


# --------------------------------------------------------------------------- the store


@contextlib.contextmanager
def open_store(path: Path) -> Iterator[SqliteStore]:
    """The store file opened from the test side (a second reader next to the engine)."""
    store = SqliteStore(path)
    store.open()
    try:
        yield store
    finally:
        store.close()


def all_messages(store: SqliteStore) -> list[Any]:
    return store.search(channel=CHANNEL, limit=1_000_000)


def deliveries_by_control_id(store: SqliteStore) -> dict[str, dict[str, dict[str, Any]]]:
    """control id -> destination -> the outbox row (without payload and response)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for row in all_messages(store):
        rows = {}
        for d in store.deliveries_for(row.id):
            rows[d["destination"]] = {
                k: v for k, v in d.items() if k not in ("payload", "response")
            }
        out[row.control_id] = rows
    return out
