"""Fixtures shared by every test: a real nats-server with JetStream (session-scoped), a fresh prefix per test so
tests never see each other's data, connections, and a running aggregator."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from bus.connection import Connection, connect
from services.aggregator import Aggregator, AggregatorSettings
from services.aggregator.settings import CONNECT_OPTIONS
from services.natsserver import NatsServer

logging.getLogger("disco").setLevel(logging.INFO)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats"), name="test")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A server of this test's own (for tests that stop or restart it)."""
    server = NatsServer(tmp_path / "nats", name="fresh")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def settings_for(prefix: str) -> Callable[..., AggregatorSettings]:
    def make(url: str, **kw: Any) -> AggregatorSettings:
        base: dict[str, Any] = {
            "nats_url": url, "prefix": prefix, "bucket": f"{prefix}_view", "stream": f"{prefix}_changes",
        }
        base.update(kw)
        return AggregatorSettings(**base)

    return make


@pytest.fixture
async def conn_factory(prefix: str) -> AsyncIterator[Callable[..., Any]]:
    opened: list[Connection] = []

    async def make(url: str, **kw: Any) -> Connection:
        kw.setdefault("prefix", prefix)
        c = await connect(url, **kw)
        opened.append(c)
        return c

    yield make
    for c in opened:
        with anyio.CancelScope(shield=True):
            await c.close()


class Running:
    """An aggregator running in a task of its own (pytest-asyncio sets fixtures up and tears them down in different
    tasks, so a task group cannot span a fixture's yield); ``await stop()`` cancels it and waits for it."""

    def __init__(self, agg: Aggregator, task: asyncio.Task[None]) -> None:
        self.agg = agg
        self.task = task

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@pytest.fixture
async def start_aggregator(
    conn_factory: Callable[..., Any], settings_for: Callable[..., AggregatorSettings]
) -> AsyncIterator[Callable[..., Any]]:
    running: list[Running] = []

    async def start(url: str, clock: Callable[[], float] | None = None, **kw: Any) -> Running:
        """``clock``: the aggregator's liveness clock (tests.faults.ManualClock); settings in ``kw``."""
        conn = await conn_factory(url, name="aggregator", **CONNECT_OPTIONS)  # as `disco aggregator` connects
        agg = Aggregator(conn, settings_for(url, **kw), **({"clock": clock} if clock is not None else {}))
        task = asyncio.create_task(agg.run())
        r = Running(agg, task)
        running.append(r)
        with anyio.fail_after(20):
            while not agg.ready.is_set():
                if task.done():
                    task.result()
                await anyio.sleep(0.01)
        return r

    yield start
    for r in running:
        await r.stop()


@pytest.fixture
async def aggregator(nats_server: NatsServer, start_aggregator: Callable[..., Any]) -> Running:
    r: Running = await start_aggregator(nats_server.url)
    return r


@pytest.fixture
async def client(nats_server: NatsServer, conn_factory: Callable[..., Any]) -> Connection:
    c: Connection = await conn_factory(nats_server.url, tenant="acme")
    return c


async def eventually(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy, or fail after ``timeout`` s."""
    with anyio.fail_after(timeout):
        while True:
            value = predicate()
            if hasattr(value, "__await__"):
                value = await value
            if value:
                return value
            await anyio.sleep(interval)


class Cluster:
    """A real 3-node nats-server cluster with JetStream (routes on free loopback ports)."""

    def __init__(self, base: Path, size: int = 3) -> None:
        from services.natsserver import free_port

        ports = [free_port() for _ in range(size)]
        self.nodes = [
            NatsServer(base / f"n{i}", name=f"n{i}", cluster_name="disco-test", cluster_port=ports[i],
                       routes=[f"nats-route://127.0.0.1:{p}" for j, p in enumerate(ports) if j != i])
            for i in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def start(self) -> None:
        for n in self.nodes:
            n.start()

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


async def wait_jetstream(url: str, timeout: float = 30.0) -> None:
    """Until the cluster has a JetStream meta leader (account info answers)."""
    c = await connect(url)
    try:
        with anyio.fail_after(timeout):
            while True:
                try:
                    await c.js.account_info()
                    return
                except Exception:
                    await anyio.sleep(0.2)
    finally:
        await c.close()


@pytest.fixture
async def nats_cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    cluster = Cluster(tmp_path / "cluster")
    cluster.start()
    try:
        await wait_jetstream(cluster.urls[0])
        yield cluster
    finally:
        cluster.stop()
