"""Self-preservation: a mass silence pauses expiry for that tenant only; it resumes when heartbeats return, and a
real mass death is still expired after the configured pause."""

from __future__ import annotations

import anyio
import pytest

from bus import codec
from bus.client import resolve
from bus.models import AnnounceAck, Heartbeat, Instance
from tests.conftest import eventually

pytestmark = pytest.mark.integration

TTL = 1.0


async def _register(conn, tenant: str, ids: list[str]) -> None:
    for iid in ids:
        inst = Instance(id=iid, address="10.0.0.1", port=1, ttl=TTL, seq=1)
        msg = await conn.nc.request(conn.subjects.announce(tenant, "svc"), codec.encode(inst), timeout=5)
        codec.decode_reply(msg.data, AnnounceAck)


async def _beat(conn, tenant: str, ids: list[str]) -> None:
    await conn.nc.publish(conn.subjects.hb(tenant, "svc"), codec.encode(Heartbeat(ids=tuple(ids))))


async def _ids(conn, tenant: str) -> set[str]:
    return {i.id for i in (await resolve(conn, "svc", tenant=tenant)).instances}


async def test_mass_silence_pauses_then_resumes_when_heartbeats_return(aggregator, client):
    agg = aggregator.agg
    ids = [f"p{k}" for k in range(6)]
    await _register(client, "acme", ids)
    await _register(client, "quiet", ["lone"])  # another tenant, heartbeating normally, is unaffected
    # every acme instance goes silent at once; "quiet" keeps beating
    with anyio.fail_after(10):
        while not agg.metrics.get("self_preservation", "acme"):
            await _beat(client, "quiet", ["lone"])
            await anyio.sleep(TTL / 3)
    assert "acme" in agg.admission.paused
    for _ in range(6):  # two ttls paused: nobody of acme expired, and quiet's instance is fine
        await _beat(client, "quiet", ["lone"])
        await anyio.sleep(TTL / 3)
    assert await _ids(client, "acme") == set(ids)
    assert agg.metrics.get("expired", "acme") == 0
    # heartbeats return for four of them: the pause ends and only the two really dead ones are expired
    alive = ids[:4]

    async def back() -> bool:
        await _beat(client, "acme", alive)
        await _beat(client, "quiet", ["lone"])
        return await _ids(client, "acme") == set(alive)

    await eventually(back, timeout=10, interval=TTL / 3)
    assert "acme" not in agg.admission.paused
    assert agg.metrics.get("expired", "acme") == 2
    assert await _ids(client, "quiet") == {"lone"}
    assert agg.metrics.get("expired", "quiet") == 0


async def test_a_real_mass_death_is_expired_in_the_end(nats_server, start_aggregator, conn_factory):
    running = await start_aggregator(nats_server.url, preservation_max_pause=1.5)
    conn = await conn_factory(nats_server.url, tenant="acme")
    ids = [f"d{k}" for k in range(5)]
    await _register(conn, "acme", ids)
    await eventually(lambda: running.agg.metrics.get("self_preservation", "acme") == 1, timeout=10)
    assert await _ids(conn, "acme") == set(ids)  # paused first...
    await eventually(lambda: _empty(conn), timeout=10)  # ...expired after the pause
    assert running.agg.metrics.get("mass_expiry", "acme") == 1
    assert running.agg.metrics.get("expired", "acme") == 5


async def _empty(conn) -> bool:
    return not await _ids(conn, "acme")


async def test_a_few_deaths_are_not_a_mass(aggregator, client):
    ids = [f"f{k}" for k in range(8)]
    await _register(client, "acme", ids)
    alive = ids[2:]

    async def settled() -> bool:
        await _beat(client, "acme", alive)
        return await _ids(client, "acme") == set(alive)

    await eventually(settled, timeout=10, interval=TTL / 3)
    assert aggregator.agg.metrics.get("self_preservation", "acme") == 0
