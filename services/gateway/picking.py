"""Which instance serves a call: one :func:`bus.resolver` per (tenant, service), opened on first use and kept
for the life of the gateway (it follows the change feed, so routes change with no reload), minus the instances
the outlier detector has ejected.

What is promised:

- A pick never costs a network round trip once the service's resolver is open; opening it costs one snapshot
  request, shared by every call that arrives meanwhile.
- Only services present in the tenant's watched view get a resolver, so callers cannot make the gateway open
  one per made-up name.
- Ejected instances are skipped while another candidate is available; when every candidate is ejected, one is
  used anyway (Envoy's panic routing: better a doubtful instance than a certain 503).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup

import bus
from bus.errors import DiscoError, NoInstances, Unavailable
from bus.resolver import Lease, Resolver
from services.gateway.outlier import OutlierDetector
from services.gateway.routing import RouteSettings

__all__ = ["Picker"]

log = logging.getLogger("disco.gateway")


@dataclass(slots=True)
class _Slot:
    ready: anyio.Event = field(default_factory=anyio.Event)
    resolver: Resolver | None = None
    error: DiscoError | None = None


class Picker:
    """Resolvers of every routed service; :meth:`lease` is what the proxy calls."""

    def __init__(self, conns: dict[str, bus.Connection], tg: TaskGroup, outliers: OutlierDetector) -> None:
        self.conns = conns
        self.tg = tg
        self.outliers = outliers
        self._slots: dict[tuple[str, str], _Slot] = {}

    async def resolver(self, tenant: str, service: str, settings: RouteSettings) -> Resolver:
        key = (tenant, service)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = _Slot()
            self.tg.start_soon(self._hold, key, slot, settings)
        await slot.ready.wait()
        if slot.resolver is None:
            raise slot.error or Unavailable("the gateway is stopping")
        return slot.resolver

    async def _hold(self, key: tuple[str, str], slot: _Slot, settings: RouteSettings) -> None:
        tenant, service = key
        try:
            async with bus.resolver(
                self.conns[tenant], service, tenant=tenant, strategy=settings.strategy,
                prefer_zone=settings.prefer_zone,
            ) as res:
                slot.resolver = res
                slot.ready.set()
                await anyio.sleep_forever()
        except DiscoError as exc:
            log.warning("no resolver for %s/%s: %s", tenant, service, exc)
            slot.error = exc
            self._slots.pop(key, None)  # the next call tries again
        finally:
            slot.ready.set()

    def lease(self, res: Resolver, avoid: set[str]) -> Lease:
        """A lease on a candidate not in ``avoid`` (already tried) and not ejected if possible.

        Raises :class:`NoInstances` when every candidate was tried (or there is none)."""
        held: list[Lease] = []  # skipped leases stay counted until the pick is made, so picks move on
        try:
            for _ in range(2 * len(res.candidates)):
                lease = res.lease()
                iid = lease.instance.id
                if iid in avoid or self.outliers.ejected((res.tenant, res.service, iid)):
                    held.append(lease)
                    continue
                return lease
            usable = [ls for ls in held if ls.instance.id not in avoid]
            if usable:
                held.remove(usable[0])
                return usable[0]  # every candidate is ejected: panic routing
            if not res.candidates:
                return res.lease()  # raises NoInstances with the resolver's own words
            raise NoInstances(f"every instance of {res.service!r} of tenant {res.tenant!r} failed this call")
        finally:
            for ls in held:
                ls.release()

    def opened(self) -> int:
        return sum(1 for s in self._slots.values() if s.resolver is not None)

    def stale(self) -> int:
        """Open resolvers serving a view they could not refresh (NATS down, no aggregator answering)."""
        return sum(1 for s in self._slots.values() if s.resolver is not None and s.resolver.stale)
