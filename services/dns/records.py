"""The DNS records of one service, built once per change of the service and reused by every answer until then.

Each servable instance becomes a :class:`Member`: its address record (``A``/``AAAA``, or a ``CNAME`` when the
address is a host name), its ``SRV`` record (priority 1, the instance's ``weight``, its port, and a target that is
either its host name or ``<address-label>.<svc>.<tenant>.<zone>``), and its ``TXT`` record (``id=``, ``status=``,
``zone=``, ``version=``, one ``tag=`` per tag, then each metadata ``key=value``; an attribute longer than 255
bytes continues in the next string of the same record). Answers pick and order members per query:
:func:`weighted_order` shuffles them in proportion to their weights.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rdtypes.IN.SRV

from bus.models import Instance
from services.dns.names import address_label

__all__ = ["Member", "ServiceRecords", "make_rdata", "weighted_order"]

IN = dns.rdataclass.IN
A = dns.rdatatype.A
AAAA = dns.rdatatype.AAAA
_MAX_STRING = 255


def make_rdata(cls: Any, *args: Any) -> dns.rdata.Rdata:
    """``cls(IN, <its type>, *args)``: dnspython's rdata constructors are not annotated."""
    rdata: dns.rdata.Rdata = cls(IN, dns.rdatatype.from_text(cls.__name__), *args)
    return rdata


@dataclass(frozen=True, slots=True)
class Member:
    """One instance as DNS sees it."""

    instance: Instance
    #: the SRV target: the host name, or the name of the address under the service
    target: dns.name.Name
    #: A or AAAA record (None for a host-name address)
    address: dns.rdata.Rdata | None
    #: dns.rdatatype.A or AAAA (None for a host-name address)
    family: int | None
    #: the address label of an IP address (None for a host name)
    label: str | None
    #: CNAME to the host name (None for an IP address)
    cname: dns.rdata.Rdata | None
    srv: dns.rdata.Rdata
    txt: dns.rdata.Rdata
    #: tags in lower case, as labels compare
    tags: frozenset[str]

    @property
    def weight(self) -> int:
        return self.instance.weight


def _txt(inst: Instance) -> dns.rdata.Rdata:
    attrs = [f"id={inst.id}", f"status={inst.status.value}"]
    if inst.zone:
        attrs.append(f"zone={inst.zone}")
    if inst.version:
        attrs.append(f"version={inst.version}")
    attrs += [f"tag={t}" for t in inst.tags]
    attrs += [f"{k}={v}" for k, v in sorted(inst.meta.items())]
    strings: list[bytes] = []
    for attr in attrs:
        data = attr.encode()
        strings += [data[i : i + _MAX_STRING] for i in range(0, len(data), _MAX_STRING)] or [b""]
    return make_rdata(dns.rdtypes.ANY.TXT.TXT, strings)


def _member(inst: Instance, owner: dns.name.Name) -> Member:
    try:
        ip = ipaddress.ip_address(inst.address)
    except ValueError:
        ip = None
    address: dns.rdata.Rdata | None = None
    family: int | None = None
    label: str | None = None
    cname: dns.rdata.Rdata | None = None
    if ip is None:
        target = dns.name.from_text(inst.address, origin=dns.name.root)
        cname = make_rdata(dns.rdtypes.ANY.CNAME.CNAME, target)
    else:
        label = address_label(ip)
        target = dns.name.Name((label.encode(), *owner.labels))
        if ip.version == 4:
            address, family = make_rdata(dns.rdtypes.IN.A.A, str(ip)), A
        else:
            address, family = make_rdata(dns.rdtypes.IN.AAAA.AAAA, str(ip)), AAAA
    srv = make_rdata(dns.rdtypes.IN.SRV.SRV, 1, inst.weight, inst.port, target)
    return Member(inst, target, address, family, label, cname, srv, _txt(inst),
                  frozenset(t.lower() for t in inst.tags))


class ServiceRecords:
    """The members of one service (sorted by instance id) and what its names can select."""

    __slots__ = ("by_label", "members", "protocols", "tags")

    def __init__(self, instances: Mapping[str, Instance], owner: dns.name.Name) -> None:
        """``owner``: the service's name, ``<svc>.<tenant>.<zone>`` (SRV targets live under it)."""
        self.members = tuple(_member(instances[i], owner) for i in sorted(instances))
        self.tags = frozenset(t for m in self.members for t in m.tags)
        self.protocols = frozenset(m.instance.protocol for m in self.members)
        self.by_label: dict[str, list[Member]] = {}
        for m in self.members:
            if m.label is not None:
                self.by_label.setdefault(m.label, []).append(m)

    def tagged(self, tag: str) -> list[Member]:
        return [m for m in self.members if tag in m.tags]

    def select(self, label: str) -> Sequence[Member]:
        """``<label>.<svc>``: the members tagged ``label``, else those at the address ``label`` encodes."""
        if label in self.tags:
            return self.tagged(label)
        return self.by_label.get(label, ())

    def with_protocol(self, protocol: str) -> list[Member]:
        return [m for m in self.members if m.instance.protocol == protocol]


def weighted_order(members: Iterable[Member], rng: random.Random) -> list[Member]:
    """The members in a random order where a heavier member tends to come first: each is keyed by
    ``u ** (1 / weight)`` with ``u`` uniform in [0, 1) (Efraimidis-Spirakis), so the first of the list is member
    ``i`` with probability ``weight_i / sum(weights)``."""
    keyed = [(rng.random() ** (1.0 / m.weight), m) for m in members]
    keyed.sort(key=lambda km: km[0], reverse=True)
    return [m for _, m in keyed]
