"""The commands a Consul user reaches for, run as the real console script against a real server and aggregator:
``services``, filters and ``--fail-empty``, ``deregister``, ``maint``/``status-set``, ``status``/``stats`` (and the
aggregators as NATS micro services), the tenant taken from the credentials."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import anyio
import nats
import pytest

from bus.announce import announce
from bus.client import resolve, snapshot
from bus.models import Status
from services.aggregator.micro import SERVICE_NAME
from services.natsserver import NatsServer
from tests.conftest import eventually
from tests.procs import error_line, run_disco, spawn

pytestmark = pytest.mark.integration


@pytest.fixture
def conn_args(nats_server: NatsServer, prefix: str) -> list[str]:
    return ["--nats", nats_server.url, "--prefix", prefix]


async def _json(*args: str) -> Any:
    res = await run_disco(*args)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


async def test_services_filters_and_fail_empty(
    nats_server: NatsServer, aggregator: Any, client: Any, conn_args: list[str]
) -> None:
    async with (
        announce(client, "web", address="10.0.0.1", port=80, tags=["blue"], meta={"build": "1"}, zone="eu",
                 instance_id="w1", ttl=30),
        announce(client, "web", address="10.0.0.2", port=80, tags=["green"], meta={"build": "2"}, zone="us",
                 instance_id="w2", ttl=30, status=Status.critical),
        announce(client, "db", address="10.0.0.3", port=5432, instance_id="d1", ttl=30),
    ):
        svcs = await _json("services", "-t", "acme", "--json", *conn_args)
        assert [(s["service"], s["instances"], s["passing"], s["critical"]) for s in svcs["services"]] == [
            ("db", 1, 1, 0), ("web", 2, 1, 1)]
        table = await run_disco("services", "-t", "acme", *conn_args)
        assert table.stdout.decode().splitlines()[0].split() == [
            "SERVICE", "INSTANCES", "PASSING", "WARNING", "CRITICAL", "MAINTENANCE"]

        async def ids(*args: str) -> list[str]:
            data = await _json(*args, "--json", *conn_args)
            return sorted(i["id"] for i in data["instances"])

        assert await ids("ls", "-t", "acme") == ["d1", "w1", "w2"]
        assert await ids("ls", "-t", "acme", "--meta", "build=2") == ["w2"]
        assert await ids("ls", "-t", "acme", "--zone", "eu") == ["w1"]
        assert await ids("ls", "-t", "acme", "--status", "critical", "--status", "warning") == ["w2"]
        assert await ids("ls", "-t", "acme", "web", "--tag", "blue") == ["w1"]
        assert await ids("resolve", "-t", "acme", "web") == ["w1"]  # passing and warning by default
        assert await ids("resolve", "-t", "acme", "web", "--status", "critical") == ["w2"]
        assert await ids("resolve", "-t", "acme", "web", "--meta", "build=2", "--status", "critical") == ["w2"]
        assert await ids("resolve", "-t", "acme", "web", "--meta", "build=3") == []

        unknown = await run_disco("resolve", "-t", "acme", "nope", "--fail-empty", *conn_args)
        assert unknown.returncode == 3 and "unknown service 'nope'" in unknown.stderr.decode()
        no_match = await run_disco("resolve", "-t", "acme", "web", "--zone", "mars", "--fail-empty", *conn_args)
        assert no_match.returncode == 4 and "has 2 instance(s), none matching" in no_match.stderr.decode()
        without = await run_disco("resolve", "-t", "acme", "web", "--zone", "mars", *conn_args)
        assert without.returncode == 0
        data = await _json("resolve", "-t", "acme", "nope", "--json", *conn_args)
        assert data["known"] is False and data["instances"] == []

        # watch filters: only the matching instance's events, and an instance leaving the filter is seen leaving
        async with spawn("watch", "-t", "acme", "web", "--status", "passing", "--json", *conn_args) as watcher:
            await watcher.line(lambda x: "watching acme/web" in x, stream="err")
            async with (
                announce(client, "web", address="10.0.0.4", port=80, instance_id="w3", ttl=30,
                         status=Status.critical),
                announce(client, "web", address="10.0.0.5", port=80, instance_id="w4", ttl=30) as w4,
            ):
                await watcher.line(lambda x: '"id":"w4"' in x)
                await w4.update(status=Status.critical)
                left = json.loads(await watcher.line(lambda x: '"critical"' in x))
                assert (left["type"], left["instance"]["id"]) == ("updated", "w4")
            assert not any('"w3"' in line for line in watcher.out)
            assert await watcher.stop() == 0


async def test_deregister_and_maint(
    nats_server: NatsServer, aggregator: Any, client: Any, conn_args: list[str]
) -> None:
    async with spawn("announce", "-t", "acme", "--service", "web", "-a", "10.0.0.1", "-p", "80", "--ttl", "60",
                     "--id", "web-1", "--json", *conn_args) as announcer:
        registered = json.loads(await announcer.line(lambda x: x.startswith("{")))
        assert (registered["id"], registered["status"], registered["tenant"]) == ("web-1", "passing", "acme")

        entered = await _json("maint", "-t", "acme", "--service", "web", "--id", "web-1", "--json", *conn_args)
        assert (entered["status"], entered["changed"]) == ("maintenance", True)
        assert (await resolve(client, "web")).instances == ()  # resolves skip it
        snap = await snapshot(client, services=("web",))
        assert [i.status for i in snap.services["web"]] == [Status.maintenance]
        # the owning `disco announce` took the status over (its re-announces keep it)
        await announcer.line(lambda x: "set to maintenance from outside" in x, stream="err")
        again = await run_disco("maint", "-t", "acme", "--service", "web", "--id", "web-1", *conn_args)
        assert "already maintenance" in again.stdout.decode()

        await _json("maint", "-t", "acme", "--service", "web", "--id", "web-1", "--disable", "--json", *conn_args)
        assert [i.id for i in (await resolve(client, "web")).instances] == ["web-1"]
        warned = await _json("status-set", "-t", "acme", "--service", "web", "--id", "web-1", "--status", "warning",
                             "--json", *conn_args)
        assert warned["status"] == "warning"
        assert [i.status for i in (await resolve(client, "web")).instances] == [Status.warning]

        bad = await run_disco("maint", "-t", "acme", "--service", "web", "--id", "nope", *conn_args)
        assert bad.returncode == 1 and "no instance 'nope' in service 'web'" in error_line(bad.stderr)
        assert await announcer.stop(signal.SIGTERM) == 0

    # an instance whose process died without a bye (long ttl): deregistered by id
    conn_ttl = client
    async with announce(conn_ttl, "db", address="10.0.0.9", port=5432, instance_id="db-1", ttl=300):
        unknown = await run_disco("deregister", "-t", "acme", "--service", "db", "--id", "db-x", *conn_args)
        assert unknown.returncode == 1
        assert "no instance 'db-x' in service 'db' (tenant 'acme')" in error_line(unknown.stderr)
        nosvc = await run_disco("deregister", "-t", "acme", "--service", "nosuch", "--id", "db-1", *conn_args)
        assert nosvc.returncode == 1 and "unknown service 'nosuch'" in error_line(nosvc.stderr)
        done = await _json("deregister", "-t", "acme", "--service", "db", "--id", "db-1", "--json", *conn_args)
        assert done["deregistered"] is True and done["revision"] > 0
        assert (await snapshot(client, services=("db",))).services.get("db", ()) == ()


async def test_status_stats_and_micro_services(
    nats_server: NatsServer, start_aggregator: Any, client: Any, conn_args: list[str], prefix: str
) -> None:
    first = await start_aggregator(nats_server.url)
    second = await start_aggregator(nats_server.url)
    async with announce(client, "web", address="10.0.0.1", port=80, ttl=30):

        async def both_listed() -> Any:
            data = await _json("status", "--json", *conn_args)
            return data if len(data["aggregators"]) == 2 else None

        status = await eventually(both_listed)
        for agg in status["aggregators"]:
            assert agg["prefix"] == prefix and agg["ready"] is True and agg["instances"] == 1
            assert agg["protocol"] == 1 and agg["started"].endswith("Z") and "counters" not in agg
        stats = await _json("stats", "--json", *conn_args)
        assert sum(a["counters"].get("events.added", 0) for a in stats["aggregators"]) == 1  # decoded counters
        assert all(a["revision"] >= 1 for a in stats["aggregators"])
        table = await run_disco("status", *conn_args)
        assert table.stdout.decode().splitlines()[0].split()[:4] == ["AGGREGATOR", "VERSION", "READY", "REVISION"]

        # what `nats micro ls` / `nats micro stats` ask: every aggregator answers $SRV.PING / $SRV.STATS
        nc = await nats.connect(nats_server.url)
        try:
            inbox = nc.new_inbox()
            sub = await nc.subscribe(inbox)
            await nc.publish(f"$SRV.STATS.{SERVICE_NAME}", b"", reply=inbox)
            replies = []
            with anyio.move_on_after(5):
                while len([r for r in replies if r["metadata"]["prefix"] == prefix]) < 2:
                    replies.append(json.loads((await sub.next_msg(timeout=5)).data))
            ours = [r for r in replies if r["metadata"]["prefix"] == prefix]
            assert len(ours) == 2 and {r["id"] for r in ours} == {a["id"] for a in status["aggregators"]}
            assert all(r["endpoints"][0]["data"]["instances"] == 1 for r in ours)
        finally:
            await nc.close()

    await first.stop()
    await second.stop()
    none = await run_disco("status", *conn_args, "--timeout", "0.5")
    assert none.returncode == 1 and "no aggregator answered" in error_line(none.stderr)


async def test_the_tenant_comes_from_the_credentials(
    nats_server: NatsServer, aggregator: Any, client: Any, conn_args: list[str], tmp_path: Path
) -> None:
    creds = tmp_path / "acme.creds.json"  # disco's credentials file (a server without auth ignores the password)
    creds.write_text(json.dumps({"tenant": "acme", "user": "acme", "password": "x"}))
    async with announce(client, "web", address="10.0.0.1", port=80, instance_id="w1", ttl=30):
        data = await _json("ls", "--creds", str(creds), "--json", *conn_args)
        assert data["tenant"] == "acme" and [i["id"] for i in data["instances"]] == ["w1"]
        same = await run_disco("resolve", "web", "-t", "acme", "--creds", str(creds), *conn_args)
        assert same.returncode == 0
        other = await run_disco("ls", "-t", "globex", "--creds", str(creds), *conn_args)
        assert other.returncode == 2
        assert error_line(other.stderr) == "disco: error: these credentials are for tenant 'acme', not 'globex'"
        nobody = await run_disco("ls", *conn_args)
        assert nobody.returncode == 2 and "no tenant" in error_line(nobody.stderr)
