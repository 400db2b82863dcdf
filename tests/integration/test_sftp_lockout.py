"""SFTP logins under attack, with OpenSSH's own ``sftp`` client logging in by password
(SSH_ASKPASS) from chosen loopback addresses (``-o BindAddress=127.0.0.x``; Linux routes 127/8
to lo) against Wharf's SFTP server.

Shows: wrong passwords from one address lock that (account, address) pair, not the account:
the partner's right password from another address still logs in; the lockout and the unlock
are in the log (account and address only) and the audit table; an account that does not exist
is refused the same way (the same bcrypt check at the same cost, the same growing delay, the
same lockout), so refusals do not tell which accounts exist; a partner with ``allow`` networks
cannot log in from elsewhere, even with the right key.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from twisted.internet import defer, reactor, task, threads
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from engine.sftp.config import parse_server_config
from engine.sftp.service import SftpServerService
from tests.integration.sftp_helpers import SFTP, keygen, known_hosts_line, missing_openssh

pytestmark = pytest.mark.integration

PASSWORD = "right-horse-battery"
COST = 5  # bcrypt cost of the partner's hash (the dummy hash must match it)


def sftp_login(
    port: int, user: str, source: str, known_hosts: Path, *, password: str = "", key: Path | None
) -> subprocess.CompletedProcess:
    """One OpenSSH ``sftp`` session from ``source`` (``ls`` then ``bye``): by password through
    SSH_ASKPASS (one prompt), or by ``key``."""
    env = dict(os.environ)
    env.pop("DISPLAY", None)
    args = [
        SFTP,
        "-P",
        str(port),
        "-o",
        f"BindAddress={source}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "ConnectTimeout=20",
    ]
    tmp = Path(tempfile.mkdtemp(prefix="wharf-askpass-"))
    try:
        if key is None:
            askpass = tmp / "askpass.sh"
            askpass.write_text(f"#!/bin/sh\necho '{password}'\n")
            askpass.chmod(0o700)
            env.update(SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force")
            args += ["-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password"]
            args += ["-o", "NumberOfPasswordPrompts=1"]
        else:
            args += ["-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "PasswordAuthentication=no"]
            args += ["-o", "BatchMode=yes"]
        return subprocess.run(
            [*args, f"{user}@127.0.0.1"],
            input=b"ls /\nbye\n",
            capture_output=True,
            env=env,
            timeout=60,
            start_new_session=True,  # no controlling tty: askpass is used
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class LockoutTests(unittest.TestCase):
    def setUp(self) -> defer.Deferred:
        reason = missing_openssh()
        if reason:
            raise unittest.SkipTest(reason)
        self.base = Path(tempfile.mkdtemp(prefix="wharf-sftp-lockout-"))
        self.addCleanup(shutil.rmtree, self.base, True)
        self.globex_key, globex_pub = keygen(self.base / "globex")
        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(COST)).decode()
        self.config = parse_server_config(
            {
                "listen": "tcp:0:interface=127.0.0.1",
                "host_key": "server/host_key",
                "max_failed_logins": 3,
                "lockout": "2s",
                "login_delay": "50ms",
                "partners": [
                    {"name": "acme", "root": "partners/acme", "password_bcrypt": hashed},
                    {
                        "name": "globex",
                        "root": "partners/globex",
                        "authorized_keys": [globex_pub],
                        "allow": ["127.0.0.5"],
                    },
                ],
            }
        )
        self.audits: list[tuple[str, str, dict]] = []
        self.log: list[str] = []

        def observe(event: dict) -> None:
            if str(event.get("log_namespace", "")).startswith("wharf.sftp"):
                self.log.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        self.checks: list[tuple[str, int]] = []  # (password tried, cost of the hash it met)
        real = bcrypt.checkpw

        def counting(password: bytes, hashed: bytes) -> bool:
            self.checks.append((password.decode(), int(hashed.split(b"$")[2])))
            return real(password, hashed)

        bcrypt.checkpw = counting
        self.addCleanup(setattr, bcrypt, "checkpw", real)
        return defer.ensureDeferred(self._start())

    async def _start(self) -> None:
        old = os.umask(0)  # as permissive as it gets: the roots must still be owner-only
        self.addCleanup(os.umask, old)
        self.service = SftpServerService(
            self.config,
            root=self.base,
            reactor=reactor,
            audit=lambda actor, action, target, detail: self.audits.append((actor, action, detail)),
        )
        await self.service.start()
        self.addCleanup(lambda: defer.ensureDeferred(self.service.stop()))
        self.known_hosts = self.base / "known_hosts"
        pub = (self.base / "server/host_key.pub").read_text()
        self.known_hosts.write_text(known_hosts_line(self.service.port, pub))

    def login(self, user: str, source: str, password: str = "", key: Path | None = None) -> Any:
        return threads.deferToThread(
            sftp_login,
            self.service.port,
            user,
            source,
            self.known_hosts,
            password=password,
            key=key,
        )

    def actions(self, action: str) -> list[dict]:
        return [d for _, act, d in self.audits if act == action]

    @defer.inlineCallbacks
    def test_wrong_passwords_lock_the_address_not_the_account(self) -> Any:
        """Three wrong passwords from 127.0.0.2 lock acme from 127.0.0.2 only: the right
        password is refused there, and logs in from 127.0.0.3; the lockout and, after 2 s, the
        unlock are logged (account and address, no more) and audited; then 127.0.0.2 logs in
        with the right password."""
        for _ in range(3):
            r = yield self.login("acme", "127.0.0.2", "wrong")
            self.assertNotEqual(r.returncode, 0)
        (locked,) = self.actions("sftp.locked")
        self.assertEqual(
            locked,
            {
                "partner": "acme",
                "user": "acme",
                "address": "127.0.0.2",
                "seconds": 2.0,
                "failures": 3,
            },
        )
        r = yield self.login("acme", "127.0.0.2", PASSWORD)
        self.assertNotEqual(r.returncode, 0, "the right password from the locked address")
        r = yield self.login("acme", "127.0.0.3", PASSWORD)
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        self.assertIn("inbound", r.stdout.decode())
        self.assertEqual(
            [d["peer"].split(":")[0] for d in self.actions("sftp.login")], ["127.0.0.3"]
        )
        lines = [line for line in self.log if "locked for" in line]
        self.assertEqual(
            lines, ["SFTP logins as acme from 127.0.0.2 locked for 2s after 3 failed logins"]
        )
        yield task.deferLater(reactor, 2.2, lambda: None)
        self.assertEqual(
            self.actions("sftp.unlocked"),
            [{"partner": "acme", "user": "acme", "address": "127.0.0.2"}],
        )
        self.assertIn("SFTP logins as acme from 127.0.0.2 unlocked", self.log)
        r = yield self.login("acme", "127.0.0.2", PASSWORD)
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        self.assertNotIn(PASSWORD, "\n".join(self.log) + repr(self.audits))

    @defer.inlineCallbacks
    def test_an_unknown_account_is_refused_like_a_known_one(self) -> Any:
        """A wrong password for acme and any password for 'nobody' or for globex (keys only)
        cost exactly one bcrypt check each, at the cost of acme's hash; the growing delay and
        the lockout after three failures are the same for all of them."""
        ctx = self.service.factory.ctx
        for user, source in (
            ("acme", "127.0.0.6"),
            ("nobody", "127.0.0.7"),
            ("globex", "127.0.0.5"),
        ):
            self.checks.clear()
            delays = []
            for _ in range(3):
                delays.append(ctx.delay(user, source))
                r = yield self.login(user, source, "guess")
                self.assertNotEqual(r.returncode, 0)
            self.assertEqual(self.checks, [("guess", COST)] * 3, user)
            self.assertEqual(delays, [0.05, 0.1, 0.2], user)
            self.assertTrue(ctx.is_locked(user, source), user)
            self.checks.clear()
            r = yield self.login(user, source, "guess")  # locked: refused without a check
            self.assertNotEqual(r.returncode, 0)
            self.assertEqual(self.checks, [], user)
        locked = self.actions("sftp.locked")
        self.assertEqual([d["user"] for d in locked], ["acme", "nobody", "globex"])
        self.assertTrue(
            any("unknown account 'nobody' from 127.0.0.7 locked" in x for x in self.log)
        )

    @defer.inlineCallbacks
    def test_a_partner_with_allow_networks_logs_in_only_from_them(self) -> Any:
        """globex may log in only from 127.0.0.5: its own key is refused from 127.0.0.1
        (audited with the reason), and works from 127.0.0.5."""
        r = yield self.login("globex", "127.0.0.1", key=self.globex_key)
        self.assertNotEqual(r.returncode, 0)
        failed = [d for d in self.actions("sftp.login_failed") if d["user"] == "globex"]
        self.assertTrue(failed and "may not log in from this address" in failed[-1]["reason"])
        self.assertEqual(self.actions("sftp.login"), [])
        r = yield self.login("globex", "127.0.0.5", key=self.globex_key)
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        self.assertEqual(len(self.actions("sftp.login")), 1)

    def test_partner_roots_are_owner_only(self) -> None:
        """The partner roots and their folders are 0700, created under umask 000."""
        for partner in ("acme", "globex"):
            root = self.base / "partners" / partner
            self.assertEqual(root.stat().st_mode & 0o777, 0o700)
            for area in ("inbound", "outbound", "archive", "error"):
                self.assertEqual((root / area).stat().st_mode & 0o777, 0o700)
        self.assertEqual((self.base / "partners").stat().st_mode & 0o777, 0o700)
