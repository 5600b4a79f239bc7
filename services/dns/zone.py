"""The zone's answers: what a (name, type) question gets, read from the served views (no I/O).

Promises: a name outside the zone is refused (``REFUSED``, never recursed); a name of the zone that does not exist
is ``NXDOMAIN`` and a name that exists without records of the asked type is ``NOERROR`` with no answer (both with
the SOA in the authority section, whose minimum — ``negative_ttl`` — bounds how long resolvers cache the
absence); a tenant that is served but not listed yet is ``SERVFAIL`` (so the absence is not cached). A service
exists while it has a passing or warning instance; a tenant not served on this listener does not exist here.

Address records come in a per-answer order weighted by ``weight`` (:func:`~services.dns.records.weighted_order`);
a service whose instances all have host-name addresses answers ``A``/``AAAA`` with one ``CNAME`` (to one of them,
weighted at random per answer) that the client's resolver follows.
"""

from __future__ import annotations

import ipaddress
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.NS
import dns.rdtypes.ANY.SOA
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rrset

from services.dns import names
from services.dns.records import Member, ServiceRecords, make_rdata, weighted_order
from services.dns.view import TenantView, ViewSet

__all__ = ["Answer", "Zone"]

IN = dns.rdataclass.IN
T = dns.rdatatype
_CACHE_LIMIT = 10_000


@dataclass(slots=True)
class Answer:
    rcode: int = dns.rcode.NOERROR
    answer: list[dns.rrset.RRset] = field(default_factory=list)
    authority: list[dns.rrset.RRset] = field(default_factory=list)
    additional: list[dns.rrset.RRset] = field(default_factory=list)
    #: False for names outside the zone (no AA bit)
    authoritative: bool = True


class Zone:
    """Answers for one zone over a :class:`~services.dns.view.ViewSet`. Times (TTLs) are seconds."""

    def __init__(
        self,
        origin: str,
        views: ViewSet,
        *,
        ttl: float = 5.0,
        negative_ttl: float = 5.0,
        ns_address: str = "127.0.0.1",
        rng: random.Random | None = None,
    ) -> None:
        self.origin = dns.name.from_text(origin)
        self.views = views
        self.ttl = round(ttl)
        self.negative_ttl = round(negative_ttl)
        self.rng = rng or random.Random()
        self.ns_name = dns.name.Name((b"ns", *self.origin.labels))
        ip = ipaddress.ip_address(ns_address)
        if ip.is_unspecified:
            ip = ipaddress.ip_address("127.0.0.1" if ip.version == 4 else "::1")
        kind = dns.rdtypes.IN.A.A if ip.version == 4 else dns.rdtypes.IN.AAAA.AAAA
        self.ns_address = make_rdata(kind, str(ip))
        self._hostmaster = dns.name.Name((b"hostmaster", *self.origin.labels))
        self._cache: dict[tuple[str, str], tuple[int, ServiceRecords]] = {}

    # -- the zone's own records -----------------------------------------------------------------------------------
    def soa(self) -> dns.rrset.RRset:
        serial = int(time.time()) & 0xFFFFFFFF
        rdata = make_rdata(dns.rdtypes.ANY.SOA.SOA, self.ns_name, self._hostmaster, serial, 3600, 600, 86400,
                           self.negative_ttl)
        return dns.rrset.from_rdata_list(self.origin, self.negative_ttl, [rdata])

    def _ns(self, owner: dns.name.Name) -> dns.rrset.RRset:
        return dns.rrset.from_rdata_list(owner, self.ttl, [make_rdata(dns.rdtypes.ANY.NS.NS, self.ns_name)])

    def _ns_glue(self) -> dns.rrset.RRset:
        return dns.rrset.from_rdata_list(self.ns_name, self.ttl, [self.ns_address])

    # -- answering ------------------------------------------------------------------------------------------------
    def lookup(self, qname: dns.name.Name, qtype: int) -> Answer:
        """The answer to ``qname``/``qtype`` (class IN)."""
        where = names.parse(qname, self.origin)
        if isinstance(where, names.Outside):
            return Answer(rcode=dns.rcode.REFUSED, authoritative=False)
        if isinstance(where, names.Unknown):
            return self._nxdomain()
        if isinstance(where, names.Apex):
            return self._apex(qname, qtype)
        if isinstance(where, names.NameServer):
            if qtype in (self.ns_address.rdtype, T.ANY):
                return Answer(answer=[dns.rrset.from_rdata_list(qname, self.ttl, [self.ns_address])])
            return self._nodata()
        tv = self.views.get(where.tenant)
        if tv is None:
            return self._nxdomain()
        if not tv.ready:
            return Answer(rcode=dns.rcode.SERVFAIL)
        if isinstance(where, names.Tenant):
            return self._nodata()
        if isinstance(where, names.Protocol):
            known = any(
                (recs := self._records(tv, s)) is not None and where.protocol in recs.protocols
                for s in tv.services()
            )
            return self._nodata() if known else self._nxdomain()
        svc = self._records(tv, where.service)
        if svc is None:
            return self._nxdomain()
        if isinstance(where, names.Service):
            return self._members(qname, qtype, svc.members, srv_only=False)
        if isinstance(where, names.Label):
            return self._members(qname, qtype, svc.select(where.label), srv_only=False)
        return self._members(qname, qtype, svc.with_protocol(where.protocol), srv_only=True)

    def _apex(self, qname: dns.name.Name, qtype: int) -> Answer:
        if qtype == T.SOA:
            return Answer(answer=[self.soa()], authority=[self._ns(self.origin)], additional=[self._ns_glue()])
        if qtype == T.NS:
            return Answer(answer=[self._ns(qname)], additional=[self._ns_glue()])
        if qtype == T.ANY:
            return Answer(answer=[self.soa(), self._ns(qname)], additional=[self._ns_glue()])
        return self._nodata()

    def _nxdomain(self) -> Answer:
        return Answer(rcode=dns.rcode.NXDOMAIN, authority=[self.soa()])

    def _nodata(self) -> Answer:
        return Answer(authority=[self.soa()])

    def _records(self, tv: TenantView, service: str) -> ServiceRecords | None:
        version = tv.version(service)
        if version == 0:
            return None
        key = (tv.name, service)
        hit = self._cache.get(key)
        if hit is not None and hit[0] == version:
            return hit[1]
        owner = dns.name.Name((service.encode(), tv.name.encode(), *self.origin.labels))
        recs = ServiceRecords(tv.instances(service), owner)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = (version, recs)
        return recs

    def _members(self, qname: dns.name.Name, qtype: int, members: Sequence[Member], *, srv_only: bool) -> Answer:
        if not members:
            return self._nxdomain()
        ans = Answer()
        if qtype == T.SRV or qtype == T.ANY:
            ordered = weighted_order(members, self.rng)
            ans.answer.append(dns.rrset.from_rdata_list(qname, self.ttl, [m.srv for m in ordered]))
            glued: set[dns.name.Name] = set()
            for family in (T.A, T.AAAA):
                for m in ordered:
                    if m.family == family and m.address is not None and m.target not in glued:
                        glued.add(m.target)
                        ans.additional.append(dns.rrset.from_rdata_list(m.target, self.ttl, [m.address]))
        if srv_only:
            return ans if ans.answer else self._nodata()
        if qtype in (T.A, T.AAAA, T.ANY):
            ans.answer += self._addresses(qname, qtype, members)
        elif qtype == T.CNAME:
            ans.answer += self._cname(qname, members)
        elif qtype == T.TXT:
            ans.answer.append(dns.rrset.from_rdata_list(qname, self.ttl, [m.txt for m in members]))
        if not ans.answer:
            return self._nodata()
        return ans

    def _addresses(self, qname: dns.name.Name, qtype: int, members: Sequence[Member]) -> list[dns.rrset.RRset]:
        if all(m.family is None for m in members):
            return self._cname(qname, members)
        out = []
        for family in (T.A, T.AAAA):
            if qtype in (family, T.ANY):
                rdatas = [m.address for m in weighted_order(members, self.rng)
                          if m.family == family and m.address is not None]
                if rdatas:
                    out.append(dns.rrset.from_rdata_list(qname, self.ttl, rdatas))
        return out

    def _cname(self, qname: dns.name.Name, members: Sequence[Member]) -> list[dns.rrset.RRset]:
        hosts = [m for m in members if m.cname is not None]
        if not hosts or any(m.family is not None for m in members):
            return []
        pick = weighted_order(hosts, self.rng)[0]
        return [dns.rrset.from_rdata_list(qname, self.ttl, [pick.cname])] if pick.cname is not None else []
