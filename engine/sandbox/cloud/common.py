"""What the emulated cloud ERPs share: credentials, rate limits (token buckets answering 429),
the OAuth 2.0 token issuer, each ERP's stock and documents in its own keys, validation errors
and JSON answers."""

from __future__ import annotations

import base64
import hmac
import json
import re
import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qs, unquote_plus

from engine.sandbox.erp import Answer
from engine.sandbox.state import SandboxState, decimal_text

ORACLE, SAP, WORKDAY = "oracle", "sap", "workday"
SYSTEMS = (ORACLE, SAP, WORKDAY)
ORACLE_BASE = "/fscmRestApi/resources/11.13.18.05"
SAP_BASE = "/sap/opu/odata/sap"
MATERIAL_DOCUMENT = "API_MATERIAL_DOCUMENT_SRV"
PURCHASE_REQUISITION = "API_PURCHASEREQ_PROCESS_SRV"
WD = "urn:com.workday/bsvc"
SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"

_ORACLE_JSON = "application/vnd.oracle.adf.resourceitem+json"


@dataclass
class Credentials:
    """What each emulated ERP accepts (the demo's values; tests set their own)."""

    oracle_client_id: str = "wharf-oracle"
    oracle_client_secret: str = "oracle-demo-secret"
    sap_user: str = "WHARF_COMM"
    sap_password: str = "sap-demo-password"
    workday_user: str = "ISU_Wharf@genhosp"
    workday_password: str = "workday-demo-password"
    token_ttl: float = 3600.0
    oracle_business_units: tuple[str, ...] = ("GENHOSP BU",)
    sap_plants: tuple[str, ...] = ("1010",)
    workday_companies: tuple[str, ...] = ("GENHOSP",)


# ---------------------------------------------------------------------------- rate limits


@dataclass
class Bucket:
    rate: float
    burst: int
    tokens: float
    stamp: float


class Limits:
    """A token bucket per ERP (none: no limit). ``accepted[system]`` keeps the times of the
    calls let through (the last 10,000), ``throttled[system]`` counts the 429s."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.buckets: dict[str, Bucket] = {}
        self.accepted: dict[str, deque[float]] = {s: deque(maxlen=10_000) for s in SYSTEMS}
        self.throttled: dict[str, int] = dict.fromkeys(SYSTEMS, 0)

    def set(self, system: str, per_second: float | None, burst: int = 1) -> None:
        if per_second is None:
            self.buckets.pop(system, None)
        else:
            self.buckets[system] = Bucket(per_second, burst, float(burst), self.clock())

    def take(self, system: str) -> float | None:
        """None when the call may go (a token taken), else the seconds to wait."""
        now = self.clock()
        bucket = self.buckets.get(system)
        if bucket is not None:
            bucket.tokens = min(bucket.burst, bucket.tokens + (now - bucket.stamp) * bucket.rate)
            bucket.stamp = now
            if bucket.tokens < 1:
                self.throttled[system] += 1
                return (1 - bucket.tokens) / bucket.rate
            bucket.tokens -= 1
        self.accepted[system].append(now)
        return None

    def most_in_a_second(self, system: str) -> int:
        """The most calls let through in any one-second window."""
        times = list(self.accepted[system])
        best = start = 0
        for end, t in enumerate(times):
            while t - times[start] >= 1.0:
                start += 1
            best = max(best, end - start + 1)
        return best


# ---------------------------------------------------------------------------- OAuth 2.0


class TokenIssuer:
    """The client-credentials grant (RFC 6749 section 4.4) of the emulated Oracle identity
    domain: tokens are random, expire after ``ttl`` seconds, and can all be expired at once."""

    def __init__(self, credentials: Credentials, clock: Callable[[], float] = time.time) -> None:
        self.credentials = credentials
        self.clock = clock
        self.tokens: dict[str, float] = {}
        self.issued = 0
        self.refused = 0  # API calls refused for an invalid or expired token

    def issue(self, body: bytes, headers: dict[str, str]) -> Answer:
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        client_id, secret = form.get("client_id"), form.get("client_secret")
        auth = headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            try:
                pair = base64.b64decode(auth[6:].strip()).decode()
            except (ValueError, UnicodeDecodeError):
                pair = ""
            user, _, password = pair.partition(":")
            client_id, secret = unquote_plus(user), unquote_plus(password)
        if form.get("grant_type") != "client_credentials":
            return _oauth_error(400, "unsupported_grant_type")
        c = self.credentials
        if not (
            client_id == c.oracle_client_id
            and secret is not None
            and hmac.compare_digest(secret, c.oracle_client_secret)
        ):
            return _oauth_error(401, "invalid_client")
        token = secrets.token_urlsafe(24)
        self.tokens[token] = self.clock() + c.token_ttl
        self.issued += 1
        doc = {"access_token": token, "token_type": "Bearer", "expires_in": int(c.token_ttl)}
        return Answer(200, json.dumps(doc).encode(), {"cache-control": "no-store"})

    def check(self, headers: dict[str, str]) -> bool:
        auth = headers.get("authorization", "")
        if not auth.lower().startswith("bearer "):
            return False
        expires = self.tokens.get(auth[7:].strip())
        return expires is not None and self.clock() < expires

    def expire_all(self) -> int:
        n = len(self.tokens)
        self.tokens.clear()
        return n


def _oauth_error(status: int, code: str) -> Answer:
    return Answer(status, json.dumps({"error": code}).encode(), {"cache-control": "no-store"})


# ---------------------------------------------------------------------------- stock and documents


class Books:
    """Each emulated ERP's stock and documents, in its own keys, on the sandbox's state."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self.db = state.db

    def seed(self, system: str, rows: list[dict[str, Any]]) -> int:
        with self.state.transaction():
            for row in rows:
                self.db.execute(
                    "INSERT INTO erp_stock (system, location, item, on_hand, uom) VALUES "
                    "(?,?,?,?,?) ON CONFLICT(system, location, item) DO UPDATE SET "
                    "on_hand = excluded.on_hand, uom = excluded.uom",
                    (
                        system,
                        str(row["location"]),
                        str(row["item"]),
                        decimal_text(Decimal(str(row["on_hand"]))),
                        str(row["uom"]),
                    ),
                )
        return len(rows)

    def stock(self, system: str, location: str, item: str) -> tuple[Decimal, str] | None:
        row = self.db.execute(
            "SELECT on_hand, uom FROM erp_stock WHERE system = ? AND location = ? AND item = ?",
            (system, location, item),
        ).fetchone()
        return (Decimal(row["on_hand"]), row["uom"]) if row else None

    def knows_item(self, system: str, item: str) -> bool:
        return (
            self.db.execute(
                "SELECT 1 FROM erp_stock WHERE system = ? AND item = ? LIMIT 1", (system, item)
            ).fetchone()
            is not None
        )

    def knows_location(self, system: str, location: str) -> bool:
        return (
            self.db.execute(
                "SELECT 1 FROM erp_stock WHERE system = ? AND location = ? LIMIT 1",
                (system, location),
            ).fetchone()
            is not None
        )

    def move(self, system: str, location: str, item: str, delta: Decimal) -> Decimal:
        found = self.stock(system, location, item)
        assert found is not None
        after = found[0] + delta
        self.db.execute(
            "UPDATE erp_stock SET on_hand = ? WHERE system = ? AND location = ? AND item = ?",
            (decimal_text(after), system, location, item),
        )
        return after

    def add(
        self,
        system: str,
        kind: str,
        ref: str | None,
        status: str,
        doc: Any,
        id_field: str | None = None,
    ) -> str:
        """Store a document; its new id, also written into ``doc[id_field]`` when given
        (a number when it is all digits, as the ERPs answer)."""
        row = self.db.execute(
            "SELECT COUNT(*) + 1 FROM erp_documents WHERE system = ? AND kind = ?", (system, kind)
        ).fetchone()
        number = int(row[0])
        doc_id = {
            "staged_transaction": str(300_000_000_000 + number),
            "requisition": str(300_000_100_000 + number),
            "material_document": str(4_900_000_000 + number),
            "purchase_requisition": str(10_000_000 + number),
            "supplier_invoice": f"WID-{uuid.uuid5(uuid.NAMESPACE_OID, f'si{number}').hex}",
            "wd_requisition": f"WID-{uuid.uuid5(uuid.NAMESPACE_OID, f'rq{number}').hex}",
            "inventory_adjustment": f"WID-{uuid.uuid5(uuid.NAMESPACE_OID, f'ia{number}').hex}",
        }[kind]
        if id_field is not None:
            doc[id_field] = int(doc_id) if doc_id.isdigit() and system == ORACLE else doc_id
        self.db.execute(
            "INSERT INTO erp_documents (system, kind, id, ref, status, doc, created_at) "
            "VALUES (?,?,?,?,?,?,?)",
            (system, kind, doc_id, ref, status, json.dumps(doc, default=str), time.time()),
        )
        return doc_id

    def find(self, system: str, kind: str, ref: str) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT id, ref, status, doc FROM erp_documents WHERE system = ? AND kind = ? "
            "AND ref = ? ORDER BY seq",
            (system, kind, ref),
        ).fetchall()
        return [{**dict(r), "doc": json.loads(r["doc"])} for r in rows]

    def get(self, system: str, kind: str, doc_id: str) -> dict[str, Any] | None:
        row = self.db.execute(
            "SELECT id, ref, status, doc FROM erp_documents WHERE system = ? AND kind = ? "
            "AND id = ?",
            (system, kind, doc_id),
        ).fetchone()
        return None if row is None else {**dict(row), "doc": json.loads(row["doc"])}

    def set_status(self, system: str, kind: str, doc_id: str, status: str) -> None:
        self.db.execute(
            "UPDATE erp_documents SET status = ? WHERE system = ? AND kind = ? AND id = ?",
            (status, system, kind, doc_id),
        )

    def documents(self, system: str, kind: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT kind, id, ref, status, doc FROM erp_documents WHERE system = ?"
        args: list[Any] = [system]
        if kind:
            sql += " AND kind = ?"
            args.append(kind)
        rows = self.db.execute(sql + " ORDER BY seq", args).fetchall()
        return [{**dict(r), "doc": json.loads(r["doc"])} for r in rows]

    def inventory(self, system: str) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT location, item, on_hand, uom FROM erp_stock WHERE system = ? "
            "ORDER BY location, item",
            (system,),
        ).fetchall()
        return [dict(r) for r in rows]


# ---------------------------------------------------------------------------- helpers


class Invalid(Exception):
    """One validation problem: ``path`` (a JSON path or XPath), ``message``, ``code``."""

    def __init__(self, path: str, message: str, code: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.message = message
        self.code = code


def need_decimal(value: Any, path: str, *, positive: bool = False, nonzero: bool = True) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise Invalid(path, f"expected a number (got {type(value).__name__})")
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise Invalid(path, f"expected a number (got {value!r})") from None
    if not d.is_finite() or (nonzero and d == 0) or (positive and d <= 0):
        raise Invalid(path, f"expected a {'positive' if positive else 'non-zero'} number")
    return d


def need_text(doc: dict, key: str, path: str, *, required: bool = True) -> str:
    value = doc.get(key)
    if value is None or value == "":
        if required:
            raise Invalid(f"{path}{key}", f"{key} is required")
        return ""
    if not isinstance(value, str):
        raise Invalid(f"{path}{key}", f"expected a string (got {type(value).__name__})")
    return value


ODATA_DATE = re.compile(r"/Date\((-?\d+)\)/")


def need_odata_date(value: Any, path: str) -> None:
    if not isinstance(value, str) or not ODATA_DATE.fullmatch(value):
        raise Invalid(path, f"expected an OData date /Date(ms)/ (got {value!r})")


def dumps(doc: Any) -> bytes:
    return json.dumps(
        doc, default=lambda v: decimal_text(v) if isinstance(v, Decimal) else str(v)
    ).encode()


def ok_json(doc: Any) -> Answer:
    return Answer(200, dumps(doc), {"content-type": "application/json"})
