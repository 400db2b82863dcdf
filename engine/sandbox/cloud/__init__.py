"""The sandbox's emulation of three cloud ERP APIs, each with its own auth, validation, error
bodies and rate limit, on the sandbox's HTTP port:

* Oracle Fusion Cloud SCM REST (``/fscmRestApi/resources/11.13.18.05/``):
  ``inventoryStagedTransactions``, ``purchaseRequisitions`` (and its ``submitRequisition``
  action), finder queries ``?q=Attr='value'``, the all-or-nothing batch
  (``application/vnd.oracle.adf.batch+json``); OAuth 2.0 client credentials
  (``POST /oauth2/v1/token``, tokens that expire); errors as ``{"title", "status",
  "o:errorDetails": [...]}``.
* SAP S/4HANA OData V2 (``/sap/opu/odata/sap/API_MATERIAL_DOCUMENT_SRV``,
  ``/sap/opu/odata/sap/API_PURCHASEREQ_PROCESS_SRV``): deep inserts of
  ``A_MaterialDocumentHeader`` (goods issues, movement types 201/202/261/262, stock deficit
  ``M7/021``) and ``A_PurchaseRequisitionHeader``; basic auth, the CSRF token handshake
  (``x-csrf-token: Fetch``, bound to a session cookie), OASIS repeatable requests
  (``Repeatability-Request-ID``), ``$batch`` (multipart/mixed, one changeset per request, a
  failed changeset failing alone); errors as ``{"error": {"code", "message": {...}}}``.
* Workday SOAP 1.1 (``/ccx/service/{tenant}/{Resource_Management|Inventory}/v{NN}``):
  ``Submit_Supplier_Invoice``, ``Submit_Requisition``, ``Submit_Inventory_Adjustment``;
  WS-Security UsernameToken with a timestamp; ``Client.validationError`` faults with a
  ``Validation_Fault`` detail, ``Server.processingFault`` faults when injected.

Each ERP keeps stock and documents in its own keys (``erp_stock``, ``erp_documents``) so a test
can compare them with the ledger. Rate limits are token buckets per ERP answering 429 with
``Retry-After``. ``/_emulation/...`` configures and inspects all of it (seeding stock, limits,
expiring every token, injecting Workday server faults). These are emulations written for
Wharf's tests from the public documentation as docs/erp-profiles.md says, not the vendors'
software; request bodies are never logged.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.sandbox.api_error import ApiError
from engine.sandbox.cloud.common import (
    ORACLE,
    ORACLE_BASE,
    SAP,
    SAP_BASE,
    SYSTEMS,
    WORKDAY,
    Books,
    Credentials,
    Limits,
    TokenIssuer,
    ok_json,
)
from engine.sandbox.cloud.oracle import OracleApi
from engine.sandbox.cloud.sap import SapApi
from engine.sandbox.cloud.workday import WorkdayApi
from engine.sandbox.erp import Answer, parse_json
from engine.sandbox.state import SandboxState

# ---------------------------------------------------------------------------- the APIs


@dataclass
class Sessions:
    """SAP CSRF tokens by session cookie."""

    tokens: dict[str, str] = field(default_factory=dict)


class CloudApis(OracleApi, SapApi, WorkdayApi):
    """Routes and behaviour of the three emulations (``handle`` returns an :class:`Answer`)."""

    PREFIXES = ("/fscmRestApi/", "/sap/opu/odata/", "/ccx/service/", "/oauth2/", "/_emulation")

    def __init__(
        self,
        state: SandboxState,
        credentials: Credentials | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.credentials = credentials or Credentials()
        self.books = Books(state)
        self.limits = Limits()
        self.tokens = TokenIssuer(self.credentials, clock)
        self.sessions = Sessions()
        self.clock = clock
        self.server_faults = 0  # Workday Server.processingFault answers to give
        self.calls: dict[str, int] = dict.fromkeys(SYSTEMS, 0)
        self.latency: dict[str, float] = dict.fromkeys(SYSTEMS, 0.0)  # seconds per answer

    def latency_of(self, path: str) -> float:
        """How late an emulated API answers (a cloud round trip), 0 for the rest."""
        for system, prefix in ((ORACLE, ORACLE_BASE), (SAP, SAP_BASE), (WORKDAY, "/ccx/")):
            if path.startswith(prefix):
                return self.latency[system]
        return 0.0

    def handles(self, path: str) -> bool:
        return path.startswith(self.PREFIXES)

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], body: bytes, headers: dict
    ) -> Answer:
        try:
            if path.startswith("/_emulation"):
                return self._control(method, path, body)
            if path == "/oauth2/v1/token":
                if method != "POST":
                    raise ApiError(405, "POST only", {"allow": "POST"})
                return self.tokens.issue(body, headers)
            if path.startswith(ORACLE_BASE):
                return self._limited(
                    ORACLE, lambda: self._oracle(method, path, query, body, headers)
                )
            if path.startswith(SAP_BASE):
                return self._limited(SAP, lambda: self._sap(method, path, query, body, headers))
            if path.startswith("/ccx/service/"):
                return self._limited(WORKDAY, lambda: self._workday(method, path, body))
            raise ApiError(404, f"no such path: {path}")
        except ApiError as exc:
            return Answer(exc.status, json.dumps({"error": exc.message}).encode(), exc.headers)

    def _limited(self, system: str, call: Callable[[], Answer]) -> Answer:
        wait = self.limits.take(system)
        if wait is not None:
            seconds = max(1, math.ceil(wait))
            body = {
                ORACLE: {"title": "Too Many Requests", "status": "429"},
                SAP: {
                    "error": {
                        "code": "429",
                        "message": {"lang": "en", "value": "Rate limit exceeded"},
                    }
                },
                WORKDAY: {"error": "rate limit exceeded"},
            }[system]
            return Answer(429, json.dumps(body).encode(), {"retry-after": str(seconds)})
        self.calls[system] += 1
        with self.state.transaction():
            return call()

    # ------------------------------------------------------------------ control

    def _control(self, method: str, path: str, body: bytes) -> Answer:
        parts = path.strip("/").split("/")[1:]
        if method == "GET" and parts == []:
            return ok_json(self.summary())
        if method == "POST" and len(parts) == 2 and parts[1] == "stock" and parts[0] in SYSTEMS:
            rows = parse_json(body)
            if not isinstance(rows, list):
                raise ApiError(422, "body: expected a list of {location, item, on_hand, uom}")
            return ok_json({"seeded": self.books.seed(parts[0], rows)})
        if method == "GET" and len(parts) == 2 and parts[1] == "stock" and parts[0] in SYSTEMS:
            return ok_json({"stock": self.books.inventory(parts[0])})
        if method == "GET" and len(parts) == 2 and parts[1] == "documents" and parts[0] in SYSTEMS:
            return ok_json({"documents": self.books.documents(parts[0])})
        if method == "POST" and parts == ["limits"]:
            doc = parse_json(body)
            if not isinstance(doc, dict) or doc.get("system") not in SYSTEMS:
                raise ApiError(422, f"system: expected one of {', '.join(SYSTEMS)}")
            per_second = doc.get("per_second")
            self.limits.set(
                doc["system"], per_second and float(per_second), int(doc.get("burst", 1))
            )
            return ok_json(self.summary())
        if method == "POST" and parts == ["latency"]:
            doc = parse_json(body)
            if not isinstance(doc, dict) or doc.get("system") not in SYSTEMS:
                raise ApiError(422, f"system: expected one of {', '.join(SYSTEMS)}")
            self.latency[doc["system"]] = float(doc.get("seconds") or 0)
            return ok_json(self.summary())
        if method == "POST" and parts == ["oauth", "expire"]:
            return ok_json({"expired": self.tokens.expire_all()})
        if method == "POST" and parts == ["workday", "faults"]:
            doc = parse_json(body)
            self.server_faults = int(doc.get("server_faults", 0))
            return ok_json(self.summary())
        raise ApiError(404, f"no such path: {path}")

    def summary(self) -> dict[str, Any]:
        return {
            "calls": dict(self.calls),
            "throttled": dict(self.limits.throttled),
            "most_in_a_second": {s: self.limits.most_in_a_second(s) for s in SYSTEMS},
            "tokens_issued": self.tokens.issued,
            "token_refusals": self.tokens.refused,
            "server_faults_left": self.server_faults,
            "latency": dict(self.latency),
        }


__all__ = ["CloudApis", "Credentials", "Limits", "TokenIssuer"]
