"""Who is alive: the last heartbeat of every instance, kept in memory (heartbeats never write to the KV).

An instance is due for expiry once ``max(last_seen, floor) + ttl`` has passed. ``floor`` is raised to *now* when
this aggregator may have missed heartbeats (its start, a reconnect, a slow-consumer drop), which gives every
instance one ttl of grace instead of expiring it on missing evidence. Deadlines live in a heap that is only
re-pushed when a popped deadline turns out to have moved, so a sweep costs O(expired · log n), not O(n).
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

__all__ = ["Liveness"]


class Liveness(Generic[K]):
    def __init__(self) -> None:
        self._last: dict[K, float] = {}
        self._ttl: dict[K, float] = {}
        # (deadline, key): no tie-breaking counter (keys are strings or tuples of them, so they compare), which
        # saves an int and a slot per followed instance
        self._heap: list[tuple[float, K]] = []
        self._ttls: dict[float, float] = {}
        self.floor = 0.0

    def __len__(self) -> int:
        return len(self._last)

    def __contains__(self, key: object) -> bool:
        return key in self._last

    def track(self, key: K, ttl: float, now: float) -> None:
        """Start (or restart) following ``key``: alive as of ``now``."""
        new = key not in self._last
        self._last[key] = now
        old_ttl = self._ttl.get(key)
        self._ttl[key] = ttl
        if new or (old_ttl is not None and ttl < old_ttl):
            self._push(now + ttl, key)

    def touch(self, key: K, now: float) -> bool:
        """A heartbeat; False if ``key`` is not followed."""
        if key not in self._last:
            return False
        self._last[key] = now
        return True

    def forget(self, key: K) -> None:
        self._last.pop(key, None)
        self._ttl.pop(key, None)

    def grace(self, now: float) -> None:
        """Count every instance as alive at ``now`` (evidence of silence may be missing)."""
        self.floor = max(self.floor, now)

    def deadline(self, key: K) -> float | None:
        last = self._last.get(key)
        if last is None:
            return None
        return max(last, self.floor) + self._ttl[key]

    def late(self, key: K, now: float, fraction: float) -> bool:
        """True when ``key`` has been silent for ``fraction`` of its ttl or more (missed heartbeats)."""
        last = self._last.get(key)
        return last is not None and now >= max(last, self.floor) + fraction * self._ttl[key]

    def silent_for(self, key: K, now: float) -> float:
        last = self._last.get(key)
        return 0.0 if last is None else now - max(last, self.floor)

    def _push(self, when: float, key: K) -> None:
        heapq.heappush(self._heap, (when, key))

    def due(self, now: float) -> list[K]:
        """Keys whose deadline has passed (they stay followed until :meth:`forget`; re-checked next sweep)."""
        out: list[K] = []
        seen: set[K] = set()
        while self._heap and self._heap[0][0] <= now:
            _, key = heapq.heappop(self._heap)
            if key in seen:
                continue  # another heap entry of a key this call already handled
            seen.add(key)
            deadline = self.deadline(key)
            if deadline is None:
                continue  # forgotten
            if deadline <= now:
                out.append(key)
            else:
                self._push(deadline, key)
        for key in out:  # keep them in the heap so that a failed expiry is tried again
            self._push(now + 0.25, key)
        return out
