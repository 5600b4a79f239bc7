"""A start's load is taken in batches (issue 11) and still counts only once verified complete (issue 8): a load of
several batches holds exactly what the bucket holds, and one that lost a key in the middle of a batch is thrown
away without the aggregator ever answering from it."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from contextlib import asynccontextmanager

import anyio
import pytest

from bus import codec
from bus.models import Instance
from services.aggregator.service import Aggregator
from services.aggregator.store import KV_HISTORY
from tests.faults import kv_content, view_content

pytestmark = pytest.mark.integration

_KEYS = 2_500  # more than two batches of the follower's drain


async def _fill(conn, bucket: str, n: int, *, deleted: int = 0) -> None:
    """``n`` values written straight into the bucket (as a long-running system has them), and ``deleted`` of
    them then removed with a delete marker."""
    await conn.js.create_key_value(bucket=bucket, history=KV_HISTORY)
    acks = [await conn.js.publish_async(
        f"$KV.{bucket}.acme.svc.i{k:05d}",
        codec.encode(Instance(id=f"i{k:05d}", address="10.7.0.1", port=1 + k, ttl=300, seq=1)))
        for k in range(n)]
    for ack in acks:
        await ack
    kv = await conn.js.key_value(bucket)
    for k in range(deleted):
        await kv.delete(f"acme.svc.i{k:05d}")


@asynccontextmanager
async def _running(agg: Aggregator):
    task = asyncio.create_task(agg.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_load_of_several_batches_is_complete(nats_server, conn_factory, settings_for, client):
    settings = settings_for(nats_server.url)
    await _fill(client, settings.bucket, _KEYS, deleted=7)
    agg = Aggregator(await conn_factory(nats_server.url, name="aggregator"), settings)
    async with _running(agg) as task:
        with anyio.fail_after(60):
            while not agg.ready.is_set():
                assert not task.done()
                await asyncio.sleep(0.01)
        assert agg.follower.loads == 1
        assert len(agg.live) == _KEYS - 7
        assert view_content(agg) == await kv_content(client, settings.bucket)
        assert gc.isenabled()  # paused for the load only


async def test_a_load_that_lost_a_key_mid_batch_is_never_served(nats_server, conn_factory, settings_for, client):
    settings = settings_for(nats_server.url)
    await _fill(client, settings.bucket, _KEYS)
    agg = Aggregator(await conn_factory(nats_server.url, name="aggregator"), settings)
    agg.follower.verify_timeout = 1.0
    real = agg.store.new_watch
    spoiled = 0

    def lossy():
        # the watch is spoiled before its consumer exists: deliveries are taken as they are read (direct.py)
        nonlocal spoiled
        w = real()
        if spoiled == 0:
            spoiled += 1
            real_add = w._add

            def add(change):
                if change is None or change.key != "acme.svc.i01234":  # lost in the middle of a batch
                    real_add(change)

            w._add = add
        return w

    agg.store.new_watch = lossy
    async with _running(agg) as task:
        with anyio.fail_after(60):
            while not agg.ready.is_set():
                assert not task.done()
                if agg.metrics.get("incomplete_loads") == 0:
                    assert agg.follower.loads == 0 and not agg.ready.is_set()
                await asyncio.sleep(0.01)
        assert spoiled == 1
        assert agg.metrics.get("incomplete_loads") == 1  # the first load was thrown away, the second verified
        assert agg.follower.loads == 1
        assert agg.view.get("acme", "svc", "i01234") is not None
        assert view_content(agg) == await kv_content(client, settings.bucket)
        assert gc.isenabled()
