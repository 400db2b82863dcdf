"""X12 validation speed: pyx12 as shipped vs ``engine.x12.validate`` (cached maps, fast check).

    .venv/bin/python bench/x12_validate.py                 # 10, 100, 1000, 10000 lines
    .venv/bin/python bench/x12_validate.py --lines 10000 --repeat 5

Prints, per 810 size (each IT1 line is IT1 + PID + REF):

* ``x12n_document``: pyx12's own driver with the Wharf maps; it loads the maps (XML,
  dataele.xml, codes.xml) on every call and writes its 997;
* ``cached maps``: Wharf's driver with the maps cached, otherwise pyx12's own pieces (its
  segment validator on every segment, its ``NodeCounter``), 997 written;
* ``+ counter``: the same with the string-keyed loop counter;
* ``+ fast check``: the same with the fast segment check (the validator before the compiled
  walk);
* ``validate``: as used by Wharf: a clean interchange is proved clean by the compiled walk and
  element tables (``engine.x12.compiled``), pyx12 runs only over one with something to report;
  997 written by ``engine.x12.ack.acknowledge``.

Also the time to load the maps once (what every ``x12n_document`` call pays). Best of
``--repeat`` runs; nothing is asserted.
"""

from __future__ import annotations

import argparse
import io
import logging
import time

import pyx12.map_if
import pyx12.map_index
import pyx12.params
import pyx12.x12n_document
from pyx12.nodeCounter import NodeCounter

from engine.x12 import validate as validate_mod
from engine.x12.ack import acknowledge
from engine.x12.mapgen import MAP_PATH
from engine.x12.samplegen import invoice_810
from engine.x12.validate import load_maps, validate


def best(fn, repeat: int) -> float:
    out = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t)
    return out * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", default="10,100,1000,10000")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    logging.getLogger("pyx12").setLevel(logging.CRITICAL)
    param = pyx12.params.ParamsBase()
    path = str(MAP_PATH)

    def load_once() -> None:
        pyx12.map_index.map_index(path)
        pyx12.map_if.load_map_file("x12.control.00401.xml", param, path)
        pyx12.map_if.load_map_file("810.4010.xml", param, path)

    print(f"map load per document (index + control + 810 map): {best(load_once, 5):7.1f} ms")
    t = time.perf_counter()
    load_maps(fresh=True).preload()
    print(
        f"preload all Wharf maps once:                         "
        f"{(time.perf_counter() - t) * 1000:7.1f} ms"
    )
    print(
        f"{'lines':>6} {'segments':>9} {'x12n_document':>14} {'cached maps':>12} "
        f"{'+ counter':>10} {'+ fast check':>13} {'validate':>9}"
    )
    real_check, real_counter = validate_mod.segment_check, validate_mod.PathCounter
    real_clean = validate_mod.clean_groups
    for n in (int(x) for x in args.lines.split(",")):
        data = invoice_810(n)
        text = data.decode()

        def stock(text: str = text) -> None:
            pyx12.x12n_document.x12n_document(
                param, io.StringIO(text), io.StringIO(), None, map_path=path
            )

        def ours(data: bytes = data) -> None:
            checked = validate(data)
            assert checked.ok and acknowledge(checked).ack

        try:
            validate_mod.clean_groups = lambda *a: None
            validate_mod.segment_check = lambda node: None
            validate_mod.PathCounter = NodeCounter
            cached = best(ours, args.repeat)
            validate_mod.PathCounter = real_counter
            counter = best(ours, args.repeat)
            validate_mod.segment_check = real_check
            fast = best(ours, args.repeat)
        finally:
            validate_mod.segment_check, validate_mod.PathCounter = real_check, real_counter
            validate_mod.clean_groups = real_clean
        print(
            f"{n:>6} {3 * n + 14:>9} {best(stock, args.repeat):>11.0f} ms "
            f"{cached:>9.0f} ms {counter:>7.0f} ms {fast:>10.0f} ms {best(ours, args.repeat):>6.0f} ms"
        )


if __name__ == "__main__":
    main()
