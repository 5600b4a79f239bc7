"""The catalog API: answers from the watched view, ETag/304, blocking queries, filters, SSE, JSON errors, and
every response checked against the OpenAPI description the gateway serves (jsonschema)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import anyio
import pytest
from jsonschema import Draft202012Validator

from services.natsserver import NatsServer
from tests.gateway_support import Registration, RunningGateway, free_port, poll, start_gateway

pytestmark = pytest.mark.usefixtures("aggregator")


@pytest.fixture
async def setup(nats_server: NatsServer, conn_factory: Callable[..., Any]) -> AsyncIterator[dict[str, Any]]:
    acme = await conn_factory(nats_server.url, tenant="acme")
    beta = await conn_factory(nats_server.url, tenant="beta")
    gw = await start_gateway({"acme": acme, "beta": beta})
    regs: list[Registration] = []

    async def announce(service: str, iid: str, **kw: Any) -> Registration:
        r = await Registration(acme, service, address="10.0.0.1", port=free_port(), instance_id=iid, **kw).start()
        regs.append(r)
        return r

    async with aiohttp.ClientSession() as http:
        spec = await (await http.get(f"{gw.url}/openapi.json")).json()
        yield {"gw": gw, "http": http, "announce": announce, "spec": spec, "acme": acme}
    for r in regs:
        await r.kill()
    await gw.stop()


class Checker:
    """Validates a response against what openapi.json says for that path and status."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec

    def __call__(self, template: str, status: int, body: Any) -> None:
        responses = self.spec["paths"][template]["get"]["responses"]
        assert str(status) in responses, f"{template} does not document status {status}"
        resp = responses[str(status)]
        if "$ref" in resp:
            resp = self.spec["components"]["responses"][resp["$ref"].rsplit("/", 1)[1]]
        schema = resp["content"]["application/json"]["schema"]
        Draft202012Validator({**schema, "components": self.spec["components"]}).validate(body)


async def get(s: dict[str, Any], path: str, **kw: Any) -> tuple[int, Any, Any]:
    async with s["http"].get(s["gw"].url + path, **kw) as r:
        body = await r.json() if r.status != 304 else None
        return r.status, body, r.headers


async def test_catalog_answers_match_the_openapi_description(setup: dict[str, Any]) -> None:
    s = setup
    check = Checker(s["spec"])
    Draft202012Validator.check_schema({"components": s["spec"]["components"]})
    await s["announce"]("billing", "b1", zone="eu-1", tags=("v2", "blue"))
    await s["announce"]("billing", "b2", zone="us-1", tags=("v2",), status="warning")
    await s["announce"]("search", "s1")
    gw: RunningGateway = s["gw"]
    await poll(lambda: gw.gw.views["acme"].instance_count() == 3)

    status, body, headers = await get(s, "/healthz")
    check("/healthz", status, body)
    status, body, headers = await get(s, "/v1/tenants")
    check("/v1/tenants", status, body)
    assert {t["name"]: t["instances"] for t in body["tenants"]} == {"acme": 3, "beta": 0}

    status, body, headers = await get(s, "/v1/tenants/acme/services")
    check("/v1/tenants/{tenant}/services", status, body)
    assert [(x["name"], x["instances"], x["passing"]) for x in body["services"]] == [("billing", 2, 1),
                                                                                     ("search", 1, 1)]
    assert headers["ETag"] == f'"{body["revision"]}"'

    status, body, _ = await get(s, "/v1/tenants/acme/services/billing")
    check("/v1/tenants/{tenant}/services/{service}", status, body)
    assert [i["id"] for i in body["instances"]] == ["b1", "b2"]
    assert body["instances"][0]["zone"] == "eu-1" and body["instances"][0]["age"] >= 0
    # filters as resolve: tag (all), zone, status
    for query, ids in (("?tag=blue", ["b1"]), ("?tag=v2&tag=blue", ["b1"]), ("?zone=us-1", ["b2"]),
                       ("?status=passing", ["b1"]), ("?status=warning&status=passing", ["b1", "b2"]),
                       ("?tag=nope", [])):
        status, body, _ = await get(s, "/v1/tenants/acme/services/billing" + query)
        check("/v1/tenants/{tenant}/services/{service}", status, body)
        assert [i["id"] for i in body["instances"]] == ids, query

    # errors: JSON, documented
    for path, want in (("/v1/tenants/zeta/services", 404), ("/v1/tenants/acme/services/nope", 404),
                       ("/v1/tenants/acme/services?status=dead", 400), ("/v1/tenants/acme/services?wait=soon", 400),
                       ("/v1/tenants/acme/services?index=x", 400)):
        status, body, _ = await get(s, path)
        template = "/v1/tenants/{tenant}/services" + ("/{service}" if path.count("/") == 5 else "")
        assert status == want, path
        check(template.split("?")[0], status, body)


async def test_etag_and_blocking_queries(setup: dict[str, Any]) -> None:
    s = setup
    await s["announce"]("billing", "b1")
    gw: RunningGateway = s["gw"]
    await poll(lambda: gw.gw.views["acme"].instance_count() == 1)
    status, body, headers = await get(s, "/v1/tenants/acme/services/billing")
    etag, rev = headers["ETag"], body["revision"]
    status, _, headers = await get(s, "/v1/tenants/acme/services/billing", headers={"If-None-Match": etag})
    assert status == 304 and headers["ETag"] == etag

    # a blocking query returns when the view passes the index...
    async def blocked() -> tuple[int, Any, Any]:
        return await get(s, f"/v1/tenants/acme/services/billing?index={rev}&wait=30s")

    task = asyncio.create_task(blocked())
    await asyncio.sleep(0)
    assert not task.done()
    await s["announce"]("billing", "b2")
    with anyio.fail_after(10):
        status, body, headers = await task
    assert status == 200 and body["revision"] > rev and {i["id"] for i in body["instances"]} == {"b1", "b2"}
    # ...and after the wait when it does not move, with the same revision
    status, body2, _ = await get(s, f"/v1/tenants/acme/services/billing?index={body['revision']}&wait=200ms")
    assert status == 200 and body2["revision"] == body["revision"]
    # the old ETag no longer matches
    status, _, _ = await get(s, "/v1/tenants/acme/services/billing", headers={"If-None-Match": etag})
    assert status == 200


async def test_server_sent_events(setup: dict[str, Any]) -> None:
    s = setup
    await s["announce"]("billing", "b1")
    gw: RunningGateway = s["gw"]
    await poll(lambda: gw.gw.views["acme"].instance_count() == 1)
    spec = s["spec"]["components"]

    async with s["http"].get(gw.url + "/v1/tenants/acme/events") as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")

        async def next_event() -> tuple[str, Any]:
            kind, data = "", ""
            with anyio.fail_after(10):
                while True:
                    line = (await r.content.readline()).decode().rstrip("\n")
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: "):
                        data = line[6:]
                    elif line == "" and kind:
                        return kind, json.loads(data)

        kind, snap = await next_event()
        assert kind == "snapshot" and [i["id"] for i in snap["services"]["billing"]] == ["b1"]
        Draft202012Validator({"$ref": "#/components/schemas/Snapshot", "components": spec}).validate(snap)
        reg = await s["announce"]("billing", "b2")
        kind, change = await next_event()
        assert (kind, change["type"], change["instance"]["id"]) == ("change", "added", "b2")
        Draft202012Validator({"$ref": "#/components/schemas/Change", "components": spec}).validate(change)
        await reg.kill()
        kind, change = await next_event()
        assert (kind, change["type"], change["instance"]["id"], change["reason"]) == ("change", "removed", "b2",
                                                                                     "bye")
    status, body, _ = await get(s, "/v1/tenants/zeta/events")
    assert status == 404 and body["code"] == "not_found"
