"""The supply ledger: consumption events, stock, charges to billing, par-level requisitions.

``records`` holds what transforms hand over; ``rules`` books them over a ``repository``;
``domain`` plugs the ledger into the spine.
"""
