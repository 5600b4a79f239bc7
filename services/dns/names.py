"""The names of the zone, and what each one means (like Consul's, with the tenant as a label)::

    <zone>                                   apex: SOA, NS
    ns.<zone>                                the name server itself (A/AAAA of the listen address)
    <tenant>.<zone>                          a served tenant (no records of its own)
    <svc>.<tenant>.<zone>                    A/AAAA (or CNAME), SRV, TXT of the service's instances
    <label>.<svc>.<tenant>.<zone>            the instances tagged <label>; failing that, the instance whose address
                                             <label> encodes (the target of an SRV record: 0a000005 is 10.0.0.5)
    _<svc>._<proto>.<tenant>.<zone>          SRV (RFC 2782) of the instances whose protocol is <proto>
    _<proto>.<tenant>.<zone>                 (exists when some instance has that protocol; no records)

Labels are compared in lower case (DNS is case-insensitive); an answer repeats the question's spelling.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import dns.name

__all__ = ["Apex", "Label", "NameServer", "Outside", "Parsed", "Protocol", "Service", "Srv", "Tenant",
           "Unknown", "address_label", "parse"]


@dataclass(frozen=True, slots=True)
class Outside:
    """Not in the zone: refused (never recursed)."""


@dataclass(frozen=True, slots=True)
class Unknown:
    """In the zone, but no name of this shape can exist: NXDOMAIN."""


@dataclass(frozen=True, slots=True)
class Apex:
    pass


@dataclass(frozen=True, slots=True)
class NameServer:
    pass


@dataclass(frozen=True, slots=True)
class Tenant:
    tenant: str


@dataclass(frozen=True, slots=True)
class Protocol:
    tenant: str
    protocol: str


@dataclass(frozen=True, slots=True)
class Service:
    tenant: str
    service: str


@dataclass(frozen=True, slots=True)
class Label:
    """``<label>.<svc>.<tenant>``: a tag filter, or an SRV target."""

    tenant: str
    service: str
    label: str


@dataclass(frozen=True, slots=True)
class Srv:
    tenant: str
    service: str
    protocol: str


Parsed = Outside | Unknown | Apex | NameServer | Tenant | Protocol | Service | Label | Srv


def _text(label: bytes) -> str:
    return label.decode("latin-1").lower()


def parse(qname: dns.name.Name, zone: dns.name.Name) -> Parsed:
    """What ``qname`` names in ``zone`` (see the module docstring)."""
    if not qname.is_subdomain(zone):
        return Outside()
    labels = qname.labels[: len(qname.labels) - len(zone.labels)]
    n = len(labels)
    if n == 0:
        return Apex()
    rev = [_text(x) for x in reversed(labels)]
    if n == 1:
        return NameServer() if rev[0] == "ns" else Tenant(rev[0])
    tenant = rev[0]
    if n == 2:
        if rev[1].startswith("_"):
            return Protocol(tenant, rev[1][1:])
        return Service(tenant, rev[1])
    if n == 3:
        if rev[1].startswith("_"):
            if rev[2].startswith("_"):
                return Srv(tenant, rev[2][1:], rev[1][1:])
            return Unknown()
        return Label(tenant, rev[1], rev[2])
    return Unknown()


def address_label(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The label that names an address as an SRV target: its bytes in hex (8 digits for IPv4, 32 for IPv6)."""
    return address.packed.hex()
