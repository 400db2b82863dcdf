"""``wharf``: run, lint, test, messages, replay, prune, work-items, invoices, po, receipts,
token, docs, status, sandbox, demo-erp.

Every command works on the project in the current folder (``routes.yaml``, ``channels/``,
``mappings/``) unless ``--root`` says otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, LintFailed, StoreError


def _project(root: Path) -> Any:
    from engine.config.project import load_project

    return load_project(root)


def _store(root: Path) -> Any:
    from engine.runtime.store import open_store

    project = _project(root)
    return open_store(root / project.settings.store)


@contextlib.contextmanager
def _opened_store(root: Path) -> Iterator[Any]:
    store = _store(root)
    try:
        yield store
    finally:
        store.close()


def _duration(text: str) -> float:
    from engine.spec import _DURATION, _DURATION_UNITS

    m = _DURATION.match(text)
    if not m:
        raise argparse.ArgumentTypeError(
            f"expected a duration such as 30s, 5m, 2h, 7d (got {text!r})"
        )
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


def cmd_lint(args: argparse.Namespace) -> int:
    try:
        project = _project(args.root)
    except LintFailed as exc:
        for err in exc.errors:
            print(err, file=sys.stderr)
        print(f"lint: {len(exc.errors)} error(s)", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    tables = len(project.mappings.tables)
    print(f"lint: ok ({len(project.channels)} channel(s), {tables} mapping table(s))")
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    from engine.testing.channel_tests import run_all

    try:
        project = _project(args.root)
    except LintFailed as exc:
        print(exc, file=sys.stderr)
        return 1
    outcomes = run_all(project, args.channels or None)
    failed = 0
    for o in outcomes:
        mark = "PASS" if o.passed else "FAIL"
        print(f"{mark} {o.channel}: {o.name}")
        for f in o.failures:
            print(f"     {o.where}: {f}")
        failed += not o.passed
    print(f"{len(outcomes) - failed} passed, {failed} failed")
    return 1 if failed else 0


def cmd_messages(args: argparse.Namespace) -> int:
    store = _store(args.root)
    try:
        if args.show:
            row = store.get_message(args.show)
            if row is None:
                print(f"no message {args.show}", file=sys.stderr)
                return 1
            print(json.dumps(row.__dict__, indent=2, default=str))
            for d in store.deliveries_for(args.show):
                d = {k: v for k, v in d.items() if k not in ("payload", "response")}
                print(json.dumps(d, default=str))
            if args.body:
                store.audit(args.user, "view_body", args.show, {"stage": "raw"}, time.time())
                raw = store.get_content(args.show, "raw") or b""
                print(raw.decode("utf-8", "replace").replace("\r", "\n"))
            return 0
        key = value = None
        if args.key:
            key, _, value = args.key.partition("=")
        now = time.time()
        rows = store.search(
            channel=args.channel,
            status=args.status,
            since=now - args.since if args.since else None,
            until=now - args.until if args.until else None,
            correlation_id=args.correlation_id,
            key=key,
            value=value,
            limit=args.limit,
        )
        for r in rows:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.received_at))
            err = f"  {r.error_location}: {r.error}" if r.error and args.errors else ""
            print(f"{r.id}  {when}  {r.channel:<20} {r.status:<9} {r.control_id or '-'}{err}")
        print(f"{len(rows)} message(s)", file=sys.stderr)
        return 0
    finally:
        store.close()


def cmd_replay(args: argparse.Namespace) -> int:
    store = _store(args.root)
    try:
        now = time.time()
        if args.message_id:
            result = store.replay(
                args.message_id, destination=args.destination, actor=args.user, now=now
            )
            print(f"replay {args.message_id}: {result}")
            return 0 if (result["requeued"] or result["reprocess"]) else 1
        if not args.channel:
            print("replay: give a message id, or --channel with --all-errors", file=sys.stderr)
            return 2
        # Oldest first, so that a key's deliveries go out again in their original order.
        rows = store.search(channel=args.channel, status="error", limit=1_000_000)
        ids = [r.id for r in reversed(rows)]
        done = 0
        for i, mid in enumerate(ids, 1):
            r = store.replay(mid, destination=args.destination, actor=args.user, now=now)
            done += bool(r["requeued"] or r["reprocess"])
            if i % 100 == 0 or i == len(ids):
                print(f"\rreplayed {i}/{len(ids)}", end="", file=sys.stderr)
        print(file=sys.stderr)
        print(f"replay: {done} message(s) of channel {args.channel} queued again")
        return 0
    finally:
        store.close()


def cmd_prune(args: argparse.Namespace) -> int:
    project = _project(args.root)
    store = _store(args.root)
    try:
        rules = [(tuple(r.status), r.older_than) for r in project.settings.retention]
        if args.older_than:
            rules = [(tuple(args.status.split(",")), args.older_than)]
        total = 0
        for statuses, age in rules:
            n = store.prune(older_than=age, statuses=statuses, now=time.time())
            print(f"pruned {n} message(s) in {','.join(statuses)} older than {age:.0f}s")
            total += n
        store.reclaim()
        store.audit(args.user, "prune", str(args.root), {"deleted": total}, time.time())
        return 0
    finally:
        store.close()


def cmd_work_items(args: argparse.Namespace) -> int:
    store = _store(args.root)
    try:
        items = store.open_work_items(args.kind)
        for w in items:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(w["created_at"]))
            print(
                f"{w['id']:>6}  {when}  {w['kind']:<18} {w['subject']}  (message {w['message_id']})"
            )
        print(f"{len(items)} open work item(s)", file=sys.stderr)
        return 0
    finally:
        store.close()


def cmd_invoices(args: argparse.Namespace) -> int:
    from engine.domains.procurement import desk
    from engine.domains.procurement.domain import repository

    with _opened_store(args.root) as store:
        if args.action in ("release", "reject"):
            if args.id is None:
                print(f"invoices {args.action}: give the invoice id", file=sys.stderr)
                return 2
            now = time.time()
            if args.action == "release":
                project = _project(args.root)
                out = desk.release_invoice(
                    store, project, args.id, actor=args.user, note=args.note, now=now
                )
            else:
                out = desk.reject_invoice(store, args.id, actor=args.user, note=args.note, now=now)
            print(f"invoice {args.id} ({out['invoice']}): {out['status']}")
            return 0
        with store.reading() as rd:
            rows = desk.invoices(repository(rd), args.status)
        for r in rows:
            why = "; ".join(
                x["reason"] + (f" line {x['line']}" if x["line"] else "") for x in r["reasons"]
            )
            if r["status"] == "held" and r.get("lines_posted"):
                why += f" ({r['lines_posted']} of {r['lines']} line(s) posted to AP)"
            print(
                f"{r['id']:>6}  {r['partner']:<10} {r['invoice_number']:<14} "
                f"PO {r['po_number']:<12} {r['status']:<9} {r['total'] or '':>10}  {why}"
            )
        print(f"{len(rows)} invoice(s)", file=sys.stderr)
        return 0


def cmd_po(args: argparse.Namespace) -> int:
    from engine.domains.procurement import changes
    from engine.domains.procurement.domain import repository

    with _opened_store(args.root) as store:
        if args.action in ("accept", "reject"):
            if args.id is None:
                print(f"po {args.action}: give the change id (wharf po changes)", file=sys.stderr)
                return 2
            try:
                out = changes.decide_change(
                    store,
                    _project(args.root),
                    args.id,
                    args.action,
                    actor=args.user,
                    note=args.note,
                    now=time.time(),
                )
            except StoreError as exc:
                print(f"po {args.action} {args.id}: {exc}", file=sys.stderr)
                return 1
            again = out["invoices_matched_again"]
            print(
                f"change {args.id} (PO {out['po_number']} line {out['line']}): {out['status']}"
                + (f"; {again} held invoice(s) matched again" if again else "")
            )
            return 0
        status = None if args.status == "all" else args.status
        with store.reading() as rd:
            rows = changes.changes(repository(rd), status, args.po)
        for c in rows:
            proposed = (
                f"{c['quantity'] if c['quantity'] is not None else '='} {c['uom'] or ''} at "
                f"{c['unit_price'] if c['unit_price'] is not None else '='}"
            )
            when = f" ship {c['ship_date']}" if c["ship_date"] else ""
            print(
                f"{c['id']:>6}  {c['partner']:<10} PO {c['po_number']:<12} line {c['line']:<4} "
                f"{c['ack_code']:<3} ordered {c['ordered_quantity']} {c['ordered_uom']} at "
                f"{c['ordered_price']} -> {proposed}{when}  {c['status']}"
                + (f" by {c['decided_by']}" if c["decided_by"] else "")
            )
        print(f"{len(rows)} PO change(s)", file=sys.stderr)
        return 0


def cmd_receipts(args: argparse.Namespace) -> int:
    from engine.domains.procurement import desk
    from engine.domains.procurement.domain import repository

    with _opened_store(args.root) as store:
        with store.reading() as rd:
            rows = desk.unmatched_receipts(
                repository(rd), older_than=args.older_than, now=time.time()
            )
        for r in rows:
            print(
                f"PO {r['po_number']:<12} line {r['po_line']:<4} {r['item_id']:<14} "
                f"uninvoiced {r['uninvoiced']:>8}  received {r['age_days']} day(s) ago"
            )
        print(f"{len(rows)} unmatched receipt line(s)", file=sys.stderr)
        return 0


def cmd_status(args: argparse.Namespace) -> int:
    store = _store(args.root)
    try:
        print(json.dumps(store.counts(), indent=2))
        return 0
    finally:
        store.close()


def cmd_docs(args: argparse.Namespace) -> int:
    from engine.docs import write_reference

    paths = write_reference(args.out)
    for p in paths:
        print(p)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    """A new random bearer token (256 bits) and the SHA-256 that goes into the channel file."""
    import secrets

    from engine.tokens import token_sha256

    token = secrets.token_urlsafe(32)
    digest = token_sha256(token)
    print(f"token:  {token}")
    print(f"sha256: {digest}")
    print(f"yaml:   - {{name: {args.name}, sha256: {digest}}}")
    print(
        "Give the token to the sender over a safe channel; only its sha256 goes into the "
        "channel file (auth.tokens). Wharf keeps no copy of the token.",
        file=sys.stderr,
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from engine.runner import run

    return run(args)


def cmd_sandbox(args: argparse.Namespace) -> int:
    from engine.sandbox.__main__ import main as sandbox_main

    return sandbox_main(args.args)


def cmd_demo_erp(args: argparse.Namespace) -> int:
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from engine.demo import site

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    port = reactor.listenTCP(args.port, site(args.record), interface=args.host)
    print(f"demo ERP listening on http://{args.host}:{port.getHost().port}", flush=True)
    reactor.run()
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wharf", description=__doc__)
    p.add_argument("--root", type=Path, default=Path.cwd(), help="project folder (default: .)")
    p.add_argument("--user", default="cli", help="name recorded in the audit log")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the engine")
    r.add_argument("--demo", action="store_true", help="start a sample ERP and drop the samples")
    r.add_argument("--exit-when-done", action="store_true", help="with --demo: stop when done")
    r.set_defaults(fn=cmd_run)

    sub.add_parser("lint", help="check routes, channels and mappings").set_defaults(fn=cmd_lint)

    t = sub.add_parser("test", help="run the channels' tests: blocks")
    t.add_argument("channels", nargs="*")
    t.set_defaults(fn=cmd_test)

    m = sub.add_parser("messages", help="search stored messages")
    m.add_argument("--channel")
    m.add_argument("--status")
    m.add_argument("--since", type=_duration, help="received within, e.g. 2h")
    m.add_argument("--until", type=_duration, help="received before this long ago, e.g. 30m")
    m.add_argument("--correlation-id")
    m.add_argument("--key", help="business key, e.g. encounter=ENC-998877")
    m.add_argument("--limit", type=int, default=50)
    m.add_argument("--errors", action="store_true", help="show error text and location")
    m.add_argument("--show", metavar="ID", help="one message with its deliveries")
    m.add_argument("--body", action="store_true", help="with --show: print the raw body (audited)")
    m.set_defaults(fn=cmd_messages)

    rp = sub.add_parser("replay", help="deliver or process messages again")
    rp.add_argument("message_id", nargs="?")
    rp.add_argument("--channel")
    rp.add_argument("--all-errors", action="store_true")
    rp.add_argument("--destination")
    rp.set_defaults(fn=cmd_replay)

    pr = sub.add_parser("prune", help="apply retention rules and reclaim space")
    pr.add_argument("--older-than", type=_duration)
    pr.add_argument("--status", default="sent,filtered")
    pr.set_defaults(fn=cmd_prune)

    sub.add_parser("status", help="message and delivery counts").set_defaults(fn=cmd_status)

    w = sub.add_parser("work-items", help="open ledger work items (missing mappings, rejects)")
    w.add_argument(
        "--kind",
        help="MISSING_MAPPING, CHARGE_REJECTED, UNBILLED_USAGE, INVOICE_HELD, PO_CHANGED, "
        "SENDER_REFUSED, X12_REFUSED, ...",
    )
    w.set_defaults(fn=cmd_work_items)

    inv = sub.add_parser("invoices", help="X12 invoices: list, release or reject held ones")
    inv.add_argument("action", nargs="?", choices=("list", "release", "reject"), default="list")
    inv.add_argument("id", nargs="?", type=int, help="invoice id (from the list)")
    inv.add_argument("--status", help="with list: matched, held, released, rejected, duplicate")
    inv.add_argument("--note", default="", help="why (kept in the audit log)")
    inv.set_defaults(fn=cmd_invoices)

    po = sub.add_parser(
        "po", help="PO changes vendors proposed in 855s: list, accept or reject (audited)"
    )
    po.add_argument("action", choices=("changes", "accept", "reject"))
    po.add_argument("id", nargs="?", type=int, help="change id (from `wharf po changes`)")
    po.add_argument(
        "--status",
        default="proposed",
        choices=("proposed", "accepted", "rejected", "superseded", "all"),
        help="with changes: which ones (default proposed)",
    )
    po.add_argument("--po", help="with changes: one PO number")
    po.add_argument("--note", default="", help="why (kept in the audit log)")
    po.set_defaults(fn=cmd_po)

    rc = sub.add_parser("receipts", help="receipts not yet invoiced (GR/IR), oldest first")
    rc.add_argument("--unmatched", action="store_true", help="(the default and only listing)")
    rc.add_argument("--older-than", type=_duration, default=0.0, help="e.g. 30d")
    rc.set_defaults(fn=cmd_receipts)

    tk = sub.add_parser("token", help="make a bearer token and its sha256 for auth.tokens")
    tk.add_argument("--name", default="sender", help="the token's name in the YAML line")
    tk.set_defaults(fn=cmd_token)

    d = sub.add_parser("docs", help="generate the component reference")
    d.add_argument("--out", type=Path, default=Path("docs/reference"))
    d.set_defaults(fn=cmd_docs)

    sb = sub.add_parser(
        "sandbox",
        help="run the ERP and billing sandbox (python -m engine.sandbox --help for options)",
        add_help=False,
    )
    sb.add_argument("args", nargs=argparse.REMAINDER)
    sb.set_defaults(fn=cmd_sandbox)

    e = sub.add_parser("demo-erp", help="run the sample ERP receiver")
    e.add_argument("--host", default="127.0.0.1")
    e.add_argument("--port", type=int, default=8089)
    e.add_argument("--record", type=Path, default=Path("var/demo-erp/received.ndjson"))
    e.set_defaults(fn=cmd_demo_erp)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "sandbox":
        args.args = [*extra, *args.args]  # the sandbox parses its own options
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.root = args.root.resolve()
    try:
        return int(args.fn(args) or 0)
    except LintFailed as exc:
        print(exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
