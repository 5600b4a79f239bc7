"""``disco up`` killed with SIGKILL (no chance to stop anything) leaves no nats-server behind: the server gets a
parent-death signal. A new ``disco up`` on the same data directory then starts and still has the view."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from bus.client import request, resolve
from bus.codec import encode
from bus.connection import connect
from bus.models import AnnounceAck, Instance
from services.natsserver import free_port
from tests.conftest import eventually
from tests.procs import spawn

pytestmark = pytest.mark.integration


def servers_of(data: Path) -> list[int]:
    """PIDs of every live nats-server whose command line names a file of ``data`` (not zombies)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and cmd and cmd[0].endswith(b"nats-server") and any(str(data).encode() in c for c in cmd):
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc (Linux)")
async def test_sigkilled_up_leaves_no_server_and_restarts_with_the_view(tmp_path: Path, prefix: str) -> None:
    port = free_port()
    data = (tmp_path / "data").resolve()
    url = f"nats://127.0.0.1:{port}"
    args = ["up", "--port", str(port), "--data-dir", str(data), "--prefix", prefix]

    async with spawn(*args) as up:
        await up.line(lambda x: x.startswith("disco is up:"), timeout=30)
        assert len(servers_of(data)) == 1
        conn = await connect(url, tenant="acme", prefix=prefix)
        try:
            inst = Instance(id="kept-1", address="10.2.0.1", port=7000, ttl=300, seq=1)
            ack = await request(conn, conn.subjects.announce("acme", "store"), encode(inst), AnnounceAck)
            assert ack.changed
        finally:
            await conn.close()
        up.proc.send_signal(signal.SIGKILL)
        assert await up.proc.wait() == -signal.SIGKILL
    # the server got SIGTERM from the kernel when its parent died, and stops on its own
    await eventually(lambda: not servers_of(data), timeout=20)

    async with spawn(*args) as again:
        await again.line(lambda x: x.startswith("disco is up:"), timeout=30)
        conn = await connect(url, tenant="acme", prefix=prefix)
        try:
            reply = await resolve(conn, "store")
            assert [(i.id, i.address, i.port) for i in reply.instances] == [("kept-1", "10.2.0.1", 7000)]
        finally:
            await conn.close()
        assert await again.stop(signal.SIGTERM, timeout=20) == 0
    await eventually(lambda: not servers_of(data), timeout=20)
