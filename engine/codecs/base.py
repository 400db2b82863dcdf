"""What every codec returns: a parsed message with the ids the store and the router need
(:class:`engine.model.Parsed`, a record of the kernel), and the content-hash dedup key."""

from __future__ import annotations

import hashlib

from engine.model import Parsed

__all__ = ["Parsed", "sha256_key"]


def sha256_key(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()
