"""The per-tenant fair scheduler: round-robin between tenants, a bounded queue per tenant, workers that survive a
failing job. Synchronised with events only."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import pytest

from services.aggregator.scheduler import TenantScheduler


def recorder(log: list[str], name: str, done: anyio.Event | None = None, total: int = 0) -> Callable[
    [], Awaitable[None]
]:
    async def job() -> None:
        log.append(name)
        if done is not None and len(log) == total:
            done.set()

    return job


async def test_submit_is_bounded_per_tenant() -> None:
    s = TenantScheduler(workers=1, per_tenant=3)
    log: list[str] = []
    assert all(s.submit("a", recorder(log, "a")) for _ in range(3))
    assert s.submit("a", recorder(log, "a")) is False  # full
    assert s.pending("a") == 3
    assert s.submit("b", recorder(log, "b")) is True  # another tenant is not refused
    assert s.pending("b") == 1 and s.pending("nobody") == 0
    assert log == []  # nothing runs before run()


async def test_round_robin_between_tenants() -> None:
    s = TenantScheduler(workers=1, per_tenant=100)
    log: list[str] = []
    done = anyio.Event()
    total = 20 + 3 + 2
    for n in range(20):  # a flooding tenant submits first
        s.submit("flood", recorder(log, f"flood{n}", done, total))
    for n in range(3):
        s.submit("quiet", recorder(log, f"quiet{n}", done, total))
    for n in range(2):
        s.submit("small", recorder(log, f"small{n}", done, total))
    async with anyio.create_task_group() as tg:
        tg.start_soon(s.run)
        with anyio.fail_after(5):
            await done.wait()
        tg.cancel_scope.cancel()
    assert log[:7] == ["flood0", "quiet0", "small0", "flood1", "quiet1", "small1", "flood2"]
    assert log.index("quiet2") == 7  # the quiet tenant is done after 8 jobs, not after the flood's 20
    assert log[8:] == [f"flood{n}" for n in range(3, 20)]  # each tenant's own order is kept
    assert s.pending("flood") == s.pending("quiet") == 0


async def test_queue_frees_as_jobs_run() -> None:
    s = TenantScheduler(workers=1, per_tenant=2)
    log: list[str] = []
    done = anyio.Event()
    s.submit("a", recorder(log, "1"))
    s.submit("a", recorder(log, "2", done, 2))
    assert s.submit("a", recorder(log, "x")) is False
    async with anyio.create_task_group() as tg:
        tg.start_soon(s.run)
        with anyio.fail_after(5):
            await done.wait()
        assert s.pending("a") == 0
        again = anyio.Event()
        assert s.submit("a", recorder(log, "3", again, 3)) is True
        with anyio.fail_after(5):
            await again.wait()
        tg.cancel_scope.cancel()
    assert log == ["1", "2", "3"]


async def test_a_failing_job_does_not_stop_the_worker(caplog: pytest.LogCaptureFixture) -> None:
    s = TenantScheduler(workers=1, per_tenant=10)
    done = anyio.Event()

    async def boom() -> None:
        raise RuntimeError("job failed")

    async def after() -> None:
        done.set()

    s.submit("a", boom)
    s.submit("a", after)
    async with anyio.create_task_group() as tg:
        tg.start_soon(s.run)
        with anyio.fail_after(5):
            await done.wait()
        tg.cancel_scope.cancel()
    assert any("job failed" in r.getMessage() or r.exc_info for r in caplog.records)


async def test_workers_run_jobs_concurrently() -> None:
    s = TenantScheduler(workers=2, per_tenant=10)
    started = [anyio.Event(), anyio.Event()]
    release = anyio.Event()
    finished: list[int] = []
    all_finished = anyio.Event()

    def blocking(n: int) -> Callable[[], Awaitable[None]]:
        async def job() -> None:
            started[n].set()
            await release.wait()
            finished.append(n)
            if len(finished) == 2:
                all_finished.set()

        return job

    s.submit("a", blocking(0))
    s.submit("b", blocking(1))
    async with anyio.create_task_group() as tg:
        tg.start_soon(s.run)
        with anyio.fail_after(5):
            await started[0].wait()
            await started[1].wait()  # both run at once: two workers
        release.set()
        with anyio.fail_after(5):
            await all_finished.wait()
        tg.cancel_scope.cancel()
    assert sorted(finished) == [0, 1]


async def test_run_stops_on_cancellation() -> None:
    s = TenantScheduler(workers=4, per_tenant=1)
    with anyio.move_on_after(0.05) as scope:
        await s.run()  # idle workers wait on the semaphore; cancellation ends them all
    assert scope.cancelled_caught


async def test_fairness_is_recorded() -> None:
    """max_pending / max_ahead: what the noisy-neighbour test asserts instead of timings."""
    s = TenantScheduler(workers=1, per_tenant=100)
    log: list[str] = []
    done = anyio.Event()
    total = 50 + 2
    for n in range(50):
        s.submit("flood", recorder(log, f"flood{n}", done, total))
    for n in range(2):
        s.submit("quiet", recorder(log, f"quiet{n}", done, total))
    async with anyio.create_task_group() as tg:
        tg.start_soon(s.run)
        with anyio.fail_after(5):
            await done.wait()
        tg.cancel_scope.cancel()
    assert s.started == total
    assert s.max_pending == {"flood": 50, "quiet": 2}
    # quiet's first job waited behind one flood job, its second behind two more (one flood, its own first)
    assert s.max_ahead["quiet"] == 3
    # the flood's last job waited behind the 49 before it and both quiet jobs
    assert s.max_ahead["flood"] == 51
