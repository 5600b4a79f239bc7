"""``disco up --aggregators N``: the extra aggregators are child processes that serve and die with their parent,
even when the parent is killed with SIGKILL (parent-death signal)."""

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
from tests.integration.test_up import alive
from tests.procs import spawn

pytestmark = pytest.mark.integration


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"\x00aggregator\x00" in cmdline:
            out.append(int(entry))
    return sorted(out)


async def test_up_runs_extra_aggregators_that_die_with_it(tmp_path: Path, prefix: str) -> None:
    port = free_port()
    data = tmp_path / "data"
    url = f"nats://127.0.0.1:{port}"
    async with spawn("up", "--port", str(port), "--data-dir", str(data), "--prefix", prefix,
                     "--aggregators", "3") as up:
        await up.line(lambda x: x.startswith("disco is up:"), timeout=30)
        server_pid = int((data / "nats-server.pid").read_text().strip())
        try:
            kids = children(up.proc.pid)
            assert len(kids) == 2
            for k in (2, 3):  # each child loaded the view and serves
                await eventually(lambda k=k: "aggregator ready" in (data / f"aggregator-{k}.log").read_text(),
                                 timeout=30)
            conn = await connect(url, tenant="acme", prefix=prefix)
            try:
                for n in range(6):  # queue groups spread these over the three processes; every one is served
                    inst = Instance(id=f"i{n}", address="10.2.0.1", port=7000 + n, ttl=300, seq=1)
                    ack = await request(conn, conn.subjects.announce("acme", "store"), encode(inst), AnnounceAck)
                    assert ack.changed
                reply = await resolve(conn, "store")
                assert sorted(i.id for i in reply.instances) == [f"i{n}" for n in range(6)]
            finally:
                await conn.close()

            os.kill(up.proc.pid, signal.SIGKILL)  # no clean-up code runs in the parent
            for kid in kids:
                await eventually(lambda kid=kid: not alive(kid), timeout=15)
        finally:
            if alive(server_pid):  # the server is in its own session: not ours to leave behind
                os.kill(server_pid, signal.SIGTERM)
                await eventually(lambda: not alive(server_pid), timeout=15)
