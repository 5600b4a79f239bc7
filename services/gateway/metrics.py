"""The gateway's Prometheus metrics, on its own registry, served at ``/metrics``.

Counted where it happens (the proxy calls :meth:`GatewayMetrics.observe` once per call); the view's numbers
(instances and services per tenant, changes seen) are read from the tenants' views at scrape time by a collector,
so they cannot drift from what the catalog serves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.gateway.outlier import OutlierDetector
from services.gateway.view import TenantView

__all__ = ["CONTENT_TYPE", "GatewayMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _ViewCollector(Collector):
    def __init__(self, views: dict[str, TenantView], outliers: OutlierDetector, retries: Callable[[], int],
                 resolvers: Callable[[], int], stale: Callable[[], int]) -> None:
        self.views = views
        self.outliers = outliers
        self.retries = retries
        self.resolvers = resolvers
        self.stale = stale

    def collect(self) -> Iterable[Metric]:
        inst = GaugeMetricFamily("disco_gateway_instances", "Instances in the watched view", labels=["tenant"])
        svcs = GaugeMetricFamily("disco_gateway_services", "Services in the watched view", labels=["tenant"])
        rev = GaugeMetricFamily("disco_gateway_view_revision", "Revision of the watched view", labels=["tenant"])
        evs = CounterMetricFamily("disco_gateway_view_events", "Changes applied to the view",
                                  labels=["tenant", "type", "reason"])
        rate = GaugeMetricFamily("disco_gateway_view_events_per_second", "Changes per second (last 10 s)",
                                 labels=["tenant"])
        for t, v in self.views.items():
            inst.add_metric([t], v.instance_count())
            svcs.add_metric([t], len(v.services))
            rev.add_metric([t], v.revision)
            rate.add_metric([t], v.events_per_second())
            for (kind, reason), n in sorted(v.events_by.items()):
                evs.add_metric([t, kind, reason], n)
        yield from (inst, svcs, rev, evs, rate)
        yield GaugeMetricFamily("disco_gateway_ejected_instances", "Instances ejected by outlier detection now",
                                value=self.outliers.ejected_count())
        yield CounterMetricFamily("disco_gateway_ejections", "Ejections by outlier detection",
                                  value=self.outliers.ejections_total)
        yield CounterMetricFamily("disco_gateway_retries", "Calls retried on another instance", value=self.retries())
        yield GaugeMetricFamily("disco_gateway_resolvers", "Open resolver caches", value=self.resolvers())
        yield GaugeMetricFamily("disco_gateway_stale_resolvers", "Resolvers serving a view they cannot refresh",
                                value=self.stale())


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("disco_gateway_requests", "Proxied calls by tenant, service and status",
                                ["tenant", "service", "code"], registry=self.registry)
        self.refusals = Counter("disco_gateway_refusals", "Calls the gateway answered itself with an error, by "
                                "error code", ["tenant", "code"], registry=self.registry)
        self.latency = Histogram("disco_gateway_request_seconds", "Time to answer a proxied call (head and body)",
                                 ["tenant"], registry=self.registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.pick = Histogram("disco_gateway_pick_seconds", "Time to pick an instance (resolver opening included "
                              "on a service's first call)", registry=self.registry,
                              buckets=(.00001, .000025, .00005, .0001, .00025, .0005, .001, .005, .01, .05, .1, 1))

    def bind(self, views: dict[str, TenantView], outliers: OutlierDetector, retries: Callable[[], int],
             resolvers: Callable[[], int], stale: Callable[[], int]) -> None:
        self.registry.register(_ViewCollector(views, outliers, retries, resolvers, stale))

    def observe(self, tenant: str, service: str, status: int, seconds: float, error: str | None) -> None:
        """One call, labelled by names the gateway knows (callers choose what else they send: an unknown tenant
        or service is counted as ``_unknown``, so labels stay bounded)."""
        self.requests.labels(tenant, service, str(status)).inc()
        self.latency.labels(tenant).observe(seconds)
        if error is not None:
            self.refusals.labels(tenant, error).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
