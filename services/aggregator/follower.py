"""Following the durable view: load the KV bucket at start, then apply every change (DESIGN.md §6).

Every aggregator follows the bucket, so every aggregator holds the same view in memory. What it promises:

* **A load counts only once verified complete.** The watch's "initial backlog delivered" marker is not trusted on
  its own (after a reconnect an ordered consumer can deliver a partial load): the load is complete when it has
  reached the bucket stream's last sequence (or nothing is left between) and holds as many keys as the stream
  reports subjects. Until then nothing is dropped and the aggregator is not ready; a load that does not verify
  within ``verify_timeout`` is thrown away and the watch re-created.
* **Reconciliation never outranks a real entry.** After a re-created watch, a key the verified load lacks is
  looked up: a delete marker is applied at *its* revision, a value is applied, and a key the bucket no longer has
  at all is dropped with a tombstone at the entry's own revision, so any later write of it is taken.
* **A silent watch is re-created**: when the watch says nothing for ``silent_check`` seconds while the bucket holds
  messages past what it delivered, twice in a row (after a server restart a KV watcher can stay silent for many
  seconds, NATS-NOTES.md). A reconnect re-creates it too.
* **Every write's change event gets published** (:mod:`services.aggregator.events`): others' writes are handed to
  the publisher as pending, and so are the writes this aggregator could not have seen before the load
  (:mod:`services.aggregator.catchup`).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import msgpack
from anyio.abc import TaskStatus

from bus.codec import decode
from bus.errors import DiscoError, InvalidName
from bus.models import Instance, Status
from bus.subjects import kv_key, parse_kv_key, validate_instance_id
from services.aggregator.catchup import CatchUp
from services.aggregator.events import EventPublisher
from services.aggregator.kvwatch import KvChange
from services.aggregator.liveness import Liveness
from services.aggregator.memory import BulkLoad, Trimmer, trim
from services.aggregator.metrics import Metrics
from services.aggregator.store import BucketState, ViewStore
from services.aggregator.view import Entry, LiveView

__all__ = ["Follower", "IncompleteLoad"]

log = logging.getLogger("disco.aggregator.follower")


class IncompleteLoad(Exception):
    """The watch's load did not verify against the bucket's state (or the watch went silent)."""


class Follower:
    def __init__(
        self, store: ViewStore, view: LiveView, live: Liveness[tuple[str, str, str]], metrics: Metrics,
        events: EventPublisher | None = None, *, clock: Callable[[], float] = time.monotonic,
        verify_timeout: float = 5.0, silent_check: float = 1.0, catch_up: float = 90.0,
    ) -> None:
        self.store = store
        self.view = view
        self.live = live
        self.metrics = metrics
        self.clock = clock
        self.verify_timeout = verify_timeout
        self.silent_check = silent_check
        self.catchup = CatchUp(store, events, metrics, catch_up)
        self._restart = anyio.Event()
        self.trimmer = Trimmer()
        self._known: dict[str, tuple[str, str]] = {}  # "<tenant>.<service>" of keys seen: the names, interned
        #: loads verified complete so far (0: the aggregator has no complete view yet)
        self.loads = 0
        self.current = False  # the watch is verified, not suspected silent: the view follows the bucket (behind)
        self.ask_every = 0.1  # seconds between two questions to the bucket about its last revision (behind)
        self._asked: tuple[float, int | None] = (-1.0, None)  # when it was asked, and the answer

    def restart(self) -> None:
        """Re-create the KV watch (after a reconnect)."""
        self._restart.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Follow the KV for ever; ``started`` once the first load is verified complete and in the view."""
        started = False

        def on_initial() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        delay = 0.2
        while True:
            restart = self._restart = anyio.Event()
            async with anyio.create_task_group() as tg:

                async def stop_on_restart(ev: anyio.Event = restart, scope: Any = tg.cancel_scope) -> None:
                    await ev.wait()
                    scope.cancel()

                tg.start_soon(stop_on_restart)
                loads = self.loads
                try:
                    await self._follow_once(reconcile=started, on_initial=on_initial)
                except Exception as exc:
                    log.warning("KV watch re-created: %s", exc or type(exc).__name__)
                    self.metrics.inc("watch_restarts")
                    delay = 0.2 if self.loads > loads else min(delay * 2, 2.0)  # back off while nothing loads
                    await anyio.sleep(delay)
                tg.cancel_scope.cancel()

    async def _verified(self, target: BucketState, top: int, keys: int, *, probe: bool = True) -> bool:
        """The load holds every key of ``target`` (the bucket's state once the load was delivered); ``probe``:
        ask the bucket whether anything is left between (else only the cheap checks)."""
        if keys < target.subjects:
            return False
        if top >= target.last_seq:
            return True
        return probe and not await self.store.has_message_in(top, target.last_seq)

    async def behind(self, wait: float = 0.1) -> bool:
        """The view may miss writes the bucket holds: the watch is (re)loading or suspected silent, or the view is
        short, after ``wait`` s, of the bucket's last revision (asked every :attr:`ask_every` s at most). A snapshot
        says so, and its watcher lists again later (``bus.watch``) instead of hiding what it missed for good."""
        if not self.current:
            return True
        now = time.monotonic()
        if now - self._asked[0] >= self.ask_every:
            try:
                with anyio.fail_after(0.25):
                    self._asked = (now, (await self.store.bucket_state()).last_seq)
            except Exception:
                self._asked = (now, None)
        last = self._asked[1]
        if last is None:
            return True
        for _ in range(int(wait / 0.01)):  # deliveries in flight: a few ms
            if self.view.position >= last or not self.current:
                break
            await anyio.sleep(0.01)
        if not self.current:
            return True
        try:  # a revision the bucket no longer holds is nothing missed
            return await self.store.has_message_in(self.view.position, last)
        except Exception:  # no answer counts as behind, as above
            return True

    async def _follow_once(self, *, reconcile: bool, on_initial: Callable[[], None]) -> None:
        self.current = False
        seen: set[str] = set()
        top = 0
        verified = False
        target: BucketState | None = None
        progress = time.monotonic()
        before = self.view.position
        candidates: list[tuple[KvChange, Instance | None]] = []
        suspect = -1
        with BulkLoad() as bulk:
            async with self.store.watch() as w:
                while True:
                    change: KvChange | None = None
                    got = False
                    if not w.ready():
                        with anyio.move_on_after(1.0 if not verified else self.silent_check):
                            await w.wait()
                    if w.ready():
                        got = True
                        self.current = verified  # delivering again after a suspected silence: alive
                        now = self.clock()
                        n = 0
                        for n in range(1, 1001):  # noqa: B007 (a backlog: applied without an await per change)
                            change = w.pop()
                            if change is None:
                                break
                            inst = self.apply(change, now, verified)
                            top = max(top, change.revision)
                            if verified:
                                self.view.advance(change.revision)
                                if change.event is not None:
                                    self.pending_event(change, inst)
                            else:
                                seen.add(change.key)
                                if change.event is not None:
                                    candidates.append((change, inst))
                                if target is not None and len(seen) >= target.subjects and top >= target.last_seq:
                                    break  # verified by the cheap checks: complete it before applying anything newer
                            if not w.ready():
                                break
                        progress = time.monotonic()
                        self.trimmer.note(n, progress)
                        await anyio.lowlevel.checkpoint()  # a long backlog leaves the loop to others now and then
                        if change is not None and (verified or target is None or len(seen) < target.subjects
                                                   or top < target.last_seq):
                            continue
                    if got and change is not None:
                        pass  # verified by the cheap checks
                    elif verified:  # silent: is the bucket past what the watch delivered?
                        self.trimmer.quiet()
                        st = await self.store.bucket_state()
                        if await self.store.has_message_in(top, st.last_seq):
                            if suspect == top:
                                self.metrics.inc("silent_watch")
                                raise IncompleteLoad(f"the watch is silent at revision {top}, the bucket at "
                                                     f"{st.last_seq}")
                            suspect = top
                            self.current = False
                        continue
                    elif target is None:  # the load marker, or a load that stalled before it
                        target = await self.store.bucket_state()
                    assert target is not None
                    if await self._verified(target, top, len(seen)):
                        verified = True
                        bulk.done(len(seen))
                        await self._complete(reconcile, seen, top, before, candidates, on_initial)
                    elif time.monotonic() - progress > self.verify_timeout:
                        self.metrics.inc("incomplete_loads")
                        raise IncompleteLoad(f"the load of {len(seen)} keys up to revision {top} does not verify "
                                             f"against the bucket ({target.subjects} keys, last {target.last_seq})")

    async def _complete(self, reconcile: bool, seen: set[str], top: int, before: int,
                        candidates: list[tuple[KvChange, Instance | None]], on_initial: Callable[[], None]) -> None:
        if reconcile:
            await self._drop_unseen(seen)
        self.view.advance(top)
        self.loads += 1
        self.current = True
        await self.catchup.after_load(candidates, reconcile, before, top)
        candidates.clear()
        on_initial()
        self.trimmer.changes = 0
        trim()  # what the load allocated for a while (messages, the key set) goes back to the system

    def pending_event(self, change: KvChange, inst: Instance | None) -> None:
        """Keep the event of another writer's write pending (events.py publishes it unless it shows up)."""
        self.catchup.pending(change, inst)

    async def _drop_unseen(self, seen: set[str]) -> None:
        """Keys the verified load lacks: take the bucket's word for each (never a tombstone above a real entry)."""
        for t, s, i in self.view.all_keys():
            key = kv_key(t, s, i)
            if key in seen:
                continue
            latest = await self.store.latest(key)
            if latest is not None:
                self.apply(latest)
                continue
            if self.view.drop(t, s, i):
                self.live.forget((t, s, i))
                self.metrics.inc("reconcile_dropped", t)

    def _names(self, key: str) -> tuple[str, str, str]:
        """``parse_kv_key``, with the tenant and service of a key checked once (interned: one string per tenant
        and service in the view, not one per instance); raises InvalidName."""
        head, _, iid = key.rpartition(".")
        names = self._known.get(head)
        if names is None:
            t, s, iid = parse_kv_key(key)
            if len(self._known) >= 100_000:
                self._known.clear()
            names = self._known[head] = (sys.intern(t), sys.intern(s))
            return names[0], names[1], iid
        return names[0], names[1], validate_instance_id(iid)

    def apply(self, change: KvChange, now: float | None = None, known: bool = False) -> Instance | None:
        """Apply one KV change (a value or a delete marker) to the view and the liveness table; return the
        instance a value holds when it was decoded as a model (None otherwise: events decode it when needed).
        ``now``: the clock's time, if the caller has read it (a load reads it once per batch). ``known``: look
        first whether the view has the change already (after the load; not worth it for each entry of a load)."""
        try:
            t, s, i = self._names(change.key)
        except InvalidName:
            self.metrics.inc("kv_bad_key")
            return None
        if change.value is None:
            removed = self.view.delete(t, s, i, change.revision)
            if removed:
                self.live.forget((t, s, i))
            return None
        if known:
            cur = self.view.get(t, s, i)
            if cur is not None and cur.revision >= change.revision:
                return None  # in the view already: this aggregator's own write, which its watch brings back
        inst: Instance | None = None
        fast = trusted_entry(i, change.value, change.revision)
        if fast is not None:
            entry, ttl = fast
        else:
            try:
                inst = decode(change.value, Instance, 1 << 20)
            except DiscoError as exc:
                self.metrics.inc("kv_bad_value", t)
                log.warning("unreadable live-view entry %s: %s", change.key, exc)
                return None
            if inst.id != i:
                self.metrics.inc("kv_bad_value", t)
                return None
            entry, ttl = Entry.of(inst, change.revision), inst.ttl
        old = self.view.put_entry(t, s, entry)
        if old is not False:
            self.live.track((t, s, i), ttl, self.clock() if now is None else now)
        return inst


_STATUS = {st.value: st for st in Status}
_TTLS: dict[float, float] = {}


def trusted_entry(iid: str, value: bytes, revision: int) -> tuple[Entry, float] | None:
    """The view entry (and ttl) of a record read from the bucket, without the model's validation.

    The live-view bucket is written only by aggregators, with records they validated before writing; loading a
    million of them through the model would take most of a start (issue 11). So a record is taken as it is when
    its shape is what an aggregator writes: a msgpack map of version 1 whose id is the key's, with a known status,
    a ttl in range and a string zone and string tags. Anything else (None) goes through full validation.
    """
    try:
        obj = msgpack.unpackb(value, raw=False, use_list=False)
    except Exception:
        return None
    if type(obj) is not dict or obj.get("v") != 1 or obj.get("id") != iid:
        return None
    status = _STATUS.get(obj.get("status", "passing"))
    ttl = obj.get("ttl", 10.0)
    zone = obj.get("zone", "")
    tags = obj.get("tags", ())
    if (status is None or type(ttl) is not float or not 1 <= ttl <= 300 or type(zone) is not str
            or type(tags) is not tuple or (tags and not all(type(x) is str for x in tags))):
        return None
    ttl = _TTLS.setdefault(ttl, ttl) if len(_TTLS) < 1000 else ttl  # one float object per distinct ttl
    return Entry(iid, value, revision, status, zone, tags), ttl
