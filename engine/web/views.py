"""What the console's pages and its API show, gathered once for both: plain dicts from the
store's and the domains' public reads (run on the console's read threads) and from the running
engine's state (read on the reactor)."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

from engine import model
from engine.runtime.nodes import node_view
from engine.store.migrations import BUCKET_SECONDS
from engine.web.auth import Principal

HOUR = 3600.0
#: Age buckets of work items and unmatched receipts (upper bound in days, label).
AGE_BUCKETS = ((1, "<1d"), (3, "1-3d"), (7, "3-7d"), (30, "7-30d"), (float("inf"), ">30d"))


def live_state(engine: Any) -> dict[str, Any]:
    """What only the running engine knows (read on the reactor): each source's listening
    address (None: not bound), each destination worker's state, and what is paused."""
    listeners = engine.listener_addresses()
    workers: dict[tuple[str, str], dict[str, Any]] = {}
    now = engine.reactor.seconds()
    for (channel, dest), worker in engine.workers.items():
        if worker.paused:
            state = "paused"
        elif worker.held_until > now:
            state = "held"
        else:
            state = "up"
        workers[(channel, dest)] = {"state": state, "inflight": worker.inflight}
    return {
        "listeners": listeners,
        "workers": workers,
        "paused": dict(engine.paused),
        "node": engine.node,
    }


def integration(
    store: Any, channels: list[str], live: dict[str, Any], principal: Principal, now: float
) -> dict[str, Any]:
    """Every channel the person may see: counts by status (running counters), the oldest
    queued message's age, its listener and each destination's state, and throughput."""
    counts = store.message_counters()
    deliveries = store.delivery_counters()
    names = sorted(set(channels) | set(counts))
    rows = []
    for name in names:
        if not principal.sees_channel(name):
            continue
        c = counts.get(name, {})
        oldest = store.oldest_queued(name) if c.get(model.QUEUED) else None
        dests = []
        for (ch, dest), by_status in sorted(deliveries.items()):
            if ch != name:
                continue
            w = live["workers"].get((ch, dest), {"state": "stopped", "inflight": 0})
            pending = by_status.get("pending", 0) + by_status.get("inflight", 0)
            state = w["state"]
            if by_status.get("dead", 0) and state == "up":
                state = "up, dead letters"
            dests.append(
                {
                    "name": dest,
                    "state": state,
                    "queued": pending,
                    "sent": by_status.get("sent", 0),
                    "dead": by_status.get("dead", 0) + by_status.get("quarantined", 0),
                    "paused": (ch, dest) in live["paused"],
                    "oldest_age": _age(store.oldest_pending(ch, dest), now) if pending else None,
                }
            )
        for (ch, dest), w in live["workers"].items():
            if ch == name and not any(d["name"] == dest for d in dests):
                dests.append(
                    {
                        "name": dest,
                        "state": w["state"],
                        "queued": 0,
                        "sent": 0,
                        "dead": 0,
                        "paused": (ch, dest) in live["paused"],
                        "oldest_age": None,
                    }
                )
        listener = live["listeners"].get(name, "n/a")
        rows.append(
            {
                "name": name,
                **{s: c.get(s, 0) for s in model.MESSAGE_STATUSES},
                "received": sum(c.values()),  # every message taken, whatever its status now
                "errored": c.get(model.ERROR, 0) + c.get("conflict", 0),
                "oldest_queued_age": _age(oldest, now),
                "listener": listener,
                "paused": (name, "*") in live["paused"],
                "destinations": sorted(dests, key=lambda d: d["name"]),
            }
        )
    since = now - 24 * HOUR
    series = store.throughput(since, now)
    total: dict[float, int] = {}
    for name, points in series.items():
        if principal.sees_channel(name):
            for t, n in points:
                total[t] = total.get(t, 0) + n
    points = sorted(total.items())
    nodes = [n | {"up_for": now - n["started_at"]} for n in node_view(store.nodes(), now)]
    return {
        "channels": rows,
        "nodes": nodes,
        "this_node": live.get("node"),
        "throughput": {
            "since": since,
            "until": now,
            "bucket_seconds": BUCKET_SECONDS,
            "points": points,
        },
        "queue_depth": sorted(
            ((f"{r['name']}/{d['name']}", d["queued"]) for r in rows for d in r["destinations"]),
            key=lambda kv: -kv[1],
        ),
    }


def _age(ts: float | None, now: float) -> float | None:
    return None if ts is None else max(now - ts, 0.0)


def age_buckets(ages_days: list[float]) -> list[tuple[str, int]]:
    out = {label: 0 for _, label in AGE_BUCKETS}
    for days in ages_days:
        for bound, label in AGE_BUCKETS:
            if days < bound:
                out[label] += 1
                break
    return list(out.items())


def work_items(
    store: Any,
    principal: Principal,
    kind: str | None,
    status: str | None,
    after: int | None,
    now: float,
) -> dict[str, Any]:
    """Work items the person's roles and channel scope see, by kind with counts, ages and SLA;
    a page of them."""
    from engine.model import WORK_ITEM_KINDS

    kinds = principal.kinds
    scope = principal.channel_scope
    ages = store.work_item_ages(now, channels=scope)
    by_kind = []
    for k, a in sorted(ages.items()):
        if kinds is not None and k not in kinds:
            continue
        oldest = _age(a["oldest"], now)
        sla = SLA_DAYS.get(k, 3) * 86400
        by_kind.append(
            {
                "kind": k,
                "open": a["open"],
                "oldest_age": oldest,
                "sla_seconds": sla,
                "breached": oldest is not None and oldest > sla,
                "means": WORK_ITEM_KINDS.get(k, ""),
            }
        )
    page = store.work_item_page(
        kind=kind,
        kinds=sorted(kinds) if kinds is not None else None,
        status=status,
        after=after,
        channels=scope,
    )
    items = []
    for item in page.rows:
        age = _age(item["created_at"], now) or 0.0
        items.append({**item, "age": age, "breached": age > SLA_DAYS.get(item["kind"], 3) * 86400})
    return {"kinds": by_kind, "items": items, "next": page.next}


#: The time a person has to close a work item of each kind (days); 3 for any other.
SLA_DAYS = {
    "MISSING_MAPPING": 1,
    "CHARGE_REJECTED": 2,
    "UNBILLED_USAGE": 3,
    "INVOICE_HELD": 5,
    "ACK_OVERDUE": 1,
    "ACK_REJECTED": 1,
    "PO_CHANGED": 2,
}


def trace(
    store: Any, principal: Principal, key: str | None, value: str | None, correlation: str | None
) -> dict[str, Any]:
    """Messages of one business flow: those with the key (or correlation id), then those that
    share any business key with them (one hop), oldest first, across channels."""
    first = []
    if key and value:
        first = store.keyed([(key, value)])
    elif correlation:
        first = store.correlated(correlation)
    pairs = sorted({(n, v) for _, n, v in store.key_names([m.id for m in first])})
    found = {m.id: m for m in first}
    for m in store.keyed(pairs, limit=500) if pairs else []:
        found.setdefault(m.id, m)
    rows = sorted(found.values(), key=lambda m: m.received_at)
    keys: dict[str, list[tuple[str, str]]] = {}
    for mid, n, v in store.key_names([m.id for m in rows]):
        keys.setdefault(mid, []).append((n, v))
    return {
        "messages": [
            {
                "id": m.id,
                "channel": m.channel,
                "status": m.status,
                "control_id": m.control_id,
                "received_at": m.received_at,
                "keys": sorted(keys.get(m.id, [])),
            }
            for m in rows
            if principal.sees_channel(m.channel)
        ],
        "keys": pairs,
    }


def mapping_tables(root: Path, mappings: Any, open_misses: dict[str, int]) -> list[dict[str, Any]]:
    """Each mapping table: file, owner, change notes (the newest last), rows, columns, and its
    open MISSING_MAPPING work items (``open_misses``: by table)."""
    from engine.config.governance import owner_and_changes

    out = []
    for name in sorted(mappings.tables):
        table = mappings.tables[name]
        owner, changes = owner_and_changes(root, table)
        out.append(
            {
                "name": name,
                "file": table.file,
                "owner": owner,
                "changes": changes,
                "last_change": max(changes) if changes else None,
                "rows": len(table.rows),
                "columns": list(table.columns),
                "missing": open_misses.get(name, 0),
            }
        )
    return out


def mapping_rows(table: Any, search: str, limit: int) -> tuple[list[str], list[list[str]], int]:
    """A table's columns (its key first, unless its first column is the key) and up to
    ``limit`` rows whose key or any value holds ``search`` (any case), with how many match."""
    columns = [c for c in table.columns] or ["value"]
    first = next(iter(table.rows.items()), None)
    # a CSV table's key is its first column: shown once
    keyed = not (first and isinstance(first[1], dict) and str(first[1].get(columns[0])) == first[0])
    wanted = search.strip().lower()
    found, total = [], 0
    for key, row in table.rows.items():
        values = [row.get(c) for c in columns] if isinstance(row, dict) else [row]
        cells = [*([str(key)] if keyed else []), *("" if v is None else str(v) for v in values)]
        if wanted and not any(wanted in c.lower() for c in cells):
            continue
        total += 1
        if len(found) < limit:
            found.append(cells)
    return [*(["key"] if keyed else []), *columns], found, total


def to_csv(rows: list[dict[str, Any]], columns: list[str]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    for r in rows:
        writer.writerow([r.get(c, "") for c in columns])
    return out.getvalue().encode()


def now() -> float:
    return time.time()
