"""The supply ledger's tables, as its own schema history (``component_versions``, component
``ledger``).

The statements are those of the store's former migrations v4, v5 and v9, written so that a
database that already has the objects (every store past v4) is left as it is: the history is
then only recorded. Work items are the spine's (store migration v4), not the ledger's.
"""

from __future__ import annotations

import sqlite3

from engine.interfaces import Migration
from engine.sqldialect import ddl_all

_TABLES: list[str] = [
    """
    CREATE TABLE IF NOT EXISTS consumption_events (
        id INTEGER PRIMARY KEY,
        business_key TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        item_id TEXT NOT NULL,
        location_id TEXT NOT NULL,
        quantity TEXT NOT NULL,
        uom TEXT NOT NULL,
        chargeable INTEGER NOT NULL,
        encounter TEXT NOT NULL,
        service_time TEXT NOT NULL,
        reverses TEXT,
        lot TEXT,
        serial TEXT,
        detail TEXT NOT NULL,
        message_id TEXT NOT NULL,
        correlation_id TEXT NOT NULL,
        created_at REAL NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS idx_events_encounter ON consumption_events(encounter)",
    "CREATE INDEX IF NOT EXISTS idx_events_item_location "
    "ON consumption_events(item_id, location_id)",
    "CREATE INDEX IF NOT EXISTS idx_events_correlation ON consumption_events(correlation_id)",
    """
    CREATE TABLE IF NOT EXISTS inventory_transactions (
        id INTEGER PRIMARY KEY,
        event_id INTEGER NOT NULL REFERENCES consumption_events(id),
        location_id TEXT NOT NULL,
        item_id TEXT NOT NULL,
        delta TEXT NOT NULL,
        uom TEXT NOT NULL,
        message_id TEXT NOT NULL,
        correlation_id TEXT NOT NULL,
        created_at REAL NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS idx_inv_tx_item_location "
    "ON inventory_transactions(item_id, location_id)",
    """
    CREATE TABLE IF NOT EXISTS onhand (
        location_id TEXT NOT NULL,
        item_id TEXT NOT NULL,
        quantity TEXT NOT NULL,
        uom TEXT NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (location_id, item_id)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS charges (
        id INTEGER PRIMARY KEY,
        event_id INTEGER NOT NULL REFERENCES consumption_events(id),
        encounter TEXT NOT NULL,
        charge_code TEXT NOT NULL,
        quantity TEXT NOT NULL,
        uom TEXT NOT NULL,
        transaction_type TEXT NOT NULL,
        amount TEXT,
        currency TEXT,
        status TEXT NOT NULL,
        message_id TEXT NOT NULL,
        correlation_id TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS idx_charges_encounter ON charges(encounter)",
    "CREATE INDEX IF NOT EXISTS idx_charges_status ON charges(status, created_at)",
    """
    CREATE TABLE IF NOT EXISTS requisitions (
        id INTEGER PRIMARY KEY,
        location_id TEXT NOT NULL,
        item_id TEXT NOT NULL,
        quantity TEXT NOT NULL,
        uom TEXT NOT NULL,
        status TEXT NOT NULL,
        event_id INTEGER REFERENCES consumption_events(id),
        message_id TEXT NOT NULL,
        correlation_id TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS idx_requisitions_open "
    "ON requisitions(location_id, item_id, status)",
]


def _requested_requisitions(conn: sqlite3.Connection) -> None:
    """A requisition a sender asked for (FHIR SupplyRequest) is booked once per request id."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(requisitions)")}
    if "business_key" not in columns:
        conn.execute("ALTER TABLE requisitions ADD COLUMN business_key TEXT")
    conn.execute(
        "CREATE UNIQUE INDEX IF NOT EXISTS idx_requisitions_business_key "
        "ON requisitions(business_key) WHERE business_key IS NOT NULL"
    )


# Every accepted or rejected charge finds its row by event (a full scan before).
_CHARGE_EVENT_INDEX = ["CREATE INDEX IF NOT EXISTS idx_charges_event ON charges(event_id)"]

# Credits for lines the ledger never booked, held until a person releases or rejects them.
_HELD_CREDITS = [
    """
    CREATE TABLE IF NOT EXISTS held_credits (
        id INTEGER PRIMARY KEY,
        business_key TEXT NOT NULL UNIQUE,
        reverses TEXT NOT NULL,
        channel TEXT NOT NULL,
        detail TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('held', 'released', 'rejected')),
        message_id TEXT NOT NULL,
        correlation_id TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS idx_held_credits_status ON held_credits(status, created_at)",
]

# The open-requisitions metric counts open requisitions from an index of their status; the
# reconciliation objective judges events in the order they were booked.
MIGRATION_OBSERVABILITY_INDEXES: Migration = (
    5,
    "indexes of requisitions by status and events by booking time (metrics and objectives)",
    [
        "CREATE INDEX IF NOT EXISTS idx_requisitions_status ON requisitions(status)",
        "CREATE INDEX IF NOT EXISTS idx_events_created ON consumption_events(created_at)",
    ],
)

# What the ERP acknowledged of each stock issue or return line (inventory-to-finance
# reconciliation): a row per booked event sent to an issue destination, pending until its
# delivery settles, then posted (with the posted quantity, value and the ERP's document
# number), dead (dead-lettered) or rejected (the ERP refused it).
MIGRATION_ERP_POSTINGS: Migration = (
    6,
    "ERP postings of stock issues and returns (inventory-to-finance reconciliation)",
    [
        """
        CREATE TABLE IF NOT EXISTS erp_postings (
            id INTEGER PRIMARY KEY,
            event_id INTEGER NOT NULL,
            event_key TEXT NOT NULL,
            issue_key TEXT NOT NULL,
            destination TEXT NOT NULL,
            location_id TEXT NOT NULL,
            item_id TEXT NOT NULL,
            quantity TEXT NOT NULL,
            uom TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('pending', 'posted', 'dead', 'rejected')),
            posted_quantity TEXT,
            posted_value TEXT,
            document TEXT,
            reason TEXT,
            message_id TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )
        """,
        "CREATE INDEX IF NOT EXISTS idx_erp_postings_issue ON erp_postings(issue_key)",
        "CREATE UNIQUE INDEX IF NOT EXISTS idx_erp_postings_event ON erp_postings(event_id)",
    ],
)

# Utilization by physician and payer: the performing (FT1-20) and ordering (FT1-21)
# physician's id (never a name: names are PHI), the payer (IN1-3 insurance company id, else
# PV1-20 financial class; ``payer_kind`` says which) and the procedure of each usage event; the
# performing physician and procedure of events booked before are taken from their detail.
_PHYSICIAN_PAYER_COLUMNS = [
    "ALTER TABLE consumption_events ADD COLUMN performer TEXT",
    "ALTER TABLE consumption_events ADD COLUMN orderer TEXT",
    "ALTER TABLE consumption_events ADD COLUMN payer TEXT",
    "ALTER TABLE consumption_events ADD COLUMN payer_kind TEXT",
    "ALTER TABLE consumption_events ADD COLUMN procedure TEXT",
]


def _physician_payer(conn: sqlite3.Connection) -> None:
    """The columns where missing (a database may have them already), then the backfill."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(consumption_events)")}
    for statement in _PHYSICIAN_PAYER_COLUMNS:
        if statement.split()[-2] not in columns:
            conn.execute(statement)
    conn.execute(
        "UPDATE consumption_events SET performer = json_extract(detail, '$.performer'), "
        "procedure = json_extract(detail, '$.procedure')"
    )


MIGRATION_PHYSICIAN_PAYER: Migration = (
    7,
    "usage events: performing and ordering physician, payer, procedure",
    _physician_payer,
)

#: The channel whose message raised each requisition (the console's per-channel scopes);
#: those from before take it from their message where it is still stored, the others keep
#: NULL (in no scope: seen only by people who see every channel). One self-contained entry.
_REQUISITION_CHANNEL = [
    "ALTER TABLE requisitions ADD COLUMN channel TEXT",
    "UPDATE requisitions SET channel = (SELECT m.channel FROM messages AS m "
    "WHERE m.id = requisitions.message_id) WHERE message_id IS NOT NULL AND channel IS NULL",
    "CREATE INDEX IF NOT EXISTS idx_requisitions_channel "
    "ON requisitions(channel, status, created_at)",
]


def _requisition_channel(conn: sqlite3.Connection) -> None:
    """The ``channel`` column where missing (a store whose tables came before the history),
    back-filled from each requisition's message, and its index."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(requisitions)")}
    for statement in _REQUISITION_CHANNEL:
        if "ADD COLUMN" not in statement or "channel" not in have:
            conn.execute(statement)


MIGRATION_REQUISITION_CHANNEL: Migration = (
    8,
    "the channel that raised each requisition (console scopes)",
    _requisition_channel,
)

# Running totals of the ledger by UTC day of booking, kept by triggers in the writes' own
# transactions, so that the console's utilization and reconciliation over a month of a large
# hospital sum a few rows per day and group instead of every event (the reports read only
# these). ``usage_daily``: events, quantity and the charged amount (charges not rejected) by
# location, item, unit, kind, billable, procedure, physicians and payer (absent: '').
# ``issue_daily``: events and quantity by location, item, service month, unit, kind and ERP
# posting status ('none': never sent), with what the ERP posted (quantity, value, and the
# quantity posted without a value). Rows of events the ledger's retention prunes stay.
_USAGE_KEY = (
    "day, location_id, item_id, uom, kind, chargeable, procedure, performer, orderer, payer, "
    "payer_kind"
)
_ISSUE_KEY = "day, location_id, item_id, period, uom, kind, status"
_ROLLUP_TABLES = [
    f"""
    CREATE TABLE IF NOT EXISTS usage_daily (
        day INTEGER NOT NULL,
        location_id TEXT NOT NULL,
        item_id TEXT NOT NULL,
        uom TEXT NOT NULL,
        kind TEXT NOT NULL,
        chargeable INTEGER NOT NULL,
        procedure TEXT NOT NULL,
        performer TEXT NOT NULL,
        orderer TEXT NOT NULL,
        payer TEXT NOT NULL,
        payer_kind TEXT NOT NULL,
        events INTEGER NOT NULL,
        quantity NUMERIC NOT NULL,
        charged NUMERIC NOT NULL,
        PRIMARY KEY ({_USAGE_KEY})
    )
    """,
    f"""
    CREATE TABLE IF NOT EXISTS issue_daily (
        day INTEGER NOT NULL,
        location_id TEXT NOT NULL,
        item_id TEXT NOT NULL,
        period TEXT NOT NULL,
        uom TEXT NOT NULL,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        events INTEGER NOT NULL,
        quantity NUMERIC NOT NULL,
        posted NUMERIC NOT NULL,
        posted_value NUMERIC NOT NULL,
        unvalued NUMERIC NOT NULL,
        PRIMARY KEY ({_ISSUE_KEY})
    )
    """,
    # the messages behind a difference: an item's events at a location by booking time
    "CREATE INDEX IF NOT EXISTS idx_events_item_location_created "
    "ON consumption_events(item_id, location_id, created_at)",
]

#: The service month (``YYYY-MM``) of an event's HL7 (``YYYYMMDD``) or ISO 8601 date, of the
#: row ``{e}`` (``NEW``, an alias).
_PERIOD_OF = (
    "CASE WHEN substr({e}.service_time, 5, 1) = '-' THEN substr({e}.service_time, 1, 7) "
    "ELSE substr({e}.service_time, 1, 4) || '-' || substr({e}.service_time, 5, 2) END"
)
#: An event row ``{e}``'s key in ``usage_daily`` and in ``issue_daily`` (but its status),
#: after its day.
_USAGE_OF = (
    "{e}.location_id, {e}.item_id, {e}.uom, {e}.kind, {e}.chargeable, COALESCE({e}.procedure, "
    "''), COALESCE({e}.performer, ''), COALESCE({e}.orderer, ''), COALESCE({e}.payer, ''), "
    "COALESCE({e}.payer_kind, '')"
)
_ISSUE_OF = f"{{e}}.location_id, {{e}}.item_id, {_PERIOD_OF}, {{e}}.uom, {{e}}.kind"


def _usage_values(e: str, day: str) -> str:
    """The key of event row ``e`` in ``usage_daily`` (``day``: the dialect's day of it)."""
    return f"{day.format(e=e)}, {_USAGE_OF.format(e=e)}"


def _issue_values(e: str, day: str) -> str:
    """The key of event row ``e`` in ``issue_daily`` but its status."""
    return f"{day.format(e=e)}, {_ISSUE_OF.format(e=e)}"


def _rollup_sql(day: str) -> dict[str, str]:
    """The roll-ups' statements, the same in both dialects but ``day`` (the UTC day of a
    booking time ``{e}.created_at``); ``NEW``/``OLD`` are the trigger's rows."""
    usage_upsert = (
        f"INSERT INTO usage_daily ({_USAGE_KEY}, events, quantity, charged) "
        f"VALUES ({_usage_values('NEW', day)}, 1, CAST(NEW.quantity AS NUMERIC), 0) "
        f"ON CONFLICT ({_USAGE_KEY}) DO UPDATE SET events = usage_daily.events + 1, "
        "quantity = usage_daily.quantity + excluded.quantity"
    )

    def charged(sign: str, row: str) -> str:
        return (
            f"UPDATE usage_daily SET charged = charged {sign} CAST({row}.amount AS NUMERIC) "
            f"WHERE ({_USAGE_KEY}) = (SELECT {_usage_values('e', day)} "
            f"FROM consumption_events AS e WHERE e.id = {row}.event_id)"
        )

    def posting(sign: str, row: str, status: str) -> str:
        figures = (
            f"{sign}CAST(e.quantity AS NUMERIC), "
            f"{sign}CAST(COALESCE({row}.posted_quantity, '0') AS NUMERIC), "
            f"{sign}CAST(COALESCE({row}.posted_value, '0') AS NUMERIC), "
            f"CASE WHEN {row}.posted_value IS NULL "
            f"THEN {sign}CAST(COALESCE({row}.posted_quantity, '0') AS NUMERIC) ELSE 0 END"
        )
        return _issue_upsert(day, f"{status}, {sign}1, {figures}", f"e.id = {row}.event_id")

    return {
        "usage_event": usage_upsert,
        "issue_event": (
            f"INSERT INTO issue_daily ({_ISSUE_KEY}, events, quantity, posted, posted_value, "
            f"unvalued) VALUES ({_issue_values('NEW', day)}, 'none', 1, "
            "CAST(NEW.quantity AS NUMERIC), 0, 0, 0) "
            f"ON CONFLICT ({_ISSUE_KEY}) DO UPDATE SET events = issue_daily.events + 1, "
            "quantity = issue_daily.quantity + excluded.quantity"
        ),
        "charge_added": charged("+", "NEW"),
        "charge_taken": charged("-", "OLD"),
        "posting_none_out": _issue_upsert(
            day, "'none', -1, -CAST(e.quantity AS NUMERIC), 0, 0, 0", "e.id = NEW.event_id"
        ),
        "posting_in": posting("", "NEW", "NEW.status"),
        "posting_out": posting("-", "OLD", "OLD.status"),
    }


def _issue_upsert(day: str, values: str, where: str) -> str:
    """Add ``values`` (status, events, quantity, posted, posted value, unvalued) to the
    ``issue_daily`` row of the event ``where`` finds."""
    return (
        f"INSERT INTO issue_daily ({_ISSUE_KEY}, events, quantity, posted, posted_value, "
        f"unvalued) SELECT {_issue_values('e', day)}, {values} FROM consumption_events AS e "
        f"WHERE {where} ON CONFLICT ({_ISSUE_KEY}) DO UPDATE SET "
        "events = issue_daily.events + excluded.events, "
        "quantity = issue_daily.quantity + excluded.quantity, "
        "posted = issue_daily.posted + excluded.posted, "
        "posted_value = issue_daily.posted_value + excluded.posted_value, "
        "unvalued = issue_daily.unvalued + excluded.unvalued"
    )


def _rollup_backfill(day: str) -> list[str]:
    """The roll-ups of what the ledger holds already (a new table: empty before)."""
    charged = (
        "COALESCE(SUM((SELECT SUM(CAST(c.amount AS NUMERIC)) FROM charges AS c "
        "WHERE c.event_id = e.id AND c.status != 'rejected')), 0)"
    )
    return [
        f"INSERT INTO usage_daily ({_USAGE_KEY}, events, quantity, charged) "
        f"SELECT {_usage_values('e', day)}, COUNT(*), SUM(CAST(e.quantity AS NUMERIC)), "
        f"{charged} FROM consumption_events AS e GROUP BY {_usage_values('e', day)}",
        f"INSERT INTO issue_daily ({_ISSUE_KEY}, events, quantity, posted, posted_value, "
        f"unvalued) SELECT {_issue_values('e', day)}, COALESCE(p.status, 'none'), COUNT(*), "
        "SUM(CAST(e.quantity AS NUMERIC)), "
        "COALESCE(SUM(CAST(p.posted_quantity AS NUMERIC)), 0), "
        "COALESCE(SUM(CAST(p.posted_value AS NUMERIC)), 0), "
        "COALESCE(SUM(CASE WHEN p.posted_value IS NULL THEN CAST(p.posted_quantity AS NUMERIC) "
        "END), 0) FROM consumption_events AS e LEFT JOIN erp_postings AS p "
        f"ON p.event_id = e.id GROUP BY {_issue_values('e', day)}, COALESCE(p.status, 'none')",
    ]


_SQLITE_DAY = "CAST({e}.created_at / 86400 AS INTEGER)"
_PG_DAY = "CAST(floor({e}.created_at / 86400) AS BIGINT)"


def _sqlite_rollups(conn: sqlite3.Connection) -> None:
    """The roll-up tables with their triggers; filled from the ledger's rows when new."""
    new = (
        conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'usage_daily'"
        ).fetchone()
        is None
    )
    for statement in _ROLLUP_TABLES:
        conn.execute(statement)
    sql = _rollup_sql(_SQLITE_DAY)
    triggers = (
        ("ledger_usage_daily", "AFTER INSERT ON consumption_events", "", ("usage_event",)),
        ("ledger_issue_daily", "AFTER INSERT ON consumption_events", "", ("issue_event",)),
        (
            "ledger_charge_added",
            "AFTER INSERT ON charges",
            "WHEN NEW.status != 'rejected' AND NEW.amount IS NOT NULL",
            ("charge_added",),
        ),
        (
            "ledger_charge_changed",
            "AFTER UPDATE OF status, amount ON charges",
            "",
            ("charge_taken_if", "charge_added_if"),
        ),
        (
            "ledger_posting_added",
            "AFTER INSERT ON erp_postings",
            "",
            ("posting_none_out", "posting_in"),
        ),
        (
            "ledger_posting_changed",
            "AFTER UPDATE OF status, posted_quantity, posted_value ON erp_postings",
            "",
            ("posting_out", "posting_in"),
        ),
    )
    sql["charge_taken_if"] = sql["charge_taken"] + (
        " AND OLD.status != 'rejected' AND OLD.amount IS NOT NULL"
    )
    sql["charge_added_if"] = sql["charge_added"] + (
        " AND NEW.status != 'rejected' AND NEW.amount IS NOT NULL"
    )
    for name, when, condition, steps in triggers:
        body = "; ".join(sql[s] for s in steps)
        conn.execute(f"CREATE TRIGGER IF NOT EXISTS {name} {when} {condition} BEGIN {body}; END")
    if new:
        for statement in _rollup_backfill(_SQLITE_DAY):
            conn.execute(statement)


def _pg_rollups() -> list[str]:
    """The same on PostgreSQL: plpgsql trigger functions."""
    sql = _rollup_sql(_PG_DAY)

    def function(name: str, body: str) -> str:
        return (
            f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN {body} RETURN NULL; END $$"
        )

    return [
        *ddl_all(_ROLLUP_TABLES),
        function("ledger_event_rollups", f"{sql['usage_event']}; {sql['issue_event']};"),
        function(
            "ledger_charge_rollups",
            "IF TG_OP = 'UPDATE' AND OLD.status != 'rejected' AND OLD.amount IS NOT NULL THEN "
            f"{sql['charge_taken']}; END IF; "
            "IF NEW.status != 'rejected' AND NEW.amount IS NOT NULL THEN "
            f"{sql['charge_added']}; END IF;",
        ),
        function(
            "ledger_posting_rollups",
            f"IF TG_OP = 'INSERT' THEN {sql['posting_none_out']}; "
            f"ELSE {sql['posting_out']}; END IF; {sql['posting_in']};",
        ),
        "CREATE TRIGGER ledger_event_rollups AFTER INSERT ON consumption_events "
        "FOR EACH ROW EXECUTE FUNCTION ledger_event_rollups()",
        "CREATE TRIGGER ledger_charge_rollups AFTER INSERT OR UPDATE OF status, amount "
        "ON charges FOR EACH ROW EXECUTE FUNCTION ledger_charge_rollups()",
        "CREATE TRIGGER ledger_posting_rollups AFTER INSERT OR UPDATE OF status, "
        "posted_quantity, posted_value ON erp_postings FOR EACH ROW "
        "EXECUTE FUNCTION ledger_posting_rollups()",
        *_rollup_backfill(_PG_DAY),
    ]


MIGRATION_ROLLUPS: Migration = (
    9,
    "running totals by day of booking (utilization, inventory-to-finance reconciliation)",
    _sqlite_rollups,
)

#: The channel whose message booked each charge (the console's per-channel scopes of rejected
#: charges), written with every new charge; of those from before, only the charges still
#: pending or rejected (the few a person may still see on the revenue-cycle page, found by
#: their status index) take it from their message where it is still stored; the others keep
#: NULL (in no scope: seen only by people who see every channel). One self-contained entry.
_CHARGE_CHANNEL = [
    "ALTER TABLE charges ADD COLUMN channel TEXT",
    "UPDATE charges SET channel = (SELECT m.channel FROM messages AS m "
    "WHERE m.id = charges.message_id) WHERE status IN ('pending', 'rejected') "
    "AND channel IS NULL",
    "CREATE INDEX IF NOT EXISTS idx_charges_channel ON charges(channel, status, created_at)",
]


def _charge_channel(conn: sqlite3.Connection) -> None:
    """The ``channel`` column where missing, back-filled for pending and rejected charges from
    their messages, and its index."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(charges)")}
    for statement in _CHARGE_CHANNEL:
        if "ADD COLUMN" not in statement or "channel" not in have:
            conn.execute(statement)


MIGRATION_CHARGE_CHANNEL: Migration = (
    10,
    "the channel that booked each charge (console scopes)",
    _charge_channel,
)

SQLITE_MIGRATIONS: list[Migration] = [
    (1, "events, stock moves, on-hand, charges, requisitions", _TABLES),
    (2, "requisitions asked for by a sender: business key", _requested_requisitions),
    (3, "index of charges by event", _CHARGE_EVENT_INDEX),
    (4, "credits held for want of the line they reverse", _HELD_CREDITS),
    MIGRATION_OBSERVABILITY_INDEXES,
    MIGRATION_ERP_POSTINGS,
    MIGRATION_PHYSICIAN_PAYER,
    MIGRATION_REQUISITION_CHANNEL,
    MIGRATION_ROLLUPS,
    MIGRATION_CHARGE_CHANNEL,
]


# The same history on PostgreSQL (a new database: the statements as they are, no callables).
POSTGRESQL_MIGRATIONS: list[Migration] = [
    (1, SQLITE_MIGRATIONS[0][1], ddl_all(_TABLES)),
    (
        2,
        SQLITE_MIGRATIONS[1][1],
        [
            "ALTER TABLE requisitions ADD COLUMN IF NOT EXISTS business_key TEXT",
            "CREATE UNIQUE INDEX IF NOT EXISTS idx_requisitions_business_key "
            "ON requisitions(business_key) WHERE business_key IS NOT NULL",
        ],
    ),
    (3, SQLITE_MIGRATIONS[2][1], ddl_all(_CHARGE_EVENT_INDEX)),
    (4, SQLITE_MIGRATIONS[3][1], ddl_all(_HELD_CREDITS)),
    (5, SQLITE_MIGRATIONS[4][1], ddl_all(MIGRATION_OBSERVABILITY_INDEXES[2])),
    (6, MIGRATION_ERP_POSTINGS[1], ddl_all(MIGRATION_ERP_POSTINGS[2])),
    (
        7,
        MIGRATION_PHYSICIAN_PAYER[1],
        [
            *(
                c.replace("ADD COLUMN", "ADD COLUMN IF NOT EXISTS")
                for c in _PHYSICIAN_PAYER_COLUMNS
            ),
            "UPDATE consumption_events SET performer = detail::json ->> 'performer', "
            "procedure = detail::json ->> 'procedure'",
        ],
    ),
    (
        MIGRATION_REQUISITION_CHANNEL[0],
        MIGRATION_REQUISITION_CHANNEL[1],
        ddl_all(_REQUISITION_CHANNEL),
    ),
    (MIGRATION_ROLLUPS[0], MIGRATION_ROLLUPS[1], _pg_rollups()),
    (MIGRATION_CHARGE_CHANNEL[0], MIGRATION_CHARGE_CHANNEL[1], ddl_all(_CHARGE_CHANNEL)),
]


def migrations(dialect: str) -> list[Migration]:
    if dialect == "sqlite":
        return SQLITE_MIGRATIONS
    if dialect == "postgresql":
        return POSTGRESQL_MIGRATIONS
    raise ValueError(f"the ledger's schema exists for sqlite and postgresql (got {dialect!r})")
