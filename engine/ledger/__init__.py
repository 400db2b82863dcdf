"""The supply ledger: canonical records of the usage → charge → replenishment flow.

Transforms turn messages into :class:`~engine.ledger.records.ConsumptionEvent` s (plain data).
:func:`engine.ledger.book.book_events` records them in the store's own transaction — the same
commit that enqueues the ERP issue, the billing charge and, past a reorder point, the
requisition — so every effect happens exactly once per business key.
"""
