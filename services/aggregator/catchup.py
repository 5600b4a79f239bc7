"""Catching up on change events: the events of writes this aggregator could not have seen.

Every write's change event gets published (:mod:`services.aggregator.events`). The write path publishes its own;
the follower hands the publisher, as pending, the events of other writers' writes it sees, and, once a load is
verified, those of writes it could not have seen (:meth:`CatchUp.after_load`):

* **after a re-created watch** (``reconcile``): every write with an event past the view's position before the
  watch went away, including writes overwritten meanwhile (read from the bucket's history, which keeps a few
  revisions per key);
* **at start**: writes past each tenant's last stored event, and writes of the last ``window`` seconds (inside the
  change stream's duplicate window, so an event already stored is not stored twice).
"""

from __future__ import annotations

import logging
import time

from bus.errors import InvalidName
from bus.models import Instance
from bus.subjects import parse_kv_key
from services.aggregator.eventdata import PendingEvent, event_of_write, parse_event_header
from services.aggregator.events import EventPublisher
from services.aggregator.kvwatch import KvChange
from services.aggregator.metrics import Metrics
from services.aggregator.store import ViewStore

__all__ = ["CatchUp"]

log = logging.getLogger("disco.aggregator.follower")


class CatchUp:
    """Hands ``events`` the change events of other writers' writes (nothing when ``events`` is None)."""

    def __init__(self, store: ViewStore, events: EventPublisher | None, metrics: Metrics, window: float) -> None:
        self.store = store
        self.events = events
        self.metrics = metrics
        #: seconds: at start, writes this recent are caught up on even when their tenant's last event is unknown
        self.window = window

    async def after_load(self, candidates: list[tuple[KvChange, Instance | None]], reconcile: bool,
                         before: int, top: int) -> None:
        """Hand the publisher the events of writes this aggregator could not have seen (see events.py)."""
        if self.events is None:
            return
        if reconcile:
            for change, inst in candidates:
                if change.revision > before:
                    self.pending(change, inst)
            # writes overwritten while the watch was away (the load holds each key's last revision only)
            for change in await self._superseded(after_seq=before, until=top):
                self.pending(change, None)
            return
        last: dict[str, int | None] = {}
        recent = time.time() - self.window
        due: list[PendingEvent] = []
        for change in await self._superseded(since=recent, until=top):
            ev = self._event_of(change, None)
            if ev is not None:
                due.append(ev)
        for change, inst in candidates:
            try:
                t = parse_kv_key(change.key)[0]
            except InvalidName:
                continue
            if t not in last:
                try:
                    last[t] = await self.store.last_event_revision(t)
                except Exception as exc:
                    log.warning("last event of tenant %s unknown (%s): catching up on recent writes only", t, exc)
                    last[t] = None
            newest = last[t]
            parsed = parse_event_header(change.event or "")
            if (newest is not None and change.revision > newest) or (parsed is not None and parsed[2] > recent):
                ev = self._event_of(change, inst)
                if ev is not None:
                    due.append(ev)
        due = list({ev.revision: ev for ev in due}.values())
        if due:
            log.info("catching up on %d change events", len(due))
            self.metrics.inc("events_caught_up", n=len(due))
            await self.events.publish_all(due)

    async def _superseded(self, *, until: int, after_seq: int | None = None,
                          since: float | None = None) -> list[KvChange]:
        """Every write with an event in the bucket's history in that range, overwritten ones included (the
        bucket keeps a few revisions per key); nothing when the bucket cannot be read now."""
        try:
            return await self.store.written_since(after_seq=after_seq, since=since, until=until)
        except Exception as exc:
            log.warning("bucket history not read (%s): catching up on each key's last write only", exc)
            return []

    def _event_of(self, change: KvChange, inst: Instance | None) -> PendingEvent | None:
        """The event of another writer's write (None for ours: the write path publishes those)."""
        assert self.events is not None
        parsed = parse_event_header(change.event or "")
        if parsed is None or parsed[3] == self.events.writer:
            return None
        try:
            t, s, _ = parse_kv_key(change.key)
        except InvalidName:
            return None
        return event_of_write(self.store.subjects, t, s, change.event, change.value, change.body, change.revision,
                              inst)

    def pending(self, change: KvChange, inst: Instance | None) -> None:
        """Keep the event of another writer's write pending (events.py publishes it unless it shows up)."""
        if self.events is None or change.event is None:
            return
        ev = self._event_of(change, inst)
        if ev is not None:
            self.events.foreign(ev)
