"""What a tenant may do: quotas and rates checked before any write, and self-preservation before any expiry.

Limits come from the tenant's record (:meth:`Admission.set_limits`, fed live from the tenant registry) or, for a
tenant without one, from the aggregator's defaults. Refusals raise the error of their wire code
(:class:`QuotaExceeded`, :class:`RateLimited`) and are counted per tenant.

Self-preservation (DESIGN.md §6): when one sweep would expire more than ``share`` of a tenant's instances (and at
least ``min_count`` of them), the aggregator is more likely cut off from the services than they are all dead, so
expiry of that tenant pauses, an alarm is logged and counted, and it resumes as soon as a sweep's share falls
under the threshold again (heartbeats came back). A real mass death is still expired once the pause has lasted
``max_pause`` seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from bus.errors import QuotaExceeded, RateLimited
from services.aggregator.liveness import Liveness
from services.aggregator.metrics import Metrics
from services.aggregator.view import LiveView

Key = tuple[str, str, str]

__all__ = ["Admission", "SelfPreservation", "TenantLimits", "TokenBucket"]

log = logging.getLogger("disco.aggregator.admission")


class TenantLimits(BaseModel):
    """A tenant's quotas; None means unlimited. ``announce_rate`` is announces per second (burst: one second)."""

    model_config = ConfigDict(frozen=True)

    max_instances: int | None = Field(None, ge=0)
    max_services: int | None = Field(None, ge=0)
    announce_rate: float | None = Field(None, gt=0)


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; ``take()`` is O(1) and never blocks.

    ``clock`` (seconds, monotonic) is where time comes from unless a call passes ``now``: tests give it a clock
    they advance by hand.
    """

    __slots__ = ("burst", "clock", "rate", "stamp", "tokens")

    def __init__(
        self, rate: float, burst: float | None = None, now: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = max(burst if burst is not None else rate, 1.0)
        self.tokens = self.burst
        self.clock = clock
        self.stamp = clock() if now is None else now

    def take(self, now: float | None = None) -> bool:
        now = self.clock() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class SelfPreservation:
    share: float = 0.5
    min_count: int = 3
    max_pause: float = 60.0


class Admission:
    def __init__(
        self,
        view: LiveView,
        metrics: Metrics,
        defaults: TenantLimits | None = None,
        preservation: SelfPreservation | None = None,
    ) -> None:
        self.view = view
        self.metrics = metrics
        self.defaults = defaults or TenantLimits()
        self.preservation = preservation or SelfPreservation()
        self._limits: dict[str, TenantLimits] = {}
        self._buckets: dict[str, TokenBucket] = {}
        #: the clock of the announce-rate buckets (tests replace it with one they advance)
        self.bucket_clock: Callable[[], float] = time.monotonic
        self._creating: dict[str, int] = {}
        #: tenant -> monotonic time its expiry was paused
        self.paused: dict[str, float] = {}
        self._draining: dict[str, float] = {}

    # -- limits -----------------------------------------------------------------------------------------------
    def limits(self, tenant: str) -> TenantLimits:
        return self._limits.get(tenant, self.defaults)

    def set_limits(self, tenant: str, limits: TenantLimits | None) -> None:
        """Give ``tenant`` its own limits (None: back to the defaults); takes effect for the next message."""
        if limits is None:
            self._limits.pop(tenant, None)
        else:
            self._limits[tenant] = limits
        self._buckets.pop(tenant, None)

    def check_announce(self, tenant: str) -> None:
        """Refuse (RateLimited) an announce over the tenant's rate, before it is queued."""
        rate = self.limits(tenant).announce_rate
        if rate is None:
            return
        bucket = self._buckets.get(tenant)
        if bucket is None or bucket.rate != rate:
            bucket = self._buckets[tenant] = TokenBucket(rate, clock=self.bucket_clock)
        if not bucket.take():
            self.metrics.inc("rate_limited", tenant)
            raise RateLimited(f"tenant {tenant!r} is over its announce rate of {rate:g}/s; retry later")

    def check_new_instance(self, tenant: str, service: str) -> None:
        """Refuse (QuotaExceeded) an announce that would add an instance, or a service, over the tenant's quota.

        Creates still in flight count as instances, so concurrent announces cannot overshoot the quota; call
        :meth:`created` when the create is done (written or not).
        """
        limits = self.limits(tenant)
        services, instances = self.view.count(tenant)
        instances += self._creating.get(tenant, 0)
        if limits.max_instances is not None and instances >= limits.max_instances:
            self.metrics.inc("quota_exceeded", tenant)
            raise QuotaExceeded(
                f"tenant {tenant!r} has {instances} instances: its quota is max_instances={limits.max_instances}"
            )
        if (
            limits.max_services is not None
            and self.view.service_instances(tenant, service) == 0
            and services >= limits.max_services
        ):
            self.metrics.inc("quota_exceeded", tenant)
            raise QuotaExceeded(
                f"tenant {tenant!r} has {services} services: its quota is max_services={limits.max_services}"
            )
        self._creating[tenant] = self._creating.get(tenant, 0) + 1

    def created(self, tenant: str) -> None:
        n = self._creating.get(tenant, 0) - 1
        if n > 0:
            self._creating[tenant] = n
        else:
            self._creating.pop(tenant, None)

    # -- self-preservation ------------------------------------------------------------------------------------
    def may_expire(self, tenant: str, keys: Sequence[Key], live: Liveness[Key], now: float) -> Sequence[Key]:
        """The keys of ``tenant`` that may be expired now: all of them, or none while self-preservation holds."""
        p = self.preservation
        draining = self._draining.get(tenant)
        if draining is not None:
            if now - draining < p.max_pause:
                return keys  # a mass death was accepted: the stragglers of it go too, without a second pause
            del self._draining[tenant]
        total = self.view.count(tenant)[1]
        mass = False
        if keys:
            # count the late ones too (two heartbeats missed), not only those due in this very sweep, so that a
            # mass silence spread over a few sweeps is still seen as one
            late = sum(
                1
                for svc, entries in self.view.services(tenant).items()
                for e in entries
                if live.late((tenant, svc, e.id), now, 0.67)
            )
            silent = max(len(keys), late)
            mass = silent >= p.min_count and total > 0 and silent > p.share * total
        since = self.paused.get(tenant)
        if not mass:
            if since is not None:
                del self.paused[tenant]
                log.warning("self-preservation of tenant %s ends after %.1f s: heartbeats are back", tenant,
                            now - since)
            return keys
        if since is None:
            self.paused[tenant] = now
            self.metrics.inc("self_preservation", tenant)
            log.warning(
                "self-preservation: %d of the %d instances of tenant %s went silent at once; expiry paused "
                "(this aggregator is more likely cut off than they are all dead)", silent, total, tenant,
            )
            return ()
        if now - since >= p.max_pause:
            del self.paused[tenant]
            self._draining[tenant] = now
            self.metrics.inc("mass_expiry", tenant)
            log.warning("tenant %s: %d instances silent for %.0f s: expiring them after all", tenant, len(keys),
                        now - since)
            return keys
        return ()
