"""Writing a rendered file so that a reader never sees half of it, and running the command that follows a change.

:func:`write_atomic` writes into a temporary file in the destination's directory, fsyncs it, gives it the
destination's mode (and owner, when allowed), renames it over the destination and fsyncs the directory: a reader
sees the old file or the new one, never a mix, and a crash leaves no truncated configuration behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import stat
import subprocess
import tempfile
from pathlib import Path

import anyio

__all__ = ["read_current", "run_command", "write_atomic"]

log = logging.getLogger("disco.render")


def read_current(dest: Path) -> str | None:
    """The destination's content, or None when it does not exist or cannot be read as UTF-8."""
    try:
        return dest.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def write_atomic(dest: Path, content: str) -> None:
    """Replace ``dest`` with ``content`` atomically (see the module docstring); creates missing directories."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        old: os.stat_result | None = os.stat(dest)
    except FileNotFoundError:
        old = None
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        if old is not None:
            os.chmod(tmp, stat.S_IMODE(old.st_mode))
            if (old.st_uid, old.st_gid) != (os.getuid(), os.getgid()):
                with contextlib.suppress(PermissionError):
                    os.chown(tmp, old.st_uid, old.st_gid)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(dest.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


async def run_command(command: str, timeout: float) -> int:
    """Run ``command`` through the shell (its own process group, killed with it on timeout or cancellation);
    its output goes to ours. Returns the exit status (negative: killed by that signal)."""
    proc = await anyio.open_process(command, stdin=subprocess.DEVNULL, stdout=None, stderr=None,
                                    start_new_session=True)
    try:
        with anyio.move_on_after(timeout) as scope:
            await proc.wait()
        if scope.cancelled_caught:
            log.error("command %r still running after %g s: killed", command, timeout)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with anyio.CancelScope(shield=True):
                await proc.wait()
        await proc.aclose()
    assert proc.returncode is not None
    return proc.returncode
