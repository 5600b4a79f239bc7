"""Following the durable view: load the KV bucket at start, then apply every change (DESIGN.md §6).

Every aggregator follows the bucket, so every aggregator holds the same view in memory. A reconnect re-creates the
watch (after a server restart a KV watcher can stay silent for many seconds, NATS-NOTES.md), and the re-created
watch drops from memory any key the bucket no longer has (its delete marker may have been purged meanwhile).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
from anyio.abc import TaskStatus

from bus.codec import decode
from bus.errors import DiscoError, InvalidName
from bus.models import Instance
from bus.subjects import kv_key, parse_kv_key
from services.aggregator.liveness import Liveness
from services.aggregator.metrics import Metrics
from services.aggregator.store import KvChange, ViewStore
from services.aggregator.view import LiveView

__all__ = ["Follower"]

log = logging.getLogger("disco.aggregator.follower")


class Follower:
    def __init__(
        self, store: ViewStore, view: LiveView, live: Liveness[tuple[str, str, str]], metrics: Metrics
    ) -> None:
        self.store = store
        self.view = view
        self.live = live
        self.metrics = metrics
        self._restart = anyio.Event()

    def restart(self) -> None:
        """Re-create the KV watch (after a reconnect)."""
        self._restart.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Follow the KV for ever; ``started`` once the first full load is in the view. A reconnect re-creates
        the watch (a watcher can stay silent for many seconds after a server restart)."""
        started = False

        def on_initial() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        while True:
            restart = self._restart = anyio.Event()
            async with anyio.create_task_group() as tg:

                async def stop_on_restart(ev: anyio.Event = restart, scope: Any = tg.cancel_scope) -> None:
                    await ev.wait()
                    scope.cancel()

                tg.start_soon(stop_on_restart)
                try:
                    await self._follow_once(reconcile=started, on_initial=on_initial)
                except Exception as exc:
                    log.warning("KV watch failed (%s); re-creating it", exc or type(exc).__name__)
                    self.metrics.inc("watch_restarts")
                    await anyio.sleep(0.5)
                tg.cancel_scope.cancel()

    async def _follow_once(self, *, reconcile: bool, on_initial: Callable[[], None]) -> None:
        seen: set[str] = set()
        initial = True
        top = 0
        async for change in self.store.follow():
            if change is None:
                if initial:
                    initial = False
                    if reconcile:
                        self._drop_unseen(seen, top)
                    self.view.advance(top)
                    on_initial()
                continue
            self.apply(change)
            top = max(top, change.revision)
            if initial:
                seen.add(change.key)
            else:
                self.view.advance(change.revision)

    def _drop_unseen(self, seen: set[str], revision: int) -> None:
        for t, s, i in self.view.all_keys():
            if kv_key(t, s, i) not in seen:
                entry = self.view.get(t, s, i)
                if entry is not None and self.view.delete(t, s, i, max(revision, entry.revision + 1)):
                    self.live.forget((t, s, i))

    def apply(self, change: KvChange) -> None:
        """Apply one KV change (a value or a delete marker) to the view and the liveness table."""
        try:
            t, s, i = parse_kv_key(change.key)
        except InvalidName:
            self.metrics.inc("kv_bad_key")
            return
        if change.value is None:
            removed = self.view.delete(t, s, i, change.revision)
            if removed:
                self.live.forget((t, s, i))
            return
        try:
            inst = decode(change.value, Instance, 1 << 20)
        except DiscoError as exc:
            self.metrics.inc("kv_bad_value", t)
            log.warning("unreadable live-view entry %s: %s", change.key, exc)
            return
        if inst.id != i:
            self.metrics.inc("kv_bad_value", t)
            return
        old = self.view.put(t, s, inst, change.revision)
        if old is not False:
            self.live.track((t, s, i), inst.ttl, time.monotonic())
