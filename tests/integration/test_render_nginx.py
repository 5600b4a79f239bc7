"""``disco render`` driving a real nginx (Debian's package, run in the foreground from a config of the test's own):
the upstream block follows the live view, and nginx is reloaded only when the upstream set changed."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web

import bus
from bus.client import request
from bus.codec import encode
from bus.connection import Connection
from bus.models import AnnounceAck, Heartbeat, Instance
from services.natsserver import NatsServer, free_port
from tests.conftest import eventually
from tests.helpers import require_binary
from tests.integration.test_render import EXAMPLES
from tests.procs import ENV, run_disco, spawn

pytestmark = pytest.mark.integration


class Backend:
    """A real HTTP server on loopback that answers its own name and counts the requests it got."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = free_port()
        self.hits = 0
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.Response(text=self.name)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@contextlib.asynccontextmanager
async def backends(*names: str) -> AsyncIterator[list[Backend]]:
    started = [Backend(n) for n in names]
    try:
        for b in started:
            await b.start()
        yield started
    finally:
        for b in started:
            await b.stop()


def nginx_conf(d: Path, port: int) -> Path:
    conf = d / "nginx.conf"
    temp = "\n".join(f"    {k}_temp_path {d / k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf.write_text(f"""daemon off;
worker_processes 1;
pid {d / 'nginx.pid'};
error_log {d / 'error.log'} notice;
events {{ worker_connections 64; }}
http {{
    access_log off;
{temp}
    include {d / 'upstreams.conf'};
    server {{
        listen 127.0.0.1:{port};
        location / {{ proxy_pass http://web; }}
    }}
}}
""")
    return conf


def workers(master: int) -> set[int]:
    """The nginx master's worker processes (its children, from /proc)."""
    try:
        text = Path(f"/proc/{master}/task/{master}/children").read_text()
    except OSError:
        return set()
    return {int(pid) for pid in text.split()}


async def beating(conn: Connection, service: str, inst: Instance, *, task_status: Any) -> None:
    """Announce ``inst`` and heartbeat for it until cancelled, then go silent WITHOUT a bye (a hung process)."""
    await request(conn, conn.subjects.announce("acme", service), encode(inst), AnnounceAck)
    task_status.started()
    while True:
        await conn.nc.publish(conn.subjects.hb("acme", service), encode(Heartbeat(id=inst.id)))
        await anyio.sleep(inst.ttl / 4)


async def test_nginx_follows_the_view_and_reloads_only_when_the_upstreams_change(
    aggregator: Any, client: Connection, nats_server: NatsServer, prefix: str, tmp_path: Path
) -> None:
    nginx = require_binary("nginx", "nginx")
    port = free_port()
    conf = nginx_conf(tmp_path, port)
    upstreams = tmp_path / "upstreams.conf"
    reloads = tmp_path / "reloads"
    conn_args = ["--tenant", "acme", "--nats", nats_server.url, "--prefix", prefix]
    template = f"{EXAMPLES / 'nginx-upstreams.conf.j2'}:{upstreams}"
    reload_cmd = f"echo reload >> {reloads} && {nginx} -c {conf} -e {tmp_path / 'error.log'} -s reload"

    def reload_count() -> int:
        return len(reloads.read_text().splitlines()) if reloads.exists() else 0

    async with (
        backends("A", "B") as (a, b),
        bus.announce(client, "web", address="127.0.0.1", port=a.port, ttl=10) as reg_a,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http,
    ):
        async def get() -> str:
            async with http.get(f"http://127.0.0.1:{port}/") as resp:
                return await resp.text() if resp.status == 200 else f"HTTP {resp.status}"

        first = await run_disco("render", *conn_args, "--once", "--template", template)
        assert first.returncode == 0, first.stderr.decode()
        assert f"127.0.0.1:{a.port}" in upstreams.read_text()
        proc = await anyio.open_process([nginx, "-c", str(conf), "-e", str(tmp_path / "error.log")], env=ENV,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        try:
            async def answers(name: str) -> bool:
                with contextlib.suppress(aiohttp.ClientError):
                    return await get() == name
                return False

            await eventually(lambda: answers("A"), timeout=20)
            async with spawn("render", *conn_args, "--template", template, "--exec", reload_cmd,
                             "--wait", "0.05:0.5", cwd=tmp_path) as render:
                await eventually(lambda: render.saw(" ready ("), timeout=20)
                assert reload_count() == 0   # the file it found was already right: no reload

                # a new backend gets traffic after its announce
                inst_b = Instance(id="b", address="127.0.0.1", port=b.port, ttl=3.0, seq=1)
                async with anyio.create_task_group() as tg:
                    await tg.start(beating, client, "web", inst_b)
                    try:
                        await eventually(lambda: answers("B"), timeout=20)
                    except TimeoutError:
                        raise AssertionError("".join(render.err)) from None
                    assert reload_count() == 1

                    # a change the upstream block does not show: a render round, no reload
                    await eventually(lambda: render.saw(": 1 changed,") == 1)   # B's round is over
                    rounds = render.saw("render round")
                    await reg_a.update(meta={"build": "43"})
                    await eventually(lambda: render.saw("render round") > rounds, timeout=20)
                    assert reload_count() == 1

                    # B goes silent (no bye) but keeps serving: after its expiry it gets no more traffic
                    b_workers = await eventually(lambda: len(workers(proc.pid)) == 1 and workers(proc.pid))
                    tg.cancel_scope.cancel()
                await eventually(lambda: f":{b.port} " not in upstreams.read_text(), timeout=20)
                await eventually(lambda: reload_count() == 2, timeout=20)

                # the worker that knew B is gone (a reload replaces the workers; old ones finish gracefully)
                await eventually(lambda: len(workers(proc.pid)) == 1 and not workers(proc.pid) & b_workers,
                                 timeout=20)
                hits = b.hits
                assert [await get() for _ in range(20)] == ["A"] * 20
                assert b.hits == hits
                assert reload_count() == 2
                assert not any("Traceback" in line for line in render.err)
        finally:
            with anyio.CancelScope(shield=True):
                if proc.returncode is None:
                    proc.terminate()
                    with anyio.move_on_after(10):
                        await proc.wait()
                    if proc.returncode is None:
                        proc.kill()
                        await proc.wait()
                await proc.aclose()
