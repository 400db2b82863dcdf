"""The MLLP source of a real ``wharf run`` against senders nobody here wrote, over real sockets.

Each test runs the sample ERP (``wharf demo-erp``) and ``wharf run`` on a copy of the shipped
project (channel ``usage_mllp``: MLLP -> ERP issue + archive, ``respond_from: after_store``)
as subprocesses, with the MLLP listener on a free port and the store in the test's folder.
Senders: python-hl7's ``mllp_send`` command and ``hl7.client.MLLPClient``, raw sockets with
MLLP release 2 framing (0x0B ... 0x1C 0x0D), and Python ``ssl`` clients for mutual TLS.
ACK contents follow HL7 v2.5.1 §2.9: MSA-1 the code, MSA-2 the acknowledged MSH-10, MSH-3/4
and MSH-5/6 swapped, ERR-3 the table 0357 code (ERR-1 before v2.5).
"""

from __future__ import annotations

import datetime
import ipaddress
import select
import socket
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hl7
import hl7.client
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from engine.model import MessageRow
from tests.integration.helpers import (
    Proc,
    Processes,
    free_port,
    keys_by_control_id,
    make_messages,
    open_store,
    port_open,
    read_ndjson,
    run_cli,
    wait_until,
    wharf_env,
)

ROOT = Path(__file__).resolve().parents[2]
HL7_DIR = ROOT / "samples" / "hl7"
#: Original mode (MSH-15/16 empty): answered AA.
STENT = HL7_DIR / "dft_p03_stent_cath.hl7"
#: Enhanced mode in the sample itself (MSH-15=AL, MSH-16=NE): answered CA.
SCREW = HL7_DIR / "dft_p03_screw.hl7"
LATIN1 = HL7_DIR / "dft_p03_latin1.hl7"
UNSUPPORTED = HL7_DIR / "broken" / "unsupported_version.hl7"
MLLP_SEND = Path(sys.executable).parent / "mllp_send"
MLLP_CHANNEL = "usage_mllp"

SB = b"\x0b"
EB = b"\x1c\x0d"


# --------------------------------------------------------------------------- MLLP on a socket


def frame(message: bytes) -> bytes:
    return SB + message + EB


class MllpConn:
    """A blocking MLLP client on one socket (plain or TLS): frames out, unframes replies."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    @classmethod
    def connect(cls, port: int, timeout: float = 10.0) -> MllpConn:
        return cls(socket.create_connection(("127.0.0.1", port), timeout=timeout))

    def send(self, *messages: bytes) -> None:
        """All ``messages``, framed, in ONE write."""
        self.sock.sendall(b"".join(frame(m) for m in messages))

    def read(self) -> bytes:
        """The next complete frame's content; ConnectionError if the peer closes first."""
        while True:
            start = self.buf.find(SB)
            if start >= 0:
                end = self.buf.find(EB, start)
                if end >= 0:
                    out = bytes(self.buf[start + 1 : end])
                    del self.buf[: end + 2]
                    return out
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed before a complete frame")
            self.buf += chunk

    def readable_within(self, seconds: float) -> bool:
        """Whether anything (bytes or EOF) arrives within ``seconds``."""
        if self.buf:
            return True
        ready, _, _ = select.select([self.sock], [], [], seconds)
        return bool(ready)

    def exchange(self, message: bytes) -> bytes:
        self.send(message)
        return self.read()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> MllpConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def unframe(data: bytes) -> bytes:
    """The content of the first MLLP block in ``data`` (e.g. what ``mllp_send`` printed)."""
    start = data.index(SB)
    return data[start + 1 : data.index(EB, start)]


# --------------------------------------------------------------------------- HL7 bits


def segments(raw: bytes, encoding: str = "utf-8") -> dict[str, list[str]]:
    """Segment name -> the fields of its first occurrence (``|`` separated, index n = SEG-n;
    for MSH index n is MSH-(n+1), MSH-1 being the separator itself)."""
    out: dict[str, list[str]] = {}
    for line in raw.decode(encoding).split("\r"):
        line = line.strip("\n")
        if line:
            fields = line.split("|")
            out.setdefault(fields[0], fields)
    return out


def field(segs: dict[str, list[str]], name: str, n: int) -> str:
    """SEG-n (MSH-n counts MSH-1 as the separator)."""
    fields = segs.get(name, [])
    i = n - 1 if name == "MSH" else n
    return fields[i] if 0 <= i < len(fields) else ""


def msa(raw: bytes, encoding: str = "utf-8") -> tuple[str, str]:
    """(MSA-1, MSA-2) of an ACK."""
    segs = segments(raw, encoding)
    assert "MSA" in segs, f"no MSA in {raw!r}"
    return field(segs, "MSA", 1), field(segs, "MSA", 2)


def with_msh(raw: bytes, n: int, value: str) -> bytes:
    """Set MSH-``n`` of a standard-delimiter message."""
    head, sep, rest = raw.partition(b"\r")
    parts = head.decode().split("|")
    while len(parts) < n:
        parts.append("")
    parts[n - 1] = value
    return "|".join(parts).encode() + sep + rest


def stent(control_id: str) -> bytes:
    """The original-mode stent sample with MSH-10 = ``control_id``."""
    return with_msh(STENT.read_bytes(), 10, control_id)


# --------------------------------------------------------------------------- a running wharf


@dataclass
class Running:
    root: Path
    env: dict[str, str]
    port: int  # the MLLP listener
    record: Path  # the receiver's NDJSON
    db: Path
    wharf: Proc


def start_stack(procs: Processes, root: Path, tmp_path: Path, port: int | None = None) -> Running:
    """``wharf demo-erp`` and ``wharf --root ROOT run``; returns once MLLP listens."""
    erp_port = free_port()
    env = wharf_env(tmp_path, erp_port)
    if port is not None:
        env["MLLP_PORT"] = str(port)
    record = tmp_path / "erp.ndjson"
    procs.receiver(erp_port, record, env)
    proc = procs.wharf(root, env)
    mllp_port = int(env["MLLP_PORT"])
    wait_until(lambda: port_open(mllp_port), 15, f"MLLP listening on {mllp_port}", procs=[proc])
    return Running(root, env, mllp_port, record, Path(env["WHARF_DB"]), proc)


def mllp_rows(db: Path) -> list[MessageRow]:
    """Every stored message of the MLLP channel."""
    with open_store(db) as store:
        return store.search(channel=MLLP_CHANNEL, limit=1_000_000)


def rows_for(db: Path, control_id: str) -> list[MessageRow]:
    return [r for r in mllp_rows(db) if r.control_id == control_id]


def erp_entries(record: Path, control_id: str) -> list[dict[str, Any]]:
    return [e for e in read_ndjson(record) if e.get("body", {}).get("source_message") == control_id]


def settled(db: Path, control_ids: set[str]) -> bool:
    """Every message of ``control_ids`` stored, out of received/queued, no open delivery."""
    with open_store(db) as store:
        rows = [
            r
            for r in store.search(channel=MLLP_CHANNEL, limit=1_000_000)
            if r.control_id in control_ids
        ]
        if {r.control_id for r in rows} != control_ids:
            return False
        if any(r.status in ("received", "queued") for r in rows):
            return False
        return all(
            d["status"] not in ("pending", "inflight")
            for r in rows
            for d in store.deliveries_for(r.id)
        )


# --------------------------------------------------------------------------- 1. mllp_send


@pytest.mark.integration
def test_mllp_send_gets_aa_and_an_unsupported_version_gets_ar_203(
    project_dir: Path, tmp_path: Path
) -> None:
    """python-hl7's ``mllp_send`` command sends the stent sample: the ACK it prints is AA for
    CATH-55001 with the sending and receiving application/facility swapped, and the ERP gets
    exactly one issue for it. The v2.1 sample gets AR with ERR naming 203 (unsupported
    version id) and nothing is stored for it."""
    with Processes(tmp_path) as procs:
        run = start_stack(procs, project_dir, tmp_path)

        def send(path: Path) -> bytes:
            done = subprocess.run(
                [str(MLLP_SEND), "--loose", "-p", str(run.port), "-f", str(path), "127.0.0.1"],
                capture_output=True,
                timeout=30,
                check=False,
            )
            assert done.returncode == 0, done.stderr.decode(errors="replace")
            return unframe(done.stdout)

        ack = send(STENT)
        print(f"\nmllp_send ACK: {ack!r}")
        code, acked = msa(ack)
        assert (code, acked) == ("AA", "CATH-55001")
        sent, got = segments(STENT.read_bytes()), segments(ack)
        assert [field(got, "MSH", n) for n in (3, 4, 5, 6)] == [
            field(sent, "MSH", n) for n in (5, 6, 3, 4)
        ]
        assert [field(got, "MSH", n) for n in (3, 4, 5, 6)] == [
            "WHARF",
            "GENHOSP",
            "CATH_POU",
            "GENHOSP",
        ]
        assert field(got, "MSH", 9).startswith("ACK")
        assert field(got, "MSH", 12) == "2.5.1"
        # python-hl7 reads the same ACK the same way.
        parsed = hl7.parse(ack.decode())
        assert str(parsed.segment("MSA")[1]) == "AA"
        assert str(parsed.segment("MSA")[2]) == "CATH-55001"

        nak = send(UNSUPPORTED)
        print(f"mllp_send NAK: {nak!r}")
        code, acked = msa(nak)
        assert (code, acked) == ("AR", "POU-BAD-2")
        err = segments(nak).get("ERR")
        assert err is not None, nak
        # v2.1 is before v2.5: ERR-1 = MSH^1^12^203&Unsupported version id&HL70357
        assert "203" in err[1].split("^")[3].split("&"), err

        wait_until(lambda: erp_entries(run.record, "CATH-55001"), 20, "the issue at the ERP")
        wait_until(lambda: settled(run.db, {"CATH-55001"}), 20, "CATH-55001 settled")
        entries = erp_entries(run.record, "CATH-55001")
        assert len(entries) == 1, entries
        assert entries[0]["body"]["lines"][0]["item_id"] == "ITEM-100789"
        assert [r.status for r in rows_for(run.db, "CATH-55001")] == ["sent"]
        assert rows_for(run.db, "POU-BAD-2") == []
        assert erp_entries(run.record, "POU-BAD-2") == []


# --------------------------------------------------------------------------- 2. MLLPClient


@pytest.mark.integration
def test_mllpclient_latin1_message_gets_aa_in_its_charset(
    project_dir: Path, tmp_path: Path
) -> None:
    """python-hl7's ``MLLPClient`` sends the ISO 8859-1 sample as bytes: AA for POU-000202,
    and the ACK declares the same character set (MSH-18 8859/1); the stored raw message is
    the bytes sent (the umlauts intact) and the ERP gets the issue (10 EA = 1 PK)."""
    raw = LATIN1.read_bytes()
    assert "MÜLLER".encode("latin-1") in raw  # one byte per character, not UTF-8
    with Processes(tmp_path) as procs:
        run = start_stack(procs, project_dir, tmp_path)
        with hl7.client.MLLPClient("127.0.0.1", run.port) as client:
            client.socket.settimeout(10)
            reply = client.send_message(raw)
        ack = unframe(reply)
        print(f"\nMLLPClient ACK: {ack!r}")
        assert msa(ack, "latin-1") == ("AA", "POU-000202")
        assert field(segments(ack, "latin-1"), "MSH", 18) == "8859/1"

        wait_until(lambda: settled(run.db, {"POU-000202"}), 20, "POU-000202 settled")
        [row] = rows_for(run.db, "POU-000202")
        with open_store(run.db) as store:
            assert store.get_content(row.id, "raw") == raw
            assert store.get_content(row.id, "response") == ack
        entries = erp_entries(run.record, "POU-000202")
        assert len(entries) == 1
        line = entries[0]["body"]["lines"][0]
        assert line["item_id"] == "ITEM-200022"  # FT1-10 = 10 EA of gauze: 1 PK of stock
        assert (line["quantity"], line["uom"]) == ("1", "PK")


# --------------------------------------------------------------------------- 3. lost ACK


@pytest.mark.integration
def test_resend_after_a_lost_ack_gets_the_same_ack_and_a_changed_message_is_a_conflict(
    project_dir: Path, tmp_path: Path
) -> None:
    """A sender whose ACK was lost (it reads nothing useful and hangs up) sends the same bytes
    again on a new connection: the second ACK is byte-for-byte the first (the stored one,
    MSH-7/MSH-10 included), the store holds one message and the ERP gets one issue. A sender
    that hangs up before reading anything is answered on its resend too, still one message.
    The same MSH-10 with other content is answered AE with ERR-3 205, kept with status
    ``conflict`` and not delivered."""
    cid, early = "LOST-0001", "LOST-0002"
    raw = stent(cid)
    with Processes(tmp_path) as procs:
        run = start_stack(procs, project_dir, tmp_path)
        with MllpConn.connect(run.port) as conn:
            first = conn.exchange(raw)  # the ACK the sender never saw
        time.sleep(1.1)  # a fresh ACK would carry another MSH-7 as well as another MSH-10
        with MllpConn.connect(run.port) as conn:
            second = conn.exchange(raw)
        print(f"\nfirst ACK:  {first!r}\nsecond ACK: {second!r}")
        assert msa(first) == ("AA", cid)
        assert second == first

        # Hang up right after sending, before the ACK: the resend is answered, once stored.
        with MllpConn.connect(run.port) as conn:
            conn.send(stent(early))
        with MllpConn.connect(run.port) as conn:
            resent = conn.exchange(stent(early))
            again = conn.exchange(stent(early))
        assert msa(resent) == ("AA", early)
        assert again == resent

        wait_until(lambda: settled(run.db, {cid, early}), 20, "both messages settled")
        listing = run_cli(run.root, run.env, "messages", "--channel", MLLP_CHANNEL)
        assert listing.returncode == 0, listing.stderr
        lines = [ln for ln in listing.stdout.splitlines() if ln.split()[-1:] == [cid]]
        assert len(lines) == 1, listing.stdout
        assert " sent " in lines[0]
        for c in (cid, early):
            [row] = rows_for(run.db, c)
            assert row.status == "sent"
            assert len(erp_entries(run.record, c)) == 1
        [row] = rows_for(run.db, cid)
        with open_store(run.db) as store:
            assert store.get_content(row.id, "response") == first

        # Same MSH-10, other content: AE 205, kept as a conflict, not processed.
        changed = raw.replace(b"CU-99a001", b"CU-99a999")
        assert changed != raw
        with MllpConn.connect(run.port) as conn:
            nak = conn.exchange(changed)
        print(f"conflict ACK: {nak!r}")
        assert msa(nak) == ("AE", cid)
        err3 = field(segments(nak), "ERR", 3).split("^")
        assert err3[0] == "205" and err3[-1] == "HL70357", nak
        assert field(segments(nak), "ERR", 2) == "MSH^1^10"

        rows = {r.status: r for r in rows_for(run.db, cid)}
        assert sorted(rows) == ["conflict", "sent"]
        with open_store(run.db) as store:
            assert store.deliveries_for(rows["conflict"].id) == []
            assert store.get_content(rows["conflict"].id, "response") == nak
        time.sleep(1.0)  # give a wrong delivery the chance to show up
        assert len(erp_entries(run.record, cid)) == 1
        assert sorted(r.status for r in rows_for(run.db, cid)) == ["conflict", "sent"]


# --------------------------------------------------------------------------- 4. pipelining


@pytest.mark.integration
def test_pipelined_frames_in_one_write_are_answered_in_order(
    project_dir: Path, tmp_path: Path
) -> None:
    """Five framed messages in ONE write on one connection are answered with five AAs whose
    MSA-2 come back in the order the messages were sent; all five reach the ERP."""
    messages = make_messages(5, "PIPE", sample=STENT)
    cids = [c for c, _ in messages]
    with Processes(tmp_path) as procs:
        run = start_stack(procs, project_dir, tmp_path)
        with MllpConn.connect(run.port) as conn:
            conn.send(*(m for _, m in messages))
            acks = [msa(conn.read()) for _ in messages]
            assert not conn.readable_within(0.3), "more replies than frames"
        print(f"\npipelined ACKs: {acks}")
        assert acks == [("AA", c) for c in cids]
        wait_until(lambda: settled(run.db, set(cids)), 20, "the five settled")
        assert set(keys_by_control_id(read_ndjson(run.record))) >= set(cids)


# --------------------------------------------------------------------------- 5. concurrency


@pytest.mark.integration
def test_32_concurrent_connections_of_20_messages_all_acked_and_delivered(
    project_dir: Path, tmp_path: Path
) -> None:
    """32 connections at once, each sending 20 distinct messages one after another (each
    waiting for its ACK): all 640 get AA for their own MSH-10, and the ERP ends with 640
    distinct Idempotency-Keys, one per control id."""
    conns, per_conn = 32, 20
    batches = [make_messages(per_conn, f"C{i:02d}-", sample=STENT) for i in range(conns)]
    cids = {c for b in batches for c, _ in b}
    assert len(cids) == conns * per_conn
    results: dict[str, tuple[str, str]] = {}
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(conns, timeout=30)

    with Processes(tmp_path) as procs:
        run = start_stack(procs, project_dir, tmp_path)

        def sender(batch: list[tuple[str, bytes]]) -> None:
            try:
                with MllpConn.connect(run.port, timeout=30) as conn:
                    barrier.wait()
                    for cid, data in batch:
                        answer = msa(conn.exchange(data))
                        with lock:
                            results[cid] = answer
            except Exception as e:
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")

        threads = [threading.Thread(target=sender, args=(b,), daemon=True) for b in batches]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        acked = time.monotonic() - t0
        assert not any(t.is_alive() for t in threads), "a sender hung"
        assert not errors, errors[:5]
        assert set(results) == cids
        wrong = {c: a for c, a in results.items() if a != ("AA", c)}
        assert not wrong, list(wrong.items())[:5]

        def delivered() -> bool:
            keys = keys_by_control_id(read_ndjson(run.record))
            return cids <= set(keys)

        wait_until(delivered, 60, "640 control ids at the ERP", interval=0.25, procs=[run.wharf])
        done = time.monotonic() - t0
        keys = keys_by_control_id(read_ndjson(run.record))
        mine = {c: k for c, k in keys.items() if c in cids}
        all_keys = set().union(*mine.values())
        print(
            f"\n{len(cids)} messages over {conns} connections: all ACKed in {acked:.1f}s, "
            f"all at the ERP after {done:.1f}s; {len(all_keys)} distinct keys"
        )
        assert len(all_keys) == conns * per_conn
        assert all(len(k) == 1 for k in mine.values())


# --------------------------------------------------------------------------- 6. enhanced mode


@pytest.mark.integration
def test_enhanced_mode_commit_ack_and_no_ack_on_a_kept_connection(
    project_dir: Path, tmp_path: Path
) -> None:
    """Enhanced mode (HL7 v2.5.1 §2.9.3): MSH-15=AL, MSH-16=NE is answered with a commit ACK
    (CA); MSH-15=NE gets no ACK at all, yet the connection stays open and a following
    original-mode message on it gets its AA (the first frame to come back). Both enhanced
    messages are stored and delivered."""
    base = SCREW.read_bytes()
    assert field(segments(base), "MSH", 15) == "AL"
    always = with_msh(base, 10, "ENH-AL-1")
    never = with_msh(with_msh(base, 10, "ENH-NE-1"), 15, "NE")
    original = stent("ENH-ORIG-1")
    with Processes(tmp_path) as procs:
        run = start_stack(procs, project_dir, tmp_path)
        with MllpConn.connect(run.port) as conn:
            ca = conn.exchange(always)
            print(f"\nAL/NE reply: {ca!r}")
            assert msa(ca) == ("CA", "ENH-AL-1")
            conn.send(never)
            assert not conn.readable_within(1.0), "MSH-15=NE was answered (or closed)"
            aa = conn.exchange(original)
            assert msa(aa) == ("AA", "ENH-ORIG-1")
            assert not conn.readable_within(0.3)
        wait_until(
            lambda: settled(run.db, {"ENH-AL-1", "ENH-NE-1", "ENH-ORIG-1"}), 20, "all settled"
        )
        for cid in ("ENH-AL-1", "ENH-NE-1", "ENH-ORIG-1"):
            assert [r.status for r in rows_for(run.db, cid)] == ["sent"], cid
            assert len(erp_entries(run.record, cid)) == 1, cid
        [row] = rows_for(run.db, "ENH-NE-1")
        with open_store(run.db) as store:
            assert not store.get_content(row.id, "response")


# --------------------------------------------------------------------------- 7. mutual TLS


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: Any) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_ca(cn: str) -> tuple[Any, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_leaf(
    ca_key: Any, ca_cert: x509.Certificate, cn: str, *, server: bool
) -> tuple[Any, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return key, builder.sign(ca_key, hashes.SHA256())


def _tls_client(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def tls_connect(port: int, ctx: ssl.SSLContext, timeout: float = 10.0) -> MllpConn:
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        return MllpConn(ctx.wrap_socket(raw, server_hostname="localhost"))
    except BaseException:
        raw.close()
        raise


def refused(port: int, ctx: ssl.SSLContext, message: bytes) -> str:
    """How the server refused this client: the handshake failed, or the connection was
    closed (or reset) before any ACK. Fails when an ACK comes back or nothing happens."""
    try:
        conn = tls_connect(port, ctx)
    except (ssl.SSLError, ConnectionError) as e:
        return f"handshake: {type(e).__name__}: {e}"
    with conn:
        try:
            conn.send(message)
            reply = conn.read()
        except (ssl.SSLError, ConnectionError) as e:
            return f"after the handshake: {type(e).__name__}: {e}"
        except TimeoutError:
            pytest.fail("the server neither answered nor closed an unauthenticated client")
    pytest.fail(f"an unauthenticated client got an answer: {reply!r}")


@pytest.mark.integration
def test_mutual_tls_accepts_a_client_cert_of_the_ca_and_refuses_the_others(
    project_dir: Path, tmp_path: Path
) -> None:
    """The channel listens on ``ssl:`` with ``client_ca`` (mutual TLS; certificates made here
    with ``cryptography``). A client presenting a certificate of that CA (and checking the
    server's certificate for ``localhost``) gets AA; a client with no certificate and one
    whose certificate comes from another CA are refused (handshake error or the connection
    closed before any ACK) and nothing of theirs is stored."""
    certs = project_dir
    ca_key, ca_cert = make_ca("Wharf test CA")
    srv_key, srv_cert = make_leaf(ca_key, ca_cert, "127.0.0.1", server=True)
    cli_key, cli_cert = make_leaf(ca_key, ca_cert, "pou-cabinet-1", server=False)
    rogue_ca_key, rogue_ca_cert = make_ca("Rogue CA")
    rogue_key, rogue_cert = make_leaf(rogue_ca_key, rogue_ca_cert, "pou-cabinet-1", server=False)
    _write_cert(certs / "ca.crt", ca_cert)
    _write_key(certs / "server.key", srv_key)
    _write_cert(certs / "server.crt", srv_cert)
    client_dir = tmp_path / "client"
    client_dir.mkdir()
    for name, key, cert in (("client", cli_key, cli_cert), ("rogue", rogue_key, rogue_cert)):
        _write_key(client_dir / f"{name}.key", key)
        _write_cert(client_dir / f"{name}.crt", cert)

    port = free_port()
    channel = project_dir / "channels" / f"{MLLP_CHANNEL}.yaml"
    text = channel.read_text(encoding="utf-8")
    shipped = "    listen: tcp:${MLLP_PORT:-2575}:interface=${MLLP_INTERFACE:-127.0.0.1}\n"
    assert shipped in text, "the shipped listen line changed"
    channel.write_text(
        text.replace(
            shipped,
            f"    listen: ssl:{port}:interface=127.0.0.1:privateKey=server.key:"
            "certKey=server.crt\n    client_ca: ca.crt\n",
        ),
        encoding="utf-8",
    )

    with Processes(tmp_path) as procs:
        run = start_stack(procs, project_dir, tmp_path, port=port)
        good = _tls_client(certs / "ca.crt", client_dir / "client.crt", client_dir / "client.key")
        with tls_connect(port, good) as conn:
            assert conn.sock.getpeercert()["subject"] == ((("commonName", "127.0.0.1"),),)
            ack = conn.exchange(stent("TLS-OK-1"))
        print(f"\nmutual TLS ACK: {ack!r}")
        assert msa(ack) == ("AA", "TLS-OK-1")

        no_cert = refused(port, _tls_client(certs / "ca.crt"), stent("TLS-NOCERT-1"))
        rogue = refused(
            port,
            _tls_client(certs / "ca.crt", client_dir / "rogue.crt", client_dir / "rogue.key"),
            stent("TLS-ROGUE-1"),
        )
        print(f"no certificate refused at {no_cert}\nother CA refused at {rogue}")

        # The accepted client still works after the refusals.
        with tls_connect(port, good) as conn:
            assert msa(conn.exchange(stent("TLS-OK-2"))) == ("AA", "TLS-OK-2")

        wait_until(lambda: settled(run.db, {"TLS-OK-1", "TLS-OK-2"}), 20, "TLS messages settled")
        assert sorted(r.control_id for r in mllp_rows(run.db)) == ["TLS-OK-1", "TLS-OK-2"]
        assert len(erp_entries(run.record, "TLS-OK-1")) == 1
        assert run.wharf.alive()
