"""engine.testing.ports: ports for throw-away servers never collide with each other or with the
local ports of outgoing connections (the kernel's ephemeral range)."""

from __future__ import annotations

import socket

from engine.testing import ports


def test_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    low = ports._ephemeral_low()
    given = [ports.free_port() for _ in range(200)]
    assert len(set(given)) == 200
    assert all(p < low for p in given)
    for port in given[:20]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_port_in_use_is_never_given() -> None:
    held = []
    try:
        for _ in range(50):
            s = socket.socket()
            port = ports.free_port()
            s.bind(("127.0.0.1", port))
            s.listen()
            held.append(s)
        assert len({s.getsockname()[1] for s in held}) == 50
        assert ports.free_port() not in {s.getsockname()[1] for s in held}
    finally:
        for s in held:
            s.close()


def test_xdist_workers_draw_from_disjoint_slices(monkeypatch) -> None:
    low = ports._ephemeral_low()
    drawn: dict[str, set[int]] = {}
    for worker in ("gw0", "gw1", "gw2"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
        start, stop = ports._worker_slice(20000, low)
        drawn[worker] = {ports.free_port() for _ in range(30)}
        assert all(start <= p < stop for p in drawn[worker]), worker
    assert not drawn["gw0"] & drawn["gw1"]
    assert not drawn["gw1"] & drawn["gw2"]
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    assert ports._worker_slice(20000, low) == (20000, low)


def test_slices_cover_the_range_without_overlap(monkeypatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    a = ports._worker_slice(20000, 32768)
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    b = ports._worker_slice(20000, 32768)
    assert a == (20000, 26384) and b == (26384, 32768)
