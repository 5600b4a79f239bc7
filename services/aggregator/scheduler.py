"""Fair work per tenant: each tenant has a bounded queue of pending writes, and a fixed pool of workers takes one
job from each tenant with work in turn (round-robin), so a tenant flooding announces waits behind itself, not
in front of everyone else. A full queue refuses the job (the caller replies ``overloaded``)."""

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
        self._queues: dict[str, deque[Job]] = {}
        self._ready: deque[str] = deque()
        self._pending = anyio.Semaphore(0, max_value=None)

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
        q.append(job)
        self._pending.release()
        return True

    def _take(self) -> Job:
        tenant = self._ready.popleft()
        q = self._queues[tenant]
        job = q.popleft()
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
