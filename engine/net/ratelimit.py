"""A token bucket: requests per second with a burst, on an injected clock.

:class:`TokenBucket` holds up to ``burst`` tokens and gains ``rate`` a second; a call takes one.
The delivery worker asks it how many calls may start now (:meth:`TokenBucket.available`) and
when the next one may (:meth:`TokenBucket.wait`), so rows it cannot send yet stay pending in the
store instead of waiting in memory.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TokenBucket"]

_EPSILON = 1e-9


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` kept; starts full. ``clock`` has
    ``seconds()`` (the reactor or a ``task.Clock``)."""

    def __init__(self, rate: float, burst: int, clock: Any) -> None:
        if rate <= 0:
            raise ValueError(f"'rate' must be > 0 (got {rate!r})")
        if burst < 1:
            raise ValueError(f"'burst' must be >= 1 (got {burst!r})")
        self.rate = float(rate)
        self.burst = int(burst)
        self.clock = clock
        self.tokens = float(burst)
        self.stamp = clock.seconds()
        self.taken = 0  # tokens taken in all (tests count calls with it)

    def _refill(self) -> None:
        now = self.clock.seconds()
        if now > self.stamp:
            self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = max(self.stamp, now)

    def available(self) -> int:
        """Whole tokens there now."""
        self._refill()
        return int(self.tokens + _EPSILON)

    def take(self, n: int = 1) -> None:
        """Spend ``n`` tokens (callers check :meth:`available` first)."""
        self._refill()
        self.tokens -= n
        self.taken += n

    def give(self, n: int) -> None:
        """Return ``n`` tokens taken for calls that did not happen."""
        self.tokens = min(float(self.burst), self.tokens + n)
        self.taken -= n

    def wait(self) -> float:
        """Seconds until a whole token is there (0 when one is)."""
        self._refill()
        if self.tokens + _EPSILON >= 1:
            return 0.0
        return (1 - self.tokens) / self.rate
