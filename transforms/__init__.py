"""Shipped transform plugins. Importing this package registers them.

A transform is plain Python over a parsed message and mapping lookups: no Twisted, no I/O.
"""

from transforms import usage_to_issue, usage_to_ledger  # noqa: F401
