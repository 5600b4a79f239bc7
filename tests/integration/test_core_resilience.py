"""Failures: aggregator restarts, two aggregators at once, NATS server restarts, a node of a cluster dying."""

from __future__ import annotations

import anyio
import pytest

from bus import codec
from bus.client import resolve
from bus.models import AnnounceAck, Bye, ChangeEvent, Instance
from bus.watch import watch
from tests.conftest import eventually, wait_jetstream
from tests.faults import ManualClock, kv_content, swept, view_content
from tests.helpers import announce_raw

pytestmark = pytest.mark.integration


async def _raw_announce(conn, service: str, inst: Instance) -> AnnounceAck:
    return await announce_raw(conn, service, inst)


async def test_aggregator_restart_keeps_the_view_and_gives_grace(nats_server, start_aggregator, conn_factory):
    conn = await conn_factory(nats_server.url, tenant="acme")
    first = await start_aggregator(nats_server.url)
    # owners that never heartbeat: one long-lived, one with a short ttl
    await _raw_announce(conn, "db", Instance(id="long", address="10.0.0.1", port=5432, ttl=300, seq=1))
    await _raw_announce(conn, "db", Instance(id="short", address="10.0.0.2", port=5432, ttl=3, seq=1))
    await first.stop()

    clock = ManualClock()
    second = await start_aggregator(nats_server.url, clock=clock)
    # loaded from the KV: both still there right after the restart (one ttl of grace for the short one)
    ids = {i.id for i in (await resolve(conn, "db")).instances}
    assert ids == {"long", "short"}
    clock.advance(2.9)
    await swept(second.agg)
    assert await _ids(conn, "db", {"long", "short"})  # the grace is one ttl from the restart
    clock.advance(0.2)  # ...after which the silent short-ttl one is expired, the long one stays
    await eventually(lambda: _ids(conn, "db", {"long"}))
    assert second.agg.metrics.get("expired", "acme") == 1


async def _ids(conn, service: str, expected: set[str]) -> bool:
    return {i.id for i in (await resolve(conn, service)).instances} == expected


async def test_two_aggregators_make_exactly_one_event_per_change(nats_server, start_aggregator, conn_factory):
    conn = await conn_factory(nats_server.url, tenant="acme")
    clock = ManualClock()  # one clock for both: they see the same silence
    # every remaining instance goes silent at once on purpose: self-preservation off, to see the expiries
    a = await start_aggregator(nats_server.url, clock=clock, preservation_share=1.0)
    b = await start_aggregator(nats_server.url, clock=clock, preservation_share=1.0)
    events: list[bytes] = []

    async def collect(msg) -> None:
        events.append(msg.data)

    sub = await conn.nc.subscribe(conn.subjects.changes("acme"), cb=collect)
    n = 40
    async with anyio.create_task_group() as tg:
        for k in range(n):
            inst = Instance(id=f"i{k}", address="10.0.1.1", port=1000 + k, ttl=3, seq=1)
            tg.start_soon(_raw_announce, conn, "web", inst)
    # the same instances announced again through the other aggregator's queue-group share: no new events
    for k in range(0, n, 2):
        await _raw_announce(conn, "web", Instance(id=f"i{k}", address="10.0.1.1", port=1000 + k, ttl=3, seq=1))
    # half say bye, the other half go silent and expire (both aggregators sweep; one removal each)
    for k in range(0, n, 2):
        await conn.nc.request(conn.subjects.bye("acme", "web"), codec.encode(Bye(id=f"i{k}")), timeout=5)
    await eventually(lambda: a.agg.view.count("acme") == (1, n // 2) and b.agg.view.count("acme") == (1, n // 2))
    clock.advance(3.1)
    await eventually(lambda: len(events) >= 2 * n, timeout=10)
    # nothing left to publish by either (a duplicate would have been published by now), and delivered to us
    await eventually(lambda: all(x.agg.events.unstored == 0 and not x.agg.events.pending for x in (a, b)))
    await conn.nc.flush()
    await sub.unsubscribe()
    decoded = [codec.decode(e, ChangeEvent) for e in events]
    assert len(decoded) == 2 * n
    assert len({e.revision for e in decoded}) == 2 * n
    per_instance: dict[str, list[str]] = {}
    for e in decoded:
        per_instance.setdefault(e.instance.id, []).append(f"{e.type.value}/{e.reason.value}")
    assert all(v in (["added/announce", "removed/bye"], ["added/announce", "removed/expired"])
               for v in per_instance.values()), per_instance
    expired = a.agg.metrics.get("expired", "acme") + b.agg.metrics.get("expired", "acme")
    assert expired == n // 2
    # the durable stream holds each event once too
    info = await conn.js.stream_info(f"{conn.subjects.prefix}_changes_acme")
    assert info.state.messages == 2 * n


async def test_watcher_across_a_server_restart_misses_nothing(fresh_server, start_aggregator, conn_factory):
    agg_conn_url = fresh_server.url
    await start_aggregator(agg_conn_url)
    writer = await conn_factory(agg_conn_url, tenant="acme")
    reader = await conn_factory(agg_conn_url, tenant="acme")
    await _raw_announce(writer, "api", Instance(id="before", address="10.0.2.1", port=1, ttl=300, seq=1))
    async with watch(reader, "api") as w:
        assert set(w.view.get("api", {})) == {"before"}
        lists = w.lists
        fresh_server.stop()
        fresh_server.start()
        # as soon as the aggregator answers again, change the view
        await eventually(lambda: _try(_raw_announce(writer, "api", Instance(
            id="after", address="10.0.2.2", port=1, ttl=300, seq=1))), timeout=20)
        await writer.nc.request(writer.subjects.bye("acme", "api"), codec.encode(Bye(id="before")), timeout=5)
        seen: dict[str, str] = {}
        with anyio.fail_after(20):
            while seen.get("after") != "added" or seen.get("before") != "removed":
                ev = await w.next()
                seen[ev.instance.id] = ev.type.value
        assert set(w.view.get("api", {})) == {"after"}
        assert w.lists > lists  # it listed again after the reconnect


async def _try(coro) -> bool:
    try:
        await coro
        return True
    except Exception:
        return False


@pytest.mark.cluster
async def test_cluster_node_death_loses_nothing(nats_cluster, start_aggregator, conn_factory):
    """R3 view on a 3-node cluster, two aggregators; nodes are killed and restarted one after the other (the
    watcher's first) while instances keep being announced: the watcher reconnects, relists, and ends with exactly
    the KV's content, having yielded every add, and every aggregator's view equals the KV (none served or kept a
    partial reload)."""
    urls = nats_cluster.urls
    a = await start_aggregator(",".join(urls), replicas=3)
    b = await start_aggregator(",".join(urls[::-1]), replicas=3)
    writer = await conn_factory(",".join(urls), tenant="acme")
    reader = await conn_factory(urls[2], tenant="acme")
    added: set[str] = set()
    faults = {8: ("kill", 2), 14: ("start", 2), 20: ("kill", 0), 26: ("start", 0), 32: ("kill", 1),
              38: ("start", 1)}
    async with watch(reader, "svc") as w:

        async def consume() -> None:
            async for ev in w:
                if ev.type == "added":
                    added.add(ev.instance.id)

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            for k in range(44):
                op, node = faults.get(k, ("", 0))
                if op == "kill":
                    nats_cluster.nodes[node].kill()
                elif op == "start":
                    nats_cluster.nodes[node].start()
                    await wait_jetstream(nats_cluster.nodes[node].url)
                inst = Instance(id=f"n{k}", address="10.0.3.1", port=2000 + k, ttl=300, seq=1)
                await eventually(lambda inst=inst: _try(_raw_announce(writer, "svc", inst)), timeout=30)
            expected = {f"n{k}" for k in range(44)}
            try:
                await eventually(lambda: added >= expected and set(w.view.get("svc", {})) == expected, timeout=30)
            except TimeoutError:
                kv = {i for _, _, i in await kv_content(writer, a.agg.settings.bucket)}
                raise AssertionError(f"never added: {sorted(expected - added)}; the watcher's view lacks "
                                     f"{sorted(expected - set(w.view.get('svc', {})))}, has extra "
                                     f"{sorted(set(w.view.get('svc', {})) - expected)}; the KV lacks "
                                     f"{sorted(expected - kv)}; watcher lists {w.lists}") from None
            tg.cancel_scope.cancel()

    async def converged() -> bool:
        kv = await kv_content(writer, a.agg.settings.bucket)
        return {i for _, _, i in kv} == expected and view_content(a.agg) == kv == view_content(b.agg)

    await eventually(converged, timeout=30, interval=0.2)
    assert {i.id for i in (await resolve(writer, "svc")).instances} == expected


@pytest.mark.cluster
async def test_cluster_aggregator_node_death_keeps_registrations(nats_cluster, start_aggregator, conn_factory):
    """Two aggregators on a 3-node cluster (R3 view); the node under one of them is killed while services keep
    registering through bus.announce: every registration ends acknowledged and in the view, none lost."""
    from bus.announce import announce

    urls = nats_cluster.urls
    a = await start_aggregator(",".join(urls), replicas=3)
    await start_aggregator(",".join(urls), replicas=3)
    victim = next(i for i, n in enumerate(nats_cluster.nodes) if n.port == a.agg.conn.nc.connected_url.port)
    survivor_url = next(u for i, u in enumerate(urls) if i != victim)
    client = await conn_factory(survivor_url, tenant="acme")
    registered: list[str] = []
    async with anyio.create_task_group() as tg:

        async def service(k: int) -> None:
            async with announce(client, "orders", address="10.0.4.1", port=3000 + k, ttl=30) as reg:
                registered.append(reg.id)
                await anyio.sleep_forever()

        for k in range(10):
            tg.start_soon(service, k)
        await eventually(lambda: len(registered) == 10, timeout=20)
        nats_cluster.nodes[victim].kill()
        for k in range(10, 20):
            tg.start_soon(service, k)
        await eventually(lambda: len(registered) == 20, timeout=40)
        await eventually(lambda: _ids(client, "orders", set(registered)), timeout=30)
        tg.cancel_scope.cancel()


async def test_a_flush_given_up_on_leaves_the_connection_reading(aggregator, client):
    """A flush that times out or is cancelled leaves its PING's future behind in nats-py; when the PONG comes, nats-py
    set the result of that cancelled future, and the InvalidStateError ended the connection's read loop for good:
    every later request timed out (seen as a traceback when ``disco up`` stopped mid-flush)."""
    import nats.errors

    gave_up = 0
    for _ in range(20):
        try:
            await client.nc.flush(timeout=0.000001)   # gives up before any PONG can come back
        except nats.errors.TimeoutError:
            gave_up += 1
        with anyio.move_on_after(0):                  # cancelled while waiting for its PONG
            await client.nc.flush()
    assert gave_up
    await client.nc.flush(timeout=2)                   # the PONGs of the abandoned flushes were read
    inst = Instance(id="after", address="10.0.0.9", port=1, ttl=60, seq=1)
    assert (await _raw_announce(client, "svc", inst)).changed
    assert [i.id for i in (await resolve(client, "svc")).instances] == ["after"]
