"""An aggregator follows every tenant's quotas from the tenant registry, live."""

from __future__ import annotations

import logging
from typing import Any

import anyio

from bus.connection import Connection
from services.aggregator.admission import TenantLimits
from services.tenants.registry import TenantRegistry

__all__ = ["follow_limits"]

log = logging.getLogger("disco.aggregator")


async def follow_limits(conn: Connection, prefix: str, set_limits: Any) -> None:
    """Feed every tenant's quotas to an aggregator (``set_limits(tenant, TenantLimits | None)``), live."""
    registry = TenantRegistry(conn.js, prefix)
    known: set[str] = set()
    while True:
        try:
            await registry.open(create=False)  # no registry, no tenant limits: look again later
            async for tenants in registry.follow():
                for name, rec in tenants.items():
                    set_limits(name, TenantLimits(max_instances=rec.max_instances, max_services=rec.max_services,
                                                  announce_rate=rec.announce_rate))
                for gone in known - set(tenants):
                    set_limits(gone, None)
                known = set(tenants)
        except Exception as exc:
            log.debug("tenant registry not followed (%s); retrying", exc)
        await anyio.sleep(2.0)
