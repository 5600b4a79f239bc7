"""Tenants on a ``disco dns`` listener: each answers from its own view, a tenant not served does not exist there,
``all_tenants`` discovers tenants as they appear, and with the NATS server enforcing tenancy each tenant is
followed with its own credentials."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bus.announce import announce
from bus.connection import connect
from services.dns import DnsSettings, TenantSource
from services.natsserver import NatsServer
from tests.conftest import eventually
from tests.integration.dns_helpers import start_dns

pytestmark = pytest.mark.integration


async def test_two_tenants_on_one_listener_and_one_not_served(nats_server, aggregator, conn_factory, prefix):
    acme = await conn_factory(nats_server.url, tenant="acme")
    beta = await conn_factory(nats_server.url, tenant="beta")
    gamma = await conn_factory(nats_server.url, tenant="gamma")
    async with (
        announce(acme, "billing", address="10.0.0.1", port=80),
        announce(beta, "billing", address="10.0.0.2", port=80),
        announce(beta, "search", address="10.0.0.3", port=80),
        announce(gamma, "billing", address="10.0.0.4", port=80),
        start_dns(nats_server.url, prefix, ["acme", "beta"]) as d,
    ):
        assert await d.addresses("billing.acme.disco") == {"10.0.0.1"}
        assert await d.addresses("billing.beta.disco") == {"10.0.0.2"}
        assert await d.addresses("search.beta.disco") == {"10.0.0.3"}
        assert await d.rcode("search.acme.disco") == "NXDOMAIN"        # beta's service is not acme's
        # gamma has instances in the view, but this listener does not serve it: it does not exist here
        assert await d.rcode("billing.gamma.disco") == "NXDOMAIN"
        assert await d.rcode("gamma.disco", "SOA") == "NXDOMAIN"
        assert await d.rcode("_billing._tcp.gamma.disco", "SRV") == "NXDOMAIN"
        # a change in one tenant reaches that tenant only
        async with announce(beta, "billing", address="10.0.0.5", port=80):
            await d.until("billing.beta.disco", lambda got: got == {"10.0.0.2", "10.0.0.5"})
            assert await d.addresses("billing.acme.disco") == {"10.0.0.1"}


async def test_all_tenants_are_served_only_when_asked_and_found_as_they_appear(
    nats_server, aggregator, conn_factory, prefix
):
    with pytest.raises(ValueError, match="no tenant to serve"):
        DnsSettings(nats_url=nats_server.url, prefix=prefix)
    acme = await conn_factory(nats_server.url, tenant="acme")
    late = await conn_factory(nats_server.url, tenant="late")
    async with (
        announce(acme, "billing", address="10.0.0.1", port=80),
        start_dns(nats_server.url, prefix, all_tenants=True) as d,
    ):
        assert await d.until("billing.acme.disco", bool) == {"10.0.0.1"}   # named by the aggregators' stats
        assert await d.rcode("billing.late.disco") == "NXDOMAIN"
        async with announce(late, "jobs", address="10.0.0.9", port=80):
            # found from its first change event, listed, answered
            assert await d.until("jobs.late.disco", bool) == {"10.0.0.9"}


# -- the NATS server enforcing tenancy (disco up --auth's set-up) --------------------------------------------------
@pytest.fixture
async def auth_system(operator_system: Any) -> Any:
    """Operator mode (one NATS account per tenant): see tests/integration/conftest.py."""
    return {"server": operator_system.server, "add": operator_system.add}


async def _connect_when_allowed(url: str, prefix: str, creds: Path) -> Any:
    async def attempt() -> Any:
        try:
            return await connect(url, prefix=prefix, creds=creds)
        except Exception:
            return None

    return await eventually(attempt, timeout=10)


async def test_each_tenant_followed_with_its_own_credentials(auth_system, prefix):
    server: NatsServer = auth_system["server"]
    creds = {name: await auth_system["add"](name) for name in ("acme", "beta")}
    acme = await _connect_when_allowed(server.url, prefix, creds["acme"])
    beta = await _connect_when_allowed(server.url, prefix, creds["beta"])
    try:
        async with (
            announce(acme, "billing", address="10.0.0.1", port=80),
            announce(beta, "billing", address="10.0.0.2", port=80),
            start_dns(server.url, prefix, [TenantSource(name=n, creds=p) for n, p in creds.items()]) as d,
        ):
            assert await d.addresses("billing.acme.disco") == {"10.0.0.1"}
            assert await d.addresses("billing.beta.disco") == {"10.0.0.2"}
            assert len(d.server.links) == 2 and not any(link.health.stale for link in d.server.links)
            async with announce(acme, "billing", address="10.0.0.3", port=80):
                await d.until("billing.acme.disco", lambda got: got == {"10.0.0.1", "10.0.0.3"})
    finally:
        await acme.close()
        await beta.close()
