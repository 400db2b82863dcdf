"""Leases of one-at-a-time jobs and the SFTP server's upload registry, on both dialects."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.store import SqliteStore, make_store

T0 = 1_800_000_000.0


@pytest.fixture
def store(store_location: Path | str) -> Iterator[SqliteStore]:
    s = make_store(store_location).open()
    yield s
    s.close()


def test_a_lease_is_renewed_by_its_holder_and_refused_to_others_until_it_runs_out(
    store: SqliteStore,
) -> None:
    assert store.hold_leases(["pickup:a", "pickup:b"], "node1", 10, T0) == [
        "pickup:a",
        "pickup:b",
    ]
    assert store.hold_leases(["pickup:a"], "node2", 10, T0 + 5) == []
    assert store.hold_leases(["pickup:a"], "node1", 10, T0 + 8) == ["pickup:a"]  # renewed
    # node 1's renewal at T0 + 8 runs until T0 + 18: still refused at T0 + 17
    assert store.hold_leases(["pickup:a", "pickup:b"], "node2", 10, T0 + 17) == ["pickup:b"]
    (a, b) = store.leases("pickup:")
    assert (a["holder"], a["since"], a["until"], a["taken_from"]) == ("node1", T0, T0 + 18, None)
    # node 2 took b after node 1's lease on it (until T0 + 10) had run out, and says so
    assert (b["holder"], b["since"], b["taken_from"], b["taken_from_until"]) == (
        "node2",
        T0 + 17,
        "node1",
        T0 + 10,
    )
    assert store.drop_leases(["pickup:a", "pickup:b"], "node1") == 1  # b is not node 1's
    assert store.hold_leases(["pickup:a"], "node2", 10, T0 + 17.5) == ["pickup:a"]
    assert [r["holder"] for r in store.leases()] == ["node2", "node2"]


def test_the_upload_registry_follows_an_upload_from_open_to_handed(store: SqliteStore) -> None:
    store.upload_opened("/sftp/acme/inbound/a.x12", ".a.x12.1.wharf-part", "node1", T0)
    store.upload_opened("/sftp/acme/inbound/b.x12", ".b.x12.2.wharf-part", "node1", T0)
    assert [r["state"] for r in store.uploads("/sftp/acme/")] == ["open", "open"]
    store.upload_closed("/sftp/acme/inbound/a.x12", "node1", 120, "ab" * 32, T0 + 1)
    store.upload_closed("/sftp/acme/inbound/b.x12", "node1", None, None, T0 + 1)  # aborted
    (a,) = store.uploads("/sftp/acme/")
    assert (a["state"], a["size"], a["closed_at"]) == ("complete", 120, T0 + 1)
    store.uploads_handed([("/sftp/acme/inbound/a.x12", "m-1")], "node2", T0 + 2)
    (a,) = store.uploads("/sftp/acme/")
    assert (a["state"], a["handed_by"], a["message_id"], a["size"]) == (
        "handed",
        "node2",
        "m-1",
        120,
    )
    # the partner uploads the same name again: a new row's life
    store.upload_opened("/sftp/acme/inbound/a.x12", ".a.x12.3.wharf-part", "node2", T0 + 3)
    (a,) = store.uploads("/sftp/acme/")
    assert (a["state"], a["node"], a["handed_by"], a["size"]) == ("open", "node2", None, None)
    assert store.uploads("/elsewhere/") == []


def test_prune_drops_what_the_upload_and_node_registries_no_longer_need(
    store: SqliteStore,
) -> None:
    from engine.model import Inbound
    from engine.store.leases import REGISTRY_KEEP
    from engine.store.nodes import Heartbeat

    (kept,) = store.ingest_batch(
        [Inbound("x12_in", "sftp", b"ISA*00*", "application/edi-x12", T0)], T0
    )
    day = 86400.0
    store.uploads_handed([("/sftp/acme/in/kept.x12", kept.message_id)], "node1", T0)
    store.uploads_handed([("/sftp/acme/in/pruned.x12", "m-pruned")], "node1", T0)
    store.uploads_handed([("/sftp/acme/in/old-empty.x12", None)], "node1", T0)
    store.uploads_handed([("/sftp/acme/in/new-empty.x12", None)], "node1", T0 + 29 * day)
    store.upload_opened("/sftp/acme/in/dead.x12", ".dead.part", "node0", T0)
    store.upload_opened("/sftp/acme/in/live.x12", ".live.part", "node1", T0 + 29 * day)
    store.upload_opened("/sftp/acme/in/done.x12", ".done.part", "node1", T0)
    store.upload_closed("/sftp/acme/in/done.x12", "node1", 10, "cd" * 32, T0)  # not handed yet
    for name, seen in (("gone", T0), ("stopped-lately", T0 + 20 * day), ("up", T0 + 30 * day)):
        store.node_heartbeat(Heartbeat(name, T0, seen, 10.0, "v1", {}))

    now = T0 + REGISTRY_KEEP + day
    assert store.prune_registries(now) == {"uploads": 3, "nodes": 1}
    assert [r["path"].rsplit("/", 1)[1] for r in store.uploads("/sftp/acme/")] == [
        "done.x12",
        "kept.x12",
        "live.x12",
        "new-empty.x12",
    ]
    assert [n["node"] for n in store.nodes()] == ["stopped-lately", "up"]
    assert store.prune_registries(now) == {"uploads": 0, "nodes": 0}
