"""Listeners under a connection flood: what a legitimate sender gets while one address holds
every connection it can open.

``wharf run`` (subprocess) serves a copy of the shipped project with its ports moved. An
attacker at 127.0.0.2 (Linux routes all of 127/8 to lo) opens up to ``--connections`` sockets
to one listener and keeps them: on MLLP each trickles one byte of a frame that never ends
every ``--trickle`` seconds; on the HTTP listeners they stay idle (no byte at all), and every
socket the server closes is opened again. Meanwhile a legitimate sender at 127.0.0.1 sends one
message every half second on a new connection: a DFT^P03 over MLLP (usage_mllp), a
SupplyDelivery to the FHIR base (fhir_supply), a purchase order to the ERP webhook
(po_to_vendor).

For each listener it prints what the attacker held (sockets open at the end, sockets the
server closed or refused), and what the legitimate sender got: answers, failures (timeout,
reset, 503), p50 and max latency. Baseline in the same run: the same legitimate sends with no
attacker. Nothing is asserted (tests/integration/test_listener_admission.py asserts the
behaviour).

    python bench/listener_attack.py [--connections 1000] [--seconds 20] [--trickle 1]
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SB, EB = b"\x0b", b"\x1c\x0d"
POU_TOKEN = "wharf-demo-pou-token"
ERP_TOKEN = "wharf-demo-erp-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 60.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def start_wharf(tmp: Path) -> tuple[subprocess.Popen, dict[str, int]]:
    project = tmp / "project"
    project.mkdir()
    for name in ("routes.yaml", "channels", "mappings", "samples", "transforms"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, project / name)
        else:
            shutil.copy(src, project / name)
    ports = {
        name: free_port()
        for name in (
            "MLLP_PORT",
            "LEDGER_MLLP_PORT",
            "FHIR_PORT",
            "PO_HTTP_PORT",
            "RECEIPT_HTTP_PORT",
            "SFTP_PORT",
            "BILLING_PORT",
        )
    }
    env = {
        **os.environ,
        **{k: str(v) for k, v in ports.items()},
        "ERP_URL": f"http://127.0.0.1:{free_port()}",  # nobody: deliveries wait, ACKs do not
        "WHARF_LOG_LEVEL": "warn",
    }
    wharf = Path(sys.executable).parent / "wharf"
    log = open(tmp / "wharf.log", "w")
    proc = subprocess.Popen(
        [str(wharf), "--root", str(project), "run"], stdout=log, stderr=log, env=env
    )
    for key in ("MLLP_PORT", "FHIR_PORT", "PO_HTTP_PORT"):
        wait_port(ports[key])
    return proc, ports


# -- the attacker ------------------------------------------------------------------------------


class Attacker(threading.Thread):
    """Opens up to ``n`` sockets from 127.0.0.2 and keeps them open (reopening what the server
    closes); ``trickle`` > 0: each sends one byte of a never-ending MLLP frame that often."""

    def __init__(self, port: int, n: int, trickle: float) -> None:
        super().__init__(daemon=True)
        self.port, self.n, self.trickle = port, n, trickle
        self.stop = threading.Event()
        self.opened = self.closed_by_server = self.connect_failed = 0
        self.open: dict[int, socket.socket] = {}

    def _connect(self, sel: selectors.BaseSelector) -> None:
        s = socket.socket()
        s.setblocking(False)
        try:
            s.bind(("127.0.0.2", 0))
            err = s.connect_ex(("127.0.0.1", self.port))
        except OSError:
            s.close()
            self.connect_failed += 1
            return
        if err not in (0, errno.EINPROGRESS):
            s.close()
            self.connect_failed += 1
            return
        self.opened += 1
        self.open[s.fileno()] = s
        sel.register(s, selectors.EVENT_READ)

    def _drop(self, sel: selectors.BaseSelector, s: socket.socket) -> None:
        self.open.pop(s.fileno(), None)
        try:
            sel.unregister(s)
        except (KeyError, ValueError):
            pass
        s.close()

    def run(self) -> None:
        sel = selectors.DefaultSelector()
        next_trickle = time.monotonic()
        frame = SB + b"MSH|^~\\&|" + b"X" * 100000
        sent: dict[int, int] = {}
        while not self.stop.is_set():
            budget = 200  # (re)connects per turn
            while len(self.open) < self.n and budget > 0:
                self._connect(sel)
                budget -= 1
            for key, _ in sel.select(timeout=0.05):
                s = key.fileobj
                try:
                    data = s.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    self.closed_by_server += 1
                    self._drop(sel, s)
            if self.trickle > 0 and time.monotonic() >= next_trickle:
                next_trickle = time.monotonic() + self.trickle
                for fd, s in list(self.open.items()):
                    i = sent.get(fd, 0)
                    try:
                        s.send(frame[i : i + 1])
                        sent[fd] = i + 1
                    except (BlockingIOError, InterruptedError):
                        pass
                    except OSError:
                        self.closed_by_server += 1
                        sent.pop(fd, None)
                        self._drop(sel, s)
        for s in list(self.open.values()):
            s.close()


# -- the legitimate sender ---------------------------------------------------------------------


def mllp_send(port: int, seq: int, timeout: float) -> str:
    text = (
        "MSH|^~\\&|POU_CABINET|GENHOSP|WHARF|GENHOSP|20260115103000||DFT^P03^DFT_P03|"
        f"LEGIT-{os.getpid()}-{time.time_ns()}-{seq}|P|2.5.1\r"
        "EVN|P03|20260115103000\r"
        "PID|1||MRN12345^^^GENHOSP^MR||DOE^JANE||19600101|F\r"
        "PV1|1|O|OR^OR05^01^GENHOSP||||||||||||||||ENC-998877^^^GENHOSP^VN\r"
        f"FT1|1|L-{seq}||20260115093000|20260115103000|CG|278000123^BONE SCREW^99CDM"
        "|||2||||||OR^OR05^01^GENHOSP\r"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(SB + text.encode() + EB)
        got = b""
        while EB not in got:
            chunk = s.recv(65536)
            if not chunk:
                return "closed"
            got += chunk
    return "ok" if b"MSA|AA" in got or b"MSA|CA" in got else "nak"


def http_post(port: int, path: str, token: str, ctype: str, body: bytes, timeout: float) -> str:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head + body)
        got = b""
        while b"\r\n" not in got:
            chunk = s.recv(65536)
            if not chunk:
                return "closed"
            got += chunk
    status = got.split(b" ", 2)[1].decode()
    return "ok" if status.startswith("2") else status


def fhir_send(port: int, seq: int, timeout: float) -> str:
    doc = json.loads((ROOT / "samples/fhir/r5_supplydelivery_code.json").read_text())
    doc["identifier"] = [{"system": "urn:bench:attack", "value": f"{time.time_ns()}-{seq}"}]
    return http_post(
        port,
        "/fhir/R5/SupplyDelivery",
        POU_TOKEN,
        "application/fhir+json",
        json.dumps(doc).encode(),
        timeout,
    )


def po_send(port: int, seq: int, timeout: float) -> str:
    doc = json.loads((ROOT / "samples/erp/purchase_order_4500012345.json").read_text())
    doc["po_number"] = f"B{time.time_ns() % 10**9}{seq}"
    return http_post(
        port,
        "/erp/purchase-orders",
        ERP_TOKEN,
        "application/json",
        json.dumps(doc).encode(),
        timeout,
    )


def legit(send, port: int, count: int, every: float, timeout: float) -> dict:
    results: list[tuple[str, float]] = []
    for seq in range(count):
        start = time.monotonic()
        try:
            outcome = send(port, seq, timeout)
        except TimeoutError:
            outcome = "timeout"
        except ConnectionError as exc:
            outcome = type(exc).__name__
        except OSError as exc:
            outcome = f"OSError {exc.errno}"
        results.append((outcome, time.monotonic() - start))
        time.sleep(max(0.0, every - (time.monotonic() - start)))
    ok = sorted(t for o, t in results if o == "ok")
    failed: dict[str, int] = {}
    for o, _ in results:
        if o != "ok":
            failed[o] = failed.get(o, 0) + 1
    return {
        "sent": count,
        "ok": len(ok),
        "failed": failed,
        "p50_ms": ok[len(ok) // 2] * 1000 if ok else float("nan"),
        "max_ms": ok[-1] * 1000 if ok else float("nan"),
        "max_s_any": max(t for _, t in results),
    }


def scenario(name, send, port, args) -> None:
    base = legit(send, port, 6, 0.2, args.timeout)
    attacker = Attacker(port, args.connections, args.trickle if name == "mllp" else 0.0)
    attacker.start()
    time.sleep(args.warmup)
    held_at_start = len(attacker.open)
    under = legit(send, port, int(args.seconds / 0.5), 0.5, args.timeout)
    held = len(attacker.open)
    attacker.stop.set()
    attacker.join(10)
    print(
        f"{name:<6} alone: {base['ok']}/{base['sent']} ok, p50 {base['p50_ms']:.1f} ms | "
        f"attacked: {under['ok']}/{under['sent']} ok, p50 {under['p50_ms']:.1f} ms, "
        f"max {under['max_ms']:.1f} ms, failures {under['failed'] or 'none'} | attacker "
        f"(reopening what is closed): {attacker.opened} connects, {attacker.closed_by_server} "
        f"closed by the server, {held_at_start} sockets open on its side after "
        f"{args.warmup:g}s and {held} at the end",
        flush=True,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=20.0, help="legitimate sends under attack")
    p.add_argument("--trickle", type=float, default=1.0, help="seconds between trickled bytes")
    p.add_argument("--warmup", type=float, default=3.0, help="attack alone before measuring")
    p.add_argument("--timeout", type=float, default=5.0, help="a legitimate send gives up")
    p.add_argument("--only", default="mllp,fhir,http")
    p.add_argument("--keep", action="store_true")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="wharf-attack-"))
    proc, ports = start_wharf(tmp)
    try:
        print(
            f"{args.connections} attacker sockets from 127.0.0.2, a legitimate send every 0.5 s "
            f"for {args.seconds:g}s from 127.0.0.1 (timeout {args.timeout:g}s)"
        )
        runs = {
            "mllp": (mllp_send, ports["MLLP_PORT"]),
            "fhir": (fhir_send, ports["FHIR_PORT"]),
            "http": (po_send, ports["PO_HTTP_PORT"]),
        }
        for name in args.only.split(","):
            send, port = runs[name]
            scenario(name, send, port, args)
            time.sleep(2)
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
