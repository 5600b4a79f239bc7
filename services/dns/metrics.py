"""What ``disco dns`` counts, and its Prometheus exposition.

The server counts in one place, :class:`Stats` (plain counters, no locks on the answer path); a collector on a
``CollectorRegistry`` of its own turns them and the views' state into metric families when Prometheus scrapes
``GET /metrics`` (served by :func:`serve_metrics`, a small HTTP/1.0 responder inside the server's task group):

- ``disco_dns_queries_total{transport,qtype,rcode}``: questions answered;
- ``disco_dns_truncated_total{transport}``: UDP answers sent with TC (the client retries over TCP);
- ``disco_dns_dropped_total{reason}``: packets not answered (``short``: under a DNS header, ``response``: a reply);
- ``disco_dns_tcp_connections`` and ``disco_dns_tcp_refused_total``: TCP connections open, and refused at the limit;
- per tenant: ``disco_dns_view_services``, ``disco_dns_view_instances`` (served now), ``disco_dns_tenant_ready``,
  ``disco_dns_stale`` (1 while answering from the last good view) and ``disco_dns_stale_seconds``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator

import anyio
import dns.rcode
import dns.rdatatype
from anyio.abc import SocketStream
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.dns.settings import Endpoint
from services.dns.view import ViewSet

__all__ = ["Stats", "registry_for", "serve_metrics"]

log = logging.getLogger("disco.dns")

#: query types counted by name; the rest are counted as OTHER (bounded label values)
_COUNTED_TYPES = frozenset(
    dns.rdatatype.from_text(t) for t in ("A", "AAAA", "CNAME", "SRV", "TXT", "SOA", "NS", "ANY", "PTR", "MX",
                                          "HTTPS", "SVCB", "AXFR", "IXFR")
)


class Stats:
    """The server's counters (updated by the transports and the responder)."""

    def __init__(self) -> None:
        self.queries: Counter[tuple[str, str, str]] = Counter()
        self.truncated: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.tcp_open = 0
        self.tcp_refused = 0

    def answered(self, transport: str, qtype: int | None, rcode: int) -> tuple[str, str, str]:
        """Count one answer; returns its counter's key (to count the same answer again cheaply)."""
        if qtype is None:
            name = "NONE"
        elif qtype in _COUNTED_TYPES:
            name = dns.rdatatype.to_text(qtype)  # type: ignore[arg-type]
        else:
            name = "OTHER"
        key = (transport, name, dns.rcode.to_text(rcode))  # type: ignore[arg-type]
        self.queries[key] += 1
        return key

    def total(self, *, rcode: str | None = None, qtype: str | None = None) -> int:
        """Answers counted so far, optionally of one rcode (``"NOERROR"``...) or query type (``"A"``...)."""
        return sum(n for (_, q, r), n in self.queries.items()
                   if (rcode is None or r == rcode) and (qtype is None or q == qtype))


class _Collector(Collector):
    def __init__(self, stats: Stats, views: ViewSet) -> None:
        self.stats = stats
        self.views = views

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        q = CounterMetricFamily("disco_dns_queries", "DNS questions answered", labels=["transport", "qtype", "rcode"])
        for (transport, qtype, rcode), n in sorted(s.queries.items()):
            q.add_metric([transport, qtype, rcode], n)
        yield q
        tc = CounterMetricFamily("disco_dns_truncated", "UDP answers sent truncated (TC)", labels=["transport"])
        for transport, n in sorted(s.truncated.items()):
            tc.add_metric([transport], n)
        yield tc
        dropped = CounterMetricFamily("disco_dns_dropped", "packets not answered", labels=["reason"])
        for reason, n in sorted(s.dropped.items()):
            dropped.add_metric([reason], n)
        yield dropped
        yield GaugeMetricFamily("disco_dns_tcp_connections", "TCP connections open", value=s.tcp_open)
        yield CounterMetricFamily("disco_dns_tcp_refused", "TCP connections closed at the limit",
                                  value=s.tcp_refused)
        services = GaugeMetricFamily("disco_dns_view_services", "services served", labels=["tenant"])
        instances = GaugeMetricFamily("disco_dns_view_instances", "instances served", labels=["tenant"])
        ready = GaugeMetricFamily("disco_dns_tenant_ready", "1 once the tenant's view is listed", labels=["tenant"])
        stale = GaugeMetricFamily("disco_dns_stale", "1 while answering from the last good view", labels=["tenant"])
        stale_for = GaugeMetricFamily("disco_dns_stale_seconds", "seconds the view has been stale",
                                      labels=["tenant"])
        for tv in sorted(self.views, key=lambda v: v.name):
            n_svc, n_inst = tv.counts
            services.add_metric([tv.name], n_svc)
            instances.add_metric([tv.name], n_inst)
            ready.add_metric([tv.name], 1 if tv.ready else 0)
            stale.add_metric([tv.name], 1 if tv.health.stale else 0)
            stale_for.add_metric([tv.name], tv.health.stale_for)
        yield from (services, instances, ready, stale, stale_for)


def registry_for(stats: Stats, views: ViewSet) -> CollectorRegistry:
    """A registry of its own (not the process-global one) holding the server's metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(stats, views))
    return registry


async def serve_metrics(endpoint: Endpoint, registry: CollectorRegistry, task_status: anyio.abc.TaskStatus[int]
                        = anyio.TASK_STATUS_IGNORED) -> None:
    """Serve ``GET /metrics`` on ``endpoint`` until cancelled; ``task_status`` gets the bound port."""
    try:
        listener = await anyio.create_tcp_listener(local_host=endpoint.host, local_port=endpoint.port)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot serve metrics on {endpoint}: {exc.strerror or exc}") from None
    async with listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        task_status.started(port)

        async def handle(stream: SocketStream) -> None:
            async with stream:
                with anyio.move_on_after(5.0):
                    await _answer_http(stream, registry)

        await listener.serve(handle)


async def _answer_http(stream: SocketStream, registry: CollectorRegistry) -> None:
    data = b""
    try:
        while b"\r\n\r\n" not in data and b"\n\n" not in data and len(data) < 8192:
            data += await stream.receive(4096)
    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
        return
    parts = data.split(b"\r\n", 1)[0].split()
    if len(parts) >= 2 and parts[0] in (b"GET", b"HEAD") and parts[1].split(b"?")[0] in (b"/metrics", b"/"):
        body, status, ctype = generate_latest(registry), b"200 OK", CONTENT_TYPE_LATEST.encode()
    elif len(parts) >= 2 and parts[0] not in (b"GET", b"HEAD"):
        body, status, ctype = b'{"error": "method not allowed"}\n', b"405 Method Not Allowed", b"application/json"
    else:
        body, status, ctype = b'{"error": "not found: try /metrics"}\n', b"404 Not Found", b"application/json"
    head = b"HTTP/1.0 " + status + b"\r\nContent-Type: " + ctype + b"\r\nContent-Length: " + str(len(body)).encode()
    payload = head + b"\r\nConnection: close\r\n\r\n" + (b"" if parts[:1] == [b"HEAD"] else body)
    try:
        await stream.send(payload)
    except (anyio.BrokenResourceError, OSError):
        pass
