"""A throw-away PostgreSQL cluster for tests and benchmarks.

:class:`Cluster` runs ``initdb`` into a temporary folder and ``pg_ctl start`` on a free
loopback port, its unix socket in that folder too; :meth:`Cluster.stop` stops it and removes
the folder. PostgreSQL refuses to run as root: as root the cluster runs as ``nobody`` (through
``runuser``), its folder handed over to that user. Nothing here is used by the engine itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from engine.testing.ports import free_port

#: Where Debian's postgresql-15 package puts the server binaries (initdb, pg_ctl, postgres).
BIN_DIRS = (
    "/usr/lib/postgresql/15/bin",
    "/usr/lib/postgresql/16/bin",
    "/usr/lib/postgresql/17/bin",
)
#: The user a cluster runs as when the tests run as root.
RUN_AS = "nobody"


def bin_dir() -> Path | None:
    """The folder with ``initdb`` and ``pg_ctl`` (``WHARF_PG_BIN`` first), None when absent."""
    for folder in (os.environ.get("WHARF_PG_BIN", ""), *BIN_DIRS):
        if folder and (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


class Cluster:
    """One PostgreSQL cluster under a temporary folder (see the module docstring)."""

    def __init__(self, *, fsync: bool = True, port: int | None = None) -> None:
        folder = bin_dir()
        if folder is None:
            raise FileNotFoundError(
                "PostgreSQL server binaries (initdb, pg_ctl) not found in "
                f"{', '.join(BIN_DIRS)} or on PATH; install postgresql (apt-get install postgresql)"
            )
        self.bin = folder
        self.fsync = fsync
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="wharf-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "run"
        self.log = self.root / "server.log"
        self.user = RUN_AS if os.geteuid() == 0 else None
        self.running = False

    # ------------------------------------------------------------------ lifecycle

    def _run(self, args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(a) for a in args]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, cwd=self.root)
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} exited {result.returncode} (expected 0): "
                f"{result.stderr.strip() or result.stdout.strip()}; log: {self._log_tail()}"
            )
        return result

    def _log_tail(self) -> str:
        try:
            return self.log.read_text()[-2000:]
        except OSError:
            return "(no server log)"

    def init(self) -> Cluster:
        self.socket_dir.mkdir()
        if self.user is not None:
            os.chmod(self.root, 0o755)
            shutil.chown(self.root, self.user)
            shutil.chown(self.socket_dir, self.user)
        self._run(
            [
                self.bin / "initdb",
                "-D",
                self.data,
                "-U",
                "wharf",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ]
        )
        return self

    def start(self) -> Cluster:
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.socket_dir} -c max_connections=200 "
            f"-c fsync={'on' if self.fsync else 'off'} "
            f"-c full_page_writes={'on' if self.fsync else 'off'} "
            "-c shared_buffers=64MB -c log_min_messages=warning"
        )
        self._run(
            [self.bin / "pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "start"]
        )
        self.running = True
        return self

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m mode`` (``immediate``: as if the server crashed)."""
        if self.running:
            self._run([self.bin / "pg_ctl", "-D", self.data, "-m", mode, "-w", "stop"], check=False)
            self.running = False

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Cluster:
        return self.init().start()

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # ------------------------------------------------------------------ databases

    def dsn(self, database: str = "postgres") -> str:
        """A ``postgresql://`` URL of ``database`` over loopback TCP."""
        return f"postgresql://wharf@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database; returns its URL."""
        self.sql(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def sql(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(statement)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the server accepts connections (after a restart)."""
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.dsn(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
