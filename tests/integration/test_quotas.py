"""Quotas and rates are checked before any write, answered with their codes, and counted per tenant."""

from __future__ import annotations

import anyio
import pytest

from bus import codec
from bus.announce import announce
from bus.client import resolve
from bus.errors import QuotaExceeded, RateLimited
from bus.models import AnnounceAck, Instance
from services.aggregator.admission import TenantLimits
from tests.helpers import announce_raw, instance

pytestmark = pytest.mark.integration


async def _announce(conn, tenant: str, service: str, iid: str) -> AnnounceAck:
    return await announce_raw(conn, service, instance(iid, port=1), tenant=tenant)


async def test_instance_quota(aggregator, client):
    aggregator.agg.admission.set_limits("acme", TenantLimits(max_instances=3))
    for k in range(3):
        assert (await _announce(client, "acme", "web", f"i{k}")).changed
    with pytest.raises(QuotaExceeded, match="max_instances=3"):
        await _announce(client, "acme", "web", "i3")
    # an update of an existing instance is not a new instance
    inst = Instance(id="i0", address="10.0.0.2", port=1, ttl=60, seq=2)
    msg = await client.nc.request(client.subjects.announce("acme", "web"), codec.encode(inst), timeout=5)
    assert codec.decode_reply(msg.data, AnnounceAck).changed
    # another tenant is not limited by acme's quota
    assert (await _announce(client, "globex", "web", "i3")).changed
    assert aggregator.agg.metrics.get("refused.quota_exceeded", "acme") == 1
    assert len((await resolve(client, "web")).instances) == 3


async def test_concurrent_creates_cannot_overshoot_the_quota(aggregator, client):
    aggregator.agg.admission.set_limits("acme", TenantLimits(max_instances=5))
    results: list[object] = []

    async def one(k: int) -> None:
        try:
            results.append(await _announce(client, "acme", "burst", f"b{k}"))
        except QuotaExceeded as exc:
            results.append(exc)

    async with anyio.create_task_group() as tg:
        for k in range(40):
            tg.start_soon(one, k)
    assert sum(isinstance(r, AnnounceAck) for r in results) == 5
    assert sum(isinstance(r, QuotaExceeded) for r in results) == 35
    assert len((await resolve(client, "burst")).instances) == 5


async def test_service_quota(aggregator, client):
    aggregator.agg.admission.set_limits("acme", TenantLimits(max_services=2))
    await _announce(client, "acme", "one", "a")
    await _announce(client, "acme", "two", "b")
    assert (await _announce(client, "acme", "two", "c")).changed  # an existing service takes more instances
    with pytest.raises(QuotaExceeded, match="max_services=2"):
        await _announce(client, "acme", "three", "d")


async def test_announce_rate(aggregator, client):
    now = [1000.0]  # the buckets' time moves only when the test moves it: no refill while it runs
    aggregator.agg.admission.bucket_clock = lambda: now[0]
    aggregator.agg.admission.set_limits("acme", TenantLimits(announce_rate=5))
    outcomes = []
    for k in range(20):
        if k == 10:
            now[0] += 0.5  # two and a half tokens
        try:
            await _announce(client, "acme", "rated", f"r{k}")
            outcomes.append("ok")
        except RateLimited:
            outcomes.append("limited")
    assert outcomes == ["ok"] * 5 + ["limited"] * 5 + ["ok"] * 2 + ["limited"] * 8  # a burst of one second's worth
    assert aggregator.agg.metrics.get("refused.rate_limited", "acme") == 13


async def test_a_rate_limited_registration_retries_until_admitted(aggregator, client):
    aggregator.agg.admission.set_limits("acme", TenantLimits(announce_rate=1))
    async with (
        announce(client, "slow", address="10.0.0.1", port=1),
        announce(client, "slow", address="10.0.0.2", port=1),
        announce(client, "slow", address="10.0.0.3", port=1),
    ):
        assert len((await resolve(client, "slow")).instances) == 3
