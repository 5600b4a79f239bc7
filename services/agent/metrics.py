"""Prometheus metrics of the agent, read at scrape time from the agent's own state (one place, nothing sprinkled
through the loops), in a registry of their own and served by a small aiohttp app (``--metrics ADDR:PORT``).

- ``disco_agent_instances{status}``: instances the agent registers, by the status it reports;
- ``disco_agent_registered``: instances whose announce was acknowledged;
- ``disco_agent_heartbeat_messages_total`` / ``disco_agent_heartbeats_total``: heartbeat messages sent, and
  instance beats they carried (the ratio is the batching);
- ``disco_agent_checks_total{type,result}``: check runs by type and result (ok, failed);
- ``disco_agent_reloads_total{result}``: configuration reloads (applied, refused).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bus.models import Status

if TYPE_CHECKING:
    from services.agent.runner import Agent

__all__ = ["AgentCollector", "metrics_app", "registry_for"]


class AgentCollector(Collector):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Metric]:
        a = self.agent
        by_status = GaugeMetricFamily("disco_agent_instances", "Instances the agent registers, by reported status",
                                      labels=["status"])
        counts = {s: 0 for s in Status}
        for m in a.members.values():
            counts[m.status] += 1
        for s, n in counts.items():
            by_status.add_metric([s.value], n)
        yield by_status
        yield GaugeMetricFamily("disco_agent_registered", "Instances whose announce was acknowledged",
                                value=sum(m.registered for m in a.members.values()))
        yield CounterMetricFamily("disco_agent_heartbeat_messages", "Heartbeat messages sent", value=a.beats.messages)
        yield CounterMetricFamily("disco_agent_heartbeats", "Instance heartbeats sent (several per message)",
                                  value=a.beats.beats)
        checks = CounterMetricFamily("disco_agent_checks", "Health check runs", labels=["type", "result"])
        for (kind, ok), n in sorted(a.check_runs.items()):
            checks.add_metric([kind, "ok" if ok else "failed"], n)
        yield checks
        reloads = CounterMetricFamily("disco_agent_reloads", "Configuration reloads", labels=["result"])
        reloads.add_metric(["applied"], a.reloads)
        reloads.add_metric(["refused"], a.reload_errors)
        yield reloads


def registry_for(agent: Agent) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(AgentCollector(agent))
    return registry


def metrics_app(registry: CollectorRegistry) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get("/metrics", handle)
    return app
