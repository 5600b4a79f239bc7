"""Operator mode end to end: a tenant announces, resolves, watches and keeps a durable change stream in its own
account; removal and rotation cut its open connections; quotas are the server's."""

from __future__ import annotations

import pytest

from bus.announce import announce
from bus.client import resolve

pytestmark = pytest.mark.integration


async def test_a_tenant_announces_and_resolves_through_its_imports(operator_system) -> None:
    acme = await operator_system.tenant("acme")
    assert acme.tenant == "acme"
    async with announce(acme, "web", address="10.0.0.1", port=80) as reg:
        assert [i.id for i in (await resolve(acme, "web")).instances] == [reg.id]
