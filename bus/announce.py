"""Registering an instance and keeping it alive: ``async with announce(...) as reg``.

While the block runs the instance is registered (announce request, acknowledged by an aggregator), heartbeats go
out every ``ttl/3`` seconds, and the instance is announced again when an aggregator asks
(``ctl`` reannounce), after every reconnect, and on :meth:`Registration.update`. Leaving the block, also by
cancellation or an exception, says ``bye`` (bounded by one second), so the instance is removed at once instead of
after its ttl.

While no aggregator answers, announcing is retried with capped exponential backoff and jitter; an announce the
aggregator refuses (invalid instance, quota) raises at once.

Heartbeats of every instance announced on one connection go through ONE :class:`~bus.heartbeats.Heartbeats`
batcher (the protocol's ``ids`` form: one message per service and round for up to 1,000 instances), so a process
hosting many instances costs the aggregator one message per round, not one per instance. The batcher runs in the
task group of one of the open ``announce`` blocks; when that block ends, another open block takes it over.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from weakref import WeakKeyDictionary

import anyio
from nats.aio.msg import Msg
from pydantic import ValidationError

from bus._util import sole_exception
from bus.client import request
from bus.codec import decode, encode
from bus.connection import Connection
from bus.errors import BadRequest, DiscoError, NoAggregator, Overloaded, RateLimited, Timeout, Unavailable
from bus.heartbeats import Heartbeats
from bus.models import AnnounceAck, Bye, Control, Instance, Status
from bus.subjects import validate_instance_id, validate_service

__all__ = ["Registration", "announce", "new_instance_id"]

log = logging.getLogger("disco.announce")

_TRANSIENT = (NoAggregator, Timeout, RateLimited, Overloaded, Unavailable)


@dataclass(eq=False)
class _SharedBeats:
    """The connection's batcher, and who runs it: whichever open block holds ``runner`` (FIFO hand-over)."""

    beats: Heartbeats
    runner: anyio.Lock = field(default_factory=anyio.Lock)


_BEATS: WeakKeyDictionary[Connection, _SharedBeats] = WeakKeyDictionary()


def _shared_beats(conn: Connection) -> _SharedBeats:
    shared = _BEATS.get(conn)
    if shared is None:
        shared = _BEATS[conn] = _SharedBeats(Heartbeats(conn))
    return shared


def new_instance_id() -> str:
    """A fresh instance id, unique per process run (16 hex characters)."""
    return uuid.uuid4().hex[:16]


def _now_seq() -> int:
    # microseconds since the epoch: rises across restarts of the same instance id, so a restarted process is
    # never taken for a stale duplicate of its previous run
    return time.time_ns() // 1000


class Registration:
    """A registered instance: its current record, and ways to change it while it stays registered."""

    def __init__(self, conn: Connection, tenant: str, service: str, instance: Instance, timeout: float) -> None:
        self.conn = conn
        self.tenant = tenant
        self.service = service
        self.instance = instance
        self.timeout = timeout
        self.revision = 0
        #: number of acknowledged announces (the first one included)
        self.announces = 0
        self._reannounce = anyio.Event()
        self._lock = anyio.Lock()

    @property
    def id(self) -> str:
        return self.instance.id

    def _next(self, **changes: Any) -> Instance:
        data = self.instance.model_dump()
        data.update(changes)
        data["seq"] = max(self.instance.seq + 1, _now_seq())
        try:
            return Instance.model_validate(data)
        except ValidationError as exc:
            raise BadRequest(f"invalid instance: {exc.errors()[0]['msg']}") from None

    async def _send(self, inst: Instance) -> None:
        ack = await request(
            self.conn, self.conn.subjects.announce(self.tenant, self.service), encode(inst), AnnounceAck,
            self.timeout,
        )
        self.instance = inst
        self.revision = ack.revision
        self.announces += 1

    async def _announce_retrying(self, **changes: Any) -> None:
        delay = 0.05
        async with self._lock:
            while True:
                inst = self._next(**changes)
                try:
                    await self._send(inst)
                    return
                except _TRANSIENT as exc:
                    log.info("announce of %s/%s not acknowledged (%s); retrying", self.service, inst.id, exc)
                await anyio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 5.0)

    async def update(
        self,
        *,
        status: Status | str | None = None,
        meta: Mapping[str, str] | None = None,
        tags: Iterable[str] | None = None,
        weight: int | None = None,
        version: str | None = None,
    ) -> None:
        """Change the registered record in place (same instance id); raise BadRequest for invalid values."""
        changes: dict[str, Any] = {}
        if status is not None:
            changes["status"] = Status(status)
        if meta is not None:
            changes["meta"] = dict(meta)
        if tags is not None:
            changes["tags"] = tuple(tags)
        if weight is not None:
            changes["weight"] = weight
        if version is not None:
            changes["version"] = version
        self._next(**changes)  # validate before sending anything
        await self._announce_retrying(**changes)

    def request_reannounce(self) -> None:
        self._reannounce.set()

    # -- background loops -------------------------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        """Beat through the connection's shared batcher; run it while no other open block does."""
        shared = _shared_beats(self.conn)
        key = (self.tenant, self.service, self.instance.id)
        shared.beats.add(*key, self.instance.ttl)
        try:
            while True:
                async with shared.runner:
                    await shared.beats.run()
        finally:
            shared.beats.remove(*key)

    async def _reannounce_loop(self) -> None:
        while True:
            await self._reannounce.wait()
            self._reannounce = anyio.Event()
            try:
                await self._announce_retrying()
            except DiscoError as exc:
                log.error("re-announce of %s/%s refused: %s", self.service, self.instance.id, exc)

    async def _on_ctl(self, msg: Msg) -> None:
        try:
            ctl = decode(msg.data, Control)
        except DiscoError:
            return
        if ctl.op == "reannounce" and ctl.id == self.instance.id:
            self.request_reannounce()

    async def _bye(self) -> None:
        data = encode(Bye(id=self.instance.id))
        subject = self.conn.subjects.bye(self.tenant, self.service)
        with anyio.move_on_after(1.0):
            try:
                await request(self.conn, subject, data, AnnounceAck, 1.0)
            except DiscoError as exc:
                log.debug("bye not acknowledged: %s", exc)


@asynccontextmanager
async def announce(
    conn: Connection,
    service: str,
    *,
    address: str,
    port: int,
    tenant: str | None = None,
    instance_id: str | None = None,
    ttl: float = 10.0,
    tags: Iterable[str] = (),
    meta: Mapping[str, str] | None = None,
    weight: int = 100,
    zone: str = "",
    version: str = "",
    protocol: str = "tcp",
    status: Status | str = Status.passing,
    timeout: float = 2.0,
) -> AsyncIterator[Registration]:
    """Register an instance of ``service`` for the duration of the block; see the module docstring.

    Raises :class:`~bus.errors.BadRequest` (or :class:`~bus.errors.InvalidName`) for invalid input before
    anything is sent, and the aggregator's error (e.g. :class:`~bus.errors.QuotaExceeded`) if it refuses.
    """
    t = conn.tenant_or(tenant)
    validate_service(service)
    iid = validate_instance_id(instance_id) if instance_id is not None else new_instance_id()
    try:
        first = Instance(
            id=iid, address=address, port=port, ttl=float(ttl), tags=tuple(tags), meta=dict(meta or {}),
            weight=weight, zone=zone, version=version, protocol=protocol, status=Status(status), seq=0,
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise BadRequest(f"invalid instance: {loc}: {err['msg']}") from None
    except ValueError as exc:
        raise BadRequest(f"invalid instance: {exc}") from None
    reg = Registration(conn, t, service, first, timeout)
    ctl_sub = await conn.nc.subscribe(conn.subjects.ctl(t, service, iid), cb=reg._on_ctl)

    async def on_reconnect() -> None:
        reg.request_reannounce()

    remove_listener = conn.on_reconnect(on_reconnect)
    try:
        await reg._announce_retrying()
        async with anyio.create_task_group() as tg:
            tg.start_soon(reg._heartbeat_loop)
            tg.start_soon(reg._reannounce_loop)
            try:
                yield reg
            finally:
                tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise sole_exception(group) from None
    finally:
        remove_listener()
        with anyio.CancelScope(shield=True):
            if reg.announces:
                await reg._bye()
            try:
                await ctl_sub.unsubscribe()
            except Exception:
                pass
