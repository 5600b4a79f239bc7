"""Change events follow from the KV writes themselves (DESIGN.md §6, issue 8.1).

Every write to the bucket carries its change event (the ``Disco-Event`` header, and for a delete marker the
removed record as its body; :mod:`services.aggregator.store`). The event is published into the tenant's change
stream with ``Nats-Msg-Id`` = the write's revision, so the stream stores it once however many times, and by
whomever, it is published:

* the writer publishes the event of its own write at once, in the same socket write as its reply to the writer
  (:meth:`EventPublisher.own_now`), and nobody waits for the event's acknowledgement: an event whose ack says it
  was not stored, or brings no ack within ``timeout``, goes to the pipeline, which publishes
  (:attr:`EventPublisher.inflight` at once) and retries until stored;
* every other aggregator sees the write in its KV watch and keeps its event *pending*; it drops it when the event
  shows up on the change subject (it subscribes to every tenant's changes), and publishes it itself once
  ``takeover`` seconds have passed without it (the writer died, or its publish failed);
* before it overwrites a key, an aggregator publishes (and waits for) the pending events of that key, since the
  overwritten write then exists nowhere but in its memory;
* an aggregator that starts publishes, before it serves, the events of the entries newer than the tenant stream's
  last event or written in the last ``catch_up`` seconds (inside the stream's two-minute duplicate window); after
  a reconnect it treats the entries above the revision it had reached as pending.

So no crash between two steps can separate a write from its event: the event is in the write. Watchers follow the
live subject the bucket republishes each write on (bus.live); every publish above but the writer's own right after
its acknowledged write also goes there (:meth:`EventPublisher._live`), as a write the server may not have republished.

The events of one key are stored in the order of their revisions, whoever publishes them and however often a
publish is retried: each publish of a key waits until the key's previous one (in the order they were handed
over) is stored, and the events handed over together (a takeover, a catch-up) go in revision order, a key's
earlier pending events with them. A durable worker thus never sees an instance's bye before its announce.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from nats.aio.client import Client
from nats.aio.msg import Msg

from bus.subjects import Subjects
from services.aggregator.direct import publish, subscribe_direct
from services.aggregator.eventdata import PendingEvent
from services.aggregator.metrics import Metrics
from services.aggregator.store import ViewStore

__all__ = ["EventPublisher", "Link"]

log = logging.getLogger("disco.aggregator.events")


#: a publish's place in its key's order: the previous publish to wait for (None: nothing unstored), and its own
Link = tuple[anyio.Event | None, anyio.Event]


class EventPublisher:
    """Publishes change events into the tenants' streams (see the module's docstring)."""

    def __init__(
        self, store: ViewStore, subjects: Subjects, metrics: Metrics, writer: str, *, takeover: float = 2.0,
        inflight: int = 256, timeout: float = 5.0, clock: Callable[[], float] = time.monotonic,
        max_unstored: int = 1024,
    ) -> None:
        self.store = store
        self.subjects = subjects
        self.metrics = metrics
        self.writer = writer
        self.takeover = takeover
        #: how long a write waits for a pending event of its key to show up before publishing it itself
        self.grace = min(0.25, takeover)
        self.timeout = timeout
        self.clock = clock
        self.inflight = inflight
        self._send: MemoryObjectSendStream[tuple[PendingEvent, Link]]
        self._recv: MemoryObjectReceiveStream[tuple[PendingEvent, Link]]
        self._send, self._recv = anyio.create_memory_object_stream[tuple[PendingEvent, Link]](
            max_buffer_size=1_000_000)
        #: other writers' events not seen yet: (tenant, revision) -> (event, when to publish it ourselves)
        self.pending: dict[tuple[str, int], tuple[PendingEvent, float]] = {}
        #: events seen on the change subjects lately: (tenant, revision) -> when (a writer's event can arrive before
        #: its write reaches our KV watch)
        self.seen: dict[tuple[str, int], float] = {}
        self.seen_for = max(10.0, 4 * takeover)
        self._by_key: dict[str, set[tuple[str, int]]] = {}
        self._cleared: dict[str, anyio.Event] = {}
        #: our own events not stored yet, in all and per tenant; past ``max_unstored`` of one tenant, that tenant's
        #: writers wait a moment (:meth:`room`)
        self.unstored = 0
        self.max_unstored = max_unstored
        self._unstored_by: dict[str, int] = {}
        self._rooms: dict[str, anyio.Event] = {}
        #: per KV key, the last publish handed over: the next one of that key waits until it is stored
        self._tails: dict[str, anyio.Event] = {}
        #: events published by :meth:`own_now` whose ack has not come: token -> (event, when to give up waiting,
        #: its place in its key's order); in publish order, which is deadline order (one timeout for all)
        self._awaiting: dict[int, tuple[PendingEvent, float, anyio.Event]] = {}
        self._tokens = itertools.count()
        self._ack_prefix = ""  # set by run(): the inbox the acks of own_now's publishes come to

    def _link(self, ev: PendingEvent) -> Link:
        """Take ``ev``'s place in its key's order now (when it is handed over, not when its task runs): the event
        to wait for (the key's previous publish, None if none is unstored) and the one to set once stored."""
        prev = self._tails.get(ev.key)
        done = anyio.Event()
        self._tails[ev.key] = done
        return prev, done

    def _unlink(self, ev: PendingEvent, done: anyio.Event) -> None:
        done.set()
        if self._tails.get(ev.key) is done:
            del self._tails[ev.key]

    async def _in_order(self, ev: PendingEvent, link: Link) -> None:
        """Publish ``ev`` once the key's previous publish is stored; retried until stored."""
        prev, done = link
        try:
            if prev is not None:
                await prev.wait()
            await self._publish_until_stored(ev)
        finally:
            self._unlink(ev, done)

    def _unstored(self, tenant: str) -> None:
        self.unstored += 1
        self._unstored_by[tenant] = self._unstored_by.get(tenant, 0) + 1

    def _stored(self, tenant: str) -> None:
        """One of our own events is stored (or handed on): a writer of its tenant waiting for room may go on."""
        self.unstored -= 1
        left = self._unstored_by[tenant] - 1
        if left:
            self._unstored_by[tenant] = left
        else:
            del self._unstored_by[tenant]
        if left < self.max_unstored and tenant in self._rooms:
            self._rooms.pop(tenant).set()

    async def room(self, tenant: str, patience: float = 0.5) -> None:
        """Backpressure for a tenant's writers: while ``max_unstored`` of the tenant's events (of our writes) wait
        for its change stream, wait (at most ``patience`` s, so that a stream without a leader slows that tenant's
        writes but never stops them; other tenants never wait for it). Without it a burst of writes outruns the
        streams, and the events piling up in memory leave the heap fragmented long after the burst (measured: 2 KiB
        instead of 0.8 KiB per instance after 100k registrations, scripts/load.py)."""
        if self._unstored_by.get(tenant, 0) < self.max_unstored:
            return
        with anyio.move_on_after(patience):
            while self._unstored_by.get(tenant, 0) >= self.max_unstored:
                room = self._rooms.get(tenant)
                if room is None:
                    room = self._rooms[tenant] = anyio.Event()
                await room.wait()

    def own(self, ev: PendingEvent) -> None:
        """Publish an event of our own write (never waits)."""
        self._unstored(ev.tenant)
        self._send.send_nowait((ev, self._link(ev)))

    def _retry(self, ev: PendingEvent, done: anyio.Event) -> None:
        """Hand an :meth:`own_now` publish that failed (or whose ack did not come) to the pipeline, keeping its
        place in its key's order: the key's later events still wait for it."""
        self._unstored(ev.tenant)
        self._send.send_nowait((ev, (None, done)))

    async def own_now(self, ev: PendingEvent) -> None:
        """Publish an event of our own write now, without waiting for its ack (see the module's docstring): the
        writer's reply, published right after, leaves in the same socket write. Until :meth:`run` listens for
        acks, or while the tenant's change stream is not known to exist, or while an earlier event of the same key
        is not stored yet (the key's order), the event takes the pipeline. Waits first while too many
        of its tenant's events are unstored (:meth:`room`)."""
        await self.room(ev.tenant)
        if not self._ack_prefix or not self.store.stream_ready(ev.tenant) or ev.key in self._tails:
            self.own(ev)
            return
        _, done = self._link(ev)  # no predecessor: later events of the key wait for this one's ack
        token = next(self._tokens)
        self._unstored(ev.tenant)
        self._awaiting[token] = (ev, self.clock() + self.timeout, done)
        try:
            await publish(self.store.js._nc, ev.subject, ev.data, reply=f"{self._ack_prefix}{token}",
                          headers={"Nats-Msg-Id": str(ev.revision)})
        except Exception as exc:  # closed or draining: the pipeline retries it
            log.debug("change event %d not published at once (%s)", ev.revision, exc or type(exc).__name__)
            if self._awaiting.pop(token, None) is not None:
                self._stored(ev.tenant)
                self._retry(ev, done)
        else:
            if not self.store.republishing:  # the bucket does not republish: the watchers' copy (bus.live)
                await self._live(ev)

    def _on_ack(self, msg: Msg) -> None:
        """The ack of an :meth:`own_now` publish: stored (a duplicate counts), or handed to the pipeline."""
        try:
            token = int(msg.subject[len(self._ack_prefix):])
        except ValueError:
            return
        item = self._awaiting.pop(token, None)
        if item is None:  # given up on already (its retry is in the pipeline)
            return
        ev, _, done = item
        self._stored(ev.tenant)
        try:
            ack = json.loads(msg.data) if msg.data else None
        except ValueError:
            ack = None
        if isinstance(ack, dict) and "seq" in ack and "error" not in ack:
            self.metrics.inc("events", ev.tenant)
            self.metrics.event(ev.tenant, ev.kind, ev.reason)
            self._unlink(ev, done)
            return
        # an error, or no stream listening (a 503 status without a body): the pipeline's retry reports and handles it
        self.metrics.inc("event_retries", ev.tenant)
        self._retry(ev, done)

    def _ack_timeouts(self, now: float) -> None:
        """Hand the events whose ack did not come in time to the pipeline (a retry keeps the Nats-Msg-Id, so an
        event that was stored after all is not stored twice)."""
        while self._awaiting:
            token = next(iter(self._awaiting))
            ev, until, done = self._awaiting[token]
            if until > now:
                return
            del self._awaiting[token]
            self._stored(ev.tenant)
            self.metrics.inc("event_retries", ev.tenant)
            self._retry(ev, done)

    def foreign(self, ev: PendingEvent, delay: float | None = None) -> None:
        """Another writer's event: publish it ourselves unless it shows up within ``takeover`` seconds."""
        key = (ev.tenant, ev.revision)
        if key not in self.pending and key not in self.seen:
            self.pending[key] = (ev, self.clock() + (self.takeover if delay is None else delay))
            self._by_key.setdefault(ev.key, set()).add(key)

    def _pop(self, key: tuple[str, int]) -> PendingEvent | None:
        item = self.pending.pop(key, None)
        if item is None:
            return None
        keys = self._by_key.get(item[0].key)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_key[item[0].key]
                cleared = self._cleared.get(item[0].key)
                if cleared is not None:
                    cleared.set()
        return item[0]

    async def before_write(self, kv_key: str) -> None:
        """Publish (and wait for) the pending events of ``kv_key`` before we overwrite it: once overwritten, the
        KV no longer holds that write, so its event would live in our memory only."""
        keys = self._by_key.get(kv_key)
        if not keys:
            return
        # its writer is most likely alive and its event on the way: give it a moment, so as not to publish a
        # second copy that watchers would see twice
        cleared = self._cleared.setdefault(kv_key, anyio.Event())
        with anyio.move_on_after(self.grace):
            await cleared.wait()
        self._cleared.pop(kv_key, None)
        for key in sorted(self._by_key.get(kv_key, ()), key=lambda k: k[1]):
            ev = self._pop(key)
            if ev is not None:
                await self.publish_now(ev)

    async def publish_now(self, ev: PendingEvent) -> None:
        """Publish ``ev`` (after the key's earlier publishes) and wait until it is stored, for at most ``timeout``;
        past it, leave it to the pipeline."""
        prev, done = self._link(ev)
        try:
            with anyio.fail_after(self.timeout):
                if prev is not None:
                    await prev.wait()
                await self.store.publish_event(ev.tenant, ev.subject, ev.data, ev.revision, self.timeout)
            self.metrics.inc("events", ev.tenant)
            self.metrics.event(ev.tenant, ev.kind, ev.reason)
            await self._live(ev)
        except Exception as exc:
            log.warning("change event %d of tenant %s not stored yet (%s)", ev.revision, ev.tenant,
                        exc or type(exc).__name__)
            self.own(ev)  # the pipeline retries it, after whatever of its key was handed over meanwhile
        finally:
            self._unlink(ev, done)

    async def _live(self, ev: PendingEvent) -> None:
        """After ``ev`` is stored by a publish other than :meth:`own_now`'s (a takeover, a catch-up, a retry): its
        write may be one the server stored without republishing it (its writer heard no acknowledgement), so
        watchers get it on the live subject from here too (a copy they hold already is dropped; bus.live). And
        after every :meth:`own_now` while the bucket does not republish."""
        try:
            await self.store.publish_live(ev, self.writer)
        except Exception as exc:  # not connected: the watchers relist after their reconnect anyway
            log.debug("live copy of change event %d not published (%s)", ev.revision, exc or type(exc).__name__)

    async def publish_all(self, events: list[PendingEvent], within: float = 30.0) -> None:
        """Publish ``events`` and wait until every one is stored (catching up at start, before serving); what is
        not stored ``within`` seconds (a stream without a leader) is left to the pipeline, so a start never hangs."""
        limiter = anyio.CapacityLimiter(self.inflight)
        done: set[int] = set()
        events = sorted(events, key=lambda ev: ev.revision)

        async def one(k: int, ev: PendingEvent, link: Link) -> None:
            async with limiter:
                await self._in_order(ev, link)
                done.add(k)

        with anyio.move_on_after(within):
            async with anyio.create_task_group() as tg:
                for k, ev in enumerate(events):
                    tg.start_soon(one, k, ev, self._link(ev))
        for k, ev in enumerate(events):
            if k not in done:
                self.own(ev)

    def _on_event(self, msg: Msg) -> None:
        rev = (msg.headers or {}).get("Nats-Msg-Id")
        if not rev:
            return
        parts = msg.subject.split(".")
        n = self.subjects.prefix.count(".") + 1
        try:
            key = (parts[n], int(rev))
        except (IndexError, ValueError):
            return
        self._pop(key)
        self.seen[key] = self.clock()

    async def run(self) -> None:
        nc: Client = self.store.js._nc
        sub = await subscribe_direct(nc, self.subjects.all_changes(), self._on_event)
        inbox = nc.new_inbox() + "."
        acks = await subscribe_direct(nc, inbox + "*", self._on_ack)
        self._ack_prefix = inbox
        limiter = anyio.CapacityLimiter(self.inflight)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._takeover_loop)
                async for ev, link in self._recv:
                    token = object()
                    await limiter.acquire_on_behalf_of(token)
                    tg.start_soon(self._publish, ev, link, limiter, token)
        finally:
            self._ack_prefix = ""
            with anyio.CancelScope(shield=True):
                for s in (sub, acks):
                    try:
                        await s.unsubscribe()
                    except Exception:
                        pass

    async def _takeover_loop(self) -> None:
        while True:
            await anyio.sleep(min(0.2, self.takeover / 4))
            now = self.clock()
            self._ack_timeouts(now)
            old = now - self.seen_for
            while self.seen:  # in insertion (= arrival) order: drop from the front
                first = next(iter(self.seen))
                if self.seen[first] >= old:
                    break
                del self.seen[first]
            # a due event goes with its key's earlier pending ones, all in revision order
            upto: dict[str, int] = {}
            for (_, rev), (held, when) in self.pending.items():
                if when <= now:
                    upto[held.key] = max(rev, upto.get(held.key, 0))
            due = sorted((k for k, (held, _) in self.pending.items() if k[1] <= upto.get(held.key, -1)),
                         key=lambda k: k[1])
            for key in due:
                ev = self._pop(key)
                if ev is not None:
                    self.metrics.inc("events_taken_over", ev.tenant)
                    self.own(ev)

    async def _publish(self, ev: PendingEvent, link: Link, limiter: anyio.CapacityLimiter, token: object) -> None:
        try:
            await self._in_order(ev, link)
        finally:
            self._stored(ev.tenant)
            limiter.release_on_behalf_of(token)

    async def _publish_until_stored(self, ev: PendingEvent) -> None:
        """Retries keep the same Nats-Msg-Id, so a retry never duplicates."""
        delay = 0.05
        while True:
            try:
                await self.store.publish_event(ev.tenant, ev.subject, ev.data, ev.revision, self.timeout)
                self.metrics.inc("events", ev.tenant)
                self.metrics.event(ev.tenant, ev.kind, ev.reason)
                await self._live(ev)
                return
            except Exception as exc:
                self.metrics.inc("event_retries", ev.tenant)
                log.warning("change event %d of tenant %s not stored yet (%s); retrying", ev.revision,
                            ev.tenant, exc or type(exc).__name__)
                await anyio.sleep(delay)
                delay = min(delay * 2, 1.0)
