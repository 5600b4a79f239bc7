"""No noisy neighbour: while another tenant floods resolves (and announces and heartbeats) from two processes, a
quiet tenant's reads keep their own path and interleave with the flood. Asserted from the read path's state, not
from timings (the speed is measured by scripts/bench_noisy.py): the quiet tenant's lane is never reset or paused,
its reads never wait behind more than one job of the flooder, its queue stays bounded, every one of its resolves
is answered with the right instances, and none of its instances is falsely expired."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from bus.announce import announce
from bus.client import resolve
from bus.watch import watch
from tests.conftest import eventually

pytestmark = pytest.mark.integration

FLOOD = Path(__file__).resolve().parents[2] / "scripts" / "flood.py"


async def test_a_flooding_tenant_does_not_hurt_a_quiet_one(nats_server, aggregator, conn_factory, prefix):
    agg = aggregator.agg
    reads = agg.reads
    quiet = await conn_factory(nats_server.url, tenant="quiet")
    noisy = await conn_factory(nats_server.url, tenant="noisy")
    resolves = 0
    removed: list[str] = []
    async with (
        watch(quiet, "api") as w,
        announce(quiet, "api", address="10.0.0.1", port=1, ttl=3) as a,
        announce(quiet, "api", address="10.0.0.2", port=1, ttl=3) as b,
        announce(noisy, "spam", address="10.0.0.3", port=1, ttl=30),  # the flooder is a known tenant too
        anyio.create_task_group() as tg,
    ):
        # both tenants are in the view: each gets a lane of its own
        await eventually(lambda: all(t in reads.lanes and reads.lanes[t].serving(time.monotonic())
                                     for t in ("quiet", "noisy")), timeout=20)
        quiet_lane = reads.lanes["quiet"]

        async def removals() -> None:
            async for ev in w:
                if ev.type == "removed":
                    removed.append(ev.instance.id)

        tg.start_soon(removals)
        floods = [
            subprocess.Popen(  # noqa: ASYNC220 - children polled without blocking the loop
                [sys.executable, str(FLOOD), "--nats", nats_server.url, "--prefix", prefix, "--tenant", "noisy",
                 "--seconds", "6", "--kinds", kinds],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            for kinds in ("resolve", "resolve,announce,hb")
        ]
        try:
            while any(f.poll() is None for f in floods):
                # generous timeout: this asserts that every read is answered, not how fast
                reply = await resolve(quiet, "api", timeout=30.0)
                assert {i.id for i in reply.instances} == {a.id, b.id}
                resolves += 1
                await anyio.sleep(0.02)
            outs = [f.communicate(timeout=30) for f in floods]
        finally:
            for f in floods:
                if f.poll() is None:
                    f.kill()
                    f.wait()
        for f, (out, err) in zip(floods, outs, strict=True):
            assert f.returncode == 0, err
            assert json.loads(out.strip().splitlines()[-1])["total"] > 0
        tg.cancel_scope.cancel()

    assert resolves >= 3  # the quiet tenant kept resolving all through the flood
    # its path was never reset by the server (slow consumer) nor paused by the breaker: the same lane throughout
    assert reads.lanes.get("quiet") is quiet_lane or not quiet_lane.closed
    assert quiet_lane.resets == 0 and quiet_lane.pauses == 0
    assert "quiet" not in reads.breakers or reads.breakers["quiet"].pause == 0
    assert agg.metrics.get("read_lane_resets", "quiet") == 0
    assert agg.metrics.get("reads_dropped", "quiet") == 0
    # its reads interleaved with the flood: never behind more than one job (of the one other tenant), and never
    # more than one of its own queued
    assert reads.queue.max_ahead.get("quiet", 0) <= 1
    assert reads.queue.max_pending.get("quiet", 0) <= 1
    # the flooder's queue, whatever its depth, stayed within its bound
    assert reads.queue.max_pending.get("noisy", 0) <= agg.settings.read_queue
    assert removed == []  # no false expiry (the bye at the end comes after the watch closed)
    assert agg.metrics.get("expired", "quiet") == 0
