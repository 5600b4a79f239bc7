"""``disco dns`` record types against a real aggregator and real announces, asked by real DNS clients (dnspython's
``dns.query``/resolver and ``dig``)."""

from __future__ import annotations

import collections

import dns.asyncresolver
import dns.flags
import dns.rcode
import dns.rdatatype
import dns.resolver
import pytest

from bus.announce import announce
from bus.models import Instance, Status
from tests.integration.dns_helpers import addresses, dig, raw_announce, start_dns

pytestmark = pytest.mark.integration


async def test_a_aaaa_srv_txt_and_tag_label(nats_server, aggregator, client, prefix):
    async with (
        announce(client, "billing", address="10.0.0.5", port=8080, tags=["v2"], meta={"build": "42"},
                 zone="eu-1", weight=300) as r1,
        announce(client, "billing", address="10.0.0.6", port=8081, tags=["v1"]) as r2,
        announce(client, "billing", address="2001:db8::7", port=8082) as r3,
        start_dns(nats_server.url, prefix, ["acme"]) as d,
    ):
        assert await d.addresses("billing.acme.disco") == {"10.0.0.5", "10.0.0.6"}
        assert await d.addresses("billing.acme.disco", "AAAA") == {"2001:db8::7"}
        a = await d.query("billing.acme.disco")
        assert a.flags & dns.flags.AA and all(rr.ttl == 5 for rr in a.answer)

        srv = await d.query("billing.acme.disco", "SRV")
        records = {(rd.priority, rd.weight, rd.port, rd.target.to_text()) for rd in srv.answer[0]}
        assert records == {
            (1, 300, 8080, "0a000005.billing.acme.disco."),
            (1, 100, 8081, "0a000006.billing.acme.disco."),
            (1, 100, 8082, "20010db8000000000000000000000007.billing.acme.disco."),
        }
        glue = {(rr.name.to_text(), rd.to_text()) for rr in srv.additional for rd in rr}
        assert ("0a000005.billing.acme.disco.", "10.0.0.5") in glue
        assert ("20010db8000000000000000000000007.billing.acme.disco.", "2001:db8::7") in glue
        # an SRV target is a name that answers its address
        assert await d.addresses("0a000006.billing.acme.disco") == {"10.0.0.6"}

        rfc = await d.query("_billing._tcp.acme.disco", "SRV")
        assert {rd.port for rd in rfc.answer[0]} == {8080, 8081, 8082}
        assert await d.rcode("_billing._udp.acme.disco", "SRV") == "NXDOMAIN"
        assert await d.rcode("_tcp.acme.disco", "SRV") == "NOERROR"   # an empty non-terminal: exists

        assert await d.addresses("v2.billing.acme.disco") == {"10.0.0.5"}
        assert await d.addresses("V1.Billing.ACME.disco") == {"10.0.0.6"}   # case-insensitive
        assert await d.rcode("v3.billing.acme.disco") == "NXDOMAIN"

        txt = await d.query("billing.acme.disco", "TXT")
        strings = {tuple(s.decode() for s in rd.strings) for rd in txt.answer[0]}
        assert (f"id={r1.id}", "status=passing", "zone=eu-1", "tag=v2", "build=42") in strings
        assert (f"id={r2.id}", "status=passing", "tag=v1") in strings
        assert len(strings) == 3 and r3.id


async def test_only_passing_and_warning_instances_are_served(nats_server, aggregator, client, prefix):
    async with (
        announce(client, "api", address="10.0.1.1", port=80) as ok,
        announce(client, "api", address="10.0.1.2", port=80) as warn,
        announce(client, "api", address="10.0.1.3", port=80) as bad,
        start_dns(nats_server.url, prefix, ["acme"]) as d,
    ):
        await d.until("api.acme.disco", lambda got: len(got) == 3)
        await warn.update(status=Status.warning)
        await bad.update(status=Status.critical)
        await d.until("api.acme.disco", lambda got: got == {"10.0.1.1", "10.0.1.2"})
        await ok.update(status=Status.maintenance)
        await warn.update(status=Status.critical)
        # a service with no servable instance does not exist
        await d.until("api.acme.disco", lambda got: not got)
        assert await d.rcode("api.acme.disco") == "NXDOMAIN"
        await bad.update(status=Status.passing)
        assert await d.until("api.acme.disco", bool) == {"10.0.1.3"}


async def test_address_order_is_shuffled_by_weight(nats_server, aggregator, client, prefix):
    async with (
        announce(client, "db", address="10.0.2.1", port=5432, weight=900),
        announce(client, "db", address="10.0.2.2", port=5432, weight=100),
        start_dns(nats_server.url, prefix, ["acme"], seed=7, shuffles=0) as d,   # a fresh shuffle per answer
    ):
        await d.until("db.acme.disco", lambda got: len(got) == 2)
        firsts = collections.Counter()
        for _ in range(300):
            msg = await d.query("db.acme.disco")
            firsts[next(iter(msg.answer[0])).to_text()] += 1
        # the heavy instance comes first about 90 % of the time, the light one still sometimes
        assert firsts["10.0.2.1"] > 200 and firsts["10.0.2.2"] > 5, firsts


async def test_rendered_answers_are_reused_in_several_orders_and_dropped_on_change(
    nats_server, aggregator, client, prefix
):
    async with (
        announce(client, "kv", address="10.0.3.1", port=1),
        announce(client, "kv", address="10.0.3.2", port=1),
        start_dns(nats_server.url, prefix, ["acme"], seed=3, shuffles=8) as d,
    ):
        await d.until("kv.acme.disco", lambda got: len(got) == 2)
        orders = collections.Counter()
        for _ in range(100):
            msg = await d.query("kv.acme.disco")
            orders[tuple(rd.to_text() for rd in msg.answer[0])] += 1
        assert len(orders) == 2   # both orders, from the 8 kept renderings
        async with announce(client, "kv", address="10.0.3.3", port=1):
            # a change drops what was rendered: the next answers show it
            await d.until("kv.acme.disco", lambda got: len(got) == 3)


async def test_host_name_addresses_come_back_as_cname(nats_server, aggregator, client, prefix):
    async with (
        announce(client, "web", address="web1.example.com", port=80),
        start_dns(nats_server.url, prefix, ["acme"]) as d,
    ):
        a = await d.query("web.acme.disco", "A")
        assert a.answer[0].rdtype == dns.rdatatype.CNAME
        assert addresses(a, "CNAME") == {"web1.example.com."}
        assert addresses(await d.query("web.acme.disco", "CNAME"), "CNAME") == {"web1.example.com."}
        srv = await d.query("web.acme.disco", "SRV")
        assert {rd.target.to_text() for rd in srv.answer[0]} == {"web1.example.com."}


async def test_apex_soa_ns_ttls_and_negative_answers(nats_server, aggregator, client, prefix):
    async with (
        announce(client, "billing", address="10.0.0.5", port=8080),
        start_dns(nats_server.url, prefix, ["acme"], ttl=3, negative_ttl=7, zone="Corp.Disco") as d,
    ):
        soa = await d.query("corp.disco", "SOA")
        rd = soa.answer[0][0]
        assert rd.minimum == 7 and rd.mname.to_text() == "ns.corp.disco." and soa.answer[0].ttl == 7
        ns = await d.query("corp.disco", "NS")
        assert addresses(ns, "NS") == {"ns.corp.disco."}
        assert await d.addresses("ns.corp.disco") == {"127.0.0.1"}
        assert (await d.query("billing.acme.corp.disco")).answer[0].ttl == 3

        nx = await d.query("nothing.acme.corp.disco")
        assert dns.rcode.to_text(nx.rcode()) == "NXDOMAIN"
        assert nx.authority[0].rdtype == dns.rdatatype.SOA and nx.authority[0].ttl == 7
        nodata = await d.query("billing.acme.corp.disco", "MX")
        assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer and nodata.authority[0].ttl == 7
        assert await d.rcode("acme.corp.disco") == "NOERROR"            # the tenant exists, no records of its own
        assert await d.rcode("a.b.c.d.acme.corp.disco") == "NXDOMAIN"
        # never an open resolver: names outside the zone are refused, whatever they are
        for name in ("example.com", "disco", "billing.acme.disco", "."):
            out = await d.query(name)
            assert dns.rcode.to_text(out.rcode()) == "REFUSED" and not out.answer


async def test_dig_and_the_dnspython_resolver(nats_server, aggregator, client, prefix):
    async with (
        announce(client, "billing", address="10.0.0.5", port=8080, tags=["v2"]),
        announce(client, "billing", address="10.0.0.6", port=8081),
        start_dns(nats_server.url, prefix, ["acme"]) as d,
    ):
        short = await dig(d.port, "billing.acme.disco", "A", "+short")
        assert set(short.split()) == {"10.0.0.5", "10.0.0.6"}
        srv = await dig(d.port, "_billing._tcp.acme.disco", "SRV", "+short")
        assert {tuple(line.split()) for line in srv.splitlines()} == {
            ("1", "100", "8080", "0a000005.billing.acme.disco."),
            ("1", "100", "8081", "0a000006.billing.acme.disco."),
        }
        assert (await dig(d.port, "v2.billing.acme.disco", "+short")).split() == ["10.0.0.5"]
        assert "status: NXDOMAIN" in await dig(d.port, "nope.acme.disco", "A")
        assert "status: REFUSED" in await dig(d.port, "example.com", "A")
        full = await dig(d.port, "billing.acme.disco", "SRV")
        assert "flags: qr aa" in full and "ADDITIONAL SECTION" in full

        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = d.port
        answer = await resolver.resolve("billing.acme.disco", "A")
        assert {rd.address for rd in answer} == {"10.0.0.5", "10.0.0.6"}
        with pytest.raises(dns.resolver.NXDOMAIN):
            await resolver.resolve("missing.acme.disco", "A")


async def test_an_instance_that_stops_heartbeating_is_gone_after_its_expiry(nats_server, aggregator, client, prefix):
    async with start_dns(nats_server.url, prefix, ["acme"]) as d:
        await raw_announce(client, "acme", "cron", Instance(id="silent", address="10.9.0.1", port=1, ttl=1.0, seq=1))
        assert await d.until("cron.acme.disco", bool) == {"10.9.0.1"}
        await d.until("cron.acme.disco", lambda got: not got)
        assert await d.rcode("cron.acme.disco") == "NXDOMAIN"
