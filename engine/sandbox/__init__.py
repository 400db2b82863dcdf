"""A stateful ERP and billing sandbox for the demo and the tests.

It stands in for the hospital's ERP (inventory issues, requisitions, goods receipts, AP
invoices over a JSON HTTP API that honours ``Idempotency-Key``) and its billing system (DFT^P03
charges over MLLP, FHIR ChargeItem over HTTP), keeping its state in its own SQLite file so a
demo run shows the whole usage → stock → charge → requisition flow and tests can count effects.

Run it with ``python -m engine.sandbox --http-port 8089 --mllp-port 2576 --state var/sandbox.db``.
"""

from engine.sandbox.service import SandboxService
from engine.sandbox.state import SandboxState

__all__ = ["SandboxService", "SandboxState"]
