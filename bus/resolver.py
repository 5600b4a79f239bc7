"""Client-side discovery: a live cache of one service's instances and a load balancer over it.

::

    async with bus.resolver(conn, "billing", strategy="least_outstanding", prefer_zone="eu-1") as billing:
        inst = billing.pick()                    # microseconds: no network round trip
        async with billing.lease() as inst:      # counted as in flight until the block ends
            await call(inst.address, inst.port)

What is promised:

- **Fresh.** The resolver lists the service once, then follows its change events (list-then-watch, built on
  :mod:`bus.watch`: per-instance revision order, a relist after every reconnect, slow-consumer drop or detected
  gap, and every ``resync_interval`` seconds). Adds, updates (status, weight, tags...) and removals reach the
  cache as they happen.
- **Cheap picks.** :meth:`Resolver.pick` is synchronous and O(1) (O(log n) for ``weighted``) on candidate lists
  precomputed when the cache changes, never on a pick.
- **Strategies** (:class:`Strategy`): ``round_robin`` (each candidate in turn), ``random`` (uniform),
  ``weighted`` (in proportion to ``Instance.weight``), ``least_outstanding`` (fewest in-flight calls counted by
  :meth:`Resolver.lease`, ties taken in turn).
- **Filters** as :func:`bus.resolve`: ``tags`` (all must be present), ``zone`` (exact), ``status`` (default
  passing and warning). **Zone affinity**: with ``prefer_zone`` the candidates are the matching instances of
  that zone, or every matching instance when the zone has none.
- **Stale, not failing.** While the NATS connection is down, or while a relist keeps failing (no aggregator
  answers), the resolver goes on serving the last good view and says so: :attr:`Resolver.stale` is True and
  :attr:`Resolver.stale_for` tells for how many seconds. A successful relist clears it. Both transitions are
  logged once (``serving a stale view``, ``fresh again``), never once per retry.
- **Clear errors.** A pick with no candidate raises :class:`~bus.errors.NoInstances`; starting a resolver when
  no aggregator answers within ``start_timeout`` seconds raises :class:`~bus.errors.NoAggregator` (or
  :class:`~bus.errors.Timeout`).

Times are seconds (floats).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from types import TracebackType

import anyio
from pydantic import ValidationError

from bus.balancing import Balancer, Strategy
from bus.client import DEFAULT_TIMEOUT, snapshot
from bus.connection import Connection
from bus.errors import BadRequest, DiscoError, NoAggregator, NoInstances, Timeout
from bus.models import ChangeEvent, ChangeType, Instance, ResolveRequest, Snapshot, Status
from bus.subjects import validate_service
from bus.watch import Watch, running

__all__ = ["Balancer", "Lease", "Resolver", "Strategy", "resolver"]

log = logging.getLogger("disco.resolver")

_TRANSIENT = (NoAggregator, Timeout)


# =============================================================================================================
# the live cache
# =============================================================================================================
class Lease:
    """An instance picked for one call, counted as in flight until released (``with`` or ``async with``)."""

    __slots__ = ("_resolver", "instance", "released")

    def __init__(self, resolver: Resolver, instance: Instance) -> None:
        self._resolver = resolver
        self.instance = instance
        self.released = False

    def release(self) -> None:
        """End the call (idempotent)."""
        if not self.released:
            self.released = True
            self._resolver._release(self.instance.id)

    def __enter__(self) -> Instance:
        return self.instance

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    async def __aenter__(self) -> Instance:
        return self.instance

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


class Resolver:
    """The cached instances of one service and the picks over them; made by :func:`resolver`."""

    def __init__(
        self,
        conn: Connection,
        tenant: str,
        service: str,
        *,
        strategy: Strategy | str,
        tags: Iterable[str],
        zone: str | None,
        status: Iterable[Status | str],
        prefer_zone: str | None,
        rng: random.Random,
        timeout: float,
    ) -> None:
        self.conn = conn
        self.tenant = tenant
        self.service = service
        self.strategy = Strategy(strategy)
        self.tags = tuple(tags)
        self.zone = zone
        self.status = tuple(Status(s) for s in status)
        self.prefer_zone = prefer_zone
        self.timeout = timeout
        self._rng = rng
        self._instances: dict[str, Instance] = {}
        self._outstanding: dict[str, int] = {}
        self._balancer = self._build(None)
        self._listeners: list[Callable[[], None]] = []
        self._batch = False
        #: view revision of the newest change applied (of the last list, or of an event)
        self.revision = 0
        #: how many times the candidate lists were rebuilt
        self.rebuilds = 0
        self._down_since: float | None = None
        self._failing_since: float | None = None
        self._gen = 0

    # -- picks (synchronous, no I/O) ---------------------------------------------------------------------------
    def pick(self) -> Instance:
        """One candidate by the resolver's strategy; raise :class:`NoInstances` when there is none."""
        try:
            return self._balancer.pick()
        except NoInstances:
            raise self._no_instances() from None

    def lease(self) -> Lease:
        """Pick and count the call as in flight until the lease is released (``with``/``async with``)."""
        inst = self.pick()
        self._outstanding[inst.id] = self._outstanding.get(inst.id, 0) + 1
        self._balancer.acquire(inst.id)
        return Lease(self, inst)

    def _release(self, iid: str) -> None:
        n = self._outstanding.get(iid, 0) - 1
        if n > 0:
            self._outstanding[iid] = n
        else:
            self._outstanding.pop(iid, None)
        self._balancer.release(iid)

    def outstanding(self, instance_id: str) -> int:
        """Calls in flight on ``instance_id`` (leases not yet released)."""
        return self._outstanding.get(instance_id, 0)

    def _no_instances(self) -> NoInstances:
        what = f"service {self.service!r} of tenant {self.tenant!r} has no instance matching the filters"
        if self.stale:
            what += f" (in a stale view: no fresh list for {self.stale_for:.1f} s)"
        return NoInstances(what)

    # -- state --------------------------------------------------------------------------------------------------
    @property
    def candidates(self) -> tuple[Instance, ...]:
        """What picks choose from now (filters and zone affinity applied), sorted by id."""
        return self._balancer.candidates

    @property
    def instances(self) -> tuple[Instance, ...]:
        """Every cached instance that matches the filters (before zone affinity), sorted by id."""
        return self._balancer.matching

    @property
    def stale(self) -> bool:
        """True while the connection is down or relisting fails: the view served may be out of date."""
        return self._down_since is not None or self._failing_since is not None

    @property
    def stale_for(self) -> float:
        """Seconds since the view became stale; 0.0 when it is fresh."""
        since = [s for s in (self._down_since, self._failing_since) if s is not None]
        return time.monotonic() - min(since) if since else 0.0

    def on_change(self, cb: Callable[[], None]) -> Callable[[], None]:
        """Call ``cb()`` after every rebuild of the candidate lists; returns a function that removes it."""
        self._listeners.append(cb)
        return lambda: self._listeners.remove(cb) if cb in self._listeners else None

    # -- cache maintenance --------------------------------------------------------------------------------------
    def _build(self, old: Balancer | None) -> Balancer:
        return Balancer(
            self._instances.values(), self.strategy, tags=self.tags, zone=self.zone, status=self.status,
            prefer_zone=self.prefer_zone, rng=self._rng, outstanding=self._outstanding,
            start=old.position if old is not None else None,
        )

    def _rebuild(self) -> None:
        self._balancer = self._build(self._balancer)
        self.rebuilds += 1
        for cb in list(self._listeners):
            try:
                cb()
            except Exception:
                log.exception("resolver change listener failed")

    def _on_event(self, ev: ChangeEvent) -> None:
        if ev.service != self.service:
            return
        if ev.type is ChangeType.removed:
            self._instances.pop(ev.instance.id, None)
        else:
            self._instances[ev.instance.id] = ev.instance
        self.revision = max(self.revision, ev.revision)
        if not self._batch:
            self._rebuild()

    def _on_disconnect(self) -> None:
        self._gen += 1
        was_stale = self.stale
        if self._down_since is None:
            self._down_since = time.monotonic()
        if not was_stale:
            log.warning("resolver of %s/%s is serving a stale view (revision %d): the connection is down",
                        self.tenant, self.service, self.revision)

    def _list_failed(self, exc: DiscoError) -> None:
        was_stale = self.stale
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        if not was_stale:  # one line when the view goes stale, not one per retry
            log.warning("resolver of %s/%s is serving a stale view (revision %d): cannot list (%s)",
                        self.tenant, self.service, self.revision, exc)
        else:
            log.debug("resolver of %s/%s still cannot list: %s", self.tenant, self.service, exc)

    def _listed(self, gen: int, revision: int) -> None:
        """A relist that started at connection generation ``gen`` was applied."""
        was_stale, stale_for = self.stale, self.stale_for
        self.revision = max(self.revision, revision)
        self._failing_since = None
        if gen == self._gen and self.conn.nc.is_connected:
            self._down_since = None
        if was_stale and not self.stale:
            log.warning("resolver of %s/%s is fresh again at revision %d (stale for %.1f s)",
                        self.tenant, self.service, self.revision, stale_for)
        self._rebuild()


class _CacheWatch(Watch):
    """A :class:`Watch` that hands every change to a :class:`Resolver` instead of queueing it, and reports how
    its lists go (failures make the resolver stale, a success makes it fresh)."""

    def __init__(
        self, owner: Resolver, *, resync_interval: float | None, buffer: int, start_timeout: float
    ) -> None:
        super().__init__(owner.conn, owner.tenant, owner.service, include_initial=True,
                         resync_interval=resync_interval, buffer=buffer)
        self.owner = owner
        self.start_timeout = start_timeout
        self._list_gen = 0

    async def _emit(self, ev: ChangeEvent) -> None:
        self.owner._on_event(ev)

    async def _list(self) -> Snapshot:
        delay = 0.05
        deadline = time.monotonic() + self.start_timeout
        assert self.service is not None
        while True:
            self._list_gen = self.owner._gen
            try:
                return await snapshot(self.conn, tenant=self.tenant, services=(self.service,),
                                      timeout=self.owner.timeout)
            except DiscoError as exc:
                if self.lists == 0 and (not isinstance(exc, _TRANSIENT) or time.monotonic() >= deadline):
                    raise  # the first list: the caller of resolver() hears why it cannot start
                if self.lists:
                    self.owner._list_failed(exc)
            await anyio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 2.0)

    async def _relist(self) -> None:
        self.owner._batch = True
        try:
            await super()._relist()
        finally:
            self.owner._batch = False
        self.owner._listed(self._list_gen, self.revision)


def _check_arguments(
    strategy: Strategy | str, tags: Iterable[str], zone: str | None, status: Iterable[Status | str]
) -> None:
    if strategy not in set(Strategy):
        raise BadRequest(f"unknown strategy {strategy!r}: use one of {', '.join(s.value for s in Strategy)}")
    statuses = set(Status)
    for s in status:
        if s not in statuses:
            raise BadRequest(f"unknown status {s!r}: use {', '.join(v.value for v in Status)}")
    try:
        ResolveRequest(tags=tuple(tags), zone=zone, status=tuple(Status(s) for s in status))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise BadRequest(f"invalid resolver filter {loc}: {err['msg']}") from None
    except ValueError as exc:
        raise BadRequest(f"invalid resolver filter: {exc}") from None




@asynccontextmanager
async def resolver(
    conn: Connection,
    service: str,
    *,
    tenant: str | None = None,
    strategy: Strategy | str = Strategy.round_robin,
    tags: Iterable[str] = (),
    zone: str | None = None,
    status: Sequence[Status | str] = (Status.passing, Status.warning),
    prefer_zone: str | None = None,
    resync_interval: float | None = 60.0,
    start_timeout: float = 5.0,
    timeout: float = DEFAULT_TIMEOUT,
    buffer: int = 10_000,
    seed: int | None = None,
) -> AsyncIterator[Resolver]:
    """A live :class:`Resolver` of ``service`` for the duration of the block (see the module docstring).

    The block starts once the first list is in the cache. ``start_timeout``: seconds to wait for an aggregator
    at the start before raising :class:`NoAggregator`/:class:`Timeout`; later failures only make the view
    stale. ``resync_interval``: seconds between full relists (None: only after reconnects and gaps), which also
    notice aggregators that stopped answering. ``timeout``: seconds per list request. ``seed``: make random and
    weighted picks reproducible. Raises :class:`~bus.errors.InvalidName` or
    :class:`~bus.errors.BadRequest` for invalid arguments before anything is sent.
    """
    t = conn.tenant_or(tenant)
    validate_service(service)
    _check_arguments(strategy, tags, zone, status)
    r = Resolver(conn, t, service, strategy=strategy, tags=tags, zone=zone, status=status, prefer_zone=prefer_zone,
                 rng=random.Random(seed), timeout=timeout)
    w = _CacheWatch(r, resync_interval=resync_interval, buffer=buffer, start_timeout=start_timeout)
    async with running(conn, w, on_disconnect=r._on_disconnect):
        yield r
