"""``disco gateway`` as users run it (a subprocess): large bodies stream through without growing its memory,
it stops cleanly on SIGTERM, and bad flags are one-line errors."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import anyio
import pytest

from services.natsserver import NatsServer
from tests.gateway_support import Backend, Registration, free_port, poll
from tests.helpers import require_binary

pytestmark = pytest.mark.usefixtures("aggregator")

DISCO = [sys.executable, "-m", "services"]
ENV = {k: v for k, v in os.environ.items() if not k.startswith("DISCO_")}
MB = 1024 * 1024


def peak_rss(pid: int) -> int:
    """Peak resident memory of a process (VmHWM), bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.fixture
async def gateway_proc(nats_server: NatsServer, prefix: str) -> AsyncIterator[tuple[anyio.abc.Process, str]]:
    port = free_port()
    proc = await anyio.open_process(
        [*DISCO, "gateway", "--nats", nats_server.url, "--prefix", prefix, "--tenant", "acme",
         "--listen", f"127.0.0.1:{port}"], env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            async def up() -> bool:
                try:
                    async with http.get(f"{url}/healthz") as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            await poll(up, timeout=30, interval=0.1)
        yield proc, url
    finally:
        with anyio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await proc.aclose()


async def test_large_bodies_stream_without_buffering(
    gateway_proc: tuple[Any, str], nats_server: NatsServer, conn_factory: Callable[..., Any]
) -> None:
    proc, url = gateway_proc
    acme = await conn_factory(nats_server.url, tenant="acme")
    backend = await Backend("big").start()
    reg = await Registration(acme, "files", address="127.0.0.1", port=backend.port, instance_id="big").start()
    try:
        async with aiohttp.ClientSession() as http:
            async def routed() -> bool:
                async with http.get(f"{url}/acme/files/whoami") as r:
                    return r.status == 200
            await poll(routed, timeout=10, interval=0.05)
            before = peak_rss(proc.pid)

            # 50 MiB up, produced chunk by chunk (never whole in the client either)
            block = os.urandom(MB)
            digest = hashlib.sha256()

            async def body() -> AsyncIterator[bytes]:
                for _ in range(50):
                    digest.update(block)
                    yield block

            async with http.post(f"{url}/acme/files/sha", data=body()) as r:
                assert r.status == 200
                got = await r.json()
            assert got == {"sha256": digest.hexdigest(), "bytes": 50 * MB}

        # 50 MiB down, read by curl
        curl = require_binary("curl", "curl")
        out = await anyio.run_process([curl, "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
                                       f"{url}/acme/files/big?mb=50"])
        assert out.stdout.decode().split() == ["200", str(50 * MB)]
        grown = peak_rss(proc.pid) - before
        assert grown < 20 * MB, f"the gateway's peak memory grew by {grown / MB:.1f} MiB for 50 MiB bodies"
    finally:
        await reg.kill()
        await backend.stop()

    # SIGTERM: a clean stop, exit 0
    proc.send_signal(signal.SIGTERM)
    with anyio.fail_after(15):
        assert await proc.wait() == 0


@pytest.mark.parametrize(("args", "needle"), [
    (["--tenant", "Not_Valid"], "--tenant"),
    (["--tenant", "acme", "--listen", "nowhere"], "--listen"),
    (["--tenant", "acme", "--token", "beta=x"], "--token"),
    (["--tenant", "acme", "--token", "acme=@/nonexistent/token"], "--token"),
    (["--tenant", "acme", "--route", "acme/web:timeout=-1"], "--route"),
    (["--tenant", "acme", "--route", "acme/web:colour=red"], "--route"),
])
async def test_bad_flags_are_one_line_errors(args: list[str], needle: str) -> None:
    with anyio.fail_after(30):
        proc = await anyio.run_process([*DISCO, "gateway", *args], check=False, env=ENV)
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert "Traceback" not in err and needle in err, err
