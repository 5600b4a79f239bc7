"""What the benchmarks share: percentiles, a fixed number of requests in flight, the two-hop trip."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from bus.connection import Connection


#: trips made and thrown away before an event latency is measured, for disco, the floor and etcd alike (as the
#: serial resolves are warmed): the first writes of a new service and subscription pay one-off costs
EVENT_WARMUP = 100


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


async def two_hops(conn: Connection, relay: str, n: int, warm: int = EVENT_WARMUP) -> list[float]:
    """``n`` serial trips, in ms, of a 160-byte message published on ``<relay>.in`` until it is back on
    ``<relay>.out`` (a relay process in between), after ``warm`` trips not counted: the floor an event's two hops
    are measured against."""
    arrived = anyio.Event()
    at = 0.0

    async def on_out(msg: Any) -> None:
        nonlocal at
        at = time.perf_counter()
        arrived.set()

    sub = await conn.nc.subscribe(f"{relay}.out", cb=on_out)
    await conn.nc.flush()
    lat = []
    for k in range(warm + n):
        arrived = anyio.Event()
        t0 = time.perf_counter()
        await conn.nc.publish(f"{relay}.in", b"x" * 160)
        with anyio.fail_after(10):
            await arrived.wait()
        if k >= warm:
            lat.append((at - t0) * 1000)
    await sub.unsubscribe()
    return lat
