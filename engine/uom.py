"""Unit-of-measure conversions (EA/BX/CA/PK/…) from a ``uom_conversions`` table. Pure: no I/O.

A row ``(item_id, vendor, from_uom, to_uom, factor)`` says ``1 from_uom = factor to_uom``
(``BX → EA 10``). A blank ``item_id`` applies to every item, a blank ``vendor`` to every vendor.
Each row also gives the inverse (``EA → BX 1/10``).

:meth:`UomGraph.convert` picks, for each pair of units, the most specific row that applies:
item and vendor, then item, then vendor, then generic (the first row wins within a level). It
then searches the units graph (multi-hop: ``CA → BX → EA``), preferring the path with the fewest
generic rows, then the fewest hops. Factors are composed as exact rationals
(:class:`fractions.Fraction` built from the Decimals, never floats) and the quantity is divided
once at the end, so ``12 EA → BX → EA`` comes back as exactly ``12``.

:meth:`UomGraph.check` lists data problems: a factor missing or ≤ 0, a round trip ``A → B → A``
stated by two rows of the same scope whose product is not 1, and a cycle (in any item/vendor
context) whose product of factors is not 1, which would make the answer depend on the path.
"""

from __future__ import annotations

import heapq
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

from engine.errors import MappingMiss, TransformError

__all__ = ["Conversion", "UomGraph", "round_up_to_pack"]

TABLE = "uom_conversions"


@dataclass(frozen=True)
class Conversion:
    """One row: ``1 from_uom = factor to_uom`` for ``item_id`` / ``vendor`` (None: any)."""

    id: str
    item_id: str | None
    vendor: str | None
    from_uom: str
    to_uom: str
    factor: Decimal | None  # None: missing or not a number (check() reports it)
    raw_factor: object = None

    @property
    def level(self) -> int:
        """3 item+vendor, 2 item, 1 vendor, 0 generic."""
        return (2 if self.item_id else 0) + (1 if self.vendor else 0)

    @property
    def usable(self) -> bool:
        return (
            self.factor is not None
            and self.factor > 0
            and bool(self.from_uom)
            and bool(self.to_uom)
            and self.from_uom != self.to_uom
        )

    @property
    def scope(self) -> str:
        parts = []
        if self.item_id:
            parts.append(f"item {self.item_id}")
        if self.vendor:
            parts.append(f"vendor {self.vendor}")
        return ", ".join(parts) or "all items"


# An edge of the effective graph: (to unit, factor, row).
_Edge = tuple[str, Fraction, Conversion]


def _unit(value: object) -> str:
    return str(value).strip().upper() if value not in (None, "") else ""


def _opt(value: object) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


def _factor(value: object) -> Decimal | None:
    if isinstance(value, Decimal):
        return value if value.is_finite() else None
    if isinstance(value, bool) or isinstance(value, float) or value is None:
        return None  # floats are refused: a factor is exact
    try:
        result = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    return result if result.is_finite() else None


def _fmt(value: Fraction) -> str:
    """A Fraction as a plain decimal when it is one, else ``a/b``."""
    den = value.denominator
    for p in (2, 5):
        while den % p == 0:
            den //= p
    if den == 1:
        text = format(Decimal(value.numerator) / Decimal(value.denominator), "f")
        return text.rstrip("0").rstrip(".") if "." in text else text
    return f"{value.numerator}/{value.denominator}"


def _to_decimal(qty: Decimal, factor: Fraction) -> Decimal:
    return qty * Decimal(factor.numerator) / Decimal(factor.denominator)


class UomGraph:
    """Conversions between units of measure, generic, per item and per vendor."""

    def __init__(self, conversions: Iterable[Conversion]) -> None:
        self.conversions: tuple[Conversion, ...] = tuple(conversions)
        self._cache: dict[tuple[str | None, str | None], dict[str, list[_Edge]]] = {}

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, Any]] | Mapping[str, Any]) -> UomGraph:
        """Rows with ``from_uom, to_uom, factor`` and optional ``id, item_id, vendor``.

        ``rows`` may be a mapping table (key → row, as :func:`engine.mappings.load_csv` gives):
        the key is then the row id.
        """
        if isinstance(rows, Mapping):
            pairs = [(str(k), v) for k, v in rows.items()]
        else:
            pairs = [("", r) for r in rows]
        out = []
        for n, (key, row) in enumerate(pairs, start=1):
            raw = row.get("factor")
            out.append(
                Conversion(
                    id=str(row.get("id") or key or f"row {n}"),
                    item_id=_opt(row.get("item_id")),
                    vendor=_opt(row.get("vendor")),
                    from_uom=_unit(row.get("from_uom")),
                    to_uom=_unit(row.get("to_uom")),
                    factor=_factor(raw),
                    raw_factor=raw,
                )
            )
        return cls(out)

    # --- the effective graph for one item/vendor context ------------------------------------

    def _graph(self, item_id: str | None, vendor: str | None) -> dict[str, list[_Edge]]:
        key = (item_id, vendor)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        best: dict[frozenset[str], Conversion] = {}
        for conv in self.conversions:
            if not conv.usable:
                continue
            if conv.item_id not in (None, item_id) or conv.vendor not in (None, vendor):
                continue
            pair = frozenset((conv.from_uom, conv.to_uom))
            held = best.get(pair)
            if held is None or conv.level > held.level:
                best[pair] = conv
        graph: dict[str, list[_Edge]] = {}
        for conv in best.values():
            assert conv.factor is not None
            f = Fraction(conv.factor)
            graph.setdefault(conv.from_uom, []).append((conv.to_uom, f, conv))
            graph.setdefault(conv.to_uom, []).append((conv.from_uom, 1 / f, conv))
        self._cache[key] = graph
        return graph

    def path(
        self, from_uom: str, to_uom: str, item_id: str | None = None, vendor: str | None = None
    ) -> tuple[Fraction, tuple[Conversion, ...]] | None:
        """The factor from ``from_uom`` to ``to_uom`` and the rows used, or None."""
        src, dst = _unit(from_uom), _unit(to_uom)
        if src == dst:
            return Fraction(1), ()
        graph = self._graph(_opt(item_id), _opt(vendor))
        if src not in graph or dst not in graph:
            return None
        # Dijkstra on (generic rows used, hops): specific data wins over generic defaults.
        tie = 0
        heap: list[tuple[int, int, int, str, Fraction, tuple[Conversion, ...]]] = [
            (0, 0, tie, src, Fraction(1), ())
        ]
        done: set[str] = set()
        while heap:
            generic, hops, _, unit, factor, rows = heapq.heappop(heap)
            if unit in done:
                continue
            if unit == dst:
                return factor, rows
            done.add(unit)
            for nxt, f, conv in graph.get(unit, ()):
                if nxt not in done:
                    tie += 1
                    cost = generic + (1 if conv.level == 0 else 0)
                    heapq.heappush(heap, (cost, hops + 1, tie, nxt, factor * f, (*rows, conv)))
        return None

    def convert(
        self,
        qty: Decimal,
        from_uom: str,
        to_uom: str,
        item_id: str | None = None,
        vendor: str | None = None,
    ) -> Decimal:
        """``qty`` in ``from_uom`` expressed in ``to_uom`` for this item and vendor.

        Raises :class:`engine.errors.MappingMiss` (table ``uom_conversions``, key
        ``"<item>:<from>-><to>"``, ``*`` for no item) when no conversion path exists.
        """
        if isinstance(qty, bool) or not isinstance(qty, Decimal | int):
            raise TransformError(f"UoM convert: expected a Decimal quantity (got {qty!r})")
        qty = Decimal(qty)
        found = self.path(from_uom, to_uom, item_id, vendor)
        if found is None:
            item = _opt(item_id) or "*"
            raise MappingMiss(TABLE, f"{item}:{_unit(from_uom)}->{_unit(to_uom)}")
        factor, rows = found
        if not rows:
            return qty
        return _to_decimal(qty, factor)

    def units(self) -> set[str]:
        """Every unit named by a row."""
        return {u for c in self.conversions for u in (c.from_uom, c.to_uom) if u}

    # --- consistency -----------------------------------------------------------------------

    def check(self) -> list[str]:
        """Problems in the table, one sentence each (empty: consistent)."""
        problems: list[str] = []
        for conv in self.conversions:
            where = f"{TABLE} row {conv.id} ({conv.from_uom or '?'}->{conv.to_uom or '?'})"
            if not conv.from_uom or not conv.to_uom:
                problems.append(f"{where}: expected from_uom and to_uom (got a blank unit)")
            if conv.factor is None:
                problems.append(f"{where}: factor must be a number (got {conv.raw_factor!r})")
            elif conv.factor <= 0:
                problems.append(f"{where}: factor must be > 0 (got {conv.factor})")
            elif conv.from_uom and conv.from_uom == conv.to_uom and conv.factor != 1:
                problems.append(
                    f"{where}: a unit converts to itself with factor 1 (got {conv.factor})"
                )
        problems.extend(self._round_trips())
        problems.extend(self._cycles())
        return problems

    def _round_trips(self) -> list[str]:
        problems = []
        by_scope: dict[tuple[str | None, str | None], dict[tuple[str, str], Conversion]] = {}
        for conv in self.conversions:
            if not conv.usable:
                continue
            rows = by_scope.setdefault((conv.item_id, conv.vendor), {})
            same = rows.get((conv.from_uom, conv.to_uom))
            back = rows.get((conv.to_uom, conv.from_uom))
            if same is not None:
                if same.factor != conv.factor:
                    problems.append(
                        f"{TABLE}: {conv.from_uom}->{conv.to_uom} for {conv.scope} is given twice "
                        f"with different factors (row {same.id}: {same.factor}, "
                        f"row {conv.id}: {conv.factor})"
                    )
                continue
            if back is not None:
                assert back.factor is not None and conv.factor is not None
                product = Fraction(conv.factor) * Fraction(back.factor)
                if product != 1:
                    problems.append(
                        f"{TABLE}: round trip {back.from_uom}->{back.to_uom}->{back.from_uom} "
                        f"for {conv.scope} is {_fmt(product)}, expected 1 "
                        f"(rows {back.id} and {conv.id})"
                    )
                continue
            rows[(conv.from_uom, conv.to_uom)] = conv
        return problems

    def _contexts(self) -> list[tuple[str | None, str | None]]:
        """Every item/vendor combination whose effective graph differs: generic, per vendor,
        per item, and per item with each vendor that has rows of its own."""
        items: set[str] = set()
        vendors: set[str] = set()
        bare_vendors: set[str] = set()
        pairs: set[tuple[str, str]] = set()
        for c in self.conversions:
            if c.item_id:
                items.add(c.item_id)
            if c.vendor:
                vendors.add(c.vendor)
                if c.item_id:
                    pairs.add((c.item_id, c.vendor))
                else:
                    bare_vendors.add(c.vendor)
        pairs |= {(i, v) for i in items for v in bare_vendors}
        out: list[tuple[str | None, str | None]] = [(None, None)]
        out += [(None, v) for v in sorted(vendors)]
        out += [(i, None) for i in sorted(items)]
        out += sorted(pairs)
        return out

    def _cycles(self) -> list[str]:
        problems: list[str] = []
        seen: set[frozenset[str]] = set()
        for item_id, vendor in self._contexts():
            graph = self._graph(item_id, vendor)
            potential: dict[str, Fraction] = {}
            parent: dict[str, tuple[str, Conversion] | None] = {}
            for root in sorted(graph):
                if root in potential:
                    continue
                potential[root] = Fraction(1)
                parent[root] = None
                queue = deque([root])
                while queue:
                    unit = queue.popleft()
                    for nxt, f, conv in graph[unit]:
                        if nxt not in potential:
                            potential[nxt] = potential[unit] * f
                            parent[nxt] = (unit, conv)
                            queue.append(nxt)
                        elif potential[unit] * f != potential[nxt]:
                            cycle = self._cycle(unit, nxt, conv, parent)
                            key = frozenset(c.id for c in cycle[1])
                            if key in seen:
                                continue
                            seen.add(key)
                            product = potential[unit] * f / potential[nxt]
                            problems.append(
                                f"{TABLE}: inconsistent cycle {'->'.join(cycle[0])} for "
                                f"{_context(item_id, vendor)}: product of factors is "
                                f"{_fmt(product)}, expected 1 "
                                f"(rows {', '.join(c.id for c in cycle[1])})"
                            )
        return problems

    @staticmethod
    def _cycle(
        unit: str,
        nxt: str,
        conv: Conversion,
        parent: Mapping[str, tuple[str, Conversion] | None],
    ) -> tuple[list[str], list[Conversion]]:
        """Units and rows of the cycle closed by the non-tree edge ``unit → nxt``."""

        def up(node: str) -> list[tuple[str, Conversion | None]]:
            chain: list[tuple[str, Conversion | None]] = []
            link = parent.get(node)
            chain.append((node, link[1] if link else None))
            while link is not None:
                node = link[0]
                link = parent.get(node)
                chain.append((node, link[1] if link else None))
            return chain

        a, b = up(unit), up(nxt)
        b_nodes = [n for n, _ in b]
        meet = next(n for n, _ in a if n in b_nodes)
        a_part = a[: [n for n, _ in a].index(meet) + 1]
        b_part = b[: b_nodes.index(meet) + 1]
        # meet -> … -> unit -> nxt -> … -> meet
        units = [n for n, _ in reversed(a_part)] + [n for n, _ in b_part]
        rows = [r for _, r in reversed(a_part[:-1]) if r] + [conv]
        rows += [r for _, r in b_part[:-1] if r]
        return units, rows


def _context(item_id: str | None, vendor: str | None) -> str:
    parts = []
    if item_id:
        parts.append(f"item {item_id}")
    if vendor:
        parts.append(f"vendor {vendor}")
    return ", ".join(parts) or "all items"


_graphs: dict[int, tuple[Any, UomGraph]] = {}
_graphs_lock = threading.Lock()


def graph_of(table: Any) -> UomGraph:
    """The conversion graph of a ``uom_conversions`` mapping table, built once per table object
    (a reload makes a new table, hence a new graph); safe from several threads."""
    with _graphs_lock:
        cached = _graphs.get(id(table))
        if cached is None or cached[0] is not table:
            cached = (table, UomGraph.from_rows(table.rows))
            _graphs[id(table)] = cached
        return cached[1]


def round_up_to_pack(qty: Decimal, pack: int) -> Decimal:
    """``qty`` rounded up (toward +∞) to a whole number of packs of ``pack``: 7 by 5 → 10.

    ``pack`` must be a whole number ≥ 1; a fractional ``qty`` with ``pack`` 1 rounds up to the
    next whole unit.
    """
    if isinstance(pack, bool) or not isinstance(pack, int) or pack < 1:
        raise TransformError(f"round_up_to_pack: pack must be a whole number >= 1 (got {pack!r})")
    if isinstance(qty, bool) or not isinstance(qty, Decimal | int):
        raise TransformError(f"round_up_to_pack: expected a Decimal quantity (got {qty!r})")
    packs = (Decimal(qty) / pack).to_integral_value(rounding=ROUND_CEILING)
    result = packs * pack
    return result if result else Decimal(0)  # no -0
