"""Safety of the lifecycle with real processes: one ``disco up`` per data dir, a lost connection said once (not
every 250 ms) and its end said once, and an ``announce`` that could not say bye exits non-zero and says so."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import pytest
import typer

from bus.resolver import resolver
from services.cli.daemons import pick_monitor_port
from services.embedded import lock_data_dir
from services.natsserver import NatsServer, free_port
from tests.conftest import eventually
from tests.procs import error_line, run_disco, spawn

pytestmark = pytest.mark.integration


async def test_second_up_on_the_same_data_dir_is_refused(tmp_path: Path, prefix: str) -> None:
    data = tmp_path / "data"
    first_port, second_port, monitor = free_port(), free_port(), free_port()
    async with spawn("up", "--port", str(first_port), "--data-dir", str(data), "--prefix", prefix,
                     "--monitor-port", str(monitor)) as up:
        await up.line(lambda x: x.startswith("disco is up:"), timeout=30)
        conf_before = (data / "nats-server.conf").read_text()
        # the NATS monitoring endpoint, on loopback
        assert await up.line(lambda x: x.startswith("NATS monitoring:")) == (
            f"NATS monitoring: http://127.0.0.1:{monitor} (/varz, /jsz, /connz)")
        varz = await anyio.to_thread.run_sync(_get_json, f"http://127.0.0.1:{monitor}/varz")
        assert varz["port"] == first_port and varz["jetstream"]["config"]["store_dir"]
        jsz = await anyio.to_thread.run_sync(_get_json, f"http://127.0.0.1:{monitor}/jsz")
        assert "streams" in jsz
        assert f'http: "127.0.0.1:{monitor}"' in conf_before

        second = await run_disco("up", "--port", str(second_port), "--data-dir", str(data), "--prefix", prefix)
        assert second.returncode == 1
        line = error_line(second.stderr)
        assert f"data dir {data.resolve()} is in use by pid {up.proc.pid}" in line
        # nothing of the first one was touched: same config, its server still serves
        assert (data / "nats-server.conf").read_text() == conf_before
        assert up.proc.returncode is None
        listing = await run_disco("ls", "-t", "acme", "--nats", f"nats://127.0.0.1:{first_port}", "--prefix", prefix)
        assert listing.returncode == 0, listing.stderr

        assert await up.stop(signal.SIGINT, timeout=20) == 0
    # the lock died with its process: the directory can be used again
    with lock_data_dir(data.resolve()):
        assert (data / "disco.lock").read_text().strip() == str(os.getpid())


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def test_the_monitor_port_defaults_to_the_next_free_one() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        picked = pick_monitor_port(None, start=port)
        assert picked != port and picked > port
        with pytest.raises(typer.BadParameter, match="already in use"):
            pick_monitor_port(port)
    assert pick_monitor_port(0) == 0


def _count(lines: list[str], needle: str) -> int:
    return sum(1 for line in lines if needle in line)


async def test_a_lost_connection_is_logged_once_then_backed_off_and_its_end_once(
    tmp_path: Path, prefix: str, conn_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = NatsServer(tmp_path / "nats", name="outage")
    server.start()
    args = ["--nats", server.url, "--prefix", prefix]
    try:
        async with (
            spawn("aggregator", *args, "--bucket", f"{prefix}_view", "--stream", f"{prefix}_changes") as agg,
        ):
            await agg.line(lambda x: "aggregator ready" in x, stream="err", timeout=30)
            async with (
                spawn("announce", "-t", "acme", "--service", "web", "-a", "10.0.0.1", "-p", "80", "--ttl", "60",
                      *args) as announcer,
                spawn("watch", "-t", "acme", *args) as watcher,
            ):
                await announcer.line(lambda x: bool(x.strip()))
                await watcher.line(lambda x: "watching acme" in x, stream="err")
                conn = await conn_factory(server.url, tenant="acme")
                caplog.set_level(logging.WARNING, logger="disco")
                async with resolver(conn, "web") as web:
                    assert len(web.instances) == 1
                    await anyio.to_thread.run_sync(server.stop)
                    for proc in (agg, announcer, watcher):
                        await proc.line(lambda x: "disconnected from NATS" in x, stream="err")
                    # stay down past the first back-off step: the old code logged ~4 lines a second per process
                    await agg.line(lambda x: "still disconnected from NATS after" in x, stream="err", timeout=30)
                    await eventually(lambda: web.stale)
                    assert len(web.instances) == 1  # served from the stale view
                    await anyio.to_thread.run_sync(server.start)
                    for proc in (agg, announcer, watcher):
                        await proc.line(lambda x: "reconnected to nats://" in x, stream="err", timeout=30)
                    await watcher.line(lambda x: "watch of acme resynced at revision" in x, stream="err", timeout=30)
                    await eventually(lambda: not web.stale, timeout=30)
                    assert len(web.instances) == 1

                # one line per connection when it drops and one when it is back (the aggregator has two
                # connections: writes and reads); at most two backed-off repeats in between (at 5 s and 15 s)
                for proc, names in ((agg, ["disco-aggregator", "disco-aggregator-reads"]),
                                    (announcer, ["disco-announce-web"]), (watcher, ["disco-watch"])):
                    err = proc.err
                    for name in names:
                        assert _count(err, f"{name}: disconnected from NATS") == 1, err
                        assert _count(err, f"{name}: reconnected to nats://") == 1, err
                        assert _count(err, f"{name}: still disconnected") <= 2, err
                    # every connection that dropped (the aggregator's per-tenant read lanes too) came back once
                    dropped = [line.split(": disconnected from NATS")[0].rsplit(" ", 1)[-1]
                               for line in err if ": disconnected from NATS" in line]
                    assert len(dropped) == len(set(dropped)) >= len(names), err
                    assert _count(err, "reconnected to nats://") == len(dropped), err
                    # the connect errors appear only on those backed-off lines (asyncio says "Connect call failed",
                    # uvloop, which the aggregator uses when installed, "Connection refused")
                    refused = sum(1 for line in err if "Connect call failed" in line or "Connection refused" in line)
                    assert refused == _count(err, "still disconnected"), err
                    assert "Traceback" not in "".join(err)
                assert _count(watcher.err, "resynced at revision") == 1
                resolver_lines = [r.getMessage() for r in caplog.records if r.name == "disco.resolver"]
                assert _count(resolver_lines, "serving a stale view") == 1, resolver_lines
                assert _count(resolver_lines, "fresh again") == 1, resolver_lines
                assert await watcher.stop() == 0
                assert await announcer.stop() == 0
            assert await agg.stop() == 0
    finally:
        server.stop()


async def test_announce_stopped_while_the_server_is_unreachable_says_so_and_fails(
    fresh_server: NatsServer, start_aggregator: Any, prefix: str
) -> None:
    await start_aggregator(fresh_server.url)
    async with spawn("announce", "-t", "acme", "--service", "web", "-a", "10.0.0.1", "-p", "80", "--ttl", "20",
                     "--nats", fresh_server.url, "--prefix", prefix) as announcer:
        iid = (await announcer.line(lambda x: bool(x.strip()))).strip()
        await anyio.to_thread.run_sync(fresh_server.stop)
        await announcer.line(lambda x: "disconnected from NATS" in x, stream="err")
        assert await announcer.stop(signal.SIGTERM) == 1
    last = [line for line in announcer.err if line.startswith("disco: error:")]
    assert len(last) == 1, announcer.err
    assert "could not say bye" in last[0] and iid in last[0] and "ttl (20 s)" in last[0]


async def test_a_nats_server_left_running_on_the_data_dir_keeps_it(tmp_path: Path, prefix: str) -> None:
    """A nats-server still running on the data dir (left by a `disco up` where no parent-death signal exists, or
    started by hand) keeps a new `disco up` off it, naming its pid: two servers never share one JetStream store.
    (A SIGKILLed `disco up` takes its server with it on Linux: test_up_killed.py.)"""
    data = tmp_path / "data"
    data.mkdir()
    server = NatsServer(data, name="orphan", extra_config=f'pid_file: "{(data / "nats-server.pid").as_posix()}"')
    server.start()
    try:
        assert server.proc is not None
        second = await run_disco("up", "--port", str(free_port()), "--data-dir", str(data), "--prefix", prefix,
                                 "--monitor-port", "0")
        assert second.returncode == 1
        assert f"in use by nats-server pid {server.proc.pid}" in error_line(second.stderr)
        assert server.running
    finally:
        server.stop()
