"""``exec`` check: a command (a string runs through ``/bin/sh -c``, a list runs as argv); healthy when it exits
with the expected code (0 unless configured). It runs in its own process group, killed with everything it
started when the check times out or the agent stops."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

import anyio

from services.agent.checks.base import Outcome

__all__ = ["ExecProbe"]


class ExecProbe:
    kind = "exec"

    def __init__(self, command: str | tuple[str, ...], *, expected: int = 0) -> None:
        self.command = command
        self.expected = expected

    async def probe(self) -> Outcome:
        cmd: str | list[str] = self.command if isinstance(self.command, str) else list(self.command)
        try:
            proc = await anyio.open_process(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            return Outcome(False, f"cannot start {self.command!r}: {exc.strerror or exc}")
        try:
            rc = await proc.wait()
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with anyio.CancelScope(shield=True):
                    await proc.wait()
            with anyio.CancelScope(shield=True):
                await proc.aclose()
        if rc == self.expected:
            return Outcome(True, f"exit status {rc}")
        why = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"
        return Outcome(False, f"{why}, expected {self.expected}")

    async def aclose(self) -> None:
        return None
