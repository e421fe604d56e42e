"""Reconnect delays."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: attempt ``n`` (from 0) waits a
    uniform random time below ``min(max, initial × factor^n)`` seconds, so
    clients dropped together by one network event do not come back together."""

    #: The cap of the first attempt, seconds.
    initial: float = 0.5
    #: The largest cap, seconds.
    max: float = 30.0
    #: Growth of the cap per failed attempt.
    factor: float = 2.0

    def delay(self, attempt: int, random: float) -> float:
        """The delay before attempt ``attempt`` for a uniform ``random`` in [0, 1)."""
        cap = min(self.max, self.initial * self.factor ** min(attempt, 64))
        return max(0.0, cap * min(max(random, 0.0), 1.0))
