"""Fair work per tenant: each tenant has a bounded queue of pending writes, and a fixed pool of workers takes one
job from each tenant with work in turn (round-robin), so a tenant flooding announces waits behind itself, not
in front of everyone else. A full queue refuses the job (the caller replies ``overloaded`` or drops it).

Fairness is observable: for every tenant the scheduler keeps the deepest its queue has been (``max_pending``) and
the most jobs of other tenants started between one of its jobs being queued and that job starting
(``max_ahead``). With round-robin, a tenant that keeps one job queued waits behind at most one job of each other
tenant with work, however deep their queues are; tests assert that instead of timing anything."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable

import anyio

log = logging.getLogger("disco.aggregator.scheduler")

Job = Callable[[], Awaitable[None]]

__all__ = ["TenantScheduler"]


class TenantScheduler:
    def __init__(self, workers: int, per_tenant: int) -> None:
        self.workers = workers
        self.per_tenant = per_tenant
        self._queues: dict[str, deque[tuple[Job, int]]] = {}
        self._ready: deque[str] = deque()
        self._pending = anyio.Semaphore(0, max_value=None)
        #: jobs started so far (the clock ``max_ahead`` is measured with)
        self.started = 0
        #: per tenant: the deepest its queue has been
        self.max_pending: dict[str, int] = {}
        #: per tenant: the most jobs started between one of its jobs being queued and that job starting
        self.max_ahead: dict[str, int] = {}

    def pending(self, tenant: str) -> int:
        q = self._queues.get(tenant)
        return 0 if q is None else len(q)

    def submit(self, tenant: str, job: Job) -> bool:
        q = self._queues.get(tenant)
        if q is None:
            q = self._queues[tenant] = deque()
        if len(q) >= self.per_tenant:
            return False
        if not q:
            self._ready.append(tenant)
        q.append((job, self.started))
        if len(q) > self.max_pending.get(tenant, 0):
            self.max_pending[tenant] = len(q)
        self._pending.release()
        return True

    def _take(self) -> Job:
        tenant = self._ready.popleft()
        q = self._queues[tenant]
        job, queued_at = q.popleft()
        ahead = self.started - queued_at
        if ahead > self.max_ahead.get(tenant, 0):
            self.max_ahead[tenant] = ahead
        self.started += 1
        if q:
            self._ready.append(tenant)
        else:
            del self._queues[tenant]
        return job

    async def _worker(self) -> None:
        while True:
            await self._pending.acquire()
            job = self._take()
            try:
                await job()
            except Exception:
                log.exception("aggregator job failed")

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(self.workers):
                tg.start_soon(self._worker)
