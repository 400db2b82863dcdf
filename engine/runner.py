"""``wharf run``: the engine under the real reactor, and the ``--demo`` walk-through."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

#: The sandbox's ports: the same variables (and defaults) the shipped channels read, so moving
#: one moves both ends: ERP_PORT (the sandbox ERP; the channels' ERP_URL points at it when
#: ERP_URL is not set, and BILLING_FHIR_URL its /fhir) and BILLING_PORT (channels/
#: usage_ledger.yaml's billing destination).
DEMO_PORTS = {"ERP_PORT": 8089, "BILLING_PORT": 2576}
DEMO_PO_TOKEN = "wharf-demo-erp-token"  # channels/po_to_vendor.yaml holds its SHA-256
DEMO_POU_TOKEN = "wharf-demo-pou-token"  # channels/fhir_supply*.yaml hold its SHA-256


def env_port(name: str, default: int) -> int:
    """The port in environment variable ``name`` (``default`` when unset or empty);
    ValueError naming the variable when it is not a port."""
    text = os.environ.get(name) or str(default)
    if not text.isdigit() or not 0 < int(text) <= 65535:
        raise ValueError(f"{name} must be a port number in 1..65535 (got {text!r})")
    return int(text)


MLLP_SAMPLES = ("dft_p03_stent_cath.hl7", "dft_p03_latin1.hl7", "broken/unsupported_version.hl7")
#: The revenue-cycle page's demo (samples/hl7/revenue/, sent to the ledger's MLLP channel): the
#: charge code the billing sandbox is told to reject while its message goes through.
DEMO_REJECTED_CHARGE = "272100008"
#: How long chargeable usage may wait for an accepted charge in the demo (routes.yaml's
#: unbilled_after; 4h unless UNBILLED_AFTER says otherwise).
DEMO_UNBILLED_AFTER = "5s"


LOG_LEVELS = ("debug", "info", "warn", "error", "critical")


def log_level(env: dict[str, str] | os._Environ[str] = os.environ) -> LogLevel:
    """The level ``WHARF_LOG_LEVEL`` names (default ``info``); a ConfigError naming the
    variable, the levels and a did-you-mean for any other value."""
    from engine.errors import ConfigError
    from engine.spec import did_you_mean

    name = env.get("WHARF_LOG_LEVEL", "info").strip().lower() or "info"
    if name not in LOG_LEVELS:
        raise ConfigError(
            f"must be one of {', '.join(LOG_LEVELS)} "
            f"(got {env['WHARF_LOG_LEVEL']!r}){did_you_mean(name, LOG_LEVELS)}",
            file="environment",
            path="WHARF_LOG_LEVEL",
        )
    return LogLevel.levelWithName(name)


def _start_logging(fmt: str = "text") -> None:
    """Log to stdout as text, or (``json``) as one JSON object per line (engine/jsonlog.py);
    with json, what ``wharf run`` prints for a person goes to stderr, so every line of stdout
    is JSON."""
    level = log_level()
    predicate = LogLevelFilterPredicate(defaultLogLevel=level)
    if level > LogLevel.debug:
        # Twisted's own factory start/stop and access-log lines drown the engine's.
        predicate.setLogLevelForNamespace("twisted", LogLevel.warn)
    if fmt == "json":
        from engine.jsonlog import JsonLines

        sink: Any = JsonLines(sys.stdout)
        sys.stdout = sys.stderr
    else:
        sink = textFileLogObserver(sys.stdout)
    observer = FilteringLogObserver(sink, [predicate])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def run(args: argparse.Namespace) -> int:
    from twisted.internet import reactor

    from engine.errors import LintFailed
    from engine.runtime import Engine

    _start_logging(getattr(args, "log_format", "text"))
    root: Path = args.root
    sandbox = None
    if args.demo:
        os.environ.setdefault("UNBILLED_AFTER", DEMO_UNBILLED_AFTER)
    if args.demo and "ERP_URL" not in os.environ:
        from engine.sandbox.service import SandboxService

        try:
            erp_port, billing_port = (env_port(k, v) for k, v in DEMO_PORTS.items())
            po_port = env_port("PO_HTTP_PORT", 8091)
        except ValueError as exc:
            print(f"wharf: {exc}", file=sys.stderr)
            return 1
        os.environ["ERP_URL"] = f"http://127.0.0.1:{erp_port}"  # what the channels call
        os.environ.setdefault("BILLING_FHIR_URL", f"http://127.0.0.1:{erp_port}/fhir")
        sandbox = SandboxService(
            root / "var" / "sandbox.db",
            http_port=erp_port,
            mllp_port=billing_port,
            reactor=reactor,
            seed=root / "mappings" / "onhand.csv",
            # released purchase orders go to the po_to_vendor channel (its demo token)
            po_webhook=f"http://127.0.0.1:{po_port}/erp/purchase-orders",
            po_webhook_token=os.environ.get("WHARF_PO_TOKEN", DEMO_PO_TOKEN),
        )
        try:
            sandbox.start()
        except Exception as exc:  # a port in use
            print(f"wharf: the demo sandbox cannot start: {exc}", file=sys.stderr)
            return 1
        print(
            f"demo: ERP and billing sandbox on http://127.0.0.1:{erp_port} (ERP_PORT) and "
            f"mllp://127.0.0.1:{billing_port} (BILLING_PORT), state in var/sandbox.db"
        )
    try:
        engine = Engine(root, reactor)
    except LintFailed as exc:
        print(exc, file=sys.stderr)
        return 1
    exit_code = [0]

    admin: list[Any] = []

    async def main() -> None:
        await engine.start()
        print(
            f"wharf: running {len(engine.channels)} channel(s) from {root} "
            f"(store {engine.store.path}); Ctrl-C stops"
        )
        if engine.project.settings.admin is not None:
            admin.append(await start_console(engine, demo=args.demo))
        if args.demo:
            ok = await demo(engine, root, reactor, sandbox)
            exit_code[0] = 0 if ok else 1
            if args.exit_when_done:
                reactor.stop()

    async def shutdown() -> None:
        for console in admin:
            await console.stop()
        await engine.stop()
        if sandbox is not None:
            await sandbox.stop()

    reactor.addSystemEventTrigger("before", "shutdown", lambda: defer.ensureDeferred(shutdown()))
    _reload_on_sighup(engine, reactor)

    def failed(f: Any) -> None:
        from engine.errors import ListenFailed

        if f.check(ListenFailed):
            lines = f.value.problems
            print(f"wharf: cannot start: {len(lines)} listener(s) cannot listen", file=sys.stderr)
            for line in lines:
                print(f"  {line}", file=sys.stderr)
        else:
            print(f"wharf: start failed: {f.getErrorMessage()}", file=sys.stderr)
        exit_code[0] = 1
        if reactor.running:
            reactor.stop()

    reactor.callWhenRunning(lambda: defer.ensureDeferred(main()).addErrback(failed))
    reactor.run()
    return exit_code[0]


def _reload_on_sighup(engine: Any, reactor: Any) -> None:
    """SIGHUP: look for changed files now (what the ``reload_interval`` job does), so that
    every node of a cluster can be told to reload at once, also with the interval off."""
    import signal

    def reload() -> None:
        d = defer.ensureDeferred(engine.reload_if_changed())
        d.addErrback(lambda f: print(f"wharf: reload failed: {f.getErrorMessage()}"))

    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda *_: reactor.callFromThread(reload))


async def start_console(engine: Any, *, demo: bool = False) -> Any:
    """The admin listener of ``engine`` (routes.yaml ``admin:``), listening; it prints a one-time
    setup link when the store has no account. The demo says where the console is either way."""
    from engine.web.admin import AdminService

    quiet = (lambda _line: None) if demo else print  # the demo says it in its own words
    service = AdminService(engine, engine.project.settings.admin, out=quiet)
    try:
        await service.start()
    except Exception as exc:
        from engine.errors import ListenFailed

        where = engine.project.settings.admin.listen
        raise ListenFailed([f"routes.yaml: admin: cannot listen on {where!r}: {exc}"]) from exc
    url = service.url()
    if service.setup_link is None:
        print(f"console: {url}/ (log in with your account; `wharf user reset NAME` for a new link)")
    if demo and service.setup_link is not None:
        print(f"demo: open {service.setup_link} once to set the admin password, then {url}/")
    return service


async def demo(engine: Any, root: Path, reactor: Any, sandbox: Any = None) -> bool:
    """Drop the shipped samples into each drop folder and report where each message went.

    Run again in the same folder, the samples are the same messages (same MSH-3/4/10, same
    bytes): the store answers each as a duplicate and nothing is processed or sent twice. The
    demo says so (how many were already stored, from the first run) rather than waiting for
    deliveries that will not come; that is the promise it shows."""
    samples = sorted((root / "samples" / "hl7").glob("*.hl7"))
    broken = sorted((root / "samples" / "hl7" / "broken").glob("*.hl7"))
    targets = [
        (name, engine.sources[name].folder)
        for name in engine.sources
        if hasattr(engine.sources[name], "folder")
        and getattr(engine.channels.get(name), "codec_name", "") == "hl7v2"
    ]
    if not targets:
        print("demo: no drop-folder channel is running")
        return False
    before = await engine.executor.submit(_message_count, engine.store)
    started = time.time()
    prefix = f"demo-{int(started)}-"
    dropped = 0
    for _, folder in targets:
        for path in [*samples, *broken]:
            tmp = folder / f".{path.name}.part"
            shutil.copyfile(path, tmp)
            os.replace(tmp, folder / f"{prefix}{path.name}")
            dropped += 1
        print(f"demo: dropped {len(samples) + len(broken)} sample(s) into {folder}")
    for name, src in engine.sources.items():
        if getattr(src, "answers", False) and getattr(src, "port", None) is not None:
            picks = [root / "samples/hl7" / n for n in MLLP_SAMPLES]
            await send_over_mllp(name, src.port.getHost().port, picks, reactor)
    deadline = time.time() + 60
    rows: list[Any] = []
    while time.time() < deadline:
        await task.deferLater(reactor, 0.5, lambda: None)
        rows = await engine.executor.submit(engine.store.search, since=started - 1, limit=1000)
        busy = [r for r in rows if r.status in ("received", "queued")]
        pending_files = any(
            p.name.startswith(prefix) for _, f in targets for p in f.iterdir() if p.is_file()
        )
        if not busy and not pending_files:
            break  # every file taken (stored, a duplicate or refused), every message settled
    print("demo: results")
    for r in sorted(rows, key=lambda r: r.received_at):
        deliveries = await engine.executor.submit(engine.store.deliveries_for, r.id)
        where = ", ".join(f"{d['destination']}={d['status']}" for d in deliveries) or "-"
        note = f"  ({r.error})" if r.error else ""
        print(f"  {r.channel:<12} {r.control_id or '-':<14} {r.status:<8} {where}{note}")
    refused = 0
    for _, folder in targets:
        errors = sorted(p.name for p in (folder / "error").glob(f"{prefix}*.reason.txt"))
        refused += len(errors)
        for name in errors:
            reason = (folder / "error" / name).read_text().strip()
            print(f"  {name.removesuffix('.reason.txt')}: refused at the door: {reason}")
    # a file is its peer name in the store; a batch file is several messages
    stored_now = {r.peer for r in rows if r.source == "dropfolder"}
    taken = {
        p.name
        for name, folder in targets
        for p in getattr(engine.sources[name], "processed", folder / "processed").glob(f"{prefix}*")
    }
    duplicates = len(taken - stored_now)
    sent = sum(1 for r in rows if r.status == "sent")
    if duplicates > 0:
        print(
            f"demo: {duplicates} of the {dropped} dropped sample(s) were already in the store "
            f"(it held {before} message(s) from earlier runs in this folder): same sender and "
            "control id (MSH-3/4/10), same bytes, so each was taken as a duplicate and not "
            "processed or sent again; the MLLP resends above got their original ACKs"
        )
    if sandbox is not None:
        await task.deferLater(reactor, 0.5, lambda: None)
        c = sandbox.state.counts()
        shown = ("issues", "issue_lines", "charges", "requisitions")
        print(
            "demo: the sandbox ERP/billing now holds "
            + ", ".join(f"{k} {c.get(k, 0)}" for k in shown)
        )
        for req in sandbox.state.requisitions():
            print(
                f"  requisition {req.get('id')}: {req.get('quantity')} {req.get('uom')} of "
                f"{req.get('item')} for {req.get('location')} "
                f"({req.get('reason')}, {req.get('status')})"
            )
    await demo_revenue(engine, root, reactor, sandbox)
    fhir_ok = await demo_fhir(engine, root, reactor)
    po_ok = await demo_purchasing(engine, root, reactor, sandbox)
    settled = not any(r.status in ("received", "queued") for r in rows)
    print(
        f"demo: {sent} message(s) delivered now"
        + (
            f", {duplicates} duplicate(s) of an earlier run not processed again"
            if duplicates
            else ""
        )
        + ". Look at: `wharf messages`, var/out/, `wharf work-items`, `wharf invoices`, the "
        "sandbox state in var/sandbox.db. Drop more files into the inbox, or Ctrl-C."
    )
    return settled and (sent > 0 or duplicates > 0) and fhir_ok and po_ok


async def demo_revenue(engine: Any, root: Path, reactor: Any, sandbox: Any) -> None:
    """What the revenue-cycle page is for, sent to the ledger's MLLP channel: an implant without
    the lot its item requires (held, MISSING_LOT_SERIAL), a charge the billing sandbox rejects
    (AE: a rejected charge, then UNBILLED_USAGE once ``unbilled_after`` has passed) and a credit
    for a line never charged (held, ORPHAN_CREDIT). A second run sends the same messages: each
    is a duplicate, nothing is booked twice."""
    src = engine.sources.get("usage_ledger")
    port = getattr(src, "port", None)
    if port is None:
        return
    billing = getattr(sandbox, "billing", None)
    if billing is not None:
        billing.reject_codes.add(DEMO_REJECTED_CHARGE)
    try:
        picks = sorted((root / "samples" / "hl7" / "revenue").glob("*.hl7"))
        await send_over_mllp("usage_ledger", port.getHost().port, picks, reactor, resend=False)
        seen: dict[str, int] = {}
        for _ in range(60):  # up to 30 s: the unbilled check runs every unbilled_after / 4
            seen = await engine.executor.submit(_revenue_counts, engine.store)
            if all(seen.values()):
                break
            await task.deferLater(reactor, 0.5, lambda: None)
    finally:
        if billing is not None:
            billing.reject_codes.discard(DEMO_REJECTED_CHARGE)
    print(
        "demo: the revenue cycle has "
        + ", ".join(f"{n} {what}" for what, n in seen.items())
        + " (the console's /revenue)"
    )


def _revenue_counts(store: Any) -> dict[str, int]:
    """What the revenue-cycle page lists, counted (the demo waits for each)."""
    from engine.domains.ledger import reports as ledger

    with store.reading() as rd:
        rejected = len(ledger.charges_in(rd, "rejected"))
        credits = len(ledger.held_credits(rd))
    kinds = {
        "implant(s) missing lot/serial": "MISSING_LOT_SERIAL",
        "unbilled usage": "UNBILLED_USAGE",
    }
    items = {what: len(store.work_item_page(kind=k, limit=10).rows) for what, k in kinds.items()}
    return {"rejected charge(s)": rejected, **items, "orphan credit(s)": credits}


def _message_count(store: Any) -> int:
    return int(sum(store.counts()["messages"].values()))


async def demo_fhir(engine: Any, root: Path, reactor: Any) -> bool:
    """A point-of-use system posts a SupplyDelivery over FHIR; read it back."""
    import json

    import treq
    from twisted.web.client import HTTPConnectionPool

    src = engine.sources.get("fhir_supply")
    if src is None:
        return True
    port = os.environ.get("FHIR_PORT", "8090")
    base = f"http://127.0.0.1:{port}/fhir/R5"
    sample = root / "samples/fhir/r5_supplydelivery_code.json"
    pool = HTTPConnectionPool(reactor, persistent=False)
    headers = {
        b"authorization": [f"Bearer {os.environ.get('WHARF_POU_TOKEN', DEMO_POU_TOKEN)}".encode()],
        b"content-type": [b"application/fhir+json"],
    }
    resp = await treq.post(
        f"{base}/SupplyDelivery", data=sample.read_bytes(), headers=headers, pool=pool
    )
    await resp.content()
    location = (resp.headers.getRawHeaders(b"location") or [b"-"])[0].decode()
    again = " (a resend of an earlier run: the original resource)" if resp.code == 200 else ""
    print(f"demo: FHIR POST {sample.name} to {base}/SupplyDelivery: {resp.code} {location}{again}")
    if resp.code not in (200, 201):
        return False
    url = location.split("/_history")[0]
    if not url.startswith("http"):
        url = f"http://127.0.0.1:{port}{url}"
    back = await treq.get(url, headers={b"authorization": headers[b"authorization"]}, pool=pool)
    doc = json.loads(await back.content())
    print(
        f"demo: read back: {back.code} {doc.get('resourceType')}/{doc.get('id')} "
        f"status {doc.get('status')}, version {doc.get('meta', {}).get('versionId')}"
    )
    return back.code == 200


async def demo_purchasing(engine: Any, root: Path, reactor: Any, sandbox: Any) -> bool:
    """The sandbox ERP releases a PO: it leaves as an 850 for ACME MEDICAL; the vendor's
    answers (999, 855, 856, two 810s) land in its inbound folder as its SFTP upload would."""
    import json

    from engine.x12.samplegen import vendor_answers
    from engine.x12.segments import transaction_sets

    src = engine.sources.get("x12_from_vendors")
    if sandbox is None or src is None or "po_to_vendor" not in engine.channels:
        return True
    # ACME's inbound/ among the partners' folders the source serves (its SFTP account's)
    inbound = next((f.path for f in src.folders() if f.origin == "sftp:acmemed"), None)
    if inbound is None:
        print("demo: no inbound folder of ACME's SFTP account (sftp_server in routes.yaml)")
        return False
    po = json.loads((root / "samples/erp/purchase_order_4500012345.json").read_text())
    number = po["po_number"]
    outbound = inbound.parent / "outbound"
    earlier = sorted(outbound.glob("850_*.x12")) if outbound.is_dir() else []
    created, _ = sandbox.api.purchasing.create(po)
    sandbox.api.purchasing.release(number)
    if created == 200:
        print(
            f"demo: PO {number} was released in an earlier run (the sandbox keeps its state in "
            "var/sandbox.db): its 850 is not written again, and the vendor's answers dropped "
            "again below are duplicates that change nothing"
        )
    else:
        print(f"demo: the ERP released PO {number} for {po['vendor']}")
    x850: list[Path] = []
    for _ in range(200):
        x850 = sorted(outbound.glob("850_*.x12")) if outbound.is_dir() else []
        if x850 and (created == 200 or len(x850) > len(earlier)):
            break
        await task.deferLater(reactor, 0.1, lambda: None)
    if not x850:
        print("demo: no 850 left for the vendor (see the log)")
        return False
    what = "the 850 of the earlier run" if created == 200 else "850 written for the vendor"
    print(f"demo: {what} to collect: {x850[-1].relative_to(root)}")
    ((_ic, grp, ts),) = list(transaction_sets(x850[-1].read_bytes()))
    for name, data in vendor_answers(number, grp.control_number, ts.control_number).items():
        tmp = inbound / f".{name}.part"
        tmp.write_bytes(data)
        os.replace(tmp, inbound / name)
        for _ in range(200):
            await task.deferLater(reactor, 0.1, lambda: None)
            if (inbound.parent / "archive" / name).exists():
                break
        print(f"demo: the vendor dropped {name}")
    await task.deferLater(reactor, 2.0, lambda: None)  # deliveries to the sandbox
    state = sandbox.api.purchasing.get(number)
    lines = ", ".join(f"line {k} {v['status']}" for k, v in state["lines"].items())
    counts = sandbox.state.counts()
    print(
        f"demo: PO {number} is {state['status']} ({lines}); the ERP holds "
        f"{counts['goods_receipts']} goods receipt(s) and {counts['ap_invoices']} AP invoice(s)"
    )
    if created != 200:  # (a run again drops duplicates: no second refusal to show)
        await demo_refused_receipt(inbound, number, reactor, sandbox)
    from engine.domains.procurement import desk
    from engine.domains.procurement.domain import repository

    def held() -> list[dict[str, Any]]:
        with engine.store.reading() as rd:
            return desk.invoices(repository(rd))

    rows = await engine.executor.submit(held)
    for r in rows:
        why = "; ".join(x["message"] for x in r["reasons"]) or "three-way match"
        print(f"  invoice {r['invoice_number']}: {r['status']} ({why})")
    acks = sorted(p.name.split("_")[0] for p in outbound.glob("*.x12"))
    print(f"demo: answers left for the vendor: {', '.join(acks)}")
    return counts["ap_invoices"] >= 1


async def demo_refused_receipt(inbound: Path, number: str, reactor: Any, sandbox: Any) -> None:
    """The vendor's second 856 (the backordered gloves) whose goods receipt the ERP refuses
    (a 422 armed for /goods-receipts only): the finance page's reconciliation of receipts
    shows it received and not posted, "rejected by the ERP"."""
    from engine.sandbox.erp import Faults
    from engine.x12.samplegen import vendor_second_shipment

    faults = sandbox.api.faults = Faults(fail_next=1, status=422, path="/goods-receipts")
    name = "856_second_shipment.x12"
    tmp = inbound / f".{name}.part"
    tmp.write_bytes(vendor_second_shipment(number))
    os.replace(tmp, inbound / name)
    for _ in range(200):
        await task.deferLater(reactor, 0.1, lambda: None)
        if faults.fail_next == 0:
            break
    sandbox.api.faults = Faults()  # disarmed whatever came
    refused = "the ERP refused its goods receipt (422)" if faults.fail_next == 0 else "not sent"
    print(f"demo: the vendor dropped {name}: {refused}; /finance#recon-receipts shows it")


async def send_over_mllp(
    channel: str, port: int, paths: list[Path], reactor: Any, *, resend: bool = True
) -> None:
    """Send a few samples to an MLLP listener, the way a hospital system would, and show the
    ACKs; with ``resend``, the second send of the first sample shows a resend answered with the
    same ACK."""
    from twisted.internet import endpoints

    from engine.codecs.hl7v2 import tokenize
    from engine.net.mllp import MLLPClientProtocol

    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    client = await endpoints.connectProtocol(endpoint, MLLPClientProtocol())
    await client.ready
    n = len(paths) + (1 if resend else 0)
    print(f"demo: sending {n} message(s) over MLLP to {channel} on port {port}")
    for path in [paths[0], *paths] if resend else paths:
        ack = tokenize(await client.send(path.read_bytes()))
        err = ack.get("ERR-8") or ack.get("MSA-3") or ""
        print(
            f"  {path.name:<34} -> MSA-1 {ack.get('MSA-1')} MSA-2 {ack.get('MSA-2') or '-'} "
            f"(ACK {ack.get('MSH-10')}) {err}"
        )
    client.transport.loseConnection()
