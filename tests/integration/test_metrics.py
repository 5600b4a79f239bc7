"""Prometheus metrics of the aggregator (``serve_metrics``, ``disco aggregator --metrics``, ``disco up``) and of
the gateway: each endpoint is scraped before and after load the test makes, and the numbers move with it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

import bus
from bus.codec import decode_map
from services.aggregator.prometheus import serve_metrics
from services.natsserver import NatsServer
from tests.conftest import Running
from tests.gateway_support import Backend, Registration, free_port, poll, start_gateway

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(url: str) -> Samples:
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape_until(url: str, predicate: Callable[[Samples], bool]) -> Samples:
    """Scrape until ``predicate`` holds (counters of events move just after the acknowledgement that the test
    waited for), failing after 10 s."""
    last: Samples = {}

    async def check() -> bool:
        nonlocal last
        last = await scrape(url)
        return predicate(last)

    try:
        await poll(check, timeout=10, interval=0.05)
    except TimeoutError:
        raise AssertionError(f"metrics never matched; last scrape: {last}") from None
    return last


@pytest.fixture
async def metrics_of() -> AsyncIterator[Callable[[Running], Any]]:
    tasks: list[asyncio.Task[None]] = []

    async def start(running: Running) -> str:
        bound: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def main() -> None:
            async with anyio.create_task_group() as tg:
                bound.set_result(await tg.start(serve_metrics, running.agg, "127.0.0.1", 0))

        tasks.append(asyncio.create_task(main()))
        with anyio.fail_after(10):
            return f"http://127.0.0.1:{await bound}/metrics"

    yield start
    for t in tasks:
        t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await t


async def test_aggregator_metrics_move_with_load(
    nats_server: NatsServer, start_aggregator: Any, conn_factory: Callable[..., Any], metrics_of: Any, prefix: str
) -> None:
    agg: Running = await start_aggregator(nats_server.url, default_max_instances=2)
    url = await metrics_of(agg)
    acme = await conn_factory(nats_server.url, tenant="acme")
    before = await scrape(url)
    assert value(before, "disco_instances", tenant="acme") == 0

    regs = [await Registration(acme, "web", address="10.0.0.1", port=8000 + i, instance_id=f"w{i}").start()
            for i in range(2)]
    with pytest.raises(bus.QuotaExceeded):
        await Registration(acme, "web", address="10.0.0.1", port=8009, instance_id="w9").start()
    for _ in range(5):
        await bus.resolve(acme, "web")
    after = await scrape_until(url, lambda m: value(m, "disco_events_total", tenant="acme", type="added",
                                                    reason="announce") == 2)
    assert value(after, "disco_instances", tenant="acme") == 2
    assert value(after, "disco_services", tenant="acme") == 1
    assert value(after, "disco_refusals_total", tenant="acme", code="quota_exceeded") >= 1
    assert value(after, "disco_resolve_seconds_count") - value(before, "disco_resolve_seconds_count") >= 5
    assert value(after, "disco_kv_write_seconds_count") - value(before, "disco_kv_write_seconds_count") >= 2
    assert value(after, "disco_resolve_seconds_bucket", le="+Inf") == value(after, "disco_resolve_seconds_count")
    assert value(after, "disco_self_preservation", tenant="acme") == 0
    assert ("disco_read_lag_seconds", frozenset()) in after

    await regs[0].kill()
    await poll(lambda: agg.agg.view.count("acme") == (1, 1))
    later = await scrape_until(url, lambda m: value(m, "disco_events_total", tenant="acme", type="removed",
                                                    reason="bye") == 1)
    assert value(later, "disco_instances", tenant="acme") == 1

    # _sys.stats serves the same counters
    reply = decode_map((await acme.nc.request(f"{prefix}._sys.stats", b"", timeout=5)).data)
    assert reply["metrics"]["events.added"]["acme"] == value(later, "disco_events_total", tenant="acme",
                                                               type="added", reason="announce")
    assert reply["metrics"]["refused.quota_exceeded"]["acme"] == value(later, "disco_refusals_total",
                                                                         tenant="acme", code="quota_exceeded")
    await regs[1].kill()


async def test_gateway_metrics_move_with_load(
    nats_server: NatsServer, aggregator: Running, conn_factory: Callable[..., Any]
) -> None:
    acme = await conn_factory(nats_server.url, tenant="acme")
    backend = await Backend("a").start()
    reg = await Registration(acme, "web", address="127.0.0.1", port=backend.port, instance_id="a").start()
    gw = await start_gateway({"acme": acme})
    try:
        await poll(lambda: gw.gw.views["acme"].instance_count() == 1)
        before = await scrape(f"{gw.url}/metrics")
        assert value(before, "disco_gateway_instances", tenant="acme") == 1
        async with aiohttp.ClientSession() as http:
            for _ in range(7):
                async with http.get(f"{gw.url}/acme/web/whoami") as r:
                    assert r.status == 200
            async with http.get(f"{gw.url}/acme/web/status/500") as r:
                assert r.status == 500
        after = await scrape(f"{gw.url}/metrics")
        ok = ("disco_gateway_requests_total", dict(tenant="acme", service="web", code="200"))
        assert value(after, ok[0], **ok[1]) - value(before, ok[0], **ok[1]) == 7
        assert value(after, "disco_gateway_requests_total", tenant="acme", service="web", code="500") == 1
        assert value(after, "disco_gateway_request_seconds_count", tenant="acme") >= 8
        assert value(after, "disco_gateway_pick_seconds_count") == 8
        assert value(after, "disco_gateway_resolvers") == 1
        assert value(after, "disco_gateway_stale_resolvers") == 0

        # the gateway's own refusals, by code; names it does not know are one label
        async with aiohttp.ClientSession() as http:
            for path in ("/acme/nope/x", "/acme/nada/x", "/zeta/web/x"):
                async with http.get(f"{gw.url}{path}") as r:
                    assert r.status in (404, 503)
        second = await Registration(acme, "web", address="127.0.0.1", port=backend.port, instance_id="a2").start()
        await second.kill()
        later = await scrape_until(f"{gw.url}/metrics", lambda m: value(
            m, "disco_gateway_view_events_total", tenant="acme", type="removed", reason="bye") == 1)
        assert value(later, "disco_gateway_view_events_total", tenant="acme", type="added", reason="announce") == 1
        assert value(later, "disco_gateway_refusals_total", tenant="acme", code="no_instances") == 2
        assert value(later, "disco_gateway_refusals_total", tenant="_unknown", code="not_found") == 1
        assert value(later, "disco_gateway_requests_total", tenant="acme", service="_unknown", code="503") == 2
    finally:
        await reg.kill()
        await gw.stop()
        await backend.stop()


async def test_disco_aggregator_metrics_flag(nats_server: NatsServer, prefix: str,
                                             conn_factory: Callable[..., Any]) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISCO_")}
    proc = await anyio.open_process(
        [sys.executable, "-m", "services", "aggregator", "--nats", nats_server.url, "--prefix", prefix,
         "--bucket", f"{prefix}_view", "--stream", f"{prefix}_changes", "--metrics", f"127.0.0.1:{port}"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        async def up() -> Samples | None:
            try:
                return await scrape(url)
            except aiohttp.ClientError:
                return None

        before = await poll(up, timeout=30, interval=0.1)
        acme = await conn_factory(nats_server.url, tenant="acme")
        reg = await Registration(acme, "api", address="10.0.0.2", port=9000, instance_id="x").start()
        after = await scrape_until(url, lambda m: value(m, "disco_events_total", tenant="acme", type="added",
                                                        reason="announce") == 1)
        assert value(after, "disco_instances", tenant="acme") == 1
        assert value(after, "disco_kv_write_seconds_count") > value(before, "disco_kv_write_seconds_count")
        await reg.kill()
    finally:
        with anyio.CancelScope(shield=True):
            proc.kill()
            await proc.wait()
            await proc.aclose()


async def test_disco_up_serves_metrics(tmp_path: Any) -> None:
    port, mport = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISCO_")}
    proc = await anyio.open_process(
        [sys.executable, "-m", "services", "up", "--port", str(port), "--data-dir", str(tmp_path / "d"),
         "--metrics", f"127.0.0.1:{mport}"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        async def up() -> Samples | None:
            try:
                return await scrape(f"http://127.0.0.1:{mport}/metrics")
            except aiohttp.ClientError:
                return None

        samples = await poll(up, timeout=60, interval=0.2)
        assert ("disco_read_lag_seconds", frozenset()) in samples
        assert ("disco_resolve_seconds_count", frozenset()) in samples
        proc.send_signal(2)
        with anyio.fail_after(30):
            assert await proc.wait() == 0
    finally:
        with anyio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await proc.aclose()


@pytest.mark.parametrize("command", [["aggregator"], ["up"]])
async def test_bad_metrics_address_is_a_usage_error(command: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISCO_")}
    with anyio.fail_after(30):
        proc = await anyio.run_process([sys.executable, "-m", "services", *command, "--metrics", "nowhere"],
                                       check=False, env=env)
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert "Traceback" not in err and "--metrics" in err, err
