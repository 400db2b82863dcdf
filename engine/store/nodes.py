"""The store's side of the node registry (store migration ``NODES_MIGRATION``): one row per
Wharf node that ran on this store, written by the node's heartbeat (engine/runtime/nodes.py):
when it started, when it was last seen, how often it beats, the configuration version it runs
(and since when) and its listeners. The store keeps what it is handed and computes nothing."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Heartbeat:
    """One node's state at one beat."""

    node: str
    started_at: float
    seen_at: float
    interval: float  #: seconds between this node's beats
    config_version: str
    listeners: Mapping[str, str | None]  #: source key -> "host:port" (None: not bound)


#: The columns of :func:`nodes`' rows, in order.
COLUMNS = (
    "node",
    "started_at",
    "last_seen",
    "heartbeat",
    "config_version",
    "config_since",
    "listeners",
)


def beat(conn: sqlite3.Connection, hb: Heartbeat) -> None:
    """Record ``hb`` (the node's row made or updated); ``config_since`` moves only when the
    node's configuration version changed (or it restarted)."""
    conn.execute(
        "INSERT INTO nodes (node, started_at, last_seen, heartbeat, config_version, "
        "config_since, listeners) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (node) DO UPDATE "
        "SET config_since = CASE WHEN nodes.config_version = excluded.config_version "
        "AND nodes.started_at = excluded.started_at THEN nodes.config_since "
        "ELSE excluded.config_since END, started_at = excluded.started_at, "
        "last_seen = excluded.last_seen, heartbeat = excluded.heartbeat, "
        "config_version = excluded.config_version, listeners = excluded.listeners",
        (
            hb.node,
            hb.started_at,
            hb.seen_at,
            hb.interval,
            hb.config_version,
            hb.seen_at,
            json.dumps(dict(hb.listeners), sort_keys=True),
        ),
    )


def nodes(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every node's row (listeners decoded), by name."""
    rows = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM nodes ORDER BY node").fetchall()
    out = []
    for row in rows:
        item = dict(zip(COLUMNS, row, strict=True))
        item["listeners"] = json.loads(item["listeners"])
        out.append(item)
    return out
