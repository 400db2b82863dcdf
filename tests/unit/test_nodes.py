"""The node registry: names, one configuration version per node, the rows the heartbeat
writes (both dialects) and what the console shows of them."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from engine.runtime.nodes import HEARTBEAT, STALE_BEATS, config_version, node_name, node_view
from engine.store import make_store
from engine.store.nodes import Heartbeat

T0 = 1_700_000_000.0


def test_a_node_is_named_by_its_environment_then_routes_yaml_then_host_and_admin_port() -> None:
    admin = SimpleNamespace(listen="tcp:8123:interface=127.0.0.1")
    settings = SimpleNamespace(node="cabinet-a", admin=admin)
    assert node_name(settings, {"WHARF_NODE": "n7"}) == "n7"
    assert node_name(settings, {}) == "cabinet-a"
    unnamed = node_name(SimpleNamespace(node=None, admin=admin), {})
    assert unnamed.endswith(":8123") and len(unnamed) > len(":8123")


def test_the_configuration_version_depends_on_the_channels_versions_only() -> None:
    a = config_version({"adt": "v1", "orders": "v2"})
    assert a == config_version({"orders": "v2", "adt": "v1"})  # (order of loading aside)
    assert a != config_version({"adt": "v1", "orders": "v3"})
    assert a != config_version({"adt": "v1"})


def test_heartbeats_keep_one_row_per_node_and_when_its_version_changed(
    store_location: Path | str,
) -> None:
    with make_store(store_location).open() as store:
        listeners = {"usage_mllp": "127.0.0.1:2575", "fhir": None}
        store.node_heartbeat(Heartbeat("a", T0, T0 + 1, HEARTBEAT, "v1", listeners))
        store.node_heartbeat(Heartbeat("b", T0, T0 + 2, HEARTBEAT, "v1", {}))
        store.node_heartbeat(Heartbeat("a", T0, T0 + 11, HEARTBEAT, "v1", listeners))
        (a, b) = store.nodes()
        assert (a["node"], a["last_seen"], a["config_since"]) == ("a", T0 + 11, T0 + 1)
        assert a["listeners"] == listeners and b["listeners"] == {}
        store.node_heartbeat(Heartbeat("a", T0, T0 + 21, HEARTBEAT, "v2", listeners))
        assert [(n["config_version"], n["config_since"]) for n in store.nodes()] == [
            ("v2", T0 + 21),
            ("v1", T0 + 2),
        ]


def _row(node: str, version: str, since: float, seen: float) -> dict[str, object]:
    return {
        "node": node,
        "started_at": T0,
        "last_seen": seen,
        "heartbeat": HEARTBEAT,
        "config_version": version,
        "config_since": since,
        "listeners": {},
    }


def test_the_console_flags_a_node_behind_the_newest_version_and_one_not_seen() -> None:
    now = T0 + 100
    late = now - STALE_BEATS * HEARTBEAT - 1
    rows = [
        _row("a", "new", T0 + 90, now - 1),  # reloaded last: the newest version
        _row("b", "old", T0 + 10, now - 2),  # not reloaded
        _row("c", "newer?", T0 + 95, late),  # stopped: its version does not count
    ]
    view = {n["node"]: n for n in node_view(rows, now)}
    assert {k: (n["differs"], n["stale"]) for k, n in view.items()} == {
        "a": (False, False),
        "b": (True, False),
        "c": (True, True),
    }
    assert view["b"]["newest"] == "new" and view["a"]["age"] == 1
    assert node_view([], now) == []
