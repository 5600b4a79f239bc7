"""No noisy neighbour: a tenant flooding announces, heartbeats and resolves as fast as it can causes no false
expiry and no resolve timeout for a quiet tenant heartbeating at ttl 2 s (the speed is measured by
scripts/bench_noisy.py, not here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from bus.announce import announce
from bus.client import resolve
from bus.errors import Timeout
from bus.watch import watch

pytestmark = pytest.mark.integration

FLOOD = Path(__file__).resolve().parents[2] / "scripts" / "flood.py"


async def test_a_flooding_tenant_does_not_hurt_a_quiet_one(nats_server, aggregator, conn_factory, prefix):
    quiet = await conn_factory(nats_server.url, tenant="quiet")
    timeouts = 0
    resolves = 0
    removed: list[str] = []
    async with (
        watch(quiet, "api") as w,
        announce(quiet, "api", address="10.0.0.1", port=1, ttl=2) as a,
        announce(quiet, "api", address="10.0.0.2", port=1, ttl=2) as b,
        anyio.create_task_group() as tg,
    ):

        async def removals() -> None:
            async for ev in w:
                if ev.type == "removed":
                    removed.append(ev.instance.id)

        tg.start_soon(removals)
        flood = subprocess.Popen(  # noqa: ASYNC220 - a child polled without blocking the loop
            [sys.executable, str(FLOOD), "--nats", nats_server.url, "--prefix", prefix, "--tenant", "noisy",
             "--seconds", "6"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            while flood.poll() is None:
                try:
                    reply = await resolve(quiet, "api", timeout=2.0)
                    assert {i.id for i in reply.instances} == {a.id, b.id}
                except Timeout:
                    timeouts += 1
                resolves += 1
                await anyio.sleep(0.02)
            out, err = flood.communicate(timeout=30)
        finally:
            if flood.poll() is None:
                flood.kill()
                flood.wait()
        assert flood.returncode == 0, err
        stats = json.loads(out.strip().splitlines()[-1])
        # past the ttl of the quiet tenant's instances, several times over
        assert stats["seconds"] >= 5.0 and stats["total"] > 10_000, stats
        tg.cancel_scope.cancel()
    assert timeouts == 0
    assert resolves >= 3  # the quiet tenant kept resolving all through the flood (each within its timeout)
    assert removed == []  # no false expiry (the bye at the end comes after the watch closed)
    assert aggregator.agg.metrics.get("expired", "quiet") == 0
