"""What the gateway knows of one tenant: the watched view (``bus.watch``), its revision, who waits for it to
change (blocking queries), who listens to its changes (server-sent events), and how fast it changes.

What is promised:

- :attr:`TenantView.revision` only grows; it is the view revision of the newest change applied (or of the last
  list). :meth:`wait_past` returns as soon as it passes a given revision, or after the wait.
- Every listener gets every change in order, through a bounded queue of its own; a listener that falls
  ``queue`` changes behind is closed (it reconnects and gets a fresh snapshot) rather than slowing the others.
- ``seen`` keeps, per instance, when the gateway first saw it (unix seconds): the age the catalog reports.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

import bus
from bus.models import ChangeEvent, ChangeType, Instance

__all__ = ["TenantView", "instance_json"]

log = logging.getLogger("disco.gateway")

_RATE_WINDOW = 10.0


def instance_json(inst: Instance, seen: float | None, now: float) -> dict[str, Any]:
    """An instance as the catalog shows it: its registration plus ``age`` (seconds since first seen)."""
    data = inst.model_dump(mode="json", exclude={"v"})
    data["age"] = round(max(now - seen, 0.0), 3) if seen is not None else None
    return data


class TenantView:
    """The live view of one tenant; ``await tg.start(view.run)`` fills it, then follows it until cancelled."""

    def __init__(self, conn: bus.Connection, tenant: str, queue: int = 1000,
                 on_removed: Callable[[str, str], None] | None = None) -> None:
        self.conn = conn
        #: told (service, instance id) when an instance leaves the view
        self.on_removed = on_removed
        self.tenant = tenant
        self.queue = queue
        self.revision = 0
        self.services: dict[str, dict[str, Instance]] = {}
        self.seen: dict[tuple[str, str], float] = {}
        self.events_total = 0
        #: (type, reason) → changes applied
        self.events_by: Counter[tuple[str, str]] = Counter()
        self._changed = anyio.Event()
        self._listeners: set[MemoryObjectSendStream[ChangeEvent]] = set()
        self._recent: deque[float] = deque()
        self.ready = anyio.Event()

    # -- reads ------------------------------------------------------------------------------------------------
    def instance_count(self) -> int:
        return sum(len(v) for v in self.services.values())

    def events_per_second(self) -> float:
        now = time.monotonic()
        while self._recent and self._recent[0] < now - _RATE_WINDOW:
            self._recent.popleft()
        return len(self._recent) / _RATE_WINDOW

    def snapshot_json(self) -> dict[str, Any]:
        now = time.time()
        return {
            "tenant": self.tenant,
            "revision": self.revision,
            "services": {
                svc: [instance_json(i, self.seen.get((svc, i.id)), now) for i in sorted(insts.values(),
                                                                                      key=lambda i: i.id)]
                for svc, insts in sorted(self.services.items())
            },
        }

    async def wait_past(self, revision: int, timeout: float) -> None:
        """Return once :attr:`revision` > ``revision``, or after ``timeout`` seconds."""
        with anyio.move_on_after(timeout):
            while self.revision <= revision:
                await self._changed.wait()

    def listen(self) -> MemoryObjectReceiveStream[ChangeEvent]:
        """A stream of every change from now on (close it when done)."""
        send, recv = anyio.create_memory_object_stream[ChangeEvent](self.queue)
        self._listeners.add(send)
        return recv

    # -- following --------------------------------------------------------------------------------------------
    def _apply(self, ev: ChangeEvent) -> None:
        key = (ev.service, ev.instance.id)
        if ev.type is ChangeType.removed:
            insts = self.services.get(ev.service)
            if insts is not None:
                insts.pop(ev.instance.id, None)
                if not insts:
                    del self.services[ev.service]
            self.seen.pop(key, None)
            if self.on_removed is not None:
                self.on_removed(ev.service, ev.instance.id)
        else:
            self.services.setdefault(ev.service, {})[ev.instance.id] = ev.instance
            self.seen.setdefault(key, time.time())
        self.revision = max(self.revision, ev.revision)
        self.events_total += 1
        self.events_by[(ev.type.value, ev.reason.value)] += 1
        self._recent.append(time.monotonic())
        for send in list(self._listeners):
            try:
                send.send_nowait(ev)
            except anyio.WouldBlock:
                log.info("a listener of tenant %s fell %d changes behind: closing it", self.tenant, self.queue)
                self._listeners.discard(send)
                send.close()
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                self._listeners.discard(send)
        self._changed.set()
        self._changed = anyio.Event()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            async with bus.watch(self.conn, tenant=self.tenant) as w:
                now = time.time()
                for svc, insts in w.view.items():
                    self.services[svc] = dict(insts)
                    for iid in insts:
                        self.seen[(svc, iid)] = now
                self.revision = w.revision
                self.ready.set()
                task_status.started()
                async for ev in w:
                    self._apply(ev)
                    # a relist after a gap: the watch's revision may pass the events it emitted
                    self.revision = max(self.revision, w.revision)
        finally:
            for send in self._listeners:
                send.close()
            self._listeners.clear()
