"""Signed webhooks: an HMAC-SHA256 over a timestamp, a nonce and the body, checked within a time
window, each nonce taken once (:class:`ReplayGuard`).

A signed request carries three headers::

    X-Wharf-Timestamp: 1768471200                 (Unix seconds, when it was signed)
    X-Wharf-Nonce: 6f1c0c2e9a0b4b5e8d2b...        (unique per request, 16 to 128 characters)
    X-Wharf-Signature: sha256=<hex HMAC-SHA256(secret, timestamp "." nonce "." body)>

The receiver refuses a request whose timestamp is outside ``tolerance`` of its clock, whose
signature does not match (compared in constant time), or whose nonce it has already taken
within the window: a captured request cannot be replayed, and one older than the window
cannot be either (its timestamp is stale). Nonces are kept in memory for the window; a restart
forgets them, the timestamp window still bounds a replay, and the source's own duplicate
detection answers a resent body without processing it again.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Callable, Mapping

__all__ = [
    "NONCE",
    "SIGNATURE",
    "TIMESTAMP",
    "ReplayGuard",
    "sign",
    "signed_headers",
    "verify",
]

SIGNATURE = "X-Wharf-Signature"
TIMESTAMP = "X-Wharf-Timestamp"
NONCE = "X-Wharf-Nonce"
_NONCE = re.compile(r"[A-Za-z0-9._~+/=-]{16,128}")


def sign(secret: str, timestamp: str, nonce: str, body: bytes) -> str:
    """``sha256=<hex>`` of the HMAC-SHA256 of ``timestamp.nonce.body`` under ``secret``."""
    message = timestamp.encode("ascii") + b"." + nonce.encode("ascii") + b"." + body
    return "sha256=" + hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def signed_headers(
    secret: str, body: bytes, now: float, nonce: str | None = None
) -> dict[str, str]:
    """The three headers that sign ``body`` at ``now``."""
    timestamp = str(int(now))
    nonce = nonce or os.urandom(16).hex()
    return {TIMESTAMP: timestamp, NONCE: nonce, SIGNATURE: sign(secret, timestamp, nonce, body)}


class ReplayGuard:
    """The nonces taken within the last ``window`` seconds (pruned as time goes on)."""

    def __init__(self, window: float, clock: Callable[[], float]) -> None:
        self.window = window
        self.clock = clock
        self._seen: dict[str, float] = {}  # nonce -> when it may be forgotten

    def take(self, nonce: str, timestamp: float) -> bool:
        """True the first time ``nonce`` is offered within its window, False for a replay."""
        now = self.clock()
        if len(self._seen) > 1024:
            self._seen = {n: t for n, t in self._seen.items() if t > now}
        until = self._seen.get(nonce)
        if until is not None and until > now:
            return False
        self._seen[nonce] = max(timestamp, now) + self.window
        return True

    def __len__(self) -> int:
        return len(self._seen)


def verify(
    headers: Mapping[str, str | None],
    body: bytes,
    secret: str,
    *,
    tolerance: float,
    guard: ReplayGuard,
) -> str | None:
    """None when the request is signed, fresh and not replayed; else why it is refused (text
    that names no secret and quotes nothing of the request)."""
    timestamp, nonce, signature = (headers.get(h) for h in (TIMESTAMP, NONCE, SIGNATURE))
    if not (timestamp and nonce and signature):
        return f"a signed request needs the {SIGNATURE}, {TIMESTAMP} and {NONCE} headers"
    if not timestamp.isdigit():
        return f"{TIMESTAMP} must be Unix seconds"
    if not _NONCE.fullmatch(nonce):
        return f"{NONCE} must be 16 to 128 URL-safe characters"
    skew = abs(guard.clock() - int(timestamp))
    if skew > tolerance:
        return f"{TIMESTAMP} is {skew:.0f}s away from now (the window is {tolerance:g}s)"
    if not hmac.compare_digest(signature.strip(), sign(secret, timestamp, nonce, body)):
        return f"{SIGNATURE} does not match the body"
    if not guard.take(nonce, int(timestamp)):
        return f"replayed: this {NONCE} was already used"
    return None
