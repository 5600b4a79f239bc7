"""The aggregator's read path: resolves and snapshots, answered from the in-memory view.

A flood costs only the flooder. Three layers keep one tenant's read flood away from another tenant's reads:

1. **A lane per known tenant.** Every tenant with instances in the view (up to ``read_lanes`` of them) gets its
   own NATS connection subscribed to ``<prefix>.<t>.resolve.*`` and ``<prefix>.<t>.snapshot`` (queue group
   ``<queue_group>-<t>``). The server buffers what it sends to each connection separately and resets only the
   connection that falls ``max_pending`` behind (a slow consumer): a flooder can lose its own lane, never the
   quiet tenant's. Other tenants (not in the view yet, or past the cap) are served by a catch-all connection
   subscribed to ``<prefix>.*.resolve.*``; it receives every tenant's reads and ignores those of a tenant whose
   lane has been up for ``LANE_SETTLE`` seconds (so that interest reached every server of a cluster first; until
   then both answer and the client takes the first reply).
2. **Shedding before a shared buffer fills.** Each subscription holds at most 2 × ``read_queue`` unread
   messages (nats-py drops the excess, counted as ``reads_shed``), and each tenant at most ``read_queue`` queued reads
   (the excess is dropped, counted as ``reads_dropped``): a flood's excess is dropped without a reply, because
   answering it would cost as much as serving it. Callbacks yield to the event loop every ``_YIELD_EVERY``
   messages, so a subscription with a backlog cannot hold the loop while another lane's socket waits.
3. **A breaker per path.** Shedding in the process still costs the parsing of every message, and a flood from
   two processes outruns one aggregator. A path (a lane, or the catch-all) that drops ``TRIP_DROPS`` reads
   within ``_WINDOW`` seconds is closed at once, without draining its backlog, for a pause (``PAUSE_MIN``
   seconds, doubling while the flood goes on, at most ``PAUSE_MAX``): the server then discards the flood (no
   interest) instead of queueing it for us. A paused lane costs only its tenant (the catch-all leaves the
   tenant alone meanwhile: its reads get no answer); a paused catch-all costs the tenants without a lane (nothing
   of theirs is in the view, so their answers are empty anyway) until it reopens. Counted as ``read_pauses``.
4. **A fair queue.** Reads never wait on I/O: they are served one at a time from memory, round-robin between
   tenants, so a tenant flooding resolves waits behind itself (``TenantScheduler.max_ahead``).

The lanes' life cycle and the breaker are in :mod:`services.aggregator.readlanes`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from bus.codec import decode, encode_map
from bus.connection import Connection
from bus.errors import DiscoError, InvalidName
from bus.models import VIEW_BEHIND, VIEW_HEADER, ResolveRequest, SnapshotRequest
from bus.subjects import ParsedSubject
from services.aggregator.metrics import Metrics
from services.aggregator.readlanes import TRIP_DROPS, Breaker, Lanes, close_now
from services.aggregator.scheduler import TenantScheduler
from services.aggregator.settings import AggregatorSettings
from services.aggregator.view import LiveView

__all__ = ["ReadPath"]

log = logging.getLogger("disco.aggregator.reads")

_EMPTY_RESOLVE = b""
#: callbacks yield to the event loop every this many messages
_YIELD_EVERY = 64
_CATCHALL = ""

Parse = Callable[[str], ParsedSubject]
Refuse = Callable[[Msg, str, DiscoError, str], Awaitable[None]]
Reply = Callable[[str, str, bytes, "Msg | None", "dict[str, str] | None"], Awaitable[None]]
Hint = Callable[[str], str]


class ReadPath:
    """Serves ``resolve`` and ``snapshot`` requests for every tenant from ``view``.

    The aggregator hands it its subject parser and its reply/refuse helpers (strict reply checks and refusal
    counting stay in one place).
    """

    def __init__(
        self, conn: Connection, settings: AggregatorSettings, view: LiveView, metrics: Metrics, *,
        parse: Parse, reply: Reply, refuse: Refuse, tenant_hint: Hint, behind: Callable[[], Awaitable[bool]],
    ) -> None:
        self.conn = conn
        self.settings = settings
        self.subjects = conn.subjects
        self.view = view
        self.metrics = metrics
        self._parse = parse
        self._reply = reply
        self._refuse = refuse
        self._tenant_hint = tenant_hint
        self._behind = behind
        # reads are served one at a time (they never wait on I/O), fairly between tenants
        self.queue = TenantScheduler(1, settings.read_queue)
        #: resolves and snapshots arrive on a connection of their own, so that a flood of heartbeats or announces
        #: (which queue in the first connection's socket) does not delay them
        self.read_conn: Connection | None = None
        #: per path (a tenant's lane, or "" for the catch-all): its breaker
        self.breakers: dict[str, Breaker] = {}
        self.lane_set = Lanes(conn, settings, view, metrics, subscribe=self._subscribe_reads, listen=self._on,
                              backlog=lambda: self._backlog, on_shed=self._on_shed, breakers=self.breakers)
        #: tenant -> its lane (see the module docstring)
        self.lanes = self.lane_set.by_tenant
        self._subs: list[Subscription] = []
        self._received = 0
        self._tg: anyio.abc.TaskGroup | None = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Subscribe, report started, serve until cancelled; unsubscribe and close the read connections."""
        try:
            if self.settings.separate_reads:
                self.read_conn = await self.conn.clone(name="disco-aggregator-reads")
            await self._subscribe()
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self.queue.run)
                if self.settings.separate_reads and self.settings.read_lanes > 0:
                    tg.start_soon(self.lane_set.loop)
                task_status.started()
                await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                for sub in self._subs:
                    try:
                        await sub.unsubscribe()
                    except Exception:
                        pass
                async with anyio.create_task_group() as closing:  # at once: each close may wait for a drain
                    for lane in list(self.lanes.values()):
                        closing.start_soon(self.lane_set.close, lane)
                    if self.read_conn is not None:
                        closing.start_soon(self.read_conn.close)

    async def _subscribe(self) -> None:
        rconn = self.read_conn if self.read_conn is not None else self.conn
        self._subs += await self._subscribe_reads(rconn, self._on(self.subjects.any("resolve")),
                                                  self._on(self.subjects.any("snapshot")),
                                                  self.settings.queue_group, self._backlog)
        if self.read_conn is not None:
            self.read_conn.on_slow_consumer(partial(self._on_shed, _CATCHALL))

    async def _subscribe_reads(
        self, conn: Connection, resolve: str, snapshot: str, queue: str, backlog: int
    ) -> list[Subscription]:
        nc = conn.nc
        size = 512 * 1024 * 1024
        subs = [
            await nc.subscribe(resolve, queue=queue, cb=self._on_resolve, pending_msgs_limit=backlog,
                               pending_bytes_limit=size),
            await nc.subscribe(snapshot, queue=queue, cb=self._on_snapshot, pending_msgs_limit=backlog,
                               pending_bytes_limit=size),
        ]
        await nc.flush()
        return subs

    def _on(self, pattern: str) -> str:
        """Where the reads of ``pattern`` arrive: the pattern itself, or its shard's mapped subject (shard.py)."""
        shard = self.settings.shard_spec
        return pattern if shard is None else shard.listen(pattern)

    @property
    def _backlog(self) -> int:
        """Unread messages a read subscription holds before nats-py drops the excess: small, so that a flood is
        shed (and trips the breaker) as it arrives, not after the socket's whole backlog was parsed and queued."""
        return 2 * self.settings.read_queue

    async def _on_shed(self, key: str, sid: int) -> None:
        """nats-py dropped a message of path ``key`` (its subscription's backlog is full): counted, and a drop."""
        self.metrics.inc("reads_shed", key or "_")
        self._dropped(key, time.monotonic())

    # -- breaker ------------------------------------------------------------------------------------------------
    def _breaker(self, key: str) -> Breaker:
        b = self.breakers.get(key)
        if b is None:
            b = self.breakers[key] = Breaker(TRIP_DROPS)
        return b

    def _dropped(self, key: str, now: float) -> None:
        """One read dropped on path ``key``: trip its breaker past the threshold."""
        b = self._breaker(key)
        if b.drop(now) and self._tg is not None:
            self.metrics.inc("read_pauses", key or "_")
            log.warning("read flood on %s: closed for %.0f s (the server discards it meanwhile)",
                        f"tenant {key}'s lane" if key else "the shared read connection", b.pause)
            self._tg.start_soon(self._pause, key, b)

    async def _pause(self, key: str, b: Breaker) -> None:
        if key == _CATCHALL:
            conn, self.read_conn, subs, self._subs = self.read_conn, None, self._subs, []
            with anyio.CancelScope(shield=True):
                if conn is None:
                    for sub in subs:
                        try:
                            await sub.unsubscribe()
                        except Exception:
                            pass
                else:
                    await close_now(conn)
            await anyio.sleep(max(0.0, b.until - time.monotonic()))  # b.until does not move while paused
            while True:
                try:
                    if self.settings.separate_reads:
                        self.read_conn = await self.conn.clone(name="disco-aggregator-reads")
                    await self._subscribe()
                    return
                except Exception as exc:
                    log.warning("shared read connection not reopened (%s); retrying", exc or type(exc).__name__)
                    await anyio.sleep(1.0)
        lane = self.lanes.get(key)
        if lane is not None:
            lane.pauses += 1
            await self.lane_set.close(lane, keep=True, now=True)
        # the lanes loop reopens it once the pause is over

    # -- serving ------------------------------------------------------------------------------------------------
    async def _queue_read(self, msg: Msg, serve: Callable[[Msg], Awaitable[None]]) -> None:
        """Put a read on its tenant's fair queue (round-robin between tenants, bounded per tenant), so that a
        tenant flooding resolves waits behind itself; ignore it on the catch-all when the tenant has a lane."""
        try:
            tenant = self._parse(msg.subject).tenant
        except InvalidName:
            tenant = ""
        now = time.monotonic()
        lane = self.lanes.get(tenant)
        own = lane is not None and msg._client is lane.conn.nc
        if own and not self.queue.pending(tenant):
            # on the tenant's own lane with nothing of its own queued: serve now (from memory, no I/O wait), one
            # event-loop turn sooner than through the queue, which only orders work that waits
            await serve(msg)
        elif own or lane is None or (not lane.closed and not lane.serving(now)):
            if not self.queue.submit(tenant, partial(serve, msg)):
                # dropped without a reply: under a flood, answering every excess request would cost as much as
                # serving it
                self.metrics.inc("reads_dropped", tenant)
                self._dropped(tenant if own else _CATCHALL, now)
        elif lane.closed:
            # a paused tenant still flooding, through the catch-all: that counts against the catch-all
            self.metrics.inc("reads_dropped", tenant)
            self._dropped(_CATCHALL, now)
        self._received += 1
        if self._received % _YIELD_EVERY == 0:
            await anyio.lowlevel.checkpoint()  # a backlog in one subscription must not hold the event loop

    async def _on_resolve(self, msg: Msg) -> None:
        await self._queue_read(msg, self.metrics.timed_from_now("resolve", self._serve_resolve))

    async def _on_snapshot(self, msg: Msg) -> None:
        await self._queue_read(msg, self._serve_snapshot)

    async def _serve_resolve(self, msg: Msg) -> None:
        try:
            p = self._parse(msg.subject)
            t, s = p.tenant, p.service or ""
            data = self.view.cached_reply(t, s, msg.data)
            if data is None:
                req = ResolveRequest() if msg.data == _EMPTY_RESOLVE else decode(
                    msg.data, ResolveRequest, self.settings.max_payload)
                data = self.view.resolve_reply(t, s, msg.data, req)
        except DiscoError as err:
            await self._refuse(msg, self._tenant_hint(msg.subject), err, "resolve")
            return
        if msg.reply:
            await self._reply(t, msg.reply, data, msg, None)

    async def _serve_snapshot(self, msg: Msg) -> None:
        try:
            p = self._parse(msg.subject)
            req = SnapshotRequest() if not msg.data else decode(msg.data, SnapshotRequest, self.settings.max_payload)
        except DiscoError as err:
            await self._refuse(msg, self._tenant_hint(msg.subject), err, "snapshot")
            return
        if msg.reply:  # a view that may miss writes says so (bus.watch lists again later)
            hdr = {VIEW_HEADER: VIEW_BEHIND} if await self._behind() else None
            await self._reply(p.tenant, msg.reply, encode_map(self.view.snapshot_map(p.tenant, req)), msg, hdr)
