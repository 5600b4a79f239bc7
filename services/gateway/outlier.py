"""Passive health: instances that fail repeatedly are ejected for a while (Envoy's outlier detection).

What is promised:

- An instance is **ejected** after ``consecutive`` failures in a row (connect failure, timeout, or a 5xx from
  the upstream, whichever the proxy reports); a success in between resets the count.
- It stays out for ``base_time * n`` seconds, ``n`` being how many times it was ejected (capped at
  ``max_time``), then **comes back on its own**: the next pick may choose it again, and one more failure in a
  row ejects it again (for longer). ``n`` decays by one for every ``base_time * 10`` seconds spent healthy.
- Nothing here does I/O or keeps a task: state is looked at when a pick asks (:meth:`ejected`).

Times are float seconds (monotonic clock).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["OutlierDetector"]


@dataclass(slots=True)
class _Health:
    failures: int = 0
    ejections: int = 0
    until: float = 0.0
    last_change: float = 0.0


class OutlierDetector:
    """Consecutive-failure ejection per instance id (ids are unique per tenant and service: key by all three)."""

    def __init__(
        self,
        consecutive: int = 3,
        base_time: float = 5.0,
        max_time: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if consecutive < 1 or base_time <= 0 or max_time < base_time:
            raise ValueError("outlier detection needs consecutive >= 1 and 0 < base_time <= max_time")
        self.consecutive = consecutive
        self.base_time = base_time
        self.max_time = max_time
        self.clock = clock
        self._health: dict[tuple[str, str, str], _Health] = {}
        #: ejections so far (for metrics)
        self.ejections_total = 0

    def ejected(self, key: tuple[str, str, str]) -> bool:
        """True while the instance is out."""
        h = self._health.get(key)
        return h is not None and h.until > self.clock()

    def success(self, key: tuple[str, str, str]) -> None:
        h = self._health.get(key)
        if h is None:
            return
        now = self.clock()
        h.failures = 0
        decay = int((now - max(h.last_change, h.until)) // (self.base_time * 10))
        if decay > 0:
            h.ejections = max(h.ejections - decay, 0)
            h.last_change = now
        if h.ejections == 0:
            del self._health[key]

    def failure(self, key: tuple[str, str, str]) -> bool:
        """Count one failure; True when it ejects the instance (now)."""
        now = self.clock()
        h = self._health.setdefault(key, _Health(last_change=now))
        if h.until > now:
            return False  # already out (a call picked before the ejection)
        h.failures += 1
        if h.failures < self.consecutive:
            return False
        h.failures = 0
        h.ejections += 1
        h.until = now + min(self.base_time * h.ejections, self.max_time)
        h.last_change = now
        self.ejections_total += 1
        return True

    def ejected_count(self) -> int:
        now = self.clock()
        return sum(1 for h in self._health.values() if h.until > now)

    def forget(self, key: tuple[str, str, str]) -> None:
        """The instance left the view: drop its state."""
        self._health.pop(key, None)
