"""Load balancing over a service's instances: pure, no I/O, picks in O(1) (O(log n) for ``weighted``).

Used by :mod:`bus.resolver`, which rebuilds a :class:`Balancer` only when its cache changes.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from enum import StrEnum

from bus.errors import NoInstances
from bus.models import Instance, ResolveRequest, Status

__all__ = ["Balancer", "Strategy"]


class Strategy(StrEnum):
    round_robin = "round_robin"
    random = "random"
    weighted = "weighted"
    least_outstanding = "least_outstanding"


# =============================================================================================================
# balancing (pure: no I/O, unit-tested on its own)
# =============================================================================================================
class _LeastLoaded:
    """Instance ids bucketed by in-flight count: the least loaded in O(1), ties taken in turn."""

    __slots__ = ("buckets", "level", "low")

    def __init__(self, ids: Iterable[str], outstanding: Mapping[str, int]) -> None:
        self.level: dict[str, int] = {}
        self.buckets: dict[int, OrderedDict[str, None]] = {}
        for iid in ids:
            n = max(outstanding.get(iid, 0), 0)
            self.level[iid] = n
            self.buckets.setdefault(n, OrderedDict())[iid] = None
        self.low = min(self.buckets) if self.buckets else 0

    def pick(self) -> str:
        bucket = self.buckets[self.low]
        iid = next(iter(bucket))
        bucket.move_to_end(iid)
        return iid

    def add(self, iid: str, delta: int) -> None:
        """Move ``iid`` by ``delta`` (+1 or -1) in-flight calls; unknown ids are ignored."""
        n = self.level.get(iid)
        if n is None:
            return
        m = max(n + delta, 0)
        if m == n:
            return
        bucket = self.buckets[n]
        del bucket[iid]
        if not bucket:
            del self.buckets[n]
        self.buckets.setdefault(m, OrderedDict())[iid] = None
        self.level[iid] = m
        if m < self.low or (n == self.low and n not in self.buckets):
            self.low = m


class Balancer:
    """Picks among a fixed set of instances; build a new one when the set changes.

    ``instances`` are filtered (``tags``, ``zone``, ``status``), narrowed to ``prefer_zone`` when that zone has
    a match, and sorted by id: that is :attr:`candidates`. ``outstanding`` (instance id → in-flight calls) seeds
    ``least_outstanding``; keep it current with :meth:`acquire` and :meth:`release`. :meth:`pick` raises
    :class:`NoInstances` when there is no candidate.
    """

    __slots__ = ("_cum", "_lo", "_n", "_next", "_rng", "_total", "by_id", "candidates", "matching", "pick",
                 "strategy")

    def __init__(
        self,
        instances: Iterable[Instance],
        strategy: Strategy | str = Strategy.round_robin,
        *,
        tags: Iterable[str] = (),
        zone: str | None = None,
        status: Iterable[Status | str] = (Status.passing, Status.warning),
        prefer_zone: str | None = None,
        rng: random.Random | None = None,
        outstanding: Mapping[str, int] | None = None,
        start: int | None = None,
    ) -> None:
        self.strategy = Strategy(strategy)
        filters = ResolveRequest(tags=tuple(tags), zone=zone, status=tuple(Status(s) for s in status))
        self.matching: tuple[Instance, ...] = tuple(
            sorted((i for i in instances if filters.matches(i)), key=lambda i: i.id)
        )
        local = tuple(i for i in self.matching if i.zone == prefer_zone) if prefer_zone is not None else ()
        #: what picks choose from: the matching instances of the preferred zone, else every matching instance
        self.candidates: tuple[Instance, ...] = local or self.matching
        self.by_id = {i.id: i for i in self.candidates}
        self._rng = rng or random.Random()
        self._n = len(self.candidates)
        self._next = (start if start is not None else self._rng.randrange(self._n)) % self._n if self._n else 0
        self._cum: list[int] = list(itertools.accumulate(i.weight for i in self.candidates))
        self._total = self._cum[-1] if self._cum else 0
        self._lo = _LeastLoaded(self.by_id, outstanding or {})
        self.pick: Callable[[], Instance]
        if not self._n:
            self.pick = self._pick_none
        elif self.strategy is Strategy.round_robin:
            self.pick = self._pick_round_robin
        elif self.strategy is Strategy.random:
            self.pick = self._pick_random
        elif self.strategy is Strategy.weighted:
            self.pick = self._pick_weighted
        else:
            self.pick = self._pick_least_outstanding

    @property
    def position(self) -> int:
        """Where round-robin goes next (carried over to the next Balancer so a change does not restart it)."""
        return self._next

    def _pick_none(self) -> Instance:
        raise NoInstances("no instance matches the filters")

    def _pick_round_robin(self) -> Instance:
        i = self._next
        self._next = i + 1 if i + 1 < self._n else 0
        return self.candidates[i]

    def _pick_random(self) -> Instance:
        return self.candidates[int(self._rng.random() * self._n)]

    def _pick_weighted(self) -> Instance:
        return self.candidates[bisect.bisect_right(self._cum, self._rng.random() * self._total)]

    def _pick_least_outstanding(self) -> Instance:
        return self.by_id[self._lo.pick()]

    def acquire(self, instance_id: str) -> None:
        """One more call in flight on ``instance_id``."""
        self._lo.add(instance_id, 1)

    def release(self, instance_id: str) -> None:
        self._lo.add(instance_id, -1)
