"""SFTP logins as an attacker sees them: how long a wrong password takes to be refused for an
account that exists and for one that does not, and what five wrong passwords from one address
do to the partner's login from another.

``wharf run`` (subprocess) serves a copy of the shipped project (partner ``acmemed``, demo
password ``acmemed-demo``, bcrypt cost 12) with its ports moved. OpenSSH's ``sftp`` logs in with
a password (SSH_ASKPASS), ``--tries`` times per account, each from its own 127.0.0.x address
(Linux routes 127/8 to lo) so that no lockout gets in the way of the timing; then five wrong
passwords come from 127.0.0.2 and the right one from 127.0.0.3 and from 127.0.0.2.

Prints the median, min and max refusal time per account and the lockout outcome. The baseline
of the timing is the other account in the same run (the figure to look at is the gap).
Nothing is asserted (tests/integration/test_sftp_lockout.py asserts the behaviour).

    python bench/sftp_login_timing.py [--tries 7]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def login(port: int, user: str, password: str, source: str, tmp: Path) -> tuple[bool, float]:
    askpass = tmp / f"askpass-{time.monotonic_ns()}.sh"
    askpass.write_text(f"#!/bin/sh\necho '{password}'\n")
    askpass.chmod(0o700)
    env = {**os.environ, "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force"}
    env.pop("DISPLAY", None)
    args = [
        "sftp",
        "-P",
        str(port),
        "-o",
        f"BindAddress={source}",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "PubkeyAuthentication=no",
        "-o",
        "PreferredAuthentications=password",
        "-o",
        "NumberOfPasswordPrompts=1",
        "-o",
        "LogLevel=ERROR",
        f"{user}@127.0.0.1",
    ]
    start = time.monotonic()
    p = subprocess.run(
        args, input=b"bye\n", capture_output=True, env=env, timeout=120, start_new_session=True
    )
    took = time.monotonic() - start
    askpass.unlink()
    return p.returncode == 0, took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tries", type=int, default=7)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    if shutil.which("sftp") is None:
        sys.exit("needs OpenSSH's sftp client (apt-get install openssh-client)")
    tmp = Path(tempfile.mkdtemp(prefix="wharf-sftp-timing-"))
    project = tmp / "project"
    project.mkdir()
    for name in ("routes.yaml", "channels", "mappings", "samples", "transforms"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, project / name)
    (project / "routes.yaml").write_text(
        (project / "routes.yaml").read_text() + "\nchannels: [x12_from_vendors]\n"
    )
    port = free_port()
    env = {**os.environ, "SFTP_PORT": str(port), "WHARF_LOG_LEVEL": "info"}
    log = open(tmp / "wharf.log", "w")
    wharf = Path(sys.executable).parent / "wharf"
    proc = subprocess.Popen(
        [str(wharf), "--root", str(project), "run"], stdout=log, stderr=log, env=env
    )
    try:
        for _ in range(300):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        times: dict[str, list[float]] = {"acmemed": [], "nosuchuser": []}
        n = 10
        for _ in range(args.tries):
            for user in times:
                n += 1
                ok, took = login(port, user, "wrong-password", f"127.0.0.{n}", tmp)
                assert not ok
                times[user].append(took)
        print(f"wrong password, {args.tries} tries each, each from its own address:")
        for user, values in times.items():
            print(
                f"  {user:<11} refused in median {statistics.median(values):.2f}s "
                f"(min {min(values):.2f}, max {max(values):.2f})"
            )
        gap = statistics.median(times["acmemed"]) - statistics.median(times["nosuchuser"])
        print(f"  gap (known - unknown): {gap * 1000:+.0f} ms")
        for i in range(5):
            ok, took = login(port, "acmemed", "wrong-password", "127.0.0.2", tmp)
            print(f"  wrong password {i + 1} from 127.0.0.2: refused in {took:.2f}s")
        ok3, took3 = login(port, "acmemed", "acmemed-demo", "127.0.0.3", tmp)
        print(
            f"  right password from 127.0.0.3: {'logged in' if ok3 else 'REFUSED'} ({took3:.2f}s)"
        )
        ok2, took2 = login(port, "acmemed", "acmemed-demo", "127.0.0.2", tmp)
        print(
            f"  right password from 127.0.0.2: {'logged in' if ok2 else 'refused'} ({took2:.2f}s)"
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
