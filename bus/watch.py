"""List-then-watch: an async iterator of a tenant's change events that never silently misses one.

The watcher subscribes to the live subject first (each stored write, republished by the server: :mod:`bus.live`),
then takes a snapshot (revision R), drops events at or below
R, and applies the rest, each instance keeping the revision of its last change so that an event older than what
the watcher holds is dropped (several aggregators publish, so events of different instances may interleave); a
later snapshot older than changes the watcher already applied does not undo them.
After a reconnect, a slow-consumer drop, an overflow of its own buffer, or every ``resync_interval`` seconds it
lists again and yields the difference as events with reason ``resync`` (the first list, with ``include_initial``,
as ``added`` events with reason ``initial``). :attr:`Watch.view` is always the current state. After a reconnect it
logs one line ``watch of T resynced at revision N``.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from nats.aio.msg import Msg

from bus._util import sole_exception
from bus.client import snapshot
from bus.connection import Connection
from bus.errors import NoAggregator, Timeout
from bus.live import change_of
from bus.models import ChangeEvent, ChangeReason, ChangeType, Instance, Snapshot
from bus.subjects import validate_service

__all__ = ["Watch", "running", "watch"]

log = logging.getLogger("disco.watch")

_RELIST = object()
_MAX_TOMBSTONES = 100_000


@dataclass(slots=True)
class _Held:
    instance: Instance
    revision: int


class Watch:
    """The state of a watched tenant (or one service) and the stream of its changes."""

    def __init__(
        self,
        conn: Connection,
        tenant: str,
        service: str | None,
        *,
        include_initial: bool,
        resync_interval: float | None,
        buffer: int,
    ) -> None:
        self.conn = conn
        self.tenant = tenant
        self.service = service
        self.include_initial = include_initial
        self.resync_interval = resync_interval
        self.buffer = buffer
        #: revision of the last snapshot taken
        self.revision = 0
        #: number of lists taken (1 after the first)
        self.lists = 0
        #: lists whose aggregator said its view may miss writes: each is followed by another list, backing off
        self.incomplete_lists = 0
        self._incomplete_streak = 0
        self._recheck = anyio.Event()
        self._held: dict[tuple[str, str], _Held] = {}
        self._tombstones: dict[tuple[str, str], int] = {}
        self._inbox_send: MemoryObjectSendStream[Any]
        self._inbox_recv: MemoryObjectReceiveStream[Any]
        self._inbox_send, self._inbox_recv = anyio.create_memory_object_stream[Any](buffer)
        self._out_send: MemoryObjectSendStream[ChangeEvent]
        self._out_recv: MemoryObjectReceiveStream[ChangeEvent]
        self._out_send, self._out_recv = anyio.create_memory_object_stream[ChangeEvent](buffer)
        self._relist_pending = False
        #: set by a reconnect: the next successful list says "resynced" (one line per outage)
        self._after_reconnect = False
        self.ready = anyio.Event()

    # -- public state -----------------------------------------------------------------------------------------
    @property
    def view(self) -> dict[str, dict[str, Instance]]:
        """``{service: {instance_id: Instance}}`` as the watcher holds it now."""
        out: dict[str, dict[str, Instance]] = {}
        for (svc, iid), held in self._held.items():
            out.setdefault(svc, {})[iid] = held.instance
        return out

    def instances(self, service: str) -> list[Instance]:
        return [h.instance for (svc, _), h in self._held.items() if svc == service]

    def __aiter__(self) -> AsyncIterator[ChangeEvent]:
        return self._out_recv.__aiter__()

    async def next(self) -> ChangeEvent:
        return await self._out_recv.receive()

    # -- plumbing ---------------------------------------------------------------------------------------------
    def request_relist(self) -> None:
        if not self._relist_pending:
            self._relist_pending = True
            try:
                self._inbox_send.send_nowait(_RELIST)
            except anyio.WouldBlock:
                pass  # the loop relists when it sees the flag

    async def _on_msg(self, msg: Msg) -> None:
        try:
            self._inbox_send.send_nowait(msg)
        except anyio.WouldBlock:
            log.warning("watch buffer of tenant %s is full: relisting", self.tenant)
            self._relist_pending = True
        except anyio.ClosedResourceError:
            pass

    async def _list(self) -> Snapshot:
        delay = 0.05
        while True:
            try:
                services = (self.service,) if self.service else ()
                return await snapshot(self.conn, tenant=self.tenant, services=services)
            except (NoAggregator, Timeout) as exc:
                log.info("watch of %s cannot list yet (%s); retrying", self.tenant, exc)
            await anyio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 2.0)

    async def _emit(self, ev: ChangeEvent) -> None:
        await self._out_send.send(ev)

    async def _relist(self) -> None:
        self._relist_pending = False
        snap = await self._list()
        first = self.lists == 0
        self.lists += 1
        new: dict[tuple[str, str], _Held] = {}
        for svc, insts in snap.services.items():
            for inst in insts:
                new[(svc, inst.id)] = _Held(inst, snap.revision)
        old = self._held
        # a change this watcher applied after the list's revision stays applied: the list may come from an
        # aggregator whose view lags (its KV watch being re-created while a cluster node restarts), older than
        # events that reached the watcher first
        for key, held in old.items():
            if held.revision > snap.revision:
                new[key] = held
        self._tombstones = {k: r for k, r in self._tombstones.items() if r > snap.revision}
        for key in self._tombstones:
            new.pop(key, None)
        self._held = new
        self.revision = snap.revision
        if snap.complete:
            self._incomplete_streak = 0
        else:  # a view behind the bucket: the changes this watcher missed may be missing from it too
            self.incomplete_lists += 1
            self._incomplete_streak += 1
            self._recheck.set()
        if self._after_reconnect:
            self._after_reconnect = False
            log.warning("watch of %s%s resynced at revision %d", self.tenant,
                        f"/{self.service}" if self.service else "", snap.revision)
        if not first or self.include_initial:
            await self._emit_diff(old, new, snap.revision, ChangeReason.initial if first else ChangeReason.resync)
        self.ready.set()

    async def _emit_diff(
        self, old: dict[tuple[str, str], _Held], new: dict[tuple[str, str], _Held], revision: int,
        reason: ChangeReason = ChangeReason.resync,
    ) -> None:
        now = time.time()

        def ev(kind: ChangeType, key: tuple[str, str], inst: Instance) -> ChangeEvent:
            return ChangeEvent(
                type=kind, reason=reason, tenant=self.tenant, service=key[0], instance=inst,
                revision=revision, at=now,
            )

        for key, held in old.items():
            if key not in new:
                await self._emit(ev(ChangeType.removed, key, held.instance))
        for key, held in new.items():
            before = old.get(key)
            if before is None:
                await self._emit(ev(ChangeType.added, key, held.instance))
            elif before.instance != held.instance:
                await self._emit(ev(ChangeType.updated, key, held.instance))

    async def _apply(self, msg: Msg) -> None:
        ev = change_of(self.tenant, msg.subject, msg.headers, msg.data)
        if ev is None:  # not a change (the purge of old delete markers), or unreadable
            return
        if ev.revision <= self.revision:
            return
        key = (ev.service, ev.instance.id)
        held = self._held.get(key)
        if held is not None and ev.revision <= held.revision:
            return
        if self._tombstones.get(key, 0) >= ev.revision:
            return
        if ev.type is ChangeType.removed:
            if held is None:
                self._tombstones[key] = ev.revision
                return
            del self._held[key]
            self._tombstones[key] = ev.revision
            if len(self._tombstones) > _MAX_TOMBSTONES:
                self._tombstones.pop(next(iter(self._tombstones)))
        else:
            self._tombstones.pop(key, None)
            self._held[key] = _Held(ev.instance, ev.revision)
            if held is not None and held.instance == ev.instance:
                return  # the list already showed this change (a snapshot may hold writes newer than its revision)
            if held is None and ev.type is ChangeType.updated:
                ev = ev.model_copy(update={"type": ChangeType.added})
        await self._emit(ev)

    async def _run(self) -> None:
        await self._relist()
        async with anyio.create_task_group() as tg:
            if self.resync_interval:
                tg.start_soon(self._resync_loop, self.resync_interval)
            tg.start_soon(self._recheck_loop)
            async for item in self._inbox_recv:
                if item is _RELIST or self._relist_pending:
                    await self._relist()
                    if item is _RELIST:
                        continue
                await self._apply(item)
            tg.cancel_scope.cancel()

    async def _resync_loop(self, interval: float) -> None:
        while True:
            await anyio.sleep(interval)
            self.request_relist()

    async def _recheck_loop(self) -> None:
        """List again after a list from a view that may miss writes: 0.1 s later, then backing off to 5 s."""
        while True:
            await self._recheck.wait()
            self._recheck = anyio.Event()
            delay = min(5.0, 0.05 * 2 ** min(self._incomplete_streak, 7))
            await anyio.sleep(delay * random.uniform(0.75, 1.25))
            self.request_relist()


@asynccontextmanager
async def watch(
    conn: Connection,
    service: str | None = None,
    *,
    tenant: str | None = None,
    include_initial: bool = False,
    resync_interval: float | None = 300.0,
    buffer: int = 10_000,
) -> AsyncIterator[Watch]:
    """Watch one service (or all the tenant's services) for the duration of the block.

    The block starts once the first list is taken, so :attr:`Watch.view` is already filled. With
    ``include_initial`` the instances of that first list are also yielded as ``added`` events (reason
    ``initial``).
    """
    t = conn.tenant_or(tenant)
    if service is not None:
        validate_service(service)
    w = Watch(conn, t, service, include_initial=include_initial, resync_interval=resync_interval, buffer=buffer)
    async with running(conn, w):
        yield w


@asynccontextmanager
async def running(
    conn: Connection, w: Watch, on_disconnect: Callable[[], None] | None = None
) -> AsyncIterator[None]:
    """Run ``w`` for the duration of the block: its live subscription, its relists after reconnects and
    slow-consumer drops, its loop; the block starts once the first list is taken. ``on_disconnect`` is told when
    the connection drops (the resolver marks its view stale)."""
    sub = await conn.nc.subscribe(
        conn.subjects.live(w.tenant, w.service), cb=w._on_msg, pending_msgs_limit=w.buffer * 64
    )
    sid = sub._id

    async def on_reconnect() -> None:
        w._after_reconnect = True
        w.request_relist()

    async def on_slow(slow_sid: int) -> None:
        if slow_sid == sid:
            w.request_relist()

    removers: list[Callable[[], None]] = [conn.on_reconnect(on_reconnect), conn.on_slow_consumer(on_slow)]
    if on_disconnect is not None:
        callback = on_disconnect

        async def disconnected() -> None:
            callback()

        removers.append(conn.on_disconnect(disconnected))
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(w._run)
            await w.ready.wait()
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise sole_exception(group) from None
    finally:
        for remove in removers:
            remove()
        with anyio.CancelScope(shield=True):
            try:
                await sub.unsubscribe()
            except Exception:
                pass
            w._inbox_send.close()
            w._out_send.close()
