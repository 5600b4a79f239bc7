"""The ``disco dns`` daemon: connections, views, the zone, and its UDP, TCP and metrics listeners in one task group.

::

    settings = DnsSettings(tenants=(TenantSource(name="acme"),), listen="127.0.0.1:8600")
    async with anyio.create_task_group() as tg:
        server = await tg.start(DnsServer(settings).run)     # listening; views fill as their lists come in
        ...
        tg.cancel_scope.cancel()                             # stops everything, closes every connection

Tenants with credentials of their own are followed over their own connection; the others (or every tenant, with
``all_tenants``) over one shared connection. Connecting fails fast (:class:`bus.ConnectionFailed`), before
anything listens; after that the server answers whatever happens to NATS, from the last good view.
"""

from __future__ import annotations

import logging
import random
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
from anyio.abc import TaskStatus

from bus.connection import Connection, connect
from services.dns.follow import Link
from services.dns.metrics import Stats, registry_for, serve_metrics
from services.dns.protocol import Responder
from services.dns.settings import DnsSettings, Endpoint
from services.dns.transport import TcpServer, UdpServer, bind
from services.dns.view import ViewSet
from services.dns.zone import Zone

__all__ = ["DnsServer"]

log = logging.getLogger("disco.dns")


class DnsServer:
    """One ``disco dns`` listener. ``await tg.start(server.run)`` returns once it answers (see the module
    docstring); :attr:`port` and :attr:`metrics_port` are the bound ports (useful with port 0)."""

    def __init__(self, settings: DnsSettings, *, seed: int | None = None) -> None:
        self.settings = settings
        self.views = ViewSet()
        self.stats = Stats()
        self.zone = Zone(settings.zone, self.views, ttl=settings.ttl, negative_ttl=settings.negative_ttl,
                         ns_address=settings.listen.host, rng=random.Random(seed))
        self.responder = Responder(self.zone, self.stats, max_udp_size=settings.max_udp_size,
                                   shuffles=settings.shuffles)
        self.links: list[Link] = []
        self.port = 0
        self.metrics_port = 0
        #: set after every change applied to a view (tests and tools wait on it instead of sleeping)
        self.changed = anyio.Event()

    @property
    def listed(self) -> bool:
        """True once every tenant known so far has its first list in (before that it answers SERVFAIL)."""
        return all(tv.ready for tv in self.views)

    def _on_change(self) -> None:
        self.responder.invalidate()
        self.changed.set()
        self.changed = anyio.Event()

    async def _connect(self, stack: AsyncExitStack, tenant: str | None, creds: Path | None) -> Connection:
        s = self.settings
        conn = await connect(s.nats_url, tenant=tenant, creds=creds, prefix=s.prefix,
                             name=f"disco-dns-{tenant}" if tenant else "disco-dns")
        stack.push_async_callback(conn.close)
        return conn

    def _link(self, conn: Connection, tenants: list[str], discover: bool = False) -> Link:
        s = self.settings
        link = Link(conn, self.views, tenants, discover=discover, probe_interval=s.probe_interval,
                    probe_timeout=s.probe_timeout, resync_interval=s.resync_interval, on_change=self._on_change)
        self.links.append(link)
        return link

    async def run(self, *, task_status: TaskStatus[DnsServer] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled."""
        s = self.settings
        async with AsyncExitStack() as stack:
            shared = [t.name for t in s.tenants if t.creds is None]
            if s.all_tenants or shared:
                conn = await self._connect(stack, None, s.creds)
                self._link(conn, shared, discover=s.all_tenants)
            for t in s.tenants:
                if t.creds is not None:
                    self._link(await self._connect(stack, t.name, t.creds), [t.name])
            udp_sock, tcp_listener, self.port = await bind(s.listen)
            stack.push_async_callback(udp_sock.aclose)  # closed even if the serving tasks never start
            stack.push_async_callback(tcp_listener.aclose)
            async with anyio.create_task_group() as tg:
                tg.start_soon(UdpServer(self.responder, udp_sock).run)
                tg.start_soon(TcpServer(self.responder, tcp_listener, max_connections=s.tcp_connections,
                                        idle=s.tcp_idle, max_queries=s.tcp_queries).run)
                if s.metrics is not None:
                    self.metrics_port = await tg.start(serve_metrics, s.metrics, registry_for(self.stats, self.views))
                for link in self.links:
                    tg.start_soon(link.run)
                log.info("serving zone %s for %s on udp+tcp %s%s", s.zone,
                         "every tenant" if s.all_tenants else ", ".join(t.name for t in s.tenants),
                         Endpoint(host=s.listen.host, port=self.port),
                         f" (metrics on port {self.metrics_port})" if s.metrics is not None else "")
                task_status.started(self)
