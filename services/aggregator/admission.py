"""What a tenant may do: quotas and rates checked before any write, and self-preservation before any expiry.

Issue 2 ships the hooks with no limits; tenant limits (DESIGN.md §7) plug in here.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TypeVar

from bus.models import Instance
from services.aggregator.liveness import Liveness
from services.aggregator.metrics import Metrics
from services.aggregator.view import LiveView

K = TypeVar("K", bound=Hashable)

__all__ = ["Admission"]


class Admission:
    def __init__(self, view: LiveView, metrics: Metrics) -> None:
        self.view = view
        self.metrics = metrics

    def check_announce(self, tenant: str, service: str, inst: Instance) -> None:
        """Raise RateLimited (or another DiscoError) to refuse an announce before it is queued."""

    def check_new_instance(self, tenant: str, service: str) -> None:
        """Raise QuotaExceeded to refuse an announce that would add an instance (or a service)."""

    def may_expire(self, tenant: str, keys: Sequence[K], live: Liveness[K], now: float) -> Sequence[K]:
        """The keys of ``tenant`` that may be expired now (all of them, without self-preservation)."""
        return keys
