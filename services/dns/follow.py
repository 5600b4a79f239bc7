"""Keeping the served views current: one :class:`Link` per NATS connection, following its tenants.

A tenant with credentials of its own gets a connection of its own (the NATS server enforces tenancy); the others
share one connection. Each tenant is followed with :func:`bus.watch` over the whole tenant: a list, then the change
feed, relisting after reconnects, gaps and every ``resync_interval`` seconds; an announce reaches the view as soon
as its change event arrives (well under 100 ms), and so does a bye or an expiry.

A probe every ``probe_interval`` seconds asks an aggregator a tiny question (a resolve that matches nothing, or the
stats of ``<prefix>._sys.stats`` when following every tenant): when none answers, or the connection is down, the
link's :class:`~services.dns.view.Health` turns stale and the last good view goes on being served; when they answer
again the views relist. With ``all_tenants`` the link also discovers tenants: those the stats reply names, and any
tenant whose change event appears on ``<prefix>.*.changes.*``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from nats.aio.msg import Msg
from pydantic import BaseModel, ConfigDict, Field

from bus.client import request, resolve
from bus.connection import Connection
from bus.errors import DiscoError, InvalidName
from bus.subjects import validate_tenant
from bus.watch import watch
from services.dns.view import Health, TenantView, ViewSet

__all__ = ["PROBE_SERVICE", "Link"]

log = logging.getLogger("disco.dns")

#: the service a probe resolves (with no status, so nothing matches): any answer proves an aggregator is there
PROBE_SERVICE = "disco-dns-probe"


class Link:
    """One connection and the tenants followed over it. ``await run()`` until cancelled."""

    def __init__(
        self,
        conn: Connection,
        views: ViewSet,
        tenants: list[str],
        *,
        discover: bool = False,
        probe_interval: float = 1.0,
        probe_timeout: float = 1.0,
        resync_interval: float = 300.0,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.conn = conn
        self.views = views
        self.discover = discover
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.resync_interval = resync_interval
        self.on_change = on_change
        what = "every tenant" if discover else "tenant " + ", ".join(tenants)
        self.health = Health(what)
        self.tenants: list[TenantView] = []
        for name in tenants:
            tv = TenantView(name, self.health)
            self.tenants.append(tv)
            views.add(tv)
        self._tg: TaskGroup | None = None
        self._found_send: MemoryObjectSendStream[str]
        self._found_recv: MemoryObjectReceiveStream[str]
        self._found_send, self._found_recv = anyio.create_memory_object_stream[str](1000)

    async def run(self) -> None:
        removers = [self.conn.on_disconnect(self._disconnected)]
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                for tv in self.tenants:
                    tg.start_soon(self._follow, tv)
                if self.discover:
                    sub = await self.conn.nc.subscribe(
                        self.conn.subjects.all_changes(), cb=self._on_change_event, pending_msgs_limit=100_000
                    )
                    tg.start_soon(self._adopt_found)
                    try:
                        await self._probe_loop()
                    finally:
                        with anyio.CancelScope(shield=True):
                            try:
                                await sub.unsubscribe()
                            except Exception:
                                pass
                else:
                    await self._probe_loop()
        finally:
            self._tg = None
            for remove in removers:
                remove()

    # -- following a tenant ---------------------------------------------------------------------------------------
    async def _follow(self, tv: TenantView) -> None:
        """Watch ``tv``'s tenant for ever: list, then apply every change; start over after a failure."""
        delay = 0.5
        while True:
            try:
                async with watch(self.conn, tenant=tv.name, resync_interval=self.resync_interval) as w:
                    tv.watch = w
                    tv.load(w.view)
                    self._changed()
                    delay = 0.5
                    log.info("tenant %s: following its view (%d services, %d instances)", tv.name, *tv.counts)
                    async for ev in w:
                        tv.apply(ev)
                        self._changed()
            except DiscoError as exc:
                log.warning("tenant %s: cannot follow its view (%s); retrying in %.1f s", tv.name, exc, delay)
            finally:
                tv.watch = None
            await anyio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, 30.0)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # -- freshness ----------------------------------------------------------------------------------------------
    async def _disconnected(self) -> None:
        self.health.disconnected()

    async def _probe_loop(self) -> None:
        while True:
            try:
                if self.discover:
                    await self._probe_stats()
                elif self.tenants:
                    await resolve(self.conn, PROBE_SERVICE, tenant=self.tenants[0].name, status=(),
                                  timeout=self.probe_timeout)
            except DiscoError as exc:
                self.health.probe_failed(str(exc))
            else:
                if self.health.probe_ok(self.conn.nc.is_connected):
                    for tv in self.tenants:
                        if tv.watch is not None:
                            tv.watch.request_relist()
            await anyio.sleep(self.probe_interval)

    async def _probe_stats(self) -> None:
        """Ask the aggregators' stats: it proves one answers, and names every tenant of the view."""
        subject = f"{self.conn.subjects.prefix}._sys.stats"
        reply = await request(self.conn, subject, b"", _StatsReply, timeout=self.probe_timeout)
        for name in reply.tenants:
            self._found(name)

    # -- discovering tenants -------------------------------------------------------------------------------------
    async def _on_change_event(self, msg: Msg) -> None:
        plen = self.conn.subjects.prefix.count(".") + 1
        tokens = msg.subject.split(".")
        if len(tokens) > plen and tokens[plen] not in self.views:
            self._found(tokens[plen])

    def _found(self, name: str) -> None:
        if name in self.views:
            return
        try:
            validate_tenant(name)
            self._found_send.send_nowait(name)
        except (InvalidName, anyio.WouldBlock):
            pass  # not a tenant name; or a burst of new tenants: the next probe finds the rest

    async def _adopt_found(self) -> None:
        async for name in self._found_recv:
            if name in self.views or self._tg is None:
                continue
            tv = TenantView(name, self.health)
            self.tenants.append(tv)
            self.views.add(tv)
            log.info("tenant %s found in the view: serving it", name)
            self._tg.start_soon(self._follow, tv)


class _StatsReply(BaseModel):
    """The part of the aggregators' stats reply a link reads: the tenants of the view (the rest is ignored)."""

    model_config = ConfigDict(extra="ignore")
    tenants: dict[str, Any] = Field(default_factory=dict)
