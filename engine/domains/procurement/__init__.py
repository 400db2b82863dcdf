"""Procurement: purchase orders out as X12 850s, vendors' 855/856/810 in, the three-way match
and the AP desk. ``book`` holds its rules over a ``repository`` (SQLite, or ``memory`` for the
unit tests); ``domain`` plugs it into the spine."""
