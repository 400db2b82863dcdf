"""``python -m engine.sandbox``: run the ERP/billing sandbox until interrupted."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wharf sandbox",
        description="A stateful ERP (HTTP/JSON) and billing (MLLP DFT^P03, FHIR ChargeItem) "
        "sandbox with its own SQLite state.",
    )
    p.add_argument(
        "--http-port",
        type=int,
        default=os.environ.get("ERP_PORT") or 8089,
        help="ERP HTTP port (default: $ERP_PORT, else 8089)",
    )
    p.add_argument(
        "--mllp-port",
        type=int,
        default=os.environ.get("BILLING_PORT") or 2576,
        help="billing MLLP port (default: $BILLING_PORT, else 2576)",
    )
    p.add_argument("--interface", default="127.0.0.1", help="address to listen on")
    p.add_argument("--state", type=Path, default=Path("var/sandbox.db"), help="SQLite file")
    p.add_argument(
        "--seed", type=Path, help="on-hand snapshot CSV: location,item,on_hand,uom (new rows only)"
    )
    p.add_argument("--reseed", action="store_true", help="with --seed: overwrite existing rows")
    p.add_argument("--reset", action="store_true", help="empty the state before starting")
    p.add_argument(
        "--reject-code",
        action="append",
        default=[],
        metavar="CODE",
        help="billing answers AE for this charge code (repeatable)",
    )
    p.add_argument(
        "--po-webhook",
        metavar="URL",
        help="push released purchase orders to this URL (Wharf's PO channel), retried until 2xx",
    )
    p.add_argument(
        "--po-webhook-token-env",
        metavar="VAR",
        default="WHARF_PO_TOKEN",
        help="environment variable holding the bearer token for the webhook (default "
        "WHARF_PO_TOKEN; unset: no Authorization header)",
    )
    p.add_argument(
        "--po-webhook-secret-env",
        metavar="VAR",
        default="WHARF_PO_WEBHOOK_SECRET",
        help="environment variable holding the HMAC secret that signs each webhook push "
        "(X-Wharf-Signature, -Timestamp, -Nonce; default WHARF_PO_WEBHOOK_SECRET; unset: "
        "unsigned)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from twisted.internet import defer, reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    from engine.sandbox.service import SandboxService
    from engine.sandbox.state import SandboxState, SeedError

    if args.reset:
        state = SandboxState(args.state)
        state.reset()
        state.close()
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    service = SandboxService(
        args.state,
        http_port=args.http_port,
        mllp_port=args.mllp_port,
        interface=args.interface,
        reactor=reactor,
        seed=args.seed,
        reseed=args.reseed,
        reject_codes=args.reject_code,
        po_webhook=args.po_webhook,
        po_webhook_token=os.environ.get(args.po_webhook_token_env) or None,
        po_webhook_secret=os.environ.get(args.po_webhook_secret_env) or None,
    )
    try:
        service.start()
    except (OSError, SeedError) as exc:
        print(f"wharf sandbox: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # CannotListenError and friends
        print(f"wharf sandbox: cannot start: {exc}", file=sys.stderr)
        return 2
    print(
        f"sandbox ERP listening on {service.http_url}, billing MLLP on "
        f"{args.interface}:{service.mllp_port}, state {args.state}",
        flush=True,
    )
    reactor.addSystemEventTrigger(
        "before", "shutdown", lambda: defer.ensureDeferred(service.stop())
    )
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
