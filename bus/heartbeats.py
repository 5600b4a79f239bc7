"""Keeping many instances alive from one process on one connection: batched, multi-id heartbeats.

An agent registering hundreds of instances should not send hundreds of heartbeat messages every few seconds.
:class:`Heartbeats` holds the instances it beats for (tenant, service, id, ttl, status) and sends, per round, ONE
:class:`~bus.models.Heartbeat` per (tenant, service, status) naming every due instance in ``ids`` (at most 1,000
per message, the protocol's bound; PROTOCOL.md §5). Each instance is beaten every ``ttl/3`` seconds; an instance
due soon (within a sixth of its ttl) joins the current round, so instances of similar ttls share messages.

Every heartbeat carries the instance's ``status`` (when one is set), so a status change reaches the aggregators,
which record it and publish ``updated``/``health`` events (§8.3); :meth:`Heartbeats.set_status` beats at once for
the changed instance, and every later beat repeats the status (a lost message is repaired by the next one).

Registering (announce), re-announcing on ``ctl`` and saying bye are not done here: the caller announces before
:meth:`Heartbeats.add` and says bye after :meth:`Heartbeats.remove`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import anyio
from anyio.abc import TaskStatus

from bus.codec import encode
from bus.connection import Connection
from bus.models import Heartbeat, Status

__all__ = ["MAX_IDS", "Heartbeats"]

log = logging.getLogger("disco.heartbeats")

#: most instance ids in one heartbeat message (PROTOCOL.md §5)
MAX_IDS = 1000

Key = tuple[str, str, str]


@dataclass(slots=True)
class _Entry:
    ttl: float
    status: Status | None
    due: float


class Heartbeats:
    """Heartbeats for many instances on ``conn``; :meth:`run` sends them until cancelled."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._entries: dict[Key, _Entry] = {}
        self._wake = anyio.Event()
        #: heartbeat messages published, and instance beats they carried
        self.messages = 0
        self.beats = 0

    def __contains__(self, key: Key) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, tenant: str, service: str, instance_id: str, ttl: float, status: Status | None = None) -> None:
        """Beat for this instance from now on (first beat after ``ttl/3``; the announce just counted as one).
        Adding a known instance changes its ttl and status."""
        key = (tenant, service, instance_id)
        entry = self._entries.get(key)
        now = time.monotonic()
        if entry is None:
            self._entries[key] = _Entry(ttl, status, now + ttl / 3)
        else:
            entry.ttl = ttl
            entry.due = min(entry.due, now + ttl / 3)
            if status is not None and status != entry.status:
                entry.status = status
                entry.due = now
        self._wake.set()

    def remove(self, tenant: str, service: str, instance_id: str) -> None:
        """Stop beating for this instance (say bye yourself)."""
        self._entries.pop((tenant, service, instance_id), None)

    def set_status(self, tenant: str, service: str, instance_id: str, status: Status) -> None:
        """Report ``status`` for the instance: a beat carrying it goes out at once, and with every later beat."""
        entry = self._entries.get((tenant, service, instance_id))
        if entry is None:
            return
        entry.status = status
        entry.due = time.monotonic()
        self._wake.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            now = time.monotonic()
            next_due = min((e.due for e in self._entries.values()), default=math.inf)
            if next_due > now:
                self._wake = anyio.Event()
                with anyio.move_on_after(min(next_due - now, 3600.0)):
                    await self._wake.wait()
                continue
            await self._round(now)

    async def _round(self, now: float) -> None:
        groups: dict[tuple[str, str, Status | None], list[str]] = {}
        for (tenant, service, iid), e in self._entries.items():
            if e.due <= now + e.ttl / 6:
                groups.setdefault((tenant, service, e.status), []).append(iid)
                e.due = now + e.ttl / 3
        for (tenant, service, status), ids in groups.items():
            subject = self.conn.subjects.hb(tenant, service)
            for start in range(0, len(ids), MAX_IDS):
                chunk = tuple(ids[start:start + MAX_IDS])
                try:
                    await self.conn.nc.publish(subject, encode(Heartbeat(ids=chunk, status=status)))
                except Exception as exc:  # closed or reconnecting: the next round tries again
                    log.debug("heartbeat for %d instance(s) of %s/%s not sent: %s", len(chunk), tenant, service, exc)
                    continue
                self.messages += 1
                self.beats += len(chunk)
