"""The core loop end to end on a real nats-server: announce, heartbeat, update, resolve, snapshot, bye, expiry."""

from __future__ import annotations

import time

import anyio
import pytest

from bus import codec
from bus.announce import announce
from bus.client import resolve, snapshot
from bus.errors import BadRequest, InvalidName, NoAggregator, NoInstances
from bus.models import AnnounceAck, Bye, ChangeEvent, Instance, Status
from bus.watch import watch
from tests.conftest import eventually
from tests.faults import ManualClock, announce_raw, beat, stream_events, swept

pytestmark = pytest.mark.integration


async def test_full_lifecycle_with_filters_and_update(aggregator, client):
    async with watch(client, "billing") as w:
        async with (
            announce(client, "billing", address="10.0.0.1", port=8080, tags=["v2", "eu"], zone="a", ttl=5) as one,
            announce(client, "billing", address="10.0.0.2", port=8080, tags=["v1"], zone="b", ttl=5) as two,
        ):
            assert {i.id for i in (await resolve(client, "billing")).instances} == {one.id, two.id}
            assert [i.id for i in (await resolve(client, "billing", tags=["v2"])).instances] == [one.id]
            assert [i.id for i in (await resolve(client, "billing", zone="b")).instances] == [two.id]
            assert (await resolve(client, "billing", tags=["v2", "v1"])).instances == ()

            await two.update(status=Status.critical, meta={"build": "42"})
            healthy = await resolve(client, "billing")
            assert [i.id for i in healthy.instances] == [one.id]  # critical is filtered out by default
            everything = await resolve(client, "billing", status=list(Status))
            changed = next(i for i in everything.instances if i.id == two.id)
            assert changed.status is Status.critical and changed.meta == {"build": "42"}

            snap = await snapshot(client)
            assert {i.id for i in snap.services["billing"]} == {one.id, two.id}
            assert snap.revision >= 1

            kinds = [(await w.next()).type for _ in range(3)]
            assert sorted(kinds) == ["added", "added", "updated"]
        gone = [await w.next() for _ in range(2)]
        assert {e.type for e in gone} == {"removed"} and {e.reason for e in gone} == {"bye"}
    with pytest.raises(NoInstances):
        await resolve(client, "billing", require=True)


async def test_revisions_rise_and_events_carry_the_full_record(aggregator, client):
    async with watch(client, "search") as w, announce(client, "search", address="h1", port=1, meta={"k": "v"}) as r:
        ev = await w.next()
        assert isinstance(ev, ChangeEvent)
        assert ev.tenant == "acme" and ev.service == "search" and ev.reason == "announce"
        assert ev.instance.meta == {"k": "v"} and ev.instance.address == "h1"
        assert ev.revision == r.revision
        await r.update(weight=7)
        ev2 = await w.next()
        assert ev2.revision > ev.revision and ev2.instance.weight == 7


@pytest.fixture
async def clocked(nats_server, start_aggregator):
    """An aggregator whose liveness clock moves only when the test advances it."""
    clock = ManualClock()
    running = await start_aggregator(nats_server.url, clock=clock)
    return running.agg, clock


async def test_expiry_after_ttl_when_heartbeats_stop(clocked, client):
    """A silent instance is removed with reason `expired` once its ttl has passed, and not before."""
    agg, clock = clocked
    inst = Instance(id="silent-1", address="10.1.1.1", port=6379, ttl=3.0, seq=1)
    async with watch(client, "cache") as w:
        assert (await announce_raw(client, "acme", "cache", inst)).changed
        assert (await w.next()).type == "added"
        clock.advance(2.9)
        await swept(agg)
        assert [i.id for i in (await resolve(client, "cache")).instances] == ["silent-1"]
        assert agg.metrics.get("expired", "acme") == 0
        clock.advance(0.2)  # past the ttl
        with anyio.fail_after(10):
            ev = await w.next()
        assert ev.type == "removed" and ev.reason == "expired" and ev.instance.id == "silent-1"
    assert agg.metrics.get("expired", "acme") == 1


async def test_heartbeats_keep_an_instance_alive_past_its_ttl(clocked, client):
    agg, clock = clocked
    await announce_raw(client, "acme", "cache", Instance(id="beating", address="10.1.1.2", port=1, ttl=3.0, seq=1))
    for _ in range(4):  # 8 s of clock, a heartbeat every 2 s
        clock.advance(2.0)
        await beat(agg, client, "acme", "cache", ["beating"])
        await swept(agg)
    assert [i.id for i in (await resolve(client, "cache")).instances] == ["beating"]
    assert agg.metrics.get("expired", "acme") == 0
    clock.advance(3.1)  # heartbeats stop: expired one ttl after the last
    await eventually(lambda: _no_instances(client, "cache"))
    assert agg.metrics.get("expired", "acme") == 1


async def _no_instances(conn, service: str) -> bool:
    return not (await resolve(conn, service)).instances


async def test_heartbeat_status_changes_are_written_and_published(aggregator, client):
    """A heartbeat carrying a new status changes the instance (an `updated`/`health` event); the same status again
    changes nothing; a later one changes it back."""
    agg = aggregator.agg
    inst = Instance(id="h1", address="10.1.2.1", port=1, ttl=300, seq=1)
    async with watch(client, "api") as w:
        await announce_raw(client, "acme", "api", inst)
        assert (await w.next()).type == "added"
        await beat(agg, client, "acme", "api", ["h1"], status=Status.critical)
        with anyio.fail_after(10):
            ev = await w.next()
        assert (ev.type, ev.reason, ev.instance.status) == ("updated", "health", Status.critical)
        assert (await resolve(client, "api")).instances == ()  # critical is filtered out by default
        revision = ev.revision
        await beat(agg, client, "acme", "api", ["h1"], status=Status.critical)  # the same status: no write
        await beat(agg, client, "acme", "api", ["h1"], status=Status.passing)
        with anyio.fail_after(10):
            back = await w.next()
        assert (back.type, back.reason, back.instance.status) == ("updated", "health", Status.passing)
        assert back.revision > revision
        assert [i.id for i in (await resolve(client, "api")).instances] == ["h1"]
    events = await stream_events(client, f"{client.subjects.prefix}_changes_acme")
    assert [(e["type"], e["reason"]) for _, e in events] == [
        ("added", "announce"), ("updated", "health"), ("updated", "health")]


async def test_heartbeat_of_unknown_instance_triggers_reannounce(aggregator, client):
    async with announce(client, "orders", address="10.2.0.1", port=80, ttl=3.0) as reg:
        first = reg.announces
        # remove it behind the instance's back (as a lost view would): the next heartbeat gets a ctl reannounce
        raw = await client.nc.request(
            client.subjects.bye("acme", "orders"), codec.encode(Bye(id=reg.id)), timeout=2
        )
        assert codec.decode_reply(raw.data, AnnounceAck).changed
        await eventually(lambda: reg.announces > first, timeout=5)
        await eventually(lambda: _has_instances(client, "orders"), timeout=5)
    assert aggregator.agg.metrics.get("ctl_reannounce", "acme") >= 1


async def _has_instances(conn, service: str) -> bool:
    return bool((await resolve(conn, service)).instances)


async def test_bye_removes_at_once_and_a_second_bye_changes_nothing(aggregator, client):
    async with watch(client, "pay") as w:
        async with announce(client, "pay", address="10.3.0.1", port=1, ttl=300):
            await w.next()
        with anyio.fail_after(2):
            ev = await w.next()
        assert ev.reason == "bye"
        raw = await client.nc.request(client.subjects.bye("acme", "pay"), codec.encode(Bye(id="nope")), timeout=2)
        assert codec.decode_reply(raw.data, AnnounceAck).changed is False


async def test_bye_also_on_cancellation(aggregator, client):
    async with watch(client, "pay") as w:
        with anyio.CancelScope() as scope:
            async with announce(client, "pay", address="10.3.0.2", port=1, ttl=300):
                await w.next()
                scope.cancel()
                await anyio.sleep_forever()
        with anyio.fail_after(2):
            ev = await w.next()
        assert ev.type == "removed" and ev.reason == "bye"


async def test_duplicate_and_stale_announces_change_nothing(aggregator, client):
    subject = client.subjects.announce("acme", "dup")
    inst = Instance(id="d1", address="10.4.0.1", port=1, seq=10)

    async def send(i: Instance) -> AnnounceAck:
        msg = await client.nc.request(subject, codec.encode(i), timeout=2)
        return codec.decode_reply(msg.data, AnnounceAck)

    first = await send(inst)
    assert first.changed
    assert (await send(inst)).changed is False  # duplicate
    assert (await send(inst.model_copy(update={"seq": 5, "port": 2}))).changed is False  # stale
    assert (await resolve(client, "dup")).instances[0].port == 1
    newer = await send(inst.model_copy(update={"seq": 11, "port": 3}))
    assert newer.changed and newer.revision > first.revision
    assert (await resolve(client, "dup")).instances[0].port == 3


async def test_no_aggregator_fails_at_once(nats_server, conn_factory):
    conn = await conn_factory(nats_server.url, tenant="acme")
    started = time.monotonic()
    with pytest.raises(NoAggregator, match="no aggregator"):
        await resolve(conn, "billing", timeout=5)
    assert time.monotonic() - started < 2.5  # "at once": far from the 5 s timeout


async def test_announce_waits_for_an_aggregator_then_registers(nats_server, conn_factory, start_aggregator):
    conn = await conn_factory(nats_server.url, tenant="acme")
    async with anyio.create_task_group() as tg:
        registered = anyio.Event()

        async def register() -> None:
            async with announce(conn, "late", address="10.5.0.1", port=1):
                registered.set()
                await anyio.sleep_forever()

        tg.start_soon(register)
        await anyio.sleep(0.3)
        assert not registered.is_set()
        await start_aggregator(nats_server.url)
        with anyio.fail_after(10):
            await registered.wait()
        assert len((await resolve(conn, "late")).instances) == 1
        tg.cancel_scope.cancel()


async def test_invalid_input_is_refused_before_sending(client):
    # no aggregator serves this test's prefix: a request that went out would fail as NoAggregator, or an announce
    # would wait for one (cut short at 10 s), instead of the local refusal asserted here
    with anyio.fail_after(10), pytest.raises(InvalidName):
        await resolve(client, "Not_A_Service")
    with pytest.raises(BadRequest, match="port"):
        async with announce(client, "ok", address="10.0.0.1", port=70000):
            pass
    with pytest.raises(InvalidName):
        async with announce(client, "ok", address="10.0.0.1", port=1, instance_id="has space"):
            pass
    with pytest.raises(BadRequest, match="address"):
        async with announce(client, "ok", address="not a host", port=1):
            pass


async def test_agent_style_heartbeat_for_many_ids(clocked, client):
    agg, clock = clocked
    ids = ["m0", "m1", "m2"]
    for n, iid in enumerate(ids):
        await announce_raw(client, "acme", "multi", Instance(id=iid, address="10.6.0.1", port=1000 + n, ttl=3.0,
                                                             seq=1))
    for _ in range(3):  # one heartbeat names all three
        clock.advance(2.0)
        await beat(agg, client, "acme", "multi", ids)
        await swept(agg)
    assert len((await resolve(client, "multi")).instances) == 3
    assert agg.metrics.get("expired", "acme") == 0


async def test_tenants_see_only_their_own_services(aggregator, nats_server, conn_factory):
    acme = await conn_factory(nats_server.url, tenant="acme")
    globex = await conn_factory(nats_server.url, tenant="globex")
    async with (
        watch(acme, include_initial=True) as acme_watch,
        announce(globex, "billing", address="10.9.0.1", port=1) as theirs,
        announce(acme, "billing", address="10.8.0.1", port=1) as ours,
    ):
        assert [i.id for i in (await resolve(acme, "billing")).instances] == [ours.id]
        assert [i.id for i in (await resolve(globex, "billing")).instances] == [theirs.id]
        assert {i.id for i in (await snapshot(acme)).services["billing"]} == {ours.id}
        ev = await acme_watch.next()
        assert ev.tenant == "acme" and ev.instance.id == ours.id
    assert theirs.id not in {i.id for insts in acme_watch.view.values() for i in insts.values()}


async def test_an_error_in_the_block_comes_out_as_itself(aggregator, client):
    with pytest.raises(KeyError):
        async with watch(client, "x"), announce(client, "x", address="10.0.0.1", port=1):
            raise KeyError("mine")
