"""The agent: a file of service definitions kept registered, on one connection, with one heartbeat stream.

:class:`Agent` reads the file (:mod:`.config`), runs one :class:`~services.agent.member.Member` per definition
and one :class:`bus.heartbeats.Heartbeats` for all of them. On :meth:`Agent.request_reload` (the CLI calls it on
SIGHUP) and when the file changes on disk (a stat poll: mtime, size, inode, so an editor's rename is seen too) it
reads the file again and applies the difference (:meth:`Agent.apply`):

- a definition that is new is registered; one that is gone says bye;
- one whose announce fields changed is announced again in place (same id, higher seq); one whose check alone
  changed gets its new check, without an announce;
- one that did not change is not touched (no announce, no bye, its check keeps running).

A file that does not validate is refused with one log line naming its line, and the previous configuration keeps
running. Cancelling :meth:`Agent.run` (SIGINT/SIGTERM) says bye for every instance.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from anyio.abc import TaskGroup, TaskStatus

from bus.connection import Connection
from bus.heartbeats import Heartbeats
from services.agent.config import ConfigError, ServiceDef, load_config
from services.agent.member import Key, Member

__all__ = ["Agent", "Diff"]

log = logging.getLogger("disco.agent")


@dataclass(slots=True)
class Diff:
    """What applying a configuration did, by instance key (tenant, service, id)."""

    added: list[Key] = field(default_factory=list)
    removed: list[Key] = field(default_factory=list)
    updated: list[Key] = field(default_factory=list)
    untouched: list[Key] = field(default_factory=list)

    def __str__(self) -> str:
        return (f"{len(self.added)} added, {len(self.removed)} removed, {len(self.updated)} updated, "
                f"{len(self.untouched)} untouched")


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class Agent:
    """Keeps the definitions of ``path`` registered on ``conn`` (see the module docstring)."""

    def __init__(
        self, conn: Connection, path: Path, *, default_tenant: str | None = None, timeout: float = 2.0,
        poll_interval: float | None = 0.5,
    ) -> None:
        self.conn = conn
        self.path = path
        self.default_tenant = default_tenant
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.beats = Heartbeats(conn)
        self.members: dict[Key, Member] = {}
        #: check runs by (type, ok), configurations applied after the first, and refused
        self.check_runs: Counter[tuple[str, bool]] = Counter()
        self.reloads = 0
        self.reload_errors = 0
        self._tg: TaskGroup | None = None
        self._reload = anyio.Event()
        self._stamp: tuple[int, int, int] | None = None

    def load(self) -> dict[Key, ServiceDef]:
        """The file's definitions by key; raises :class:`ConfigError`."""
        self._stamp = _stamp(self.path)
        return load_config(self.path, self.default_tenant).definitions(self.default_tenant)

    def request_reload(self) -> None:
        self._reload.set()

    def _count_check(self, kind: str, ok: bool) -> None:
        self.check_runs[(kind, ok)] += 1

    async def run(self, *, task_status: TaskStatus[Diff] = anyio.TASK_STATUS_IGNORED) -> None:
        """Load the file (raise :class:`ConfigError` if it is broken), register everything, then follow reloads
        until cancelled; reports the first :class:`Diff` through ``task_status``."""
        defs = self.load()

        async def on_reconnect() -> None:
            for m in self.members.values():
                m.request_reannounce()

        remove_listener = self.conn.on_reconnect(on_reconnect)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                await tg.start(self.beats.run)
                task_status.started(await self.apply(defs))
                if self.poll_interval:
                    tg.start_soon(self._poll_file, self.poll_interval)
                while True:
                    await self._reload.wait()
                    self._reload = anyio.Event()
                    await self.reload()
        finally:
            remove_listener()

    async def reload(self) -> Diff | None:
        """Read the file again and apply it; a broken file is refused (logged) and changes nothing."""
        try:
            defs = self.load()
        except ConfigError as exc:
            self.reload_errors += 1
            log.error("configuration refused, the previous one keeps running: %s", exc)
            return None
        self.reloads += 1
        return await self.apply(defs)

    async def apply(self, defs: dict[Key, ServiceDef]) -> Diff:
        """Make the members match ``defs``; returns what changed. Byes of removed instances are said before this
        returns; new instances are announced in the background (retrying while no aggregator answers)."""
        assert self._tg is not None, "apply() runs inside run()"
        diff = Diff()
        for key in self.members:
            if key not in defs:
                diff.removed.append(key)
        for key, d in defs.items():
            member = self.members.get(key)
            if member is None:
                diff.added.append(key)
            elif member.definition != d:
                diff.updated.append(key)
            else:
                diff.untouched.append(key)
        async with anyio.create_task_group() as tg:
            for key in diff.removed:
                tg.start_soon(self.members.pop(key).stop)
            for key in diff.updated:
                tg.start_soon(self.members[key].update, defs[key])
        for key in diff.added:
            member = Member(self.conn, self.beats, key, defs[key], timeout=self.timeout, on_check=self._count_check)
            self.members[key] = member
            await self._tg.start(member.run)
        log.info("configuration %s applied: %s", self.path, diff)
        return diff

    async def _poll_file(self, interval: float) -> None:
        while True:
            await anyio.sleep(interval)
            if _stamp(self.path) != self._stamp:
                self.request_reload()
