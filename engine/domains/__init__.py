"""Business domains that plug into the spine: the supply ledger and procurement.

Each registers one :class:`engine.interfaces.Domain` (its channel section, its bookings inside
the message's commit, its hooks, jobs, migrations and files). The store, the pipeline and the
runtime never import a domain; a domain may use the spine below it and the X12 standard.
"""
