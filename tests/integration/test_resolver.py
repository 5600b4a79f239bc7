"""The client-side resolver against a real nats-server and aggregator: the cache follows the view, every strategy
picks as described, and a stopped server leaves a stale but serving cache that recovers after a restart."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest

from bus.announce import Registration, announce
from bus.client import request
from bus.codec import encode
from bus.connection import Connection
from bus.errors import BadRequest, InvalidName, NoAggregator, NoInstances, Timeout
from bus.models import AnnounceAck, Bye, Instance
from bus.resolver import resolver
from services.natsserver import NatsServer
from tests.conftest import eventually
from tests.helpers import announce_raw

pytestmark = pytest.mark.integration


async def put(
    conn: Connection, service: str, iid: str, seq: int = 1, timeout: float = 2.0, **fields: Any
) -> Instance:
    """Announce (or update, with a higher ``seq``) one instance by a raw request, as any client could."""
    fields.setdefault("address", "10.0.0.1")
    fields.setdefault("port", 80)
    fields.setdefault("ttl", 60.0)
    inst = Instance(id=iid, seq=seq, **fields)
    ack = await announce_raw(conn, service, inst, timeout=timeout)
    assert ack.changed
    return inst


async def bye(conn: Connection, service: str, iid: str) -> None:
    await request(conn, conn.subjects.bye("acme", service), encode(Bye(id=iid)), AnnounceAck)


async def _announce_many(stack: AsyncExitStack, conn: Connection, service: str, specs: list[dict[str, Any]]
                         ) -> list[Registration]:
    regs = []
    for n, spec in enumerate(specs):
        spec.setdefault("address", f"10.0.0.{n + 1}")
        spec.setdefault("port", 8000 + n)
        regs.append(await stack.enter_async_context(announce(conn, service, ttl=30, **spec)))
    return regs


def _ids(instances: Any) -> set[str]:
    return {i.id for i in instances}


async def test_cache_follows_adds_updates_and_removals(aggregator: Any, client: Connection) -> None:
    first = await put(client, "billing", "first", address="10.0.0.1")
    async with resolver(client, "billing") as r:
        assert _ids(r.candidates) == {"first"}  # from the first list
        assert r.pick().id == "first" and not r.stale

        await put(client, "billing", "second", address="10.0.0.2")
        await eventually(lambda: _ids(r.candidates) == {"first", "second"})

        await put(client, "billing", "second", seq=2, address="10.0.0.2", weight=7, tags=("v2",))
        await eventually(lambda: any(i.id == "second" and i.weight == 7 for i in r.candidates))

        await put(client, "billing", "first", seq=first.seq + 1, address="10.0.0.1", status="critical")
        await eventually(lambda: _ids(r.candidates) == {"second"})  # filtered out by the default status filter
        assert {r.pick().id for _ in range(10)} == {"second"}

        await bye(client, "billing", "first")
        await bye(client, "billing", "second")
        await eventually(lambda: r.candidates == () and r.instances == ())
        with pytest.raises(NoInstances, match="billing"):
            r.pick()
        assert r.revision > 0


async def test_round_robin_takes_each_in_turn(aggregator: Any, client: Connection) -> None:
    async with AsyncExitStack() as stack:
        regs = await _announce_many(stack, client, "rr", [{}, {}, {}])
        async with resolver(client, "rr", strategy="round_robin") as r:
            await eventually(lambda: len(r.candidates) == 3)
            picks = [r.pick().id for _ in range(300)]
    for start in range(0, 300, 3):
        assert set(picks[start:start + 3]) == _ids(reg.instance for reg in regs)
    assert set(Counter(picks).values()) == {100}


async def test_random_reaches_every_instance(aggregator: Any, client: Connection) -> None:
    async with AsyncExitStack() as stack:
        await _announce_many(stack, client, "rnd", [{}, {}, {}])
        async with resolver(client, "rnd", strategy="random", seed=7) as r:
            await eventually(lambda: len(r.candidates) == 3)
            counts = Counter(r.pick().id for _ in range(6000))
    assert len(counts) == 3
    assert all(1700 < c < 2300 for c in counts.values()), counts


async def test_weighted_follows_the_weights(aggregator: Any, client: Connection) -> None:
    async with AsyncExitStack() as stack:
        regs = await _announce_many(stack, client, "wtd", [{"weight": 100}, {"weight": 300}, {"weight": 600}])
        async with resolver(client, "wtd", strategy="weighted", seed=11) as r:
            await eventually(lambda: len(r.candidates) == 3)
            n = 30_000
            counts = Counter(r.pick().id for _ in range(n))
            for reg, share in zip(regs, (0.1, 0.3, 0.6), strict=True):
                assert abs(counts[reg.id] / n - share) < 0.02, counts

            await regs[0].update(weight=1000)  # a weight change reaches the distribution
            await eventually(lambda: any(i.weight == 1000 for i in r.candidates))
            counts = Counter(r.pick().id for _ in range(n))
            assert abs(counts[regs[0].id] / n - 1000 / 1900) < 0.02, counts


async def test_least_outstanding_prefers_idle_instances(aggregator: Any, client: Connection) -> None:
    async with AsyncExitStack() as stack:
        await _announce_many(stack, client, "lo", [{}, {}, {}])
        async with resolver(client, "lo", strategy="least_outstanding") as r:
            await eventually(lambda: len(r.candidates) == 3)
            a = r.lease()
            b = r.lease()
            c = r.lease()
            assert len({a.instance.id, b.instance.id, c.instance.id}) == 3  # three calls, three instances
            b.release()
            assert {r.pick().id for _ in range(5)} == {b.instance.id}  # the only idle one
            with r.lease() as busy:
                assert busy == b.instance
                assert r.outstanding(busy.id) == 1
                async with r.lease() as next_one:  # all have one call now: any, but not a second on busy first
                    assert next_one.id != busy.id and r.outstanding(next_one.id) == 2
            assert r.outstanding(b.instance.id) == 0
            a.release()
            c.release()
            assert all(r.outstanding(i.id) == 0 for i in r.candidates)


async def test_zone_affinity_and_fallback(aggregator: Any, client: Connection) -> None:
    await put(client, "zoned", "far", zone="us-1")
    await put(client, "zoned", "near1", zone="eu-1")
    await put(client, "zoned", "near2", zone="eu-1")
    async with resolver(client, "zoned", prefer_zone="eu-1") as r:
        assert len(r.instances) == 3
        assert _ids(r.candidates) == {"near1", "near2"}
        assert {r.pick().id for _ in range(20)} == {"near1", "near2"}

        await bye(client, "zoned", "near1")
        await bye(client, "zoned", "near2")  # the preferred zone empties: fall back to the others
        await eventually(lambda: _ids(r.candidates) == {"far"})
        assert r.pick().id == "far"

        await put(client, "zoned", "back", zone="eu-1")
        await eventually(lambda: _ids(r.candidates) == {"back"})


async def test_filters_tags_zone_and_status(aggregator: Any, client: Connection) -> None:
    async with AsyncExitStack() as stack:
        a, b, c = await _announce_many(stack, client, "flt", [
            {"tags": ["v2", "gpu"], "zone": "z1"}, {"tags": ["v2"], "zone": "z2"}, {"tags": ["v1"], "zone": "z1"},
        ])
        await c.update(status="maintenance")
        async with resolver(client, "flt", tags=["v2"]) as by_tag, \
                resolver(client, "flt", zone="z1") as by_zone, \
                resolver(client, "flt", zone="z1", status=["passing", "maintenance"]) as with_maint:
            await eventually(lambda: _ids(by_tag.candidates) == {a.id, b.id})
            await eventually(lambda: _ids(by_zone.candidates) == {a.id})
            await eventually(lambda: _ids(with_maint.candidates) == {a.id, c.id})


async def test_caller_errors_pass_through_unwrapped(aggregator: Any, client: Connection) -> None:
    with pytest.raises(KeyError, match="mine"):
        async with resolver(client, "anything"):
            raise KeyError("mine")


async def test_bad_arguments_are_refused_before_anything_is_sent(aggregator: Any, client: Connection) -> None:
    with pytest.raises(BadRequest, match="unknown strategy"):
        async with resolver(client, "svc", strategy="fastest"):
            pass
    with pytest.raises(InvalidName):
        async with resolver(client, "Not_A_Label"):
            pass
    with pytest.raises(BadRequest, match="status"):
        async with resolver(client, "svc", status=["sleepy"]):
            pass


async def test_start_without_aggregator_fails_clearly(nats_server: NatsServer, conn_factory: Callable[..., Any]
                                                      ) -> None:
    conn = await conn_factory(nats_server.url, tenant="acme")
    with pytest.raises(NoAggregator, match="aggregator"):
        async with resolver(conn, "billing", start_timeout=0.3):
            pass


async def test_stale_while_the_server_is_down_then_recovers(
    fresh_server: NatsServer, start_aggregator: Callable[..., Any], conn_factory: Callable[..., Any]
) -> None:
    await start_aggregator(fresh_server.url)
    conn = await conn_factory(fresh_server.url, tenant="acme")
    await put(conn, "api", "a")
    await put(conn, "api", "b")
    async with resolver(conn, "api", start_timeout=10) as r:
        assert _ids(r.candidates) == {"a", "b"}
        assert not r.stale and r.stale_for == 0.0

        fresh_server.stop()
        await eventually(lambda: r.stale)
        assert {r.pick().id for _ in range(10)} == {"a", "b"}  # the last good view
        with r.lease() as inst:
            assert inst.id in {"a", "b"}
        await eventually(lambda: r.stale_for > 0.05)

        fresh_server.start()  # same port, same data dir
        await eventually(lambda: not r.stale, timeout=20)
        assert r.stale_for == 0.0

        await eventually(lambda: _announced(conn, "api", "late"), timeout=20)
        await eventually(lambda: "late" in _ids(r.candidates), timeout=20)
        assert _ids(r.candidates) == {"a", "b", "late"}


async def _announced(conn: Connection, service: str, iid: str) -> bool:
    """Announce ``iid`` once the aggregator answers again (False while it does not)."""
    try:
        await put(conn, service, iid, timeout=1.0)
    except (NoAggregator, Timeout):
        return False
    return True


async def test_stale_while_no_aggregator_answers_a_relist(
    nats_server: NatsServer, start_aggregator: Callable[..., Any], conn_factory: Callable[..., Any]
) -> None:
    agg = await start_aggregator(nats_server.url)
    conn = await conn_factory(nats_server.url, tenant="acme")
    await put(conn, "api", "a")
    async with resolver(conn, "api", resync_interval=0.1, timeout=0.5) as r:
        assert not r.stale
        await agg.stop()
        await eventually(lambda: r.stale)  # the next periodic relist finds nobody
        assert r.pick().id == "a"
        await start_aggregator(nats_server.url)
        await eventually(lambda: not r.stale)
        assert r.pick().id == "a"
