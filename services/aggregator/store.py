"""The durable side of the view: the JetStream KV bucket and the change-event stream.

Writes are compare-and-set on the key's last revision (``Nats-Expected-Last-Subject-Sequence``) so that several
aggregators can write at once and each state change happens exactly once; they are done as raw JetStream
publishes on ``$KV.<bucket>.<key>`` because a delete's revision is needed for its change event (nats-py's
``kv.delete`` does not return it), and because the write carries its change event with it: the header
``Disco-Event`` (type, reason, time, writer) and, for a delete marker, the removed record as its body. Whoever
follows the bucket can therefore publish the event of any write (:mod:`services.aggregator.events`). A lost race
raises :class:`Conflict`.

The bucket is followed with an ordered consumer of our own (not nats-py's ``watchall``) because the follower needs
those headers, and :meth:`ViewStore.bucket_state` tells it what a complete load must hold.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import anyio
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

from bus.streams import changes_stream_config, dlq_stream_config
from bus.subjects import Subjects, changes_stream_name
from services.aggregator.direct import drop_raw, make_direct, publish, take_raw
from services.aggregator.eventdata import PendingEvent, live_copy
from services.aggregator.jsacks import AckedPublisher
from services.aggregator.kvwatch import EVENT_HEADER, KV_OP, KvChange, KvWatch, ack_position, change_of, kv_change

log = logging.getLogger("disco.aggregator.store")

__all__ = ["EVENT_HEADER", "BucketState", "Conflict", "KvChange", "KvWatch", "ViewStore"]

_WRONG_LAST = (10071, 10164)


class Conflict(Exception):
    """Another writer changed the key first; re-read and decide again."""


@dataclass(frozen=True, slots=True)
class BucketState:
    last_seq: int  # the bucket stream's last sequence (revision)
    subjects: int  # keys with a message (values and delete markers)


#: revisions the bucket keeps per key: a write overwritten at once (an announce, then its bye) stays readable, so
#: that an aggregator catching up after a reconnect or a start finds its event even when its writer died
KV_HISTORY = 8


class ViewStore:
    def __init__(self, js: JetStreamContext, bucket: str, subjects: Subjects, stream_prefix: str,
                 *, write_timeout: float = 2.0) -> None:
        self.js = js
        self.bucket = bucket
        self.kv_stream = f"KV_{bucket}"
        self.subjects = subjects
        self.stream_prefix = stream_prefix
        self.write_timeout = write_timeout
        self._pre = f"$KV.{bucket}."
        self._acks = AckedPublisher(js._nc)  # the writes: js.publish's errors, less CPU (jsacks.py)
        self._kv: KeyValue | None = None
        self._streams_ready: set[str] = set()
        #: streams being made ready: later callers wait for the first (in order), none overtakes it
        self._streams_pending: dict[str, anyio.Event] = {}
        self._replicas = 1
        self._max_age = 7 * 24 * 3600.0
        self._republish = api.RePublish(src=f"{self._pre}*.*.*", dest=subjects.live_republish())
        #: the bucket's stream republishes each stored write on the live subjects (bus.live), as last seen; while
        #: not, the aggregators copy their own events there too (events.py)
        self.republishing = False

    async def open(self, *, replicas: int, changes_max_age: float) -> None:
        """Create (or bind to) the bucket; safe to call from every aggregator at once."""
        self._replicas, self._max_age = replicas, changes_max_age
        try:
            self._kv = await self.js.key_value(self.bucket)
        except nats.js.errors.BucketNotFoundError:
            try:
                self._kv = await self.js.create_key_value(
                    bucket=self.bucket, history=KV_HISTORY, replicas=replicas, storage=api.StorageType.FILE,
                    description="disco live view",
                )
            except nats.js.errors.APIError:
                self._kv = await self.js.key_value(self.bucket)  # created by another aggregator meanwhile
        await self._ensure_republish()

    async def keep_republishing(self, every: float) -> None:
        """Every ``every`` seconds, look at the bucket; one that no longer republishes (its config edited by hand)
        is configured again. The aggregator copies its events to the live subjects meanwhile."""
        while True:
            await anyio.sleep(every)
            try:
                await self.bucket_state()  # notes whether it republishes
                if not self.republishing:
                    await self._ensure_republish()
            except (nats.errors.Error, TimeoutError) as exc:
                log.debug("bucket %s not checked: %s", self.bucket, exc or type(exc).__name__)

    def _republishes(self, rp: api.RePublish | None) -> bool:
        want = self._republish
        return rp is not None and rp.src == want.src and rp.dest == want.dest and not rp.headers_only

    async def _ensure_republish(self) -> None:
        """Have the bucket's stream republish each stored write on the live subjects (:mod:`bus.live`); safe to
        call from every aggregator at once. One that cannot (a JetStream error) logs it, and copies its events
        to the live subjects itself meanwhile (:attr:`republishing` False)."""
        try:
            info = await self.js.stream_info(self.kv_stream)
            if not self._republishes(info.config.republish):
                info.config.republish = self._republish
                await self.js.update_stream(info.config)
                log.info("the live-view bucket %s now republishes its writes on %s", self.bucket,
                         self._republish.dest)
            self.republishing = True
        except (nats.errors.Error, TimeoutError) as exc:
            self.republishing = False
            log.warning("the live-view bucket %s does not republish its writes (%s): this aggregator copies its "
                        "change events to the live subjects itself", self.bucket, exc or type(exc).__name__)

    async def ensure_changes_stream(self, tenant: str) -> None:
        """Create the tenant's change stream (``<prefix>_<tenant>`` capturing ``disco.<t>.changes.*``) once.

        One stream per tenant, not one for all: each tenant's durable workers then need JetStream permissions on
        their own stream only (DESIGN.md §7), and one tenant's retention cannot evict another's events.
        """
        name = changes_stream_name(self.stream_prefix, tenant)
        if name in self._streams_ready:
            return
        pending = self._streams_pending.get(name)
        if pending is not None:  # another publish is making it ready: wait behind it, so as not to overtake it
            await pending.wait()
            return
        pending = self._streams_pending[name] = anyio.Event()
        try:
            cfg = changes_stream_config(self.subjects, self.stream_prefix, tenant, replicas=self._replicas,
                                        max_age=self._max_age)
            try:
                await self.js.stream_info(name)
            except nats.js.errors.NotFoundError:
                try:
                    await self.js.add_stream(cfg)
                except nats.js.errors.APIError as exc:
                    log.debug("change stream %s created concurrently: %s", name, exc)
            try:  # the tenant's dead letters, with its change stream (same replicas; idempotent)
                await self.js.add_stream(dlq_stream_config(self.subjects, self.stream_prefix, tenant,
                                                           replicas=self._replicas))
            except (nats.errors.Error, TimeoutError) as exc:
                log.debug("dead-letter stream of %s not created: %s", tenant, exc)
            self._streams_ready.add(name)
        finally:
            del self._streams_pending[name]
            pending.set()

    def stream_ready(self, tenant: str) -> bool:
        """Whether the tenant's change stream is known to exist (made ready by :meth:`ensure_changes_stream`)."""
        return changes_stream_name(self.stream_prefix, tenant) in self._streams_ready

    @property
    def kv(self) -> KeyValue:
        assert self._kv is not None, "open() first"
        return self._kv

    def idle(self) -> bool:
        """No KV write of this aggregator is in flight, and its connection has nothing left to write: a write
        finishing now is alone, and its reply is worth writing at once (``direct.write_now``)."""
        return self._acks.idle()

    async def _publish(self, key: str, value: bytes, headers: dict[str, str]) -> int:
        try:
            return await self._acks.publish(self._pre + key, value, headers, self.write_timeout)
        except nats.js.errors.APIError as exc:
            if exc.err_code in _WRONG_LAST:
                raise Conflict(key) from None
            raise

    async def create(self, key: str, value: bytes, last: int = 0, event: str | None = None) -> int:
        """Write a key that the view does not hold; ``last`` is its delete marker's revision, if known."""
        return await self.update(key, value, last, event)

    async def update(self, key: str, value: bytes, last: int, event: str | None = None) -> int:
        headers: dict[str, str] = {api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(last)}
        if event is not None:
            headers[EVENT_HEADER] = event
        return await self._publish(key, value, headers)

    async def delete(self, key: str, last: int, event: str | None = None, record: bytes = b"") -> int:
        """Place a delete marker if the key is still at revision ``last``; return the marker's revision. The
        marker's body is ``record`` (the removed instance, for its change event; readers of a delete ignore it)."""
        headers: dict[str, str] = {KV_OP: "DEL", api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE: str(last)}
        if event is not None:
            headers[EVENT_HEADER] = event
        return await self._publish(key, record, headers)

    async def latest(self, key: str) -> KvChange | None:
        """The newest message of ``key`` (a value or a delete marker), or None if the key never existed."""
        try:
            msg = await self.js.get_last_msg(self.kv_stream, self._pre + key)
        except nats.js.errors.NotFoundError:
            return None
        return kv_change(key, msg.headers, msg.data, int(msg.seq or 0))

    async def bucket_state(self) -> BucketState:
        """The bucket stream's last sequence and number of keys, straight from the server's stream info (nats-py's
        ``StreamState`` drops ``num_subjects``)."""
        nc = self.js._nc
        prefix = getattr(self.js, "_prefix", "$JS.API")
        msg = await nc.request(f"{prefix}.STREAM.INFO.{self.kv_stream}", b"", timeout=self.write_timeout)
        info = json.loads(msg.data)
        if "error" in info:
            raise nats.js.errors.APIError.from_error(info["error"])
        rp = info.get("config", {}).get("republish")
        republishing = isinstance(rp, dict) and self._republishes(api.RePublish.from_response(dict(rp)))
        if republishing != self.republishing:
            self.republishing = republishing
            log.warning("the live-view bucket %s %s", self.bucket, "republishes its writes again" if republishing
                        else "no longer republishes its writes: this aggregator copies its change events to the "
                             "live subjects itself until it is configured again")
        state = info.get("state", {})
        return BucketState(int(state.get("last_seq", 0)), int(state.get("num_subjects", 0)))

    async def has_message_in(self, after: int, upto: int) -> bool:
        """Whether the bucket still holds a message with a revision in ``(after, upto]``."""
        if upto <= after:
            return False
        try:
            msg = await self.js.get_msg(self.kv_stream, seq=after + 1, subject=self._pre + ">", next=True)
        except nats.js.errors.NotFoundError:
            return False
        return int(msg.seq or 0) <= upto

    def new_watch(self) -> KvWatch:
        """The :class:`KvWatch` that :meth:`watch` fills (tests put a lossy one here)."""
        return KvWatch(self._pre)

    @asynccontextmanager
    async def watch(self) -> AsyncIterator[KvWatch]:
        """Follow every key (see :class:`KvWatch`); stopped on exit."""
        w = self.new_watch()

        async def cb(msg: Msg) -> None:  # a nats-py without direct handling (services.aggregator.direct)
            w._put(msg)

        w.sub = await self.js.subscribe(
            self._pre + ">", stream=self.kv_stream, cb=cb, ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT, inactive_threshold=300.0,
        )
        make_direct(w.sub, w._put)  # each delivery is taken as it is read (those read already first, in order)
        take_raw(self.js._nc, w.sub, w._put_plain)  # and a plain value without building a Msg (direct.py)
        try:
            info = await w.sub.consumer_info()
            if info.num_pending == 0 and w.delivered == 0 and w.sub.delivered == 0:
                w.init_done = True
                w._add(None)
            yield w
        finally:
            drop_raw(self.js._nc, w.sub)
            try:
                await w.sub.unsubscribe()
            except Exception:
                pass

    async def written_since(self, *, after_seq: int | None = None, since: float | None = None, until: int,
                            limit: int = 20_000, timeout: float = 5.0) -> list[KvChange]:
        """The writes carrying an event in the bucket after sequence ``after_seq`` (or newer than unix time
        ``since``) up to ``until``, superseded revisions included as far as the bucket's history keeps them; at
        most ``limit`` messages read and ``timeout`` seconds spent (a catch-up never stalls a start)."""
        if after_seq is not None and after_seq >= until:
            return []
        got: list[KvChange] = []
        done = asyncio.Event()
        read = 0

        def take(msg: Msg) -> None:
            nonlocal read
            if done.is_set():
                return  # read enough: what the consumer sends until it is gone is dropped
            read += 1
            seq, left = ack_position(msg.reply)
            change = change_of(self._pre, msg, seq)
            if change.revision <= until and change.event is not None:
                got.append(change)
            if change.revision >= until or left == 0 or read >= limit:
                done.set()

        async def cb(msg: Msg) -> None:  # a nats-py without direct handling (direct.py)
            take(msg)

        if after_seq is not None:
            config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after_seq + 1)
        else:
            config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_TIME,
                                        opt_start_time=datetime.fromtimestamp(since or 0.0, UTC))
        sub = await self.js.subscribe(self._pre + ">", stream=self.kv_stream, cb=cb, ordered_consumer=True,
                                      config=config, inactive_threshold=30.0)
        make_direct(sub, take)  # a restart soon after a burst reads up to `limit` messages here, before serving
        try:
            with anyio.move_on_after(timeout):
                info = await sub.consumer_info()
                if info.num_pending == 0 and (info.delivered is None or not info.delivered.consumer_seq):
                    return got  # nothing in that range at all: no message will come
                await done.wait()
        finally:
            try:
                await sub.unsubscribe()
            except Exception:
                pass
        return got

    async def last_event_revision(self, tenant: str) -> int | None:
        """The revision of the newest event in the tenant's change stream: 0 if the stream is missing or never
        held one, None if its events have all aged out (then nothing is known)."""
        name = changes_stream_name(self.stream_prefix, tenant)
        try:
            info = await self.js.stream_info(name)
        except nats.js.errors.NotFoundError:
            return 0
        if info.state.last_seq == 0:
            return 0
        if info.state.messages == 0:
            return None
        try:
            msg = await self.js.get_msg(name, seq=info.state.last_seq)
        except nats.js.errors.NotFoundError:
            return None
        try:
            return int((msg.headers or {}).get("Nats-Msg-Id", "0"))
        except ValueError:
            return None

    async def publish_event(self, tenant: str, subject: str, data: bytes, revision: int, timeout: float) -> None:
        """Publish a change event, captured by the tenant's change stream; the revision de-duplicates retries."""
        await self.ensure_changes_stream(tenant)
        try:
            await self.js.publish(subject, data, headers={"Nats-Msg-Id": str(revision)}, timeout=timeout)
        except nats.errors.NoRespondersError:
            self._streams_ready.discard(changes_stream_name(self.stream_prefix, tenant))  # deleted: re-create
            raise

    async def publish_live(self, ev: PendingEvent, writer: str) -> None:
        """Publish ``ev`` on its live subject as the server republishes a write (:mod:`bus.live`): for a write that
        may not have been republished, or while the bucket does not republish."""
        subject, headers, body = live_copy(self.subjects, ev, writer)
        await publish(self.js._nc, subject, body, headers=headers)

    async def purge_deletes(self, older_than: float) -> None:
        await self.kv.purge_deletes(olderthan=int(older_than))
