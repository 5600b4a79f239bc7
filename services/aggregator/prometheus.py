"""Prometheus exposition of an aggregator (``disco aggregator --metrics ADDR:PORT``, on by default in
``disco up``): a custom collector that reads, at scrape time, the same :class:`~services.aggregator.metrics.Metrics`
object ``_sys.stats`` serves, plus the aggregator's live state (view counts, read lag, self-preservation).

Families (all prefixed ``disco_``): ``instances`` and ``services`` per tenant, ``events_total`` by tenant, type
and reason, ``refusals_total`` by tenant and code, ``operations_total`` (every other counter, by name and
tenant), ``resolve_seconds`` and ``kv_write_seconds`` histograms, ``read_lag_seconds``, ``self_preservation``
(1 per tenant whose expiry is paused), ``live_instances``, ``view_revision``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import anyio
from aiohttp import web
from anyio.abc import TaskStatus
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from services.aggregator.service import Aggregator

__all__ = ["CONTENT_TYPE", "AggregatorCollector", "registry_for", "serve_metrics"]

log = logging.getLogger("disco.aggregator")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class AggregatorCollector(Collector):
    def __init__(self, agg: Aggregator) -> None:
        self.agg = agg

    def collect(self) -> Iterable[Metric]:
        agg, m = self.agg, self.agg.metrics
        insts = GaugeMetricFamily("disco_instances", "Instances in the live view", labels=["tenant"])
        svcs = GaugeMetricFamily("disco_services", "Services with instances in the live view", labels=["tenant"])
        for tenant in agg.view.tenants():
            n_svcs, n_insts = agg.view.count(tenant)
            insts.add_metric([tenant], n_insts)
            svcs.add_metric([tenant], n_svcs)
        yield from (insts, svcs)

        events = CounterMetricFamily("disco_events", "Change events published", labels=["tenant", "type", "reason"])
        for (tenant, kind, reason), n in sorted(m.events.items()):
            events.add_metric([tenant, kind, reason], n)
        yield events

        refusals = CounterMetricFamily("disco_refusals", "Requests refused, by error code",
                                       labels=["tenant", "code"])
        other = CounterMetricFamily("disco_operations", "Other counted operations (heartbeats, expiries, "
                                    "write conflicts, drops...)", labels=["name", "tenant"])
        for (name, tenant), n in sorted(m.counters.items()):
            if name.startswith("refused."):
                refusals.add_metric([tenant, name.removeprefix("refused.")], n)
            elif name != "refused" and not name.startswith("events."):
                other.add_metric([name, tenant], n)
        yield from (refusals, other)

        for name, hist in sorted(m.histograms.items()):
            family = HistogramMetricFamily(f"disco_{name}_seconds", f"Latency of {name.replace('_', ' ')} (s)")
            family.add_metric([], hist.cumulative(), hist.sum)
            yield family

        yield GaugeMetricFamily("disco_read_lag_seconds", "How late the aggregator reads its connection",
                                value=agg.lag)
        paused = GaugeMetricFamily("disco_self_preservation", "1 while a tenant's expiry is paused",
                                   labels=["tenant"])
        for tenant in sorted(set(agg.admission.paused) | set(agg.view.tenants())):
            paused.add_metric([tenant], 1.0 if tenant in agg.admission.paused else 0.0)
        yield paused
        yield GaugeMetricFamily("disco_live_instances", "Instances whose liveness is tracked", value=len(agg.live))
        yield GaugeMetricFamily("disco_view_revision", "Revision up to which the view is followed",
                                value=agg.view.position)


def registry_for(agg: Aggregator) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(AggregatorCollector(agg))
    return registry


async def serve_metrics(
    agg: Aggregator, host: str, port: int, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Serve ``GET /metrics`` on ``host:port`` until cancelled; started with the port bound (useful with 0).

    Raises OSError when the address cannot be bound."""
    registry = registry_for(agg)

    async def metrics(request: web.Request) -> web.StreamResponse:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        server = getattr(site, "_server", None)
        bound = server.sockets[0].getsockname()[1] if server is not None and server.sockets else port
        log.info("metrics on http://%s:%d/metrics", host, bound)
        task_status.started(bound)
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()
