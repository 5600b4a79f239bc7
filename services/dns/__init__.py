"""``disco dns``: an authoritative DNS server over the live view, for programs that find their peers by DNS.

Modules, one concept each: :mod:`~services.dns.settings` (configuration), :mod:`~services.dns.view` (the served
tenants' views and their freshness), :mod:`~services.dns.follow` (keeping them current over NATS),
:mod:`~services.dns.names` (what a name of the zone means), :mod:`~services.dns.records` (an instance's records),
:mod:`~services.dns.zone` (the answer to a question), :mod:`~services.dns.protocol` (bytes in, bytes out),
:mod:`~services.dns.transport` (UDP and TCP), :mod:`~services.dns.metrics` (counters and Prometheus) and
:mod:`~services.dns.server` (all of it in one task group).
"""

from services.dns.server import DnsServer
from services.dns.settings import DnsSettings, Endpoint, TenantSource, parse_endpoint, parse_tenant

__all__ = ["DnsServer", "DnsSettings", "Endpoint", "TenantSource", "parse_endpoint", "parse_tenant"]
