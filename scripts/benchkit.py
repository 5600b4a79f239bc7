"""What the benchmarks share: percentiles, and a fixed number of requests in flight."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank below); NaN when there is none."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def in_flight(total: int, width: int, one: Callable[[int], Awaitable[None]]) -> float:
    """Run ``one(k)`` for every k in ``range(total)`` with ``width`` of them in flight; return the seconds taken.

    ``width`` workers each take the next k as soon as their previous call returns: the client's own cost per
    request is the call's, not that of a task per request waiting on a semaphore (20,000 of them were a fifth of
    the client's CPU, for every system measured alike)."""
    ks = iter(range(total))

    async def worker() -> None:
        for k in ks:
            await one(k)

    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(width):
            tg.start_soon(worker)
    return time.perf_counter() - t0
