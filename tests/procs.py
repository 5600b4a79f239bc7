"""The ``disco`` command as users run it, in subprocesses: one command run to its end (:func:`run_disco`), or a
long-running one whose stdout and stderr lines are collected as they come (:func:`spawn`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from anyio.abc import ByteReceiveStream, Process
from anyio.streams.buffered import BufferedByteReceiveStream

from tests.conftest import eventually

__all__ = ["DISCO", "ENV", "Disco", "error_line", "run_disco", "spawn"]

#: the console script, run by this interpreter (``.venv/bin/disco`` is the same entry point)
DISCO = [sys.executable, "-m", "services"]
#: the environment of every command: the test's own, without ``DISCO_*`` settings that would change defaults
ENV = {k: v for k, v in os.environ.items() if not k.startswith("DISCO_")}


async def run_disco(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
                    timeout: float = 30.0) -> subprocess.CompletedProcess[bytes]:
    """Run one ``disco`` command to its end (at most ``timeout`` s)."""
    with anyio.fail_after(timeout):
        return await anyio.run_process([*DISCO, *args], check=False, env=env or ENV, cwd=cwd)


def error_line(stderr: bytes) -> str:
    """The single line of a failed command's stderr (asserting there is exactly one, and no traceback)."""
    text = stderr.decode()
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert lines[0].startswith("disco: error: "), text
    return lines[0]


class Disco:
    """A long-running ``disco`` command whose stdout and stderr lines are collected as they come."""

    def __init__(self, proc: Process) -> None:
        self.proc = proc
        self.out: list[str] = []
        self.err: list[str] = []
        self._eof: set[int] = set()

    async def _pump(self, stream: ByteReceiveStream | None, sink: list[str]) -> None:
        assert stream is not None
        buffered = BufferedByteReceiveStream(stream)
        while True:
            try:
                line = await buffered.receive_until(b"\n", 1 << 20)
            except (anyio.EndOfStream, anyio.IncompleteRead, anyio.ClosedResourceError):
                self._eof.add(id(sink))
                return
            sink.append(line.decode())

    async def line(self, predicate: Callable[[str], bool], *, stream: str = "out", timeout: float = 15.0) -> str:
        """The first line of stdout (or stderr) matching ``predicate``, waiting up to ``timeout`` s."""
        sink = self.out if stream == "out" else self.err

        def found() -> str | None:
            match = next((x for x in sink if predicate(x)), None)
            if match is None and id(sink) in self._eof:
                raise AssertionError(f"disco exited ({self.proc.returncode}) without it: {self.out} {self.err}")
            return match

        result: str = await eventually(found, timeout)
        return result

    def saw(self, text: str) -> int:
        """How many stderr lines so far contain ``text`` (fails if the process died)."""
        if self.proc.returncode is not None:
            raise AssertionError(f"disco exited with {self.proc.returncode}: {''.join(self.err)}")
        return sum(text in line for line in self.err)

    async def ready(self, timeout: float = 20.0) -> None:
        """Until a daemon logged `` ready (`` (``disco worker``, ``render``…); fails if it died first."""
        await eventually(lambda: self.saw(" ready ("), timeout=timeout)

    async def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send ``sig`` and wait for the exit code (at most ``timeout`` s)."""
        self.proc.send_signal(sig)
        with anyio.fail_after(timeout):
            return await self.proc.wait()

    @property
    def stderr(self) -> str:
        """Everything on stderr (complete once the ``spawn`` block has ended)."""
        return "\n".join(self.err)


@asynccontextmanager
async def spawn(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> AsyncIterator[Disco]:
    """Run ``disco ARGS`` for the block; killed (SIGKILL) on the way out if it still runs."""
    proc = await anyio.open_process([*DISCO, *args], env=env or ENV, cwd=cwd, stdin=subprocess.DEVNULL)
    d = Disco(proc)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(d._pump, proc.stdout, d.out)
            tg.start_soon(d._pump, proc.stderr, d.err)
            try:
                yield d
            finally:
                with anyio.CancelScope(shield=True):
                    if proc.returncode is None:
                        proc.kill()
                        await proc.wait()
    finally:
        await proc.aclose()
