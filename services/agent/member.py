"""One instance the agent keeps registered: its announce (retried while no aggregator answers), its re-announces
(asked on ``ctl``, after reconnects), its health check, its status in the shared heartbeats, and its bye.

The heartbeats themselves are batched for all members by :class:`bus.heartbeats.Heartbeats`; a member only adds
itself after its announce was acknowledged and removes itself before its bye.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

import anyio
from anyio.abc import TaskStatus
from nats.aio.msg import Msg

from bus.client import request
from bus.codec import decode, encode
from bus.connection import Connection
from bus.errors import DiscoError, NoAggregator, Overloaded, RateLimited, Timeout, Unavailable
from bus.heartbeats import Heartbeats
from bus.models import AnnounceAck, Bye, Control, Status
from services.agent.checks import CheckRunner, Health, Outcome, make_probe
from services.agent.config import ServiceDef

__all__ = ["Member"]

log = logging.getLogger("disco.agent")

_TRANSIENT = (NoAggregator, Timeout, RateLimited, Overloaded, Unavailable)

Key = tuple[str, str, str]


class Member:
    """The instance ``key`` = (tenant, service, id) as ``definition`` describes it; :meth:`run` keeps it
    registered until cancelled (or :meth:`stop`), then says bye."""

    def __init__(
        self, conn: Connection, beats: Heartbeats, key: Key, definition: ServiceDef, *, timeout: float = 2.0,
        on_check: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.conn = conn
        self.beats = beats
        self.key = key
        self.definition = definition
        self.timeout = timeout
        self.on_check = on_check
        check = definition.check
        #: the status the agent reports for it (the check's, or passing without a check)
        self.status = check.initial_status if check is not None else Status.passing
        #: True once an announce was acknowledged (then a bye is owed)
        self.registered = False
        #: why the aggregator refused it, when it did
        self.error: str | None = None
        self._seq = 0
        self._lock = anyio.Lock()
        self._reannounce = anyio.Event()
        self._scope = anyio.CancelScope()
        self._check_scope: anyio.CancelScope | None = None
        self.done = anyio.Event()

    @property
    def tenant(self) -> str:
        return self.key[0]

    @property
    def service(self) -> str:
        return self.key[1]

    @property
    def id(self) -> str:
        return self.key[2]

    def __repr__(self) -> str:
        return f"{self.tenant}/{self.service}/{self.id}"

    # -- announcing ---------------------------------------------------------------------------------------------
    async def _announce(self) -> bool:
        """Announce the definition with the current status and a rising seq; retry while no aggregator answers.
        False when the aggregator refused it (the error is logged and kept in :attr:`error`)."""
        delay = 0.05
        subject = self.conn.subjects.announce(self.tenant, self.service)
        async with self._lock:
            while True:
                self._seq = max(self._seq + 1, time.time_ns() // 1000)
                inst = self.definition.instance(self.status, self._seq)
                try:
                    await request(self.conn, subject, encode(inst), AnnounceAck, self.timeout)
                except _TRANSIENT as exc:
                    log.info("announce of %r not acknowledged (%s); retrying", self, exc)
                except DiscoError as exc:
                    self.error = str(exc)
                    log.error("announce of %r refused: %s", self, exc)
                    return False
                else:
                    self.registered, self.error = True, None
                    self.beats.add(self.tenant, self.service, self.id, inst.ttl, self.status)
                    if self.status is not inst.status:  # the check decided while the announce was on its way
                        self.beats.set_status(self.tenant, self.service, self.id, self.status)
                    return True
                await anyio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 5.0)

    def request_reannounce(self) -> None:
        self._reannounce.set()

    async def _reannounce_loop(self) -> None:
        while True:
            await self._reannounce.wait()
            self._reannounce = anyio.Event()
            await self._announce()

    async def _on_ctl(self, msg: Msg) -> None:
        try:
            ctl = decode(msg.data, Control)
        except DiscoError:
            return
        if ctl.op == "reannounce" and ctl.id == self.id:
            self.request_reannounce()

    async def _bye(self) -> None:
        subject = self.conn.subjects.bye(self.tenant, self.service)
        with anyio.move_on_after(1.0):
            try:
                await request(self.conn, subject, encode(Bye(id=self.id)), AnnounceAck, 1.0)
            except DiscoError as exc:
                log.info("bye of %r not acknowledged: %s", self, exc)
        self.registered = False

    # -- checking -----------------------------------------------------------------------------------------------
    async def _on_status(self, status: Status, outcome: Outcome) -> None:
        log.info("%r is %s (%s)", self, status.value, outcome.detail)
        self.status = status
        self.beats.set_status(self.tenant, self.service, self.id, status)

    async def _check_loop(self) -> None:
        while True:
            check = self.definition.check
            with anyio.CancelScope() as self._check_scope:
                if check is None:
                    await anyio.sleep_forever()
                else:
                    health = Health(self.status, failures=check.failures_before_critical,
                                    successes=check.successes_before_passing)
                    runner = CheckRunner(make_probe(check), health, interval=check.interval, timeout=check.timeout,
                                         on_change=self._on_status, on_run=self.on_check)
                    await runner.run()

    # -- life ---------------------------------------------------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            with self._scope:
                sub = await self.conn.nc.subscribe(self.conn.subjects.ctl(self.tenant, self.service, self.id),
                                                   cb=self._on_ctl)
                try:
                    task_status.started()
                    await self._announce()
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self._reannounce_loop)
                        tg.start_soon(self._check_loop)
                finally:
                    with anyio.CancelScope(shield=True):
                        self.beats.remove(self.tenant, self.service, self.id)
                        if self.registered:
                            await self._bye()
                        try:
                            await sub.unsubscribe()
                        except Exception:
                            pass
        finally:
            self.done.set()

    async def stop(self) -> None:
        """Say bye and stop; returns once done."""
        self._scope.cancel()
        await self.done.wait()

    async def update(self, definition: ServiceDef) -> None:
        """Apply a changed definition in place (same instance id): re-announce when what an announce carries
        changed, restart the check when the check changed (the status carries over)."""
        old, self.definition = self.definition, definition
        if old.check != definition.check:
            if definition.check is None and self.status is not Status.passing:
                await self._on_status(Status.passing, Outcome(True, "no check any more"))
            if self._check_scope is not None:
                self._check_scope.cancel()
        if old.registration() != definition.registration() or not self.registered:
            await self._announce()
