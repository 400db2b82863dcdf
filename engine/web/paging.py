"""The paging keys of the console's keyset-paged lists (``after``, ``before``): checked before
they reach the store, so that a key out of the store's integer range or not a number is a 400
that says what was expected, never a 500 from the database's integer overflow."""

from __future__ import annotations

from engine.store.console import MAX_ROWID as MAX_ID


def id_key(name: str, text: str | None, what: str) -> int | None:
    """A row-id paging key (``None`` when not given); ValueError naming ``name``, ``what`` it
    pages by and the bounds, and showing what came."""
    if text is None or text == "":
        return None
    if not (text.isascii() and text.isdigit() and len(text) <= 19 and int(text) <= MAX_ID):
        raise ValueError(
            f"{name}: expected {what}, a whole number from 0 to {MAX_ID} (got {_shown(text)})"
        )
    return int(text)


def _shown(text: str) -> str:
    """What came, quoted, cut to 40 characters (a key is never PHI; a long one is noise)."""
    return repr(text if len(text) <= 40 else text[:40] + "...")
