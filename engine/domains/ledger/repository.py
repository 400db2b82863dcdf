"""Where the supply ledger keeps its records: the repository its rules talk to.

:class:`LedgerRepository` is everything :mod:`engine.domains.ledger.rules` reads and writes;
:class:`SqliteLedgerRepository` keeps it in the store's SQLite file, inside the transaction
the runtime opened for the message (so stock, charges and requisitions commit with the
message's result), and :class:`~engine.domains.ledger.memory.InMemoryLedgerRepository` keeps
it in dicts for the rules' unit tests. Quantities cross this boundary as :class:`Decimal`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from engine.domains.ledger.records import (
    ConsumptionEvent,
    HeldCredit,
    Posting,
    PostingOutcome,
    event_from_dict,
)
from engine.model import to_json_bytes


@dataclass(frozen=True)
class Unbilled:
    """A chargeable usage event whose charge was never accepted."""

    business_key: str
    message_id: str
    correlation_id: str
    encounter: str
    item_id: str
    charge_status: str  # none | pending | rejected


def posted_figures(
    outcome: PostingOutcome, item: str, quantity: Decimal
) -> tuple[str | None, str | None]:
    """A line's posted quantity and value (at the item master's cost) as text; None, None when
    the ERP did not post it."""
    if outcome.status != "posted":
        return None, None
    cost = outcome.unit_cost(item) if outcome.unit_cost is not None else None
    return str(quantity), (str(quantity * cost) if cost is not None else None)


class LedgerRepository(Protocol):
    """The ledger's records, inside one store transaction."""

    def event_booked(self, business_key: str) -> bool: ...

    def add_event(
        self, ev: ConsumptionEvent, message_id: str, correlation_id: str, now: float
    ) -> int: ...

    def move_stock(
        self,
        location: str,
        item: str,
        delta: Decimal,
        uom: str,
        now: float,
        *,
        event_id: int | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
    ) -> Decimal: ...

    def add_charge(
        self,
        event_id: int,
        ev: ConsumptionEvent,
        quantity: Decimal,
        transaction_type: str,
        message_id: str,
        correlation_id: str,
        now: float,
        *,
        channel: str | None = None,
    ) -> None: ...

    def has_open_requisition(self, location: str, item: str) -> bool: ...

    def open_requisitions(self) -> int: ...

    def charge_outcomes(
        self, since: float, until: float, within: float, limit: int
    ) -> list[tuple[float, bool]]: ...

    def requisition_requested(self, business_key: str) -> bool: ...

    def add_requisition(
        self,
        location: str,
        item: str,
        quantity: Decimal,
        uom: str,
        message_id: str,
        correlation_id: str,
        now: float,
        *,
        event_id: int | None = None,
        business_key: str | None = None,
    ) -> int: ...

    def stock(self, location: str, item: str) -> tuple[Decimal, str] | None: ...

    def hold_credit(
        self, ev: ConsumptionEvent, channel: str, message_id: str, correlation_id: str, now: float
    ) -> int | None: ...

    def held_credit(self, credit_id: int) -> HeldCredit | None: ...

    def held_credits(self, status: str | None = "held") -> list[HeldCredit]: ...

    def close_credit(self, credit_id: int, status: str, now: float) -> None: ...

    def set_charge_status(self, event_key: str, status: str, now: float) -> bool: ...

    def seed_onhand(self, rows: Sequence[tuple[str, str, Decimal, str]], now: float) -> int: ...

    def add_posting(self, posting: Posting) -> None: ...

    def settle_postings(self, issue_key: str, outcome: PostingOutcome) -> int: ...

    def unbilled(self, created_before: float) -> list[Unbilled]: ...

    def onhand(self, location: str, item: str) -> Decimal | None: ...

    def prune(self, before: float, limit: int) -> int: ...

    def open_work_item(
        self,
        kind: str,
        subject: str,
        detail: str,
        message_id: str | None,
        correlation_id: str | None,
        now: float,
    ) -> None: ...


class SqliteLedgerRepository:
    """:class:`LedgerRepository` over the store's SQLite connection (tables: schema.py)."""

    def __init__(self, tx: Any) -> None:
        self.tx = tx
        self.conn = tx.connection

    def event_booked(self, business_key: str) -> bool:
        return (
            self.conn.execute(
                "SELECT 1 FROM consumption_events WHERE business_key = ?", (business_key,)
            ).fetchone()
            is not None
        )

    def add_event(
        self, ev: ConsumptionEvent, message_id: str, correlation_id: str, now: float
    ) -> int:
        cur = self.conn.execute(
            "INSERT INTO consumption_events (business_key, kind, item_id, location_id, quantity, "
            "uom, chargeable, encounter, service_time, reverses, lot, serial, detail, message_id, "
            "correlation_id, created_at, performer, orderer, payer, payer_kind, procedure) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                ev.business_key,
                ev.kind,
                ev.item_id,
                ev.location_id,
                str(ev.quantity),
                ev.uom,
                int(ev.chargeable),
                ev.encounter,
                ev.service_time,
                ev.reverses,
                ev.lot,
                ev.serial,
                to_json_bytes(ev).decode(),
                message_id,
                correlation_id,
                now,
                ev.performer,
                ev.orderer,
                ev.payer,
                ev.payer_kind,
                ev.procedure,
            ),
        )
        return int(cur.lastrowid or 0)

    def move_stock(
        self,
        location: str,
        item: str,
        delta: Decimal,
        uom: str,
        now: float,
        *,
        event_id: int | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
    ) -> Decimal:
        """Change on-hand by ``delta``; with an event, the inventory transaction too. Nodes
        sharing one database change one location's item one at a time (until this transaction
        ends): each reads the figure the one before it wrote, none is lost."""
        lock = getattr(self.tx, "lock", None)
        if lock is not None:
            lock(f"onhand:{location}:{item}")
        if event_id is not None:
            self.conn.execute(
                "INSERT INTO inventory_transactions (event_id, location_id, item_id, delta, uom, "
                "message_id, correlation_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (event_id, location, item, str(delta), uom, message_id, correlation_id, now),
            )
        row = self.conn.execute(
            "SELECT quantity FROM onhand WHERE location_id = ? AND item_id = ?", (location, item)
        ).fetchone()
        quantity = (Decimal(row[0]) if row else Decimal(0)) + delta
        self.conn.execute(
            "INSERT INTO onhand (location_id, item_id, quantity, uom, updated_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (location_id, item_id) DO UPDATE SET "
            "quantity = excluded.quantity, updated_at = excluded.updated_at",
            (location, item, str(quantity), uom, now),
        )
        return quantity

    def add_charge(
        self,
        event_id: int,
        ev: ConsumptionEvent,
        quantity: Decimal,
        transaction_type: str,
        message_id: str,
        correlation_id: str,
        now: float,
        *,
        channel: str | None = None,
    ) -> None:
        """A pending charge of ``channel`` (the channel that booked it: the console's scopes)."""
        priced = ev.unit_price is not None
        self.conn.execute(
            "INSERT INTO charges (event_id, encounter, charge_code, quantity, uom, "
            "transaction_type, amount, currency, status, message_id, correlation_id, "
            "created_at, updated_at, channel) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?)",
            (
                event_id,
                ev.encounter,
                ev.charge_code,
                str(quantity),
                ev.billing_uom or ev.uom,
                transaction_type,
                str(ev.unit_price * quantity) if ev.unit_price is not None else None,
                ev.currency if priced else None,
                message_id,
                correlation_id,
                now,
                now,
                channel,
            ),
        )

    def has_open_requisition(self, location: str, item: str) -> bool:
        return (
            self.conn.execute(
                "SELECT 1 FROM requisitions WHERE location_id = ? AND item_id = ? "
                "AND status = 'open'",
                (location, item),
            ).fetchone()
            is not None
        )

    def open_requisitions(self) -> int:
        """How many requisitions are open (from the index by status)."""
        return int(
            self.conn.execute("SELECT COUNT(*) FROM requisitions WHERE status = 'open'").fetchone()[
                0
            ]
        )

    def charge_outcomes(
        self, since: float, until: float, within: float, limit: int
    ) -> list[tuple[float, bool]]:
        """Chargeable events booked in (since, until], oldest first (at most ``limit``): when,
        and whether their charge was accepted within ``within`` seconds of booking."""
        rows = self.conn.execute(
            "SELECT e.created_at, EXISTS (SELECT 1 FROM charges c WHERE c.event_id = e.id "
            "AND c.status = 'accepted' AND c.updated_at <= e.created_at + ?) "
            "FROM consumption_events e WHERE e.created_at > ? AND e.created_at <= ? "
            "AND e.chargeable = 1 ORDER BY e.created_at LIMIT ?",
            (within, since, until, limit),
        ).fetchall()
        return [(float(at), bool(good)) for at, good in rows]

    def requisition_requested(self, business_key: str) -> bool:
        return (
            self.conn.execute(
                "SELECT 1 FROM requisitions WHERE business_key = ?", (business_key,)
            ).fetchone()
            is not None
        )

    def add_requisition(
        self,
        location: str,
        item: str,
        quantity: Decimal,
        uom: str,
        message_id: str,
        correlation_id: str,
        now: float,
        *,
        event_id: int | None = None,
        business_key: str | None = None,
    ) -> None:
        cur = self.conn.execute(
            "INSERT INTO requisitions (location_id, item_id, quantity, uom, status, event_id, "
            "message_id, correlation_id, created_at, updated_at, business_key, channel) "
            "VALUES (?, ?, ?, ?, 'open', ?, ?, ?, ?, ?, ?, ?)",
            (
                location,
                item,
                str(quantity),
                uom,
                event_id,
                message_id,
                correlation_id,
                now,
                now,
                business_key,
                self.tx.message_channel(message_id),  # the channel that raised it (scopes)
            ),
        )
        return int(cur.lastrowid or 0)

    def stock(self, location: str, item: str) -> tuple[Decimal, str] | None:
        row = self.conn.execute(
            "SELECT quantity, uom FROM onhand WHERE location_id = ? AND item_id = ?",
            (location, item),
        ).fetchone()
        return None if row is None else (Decimal(row[0]), row[1])

    def hold_credit(
        self, ev: ConsumptionEvent, channel: str, message_id: str, correlation_id: str, now: float
    ) -> int | None:
        """Keep a credit for a person; None when it is held (or was decided) already."""
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO held_credits (business_key, reverses, channel, detail, status, "
            "message_id, correlation_id, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, 'held', ?, ?, ?, ?)",
            (
                ev.business_key,
                ev.reverses or "",
                channel,
                to_json_bytes(ev).decode(),
                message_id,
                correlation_id,
                now,
                now,
            ),
        )
        return int(cur.lastrowid) if cur.rowcount else None

    _CREDIT_COLUMNS = (
        "id, business_key, reverses, channel, status, message_id, correlation_id, detail, "
        "created_at"
    )

    @staticmethod
    def _credit(row: Sequence[Any]) -> HeldCredit:
        cid, key, reverses, channel, status, mid, corr, detail, at = row
        event = event_from_dict(json.loads(detail))
        return HeldCredit(cid, key, reverses, channel, status, mid, corr, event, at)

    def held_credit(self, credit_id: int) -> HeldCredit | None:
        row = self.conn.execute(
            f"SELECT {self._CREDIT_COLUMNS} FROM held_credits WHERE id = ?", (credit_id,)
        ).fetchone()
        return None if row is None else self._credit(row)

    def held_credits(self, status: str | None = "held") -> list[HeldCredit]:
        sql = f"SELECT {self._CREDIT_COLUMNS} FROM held_credits"
        args: tuple[Any, ...] = ()
        if status is not None:
            sql += " WHERE status = ?"
            args = (status,)
        return [self._credit(r) for r in self.conn.execute(sql + " ORDER BY id", args)]

    def close_credit(self, credit_id: int, status: str, now: float) -> None:
        self.conn.execute(
            "UPDATE held_credits SET status = ?, updated_at = ? WHERE id = ?",
            (status, now, credit_id),
        )

    def set_charge_status(self, event_key: str, status: str, now: float) -> bool:
        event = self.conn.execute(
            "SELECT id FROM consumption_events WHERE business_key = ?", (event_key,)
        ).fetchone()
        if event is None:
            return False
        self.conn.execute(
            "UPDATE charges SET status = ?, updated_at = ? WHERE event_id = ?",
            (status, now, event[0]),
        )
        return True

    def seed_onhand(self, rows: Sequence[tuple[str, str, Decimal, str]], now: float) -> int:
        n = 0
        for location, item, quantity, uom in rows:
            cur = self.conn.execute(
                "INSERT OR IGNORE INTO onhand (location_id, item_id, quantity, uom, updated_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (location, item, str(quantity), uom, now),
            )
            n += cur.rowcount
        return n

    def add_posting(self, posting: Posting) -> None:
        """A line sent to the ERP: pending until its issue settles (once per event)."""
        p = posting
        self.conn.execute(
            "INSERT INTO erp_postings (event_id, event_key, issue_key, destination, "
            "location_id, item_id, quantity, uom, status, message_id, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?) ON CONFLICT (event_id) DO NOTHING",
            (
                p.event_id,
                p.event_key,
                p.issue_key,
                p.destination,
                p.location_id,
                p.item_id,
                str(p.quantity),
                p.uom,
                p.message_id,
                p.created_at,
                p.created_at,
            ),
        )

    def settle_postings(self, issue_key: str, outcome: PostingOutcome) -> int:
        """The ERP's answer to the issue ``issue_key`` for each of its lines; how many."""
        o = outcome
        rows = self.conn.execute(
            "SELECT id, item_id, quantity FROM erp_postings WHERE issue_key = ?", (issue_key,)
        ).fetchall()
        for pid, item, quantity in rows:
            posted, value = posted_figures(o, item, Decimal(quantity))
            self.conn.execute(
                "UPDATE erp_postings SET status = ?, posted_quantity = ?, posted_value = ?, "
                "document = ?, reason = ?, updated_at = ? WHERE id = ?",
                (o.status, posted, value, o.document, o.reason, o.at, pid),
            )
        return len(rows)

    def unbilled(self, created_before: float) -> list[Unbilled]:
        """Chargeable usage before ``created_before`` without an accepted charge, and without
        an open UNBILLED_USAGE work item already."""
        rows = self.conn.execute(
            "SELECT e.business_key, e.message_id, e.correlation_id, e.encounter, e.item_id, "
            "COALESCE(c.status, 'none') FROM consumption_events e "
            "LEFT JOIN charges c ON c.event_id = e.id "
            "WHERE e.chargeable = 1 AND e.kind = 'usage' AND e.created_at < ? "
            "AND COALESCE(c.status, 'none') != 'accepted' "
            "AND NOT EXISTS (SELECT 1 FROM work_items w WHERE w.kind = 'UNBILLED_USAGE' "
            "AND w.subject = e.business_key AND w.status = 'open')",
            (created_before,),
        ).fetchall()
        return [Unbilled(*row) for row in rows]

    def prune(self, before: float, limit: int) -> int:
        """Delete up to ``limit`` records created before ``before``: events whose charge is
        settled (or that had none) with their stock moves and charge, requisitions and decided
        credits. Returns how many rows went."""
        conn = self.conn
        ids = [
            row[0]
            for row in conn.execute(
                "SELECT e.id FROM consumption_events e LEFT JOIN charges c ON c.event_id = e.id "
                "WHERE e.created_at < ? AND COALESCE(c.status, 'none') != 'pending' LIMIT ?",
                (before, limit),
            )
        ]
        deleted = 0
        if ids:
            marks = ", ".join("?" for _ in ids)
            for table in ("inventory_transactions", "charges", "erp_postings"):
                deleted += conn.execute(
                    f"DELETE FROM {table} WHERE event_id IN ({marks})", ids
                ).rowcount
            conn.execute(
                f"UPDATE requisitions SET event_id = NULL WHERE event_id IN ({marks})", ids
            )
            deleted += conn.execute(
                f"DELETE FROM consumption_events WHERE id IN ({marks})", ids
            ).rowcount
        room = max(0, limit - deleted)
        if room:
            deleted += conn.execute(
                "DELETE FROM requisitions WHERE id IN (SELECT id FROM requisitions "
                "WHERE created_at < ? LIMIT ?)",
                (before, room),
            ).rowcount
        room = max(0, limit - deleted)
        if room:
            deleted += conn.execute(
                "DELETE FROM held_credits WHERE id IN (SELECT id FROM held_credits "
                "WHERE status != 'held' AND updated_at < ? LIMIT ?)",
                (before, room),
            ).rowcount
        return deleted

    def onhand(self, location: str, item: str) -> Decimal | None:
        row = self.conn.execute(
            "SELECT quantity FROM onhand WHERE location_id = ? AND item_id = ?", (location, item)
        ).fetchone()
        return None if row is None else Decimal(row[0])

    def open_work_item(
        self,
        kind: str,
        subject: str,
        detail: str,
        message_id: str | None,
        correlation_id: str | None,
        now: float,
    ) -> None:
        self.tx.open_work_item(kind, subject, detail, message_id, correlation_id, now)
