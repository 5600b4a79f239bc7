"""Real HTTP pieces for the gateway tests: aiohttp backends started by the test, a gateway running in a task of
its own, and a registration that can be ended from the test (``kill``)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
from collections.abc import Callable
from typing import Any

import anyio
from aiohttp import WSMsgType, web

import bus
from services.gateway import Gateway, GatewaySettings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Backend:
    """An aiohttp server answering ``/whoami`` (its name), ``/echo`` (streams the body back), ``/sha`` (digest
    of a streamed body), ``/big?mb=N`` (N MiB streamed), ``/slow?s=N``, ``/status/<code>``, ``/headers`` and
    ``/ws`` (echo), counting the calls it got."""

    def __init__(self, name: str, port: int | None = None) -> None:
        self.name = name
        self.port = port or free_port()
        self.calls = 0
        self.runner: web.AppRunner | None = None
        #: ``/drip`` sends its first part, then waits for this before the second
        self.release = asyncio.Event()
        #: ``/upload-first`` sets this when the first bytes of a request body arrived
        self.got_first = asyncio.Event()

    def app(self) -> web.Application:
        async def whoami(request: web.Request) -> web.StreamResponse:
            self.calls += 1
            return web.Response(text=self.name, headers={"X-Path": request.path_qs})

        async def echo(request: web.Request) -> web.StreamResponse:
            self.calls += 1
            resp = web.StreamResponse()
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            async for chunk in request.content.iter_chunked(65536):
                await resp.write(chunk)
            await resp.write_eof()
            return resp

        async def sha(request: web.Request) -> web.StreamResponse:
            self.calls += 1
            h = hashlib.sha256()
            n = 0
            async for chunk in request.content.iter_chunked(65536):
                h.update(chunk)
                n += len(chunk)
            return web.json_response({"sha256": h.hexdigest(), "bytes": n})

        async def big(request: web.Request) -> web.StreamResponse:
            self.calls += 1
            mb = int(request.query.get("mb", "1"))
            resp = web.StreamResponse(headers={"Content-Length": str(mb * 1024 * 1024)})
            await resp.prepare(request)
            block = b"x" * (1024 * 1024)
            for _ in range(mb):
                await resp.write(block)
            await resp.write_eof()
            return resp

        async def slow(request: web.Request) -> web.StreamResponse:
            self.calls += 1
            await asyncio.sleep(float(request.query.get("s", "5")))
            return web.Response(text="late")

        async def status(request: web.Request) -> web.StreamResponse:
            self.calls += 1
            return web.json_response({"from": self.name}, status=int(request.match_info["code"]))

        async def headers(request: web.Request) -> web.StreamResponse:
            self.calls += 1
            return web.json_response({k: v for k, v in request.headers.items()})

        async def ws(request: web.Request) -> web.StreamResponse:
            self.calls += 1
            sock = web.WebSocketResponse()
            await sock.prepare(request)
            async for msg in sock:
                if msg.type is WSMsgType.TEXT:
                    await sock.send_str(f"{self.name}:{msg.data}")
                elif msg.type is WSMsgType.BINARY:
                    await sock.send_bytes(msg.data)
            return sock

        async def drip(request: web.Request) -> web.StreamResponse:
            self.calls += 1
            resp = web.StreamResponse()
            resp.enable_chunked_encoding()
            await resp.prepare(request)
            await resp.write(b"first;")
            await self.release.wait()
            await resp.write(b"second")
            await resp.write_eof()
            return resp

        async def upload_first(request: web.Request) -> web.StreamResponse:
            self.calls += 1
            n = len(await request.content.readany())
            self.got_first.set()
            async for chunk in request.content.iter_any():
                n += len(chunk)
            return web.json_response({"bytes": n})

        app = web.Application()
        app.router.add_get("/drip", drip)
        app.router.add_post("/upload-first", upload_first)
        app.router.add_get("/whoami", whoami)
        app.router.add_get("/deep/{tail:.*}", whoami)
        app.router.add_post("/echo", echo)
        app.router.add_post("/sha", sha)
        app.router.add_get("/big", big)
        app.router.add_get("/slow", slow)
        app.router.add_route("*", "/status/{code}", status)
        app.router.add_get("/headers", headers)
        app.router.add_get("/ws", ws)
        return app

    async def start(self) -> Backend:
        self.runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.5)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


class Registration:
    """An announce held in a task of its own, so that a test can end it (``await kill()``: a bye)."""

    def __init__(self, conn: bus.Connection, service: str, **kw: Any) -> None:
        self.conn, self.service, self.kw = conn, service, kw
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.reg: bus.Registration | None = None

    async def _hold(self) -> None:
        async with bus.announce(self.conn, self.service, **self.kw) as reg:
            self.reg = reg
            self.ready.set()
            await anyio.sleep_forever()

    async def start(self) -> Registration:
        self.task = asyncio.create_task(self._hold())
        waiter = asyncio.create_task(self.ready.wait())
        done, _ = await asyncio.wait({self.task, waiter}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if self.task in done:
            waiter.cancel()
            self.task.result()
        assert self.ready.is_set(), "announce did not complete"
        return self

    async def kill(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None


class RunningGateway:
    def __init__(self, gw: Gateway, task: asyncio.Task[None]) -> None:
        self.gw = gw
        self.task = task

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gw.port}"

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def start_gateway(conns: dict[str, bus.Connection], **kw: Any) -> RunningGateway:
    kw.setdefault("port", 0)
    gw = Gateway(conns, GatewaySettings(**kw))
    started = asyncio.Event()

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(gw.run)
            started.set()

    task = asyncio.create_task(main())
    with anyio.fail_after(20):
        while not started.is_set():
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
    return RunningGateway(gw, task)


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of a process (this one by default), from /proc."""
    with open(f"/proc/{pid or os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def poll(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.005) -> Any:
    with anyio.fail_after(timeout):
        while True:
            value = predicate()
            if hasattr(value, "__await__"):
                value = await value
            if value:
                return value
            await anyio.sleep(interval)
