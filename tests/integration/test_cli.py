"""The ``disco`` command as users run it: the real console script in subprocesses, against the session NATS
server and an aggregator of the test's own prefix."""

from __future__ import annotations

import json
import signal
from datetime import datetime
from typing import Any

import pytest

from bus.announce import announce
from bus.client import resolve
from services.natsserver import NatsServer, free_port
from tests.procs import error_line, run_disco, spawn

pytestmark = pytest.mark.integration


@pytest.fixture
def conn_args(nats_server: NatsServer, prefix: str) -> list[str]:
    return ["--nats", nats_server.url, "--prefix", prefix]


async def test_announce_resolve_ls_then_bye_on_sigterm(
    nats_server: NatsServer, start_aggregator: Any, conn_args: list[str]
) -> None:
    await start_aggregator(nats_server.url)
    async with spawn(
        "announce", "--tenant", "acme", "--service", "web", "--address", "10.0.0.7", "--port", "8080",
        "--tag", "blue", "--tag", "v2", "--meta", "owner=team-a", "--zone", "z1", "--ttl", "30", *conn_args,
    ) as announcer:
        iid = (await announcer.line(lambda x: bool(x.strip()))).strip()

        res = await run_disco("resolve", "--tenant", "acme", "web", "--json", *conn_args)
        assert res.returncode == 0, res.stderr
        reply = json.loads(res.stdout)
        assert (reply["tenant"], reply["service"], reply["known"]) == ("acme", "web", True)
        [inst] = reply["instances"]
        assert inst["id"] == iid and "v" not in inst and "seq" not in inst
        assert (inst["address"], inst["port"], inst["zone"]) == ("10.0.0.7", 8080, "z1")
        assert inst["tags"] == ["blue", "v2"] and inst["meta"] == {"owner": "team-a"} and inst["ttl"] == 30

        table = await run_disco("resolve", "--tenant", "acme", "web", "--tag", "blue", *conn_args)
        assert table.returncode == 0
        header, row = table.stdout.decode().splitlines()
        assert header.split() == ["ID", "ADDRESS", "STATUS", "ZONE", "TAGS"]
        assert row.split() == [iid, "10.0.0.7:8080", "passing", "z1", "blue,v2"]

        other_tag = await run_disco("resolve", "--tenant", "acme", "web", "--tag", "green", "--json", *conn_args)
        assert other_tag.returncode == 0 and json.loads(other_tag.stdout)["instances"] == []
        assert "none matching the filters" in other_tag.stderr.decode()

        listing = await run_disco("ls", "--tenant", "acme", *conn_args)
        assert listing.returncode == 0
        rows = [line.split()[:3] for line in listing.stdout.decode().splitlines()[1:]]
        assert rows == [["web", iid, "10.0.0.7:8080"]]
        snap = json.loads((await run_disco("ls", "--tenant", "acme", "--json", *conn_args)).stdout)
        assert [(i["service"], i["id"]) for i in snap["instances"]] == [("web", iid)]
        assert set(snap) == {"tenant", "revision", "instances"}

        other_tenant = await run_disco("ls", "--tenant", "globex", *conn_args)
        assert other_tenant.returncode == 0 and other_tenant.stdout == b""

        assert await announcer.stop(signal.SIGTERM) == 0
    assert "Traceback" not in announcer.stderr

    # the bye removed it at once (its ttl is 30 s)
    after = await run_disco("resolve", "--tenant", "acme", "web", "--json", *conn_args)
    assert after.returncode == 0
    assert json.loads(after.stdout)["instances"] == []
    assert "unknown service 'web'" in after.stderr.decode()


async def test_watch_json_prints_added_then_removed(
    nats_server: NatsServer, start_aggregator: Any, conn_factory: Any, conn_args: list[str]
) -> None:
    await start_aggregator(nats_server.url)
    async with spawn("watch", "--tenant", "acme", "--json", *conn_args) as watcher:
        await watcher.line(lambda x: "watching acme" in x, stream="err")
        async with spawn(
            "announce", "-t", "acme", "--service", "api", "-a", "10.0.0.9", "-p", "9000", "--ttl", "30", *conn_args
        ) as announcer:
            iid = (await announcer.line(lambda x: bool(x.strip()))).strip()
            added = await watcher.line(lambda x: '"added"' in x)
            assert await announcer.stop(signal.SIGINT) == 0
        removed = await watcher.line(lambda x: '"removed"' in x)

        events = [json.loads(line) for line in watcher.out]
        assert [(e["type"], e["reason"]) for e in events] == [("added", "announce"), ("removed", "bye")]
        for line, ev in zip((added, removed), events, strict=True):
            # the documented event shape, one compact JSON object per line, no wire fields, ISO 8601 time
            assert set(ev) == {"type", "reason", "tenant", "service", "revision", "at", "instance"}
            assert ev["tenant"] == "acme" and ev["service"] == "api" and "v" not in ev
            assert datetime.fromisoformat(ev["at"].replace("Z", "+00:00")).tzinfo is not None
            assert ev["instance"]["id"] == iid and ev["instance"]["service"] == "api"
            assert line == json.dumps(ev, separators=(",", ":"))

        # with --initial a watcher starts with what is already there
        conn = await conn_factory(nats_server.url, tenant="acme")
        async with (
            announce(conn, "api", address="10.0.0.10", port=9001, ttl=30) as reg,
            spawn("watch", "-t", "acme", "api", "--initial", *conn_args) as initial,
        ):
            line = await initial.line(lambda x: reg.id in x)
            assert line.split()[1:4] == ["added", "initial", "api"]
            assert await initial.stop(signal.SIGTERM) == 0
        assert await watcher.stop(signal.SIGTERM) == 0
    assert "Traceback" not in watcher.stderr + announcer.stderr + initial.stderr


async def test_aggregator_command_serves_until_sigterm(
    nats_server: NatsServer, conn_factory: Any, prefix: str, conn_args: list[str]
) -> None:
    async with spawn(
        "aggregator", *conn_args, "--bucket", f"{prefix}_view", "--stream", f"{prefix}_changes"
    ) as agg:
        await agg.line(lambda x: "aggregator ready" in x, stream="err")
        conn = await conn_factory(nats_server.url, tenant="acme")
        async with announce(conn, "db", address="10.0.0.3", port=5432, ttl=30) as reg:
            reply = await resolve(conn, "db")
            assert [i.id for i in reply.instances] == [reg.id]
        assert await agg.stop(signal.SIGTERM) == 0
    assert "Traceback" not in agg.stderr


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["resolve", "--tenant", "Not_Valid", "web"], 2, "invalid tenant name"),
        (["announce", "-t", "acme", "--service", "web", "-a", "10.0.0.1", "-p", "99999"], 2, "--port"),
        (["announce", "-t", "acme", "--service", "web", "-a", "10.0.0.1", "-p", "80", "--meta", "oops"], 2,
         "KEY=VALUE"),
        (["ls", "--status", "bogus"], 2, "--status"),
        (["resolve", "web"], 2, "no tenant"),
        (["ls", "--tenant", "acme", "--creds", "/nonexistent/user.creds"], 2, "--creds"),
    ],
)
async def test_bad_input_is_one_line_without_traceback(
    conn_args: list[str], args: list[str], code: int, needle: str
) -> None:
    res = await run_disco(*args, *conn_args)
    assert res.returncode == code
    assert needle in error_line(res.stderr)
    assert res.stdout == b""


async def test_no_server_reachable_is_one_line(prefix: str) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    for args in (
        ["resolve", "-t", "acme", "web"],
        ["watch", "-t", "acme"],
        ["announce", "-t", "acme", "--service", "web", "-a", "10.0.0.1", "-p", "80"],
    ):
        res = await run_disco(*args, "--nats", url, "--prefix", prefix)
        assert res.returncode == 1
        assert "cannot connect to NATS" in error_line(res.stderr)


async def test_no_aggregator_fails_fast(conn_args: list[str]) -> None:
    # the server is up, but nobody serves this test's prefix
    for args in (["watch", "-t", "acme"], ["resolve", "-t", "acme", "web"], ["ls", "-t", "acme"]):
        res = await run_disco(*args, *conn_args, timeout=10)
        assert res.returncode == 1
        assert "no aggregator is answering" in error_line(res.stderr)
