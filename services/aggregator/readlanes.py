"""The aggregator's read lanes: a NATS connection per known tenant for its reads, and the breaker per read path.

Why lanes exist, and how the breaker and the catch-all connection share the work with them, is told in
:mod:`services.aggregator.reads`; this module holds the lanes' life cycle (opened as a tenant appears in the view,
closed once it has been gone a while or when its breaker trips) and the breaker's arithmetic.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

import anyio
from nats.aio.subscription import Subscription

from bus.connection import Connection
from services.aggregator.metrics import Metrics
from services.aggregator.settings import AggregatorSettings
from services.aggregator.view import LiveView

__all__ = ["LANE_SETTLE", "PAUSE_MAX", "PAUSE_MIN", "TRIP_DROPS", "Breaker", "Lane", "Lanes", "close_now"]

log = logging.getLogger("disco.aggregator.reads")

#: a lane must have been subscribed this long before the catch-all leaves its tenant to it (interest propagation)
LANE_SETTLE = 1.0
#: a lane whose tenant left the view is closed after this long (no flapping on a restart)
_LANE_LINGER = 60.0
#: how often lanes are opened and closed
_LANE_EVERY = 0.25
#: the breaker's counting window, and its longest pause
_WINDOW = 1.0
PAUSE_MIN = 4.0
PAUSE_MAX = 30.0
#: dropped reads within one window that trip a path's breaker (its tenant's queue, ``read_queue``, is full by then)
TRIP_DROPS = 256

#: subscribes a connection to (resolve pattern, snapshot subject) in a queue group, with a backlog bound
SubscribeReads = Callable[[Connection, str, str, str, int], Awaitable[list[Subscription]]]


@dataclass(eq=False)
class Lane:
    """One tenant's read path: a connection of its own and its two subscriptions."""

    tenant: str
    conn: Connection
    subs: list[Subscription] = field(default_factory=list)
    #: monotonic time from which the catch-all leaves this tenant to the lane (None while not subscribed)
    serving_since: float | None = None
    #: last time the tenant was in the view
    wanted_at: float = 0.0
    #: times the server dropped this lane's connection (e.g. reset it as a slow consumer under a flood)
    resets: int = 0
    #: times the breaker paused this lane
    pauses: int = 0
    #: closed by the breaker (kept in the lanes so the catch-all leaves the tenant alone)
    closed: bool = False
    removers: list[Callable[[], None]] = field(default_factory=list)

    def serving(self, now: float) -> bool:
        return self.serving_since is not None and now - self.serving_since >= LANE_SETTLE


@dataclass
class Breaker:
    """Counts one path's dropped reads per window; trips past a threshold (see the module docstring)."""

    threshold: int
    window_start: float = 0.0
    excess: int = 0
    pause: float = 0.0
    #: monotonic time until which the path is closed
    until: float = 0.0

    def drop(self, now: float) -> bool:
        """Count one dropped read; True when the path must be paused now."""
        if now - self.window_start > _WINDOW:
            self.window_start, self.excess = now, 0
        self.excess += 1
        if self.excess < self.threshold or now < self.until:
            return False
        # a flood that comes back soon after a pause doubles the next pause; a calm spell resets it
        self.pause = min(PAUSE_MAX, self.pause * 2) if now - self.until < 2 * PAUSE_MAX and self.pause else PAUSE_MIN
        self.until = now + self.pause
        self.excess = 0
        return True

    def paused(self, now: float) -> bool:
        return now < self.until


async def close_now(conn: Connection) -> None:
    """Close without draining: a flooded connection's backlog is dropped, not served (Connection.close drains)."""
    try:
        await conn.nc.close()
    except Exception:
        pass


class Lanes:
    """The lanes of the tenants in the view, by tenant (up to ``read_lanes``; see :mod:`services.aggregator.reads`).

    A lane paused by its breaker stays in :attr:`by_tenant`, closed, until the pause is over: the catch-all goes on
    leaving its tenant alone meanwhile.
    """

    def __init__(
        self, conn: Connection, settings: AggregatorSettings, view: LiveView, metrics: Metrics, *,
        subscribe: SubscribeReads, listen: Callable[[str], str], backlog: Callable[[], int],
        on_shed: Callable[[str, int], Awaitable[None]], breakers: dict[str, Breaker],
    ) -> None:
        self.conn = conn
        self.settings = settings
        self.subjects = conn.subjects
        self.view = view
        self.metrics = metrics
        self._subscribe = subscribe
        self._listen = listen
        self._backlog = backlog
        self._on_shed = on_shed
        self.breakers = breakers
        self.by_tenant: dict[str, Lane] = {}

    async def loop(self) -> None:
        """Open a lane for every tenant in the view (up to ``read_lanes``); close lanes of tenants gone for
        ``_LANE_LINGER`` seconds. One lane at a time, so a failing server is not hammered."""
        while True:
            now = time.monotonic()
            for t in self.view.tenants():
                lane = self.by_tenant.get(t)
                if lane is not None and not lane.closed:
                    lane.wanted_at = now
                elif t in self.breakers and self.breakers[t].paused(now):
                    continue
                elif lane is not None or len(self.by_tenant) < self.settings.read_lanes:
                    try:
                        await self.open(t)
                    except Exception as exc:
                        log.warning("no read lane for tenant %s (%s): its reads stay on the shared connection",
                                    t, exc or type(exc).__name__)
                        break
            for lane in [ln for ln in self.by_tenant.values() if now - ln.wanted_at > _LANE_LINGER]:
                await self.close(lane)
            await anyio.sleep(_LANE_EVERY)

    async def open(self, tenant: str) -> None:
        conn = await self.conn.clone(name=f"disco-aggregator-reads-{tenant}")
        lane = Lane(tenant, conn, wanted_at=time.monotonic())
        try:
            lane.subs = await self._subscribe(
                conn, self._listen(f"{self.subjects.prefix}.{tenant}.resolve.*"),
                self._listen(self.subjects.snapshot(tenant)), f"{self.settings.queue_group}-{tenant}", self._backlog())
        except BaseException:
            with anyio.CancelScope(shield=True):
                await conn.close()
            raise

        async def down() -> None:
            lane.serving_since = None
            lane.resets += 1
            self.metrics.inc("read_lane_resets", tenant)

        async def up() -> None:
            lane.serving_since = time.monotonic()

        lane.removers = [conn.on_disconnect(down), conn.on_reconnect(up),
                         conn.on_slow_consumer(partial(self._on_shed, tenant))]
        lane.serving_since = time.monotonic()
        self.by_tenant[tenant] = lane
        log.debug("read lane open for tenant %s", tenant)

    async def close(self, lane: Lane, *, keep: bool = False, now: bool = False) -> None:
        """Close a lane (``now``: without draining its backlog); with ``keep`` it stays in :attr:`by_tenant` (not
        serving) so that the catch-all goes on leaving its tenant alone while it is paused."""
        if not keep:
            self.by_tenant.pop(lane.tenant, None)
        lane.closed = True
        lane.serving_since = None
        for remove in lane.removers:
            remove()
        with anyio.CancelScope(shield=True):
            await (close_now(lane.conn) if now else lane.conn.close())
