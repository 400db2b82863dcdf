"""Procurement over X12: trading partners, the 850 out, control numbers, the inbound book
(855, 856, 810 and the acknowledgements), the three-way match and the invoice desk.

It uses the X12 standard in :mod:`engine.x12` (tokenizer, readers, validation, writer); the
standard never uses it.
"""
