"""What ``disco dns`` answers from: each served tenant's live view, held in memory and kept current by
:mod:`services.dns.follow` (a list, then the tenant's change feed through :func:`bus.watch`).

Reading it never does I/O: a DNS answer costs no NATS round trip. Each service carries a version that changes on
every change to it, so what is derived from it (the DNS records) can be cached until it changes.

:class:`Health` is the freshness of the view, shared by the tenants followed over one connection: it is stale
while that connection is down or no aggregator answers its probes; the last good view is served meanwhile, and
the change is logged once each way.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator, Mapping

from bus.models import ChangeEvent, ChangeType, Instance, Status
from bus.watch import Watch

__all__ = ["SERVED", "Health", "TenantView", "ViewSet"]

log = logging.getLogger("disco.dns")

#: the statuses DNS answers with (critical and maintenance instances are left out)
SERVED = frozenset({Status.passing, Status.warning})
_versions = itertools.count(1)


class Health:
    """Whether the view followed over one connection is fresh. Times are ``time.monotonic()`` seconds."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.down_since: float | None = None
        self.failing_since: float | None = None
        self.failure = ""

    @property
    def stale(self) -> bool:
        return self.down_since is not None or self.failing_since is not None

    @property
    def stale_for(self) -> float:
        """Seconds since the view became stale; 0.0 while it is fresh."""
        since = [s for s in (self.down_since, self.failing_since) if s is not None]
        return time.monotonic() - min(since) if since else 0.0

    def disconnected(self) -> None:
        if self.down_since is None:
            was = self.stale
            self.down_since = time.monotonic()
            if not was:
                log.warning("%s: NATS connection lost: serving the last good view (stale)", self.what)

    def probe_failed(self, why: str) -> None:
        self.failure = why
        if self.failing_since is None:
            was = self.stale
            self.failing_since = time.monotonic()
            if not was:
                log.warning("%s: no aggregator answers (%s): serving the last good view (stale)", self.what, why)

    def probe_ok(self, connected: bool) -> bool:
        """An aggregator answered; returns True when this ends a stale period (the views should relist)."""
        was = self.stale
        took = self.stale_for
        self.failing_since = None
        if connected:
            self.down_since = None
        if was and not self.stale:
            log.info("%s: aggregators answer again after %.1f s: the view is fresh", self.what, took)
            return True
        return False


class TenantView:
    """One tenant's servable instances, by service. ``ready`` once the first list is in."""

    def __init__(self, name: str, health: Health) -> None:
        self.name = name
        self.health = health
        self.ready = False
        self.watch: Watch | None = None
        self._services: dict[str, dict[str, Instance]] = {}
        self._versions: dict[str, int] = {}
        self._instances = 0

    # -- reading ----------------------------------------------------------------------------------------------
    def instances(self, service: str) -> Mapping[str, Instance]:
        """The servable (passing and warning) instances of ``service`` by id; empty if it has none."""
        return self._services.get(service, {})

    def version(self, service: str) -> int:
        """Changes whenever the servable instances of ``service`` change (0: it has none)."""
        return self._versions.get(service, 0)

    def services(self) -> Iterator[str]:
        return iter(self._services)

    @property
    def counts(self) -> tuple[int, int]:
        """(services, instances) served now."""
        return len(self._services), self._instances

    # -- changing ---------------------------------------------------------------------------------------------
    def load(self, view: Mapping[str, Mapping[str, Instance]]) -> None:
        """Replace everything with a listed view (``{service: {id: Instance}}``); the tenant is ready."""
        self._services = {}
        self._instances = 0
        for svc, insts in view.items():
            for inst in insts.values():
                self._put(svc, inst)
        for svc in set(self._versions) - set(self._services):
            del self._versions[svc]
        for svc in self._services:
            self._versions[svc] = next(_versions)
        self.ready = True

    def apply(self, ev: ChangeEvent) -> None:
        """One change event (from the watch, already ordered and deduplicated there)."""
        held = self._services.get(ev.service, {}).get(ev.instance.id)
        if ev.type is ChangeType.removed or ev.instance.status not in SERVED:
            if held is None:
                return
            self._drop(ev.service, ev.instance.id)
        else:
            if held == ev.instance:
                return
            if held is not None:
                self._drop(ev.service, ev.instance.id)
            self._put(ev.service, ev.instance)
        if ev.service in self._services:
            self._versions[ev.service] = next(_versions)
        else:
            self._versions.pop(ev.service, None)

    def _put(self, svc: str, inst: Instance) -> None:
        if inst.status in SERVED:
            self._services.setdefault(svc, {})[inst.id] = inst
            self._instances += 1

    def _drop(self, svc: str, iid: str) -> None:
        insts = self._services[svc]
        del insts[iid]
        self._instances -= 1
        if not insts:
            del self._services[svc]


class ViewSet:
    """The served tenants by name (what the DNS answers may name)."""

    def __init__(self) -> None:
        self._tenants: dict[str, TenantView] = {}

    def get(self, tenant: str) -> TenantView | None:
        return self._tenants.get(tenant)

    def add(self, view: TenantView) -> None:
        self._tenants[view.name] = view

    def __contains__(self, tenant: str) -> bool:
        return tenant in self._tenants

    def __iter__(self) -> Iterator[TenantView]:
        return iter(list(self._tenants.values()))

    def __len__(self) -> int:
        return len(self._tenants)
