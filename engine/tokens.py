"""Bearer tokens kept as their SHA-256 only (``wharf token`` makes a token and its hash).

A token is 256 random bits, so a plain SHA-256 is enough to keep it safe at rest, and checking
one costs microseconds (a password hash such as bcrypt would cost tens of milliseconds per
request). Every configured hash is compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import Any


def token_sha256(token: str | bytes) -> str:
    raw = token.encode("utf-8") if isinstance(token, str) else token
    return hashlib.sha256(raw).hexdigest()


def bearer_holder(header: str | bytes | None, tokens: Sequence[Any]) -> Any:
    """The configured token (an object with ``sha256``) an ``Authorization: Bearer`` header
    carries, else None."""
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    if not header or header[:7].lower() != "bearer ":
        return None
    digest = token_sha256(header[7:].strip())
    found = None
    for tok in tokens:
        if hmac.compare_digest(digest, tok.sha256.lower()):
            found = tok
    return found
