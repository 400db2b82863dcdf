"""Shipped transform plugins. Importing this package registers them.

A transform is plain Python over a parsed message and mapping lookups: no Twisted, no I/O.
"""

from transforms import (  # noqa: F401
    fhir_supply_request,
    fhir_supply_to_ledger,
    usage_to_issue,
    usage_to_ledger,
    x12,
)
