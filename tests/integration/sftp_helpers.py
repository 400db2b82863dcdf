"""Helpers of the SFTP integration tests: keys, OpenSSH ``sftp`` batches, a throwaway ``sshd``.

Every OpenSSH command runs in a thread (``deferToThread``) so the reactor keeps serving Wharf's
server meanwhile. Everything lives in ``tempfile.mkdtemp()`` folders.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import threads

from engine.testing.ports import free_port

SSHD = "/usr/sbin/sshd"
SFTP = shutil.which("sftp") or "/usr/bin/sftp"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"


def missing_openssh() -> str | None:
    """Why the OpenSSH tests cannot run here, or None."""
    if not os.path.exists(SSHD):
        return "needs /usr/sbin/sshd: apt-get install openssh-server"
    if not shutil.which("sftp"):
        return "needs the sftp client: apt-get install openssh-client"
    if not shutil.which("ssh-keygen"):
        return "needs ssh-keygen: apt-get install openssh-client"
    return None


def keygen(path: Path, kind: str = "ed25519") -> tuple[Path, str]:
    """A new passphrase-less key pair at ``path``; returns (private key path, public line)."""
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", kind, "-N", "", "-C", "wharf-test", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    os.chmod(path, 0o600)
    return path, Path(f"{path}.pub").read_text().strip()


def known_hosts_line(port: int, public_line: str) -> str:
    """A known_hosts entry for ``[127.0.0.1]:port`` with the key ``public_line``."""
    kind, blob = public_line.split()[:2]
    return f"[127.0.0.1]:{port} {kind} {blob}\n"


@dataclass
class SftpResult:
    rc: int
    out: str
    err: str


def sftp_batch_sync(
    commands: list[str],
    *,
    port: int,
    user: str,
    key: Path,
    known_hosts: Path,
    cwd: Path | None = None,
    timeout: float = 30.0,
    extra: list[str] | None = None,
) -> SftpResult:
    """Run OpenSSH's ``sftp -b`` with ``commands``; strict host key checking."""
    batch = Path(cwd or key.parent) / f"batch-{time.monotonic_ns()}.txt"
    batch.write_text("\n".join(commands) + "\n", encoding="utf-8")
    args = [
        SFTP,
        "-b",
        str(batch),
        "-i",
        str(key),
        "-P",
        str(port),
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "PasswordAuthentication=no",
        "-o",
        "ConnectTimeout=10",
        *(extra or []),
        f"{user}@127.0.0.1",
    ]
    p = subprocess.run(
        args,
        cwd=str(cwd) if cwd else None,
        capture_output=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    batch.unlink(missing_ok=True)
    return SftpResult(
        p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
    )


def sftp_batch(commands: list[str], **kw: Any) -> Any:
    """:func:`sftp_batch_sync` in a thread; a Deferred of :class:`SftpResult`."""
    return threads.deferToThread(sftp_batch_sync, commands, **kw)


class OpenSshServer:
    """A throwaway OpenSSH ``sshd -D -e`` on 127.0.0.1 with ``internal-sftp``, as root."""

    def __init__(self, base: Path, authorized_key_line: str, port: int | None = None) -> None:
        self.base = base
        self.port = port or free_port()
        base.mkdir(parents=True, exist_ok=True)
        self.host_key, self.host_public = keygen(base / "ssh_host_ed25519_key")
        self.authorized = base / "authorized_keys"
        self.authorized.write_text(authorized_key_line + "\n")
        os.chmod(self.authorized, 0o600)
        self.config = base / "sshd_config"
        self.config.write_text(
            "\n".join(
                [
                    f"HostKey {self.host_key}",
                    f"AuthorizedKeysFile {self.authorized}",
                    "Subsystem sftp internal-sftp",
                    "ListenAddress 127.0.0.1",
                    f"Port {self.port}",
                    f"PidFile {base / 'sshd.pid'}",
                    "StrictModes no",
                    "UsePAM no",
                    "PermitRootLogin prohibit-password",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "MaxStartups 100:30:200",
                    "MaxSessions 50",
                    "LogLevel ERROR",
                    "",
                ]
            )
        )
        self.proc: subprocess.Popen | None = None
        self.log = base / "sshd.log"

    def start(self, timeout: float = 10.0) -> None:
        if os.geteuid() == 0:  # sshd run by root wants its privilege separation directory
            os.makedirs("/run/sshd", exist_ok=True)
        self._log = open(self.log, "ab")  # closed in stop()
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.log.read_text(errors='replace')}")
            with socket.socket() as s:
                s.settimeout(0.2)
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("sshd did not start listening")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc = None
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None

    def known_hosts(self, path: Path) -> Path:
        path.write_text(known_hosts_line(self.port, self.host_public))
        return path
