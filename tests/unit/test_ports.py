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
