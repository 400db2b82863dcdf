"""Who may hold a listener's connections: a sender allowlist, a cap per peer, and fair shares.

One :class:`Admission` per listening port (the ``mllp``, ``fhir_http`` and ``http`` sources). A
new connection is checked before a byte of it is read:

* ``allow`` (CIDRs): a peer outside every listed network is closed at once;
* ``max_connections_per_peer``: a peer (one IPv4 address, or one IPv6 /64, the block a single
  host can pick addresses from) holding that many gets no more;
* ``max_connections``: when the port is full, a peer holding fewer connections than the
  heaviest peer still gets in: the heaviest peer's quietest connection (idle first, then one
  still receiving, never one being answered) is closed to make room. So one address that opens
  every connection it can never starves a sender at another address.

Refusals are counted and logged at most once per peer and reason per minute (a flood does
not flood the log); the log names the peer and the rule, nothing of the traffic.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import yaml
from twisted.logger import Logger

from engine.spec import INVALID, Context, Field, Int, ListOf, Type, scalar_value

log = Logger(namespace="wharf.net.admission")

#: A connection in one of these states may be closed to make room, lowest first.
IDLE, RECEIVING, BUSY = 0, 1, 2
LOG_EVERY = 60.0  # seconds between two log lines for the same peer and reason

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Cidr(Type):
    """An IPv4/IPv6 address or network (``10.0.0.0/8``, ``192.168.1.20``, ``fd00::/64``)."""

    label = "an IP address or network in CIDR notation, such as 10.20.0.0/16"

    def parse(self, node: yaml.Node, ctx: Context, path: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            return self.mismatch(node, ctx, path)
        value = scalar_value(node, ctx, path)
        if value is INVALID:
            return INVALID
        text = str(value).strip()
        try:
            return str(ipaddress.ip_network(text, strict=True))
        except ValueError as exc:
            hint = ""
            try:
                net = ipaddress.ip_network(text, strict=False)
                hint = f" (did you mean '{net}'?)"
            except ValueError:
                pass
            return ctx.error(node, path, f"expected {self.label} (got {text!r}: {exc}){hint}")

    def schema(self) -> dict[str, Any]:
        return {"type": "string"}


def admission_fields(max_connections: int, per_peer: int, what: str = "connections") -> list[Field]:
    """The spec fields of a listener's admission rules (the defaults are the listener's)."""
    return [
        Field(
            "max_connections",
            Int(1, 100000),
            max_connections,
            f"Open {what} at most. When full, a peer holding fewer than the heaviest peer "
            "still gets in: the heaviest peer's quietest connection is closed for it.",
        ),
        Field(
            "max_connections_per_peer",
            Int(1, 100000),
            per_peer,
            "Open connections one peer may hold (an IPv4 address, or an IPv6 /64); more are "
            "closed at once.",
        ),
        Field(
            "allow",
            ListOf(Cidr(), scalar_ok=True),
            (),
            "Only senders in these networks (CIDRs such as `10.20.0.0/16`, or single "
            "addresses) may connect; others are closed at once. Empty: any address.",
        ),
    ]


def check_admission(config: Any, ctx: Context, node: yaml.Node, path: str) -> None:
    """Spec check: a cap per peer written out is at most the port's cap (the default one is
    taken down to it)."""
    if (
        "max_connections_per_peer" in config.positions
        and config.max_connections_per_peer > config.max_connections
    ):
        ctx.error(
            _value_node(node, "max_connections_per_peer") or node,
            f"{path}.max_connections_per_peer",
            f"max_connections_per_peer must be at most max_connections "
            f"({config.max_connections}) (got {config.max_connections_per_peer})",
        )


def _value_node(node: yaml.Node, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if k.value == key:
                return v
    return None


class Admitted(Protocol):
    """What :class:`Admission` needs of a connection."""

    def admission_state(self) -> int:
        """IDLE, RECEIVING or BUSY (a request or frame being answered: never evicted)."""

    def evict(self, reason: str) -> None:
        """Close now to make room for another peer."""


def peer_key(host: str | None) -> str:
    """The unit a per-peer cap counts: an IPv4 address, an IPv6 /64, or ``local`` (no IP)."""
    if not host:
        return "local"
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return "local"
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)


def peer_host(transport: Any) -> str | None:
    """The IP address of the other side (None for a UNIX socket or an unknown transport)."""
    try:
        return getattr(transport.getPeer(), "host", None)
    except Exception:
        return None


@dataclass(frozen=True)
class Refused:
    """Why a connection was not taken: ``rule`` is not_allowed, per_peer or full."""

    rule: str
    text: str


@dataclass
class _Held:
    conn: Any
    seq: int


@dataclass
class Admission:
    """The admission rules of one listening port and the connections it holds."""

    max_connections: int
    max_per_peer: int
    allow: tuple[Network, ...]
    clock: Any
    label: str = "listener"
    held: dict[str, dict[int, _Held]] = field(default_factory=dict)
    stats: dict[str, int] = field(
        default_factory=lambda: dict(
            admitted=0, refused_not_allowed=0, refused_per_peer=0, refused_full=0, evicted=0
        )
    )
    _logged: dict[tuple[str, str], float] = field(default_factory=dict)
    _suppressed: dict[tuple[str, str], int] = field(default_factory=dict)
    _seq: int = 0
    _open: int = 0

    @classmethod
    def of(cls, options: Any, clock: Any, label: str) -> Admission:
        """From a spec'd config carrying ``max_connections``, ``max_connections_per_peer`` and
        ``allow``."""
        return cls(
            max_connections=options.max_connections,
            max_per_peer=min(options.max_connections_per_peer, options.max_connections),
            allow=networks(options.allow),
            clock=clock,
            label=label,
        )

    @property
    def open(self) -> int:
        """Connections held now."""
        return self._open

    def count(self, host: str | None) -> int:
        return len(self.held.get(peer_key(host), {}))

    def admit(self, conn: Any, host: str | None, shown: str) -> Refused | None:
        """Take ``conn`` (from ``host``; ``shown`` names the peer in logs), or say why not.

        May evict another peer's connection to make room (see the module docstring)."""
        key = peer_key(host)
        if self.allow and not _allowed(host, self.allow):
            return self._refuse(key, shown, "not_allowed", "not in the allow list")
        mine = self.held.get(key, {})
        if len(mine) >= self.max_per_peer:
            return self._refuse(
                key, shown, "per_peer", f"it holds {len(mine)} connections (the cap per peer)"
            )
        if self.open >= self.max_connections and not self._make_room(key, len(mine)):
            return self._refuse(
                key, shown, "full", f"{self.max_connections} connections open, none to spare"
            )
        self._seq += 1
        self.held.setdefault(key, {})[id(conn)] = _Held(conn, self._seq)
        self._open += 1
        self.stats["admitted"] += 1
        return None

    def release(self, conn: Any, host: str | None) -> None:
        key = peer_key(host)
        mine = self.held.get(key)
        if mine is None or mine.pop(id(conn), None) is None:
            return
        self._open -= 1
        if not mine:
            del self.held[key]

    def _make_room(self, key: str, mine: int) -> bool:
        """Evict the quietest connection of the heaviest peer, if it holds more than ``mine``."""
        heaviest = max(
            (k for k in self.held if k != key), key=lambda k: len(self.held[k]), default=None
        )
        if heaviest is None or len(self.held[heaviest]) <= mine:
            return False
        victims = [
            (h.conn.admission_state(), h.seq, h)
            for h in self.held[heaviest].values()
            if h.conn.admission_state() < BUSY
        ]
        if not victims:
            return False
        _, _, victim = min(victims, key=lambda v: (v[0], v[1]))
        self.held[heaviest].pop(id(victim.conn), None)
        self._open -= 1
        if not self.held[heaviest]:
            del self.held[heaviest]
        self.stats["evicted"] += 1
        self._log(
            heaviest,
            "evicted",
            "{label}: closed a connection of {peer} (it held the most) to make room for "
            "another peer",
            heaviest,
        )
        victim.conn.evict("room for another peer")
        return True

    def _refuse(self, key: str, shown: str, reason: str, why: str) -> Refused:
        self.stats[f"refused_{reason}"] += 1
        self._log(key, reason, "{label}: connection from {peer} refused: " + why, shown)
        return Refused(reason, why)

    def _log(self, key: str, reason: str, fmt: str, shown: str) -> None:
        now = self.clock.seconds()
        last = self._logged.get((key, reason))
        if last is not None and now - last < LOG_EVERY:
            self._suppressed[(key, reason)] = self._suppressed.get((key, reason), 0) + 1
            return
        more = self._suppressed.pop((key, reason), 0)
        self._logged[(key, reason)] = now
        if len(self._logged) > 10000:  # forget the oldest peers (a scan of many addresses)
            for k in sorted(self._logged, key=self._logged.__getitem__)[:5000]:
                self._logged.pop(k, None)
        suffix = f" ({more} more like it in the last minute)" if more else ""
        log.warn(fmt + suffix, label=self.label, peer=shown)


def networks(texts: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(t, strict=False) for t in texts)


def _allowed(host: str | None, allow: tuple[Network, ...]) -> bool:
    if not host:
        return False
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == net.version and addr in net for net in allow)


__all__ = [
    "BUSY",
    "IDLE",
    "RECEIVING",
    "Admission",
    "Cidr",
    "Refused",
    "admission_fields",
    "check_admission",
    "peer_host",
    "peer_key",
]
