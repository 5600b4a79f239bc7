"""``disco dns`` follows the live view: announces, byes and expiries reach its answers as they happen (no NATS
round trip per answer); while the aggregators or NATS are gone it answers from the last good view and says so in
its log and metrics."""

from __future__ import annotations

import logging

import aiohttp
import anyio
import pytest

from bus.announce import announce
from bus.models import Instance
from bus.watch import watch
from tests.conftest import eventually
from tests.integration.dns_helpers import raw_announce, start_dns

#: announce answered, bye or expiry gone: the issue's promise (seconds)
PROMISE = 0.1

pytestmark = pytest.mark.integration


async def test_announce_answered_and_bye_and_expiry_gone_within_100_ms(nats_server, aggregator, client, prefix):
    """The issue's promise, as poll deadlines from the aggregator's acknowledgement (or its expiry event): the
    path is one change event into memory (p99 a few ms in scripts/bench_dns.py, on a loaded machine)."""
    async with start_dns(nats_server.url, prefix, ["acme"]) as d:
        async with announce(client, "warm-up", address="10.3.0.9", port=80):   # first-time costs, not measured
            await d.until("warm-up.acme.disco", bool)
        assert await d.rcode("orders.acme.disco") == "NXDOMAIN"
        async with announce(client, "orders", address="10.3.0.1", port=80):
            assert await d.until("orders.acme.disco", bool, timeout=PROMISE) == {"10.3.0.1"}
        # leaving the block said bye and had it acknowledged
        await d.until("orders.acme.disco", lambda got: not got, timeout=PROMISE)
        assert await d.rcode("orders.acme.disco") == "NXDOMAIN"

        async with watch(client, "cron") as w:
            await raw_announce(client, "acme", "cron", Instance(id="silent", address="10.3.0.2", port=1, ttl=1.0,
                                                                seq=1))
            assert await d.until("cron.acme.disco", bool, timeout=PROMISE) == {"10.3.0.2"}
            assert (await w.next()).type == "added"
            with anyio.fail_after(10):
                ev = await w.next()
            assert ev.type == "removed" and ev.reason == "expired"
            await d.until("cron.acme.disco", lambda got: not got, timeout=PROMISE)


async def test_answers_cost_no_nats_round_trip(nats_server, aggregator, client, prefix):
    async with (
        announce(client, "billing", address="10.3.1.1", port=80),
        start_dns(nats_server.url, prefix, ["acme"], probe_interval=60.0) as d,
    ):
        nc = d.server.links[0].conn.nc
        sent = nc.stats["out_msgs"]
        for i in range(200):
            await d.query("billing.acme.disco" if i % 2 else f"x{i}.acme.disco", "A")
        assert nc.stats["out_msgs"] - sent <= 2   # at most a probe: 200 answers sent nothing over NATS


async def test_stale_answers_while_the_aggregator_is_stopped(
    nats_server, start_aggregator, client, prefix, caplog
):
    caplog.set_level(logging.INFO, logger="disco.dns")
    agg = await start_aggregator(nats_server.url)
    await raw_announce(client, "acme", "billing", Instance(id="b1", address="10.4.0.1", port=80, ttl=300.0, seq=1))
    async with start_dns(nats_server.url, prefix, ["acme"], probe_interval=0.1, probe_timeout=0.5,
                         metrics="127.0.0.1:0") as d:
        link = d.server.links[0]
        assert not link.health.stale and await d.addresses("billing.acme.disco") == {"10.4.0.1"}
        await agg.stop()
        await eventually(lambda: link.health.stale, timeout=10)
        # the last good view is served, and it says so
        assert await d.addresses("billing.acme.disco") == {"10.4.0.1"}
        assert await d.rcode("nothing.acme.disco") == "NXDOMAIN"
        assert any("serving the last good view (stale)" in r.getMessage() for r in caplog.records)
        metrics = await _scrape(d.server.metrics_port)
        assert 'disco_dns_stale{tenant="acme"} 1.0' in metrics
        # back: fresh again, and changes flow again
        await start_aggregator(nats_server.url)
        await eventually(lambda: not link.health.stale, timeout=15)
        assert any("the view is fresh" in r.getMessage() for r in caplog.records)
        assert 'disco_dns_stale{tenant="acme"} 0.0' in await _scrape(d.server.metrics_port)
        async with announce(client, "billing", address="10.4.0.2", port=80):
            await d.until("billing.acme.disco", lambda got: got == {"10.4.0.1", "10.4.0.2"})


async def test_stale_answers_while_nats_is_down(fresh_server, start_aggregator, conn_factory, prefix):
    await start_aggregator(fresh_server.url)
    client = await conn_factory(fresh_server.url, tenant="acme")
    await raw_announce(client, "acme", "billing", Instance(id="b1", address="10.5.0.1", port=80, ttl=300.0, seq=1))
    async with start_dns(fresh_server.url, prefix, ["acme"], probe_interval=0.1, probe_timeout=0.5) as d:
        assert await d.addresses("billing.acme.disco") == {"10.5.0.1"}
        fresh_server.stop()
        link = d.server.links[0]
        await eventually(lambda: link.health.stale, timeout=10)
        for _ in range(3):
            assert await d.addresses("billing.acme.disco") == {"10.5.0.1"}
        assert link.health.stale_for > 0


async def test_metrics_count_queries_by_type_and_rcode_and_the_view(nats_server, aggregator, client, prefix):
    async with (
        announce(client, "billing", address="10.6.0.1", port=80),
        announce(client, "billing", address="10.6.0.2", port=80),
        start_dns(nats_server.url, prefix, ["acme"], metrics="127.0.0.1:0") as d,
    ):
        for _ in range(3):
            await d.query("billing.acme.disco", "A")
        await d.query("billing.acme.disco", "SRV", tcp=True)
        await d.query("nope.acme.disco", "A")
        await d.query("example.com", "TXT")
        text = await _scrape(d.server.metrics_port)
        assert 'disco_dns_queries_total{qtype="A",rcode="NOERROR",transport="udp"} 3.0' in text
        assert 'disco_dns_queries_total{qtype="SRV",rcode="NOERROR",transport="tcp"} 1.0' in text
        assert 'disco_dns_queries_total{qtype="A",rcode="NXDOMAIN",transport="udp"} 1.0' in text
        assert 'disco_dns_queries_total{qtype="TXT",rcode="REFUSED",transport="udp"} 1.0' in text
        assert 'disco_dns_view_instances{tenant="acme"} 2.0' in text
        assert 'disco_dns_view_services{tenant="acme"} 1.0' in text
        assert 'disco_dns_stale{tenant="acme"} 0.0' in text
        url = f"http://127.0.0.1:{d.server.metrics_port}/nope"
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            assert resp.status == 404 and "error" in await resp.json(content_type=None)


async def _scrape(port: int) -> str:
    with anyio.fail_after(10):
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            assert resp.status == 200
            return await resp.text()
