"""What holds PHI is private on disk, whatever the umask: ``wharf run`` started under umask 000
in a fresh project creates var/ 0700, the store and its -wal and -shm 0600, the SFTP partner
roots 0700; a store left 0644 by an older version is tightened when it is opened."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from engine.store import SqliteStore
from tests.integration.helpers import Processes, free_port

pytestmark = pytest.mark.integration

ROUTES = """\
store: var/wharf.db
reload_interval: 0s
sftp_server:
  listen: tcp:${SFTP_PORT}:interface=127.0.0.1
  partners:
    - name: acme
      root: var/sftp/acme
      password_bcrypt: $2b$04$ni4isFZuiDF4FI/by1t0U.T/Xhwee8A2plx0F1kaQUzvY48dJz2iG
"""


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_wharf_run_under_umask_000_creates_owner_only_files() -> None:
    root = Path(tempfile.mkdtemp(prefix="wharf-private-"))
    try:
        (root / "routes.yaml").write_text(ROUTES)
        env = {**os.environ, "SFTP_PORT": str(free_port())}
        old = os.umask(0)  # the child inherits it
        try:
            with Processes(root) as procs:
                procs.wharf(root, env)  # running: its store is open, with its WAL
                var = root / "var"
                assert mode(var) == 0o700
                assert mode(var / "wharf.db") == 0o600
                companions = [var / "wharf.db-wal", var / "wharf.db-shm"]
                assert [p.exists() for p in companions] == [True, True]
                assert [mode(p) for p in companions] == [0o600, 0o600]
                for folder in (var / "sftp", var / "sftp/acme", var / "sftp/acme/inbound"):
                    assert mode(folder) == 0o700, folder
                assert mode(var / "sftp/host_key") == 0o600
        finally:
            os.umask(old)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_an_open_store_left_by_an_older_version_is_tightened() -> None:
    root = Path(tempfile.mkdtemp(prefix="wharf-private-"))
    try:
        db = root / "data" / "wharf.db"
        with SqliteStore(db):
            pass
        for p in (db, db.with_name("wharf.db-wal"), db.with_name("wharf.db-shm")):
            if p.exists():
                os.chmod(p, 0o644)
        os.chmod(db.parent, 0o755)  # a folder of the operator's: left as it is
        store = SqliteStore(db).open()
        try:
            store.audit("test", "touch", "-", {}, 0.0)
            assert mode(db) == 0o600
            assert mode(db.with_name("wharf.db-wal")) == 0o600
            assert mode(db.with_name("wharf.db-shm")) == 0o600
            assert mode(db.parent) == 0o755
        finally:
            store.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
