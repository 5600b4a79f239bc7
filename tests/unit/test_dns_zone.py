"""The pure parts of ``disco dns``: names of the zone, flag parsing, the view's bookkeeping, record building and
weighted ordering (the server's behaviour over the wire is in tests/integration/test_dns_*.py)."""

from __future__ import annotations

import collections
import ipaddress
import random

import dns.name
import dns.rcode
import dns.rdatatype
import pytest

from bus.models import ChangeEvent, ChangeReason, ChangeType, Instance, Status
from services.dns import names
from services.dns.records import ServiceRecords, weighted_order
from services.dns.settings import parse_endpoint, parse_tenant
from services.dns.view import Health, TenantView, ViewSet
from services.dns.zone import Zone

ZONE = dns.name.from_text("disco.")


@pytest.mark.parametrize(
    ("qname", "expected"),
    [
        ("disco.", names.Apex()),
        ("ns.disco.", names.NameServer()),
        ("acme.disco.", names.Tenant("acme")),
        ("billing.acme.disco.", names.Service("acme", "billing")),
        ("BILLING.Acme.DISCO.", names.Service("acme", "billing")),
        ("v2.billing.acme.disco.", names.Label("acme", "billing", "v2")),
        ("_billing._tcp.acme.disco.", names.Srv("acme", "billing", "tcp")),
        ("_tcp.acme.disco.", names.Protocol("acme", "tcp")),
        ("x._tcp.acme.disco.", names.Unknown()),
        ("a.b.c.acme.disco.", names.Unknown()),
        ("example.com.", names.Outside()),
        ("disco.example.", names.Outside()),
        (".", names.Outside()),
    ],
)
def test_names_of_the_zone(qname: str, expected: names.Parsed) -> None:
    assert names.parse(dns.name.from_text(qname), ZONE) == expected


def test_address_labels() -> None:
    assert names.address_label(ipaddress.ip_address("10.0.0.5")) == "0a000005"
    assert names.address_label(ipaddress.ip_address("::1")) == "0" * 31 + "1"


def test_flag_parsing() -> None:
    assert str(parse_endpoint("127.0.0.1:8600")) == "127.0.0.1:8600"
    assert str(parse_endpoint("[::1]:53")) == "[::1]:53"
    for bad in ("127.0.0.1", "host:53", "1.2.3.4:65536", "[::1]", ":53", "1.2.3.4:-1"):
        with pytest.raises(ValueError):
            parse_endpoint(bad)
    assert parse_tenant("acme").creds is None
    with pytest.raises(ValueError, match="invalid tenant"):
        parse_tenant("ACME")


def _inst(iid: str, address: str, **kw: object) -> Instance:
    return Instance(id=iid, address=address, port=80, **kw)  # type: ignore[arg-type]


def _event(kind: ChangeType, inst: Instance, service: str = "web", revision: int = 1) -> ChangeEvent:
    return ChangeEvent(type=kind, reason=ChangeReason.announce, tenant="acme", service=service, instance=inst,
                       revision=revision, at=0.0)


def test_the_view_holds_only_servable_instances_and_versions_changes() -> None:
    tv = TenantView("acme", Health("test"))
    tv.load({"web": {"a": _inst("a", "10.0.0.1"), "b": _inst("b", "10.0.0.2", status=Status.critical)}})
    assert tv.ready and tv.counts == (1, 1) and set(tv.instances("web")) == {"a"}
    v1 = tv.version("web")
    tv.apply(_event(ChangeType.added, _inst("b", "10.0.0.2", status=Status.warning)))
    assert set(tv.instances("web")) == {"a", "b"} and tv.version("web") > v1
    v2 = tv.version("web")
    tv.apply(_event(ChangeType.updated, _inst("b", "10.0.0.2", status=Status.warning)))   # no change
    assert tv.version("web") == v2
    tv.apply(_event(ChangeType.updated, _inst("a", "10.0.0.1", status=Status.maintenance)))
    tv.apply(_event(ChangeType.removed, _inst("b", "10.0.0.2")))
    assert tv.counts == (0, 0) and tv.version("web") == 0 and not tv.instances("web")


def test_txt_records_carry_metadata_and_split_long_values() -> None:
    long_value = "x" * 400
    recs = ServiceRecords({"a": _inst("a", "10.0.0.1", meta={"build": "42", "note": long_value}, tags=("v2",))},
                          dns.name.from_text("web.acme.disco."))
    strings = [s.decode() for s in recs.members[0].txt.strings]
    assert strings[:4] == ["id=a", "status=passing", "tag=v2", "build=42"]
    assert all(len(s) <= 255 for s in strings) and "".join(strings[4:]) == "note=" + long_value


def test_weighted_order_puts_heavier_members_first_in_proportion() -> None:
    recs = ServiceRecords(
        {"a": _inst("a", "10.0.0.1", weight=600), "b": _inst("b", "10.0.0.2", weight=300),
         "c": _inst("c", "10.0.0.3", weight=100)},
        dns.name.from_text("web.acme.disco."),
    )
    rng = random.Random(3)
    firsts = collections.Counter(weighted_order(recs.members, rng)[0].instance.id for _ in range(10_000))
    assert abs(firsts["a"] / 10_000 - 0.6) < 0.03
    assert abs(firsts["b"] / 10_000 - 0.3) < 0.03
    assert abs(firsts["c"] / 10_000 - 0.1) < 0.02


def test_zone_answers_without_io() -> None:
    views = ViewSet()
    tv = TenantView("acme", Health("test"))
    views.add(tv)
    zone = Zone("disco.", views, ttl=5, negative_ttl=5)
    assert zone.lookup(dns.name.from_text("web.acme.disco."), dns.rdatatype.A).rcode == dns.rcode.SERVFAIL
    tv.load({"web": {"a": _inst("a", "10.0.0.1"), "h": _inst("h", "db.example.")}})
    ans = zone.lookup(dns.name.from_text("web.acme.disco."), dns.rdatatype.A)
    assert [rd.to_text() for rd in ans.answer[0]] == ["10.0.0.1"]          # the host name is left to SRV
    srv = zone.lookup(dns.name.from_text("web.acme.disco."), dns.rdatatype.SRV)
    assert {rd.target.to_text() for rd in srv.answer[0]} == {"0a000001.web.acme.disco.", "db.example."}
    assert zone.lookup(dns.name.from_text("other.disco."), dns.rdatatype.A).rcode == dns.rcode.NXDOMAIN
