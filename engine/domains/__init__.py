"""Business domains that plug into the spine (codecs, transforms, the store's commit).

Each package here holds one business: its records, its book (what is applied in the message's
own commit) and its rules. The store, the pipeline and the runtime never import them; a
channel's section (``procurement:``) or a transform names them.
"""
