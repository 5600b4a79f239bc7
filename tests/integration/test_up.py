"""``disco up``, the embedded default, as a subprocess: it serves, stops cleanly on SIGINT (no nats-server left
behind), keeps the view in its data directory across a restart, and refuses a port that is taken."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import anyio
import pytest

from bus.client import resolve
from bus.connection import connect
from bus.models import Instance
from services.natsserver import free_port
from tests.conftest import eventually
from tests.helpers import announce_raw
from tests.procs import error_line, run_disco, spawn

pytestmark = pytest.mark.integration


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_up_restart_keeps_the_view(tmp_path: Path, prefix: str) -> None:
    port = free_port()
    data = tmp_path / "data"
    url = f"nats://127.0.0.1:{port}"
    args = ["up", "--port", str(port), "--data-dir", str(data), "--prefix", prefix]

    async with spawn(*args) as up:
        line = await up.line(lambda x: x.startswith("disco is up:"), timeout=30)
        assert line == f"disco is up: {url} (data in {data.resolve()}); Ctrl-C to stop"
        await up.line(lambda x: "tenants are not isolated" in x and "disco up --auth" in x, stream="err")
        server_pid = int((data / "nats-server.pid").read_text().strip())
        assert alive(server_pid)

        # a raw announce request with a long ttl and no heartbeats; the connection then closes without a bye
        conn = await connect(url, tenant="acme", prefix=prefix)
        try:
            inst = Instance(id="kept-1", address="10.2.0.1", port=7000, ttl=300, seq=1)
            ack = await announce_raw(conn, "store", inst)
            assert ack.changed
        finally:
            await conn.close()

        # a second `disco up` on the same port fails at once with one clear line
        second = await run_disco("up", "--port", str(port), "--data-dir", str(tmp_path / "other"))
        assert second.returncode == 1
        assert f"port {port}" in error_line(second.stderr)
        assert up.proc.returncode is None

        assert await up.stop(signal.SIGINT, timeout=20) == 0
    assert "Traceback" not in up.stderr
    await eventually(lambda: not alive(server_pid), timeout=5)

    async with spawn(*args) as up_again:
        await up_again.line(lambda x: x.startswith("disco is up:"), timeout=30)
        conn = await connect(url, tenant="acme", prefix=prefix)
        try:
            reply = await resolve(conn, "store")
            assert [(i.id, i.address, i.port) for i in reply.instances] == [("kept-1", "10.2.0.1", 7000)]
        finally:
            await conn.close()
        assert await up_again.stop(signal.SIGTERM, timeout=20) == 0
    assert "Traceback" not in up_again.stderr


async def test_up_stops_when_its_server_is_stopped(tmp_path: Path) -> None:
    """A Ctrl-C that reached the whole process group stops the server first: `disco up` ends cleanly too."""
    data = tmp_path / "data"
    async with spawn("up", "--port", str(free_port()), "--data-dir", str(data)) as up:
        await up.line(lambda x: x.startswith("disco is up:"), timeout=30)
        os.kill(int((data / "nats-server.pid").read_text().strip()), signal.SIGINT)
        await up.line(lambda x: "nats-server was stopped" in x, stream="err")
        with anyio.fail_after(20):
            assert await up.proc.wait() == 0
