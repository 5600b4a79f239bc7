"""The aggregator process: lifecycle and subscriptions; the write path (compare-and-set, events, expiry) is
:mod:`services.aggregator.writes`, the read path (resolve, snapshot, per-tenant read lanes) is
:mod:`services.aggregator.reads`.

Heartbeats are handled inline in the subscription callbacks from memory (reads: reads.py); writes
(announce, bye, health changes, expiry) go through the per-tenant fair scheduler because they wait on JetStream.
Every malformed or invalid message is refused with an error reply when it has a reply subject, and counted and
logged otherwise; none changes the view or stops the aggregator.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable

import anyio
import nats.errors
from anyio.abc import TaskStatus
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from bus.codec import encode_map
from bus.connection import Connection
from bus.errors import DiscoError, InvalidName, Unavailable
from bus.subjects import ParsedSubject, validate_tenant
from services.aggregator.admission import Admission, SelfPreservation, TenantLimits
from services.aggregator.direct import parse_faster, publish, subscribe_direct
from services.aggregator.events import EventPublisher
from services.aggregator.follower import Follower
from services.aggregator.limits import follow_limits
from services.aggregator.liveness import Liveness
from services.aggregator.metrics import Metrics
from services.aggregator.micro import micro_service
from services.aggregator.reads import ReadPath
from services.aggregator.scheduler import TenantScheduler
from services.aggregator.settings import AggregatorSettings
from services.aggregator.shard import check_mapping
from services.aggregator.store import ViewStore
from services.aggregator.view import LiveView
from services.aggregator.writes import WritePath

__all__ = ["Aggregator"]

log = logging.getLogger("disco.aggregator")

#: refusals waiting to be sent at most (see Aggregator._refuse_soon)
MAX_QUEUED_REFUSALS = 10_000

Key = tuple[str, str, str]


class Aggregator(WritePath):
    """One aggregator. ``await run()`` serves until cancelled; :attr:`ready` is set once it answers, which is
    once its view is a verified-complete load of the KV bucket (follower.py).

    ``clock`` (monotonic seconds) is the time liveness, sweeps and self-preservation go by; tests pass their own.
    """

    def __init__(self, conn: Connection, settings: AggregatorSettings | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.conn = conn
        self.settings = settings or AggregatorSettings()
        self.subjects = conn.subjects
        self.clock = clock
        #: names this process's writes, so that its follower leaves their events to its write path
        self.writer_id = uuid.uuid4().hex[:12]
        self.view = LiveView()
        self.live: Liveness[Key] = Liveness()
        self.metrics = Metrics()
        st = self.settings
        self.admission = Admission(
            self.view, self.metrics,
            TenantLimits(max_instances=st.default_max_instances, max_services=st.default_max_services,
                         announce_rate=st.default_announce_rate),
            SelfPreservation(st.preservation_share, st.preservation_min, st.preservation_max_pause),
        )
        #: the shard of the tenants this aggregator serves (None: all; services/aggregator/shard.py)
        self.shard = self.settings.shard_spec
        self.store = ViewStore(conn.js, self.settings.view_bucket, conn.subjects, self.settings.stream,
                               write_timeout=self.settings.write_deadline)
        self.metrics.time_calls(self.store, ("create", "update", "delete"), "kv_write")
        self.events = EventPublisher(self.store, conn.subjects, self.metrics, self.writer_id,
                                     takeover=self.settings.event_takeover)
        self.follower = Follower(self.store, self.view, self.live, self.metrics, self.events, clock=clock)
        self.scheduler = TenantScheduler(self.settings.workers, self.settings.tenant_queue)
        #: resolves and snapshots (services/aggregator/reads.py)
        self.reads = ReadPath(conn, self.settings, self.view, self.metrics, parse=self._parse, reply=self._reply,
                              refuse=self._refuse, tenant_hint=self._tenant_hint, behind=self.follower.behind)
        self.ready = anyio.Event()
        self._expiring: set[Key] = set()
        self._ctl_sent: dict[Key, float] = {}
        self._parsed: dict[str, ParsedSubject] = {}
        self._subs: list[Subscription] = []
        self._hb_sid = -1
        self._hb_sub: Subscription | None = None
        #: how far behind this aggregator is in reading its connection (seconds, from PING/PONG round trips)
        self.lag = 0.0
        self._probe_started: float | None = None
        #: refusals of a direct handler (which cannot await), sent in order by one task; bounded like the backlog
        #: nats-py kept before: past it a refusal is dropped (the client times out), never a task per refusal
        self._refusals: deque[tuple[Msg, str, DiscoError, str]] = deque()
        self._refusals_wake = anyio.Event()

    # =========================================================================================================
    # lifecycle
    # =========================================================================================================
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        s = self.settings
        parse_faster(self.conn.nc)  # most of what it reads is messages (direct.py)
        await check_mapping(self.conn, self.shard)  # the server routes to us what we think it does (shard.py)
        await self._open_store()
        removers: list[Callable[[], None]] = []
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._refusal_loop)
                tg.start_soon(self.events.run)
                await tg.start(self.follower.run)
                self.live.grace(self.clock())
                await self._subscribe()
                removers.append(self.conn.on_reconnect(self._on_reconnect))
                removers.append(self.conn.on_slow_consumer(self._on_slow_consumer))
                tg.start_soon(self.scheduler.run)
                await tg.start(self.reads.run)
                tg.start_soon(self._sweep_loop)
                tg.start_soon(self._purge_loop)
                tg.start_soon(self.store.keep_republishing, self.settings.republish_check)
                tg.start_soon(self._lag_loop)
                if self.settings.follow_tenants:
                    tg.start_soon(follow_limits, self.conn, self.subjects.prefix, self.admission.set_limits)
                self.ready.set()
                log.info(
                    "aggregator ready: %d instances of %d tenants in the view (bucket %s, prefix %s%s)",
                    len(self.live), len(self.view.tenants()), s.view_bucket, s.prefix,
                    "" if self.shard is None else f", shard {self.shard.label}",
                )
                task_status.started()
                async with micro_service(self):  # `nats micro ls`, `disco status`
                    await anyio.sleep_forever()
        finally:
            for remove in removers:
                remove()
            with anyio.CancelScope(shield=True):
                for sub in self._subs:
                    try:
                        await sub.unsubscribe()
                    except Exception:
                        pass

    async def _open_store(self) -> None:
        """Bind to (or create) the KV bucket, retrying while JetStream is not ready; raise Unavailable when the
        server has no JetStream at all (nobody answers its API for 5 s), instead of retrying for ever."""
        delay = 0.1
        no_js_since: float | None = None
        while True:
            try:
                await self.store.open(replicas=self.settings.replicas, changes_max_age=self.settings.changes_max_age)
                return
            except nats.js.errors.ServiceUnavailableError:
                now = time.monotonic()
                no_js_since = no_js_since or now
                if now - no_js_since > 5.0:
                    raise Unavailable(
                        "JetStream is not enabled on the NATS server: start nats-server with -js "
                        "(or a jetstream block in its config); the aggregator keeps the view in JetStream"
                    ) from None
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
                log.warning("JetStream not ready (%s); retrying", exc or type(exc).__name__)
            await anyio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _subscribe(self) -> None:
        nc, q = self.conn.nc, self.settings.queue_group
        on = self.shard.listen if self.shard is not None else str
        msgs, size = 1_000_000, 512 * 1024 * 1024
        reads = self.settings.read_backlog
        subs = [
            await subscribe_direct(nc, on(self.subjects.any("announce")), self._on_announce, queue=q),
            await nc.subscribe(on(self.subjects.any("bye")), queue=q, cb=self._on_bye,
                               pending_msgs_limit=msgs, pending_bytes_limit=size),
            # every aggregator tracks every heartbeat (liveness is per aggregator, in memory)
            await nc.subscribe(on(self.subjects.any("hb")), cb=self._on_heartbeat,
                               pending_msgs_limit=reads, pending_bytes_limit=size),
            await nc.subscribe(f"{self.subjects.prefix}._sys.stats", cb=self._on_stats),
        ]
        self._subs.extend(subs)
        self._hb_sid = subs[2]._id
        self._hb_sub = subs[2]
        await nc.flush()

    async def _on_reconnect(self) -> None:
        # heartbeats sent while we were away are lost: nobody is expired on that evidence
        self.live.grace(self.clock())
        self.follower.restart()

    async def _on_slow_consumer(self, sid: int) -> None:
        self.metrics.inc("slow_consumer")
        if sid == self._hb_sid:
            # heartbeats were dropped: nobody is expired on that evidence (one ttl of grace for everyone)
            self.metrics.inc("heartbeats_dropped")
            self.live.grace(self.clock())

    # =========================================================================================================
    # helpers
    # =========================================================================================================
    def _parse(self, subject: str) -> ParsedSubject:
        p = self._parsed.get(subject)
        if p is None:
            p = self.subjects.parse(subject) if self.shard is None else self._parse_sharded(subject)
            if len(self._parsed) > 100_000:
                self._parsed.clear()
            self._parsed[subject] = p
        return p

    def _parse_sharded(self, subject: str) -> ParsedSubject:
        """A mapped subject of this shard, parsed as the client published it; a tenant of another shard (sent
        straight to a mapped subject) is refused, so that this shard's view holds only its own tenants."""
        assert self.shard is not None
        try:
            p = self.subjects.parse(self.shard.unmap(subject))
        except ValueError as exc:
            raise InvalidName(str(exc)) from None
        if not self.shard.owns(p.tenant):
            raise InvalidName(f"tenant {p.tenant!r} is not served by shard {self.shard.label}")
        return p

    def _reply_ok(self, tenant: str, reply: str) -> bool:
        # "_R_." is where nats-server routes the reply of an imported service back to the importing (tenant's)
        # account: in operator mode a tenant's request reaches DISCO only through its own import
        if not self.settings.strict_replies or reply.startswith((f"_INBOX.{tenant}.", "_R_.")):
            return True
        self.metrics.inc("reply_refused", tenant)
        log.warning("tenant %s asked for a reply on %s, outside its inbox: dropped", tenant, reply)
        return False

    async def _reply(self, tenant: str, reply: str, data: bytes, via: Msg | None = None,
                     headers: dict[str, str] | None = None) -> None:
        """Send ``data`` to ``reply`` (if the tenant may read there), on the connection ``via`` came in on."""
        if reply and self._reply_ok(tenant, reply):
            nc = via._client if via is not None else self.conn.nc
            try:
                await publish(nc, reply, data, headers=headers)
            except Exception as exc:
                self.metrics.inc("reply_failed", tenant)
                log.debug("reply to %s failed: %s", reply, exc)

    async def _refuse(self, msg: Msg, tenant: str, err: DiscoError, what: str) -> None:
        self.metrics.inc(f"refused.{err.code}", tenant)
        self.metrics.inc("refused", tenant)
        if msg.reply:
            await self._reply(tenant, msg.reply, encode_map(err.to_wire()), msg)
        else:
            log.debug("refused %s on %s (no reply subject): %s", what, msg.subject, err)

    def _refuse_soon(self, msg: Msg, tenant: str, err: DiscoError, what: str) -> None:
        """:meth:`_refuse` from a handler that cannot await (a direct subscription's): queued for
        :meth:`_refusal_loop`, or dropped (counted) while :data:`MAX_QUEUED_REFUSALS` wait already."""
        if len(self._refusals) >= MAX_QUEUED_REFUSALS:
            self.metrics.inc("refusals_dropped", tenant)
            return
        self._refusals.append((msg, tenant, err, what))
        self._refusals_wake.set()

    async def _refusal_loop(self) -> None:
        while True:
            if not self._refusals:
                self._refusals_wake = anyio.Event()
                await self._refusals_wake.wait()
                continue
            await self._refuse(*self._refusals.popleft())

    def _tenant_hint(self, subject: str) -> str:
        """The subject's tenant token if it is a valid tenant name, else ""."""
        known = self._parsed.get(subject)
        if known is not None:
            return known.tenant
        parts = subject.split(".")
        n = self.subjects.prefix.count(".") + 1
        if len(parts) > n:
            try:
                return validate_tenant(parts[n])
            except InvalidName:
                pass
        return ""

    def _submit(self, tenant: str, job: Callable[[], Awaitable[None]]) -> bool:
        if self.scheduler.submit(tenant, job):
            return True
        self.metrics.inc("overloaded", tenant)
        return False

    def behind(self, now: float) -> bool:
        """True while this aggregator reads its connection late (a backlog in the socket or the server):
        heartbeats may be waiting in there, so silence proves nothing."""
        started = self._probe_started
        limit = self.settings.max_read_lag
        # the probe runs on the real clock whatever ``now`` (the liveness clock) says
        return self.lag > limit or (started is not None and time.monotonic() - started > limit)

    async def _lag_loop(self) -> None:
        """Measure the read lag: a PONG comes back behind every message the server has queued for us."""
        while True:
            self._probe_started = time.monotonic()
            try:
                await self.conn.nc.flush(timeout=60)
            except Exception:
                pass
            self.lag = time.monotonic() - self._probe_started
            self._probe_started = None
            await anyio.sleep(0.1)

    async def _purge_loop(self) -> None:
        while True:
            await anyio.sleep(self.settings.purge_deletes_every)
            try:
                await self.store.purge_deletes(self.settings.purge_deletes_older_than)
            except Exception as exc:
                log.debug("purging old delete markers failed: %s", exc)

    async def _on_stats(self, msg: Msg) -> None:
        if not msg.reply:
            return
        counts = {t: list(self.view.count(t)) for t in self.view.tenants()}
        data = encode_map({"v": 1, "ok": True, "metrics": self.metrics.as_map(), "tenants": counts,
                           "position": self.view.position, "live": len(self.live),
                           **({} if self.shard is None else {"shard": self.shard.label})})
        try:
            await self.conn.nc.publish(msg.reply, data)
        except Exception:
            pass
