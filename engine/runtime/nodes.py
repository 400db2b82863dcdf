"""The node registry: which Wharf nodes run on one store, and with which configuration.

Each node has a name (:func:`node_name`: ``WHARF_NODE``, else routes.yaml's ``node:``, else
the host name and the admin listener's port) and beats every :data:`HEARTBEAT` seconds: its
row in the store (engine/store/nodes.py) says when it started, when it was last seen, the
configuration version it runs (:func:`config_version`: a hash of its channels' versions, the
same on every node that loaded the same files) and its listeners. A node records its version
again right after a hot reload. :func:`node_view` is what the console and /metrics show: each
node's last-seen age, flagged when its version differs from the newest one or when it missed
more than :data:`STALE_BEATS` beats.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Mapping
from typing import Any

#: Seconds between two heartbeats of a node.
HEARTBEAT = 10.0
#: A node not seen for more than this many of its heartbeats is flagged (stopped or stuck).
STALE_BEATS = 3
#: The environment variable that names this node (overrides routes.yaml's ``node:``).
NODE_ENV = "WHARF_NODE"


def node_name(settings: Any, env: Mapping[str, str] | None = None) -> str:
    """This node's name: ``WHARF_NODE``, else ``node:`` in routes.yaml, else
    ``<host name>:<admin port>`` (``<host name>:<pid>`` without an admin listener, a name
    that changes at each start)."""
    env = os.environ if env is None else env
    chosen = env.get(NODE_ENV) or getattr(settings, "node", None)
    if chosen:
        return str(chosen)
    host = socket.gethostname()
    admin = getattr(settings, "admin", None)
    if admin is not None:
        from engine.net.endpoints import parse_listen

        try:
            _, args, kwargs = parse_listen(admin.listen)
            return f"{host}:{kwargs.get('port') or args[0]}"
        except (ValueError, IndexError):
            pass
    return f"{host}:{os.getpid()}"


def config_version(channel_versions: Mapping[str, str]) -> str:
    """One version for a node's whole configuration: a hash of each running channel's version
    (engine/config/versions.py; they cover routes.yaml, the channel files and the tables)."""
    text = json.dumps(sorted(channel_versions.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def node_view(rows: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    """The store's node rows as the console shows them: ``age`` (seconds since last seen),
    ``stale`` (not seen for more than :data:`STALE_BEATS` of its heartbeats) and ``differs``
    (its configuration version is not the newest: the one a live node took on last)."""
    out = []
    for row in rows:
        age = max(0.0, now - row["last_seen"])
        out.append(row | {"age": age, "stale": age > STALE_BEATS * row["heartbeat"]})
    live = [r for r in out if not r["stale"]] or out
    newest = max(live, key=lambda r: r["config_since"])["config_version"] if live else None
    return [r | {"differs": r["config_version"] != newest, "newest": newest} for r in out]
