"""The tenant registry followed live (``TenantRegistry.follow``), as every aggregator follows tenants' quotas."""

from __future__ import annotations

import anyio
import pytest

from services.tenants import TenantRegistry
from services.tenants.registry import TenantRecord

pytestmark = pytest.mark.integration


def record(name: str, max_instances: int) -> TenantRecord:
    return TenantRecord(name=name, account="A" + "B" * 55, user="U" + "C" * 55, max_instances=max_instances)


async def test_the_first_view_of_a_follow_holds_every_record(client, prefix) -> None:
    """nats-py puts its "nothing more" marker ahead of the entries when they all arrive before its consumer info
    does; a follow that took the marker as the end of the first view yielded a registry with tenants missing (an
    aggregator following quotas lifted theirs until the entries came)."""
    registry = TenantRegistry(client.js, prefix)
    await registry.open()
    names = [f"t{n:02d}" for n in range(40)]
    for n, name in enumerate(names):
        await registry.create(record(name, n + 1))
    await registry.delete("t39")
    firsts = []
    for _ in range(60):
        with anyio.fail_after(10):
            async for first in TenantRegistry(client.js, prefix).follow():
                firsts.append(first)
                break
    assert all(sorted(f) == names[:39] for f in firsts), [len(f) for f in firsts]
    assert all(f["t07"].max_instances == 8 for f in firsts)


async def test_an_empty_registry_is_followed_from_an_empty_view_then_each_change(client, prefix) -> None:
    registry = TenantRegistry(client.js, prefix)
    await registry.open()
    views = []
    with anyio.fail_after(10):
        async for view in TenantRegistry(client.js, prefix).follow():
            views.append(view)
            if len(views) == 1:
                await registry.create(record("acme", 3))
            elif len(views) == 2:
                await registry.delete("acme")
            else:
                break
    assert [sorted(v) for v in views] == [[], ["acme"], []]
