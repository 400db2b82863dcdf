"""X12 810 benchmark: validate, acknowledge and match invoices of 10 to 10,000 lines.

For each size, one 810 (``engine.x12.samplegen.invoice_810``: each line IT1 + PID + REF, 2..11
EA at 1.25..80.00, freight, TDS) against a PO with the same lines and a receipt per line:

- validate: the file decoded and tokenized once (``engine.x12.scan.scan``, as the
  ``x12_inbound`` transform does), ``engine.x12.validate.validate`` over it (Wharf's maps,
  loaded once) and the 997 ``engine.x12.ack.acknowledge`` writes from its result;
- read: the 810 reader (``engine.x12.documents.read_invoice``) over the tokens of the scan;
- match: ``engine.domains.procurement.match.match_invoice`` (three ways, cumulative, in the base
  unit).

Baselines in the same run: the 10-line invoice's cost per line (the ratio column is the cost
per line at each size over it, 1.0 = linear), and stock pyx12's validation of the largest
invoice (``pyx12.x12n_document`` with Wharf's maps, as shipped: it loads the maps and writes its
997 on every call). Target: validate + 997 + read + match of the 10,000-line 810 at least 10x
faster than stock pyx12 validates it. Times are CPU time of this process (the machine is
shared), best of ``--repeat`` runs; nothing is asserted.

    .venv/bin/python bench/x12_invoice.py [--sizes 10,100,1000,10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import io
import logging
import time
from decimal import Decimal

import pyx12.params
import pyx12.x12n_document

from engine.domains.procurement.match import Order, OrderLine, Receipt, Tolerance, match_invoice
from engine.x12.ack import acknowledge
from engine.x12.documents import read_invoice
from engine.x12.mapgen import MAP_PATH
from engine.x12.samplegen import invoice_810
from engine.x12.scan import scan
from engine.x12.validate import load_maps, validate


def order_for(lines: int) -> tuple[Order, list[Receipt]]:
    po_lines = []
    receipts = []
    for i in range(1, lines + 1):
        qty = Decimal(2 + i % 10)
        price = Decimal(125 + (i * 37) % 7875) / 100
        po_lines.append(
            OrderLine(str(i), f"ITEM-{i:06d}", qty, "EA", price, "EA", (("VC", f"AC-{i:06d}"),))
        )
        receipts.append(Receipt(str(i), qty, "EA", f"R{i}"))
    return Order("4500012345", tuple(po_lines), "VND-ACMEMED"), receipts


def one(data: bytes, order: Order, receipts: list[Receipt]) -> tuple[float, float, float, str]:
    t0 = time.process_time()
    scanned = scan(data)
    checked = validate(scanned)
    answers = acknowledge(checked, kind="997")
    t1 = time.process_time()
    ((ts,),) = [g.sets for s in scanned.spans if s.interchange for g in s.interchange.groups]
    invoice = read_invoice(ts)
    t2 = time.process_time()
    result = match_invoice(
        invoice,
        order,
        receipts,
        convert=lambda item, a, b: Decimal(1),
        tolerance=Tolerance(),
    )
    t3 = time.process_time()
    if not checked.ok or not answers.ack or not result.matched:
        raise RuntimeError(f"expected a valid, matched invoice ({result.reasons})")
    return t1 - t0, t2 - t1, t3 - t2, result.status


def stock_pyx12(data: bytes, repeat: int) -> float:
    """Best time of pyx12's own ``x12n_document`` over ``data`` (maps loaded per call)."""
    logging.getLogger("pyx12").setLevel(logging.CRITICAL)
    param = pyx12.params.ParamsBase()
    text = data.decode()
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        pyx12.x12n_document.x12n_document(
            param, io.StringIO(text), io.StringIO(), None, map_path=str(MAP_PATH)
        )
        best = min(best, time.process_time() - t)
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="10,100,1000,10000")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    t = time.perf_counter()
    load_maps().preload()
    print(f"maps loaded once in {time.perf_counter() - t:.3f} s (not counted below)")
    print(
        f"{'lines':>7} {'validate+997':>13} {'read':>8} {'match':>8} {'total':>8} "
        f"{'us/line':>8} {'ratio':>6}"
    )
    base = None
    last = 0.0
    for n in sizes:
        data = invoice_810(n, version="004010")
        order, receipts = order_for(n)
        best = None
        for _ in range(args.repeat):
            v, r, m, _status = one(data, order, receipts)
            if best is None or v + r + m < sum(best):
                best = (v, r, m)
        assert best is not None
        total = last = sum(best)
        per_line = total / n * 1e6
        if base is None:
            base = per_line
        print(
            f"{n:>7} {best[0]:>12.3f}s {best[1]:>7.3f}s {best[2]:>7.3f}s {total:>7.3f}s "
            f"{per_line:>8.1f} {per_line / base:>6.2f}"
        )
    print("ratio: cost per line over the first size's (1.0 = linear)")
    stock = stock_pyx12(invoice_810(sizes[-1], version="004010"), args.repeat)
    print(
        f"stock pyx12 x12n_document, {sizes[-1]} lines: {stock:.3f}s; "
        f"stock / Wharf total: {stock / last:.1f}x (target >= 10)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
