"""``disco up --auth`` and ``disco tenant`` as a user runs them (subprocesses, a real server): the admin adds a
tenant, the tenant's standard .creds file works with the library, a tenant's credentials cannot administer, new
credentials cut the old ones' connections, a data dir remembers that it is isolated, a server without tenancy and
an old one-account data dir are refused with one clear line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import stat
from pathlib import Path

import anyio
import pytest

from bus.announce import announce
from bus.client import resolve
from bus.connection import connect
from bus.errors import ConnectionFailed
from services.natsserver import NatsServer, free_port
from tests.procs import error_line, run_disco, spawn

pytestmark = pytest.mark.integration


async def test_up_auth_and_the_tenant_commands(tmp_path: Path, prefix: str) -> None:
    port, data = free_port(), tmp_path / "data"
    url = f"nats://127.0.0.1:{port}"
    args = ["up", "--auth", "--port", str(port), "--data-dir", str(data), "--prefix", prefix]
    admin = data.resolve() / "auth" / "admin.creds"
    conn_args = ["--nats", url, "--prefix", prefix]
    async with spawn(*args) as up:
        await up.line(lambda x: x.startswith("disco is up:"), timeout=30)
        note = await up.line(lambda x: "admin credentials" in x)
        assert str(admin) in note and "one NATS account each" in note
        acme_creds = tmp_path / "acme.creds"
        acme_creds.write_text("old")
        acme_creds.chmod(0o644)  # whatever the file was, the credentials end up 0600
        add = await run_disco("tenant", "add", "acme", "--max-instances", "5", "-o", str(acme_creds),
                              "--creds", str(admin), *conn_args)
        assert add.returncode == 0, add.stderr
        assert stat.S_IMODE(acme_creds.stat().st_mode) == 0o600
        assert acme_creds.read_text().startswith("-----BEGIN NATS USER JWT-----")

        acme = await connect(url, prefix=prefix, creds=acme_creds, max_reconnect_attempts=0)
        try:
            assert acme.tenant == "acme"
            async with announce(acme, "web", address="10.0.0.1", port=80) as reg:
                assert [i.id for i in (await resolve(acme, "web")).instances] == [reg.id]
            # a tenant's credentials cannot administer: one line, at once, naming the cause
            for cmd in (["ls"], ["add", "other"], ["rm", "acme"]):
                res = await run_disco("tenant", *cmd, "--creds", str(acme_creds), *conn_args, timeout=10)
                assert res.returncode == 1
                line = error_line(res.stderr)
                assert "admin credentials needed" in line and "tenant 'acme'" in line, line
            # no credentials at all: the same cause, not a timeout
            res = await run_disco("tenant", "ls", *conn_args, timeout=10)
            assert "admin credentials needed" in error_line(res.stderr)
            ls = await run_disco("tenant", "ls", "--json", "--creds", str(admin), *conn_args)
            assert ls.returncode == 0 and b'"name": "acme"' in ls.stdout and b'"max_instances": 5' in ls.stdout
            quota = await run_disco("tenant", "quota", "acme", "--max-instances", "7", "--max-connections", "9",
                                    "--creds", str(admin), *conn_args)
            assert quota.returncode == 0, quota.stderr
            assert "max_instances=7" in quota.stdout.decode() and "max_connections=9" in quota.stdout.decode()
            assert acme.nc.is_connected  # a quota change is an account push: nobody is disconnected
            quota_json = await run_disco("tenant", "quota", "acme", "--max-instances", "8", "--json",
                                         "--creds", str(admin), *conn_args)
            assert json.loads(quota_json.stdout) == {"tenant": "acme",
                                                     "quota": {"max_instances": 8, "max_connections": 9}}
            beta_creds = tmp_path / "beta.creds"
            beta_json = await run_disco("tenant", "add", "beta", "--json", "-o", str(beta_creds),
                                        "--creds", str(admin), *conn_args)
            assert json.loads(beta_json.stdout) == {"tenant": "beta", "creds": str(beta_creds), "quota": {}}
            rm_json = await run_disco("tenant", "rm", "beta", "--json", "--creds", str(admin), *conn_args)
            assert json.loads(rm_json.stdout) == {"tenant": "beta", "removed": True}

            closed = asyncio.Event()

            async def on_disconnect() -> None:
                closed.set()

            acme.on_disconnect(on_disconnect)
            new_creds = tmp_path / "acme-new.creds"
            rot = await run_disco("tenant", "creds", "acme", "-o", str(new_creds), "--creds", str(admin), *conn_args)
            assert rot.returncode == 0, rot.stderr
            with anyio.fail_after(5):
                await closed.wait()  # the old credentials' connection is cut
        finally:
            await acme.close()
        with pytest.raises(ConnectionFailed, match="authorization"):
            await connect(url, prefix=prefix, creds=acme_creds)
        fresh = await connect(url, prefix=prefix, creds=new_creds)
        await fresh.close()
        kept = tmp_path / "kept.creds"
        add = await run_disco("tenant", "add", "kept", "-o", str(kept), "--creds", str(admin), *conn_args)
        assert add.returncode == 0, add.stderr
        rm = await run_disco("tenant", "rm", "acme", "--creds", str(admin), *conn_args)
        assert rm.returncode == 0, rm.stderr
        with pytest.raises(ConnectionFailed):
            await connect(url, prefix=prefix, creds=new_creds, connect_timeout=3)
        assert await up.stop(signal.SIGINT, timeout=20) == 0
    assert "Traceback" not in up.stderr
    assert "NATS refused" not in up.stderr  # the aggregator and the relay stay within their permissions

    # the data dir remembers: without --auth it comes up isolated; --no-auth is refused
    res = await run_disco("up", "--no-auth", "--port", str(free_port()), "--data-dir", str(data))
    assert res.returncode == 1 and "was set up with --auth" in error_line(res.stderr)
    async with spawn("up", "--port", str(port), "--data-dir", str(data), "--prefix", prefix) as again:
        await again.line(lambda x: x.startswith("disco is up:"), timeout=30)
        await again.line(lambda x: "tenants are isolated" in x)
        with pytest.raises(ConnectionFailed, match="authorization"):
            await connect(url, prefix=prefix, connect_timeout=3)
        # the pushed accounts survived the restart: a tenant added before works, a removed one does not
        kept_conn = await connect(url, prefix=prefix, creds=kept)
        try:
            assert (await resolve(kept_conn, "web")).instances == ()
        finally:
            await kept_conn.close()
        with pytest.raises(ConnectionFailed):
            await connect(url, prefix=prefix, creds=new_creds, connect_timeout=3)
        assert await again.stop(signal.SIGTERM, timeout=20) == 0


async def test_tenant_add_on_a_server_without_tenancy_is_refused(nats_server: NatsServer, tmp_path: Path) -> None:
    out = tmp_path / "foo.creds"
    res = await run_disco("tenant", "add", "foo", "-o", str(out), "--nats", nats_server.url)
    assert res.returncode == 1
    assert "does not enforce tenancy" in error_line(res.stderr)
    assert not out.exists()


async def test_an_old_one_account_data_dir_is_refused_then_converted(tmp_path: Path, prefix: str) -> None:
    data = tmp_path / "data"
    # an old data dir: its registry in the global account's JetStream, bcrypt passwords, authz.conf
    old = NatsServer(data, name="old")
    old.start()
    try:
        conn = await connect(old.url, prefix=prefix)
        kv = await conn.js.create_key_value(bucket=f"{prefix}_tenants", history=1)
        await kv.put("acme", b'{"name": "acme", "user": "tenant-acme", "password_hash": "$2a$10$x", '
                             b'"max_instances": 3, "max_services": null, "announce_rate": 5.0, "created_at": 1.0}')
        await kv.put("globex", b'{"name": "globex", "user": "tenant-globex", "password_hash": "$2a$10$y"}')
        await kv.put("broken", b"")
        await conn.close()
    finally:
        old.stop()
    (data / "authz.conf").write_text("authorization { users = [] }\n")
    (data / "admin.hash").write_text("$2a$10$x")
    port = free_port()
    for flags in (["--auth"], []):
        res = await run_disco("up", *flags, "--port", str(port), "--data-dir", str(data), "--prefix", prefix)
        assert res.returncode == 1
        line = error_line(res.stderr)
        assert "one NATS account for every tenant" in line and "disco tenant convert" in line, line

    res = await run_disco("tenant", "convert", "--data-dir", str(data), "--prefix", prefix, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "converted 2 tenants (acme, globex)" in res.stdout.decode()
    creds = data / "auth" / "converted" / "acme.creds"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert not (data / "authz.conf").exists() and (data / "authz.conf.converted").exists()
    url = f"nats://127.0.0.1:{port}"
    async with spawn("up", "--port", str(port), "--data-dir", str(data), "--prefix", prefix) as up:
        await up.line(lambda x: "tenants are isolated" in x, timeout=30)
        acme = await connect(url, prefix=prefix, creds=creds)
        try:
            assert acme.tenant == "acme" and (await resolve(acme, "web")).instances == ()
        finally:
            await acme.close()
        ls = await run_disco("tenant", "ls", "--json", "--creds", str(data / "auth" / "admin.creds"),
                             "--nats", url, "--prefix", prefix)
        assert b'"max_instances": 3' in ls.stdout and b'"announce_rate": 5.0' in ls.stdout
        assert await up.stop(signal.SIGTERM, timeout=20) == 0


async def test_an_existing_cluster_set_up_with_init_and_render_authz(tmp_path: Path, prefix: str) -> None:
    """What the README tells an operator to do on a cluster: `disco tenant init`, include the output of
    `disco tenant render-authz` on every node, run the aggregators with the aggregator credentials; a tenant
    added through one node then works through another (one push reaches every node)."""
    auth = tmp_path / "auth"
    init = await run_disco("tenant", "init", str(auth), "--prefix", prefix)
    assert init.returncode == 0, init.stderr
    keys, admin = auth / "disco-keys.json", auth / "admin.creds"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600 and stat.S_IMODE(admin.stat().st_mode) == 0o600
    ports = [free_port() for _ in range(3)]
    nodes = []
    for i in range(3):
        rendered = await run_disco("tenant", "render-authz", "--keys", str(keys),
                                   "--resolver-dir", str(tmp_path / f"jwt{i}"))
        assert rendered.returncode == 0, rendered.stderr
        nodes.append(NatsServer(
            tmp_path / f"n{i}", name=f"n{i}", cluster_name="ops", cluster_port=ports[i],
            routes=[f"nats-route://127.0.0.1:{p}" for j, p in enumerate(ports) if j != i],
            extra_config=rendered.stdout.decode()))
    for node in nodes:
        node.start()
    from services.aggregator import Aggregator, AggregatorSettings

    agg_conn = None
    task = None
    try:
        with anyio.fail_after(60):
            while agg_conn is None:
                try:
                    agg_conn = await connect(nodes[0].url, prefix=prefix, creds=auth / "aggregator.creds")
                    await agg_conn.js.account_info()
                except Exception:
                    if agg_conn is not None:
                        await agg_conn.close()
                    agg_conn = None
                    await anyio.sleep(0.3)
        agg = Aggregator(agg_conn, AggregatorSettings(nats_url=nodes[0].url, prefix=prefix))
        task = asyncio.create_task(agg.run())
        with anyio.fail_after(60):
            await agg.ready.wait()
        creds = tmp_path / "acme.creds"
        add = await run_disco("tenant", "add", "acme", "-o", str(creds), "--creds", str(admin), "--nats",
                              nodes[1].url, "--prefix", prefix, "--replicas", "3", timeout=60)
        assert add.returncode == 0, add.stderr
        acme = await connect(nodes[2].url, prefix=prefix, creds=creds)
        try:
            async with announce(acme, "web", address="10.0.0.9", port=80) as reg:
                assert [i.id for i in (await resolve(acme, "web")).instances] == [reg.id]
        finally:
            await acme.close()
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if agg_conn is not None:
            await agg_conn.close()
        for node in nodes:
            node.stop()
