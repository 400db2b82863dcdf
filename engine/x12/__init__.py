"""The ASC X12 standard (004010/005010) and nothing of a business: the tokenizer
(:mod:`.segments`, :mod:`.scan`), the document readers (:mod:`.documents`), validation with
pyx12 against Wharf's maps (:mod:`.validate`, :mod:`.results`, :mod:`.ta1`, the maps and their
generator), the 997/999/TA1 writer (:mod:`.ack`), the interchange writer (:mod:`.writer`) and
sample files (:mod:`.samplegen`).

Nothing here imports a business domain (procurement is :mod:`engine.domains.procurement`), the
runtime, the store, the configuration or the transforms.
"""
