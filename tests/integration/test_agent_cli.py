"""``disco agent`` as users run it: a real process, reloaded with SIGHUP, stopped with SIGTERM (bye for every
instance) or killed with SIGKILL (its instances expire on their ttl, nothing else happens)."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

import bus
from bus.connection import Connection
from bus.models import ChangeEvent
from services.natsserver import NatsServer, free_port
from tests.conftest import eventually
from tests.procs import run_disco, spawn

pytestmark = pytest.mark.integration


def config(*entries: str) -> str:
    return "tenant: acme\nservices:\n" + "".join(f"  - {e}\n" for e in entries)


A = "{service: app, id: a, address: 10.0.0.1, port: 1, ttl: 2}"
B = "{service: app, id: b, address: 10.0.0.2, port: 2, ttl: 2, check: {exec: 'true', interval: 0.1}}"
C = "{service: app, id: c, address: 10.0.0.3, port: 3, ttl: 2}"


@pytest.fixture
def conn_args(nats_server: NatsServer, prefix: str) -> list[str]:
    return ["--nats", nats_server.url, "--prefix", prefix]


async def collect(w: bus.Watch, into: list[tuple[float, ChangeEvent]]) -> None:
    async for ev in w:
        into.append((time.monotonic(), ev))


async def test_sighup_applies_the_difference_and_sigterm_says_bye_for_all(
    aggregator: Any, client: Connection, conn_args: list[str], tmp_path: Path
) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(config(A, B))
    events: list[tuple[float, ChangeEvent]] = []
    metrics_port = free_port()
    async with bus.watch(client) as w, anyio.create_task_group() as tg:
        tg.start_soon(collect, w, events)
        async with spawn("agent", "--config", str(cfg), *conn_args, "--poll", "3600",
                         "--metrics", f"127.0.0.1:{metrics_port}", cwd=tmp_path) as agent:
            await eventually(lambda: agent.saw("agent ready: 2 instance(s)"), timeout=20)
            await eventually(lambda: w.view.get("app", {}).keys() == {"a", "b"}
                             and w.view["app"]["b"].status.value == "passing")
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{metrics_port}/metrics") as resp,
            ):
                text = await resp.text()
            assert 'disco_agent_instances{status="passing"} 2.0' in text
            assert "disco_agent_registered 2.0" in text
            assert 'disco_agent_checks_total{result="ok",type="exec"}' in text

            cfg.write_text(config(B, C))
            agent.proc.send_signal(signal.SIGHUP)
            await eventually(lambda: agent.saw("1 added, 1 removed, 0 updated, 1 untouched"), timeout=20)
            # the view changes before the iterator hands the events to `collect` (another task): wait for them too
            await eventually(lambda: w.view.get("app", {}).keys() == {"b", "c"} and {("a", "removed"), ("c", "added")}
                             <= {(ev.instance.id, ev.type.value) for _, ev in events})
            mark = len(events)
            agent.proc.send_signal(signal.SIGTERM)
            with anyio.fail_after(20):
                assert await agent.proc.wait() == 0
        await eventually(lambda: not w.view.get("app") and len(events) - mark >= 2)
        tg.cancel_scope.cancel()
    assert sorted((ev.instance.id, ev.type.value, ev.reason.value) for _, ev in events[mark:]) == [
        ("b", "removed", "bye"), ("c", "removed", "bye")]
    assert [(ev.type.value, ev.reason.value) for _, ev in events if ev.instance.id == "a"] == [
        ("added", "announce"), ("removed", "bye")]
    assert not any("Traceback" in line for line in agent.err)


async def test_sigkill_leaves_its_instances_to_expire_on_their_ttl_and_nothing_else(
    nats_server: NatsServer, start_aggregator: Any, client: Connection, conn_args: list[str], tmp_path: Path
) -> None:
    # most of the tenant dies at once here: self-preservation would (rightly) pause that expiry
    await start_aggregator(nats_server.url, preservation_min=1000)
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(config(A, B, C))
    events: list[tuple[float, ChangeEvent]] = []
    async with (
        bus.announce(client, "app", address="10.9.9.9", port=9, instance_id="bystander", ttl=3),
        bus.watch(client) as w,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(collect, w, events)
        async with spawn("agent", "--config", str(cfg), *conn_args, cwd=tmp_path) as agent:
            await eventually(lambda: agent.saw("agent ready"), timeout=20)
            await eventually(lambda: w.view.get("app", {}).keys() == {"a", "b", "c", "bystander"}
                             and w.view["app"]["b"].status.value == "passing")
            mark = len(events)
            agent.proc.kill()
            killed = time.monotonic()
            await agent.proc.wait()
        await eventually(lambda: w.view.get("app", {}).keys() == {"bystander"}, timeout=20)
        # the view changes before the iterator hands the event to `collect` (another task): wait for all three
        await eventually(lambda: len(events) - mark >= 3)
        after = events[mark:]
        assert sorted((ev.instance.id, ev.type.value, ev.reason.value) for _, ev in after) == [
            ("a", "removed", "expired"), ("b", "removed", "expired"), ("c", "removed", "expired")]
        # on their ttl, not at once: the last beat was at most ttl/3 (plus the agent's lateness) before the kill
        assert all(at - killed >= 2 / 2 for at, _ in after), [at - killed for at, _ in after]
        tg.cancel_scope.cancel()


async def test_a_broken_file_at_start_is_one_line_naming_the_line(conn_args: list[str], tmp_path: Path) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(config(A, "{service: app, id: x, address: 10.0.0.1, port: 1, check: {tcp: 'nohostport'}}"))
    res = await run_disco("agent", "--config", str(cfg), *conn_args)
    assert res.returncode == 2
    lines = res.stderr.decode().strip().splitlines()
    assert lines == [f"disco: error: {cfg}:4: services[1].check.tcp: expected host:port, got 'nohostport'"]
    res = await run_disco("agent", "--config", str(tmp_path / "missing.yaml"), *conn_args)
    assert res.returncode == 2 and "cannot read it" in res.stderr.decode()
    res = await run_disco("agent", "--config", str(cfg), "--metrics", "nope", *conn_args)
    assert res.returncode == 2 and "ADDR:PORT" in res.stderr.decode()
