"""Wharf's SFTP server against real peers: OpenSSH's ``sftp`` client and a conch client.

Shows: upload / download / delete through OpenSSH ``sftp`` with strict host key checking;
every traversal form refused with nothing written outside the partner root; quotas and the
maximum file size; failed logins and lockout; an upload paused longer than ``min_age`` is not
picked up before it is closed, then picked up by an Engine's drop folder and archived only after
the commit; per-partner audit rows (login, upload with size + sha256, download, delete, refusal).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.conch.error import ConchError
from twisted.conch.ssh import filetransfer
from twisted.conch.ssh.filetransfer import SFTPError
from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from engine.net.sftp import HostKeyError, Remote, SftpSession, connect
from engine.runtime import Engine
from engine.sftp.config import parse_server_config
from engine.sftp.service import SftpServerService
from tests.integration.sftp_helpers import (
    keygen,
    known_hosts_line,
    missing_openssh,
    sftp_batch,
)

pytestmark = pytest.mark.integration


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


def snapshot(folder: Path, skip: Path) -> dict[str, tuple[int, float]]:
    """Every path under ``folder`` except under ``skip``, with size and mtime."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        if Path(dirpath) == skip or skip in Path(dirpath).parents:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            out[str(p)] = (st.st_size, st.st_mtime)
    return out


class SftpServerBase(unittest.TestCase):
    """A running SftpServerService with partners ``acme`` and ``globex``; audit rows kept."""

    partner_extra: dict[str, Any] = {}
    server_extra: dict[str, Any] = {}

    def setUp(self) -> defer.Deferred:
        self.base = Path(tempfile.mkdtemp(prefix="wharf-sftp-"))
        self.addCleanup(shutil.rmtree, self.base, True)
        self.keys = self.base / "keys"
        self.keys.mkdir()
        self.acme_key, acme_pub = keygen(self.keys / "acme")
        self.globex_key, globex_pub = keygen(self.keys / "globex")
        self.stranger_key, _ = keygen(self.keys / "stranger")
        (self.keys / "globex.authorized").write_text(f"# globex\n{globex_pub}\n")
        self.secret = self.base / "outside.txt"
        self.secret.write_text("not for partners")
        self.config = parse_server_config(
            {
                "listen": "tcp:0:interface=127.0.0.1",
                "host_key": "server/host_key",
                "idle_timeout": "30s",
                "login_timeout": "10s",
                "max_failed_logins": 3,
                "lockout": "1m",
                **self.server_extra,
                "partners": [
                    {
                        "name": "acme",
                        "root": "partners/acme",
                        "authorized_keys": [acme_pub],
                        **self.partner_extra,
                    },
                    {
                        "name": "globex",
                        "root": "partners/globex",
                        "authorized_keys": ["keys/globex.authorized"],
                    },
                ],
            }
        )
        self.audits: list[tuple[str, str, str, dict]] = []
        self.acme_root = self.base / "partners/acme"
        return defer.ensureDeferred(self._start())

    def audit(self, actor: str, action: str, target: str, detail: dict) -> None:
        self.audits.append((actor, action, target, detail))

    async def _start(self) -> None:
        self.service = SftpServerService(
            self.config, root=self.base, reactor=reactor, audit=self.audit
        )
        await self.service.start()
        self.addCleanup(lambda: defer.ensureDeferred(self.service.stop()))
        self.known_hosts = self.base / "known_hosts"
        pub = (self.base / "server/host_key.pub").read_text()
        self.known_hosts.write_text(known_hosts_line(self.service.port, pub))

    def require_openssh(self) -> None:
        reason = missing_openssh()
        if reason:
            raise unittest.SkipTest(reason)

    def sftp(self, commands: list[str], user: str = "acme", key: Path | None = None) -> Any:
        return sftp_batch(
            commands,
            port=self.service.port,
            user=user,
            key=key or self.acme_key,
            known_hosts=self.known_hosts,
            cwd=self.base,
        )

    async def conch(self, user: str = "acme", key: Path | None = None) -> SftpSession:
        session = await connect(
            reactor,
            Remote(
                "127.0.0.1",
                self.service.port,
                user,
                str(key or self.acme_key),
                known_hosts=str(self.known_hosts),
            ),
        )
        self.addCleanup(session.close)
        return session

    def actions(self, action: str, partner: str = "acme") -> list[tuple[str, dict]]:
        return [(t, d) for a, act, t, d in self.audits if act == action and a == f"sftp:{partner}"]


class OpenSshClientTests(SftpServerBase):
    def test_upload_download_delete_with_openssh_sftp(self) -> defer.Deferred:
        """OpenSSH sftp (strict host key checking) uploads to inbound/, downloads and deletes
        from outbound/; each is audited with size and sha256."""
        self.require_openssh()

        async def run() -> None:
            payload = os.urandom(300_000)
            (self.base / "local.bin").write_bytes(payload)
            (self.acme_root / "outbound/invoice.x12").write_bytes(b"ISA*00*...~" * 100)
            r = await self.sftp(
                [
                    "cd inbound",
                    "put local.bin order.bin",
                    "ls -l",
                    "cd ../outbound",
                    "get invoice.x12 fetched.x12",
                    "rm invoice.x12",
                ]
            )
            self.assertEqual(r.rc, 0, r.err + r.out)
            self.assertEqual((self.acme_root / "inbound/order.bin").read_bytes(), payload)
            self.assertEqual((self.base / "fetched.x12").read_bytes(), b"ISA*00*...~" * 100)
            self.assertFalse((self.acme_root / "outbound/invoice.x12").exists())
            self.assertEqual(
                [n for n in os.listdir(self.acme_root / "inbound")], ["order.bin"]
            )  # no temporary file left behind
            login = self.actions("sftp.login")
            self.assertEqual(len(login), 1)
            self.assertEqual(login[0][1]["method"], "publickey")
            self.assertTrue(login[0][1]["peer"].startswith("127.0.0.1:"))
            [(target, detail)] = self.actions("sftp.upload")
            self.assertEqual(target, "/inbound/order.bin")
            self.assertEqual(detail["size"], len(payload))
            self.assertEqual(detail["sha256"], hashlib.sha256(payload).hexdigest())
            self.assertEqual(detail["partner"], "acme")
            [(target, detail)] = self.actions("sftp.download")
            self.assertEqual(target, "/outbound/invoice.x12")
            self.assertEqual(detail["size"], 1100)
            [(target, detail)] = self.actions("sftp.delete")
            self.assertEqual(target, "/outbound/invoice.x12")
            self.assertEqual(detail["sha256"], hashlib.sha256(b"ISA*00*...~" * 100).hexdigest())
            await sleep(0.2)
            self.assertEqual(len(self.actions("sftp.logout")), 1)

        return defer.ensureDeferred(run())

    def test_wrong_host_key_is_refused_by_the_client(self) -> defer.Deferred:
        """The client checks Wharf's persisted host key: a different key in known_hosts fails."""
        self.require_openssh()

        async def run() -> None:
            _, other = keygen(self.keys / "other_host")
            self.known_hosts.write_text(known_hosts_line(self.service.port, other))
            r = await self.sftp(["ls"])
            self.assertNotEqual(r.rc, 0)
            self.assertIn("HOST IDENTIFICATION HAS CHANGED", r.err)

        return defer.ensureDeferred(run())

    def test_traversal_with_openssh_sftp(self) -> defer.Deferred:
        """../, absolute paths, planted symlinks, rename out, mkdir, symlink creation, chmod:
        each refused; nothing outside the root is read or written."""
        self.require_openssh()

        async def run() -> None:
            (self.acme_root / "outbound/leak").symlink_to(self.secret)
            (self.acme_root / "inbound/up").symlink_to(self.base)
            (self.acme_root / "escape").symlink_to("/etc")
            (self.acme_root / "inbound/mine.txt").write_text("mine")
            os.chmod(self.acme_root / "inbound/mine.txt", 0o640)
            hard = self.acme_root / "outbound/hard"
            os.link(self.secret, hard)
            (self.base / "evil.txt").write_text("evil")
            before = snapshot(self.base, self.acme_root)
            r = await self.sftp(
                [
                    "-put evil.txt ../evil.txt",
                    "-put evil.txt ../../evil.txt",
                    "-put evil.txt /../../../../tmp/evil.txt",
                    f"-put evil.txt {self.base}/evil2.txt",
                    "-put evil.txt /etc/evil.txt",
                    "-put evil.txt /inbound/up/evil.txt",
                    "-put evil.txt /escape/evil.txt",
                    "-get /outbound/leak leaked1.txt",
                    "-get /outbound/hard leaked2.txt",
                    "-get ../outside.txt leaked3.txt",
                    f"-get {self.secret} leaked4.txt",
                    "-get /inbound/up/outside.txt leaked5.txt",
                    "-ls /inbound/up",
                    "-ls ..",
                    "-cd ../..",
                    "-rename /inbound/mine.txt ../mine.txt",
                    "-rename /inbound/mine.txt /outbound/mine.txt",
                    "-rename /inbound/mine.txt /inbound/up/mine.txt",
                    "-symlink /etc/passwd /inbound/pw",
                    "-ln /inbound/mine.txt /inbound/hardlink",
                    "-mkdir /inbound/sub",
                    "-rmdir /inbound",
                    "-rm /archive/nothing",
                    "-chmod 777 /inbound/mine.txt",
                    "pwd",
                ]
            )
            self.assertEqual(r.rc, 0, r.err)
            for name in ("leaked1.txt", "leaked2.txt", "leaked3.txt", "leaked4.txt", "leaked5.txt"):
                self.assertFalse((self.base / name).exists(), name)
            self.assertEqual(snapshot(self.base, self.acme_root), before)
            self.assertEqual(self.secret.read_text(), "not for partners")
            self.assertFalse(Path("/tmp/evil.txt").exists())
            self.assertFalse(Path("/etc/evil.txt").exists())
            self.assertEqual(sorted(os.listdir(self.acme_root / "inbound")), ["mine.txt", "up"])
            self.assertEqual((self.acme_root / "inbound/mine.txt").read_text(), "mine")
            self.assertEqual(
                os.stat(self.acme_root / "inbound/mine.txt").st_mode & 0o777,
                os.stat(self.acme_root / "inbound/mine.txt").st_mode & 0o777,
            )
            refused = self.actions("sftp.refused")
            ops = {d["op"] for _, d in refused}
            self.assertTrue({"upload", "open", "rename", "symlink", "mkdir", "rmdir"} <= ops, ops)
            self.assertGreaterEqual(len(refused), 12)
            self.assertIn("Remote working directory: /", r.out)

        return defer.ensureDeferred(run())


class ConchClientTraversalTests(SftpServerBase):
    def test_raw_paths_are_refused(self) -> defer.Deferred:
        """Paths sent as raw bytes by a conch client: control characters, long names, invalid
        UTF-8, climbing, rename out, symlink and hard link requests."""

        async def run() -> None:
            s = await self.conch()
            (self.acme_root / "inbound/a.txt").write_text("a")
            before = snapshot(self.base, self.acme_root)
            write = filetransfer.FXF_WRITE | filetransfer.FXF_CREAT | filetransfer.FXF_TRUNC
            bad_opens = [
                b"../x",
                b"/../x",
                b"inbound/../../x",
                b"inbound/../../../../../../tmp/x",
                b"inbound/a\nb",
                b"inbound/a\x00b",
                b"inbound/\x1b[2Jclear",
                b"inbound/\r",
                b"inbound/" + b"n" * 256,
                b"inbound/" + b"d/" * 600,
                b"inbound/\xff\xfe",
                b"inbound/\xc0\xae\xc0\xae/x",
                b"inbound\\..\\..\\x",
                b"x.txt",
                b"outbound/x.txt",
                b"archive/x.txt",
            ]
            for path in bad_opens:
                with self.assertRaises(SFTPError, msg=repr(path)):
                    f = await s.client.openFile(path, write, {})
                    await f.close()
            for old, new in [
                (b"inbound/a.txt", b"../a.txt"),
                (b"inbound/a.txt", b"/../../a.txt"),
                (b"inbound/a.txt", b"archive/a.txt"),
                (b"../outside.txt", b"inbound/stolen.txt"),
            ]:
                with self.assertRaises(SFTPError):
                    await s.client.renameFile(old, new)
            with self.assertRaises(SFTPError):
                await s.client.makeLink(b"inbound/l", b"/etc/passwd")
            with self.assertRaises((SFTPError, NotImplementedError)):  # FX_OP_UNSUPPORTED
                await s.client.extendedRequest(
                    b"hardlink@openssh.com", b"\x00\x00\x00\x0b/etc/passwd\x00\x00\x00\x0binbound/h"
                )
            with self.assertRaises((SFTPError, NotImplementedError)):
                await s.client.readLink(b"inbound/a.txt")
            with self.assertRaises(SFTPError):
                await s.client.getAttrs(b"../outside.txt")
            with self.assertRaises(SFTPError):
                await s.client.openDirectory(b"..")
            self.assertEqual(await s.client.realPath(b"inbound/../outbound/./x"), "/outbound/x")
            with self.assertRaises(SFTPError):
                await s.client.realPath(b"inbound/../../x")
            self.assertEqual(snapshot(self.base, self.acme_root), before)
            self.assertEqual(os.listdir(self.acme_root / "inbound"), ["a.txt"])
            refused = self.actions("sftp.refused")
            self.assertGreaterEqual(len(refused), len(bad_opens) + 8)
            for target, _ in refused:  # logged names are escaped and bounded
                self.assertTrue(target.isprintable() and len(target) <= 300, target)

        return defer.ensureDeferred(run())

    def test_a_symlink_planted_during_a_session_is_not_followed(self) -> defer.Deferred:
        """A symlink appearing inside the root (put there by someone else) never leads out."""

        async def run() -> None:
            s = await self.conch()
            (self.acme_root / "outbound/report.txt").symlink_to(self.secret)
            with self.assertRaises(SFTPError):
                await s.read("/outbound/report.txt", 1000)
            listing = await s.listdir("/outbound")
            self.assertEqual(listing, [])
            with self.assertRaises(SFTPError):
                await s.remove("/outbound/report.txt")
            self.assertTrue(self.secret.exists())

        return defer.ensureDeferred(run())

    def test_a_file_waiting_for_pickup_is_not_replaced_nor_deleted(self) -> defer.Deferred:
        """Replacing or deleting a visible inbound file could race the drop folder (read,
        commit, move): both are refused; the partner's own hidden files may be deleted."""

        async def run() -> None:
            s = await self.conch()
            await s.write_atomically("/inbound", "order.hl7", b"first")
            write = filetransfer.FXF_WRITE | filetransfer.FXF_CREAT | filetransfer.FXF_TRUNC
            with self.assertRaises(SFTPError) as info:  # a plain `put` over it
                await s.client.openFile(b"/inbound/order.hl7", write, {})
            self.assertEqual(info.exception.code, filetransfer.FX_FILE_ALREADY_EXISTS)
            await s.write_atomically("/inbound", ".second.part", b"second")
            with self.assertRaises(SFTPError):  # renaming over it
                await s.client.renameFile(b"/inbound/.second.part", b"/inbound/order.hl7")
            await s.remove("/inbound/.second.part")
            with self.assertRaises(SFTPError):
                await s.remove("/inbound/order.hl7")
            self.assertEqual((self.acme_root / "inbound/order.hl7").read_bytes(), b"first")
            await s.write_atomically("/inbound", ".mine.part", b"x")
            await s.remove("/inbound/.mine.part")
            self.assertEqual(os.listdir(self.acme_root / "inbound"), ["order.hl7"])

        return defer.ensureDeferred(run())

    def test_outbound_files_appear_only_when_complete(self) -> defer.Deferred:
        """An outbound channel's `file` destination writes a hidden temporary file and renames
        it: the partner never sees nor reads the temporary file."""

        async def run() -> None:
            from engine.net.files import write_atomically

            s = await self.conch()
            (self.acme_root / "outbound/.ack.x12.abc.tmp").write_bytes(b"half")
            self.assertEqual(await s.listdir("/outbound"), [])
            with self.assertRaises(SFTPError):
                await s.read("/outbound/.ack.x12.abc.tmp", 100)
            write_atomically(self.acme_root / "outbound", "ack.x12", b"ISA*full~", fsync=True)
            self.assertEqual([n for n, _ in await s.listdir("/outbound")], ["ack.x12"])
            self.assertEqual(await s.read("/outbound/ack.x12", 100), b"ISA*full~")

        return defer.ensureDeferred(run())

    def test_partners_are_confined_to_their_own_roots(self) -> defer.Deferred:
        async def run() -> None:
            (self.base / "partners/globex/outbound/theirs.txt").write_text("globex only")
            s = await self.conch()
            with self.assertRaises(SFTPError):
                await s.read("/../globex/outbound/theirs.txt", 1000)
            with self.assertRaises(SFTPError):
                await s.read("/outbound/theirs.txt", 1000)
            g = await self.conch("globex", self.globex_key)  # key from an authorized_keys file
            self.assertEqual(await g.read("/outbound/theirs.txt", 1000), b"globex only")

        return defer.ensureDeferred(run())


class LoginLimitTests(SftpServerBase):
    def test_failed_logins_are_audited_and_lock_the_account(self) -> defer.Deferred:
        async def run() -> None:
            for _ in range(3):
                with self.assertRaises(ConchError):
                    await self.conch("acme", self.stranger_key)
            failed = self.actions("sftp.login_failed")
            self.assertEqual(len(failed), 3)
            self.assertTrue(failed[-1][1]["locked"])
            with self.assertRaises(ConchError):  # the right key is refused while locked
                await self.conch("acme", self.acme_key)
            self.assertEqual(self.actions("sftp.login"), [])
            g = await self.conch("globex", self.globex_key)  # other partners are not affected
            self.assertEqual(await g.listdir("/inbound"), [])
            with self.assertRaises(ConchError):
                await self.conch("nobody", self.acme_key)
            self.assertTrue(
                any(d["user"] == "nobody" for a, act, _, d in self.audits if a == "sftp:?")
            )

        return defer.ensureDeferred(run())

    def test_client_refuses_an_unknown_host_key(self) -> defer.Deferred:
        async def run() -> None:
            _, other = keygen(self.keys / "other_host")
            self.known_hosts.write_text(known_hosts_line(self.service.port, other))
            with self.assertRaises(HostKeyError):
                await self.conch()
            self.known_hosts.write_text("")
            with self.assertRaises(HostKeyError):
                await self.conch()

        return defer.ensureDeferred(run())

    def test_host_key_is_created_once_and_kept(self) -> defer.Deferred:
        async def run() -> None:
            key_file = self.base / "server/host_key"
            self.assertEqual(key_file.stat().st_mode & 0o777, 0o600)
            first = key_file.read_bytes()
            await self.service.stop()
            await self.service.start()
            self.assertEqual(key_file.read_bytes(), first)
            pub = (self.base / "server/host_key.pub").read_text()
            self.known_hosts.write_text(known_hosts_line(self.service.port, pub))
            s = await self.conch()
            self.assertEqual(await s.listdir("/archive"), [])

        return defer.ensureDeferred(run())


class TimeoutTests(SftpServerBase):
    server_extra = {"idle_timeout": "1s", "login_timeout": "1s"}

    def test_login_timeout_and_idle_timeout(self) -> defer.Deferred:
        """A client that never logs in is cut off after login_timeout; a logged-in client that
        stays silent is cut off after idle_timeout."""

        async def run() -> None:
            import socket

            def silent_client() -> float:
                started = time.monotonic()
                with socket.create_connection(("127.0.0.1", self.service.port)) as sock:
                    sock.settimeout(10)
                    sock.recv(100)  # the server's version line
                    sock.sendall(b"SSH-2.0-slow\r\n")  # then nothing more
                    while sock.recv(4096):
                        pass
                return time.monotonic() - started

            from twisted.internet import threads

            elapsed = await threads.deferToThread(silent_client)
            self.assertLess(elapsed, 3.0)
            s = await self.conch()
            await sleep(1.6)
            self.assertFalse(s.client.connected)

        return defer.ensureDeferred(run())

    def test_password_is_checked_against_a_bcrypt_hash(self) -> defer.Deferred:
        import bcrypt
        from twisted.cred.credentials import UsernamePassword
        from twisted.cred.error import UnauthorizedLogin

        from engine.sftp.server import BcryptChecker

        ctx = self.service.factory.ctx
        ctx.partners["acme"].password_bcrypt = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4))

        async def run() -> None:
            checker = BcryptChecker(ctx)
            self.assertEqual(
                await checker.requestAvatarId(UsernamePassword(b"acme", b"s3cret")), b"acme"
            )
            for user, pw in [(b"acme", b"wrong"), (b"globex", b"s3cret"), (b"nobody", b"x")]:
                with self.assertRaises(UnauthorizedLogin):
                    await checker.requestAvatarId(UsernamePassword(user, pw))

        return defer.ensureDeferred(run())


class QuotaTests(SftpServerBase):
    partner_extra = {"max_file_size": 1000, "quota_files": 2, "quota_bytes": 1500}

    def test_size_and_count_quotas(self) -> defer.Deferred:
        async def run() -> None:
            s = await self.conch()
            with self.assertRaises(SFTPError):
                await s.write_atomically("/inbound", "big.bin", b"x" * 1001)
            self.assertEqual(os.listdir(self.acme_root / "inbound"), [])
            await s.write_atomically("/inbound", "one.bin", b"1" * 800)
            with self.assertRaises(SFTPError):  # 800 + 800 > quota_bytes
                await s.write_atomically("/inbound", "two.bin", b"2" * 800)
            await s.write_atomically("/inbound", "two.bin", b"2" * 100)
            with self.assertRaises(SFTPError):  # third file > quota_files
                await s.write_atomically("/inbound", "three.bin", b"3")
            self.assertEqual(sorted(os.listdir(self.acme_root / "inbound")), ["one.bin", "two.bin"])
            reasons = [d["reason"] for _, d in self.actions("sftp.refused")]
            self.assertTrue(any("maximum of 1000" in r for r in reasons), reasons)
            self.assertTrue(any("quota of 1500" in r for r in reasons), reasons)
            self.assertTrue(any("file quota" in r for r in reasons), reasons)

        return defer.ensureDeferred(run())

    def test_an_aborted_upload_leaves_nothing(self) -> defer.Deferred:
        async def run() -> None:
            s = await self.conch()
            write = filetransfer.FXF_WRITE | filetransfer.FXF_CREAT | filetransfer.FXF_TRUNC
            f = await s.client.openFile(b"/inbound/partial.bin", write, {})
            await f.writeChunk(0, b"p" * 500)
            s.transport.loseConnection()  # the client goes away without closing the file
            await sleep(0.3)
            self.assertEqual(os.listdir(self.acme_root / "inbound"), [])
            [(target, detail)] = self.actions("sftp.upload_aborted")
            self.assertEqual((target, detail["size"]), ("/inbound/partial.bin", 500))

        return defer.ensureDeferred(run())


# --------------------------------------------------------------------------- pickup (Engine)

ROUTES = "store: var/wharf.db\nreload_interval: 0\n"
CHANNEL = """\
source:
  dropfolder:
    path: {root}/inbound
    processed_dir: {root}/archive
    error_dir: {root}/error
    min_age: 300ms
    poll_interval: 100ms
codec:
  raw: {{}}
destinations:
  - name: out
    file: {{dir: var/out/acme}}
"""


class PickupTests(SftpServerBase):
    def setUp(self) -> defer.Deferred:
        d = super().setUp()
        return d.addCallback(lambda _: defer.ensureDeferred(self._engine()))

    async def _engine(self) -> None:
        project = self.base / "project"
        (project / "channels").mkdir(parents=True)
        (project / "routes.yaml").write_text(ROUTES)
        (project / "channels/acme_in.yaml").write_text(CHANNEL.format(root=self.acme_root))
        self.engine = Engine(project, reactor)
        await self.engine.start()
        self.addCleanup(lambda: defer.ensureDeferred(self.engine.stop()))
        # stop the server (and its audit of logouts) before the engine's store goes away
        self.addCleanup(lambda: defer.ensureDeferred(self.service.stop()))
        # from now on the server's audit goes to the engine's store, as the wiring will do
        self.service.audit = None
        self.service.factory.ctx._audit = self.store_audit

    def store_audit(self, actor: str, action: str, target: str, detail: dict) -> Any:
        self.audits.append((actor, action, target, detail))
        return self.engine.executor.submit(
            self.engine.store.audit, actor, action, target, detail, time.time()
        )

    async def messages(self) -> list[Any]:
        return await self.engine.executor.submit(self.engine.store.search, limit=100)

    def test_slow_upload_is_not_picked_up_before_it_is_complete(self) -> defer.Deferred:
        """A conch client writes in pieces with pauses longer than min_age: nothing is taken
        until it closes the file; then the drop folder takes it and archives it after the
        commit; the store's audit log has the upload with its sha256."""

        async def run() -> None:
            s = await self.conch()
            write = filetransfer.FXF_WRITE | filetransfer.FXF_CREAT | filetransfer.FXF_TRUNC
            f = await s.client.openFile(b"/inbound/slow.hl7", write, {})
            pieces = [os.urandom(4000) for _ in range(4)]
            offset = 0
            for piece in pieces:
                await f.writeChunk(offset, piece)
                offset += len(piece)
                await sleep(0.6)  # twice min_age, 6 polls
                self.assertEqual(await self.messages(), [])
                self.assertEqual(os.listdir(self.acme_root / "archive"), [])
                self.assertEqual(
                    [n for n in os.listdir(self.acme_root / "inbound") if not n.startswith(".")],
                    [],
                )
                self.assertTrue(self.service.uploads.is_open(self.acme_root / "inbound/slow.hl7"))
            await f.close()
            self.assertFalse(self.service.uploads.is_open(self.acme_root / "inbound/slow.hl7"))
            data = b"".join(pieces)
            deadline = time.time() + 10
            while time.time() < deadline and not (self.acme_root / "archive/slow.hl7").exists():
                await sleep(0.05)
            self.assertEqual((self.acme_root / "archive/slow.hl7").read_bytes(), data)
            rows = await self.messages()
            self.assertEqual(len(rows), 1)
            entries = await self.engine.executor.submit(self.engine.store.audit_entries, 50)
            uploads_ = [e for e in entries if e["action"] == "sftp.upload"]
            self.assertEqual(len(uploads_), 1)
            self.assertEqual(uploads_[0]["actor"], "sftp:acme")
            self.assertEqual(uploads_[0]["target"], "/inbound/slow.hl7")
            self.assertEqual(uploads_[0]["detail"]["sha256"], hashlib.sha256(data).hexdigest())
            self.assertEqual(uploads_[0]["detail"]["size"], len(data))
            self.assertTrue(await self.engine.executor.submit(self.engine.store.verify_audit))
            # the partner sees the archived file and can collect it
            self.assertEqual(await s.read("/archive/slow.hl7", 10**6), data)

        return defer.ensureDeferred(run())

    def test_openssh_uploads_are_picked_up_and_outbound_deletes_audited(self) -> defer.Deferred:
        self.require_openssh()

        async def run() -> None:
            for i in range(5):
                (self.base / f"m{i}.txt").write_bytes(f"message {i}\n".encode())
            (self.acme_root / "outbound/ack.txt").write_text("ack")
            r = await self.sftp(
                ["cd inbound"] + [f"put m{i}.txt" for i in range(5)] + ["rm /outbound/ack.txt"]
            )
            self.assertEqual(r.rc, 0, r.err)
            deadline = time.time() + 10
            while time.time() < deadline and len(os.listdir(self.acme_root / "archive")) < 5:
                await sleep(0.05)
            self.assertEqual(
                sorted(os.listdir(self.acme_root / "archive")), [f"m{i}.txt" for i in range(5)]
            )
            self.assertEqual(len(await self.messages()), 5)
            entries = await self.engine.executor.submit(self.engine.store.audit_entries, 50)
            actions = [e["action"] for e in entries if e["actor"] == "sftp:acme"]
            self.assertEqual(actions.count("sftp.upload"), 5)
            self.assertEqual(actions.count("sftp.delete"), 1)
            self.assertEqual(actions.count("sftp.login"), 1)

        return defer.ensureDeferred(run())


# --------------------------------------------------------------------------- kill -9

RUNNER = """\
import sys, time
from pathlib import Path
from twisted.internet import defer, reactor
from engine.runtime import Engine
from engine.sftp.config import parse_server_config
from engine.sftp.service import SftpServerService

base, pub, port_file = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])

async def main():
    engine = Engine(base / "project", reactor)
    await engine.start()
    config = parse_server_config({
        "listen": "tcp:0:interface=127.0.0.1", "host_key": "server/host_key",
        "partners": [{"name": "acme", "root": "partners/acme", "authorized_keys": [pub]}]})
    def audit(actor, action, target, detail):
        return engine.executor.submit(engine.store.audit, actor, action, target, detail,
                                      time.time())
    service = SftpServerService(config, root=base, reactor=reactor, audit=audit)
    await service.start()

    async def shutdown():
        await service.stop()
        await engine.stop()

    reactor.addSystemEventTrigger(
        "before", "shutdown", lambda: defer.ensureDeferred(shutdown())
    )
    port_file.write_text(str(service.port))

reactor.callWhenRunning(lambda: defer.ensureDeferred(main()).addErrback(
    lambda f: (f.printTraceback(), reactor.stop())))
reactor.run()
"""


class KillNineTests(unittest.TestCase):
    """``kill -9`` of a process running the Engine and the SFTP server: after an upload and
    before the commit, and in the middle of an upload. After a restart the complete file is
    picked up exactly once; the partial upload is never ingested and its temporary file is
    removed."""

    def setUp(self) -> None:
        reason = missing_openssh()
        if reason:
            raise unittest.SkipTest(reason)
        self.base = Path(tempfile.mkdtemp(prefix="wharf-sftp-kill-"))
        self.addCleanup(shutil.rmtree, self.base, True)
        self.key, self.pub = keygen(self.base / "acme")
        self.root = self.base / "partners/acme"
        project = self.base / "project"
        (project / "channels").mkdir(parents=True)
        (project / "routes.yaml").write_text(ROUTES)
        (self.base / "runner.py").write_text(RUNNER)
        self.procs: list[Any] = []
        self.addCleanup(self._kill_all)

    def channel(self, min_age: str) -> None:
        text = CHANNEL.format(root=self.root).replace("min_age: 300ms", f"min_age: {min_age}")
        (self.base / "project/channels/acme_in.yaml").write_text(text)

    def _kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)

    async def start(self) -> int:
        import subprocess
        import sys

        port_file = self.base / "port"
        port_file.unlink(missing_ok=True)
        log = open(self.base / f"runner{len(self.procs)}.log", "wb")
        self.addCleanup(log.close)
        proc = subprocess.Popen(
            [
                sys.executable,
                str(self.base / "runner.py"),
                str(self.base),
                self.pub,
                str(port_file),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(Path(__file__).resolve().parents[2]),
        )
        self.procs.append(proc)
        deadline = time.time() + 20
        while not port_file.exists() or not port_file.read_text():
            if time.time() > deadline or proc.poll() is not None:
                self.fail((self.base / f"runner{len(self.procs) - 1}.log").read_text())
            await sleep(0.05)
        port = int(port_file.read_text())
        self.known_hosts = self.base / "known_hosts"
        pub = (self.base / "server/host_key.pub").read_text()
        self.known_hosts.write_text(known_hosts_line(port, pub))
        return port

    def kill9(self) -> None:
        proc = self.procs[-1]
        proc.kill()  # SIGKILL
        proc.wait(10)

    def test_kill_9_between_upload_and_commit_and_during_an_upload(self) -> defer.Deferred:
        async def run() -> None:
            self.channel("1h")  # nothing is committed before the kill
            port = await self.start()
            (self.base / "a.txt").write_bytes(b"complete file\n")
            r = await sftp_batch(
                ["put a.txt /inbound/a.txt"],
                port=port,
                user="acme",
                key=self.key,
                known_hosts=self.known_hosts,
                cwd=self.base,
            )
            self.assertEqual(r.rc, 0, r.err)
            s = await connect(
                reactor,
                Remote("127.0.0.1", port, "acme", str(self.key), str(self.known_hosts)),
            )
            write = filetransfer.FXF_WRITE | filetransfer.FXF_CREAT | filetransfer.FXF_TRUNC
            f = await s.client.openFile(b"/inbound/b.txt", write, {})
            await f.writeChunk(0, b"first half of b ")
            self.kill9()  # upload of b.txt in progress; a.txt uploaded, not committed
            s.close()
            names = sorted(os.listdir(self.root / "inbound"))
            self.assertEqual(len(names), 2, names)
            part, complete = names
            self.assertEqual(complete, "a.txt")
            self.assertTrue(part.startswith(".b.txt.") and part.endswith(".wharf-part"), part)
            self.assertEqual(os.listdir(self.root / "archive"), [])

            self.channel("300ms")
            await self.start()
            deadline = time.time() + 15
            while time.time() < deadline and not (self.root / "archive/a.txt").exists():
                await sleep(0.05)
            self.assertEqual((self.root / "archive/a.txt").read_bytes(), b"complete file\n")
            self.assertEqual(os.listdir(self.root / "inbound"), [])  # partial upload swept
            await sleep(0.5)
            proc = self.procs[-1]
            proc.terminate()
            proc.wait(10)
            from engine.store import SqliteStore

            store = SqliteStore(self.base / "project/var/wharf.db").open()
            try:
                rows = store.search(limit=100)
                self.assertEqual(len(rows), 1)
                self.assertEqual(store.get_content(rows[0].id, "raw"), b"complete file\n")
                uploads_ = [e for e in store.audit_entries(100) if e["action"] == "sftp.upload"]
                self.assertEqual([e["target"] for e in uploads_], ["/inbound/a.txt"])
            finally:
                store.close()

        return defer.ensureDeferred(run())
