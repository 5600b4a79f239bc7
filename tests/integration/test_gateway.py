"""disco gateway as a reverse proxy: real aiohttp backends, a real aggregator, real clients (curl, aiohttp)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from services.gateway.routing import RouteSettings
from services.gateway.settings import OutlierSettings
from services.natsserver import NatsServer
from tests.conftest import Running
from tests.gateway_support import Backend, Registration, RunningGateway, poll, start_gateway
from tests.helpers import require_binary

pytestmark = pytest.mark.usefixtures("aggregator")


@pytest.fixture
async def acme(nats_server: NatsServer, conn_factory: Callable[..., Any]) -> Any:
    return await conn_factory(nats_server.url, tenant="acme")


@pytest.fixture
async def backends() -> AsyncIterator[Callable[..., Any]]:
    started: list[Backend] = []

    async def make(name: str, *, start: bool = True) -> Backend:
        b = Backend(name)
        if start:
            await b.start()
        started.append(b)
        return b

    yield make
    for b in started:
        await b.stop()


@pytest.fixture
async def registrations() -> AsyncIterator[Callable[..., Any]]:
    made: list[Registration] = []

    async def make(conn: Any, service: str, backend: Backend, **kw: Any) -> Registration:
        r = await Registration(conn, service, address="127.0.0.1", port=backend.port,
                               instance_id=backend.name, **kw).start()
        made.append(r)
        return r

    yield make
    for r in made:
        await r.kill()


@pytest.fixture
async def gateways() -> AsyncIterator[Callable[..., Any]]:
    running: list[RunningGateway] = []

    async def make(conns: dict[str, Any], **kw: Any) -> RunningGateway:
        g = await start_gateway(conns, **kw)
        running.append(g)
        return g

    yield make
    for g in running:
        await g.stop()


async def curl(*args: str) -> tuple[int, str, dict[str, str]]:
    """Status, body and (lower-cased) headers of one curl call (run without blocking the loop the gateway
    shares with the test)."""
    exe = require_binary("curl", "curl")
    proc = await anyio.run_process([exe, "-sS", "-i", "--max-time", "20", *args], check=True)
    text = proc.stdout.decode().replace("\r\n", "\n")
    while text.startswith("HTTP/1.1 100"):  # an interim "100 Continue" before the response
        text = text.partition("\n\n")[2]
    head, _, body = text.partition("\n\n")
    lines = head.split("\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return status, body, headers


async def test_path_and_host_routing_follow_the_live_view(
    acme: Any, backends: Any, registrations: Any, gateways: Any
) -> None:
    a = await backends("a")
    reg_a = await registrations(acme, "web", a)
    gw = await gateways({"acme": acme}, domain="svc.test")

    status, body, headers = await curl(f"{gw.url}/acme/web/deep/x?q=1")
    assert (status, body) == (200, "a")
    assert headers["x-path"] == "/deep/x?q=1"  # the /<tenant>/<svc> prefix is stripped, the query kept
    assert headers["via"].endswith("disco-gateway")
    status, body, headers = await curl("-I", f"{gw.url}/acme/web/whoami")  # HEAD: the head, no body
    assert (status, body, headers["content-length"]) == (200, "", "1")
    status, body, headers = await curl("-H", "Host: web.acme.svc.test", f"{gw.url}/deep/y")
    assert (status, body, headers["x-path"]) == (200, "a", "/deep/y")  # by host the path is untouched
    status, body, _ = await curl("-H", "Host: web.zeta.svc.test", f"{gw.url}/deep/y")
    assert status == 404 and json.loads(body)["code"] == "not_found"  # a tenant this gateway does not serve

    async with aiohttp.ClientSession() as http:
        async def who() -> str:
            async with http.get(f"{gw.url}/acme/web/whoami") as r:
                assert r.status == 200
                return await r.text()

        # a new instance gets traffic once the gateway's watch has it (how soon is scripts/bench_gateway.py's
        # "announce -> first request" figure, not a budget here)
        b = await backends("b")
        await registrations(acme, "web", b)
        announced = time.monotonic()

        async def reached_b() -> bool:
            return await who() == "b"

        await poll(reached_b, timeout=10, interval=0.01)
        assert b.calls >= 1, time.monotonic() - announced

        # a killed instance (bye) gets no more traffic
        await reg_a.kill()
        await a.stop()
        await poll(lambda: "a" not in gw.gw.views["acme"].services.get("web", {}))
        seen = {await who() for _ in range(20)}
        assert seen == {"b"}


async def test_errors_are_json(acme: Any, backends: Any, registrations: Any, gateways: Any) -> None:
    gw = await gateways({"acme": acme}, routes=RouteSettings(timeout=0.3))
    status, body, headers = await curl(f"{gw.url}/acme/nothing/x")
    assert status == 503 and headers["content-type"].startswith("application/json")
    assert json.loads(body)["code"] == "no_instances"
    status, body, _ = await curl(f"{gw.url}/other/web/x")
    assert status == 404 and "not served" in json.loads(body)["error"]
    status, body, _ = await curl(f"{gw.url}/acme/Not_A_Name/x")
    assert status == 404 and json.loads(body)["ok"] is False
    status, body, _ = await curl("-X", "DELETE", f"{gw.url}/v1/tenants")
    assert status == 405 and json.loads(body)["code"] == "method_not_allowed"

    a = await backends("a")
    await registrations(acme, "web", a)
    await poll(lambda: "web" in gw.gw.views["acme"].services)
    status, body, _ = await curl(f"{gw.url}/acme/web/slow?s=5")
    assert status == 504 and json.loads(body)["code"] == "timeout"
    status, body, _ = await curl(f"{gw.url}/acme/web/status/500")
    assert status == 500 and json.loads(body) == {"from": "a"}  # the upstream's own 5xx is passed on

    # malformed HTTP from a raw socket: a 4xx, the gateway keeps serving
    for raw in (b"GET /acme/web/whoami HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
                b"NOT HTTP AT ALL\r\n\r\n", b"GET /acme/web/whoami HTTP/1.1\r\nBad Header\r\n\r\n"):
        async with await anyio.connect_tcp("127.0.0.1", gw.gw.port) as sock:
            await sock.send(raw)
            reply = b""
            with anyio.fail_after(5):
                while b"}" not in reply:
                    reply += await sock.receive()
        head, _, body_bytes = reply.partition(b"\r\n\r\n")
        assert head.split(b"\r\n", 1)[0].split()[1] == b"400", reply
        assert b"application/json" in head and json.loads(body_bytes)["code"] == "bad_request"
    status, body, _ = await curl(f"{gw.url}/acme/web/whoami")
    assert (status, body) == (200, "a")


async def test_headers_and_tokens(acme: Any, backends: Any, registrations: Any, gateways: Any) -> None:
    a = await backends("a")
    await registrations(acme, "web", a)
    gw = await gateways({"acme": acme}, tokens={"acme": "s3cret"})
    status, body, headers = await curl(f"{gw.url}/acme/web/headers")
    assert status == 401 and json.loads(body)["code"] == "unauthorized"
    assert headers["www-authenticate"].startswith("Bearer")
    status, body, _ = await curl("-H", "Authorization: Bearer wrong", f"{gw.url}/acme/web/headers")
    assert status == 401
    status, body, _ = await curl(
        "-H", "Authorization: Bearer s3cret", "-H", "Connection: keep-alive, X-Hop", "-H", "X-Hop: 1",
        "-H", "X-Forwarded-For: 10.9.9.9", "-H", "X-Keep: yes", f"{gw.url}/acme/web/headers",
    )
    assert status == 200
    seen = {k.lower(): v for k, v in json.loads(body).items()}
    assert seen["x-forwarded-for"] == "10.9.9.9, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == f"127.0.0.1:{gw.gw.port}"
    assert seen["via"] == "1.1 disco-gateway"
    assert seen["x-keep"] == "yes"
    assert "x-hop" not in seen  # named by Connection: hop-by-hop
    assert "authorization" not in seen  # the gateway's token stays at the gateway
    # the catalog of a token tenant wants the token too (header or ?token=)
    assert (await curl(f"{gw.url}/v1/tenants/acme/services"))[0] == 401
    assert (await curl(f"{gw.url}/v1/tenants/acme/services?token=s3cret"))[0] == 200


async def test_retries_and_ejection(
    acme: Any, backends: Any, registrations: Any, gateways: Any, aggregator: Running
) -> None:
    good = await backends("good")
    dead = await backends("dead", start=False)  # registered, but nothing listens on its port
    await registrations(acme, "web", good)
    await registrations(acme, "web", dead)
    gw = await gateways({"acme": acme}, outlier=OutlierSettings(consecutive=2, base_time=1.0, max_time=5.0))
    key = ("acme", "web", "dead")
    async with aiohttp.ClientSession() as http:
        # idempotent calls that land on the dead instance are retried on the good one: every call succeeds
        for _ in range(6):
            async with http.get(f"{gw.url}/acme/web/whoami") as r:
                assert (r.status, await r.text()) == (200, "good")
        assert gw.gw.proxy is not None and gw.gw.proxy.retries_total >= 1
        assert gw.gw.outliers.ejected(key)  # two connect failures in a row: ejected
        # while it is out, even non-idempotent calls (never retried) avoid it
        for _ in range(6):
            async with http.post(f"{gw.url}/acme/web/sha", data=b"x") as r:
                assert r.status == 200
        # it comes back on its own: once it listens again and the ejection has run out, it gets traffic
        await dead.start()
        await poll(lambda: not gw.gw.outliers.ejected(key), timeout=5)

        async def hit_dead() -> bool:
            async with http.get(f"{gw.url}/acme/web/whoami") as r:
                return await r.text() == "dead"

        await poll(hit_dead, timeout=5)
        # a non-idempotent call to an instance that cannot be reached is not retried: 502 JSON
        await dead.stop()
        statuses = set()
        for _ in range(6):
            async with http.post(f"{gw.url}/acme/web/sha", data=b"x") as r:
                statuses.add(r.status)
                if r.status != 200:
                    assert (await r.json())["code"] == "upstream_failed"
        assert statuses <= {200, 502} and 502 in statuses


async def test_websocket_echo(acme: Any, backends: Any, registrations: Any, gateways: Any) -> None:
    a = await backends("a")
    await registrations(acme, "chat", a)
    gw = await gateways({"acme": acme})
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{gw.url}/acme/chat/ws") as ws:
        for i in range(5):
            await ws.send_str(f"hello {i}")
            msg = await ws.receive(timeout=5)
            assert msg.data == f"a:hello {i}"
        await ws.send_bytes(b"\x00\x01" * 50_000)
        msg = await ws.receive(timeout=5)
        assert msg.data == b"\x00\x01" * 50_000


async def test_bodies_stream_both_ways(
    acme: Any, backends: Any, registrations: Any, gateways: Any, tmp_path: Path
) -> None:
    a = await backends("a")
    await registrations(acme, "files", a)
    gw = await gateways({"acme": acme})
    async with aiohttp.ClientSession() as http:
        # the response's first part arrives while the upstream has not finished it
        async with http.get(f"{gw.url}/acme/files/drip") as r:
            with anyio.fail_after(10):
                first = await r.content.readexactly(6)
            assert first == b"first;" and not a.release.is_set()
            a.release.set()
            assert await r.content.read() == b"second"

        # the request's first part reaches the upstream while the caller has not finished sending it
        more = asyncio.Event()

        async def upload() -> AsyncIterator[bytes]:
            yield b"x" * 1000
            await more.wait()
            yield b"y" * 1000

        async def release_when_first_arrived() -> None:
            await a.got_first.wait()
            more.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(release_when_first_arrived)
            with anyio.fail_after(10):
                async with http.post(f"{gw.url}/acme/files/upload-first", data=upload()) as r:
                    assert r.status == 200 and (await r.json())["bytes"] == 2000

    # curl sends "Expect: 100-continue" before a large body: the gateway answers it and the body gets through
    blob = tmp_path / "blob"
    blob.write_bytes(b"z" * (3 * 1024 * 1024))
    status, body, _ = await curl("-H", "Content-Type: application/octet-stream", "--data-binary", f"@{blob}",
                                 f"{gw.url}/acme/files/sha")
    assert status == 200 and json.loads(body)["bytes"] == 3 * 1024 * 1024


async def test_per_route_zone_preference_and_status(
    acme: Any, backends: Any, registrations: Any, gateways: Any
) -> None:
    eu, us = await backends("eu"), await backends("us")
    await registrations(acme, "web", eu, zone="eu-1")
    await registrations(acme, "web", us, zone="us-1")
    down = await backends("down")
    await registrations(acme, "web", down, zone="eu-1", status="maintenance")
    gw = await gateways({"acme": acme}, overrides={("acme", "web"): RouteSettings(prefer_zone="eu-1")})
    async with aiohttp.ClientSession() as http:
        for _ in range(10):
            async with http.get(f"{gw.url}/acme/web/whoami") as r:
                assert await r.text() == "eu"  # the zone's instance; never one in maintenance
    assert down.calls == 0


async def test_keeps_routing_when_the_aggregator_is_gone(
    acme: Any, backends: Any, registrations: Any, gateways: Any, aggregator: Running
) -> None:
    a = await backends("a")
    await registrations(acme, "web", a)
    gw = await gateways({"acme": acme})
    assert (await curl(f"{gw.url}/acme/web/whoami"))[:2] == (200, "a")
    await aggregator.stop()
    # the view is held in the gateway: calls and the catalog go on from it (stale, not failing)
    for _ in range(3):
        assert (await curl(f"{gw.url}/acme/web/whoami"))[:2] == (200, "a")
    status, body, _ = await curl(f"{gw.url}/v1/tenants/acme/services/web")
    assert status == 200 and [i["id"] for i in json.loads(body)["instances"]] == ["a"]
