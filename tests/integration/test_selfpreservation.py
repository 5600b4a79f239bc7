"""Self-preservation: a mass silence pauses expiry for that tenant only; it resumes when heartbeats return, and a
real mass death is still expired after the configured pause. The aggregator's liveness clock is the test's
(ManualClock): every case asserts what happens at a given time, not what a loaded machine managed meanwhile."""

from __future__ import annotations

import pytest

from bus.client import resolve
from bus.models import Instance
from tests.conftest import eventually
from tests.faults import ManualClock, announce_raw, beat, swept

pytestmark = pytest.mark.integration

TTL = 3.0


async def _register(conn, tenant: str, ids: list[str]) -> None:
    for iid in ids:
        await announce_raw(conn, tenant, "svc", Instance(id=iid, address="10.0.0.1", port=1, ttl=TTL, seq=1))


async def _ids(conn, tenant: str) -> set[str]:
    return {i.id for i in (await resolve(conn, "svc", tenant=tenant)).instances}


async def _step(agg, clock: ManualClock, conn, beats: dict[str, list[str]], seconds: float = 1.0) -> None:
    """Move the clock, deliver the given heartbeats (tenant -> ids), and let a sweep see it."""
    clock.advance(seconds)
    for tenant, ids in beats.items():
        await beat(agg, conn, tenant, "svc", ids)
    await swept(agg)


async def test_mass_silence_pauses_then_resumes_when_heartbeats_return(nats_server, start_aggregator, client):
    clock = ManualClock()
    agg = (await start_aggregator(nats_server.url, clock=clock)).agg
    ids = [f"p{k}" for k in range(6)]
    await _register(client, "acme", ids)
    await _register(client, "quiet", ["lone"])  # another tenant, heartbeating normally, is unaffected
    for _ in range(4):  # every acme instance goes silent at once; "quiet" keeps beating
        await _step(agg, clock, client, {"quiet": ["lone"]})
    assert agg.metrics.get("self_preservation", "acme") == 1
    assert "acme" in agg.admission.paused
    for _ in range(6):  # two more ttls paused: nobody of acme expired, and quiet's instance is fine
        await _step(agg, clock, client, {"quiet": ["lone"]})
    assert await _ids(client, "acme") == set(ids)
    assert agg.metrics.get("expired", "acme") == 0
    # heartbeats return for four of them: the pause ends and only the two really dead ones are expired
    alive = ids[:4]
    await _step(agg, clock, client, {"acme": alive, "quiet": ["lone"]})
    await eventually(lambda: agg.metrics.get("expired", "acme") == 2)
    assert await _ids(client, "acme") == set(alive)
    assert "acme" not in agg.admission.paused
    assert await _ids(client, "quiet") == {"lone"}
    assert agg.metrics.get("expired", "quiet") == 0
    assert agg.metrics.get("self_preservation", "quiet") == 0


async def test_a_real_mass_death_is_expired_in_the_end(nats_server, start_aggregator, conn_factory):
    clock = ManualClock()
    agg = (await start_aggregator(nats_server.url, clock=clock, preservation_max_pause=10.0)).agg
    conn = await conn_factory(nats_server.url, tenant="acme")
    ids = [f"d{k}" for k in range(5)]
    await _register(conn, "acme", ids)
    await _step(agg, clock, conn, {}, TTL + 0.1)
    assert agg.metrics.get("self_preservation", "acme") == 1
    await _step(agg, clock, conn, {}, 9.8)  # paused, not yet for max_pause
    assert await _ids(conn, "acme") == set(ids)
    assert agg.metrics.get("expired", "acme") == 0
    await _step(agg, clock, conn, {}, 0.3)  # ...expired once the pause has lasted max_pause
    await eventually(lambda: agg.metrics.get("expired", "acme") == 5)
    assert await _ids(conn, "acme") == set()
    assert agg.metrics.get("mass_expiry", "acme") == 1


async def test_a_few_deaths_are_not_a_mass(nats_server, start_aggregator, client):
    clock = ManualClock()
    agg = (await start_aggregator(nats_server.url, clock=clock)).agg
    ids = [f"f{k}" for k in range(8)]
    await _register(client, "acme", ids)
    alive = ids[2:]
    for _ in range(4):
        await _step(agg, clock, client, {"acme": alive})
    await eventually(lambda: agg.metrics.get("expired", "acme") == 2)
    assert await _ids(client, "acme") == set(alive)
    assert agg.metrics.get("self_preservation", "acme") == 0
