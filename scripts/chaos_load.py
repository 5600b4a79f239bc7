"""The load of a chaos run (scripts/chaos.py): acknowledged writes retried until acknowledged, heartbeats of every
live instance, churners, resolves, and per tenant a watcher and a resolver cache, all recorded in the ledger."""

from __future__ import annotations

import contextlib
import itertools
import random
import time
from collections.abc import Callable
from typing import Any

import anyio
from chaos_checks import CHURN, STABLE, Ledger

from bus.client import request, resolve
from bus.codec import decode, encode
from bus.connection import Connection, connect
from bus.errors import DiscoError
from bus.models import AnnounceAck, Bye, ChangeReason, Control, Heartbeat, Instance
from bus.resolver import Resolver, resolver
from bus.watch import Watch, watch


class Load:
    """Mixed into the run: writes through its ``load`` connections and records in its ``ledger``."""

    # attributes of the run the load uses
    args: Any
    urls: str
    prefix: str
    rng: random.Random
    seq: itertools.count[int]
    churning: bool
    load: dict[str, Connection]
    ledger: Ledger
    watches: dict[str, Watch]
    resolvers: dict[str, Resolver]
    view_conns: list[Connection]

    async def connect(self, tenant: str | None = None, name: str = "chaos") -> Connection:
        return await connect(self.urls, tenant=tenant, prefix=self.prefix, name=name)

    # -- the load ----------------------------------------------------------------------------------------------
    async def _write(self, tenant: str, subject: str, data: bytes, timeout: float = 2.0) -> AnnounceAck:
        """One acknowledged write, retried (same payload: idempotent) until it is acknowledged."""
        delay = 0.1
        while True:
            try:
                return await request(self.load[tenant], subject, data, AnnounceAck, timeout)
            except DiscoError:
                self.ledger.errors += 1
            await anyio.sleep(delay * self.rng.uniform(0.5, 1.5))
            delay = min(delay * 2, 1.0)

    async def announce(self, tenant: str, service: str, inst: Instance) -> AnnounceAck:
        key = (tenant, service, inst.id)
        self.ledger.live[key] = inst  # heartbeats start at once, as a real client's would
        self.ledger.peak = max(self.ledger.peak, len(self.ledger.live))
        ack = await self._write(tenant, self.load[tenant].subjects.announce(tenant, service), encode(inst))
        self.ledger.announces += 1
        self.ledger.changed(tenant, ack)
        return ack

    async def bye(self, tenant: str, service: str, iid: str) -> None:
        self.ledger.live.pop((tenant, service, iid), None)  # no more heartbeats: its expiry is not false
        ack = await self._write(tenant, self.load[tenant].subjects.bye(tenant, service), encode(Bye(id=iid)))
        self.ledger.byes += 1
        self.ledger.changed(tenant, ack)

    def instance(self, iid: str, seq: int = 1) -> Instance:
        return Instance(id=iid, address=f"10.{self.rng.randrange(256)}.0.1", port=1 + self.rng.randrange(65000),
                        ttl=self.args.ttl, seq=seq)

    async def heartbeats(self, tenant: str) -> None:
        conn = self.load[tenant]
        while True:
            for service in (STABLE, CHURN):
                ids = [i for (t, s, i) in list(self.ledger.live) if t == tenant and s == service]
                for k in range(0, len(ids), 1000):
                    with contextlib.suppress(Exception):
                        await conn.nc.publish(conn.subjects.hb(tenant, service),
                                              encode(Heartbeat(ids=tuple(ids[k:k + 1000]))))
            await anyio.sleep(1.0)

    async def on_ctl(self, tenant: str, msg: Any, tg: Any) -> None:
        parts = msg.subject.split(".")
        try:
            ctl = decode(msg.data, Control)
        except DiscoError:
            return
        key = (tenant, parts[-2], ctl.id)
        inst = self.ledger.live.get(key)
        if inst is not None:
            self.ledger.ctl += 1
            tg.start_soon(self._reannounce, tenant, parts[-2], inst)

    async def _reannounce(self, tenant: str, service: str, inst: Instance) -> None:
        ack = await self._write(tenant, self.load[tenant].subjects.announce(tenant, service), encode(inst))
        self.ledger.changed(tenant, ack)

    async def churner(self, tenant: str, n: int) -> None:
        while self.churning:
            iid = f"c{n}-{next(self.seq)}"
            await self.announce(tenant, CHURN, self.instance(iid))
            await anyio.sleep(self.rng.uniform(0.5, 3.0))
            await self.bye(tenant, CHURN, iid)
            await anyio.sleep(self.rng.uniform(0.0, 0.5))

    async def resolves(self, tenant: str, stable: int) -> None:
        led = self.ledger
        while True:
            try:
                reply = await resolve(self.load[tenant], STABLE, tenant=tenant, timeout=2.0)
            except DiscoError:
                led.resolve_failed += 1
                led.failing_since.setdefault(tenant, time.monotonic())
            else:
                led.resolves += 1
                since = led.failing_since.pop(tenant, None)
                if since is not None:
                    led.longest_failure = max(led.longest_failure, time.monotonic() - since)
                if len(reply.instances) < stable:
                    led.resolve_incomplete += 1
            await anyio.sleep(0.2)

    async def watching(self, tenant: str, ready: Callable[[], None]) -> None:
        conn = await self.connect(tenant, "chaos-watch")
        self.view_conns.append(conn)
        async with watch(conn, tenant=tenant, resync_interval=None) as w:
            self.watches[tenant] = w
            ready()
            async for ev in w:
                key = (tenant, ev.service, ev.instance.id)
                if ev.reason == ChangeReason.expired and key in self.ledger.live:
                    self.ledger.false_expiries.append((key, ev.revision))

    async def caching(self, tenant: str, ready: Callable[[], None]) -> None:
        conn = await self.connect(tenant, "chaos-resolver")
        self.view_conns.append(conn)
        async with resolver(conn, STABLE, tenant=tenant, resync_interval=None, start_timeout=30.0) as r:
            self.resolvers[tenant] = r
            ready()
            await anyio.sleep_forever()
