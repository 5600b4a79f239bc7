"""What the aggregator did and refused, per tenant: the one source of its numbers.

``<prefix>._sys.stats`` serves :meth:`Metrics.as_map` (the counters); :mod:`services.aggregator.prometheus`
exports the same object (counters, events by type and reason, latency histograms) to Prometheus. Nothing here
does I/O; recording is a dict update, cheap enough for the hot paths.

Counter names: ``events.<type>``, ``refused.<code>``, ``refused``, ``heartbeats``, ``expired``, ... (see where
:meth:`Metrics.inc` is called). Histograms: ``resolve`` (from a resolve's arrival in the callback to its reply,
queueing included) and ``kv_write`` (one compare-and-set write to the KV bucket). Times are float seconds.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

__all__ = ["LATENCY_BUCKETS", "Histogram", "Metrics"]

P = ParamSpec("P")
R = TypeVar("R")

#: upper bounds (seconds) of the latency buckets, Prometheus-style (``+Inf`` implied)
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Histogram:
    """Counts of observations per bucket (not cumulative), their sum and count."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """``[(le, observations <= le), ..., ("+Inf", count)]`` as Prometheus wants them."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


class Metrics:
    def __init__(self) -> None:
        self.counters: Counter[tuple[str, str]] = Counter()
        #: (tenant, type, reason) → change events published
        self.events: Counter[tuple[str, str, str]] = Counter()
        self.histograms: dict[str, Histogram] = {"resolve": Histogram(), "kv_write": Histogram()}

    def inc(self, name: str, tenant: str = "", n: int = 1) -> None:
        self.counters[(name, tenant)] += n

    def get(self, name: str, tenant: str | None = None) -> int:
        if tenant is not None:
            return self.counters[(name, tenant)]
        return sum(v for (n, _), v in self.counters.items() if n == name)

    def event(self, tenant: str, kind: str, reason: str) -> None:
        """A change event was published (counted as ``events.<kind>`` too)."""
        self.inc(f"events.{kind}", tenant)
        self.events[(tenant, kind, reason)] += 1

    def observe(self, name: str, seconds: float) -> None:
        hist = self.histograms.get(name)
        if hist is None:
            hist = self.histograms[name] = Histogram()
        hist.observe(seconds)

    def timed_from_now(self, name: str, func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        """``func`` wrapped to record, under ``name``, the time from NOW (the wrapping) to its end: wrap a
        handler when a message arrives, and its queueing counts too."""
        started = time.perf_counter()

        async def run(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return await func(*args, **kwargs)
            finally:
                self.observe(name, time.perf_counter() - started)

        return run

    def time_calls(self, obj: Any, names: tuple[str, ...], histogram: str) -> None:
        """Record the duration of every call of ``obj``'s async methods ``names`` under ``histogram`` (the KV
        store's writes: one place, however many call sites)."""
        for attr in names:
            method = getattr(obj, attr)

            def wrap(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
                async def timed(*args: Any, **kwargs: Any) -> Any:
                    started = time.perf_counter()
                    try:
                        return await method(*args, **kwargs)
                    finally:
                        self.observe(histogram, time.perf_counter() - started)

                return timed

            setattr(obj, attr, wrap(method))

    def as_map(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (name, tenant), value in self.counters.items():
            out.setdefault(name, {})[tenant or "_"] = value
        return out
