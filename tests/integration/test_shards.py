"""Aggregators sharded by tenant on a real nats-server whose configuration partitions the subjects
(services/aggregator/shard.py): each shard serves and holds only its tenants, a dead shard costs only its own
tenants, and the server's partition is the one the aggregators compute."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from bus.announce import announce
from bus.client import request, resolve
from bus.codec import decode_map, encode, encode_map
from bus.connection import Connection, connect
from bus.errors import InvalidName, NoAggregator, Timeout
from bus.models import AnnounceAck, Instance
from bus.watch import watch
from services.aggregator.settings import CONNECT_OPTIONS
from services.aggregator.shard import ShardMismatch, partition, server_config
from services.natsserver import NatsServer, free_port
from tests.conftest import Running, eventually
from tests.integration.test_cli import error_line, run_disco, spawn
from tests.integration.test_up import alive

pytestmark = pytest.mark.integration

N = 2


def tenants_of(shard: int, count: int = 2, n: int = N) -> list[str]:
    """``count`` tenant names that the partition of ``n`` puts in ``shard``."""
    return [t for t in (f"ten-{i}" for i in range(100)) if partition(t, n) == shard][:count]


@pytest.fixture
def sharded_server(tmp_path: Path, prefix: str) -> Iterator[NatsServer]:
    """A server of this test's own whose configuration maps the prefix's subjects onto two shards."""
    server = NatsServer(tmp_path / "nats", name="sharded", extra_config=server_config(prefix, N))
    server.start()
    yield server
    server.stop()


async def announce_one(conn: Connection, tenant: str, service: str, iid: str) -> AnnounceAck:
    """Announce one long-lived instance (ttl 300 s: no heartbeats needed) and return the aggregator's ack."""
    inst = Instance(id=iid, address="10.9.0.1", port=8000, ttl=300, seq=1)
    ack: AnnounceAck = await request(conn, conn.subjects.announce(tenant, service), encode(inst), AnnounceAck)
    return ack


async def announce_retried(conn: Connection, tenant: str, service: str, iid: str) -> AnnounceAck:
    """:func:`announce_one`, sent again after a timeout (at most 10 s in all)."""
    with anyio.fail_after(10):
        while True:
            try:
                return await announce_one(conn, tenant, service, iid)
            except Timeout:
                continue


async def test_two_shards_serve_and_hold_only_their_tenants(
    sharded_server: NatsServer, start_aggregator: Callable[..., Any], conn_factory: Callable[..., Any],
    prefix: str,
) -> None:
    shard0: Running = await start_aggregator(sharded_server.url, shard="0/2")
    shard1: Running = await start_aggregator(sharded_server.url, shard="1/2")
    assert shard0.agg.store.bucket == f"{prefix}_view_s0of2"
    assert shard1.agg.store.bucket == f"{prefix}_view_s1of2"
    mine = {0: tenants_of(0), 1: tenants_of(1)}
    conns = {t: await conn_factory(sharded_server.url, tenant=t) for ts in mine.values() for t in ts}
    async with contextlib.AsyncExitStack() as stack:
        for t, c in conns.items():  # clients publish on the unchanged subjects: disco.<t>.announce.web
            await stack.enter_async_context(announce(c, "web", address="10.1.0.1", port=80, instance_id=f"{t}-a"))
        for t, c in conns.items():
            reply = await resolve(c, "web")
            assert [i.id for i in reply.instances] == [f"{t}-a"]
        # each view holds its shard's tenants, and nothing of the other shard's
        assert set(shard0.agg.view.tenants()) == set(mine[0])
        assert set(shard1.agg.view.tenants()) == set(mine[1])

        # change events are published as before, whichever shard the tenant is in
        for t in (mine[0][0], mine[1][0]):
            async with watch(conns[t], "api") as w:
                await announce_one(conns[t], t, "api", f"{t}-b")
                with anyio.fail_after(10):
                    ev = await w.next()
                assert (ev.type, ev.tenant, ev.instance.id) == ("added", t, f"{t}-b")

        # the stats of each aggregator name its shard and only its tenants
        c = next(iter(conns.values()))
        inbox = c.nc.new_inbox()
        replies: list[dict[str, Any]] = []

        async def collect(m: Any) -> None:
            replies.append(decode_map(m.data))

        sub = await c.nc.subscribe(inbox, cb=collect)
        await c.nc.publish(f"{prefix}._sys.stats", b"", reply=inbox)
        await eventually(lambda: len(replies) == 2)
        await sub.unsubscribe()
        assert {r["shard"]: set(r["tenants"]) for r in replies} == {"0/2": set(mine[0]), "1/2": set(mine[1])}


async def test_killing_shard0_leaves_shard1_served(
    sharded_server: NatsServer, start_aggregator: Callable[..., Any], conn_factory: Callable[..., Any],
    prefix: str,
) -> None:
    url = sharded_server.url
    (t0,), (t1,) = tenants_of(0, 1), tenants_of(1, 1)
    c0 = await conn_factory(url, tenant=t0)
    c1 = await conn_factory(url, tenant=t1)
    # shard 0 is a real `disco aggregator --shard 0/2` process; shard 1 runs here, two aggregators of it
    async with spawn("aggregator", "--nats", url, "--prefix", prefix, "--bucket", f"{prefix}_view",
                     "--stream", f"{prefix}_changes", "--shard", "0/2") as proc:
        await proc.line(lambda x: "aggregator ready" in x and "shard 0/2" in x, stream="err", timeout=30)
        shard1 = [await start_aggregator(url, shard="1/2") for _ in range(2)]
        assert (await announce_one(c0, t0, "db", "a")).changed
        assert (await announce_one(c1, t1, "db", "a")).changed
        assert [i.id for i in (await resolve(c0, "db")).instances] == ["a"]

        proc.proc.send_signal(signal.SIGKILL)
        with anyio.fail_after(10):
            await proc.proc.wait()
        # shard 0's tenant has nobody now (no responders, once the server has seen the process go) ...
        with anyio.fail_after(10):
            while True:
                try:
                    await resolve(c0, "db", timeout=0.5)
                except NoAggregator:
                    break
                except Timeout:
                    continue
        # ... shard 1's tenants are served as before, reads and writes
        assert [i.id for i in (await resolve(c1, "db")).instances] == ["a"]
        assert (await announce_one(c1, t1, "db", "b")).changed
        assert sorted(i.id for i in (await resolve(c1, "db")).instances) == ["a", "b"]
        # one of shard 1's two aggregators dies too: the other takes its share (an announce sent while the dead
        # one's interest was still on the server is lost, as with any aggregator dying: the client retries)
        await shard1[0].stop()
        await shard1[0].agg.conn.close()
        await announce_retried(c1, t1, "db", "c")
        assert sorted(i.id for i in (await resolve(c1, "db")).instances) == ["a", "b", "c"]

    # shard 0 back: its view is its bucket's verified-complete load, shard 1's tenants still not in it
    back: Running = await start_aggregator(url, shard="0/2")
    assert [i.id for i in (await resolve(c0, "db")).instances] == ["a"]
    assert set(back.agg.view.tenants()) == {t0}


async def test_a_tenant_sent_to_another_shard_is_refused(
    sharded_server: NatsServer, start_aggregator: Callable[..., Any], conn_factory: Callable[..., Any],
    prefix: str,
) -> None:
    """Publishing straight to a mapped subject bypasses the server's partition: the shard refuses a tenant that
    is not its own, so its view never holds another shard's tenant."""
    shard1: Running = await start_aggregator(sharded_server.url, shard="1/2")
    (t0,) = tenants_of(0, 1)
    c = await conn_factory(sharded_server.url, tenant=t0)
    inst = Instance(id="x", address="10.9.0.2", port=1, ttl=300, seq=1)
    msg = await c.nc.request(f"{prefix}.{t0}.announce.web.1", encode(inst), timeout=5)
    reply = decode_map(msg.data)
    assert reply["ok"] is False and reply["code"] == InvalidName.code
    assert "not served by shard 1/2" in reply["error"]
    assert t0 not in shard1.agg.view.tenants()


async def test_the_servers_partition_is_ours(sharded_server: NatsServer, conn_factory: Callable[..., Any],
                                             prefix: str) -> None:
    """nats-server's ``{{partition(2,1)}}`` on the tenant token is FNV-1a 32 mod 2, as shard.partition computes."""
    c = await conn_factory(sharded_server.url)
    names = [f"t{i}-{'x' * (i % 7)}" for i in range(200)]
    got: dict[str, int] = {}

    async def cb(msg: Any) -> None:
        tokens = msg.subject.split(".")
        got[tokens[-3]] = int(tokens[-1])

    sub = await c.nc.subscribe(f"{prefix}.*.snapshot.*", cb=cb)
    await c.nc.flush()
    for name in names:
        await c.nc.publish(f"{prefix}.{name}.snapshot", encode_map({"v": 1}))
    await eventually(lambda: len(got) == len(names))
    await sub.unsubscribe()
    assert got == {n: partition(n, N) for n in names}
    assert set(got.values()) == {0, 1}


async def test_a_server_partitioning_otherwise_is_a_clear_error(
    nats_server: NatsServer, sharded_server: NatsServer, conn_factory: Callable[..., Any],
    settings_for: Callable[..., Any],
) -> None:
    from services.aggregator import Aggregator

    cases = ((nats_server.url, "0/2", "does not partition.*disco shard config 2"),
             (sharded_server.url, "0/3", "differently from 3 shards.*disco shard config 3"),
             (sharded_server.url, None, "partitions the subjects .* by tenant.*--shard K/N"))
    # with and without echo: an aggregator's own connection has none (CONNECT_OPTIONS), so its probes leave
    # from a connection of their own
    for options in ({}, CONNECT_OPTIONS):
        for url, shard, says in cases:
            agg = Aggregator(await conn_factory(url, **options), settings_for(url, shard=shard))
            with anyio.fail_after(20), pytest.raises(ShardMismatch, match=says):
                await agg.run()
            assert not agg.ready.is_set()


async def test_cli_refuses_a_bad_shard_and_prints_the_mapping(nats_server: NatsServer, prefix: str,
                                                            tmp_path: Path) -> None:
    for bad, says in (("2/2", "does not exist among 2"), ("1/0", "between 1 and"), ("one", "use K/N")):
        done = await run_disco("aggregator", "--shard", bad, "--nats", "nats://127.0.0.1:1")
        assert done.returncode == 2
        line = error_line(done.stderr)
        assert "--shard" in line and says in line
    # a server that does not partition the subjects: a clear error at start, not an aggregator hearing nothing
    done = await run_disco("aggregator", "--shard", "1/2", "--nats", nats_server.url, "--prefix", prefix)
    assert done.returncode == 1
    assert f"does not partition the subjects of prefix '{prefix}'" in error_line(done.stderr)
    # per-tenant accounts (credentials): refused before connecting
    creds = tmp_path / "agg.creds"
    creds.write_text("-----BEGIN NATS USER JWT-----\nx\n------END NATS USER JWT------\n")
    done = await run_disco("aggregator", "--shard", "1/2", "--nats", nats_server.url, "--creds", str(creds))
    assert done.returncode == 1
    assert "not supported with tenant isolation" in error_line(done.stderr)
    done = await run_disco("shard", "config", "2", "--prefix", prefix)
    assert done.returncode == 0
    assert done.stdout.decode() == server_config(prefix, 2)
    t = tenants_of(1, 1)[0]
    done = await run_disco("shard", "of", t, "--shards", "2")
    assert done.stdout.decode().split() == [t, "1"]


async def test_up_with_two_shards(tmp_path: Path, prefix: str) -> None:
    """`disco up --shards 2 --aggregators 2`: the server it starts partitions the subjects, the in-process aggregator
    serves shard 0 and the child shard 1; tenants of both are served."""
    port = free_port()
    data = tmp_path / "data"
    url = f"nats://127.0.0.1:{port}"
    async with spawn("up", "--port", str(port), "--data-dir", str(data), "--prefix", prefix, "--no-metrics",
                     "--monitor-port", "0", "--aggregators", "2", "--shards", "2") as up:
        await up.line(lambda x: x.startswith("disco is up:"), timeout=30)
        server_pid = int((data / "nats-server.pid").read_text().strip())
        try:
            await eventually(lambda: "shard 1/2" in (data / "aggregator-2.log").read_text(), timeout=30)
            for shard in (0, 1):
                (t,) = tenants_of(shard, 1)
                conn = await connect(url, tenant=t, prefix=prefix)
                try:
                    assert (await announce_one(conn, t, "web", f"i{shard}")).changed
                    assert [i.id for i in (await resolve(conn, "web")).instances] == [f"i{shard}"]
                finally:
                    await conn.close()
            done = await run_disco("status", "--json", "--nats", url, "--prefix", prefix)
            found = json.loads(done.stdout)["aggregators"]
            assert sorted((a["shard"], a["bucket"]) for a in found) == [
                ("0/2", "disco_view_s0of2"), ("1/2", "disco_view_s1of2")]
            assert await up.stop() == 0
        finally:
            if alive(server_pid):  # the server is in its own session: not ours to leave behind
                os.kill(server_pid, signal.SIGTERM)
                await eventually(lambda: not alive(server_pid), timeout=15)


async def test_up_refuses_bad_shard_options(tmp_path: Path) -> None:
    done = await run_disco("up", "--data-dir", str(tmp_path / "d"), "--aggregators", "1", "--shards", "2")
    assert done.returncode == 2
    assert "at least one aggregator per shard" in error_line(done.stderr)
    done = await run_disco("up", "--data-dir", str(tmp_path / "d"), "--auth", "--shards", "2")
    assert done.returncode == 2
    assert "not supported with tenant isolation" in error_line(done.stderr)
    assert not (tmp_path / "d").exists()  # refused before anything was set up
