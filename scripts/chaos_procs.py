"""The processes of the chaos run (scripts/chaos.py): the durable worker program and a table of children, each
restartable after a SIGKILL, all stopped by PID, all dying with the run (PR_SET_PDEATHSIG)."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess
from pathlib import Path

WORKER = """
import sys, anyio
from bus.connection import connect
from bus.workers import worker

urls, prefix, stream, group, out, tenants = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], \\
    sys.argv[6].split(",")

async def main():
    with open(out, "a", buffering=1) as f:
        async def one(tenant):
            conn = await connect(urls, tenant=tenant, prefix=prefix, name=f"chaos-{group}")
            async def handle(ev, d):
                f.write(f"{ev.tenant} {ev.revision} {ev.type} {ev.reason} {ev.service} {ev.instance.id}\\n")
            async with worker(conn, group, handle, stream_prefix=stream, create_stream=False, ack_wait=5.0,
                              batch=32, retry_delay=0.1):
                await anyio.sleep_forever()
        async with anyio.create_task_group() as tg:
            for t in tenants:
                tg.start_soon(one, t)

anyio.run(main)
"""


def _die_with_parent() -> None:
    """In a child before exec: SIGKILL it when this script dies (Linux PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


class Procs:
    """The child processes (aggregators, workers), each restartable, all stopped by PID at the end."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.argv: dict[str, list[str]] = {}
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str] | None = None) -> None:
        if argv is not None:
            self.argv[name] = argv
        with (self.logs / f"{name}.log").open("ab") as log:
            self.running[name] = subprocess.Popen(
                self.argv[name], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=Path(__file__).resolve().parent.parent, preexec_fn=_die_with_parent,
            )

    def kill(self, name: str) -> None:
        p = self.running.pop(name)
        p.send_signal(signal.SIGKILL)
        p.wait()

    def stop_all(self) -> None:
        for p in self.running.values():
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
        for p in self.running.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.running.clear()
