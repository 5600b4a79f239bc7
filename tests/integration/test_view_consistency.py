"""Never serve or act on an incomplete view (issue 8.2): a load that does not verify against the bucket is neither
trusted nor used to drop entries, a silent watch is re-created, a reconciliation never outranks a real entry, and
after repeated server restarts every aggregator's view equals the KV."""

from __future__ import annotations

import anyio
import pytest

from bus.models import Instance
from tests.conftest import eventually
from tests.faults import announce_raw, bye_raw, kv_content, view_content

pytestmark = pytest.mark.integration


def _inst(iid: str, port: int = 1) -> Instance:
    return Instance(id=iid, address="10.8.0.1", port=port, ttl=300, seq=1)


def _lossy(agg, *, drop_keys: set[str] = frozenset(), silent_after_load: bool = False, times: int = 1):
    """Make the next ``times`` watches of ``agg`` lose the given keys (an incomplete load), or go silent once
    loaded (as a watch can after a server restart). Returns the count of watches it spoiled."""
    real = agg.store.new_watch
    spoiled = [0]

    def new_watch():
        w = real()
        if spoiled[0] < times:
            spoiled[0] += 1
            real_add = w._add  # where the consumer's messages enter the watch (as they are read)
            loaded = False

            def add(change):
                nonlocal loaded
                if change is None:
                    loaded = True
                elif change.key in drop_keys or (silent_after_load and loaded):
                    return
                real_add(change)

            w._add = add
        return w

    agg.store.new_watch = new_watch
    return spoiled


async def test_an_incomplete_load_is_neither_trusted_nor_used_to_drop(nats_server, start_aggregator, client):
    agg = (await start_aggregator(nats_server.url)).agg
    agg.follower.verify_timeout = 1.0
    for k in range(6):
        await announce_raw(client, "acme", "svc", _inst(f"i{k}", k + 1))
    before = view_content(agg)
    spoiled = _lossy(agg, drop_keys={"acme.svc.i1", "acme.svc.i4"})
    loads = agg.follower.loads
    agg.follower.restart()  # as a reconnect does: the re-created watch delivers a load without i1 and i4
    with anyio.fail_after(20):
        while agg.follower.loads == loads:
            assert view_content(agg) == before  # never dropped meanwhile
            await anyio.sleep(0.01)
    assert spoiled[0] == 1
    assert agg.metrics.get("incomplete_loads") == 1  # thrown away, the watch re-created
    assert agg.metrics.get("reconcile_dropped", "acme") == 0
    assert view_content(agg) == before == await kv_content(client, agg.settings.bucket)


async def test_a_silent_watch_is_recreated(nats_server, start_aggregator, client):
    agg = (await start_aggregator(nats_server.url)).agg
    agg.follower.silent_check = 0.3
    await announce_raw(client, "acme", "svc", _inst("a"))
    _lossy(agg, silent_after_load=True)
    agg.follower.restart()
    await eventually(lambda: agg.follower.loads >= 2)
    # written behind the silent watch's back (straight into the bucket, as another aggregator would)
    other = Instance(id="b", address="10.8.0.2", port=2, ttl=300, seq=1)
    from bus import codec

    await agg.store.create("acme.svc.b", codec.encode(other), 0)
    await eventually(lambda: agg.view.get("acme", "svc", "b") is not None, timeout=20)
    assert agg.metrics.get("silent_watch") == 1


async def test_a_list_from_a_view_behind_the_bucket_says_so_and_the_watcher_lists_again(
        nats_server, start_aggregator, client):
    """A watcher that lists (as after a reconnect) while the aggregator's KV watch has gone silent gets a list
    without the writes made meanwhile, and would keep it until its next periodic resync (the events it missed are
    not sent again): the reply says the view may miss writes, and the watcher lists again until it does not."""
    from bus import codec
    from bus.client import snapshot
    from bus.watch import watch

    agg = (await start_aggregator(nats_server.url)).agg
    agg.follower.ask_every = 0  # the bucket's last revision asked afresh for each snapshot
    await announce_raw(client, "acme", "svc", _inst("a"))
    async with watch(client, "svc", resync_interval=None) as w:
        assert set(w.view["svc"]) == {"a"} and w.incomplete_lists == 0
        assert (await snapshot(client)).complete  # a current view, the bucket quiet
        _lossy(agg, silent_after_load=True)
        agg.follower.restart()
        await eventually(lambda: agg.follower.loads >= 2 and agg.follower.current)
        # written behind the silent watch's back, as another aggregator would (no event this watcher could see)
        await agg.store.create("acme.svc.b", codec.encode(_inst("b", 2)), 0)
        snap = await snapshot(client)
        assert not snap.complete and [i.id for i in snap.services["svc"]] == ["a"]
        lists = w.lists
        w.request_relist()
        await eventually(lambda: "b" in w.view.get("svc", {}), timeout=15)
        assert w.incomplete_lists >= 1 and w.lists >= lists + 2
    assert agg.metrics.get("silent_watch") == 1
    assert (await snapshot(client)).complete


async def test_a_key_the_bucket_lost_is_dropped_without_outranking_a_later_write(
        nats_server, start_aggregator, client):
    agg = (await start_aggregator(nats_server.url)).agg
    await announce_raw(client, "acme", "svc", _inst("real"))
    # an entry the bucket does not hold at all (as after its delete marker was purged), far above every revision
    agg.view.put("acme", "svc", _inst("ghost"), 10_000_000)
    loads = agg.follower.loads
    agg.follower.restart()
    await eventually(lambda: agg.follower.loads > loads)
    assert agg.view.get("acme", "svc", "ghost") is None
    assert agg.metrics.get("reconcile_dropped", "acme") == 1
    # the same instance announced for real: taken, although its revision is far below the dropped entry's
    ack = await announce_raw(client, "acme", "svc", _inst("ghost"))
    assert ack.changed and ack.revision < 10_000_000
    assert agg.view.get("acme", "svc", "ghost").revision == ack.revision
    assert view_content(agg) == await kv_content(client, agg.settings.bucket)


async def test_repeated_server_restarts_leave_every_view_equal_to_the_kv(fresh_server, start_aggregator,
                                                                          conn_factory):
    a = (await start_aggregator(fresh_server.url)).agg
    b = (await start_aggregator(fresh_server.url)).agg
    conn = await conn_factory(fresh_server.url, tenant="acme")
    stop = anyio.Event()

    async def churn(n: int) -> None:
        k = 0
        while not stop.is_set():
            k += 1
            try:
                await announce_raw(conn, "acme", "svc", _inst(f"c{n}-{k}", k), timeout=2)
                if k % 3 == 0:
                    await bye_raw(conn, "acme", "svc", f"c{n}-{k - 1}", timeout=2)
            except Exception:
                await anyio.sleep(0.05)  # the server is restarting: carry on

    async with anyio.create_task_group() as tg:
        for n in range(4):
            tg.start_soon(churn, n)
        for _ in range(3):
            await eventually(lambda: len(view_content(a)) > 20)
            loads = (a.follower.loads, b.follower.loads)
            fresh_server.stop()
            fresh_server.start()
            # both reload (a verified load each) while the churn goes on
            await eventually(lambda loads=loads: a.follower.loads > loads[0] and b.follower.loads > loads[1],
                             timeout=30)
        stop.set()

    async def converged() -> bool:
        kv = await kv_content(conn, a.settings.bucket)
        return view_content(a) == kv == view_content(b)

    await eventually(converged, timeout=30, interval=0.2)


async def test_a_starting_aggregator_is_ready_only_with_a_complete_view(nats_server, start_aggregator, conn_factory,
                                                                       settings_for):
    import asyncio

    from services.aggregator import Aggregator

    first = (await start_aggregator(nats_server.url)).agg
    conn = await conn_factory(nats_server.url, tenant="acme")
    for k in range(8):
        await announce_raw(conn, "acme", "svc", _inst(f"s{k}", k + 1))
    agg = Aggregator(await conn_factory(nats_server.url), settings_for(nats_server.url))
    agg.follower.verify_timeout = 1.0
    spoiled = _lossy(agg, drop_keys={"acme.svc.s2", "acme.svc.s6"})  # its first load comes without two keys
    task = asyncio.create_task(agg.run())
    try:
        with anyio.fail_after(20):
            await agg.ready.wait()
        assert spoiled[0] == 1 and agg.metrics.get("incomplete_loads") == 1
        assert view_content(agg) == view_content(first) == await kv_content(conn, first.settings.bucket)
    finally:
        task.cancel()
        with anyio.CancelScope(shield=True):
            try:
                await task
            except asyncio.CancelledError:
                pass
