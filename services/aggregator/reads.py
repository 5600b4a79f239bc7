"""The aggregator's read path: resolves and snapshots, answered from the in-memory view.

Reads never wait on I/O: they are put on a per-tenant fair queue (round-robin between tenants, bounded per
tenant) and served one at a time from memory, so a tenant flooding resolves waits behind itself.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial

import anyio
from anyio.abc import TaskStatus
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from bus.codec import decode, encode_map
from bus.connection import Connection
from bus.errors import DiscoError, InvalidName
from bus.models import ResolveRequest, SnapshotRequest
from bus.subjects import ParsedSubject
from services.aggregator.metrics import Metrics
from services.aggregator.scheduler import TenantScheduler
from services.aggregator.settings import AggregatorSettings
from services.aggregator.view import LiveView

__all__ = ["ReadPath"]

log = logging.getLogger("disco.aggregator.reads")

_EMPTY_RESOLVE = b""

Parse = Callable[[str], ParsedSubject]
Refuse = Callable[[Msg, str, DiscoError, str], Awaitable[None]]
Reply = Callable[[str, str, bytes, "Msg | None"], Awaitable[None]]
Hint = Callable[[str], str]


class ReadPath:
    """Serves ``resolve`` and ``snapshot`` requests for every tenant from ``view``.

    The aggregator hands it its subject parser and its reply/refuse helpers (strict reply checks and refusal
    counting stay in one place).
    """

    def __init__(
        self, conn: Connection, settings: AggregatorSettings, view: LiveView, metrics: Metrics, *,
        parse: Parse, reply: Reply, refuse: Refuse, tenant_hint: Hint,
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
        # reads are served one at a time (they never wait on I/O), fairly between tenants
        self.reads = TenantScheduler(1, settings.read_queue)
        #: resolves and snapshots arrive on a connection of their own, so that a flood of heartbeats or announces
        #: (which queue in the first connection's socket) does not delay them
        self.read_conn: Connection | None = None
        self._subs: list[Subscription] = []

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Subscribe, report started, serve until cancelled; unsubscribe and close the read connection."""
        try:
            if self.settings.separate_reads:
                self.read_conn = await self.conn.clone(name="disco-aggregator-reads")
            await self._subscribe()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.reads.run)
                task_status.started()
                await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                for sub in self._subs:
                    try:
                        await sub.unsubscribe()
                    except Exception:
                        pass
                if self.read_conn is not None:
                    await self.read_conn.close()

    async def _subscribe(self) -> None:
        q = self.settings.queue_group
        rnc = self.read_conn.nc if self.read_conn is not None else self.conn.nc
        size = 512 * 1024 * 1024
        reads = self.settings.read_backlog
        self._subs += [
            await rnc.subscribe(self.subjects.any("resolve"), queue=q, cb=self._on_resolve,
                                pending_msgs_limit=reads, pending_bytes_limit=size),
            await rnc.subscribe(self.subjects.any("snapshot"), queue=q, cb=self._on_snapshot,
                                pending_msgs_limit=reads, pending_bytes_limit=size),
        ]
        await rnc.flush()

    def _queue_read(self, msg: Msg, serve: Callable[[Msg], Awaitable[None]]) -> None:
        """Put a read on its tenant's fair queue (round-robin between tenants, bounded per tenant), so that a
        tenant flooding resolves waits behind itself."""
        try:
            tenant = self._parse(msg.subject).tenant
        except InvalidName:
            tenant = ""
        if not self.reads.submit(tenant, partial(serve, msg)):
            # dropped without a reply: under a flood, answering every excess request would cost as much as serving
            self.metrics.inc("reads_dropped", tenant)

    async def _on_resolve(self, msg: Msg) -> None:
        self._queue_read(msg, self._serve_resolve)

    async def _on_snapshot(self, msg: Msg) -> None:
        self._queue_read(msg, self._serve_snapshot)

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
            await self._reply(t, msg.reply, data, msg)

    async def _serve_snapshot(self, msg: Msg) -> None:
        try:
            p = self._parse(msg.subject)
            req = SnapshotRequest() if not msg.data else decode(msg.data, SnapshotRequest, self.settings.max_payload)
        except DiscoError as err:
            await self._refuse(msg, self._tenant_hint(msg.subject), err, "snapshot")
            return
        if msg.reply:
            await self._reply(p.tenant, msg.reply, encode_map(self.view.snapshot_map(p.tenant, req)), msg)
