"""One DFT^P03 with N FT1 segments through the shipped usage_ledger channel: decode, transform,
ledger booking and payload building, per FT1, at N = 10, 100, 1,000 and 10,000.

The work is linear when the cost per FT1 stays flat: the figure to read is each size's cost per
FT1 as a ratio of the 10-line message's (measured in the same run; target: within 2× at 10,000).
It runs the channel's own code in-process: ``Channel.process`` (hl7v2 decode, the
hl7_usage_to_ledger transform), then the ledger binding's booking into a fresh SQLite store
inside one transaction (stock, charges, the ERP issue documents and the billing DFTs), as the
runtime records a message.

    python bench/big_message.py [--sizes 10,100,1000,10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def message(lines: int) -> bytes:
    head = (
        f"MSH|^~\\&|POU_CABINET|GENHOSP|WHARF|GENHOSP|20260115113000||DFT^P03^DFT_P03|BIG-{lines}|P|"
        "2.5.1\rEVN|P03|20260115113000\rPID|1||MRN22222^^^GENHOSP^MR||ROE^RICHARD||19550505|M\r"
        "PV1|1|I|OR^OR02^01^GENHOSP||||||||||||||||ENC-112233^^^GENHOSP^VN\r"
    )
    body = "".join(
        f"FT1|{i}|CU-{i:06d}||20260115093000|20260115113000|CG|272100049^FOLEY TRAY^99CDM|||1"
        "||||||OR^OR02^01^GENHOSP\r"
        for i in range(1, lines + 1)
    )
    return (head + body).encode()


def run_once(lines: int) -> tuple[float, int]:
    from engine.channel import Channel
    from engine.config.project import load_project
    from engine.interfaces import Booking
    from engine.model import Inbound
    from engine.runtime.store import open_store

    project = load_project(ROOT, env={})
    channel = Channel.of(project, "usage_ledger")
    raw = message(lines)
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Path(tmp) / "w.db")
        try:
            inbound = Inbound("usage_ledger", "bench", raw, "x-application/hl7-v2+er7", time.time())
            (stored,) = store.ingest_batch([inbound], time.time())
            started = time.perf_counter()
            result = channel.process(raw, stored.message_id, stored.message_id)
            assert result.status == "sent", result.error
            outbound = 0
            with store.transaction("book") as tx:
                now = time.time()
                booking = Booking(stored.message_id, stored.message_id, channel.name, now)
                out = list(result.outbound)
                for binding, records in channel.bookings(result.events):
                    out += binding.book(tx, booking, records)
                tx.finish(stored.message_id, status=result.status, now=now, outbound=out)
                outbound = len(out)
            took = time.perf_counter() - started
        finally:
            store.close()
    return took, outbound


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10,100,1000,10000")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    run_once(10)  # warm the imports and the mapping tables
    print("DFT^P03 with N FT1 through usage_ledger: decode + transform + ledger booking + payloads")
    print(f"{'lines':>7} {'seconds':>9} {'outbound':>9} {'us/FT1':>9} {'ratio':>7}")
    base = None
    for n in sizes:
        took, outbound = min(run_once(n) for _ in range(args.repeat))
        per = took / n * 1e6
        base = base or per
        print(f"{n:>7} {took:>9.3f} {outbound:>9} {per:>9.1f} {per / base:>7.2f}")
    print("ratio: cost per FT1 over the first size's in the same run (1.0 = linear; target <= 2)")


if __name__ == "__main__":
    main()
