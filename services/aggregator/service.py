"""The aggregator process: subscriptions, the write path (compare-and-set), expiry; the read path is reads.py.

Heartbeats are handled inline in the subscription callbacks from memory (reads: reads.py); writes
(announce, bye, health changes, expiry) go through the per-tenant fair scheduler because they wait on JetStream.
Every malformed or invalid message is refused with an error reply when it has a reply subject, and counted and
logged otherwise; none changes the view or stops the aggregator.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import anyio
import nats.errors
from anyio.abc import TaskStatus
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from bus.codec import decode, encode, encode_map
from bus.connection import Connection
from bus.errors import DiscoError, InvalidName, Overloaded, Unavailable
from bus.models import (
    Bye,
    ChangeReason,
    ChangeType,
    Control,
    Heartbeat,
    Instance,
)
from bus.subjects import ParsedSubject, kv_key, validate_tenant
from services.aggregator.admission import Admission, SelfPreservation, TenantLimits
from services.aggregator.follower import Follower
from services.aggregator.limits import follow_limits
from services.aggregator.liveness import Liveness
from services.aggregator.metrics import Metrics
from services.aggregator.reads import ReadPath
from services.aggregator.scheduler import TenantScheduler
from services.aggregator.settings import AggregatorSettings
from services.aggregator.store import Conflict, ViewStore
from services.aggregator.view import LiveView

__all__ = ["Aggregator"]

log = logging.getLogger("disco.aggregator")

Key = tuple[str, str, str]
_MAX_CAS_ATTEMPTS = 8


class Aggregator:
    """One aggregator. ``await run()`` serves until cancelled; :attr:`ready` is set once it answers."""

    def __init__(self, conn: Connection, settings: AggregatorSettings | None = None) -> None:
        self.conn = conn
        self.settings = settings or AggregatorSettings()
        self.subjects = conn.subjects
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
        self.store = ViewStore(conn.js, self.settings.bucket, conn.subjects, self.settings.stream)
        self.follower = Follower(self.store, self.view, self.live, self.metrics)
        self.scheduler = TenantScheduler(self.settings.workers, self.settings.tenant_queue)
        #: resolves and snapshots (services/aggregator/reads.py)
        self.reads = ReadPath(conn, self.settings, self.view, self.metrics, parse=self._parse, reply=self._reply,
                              refuse=self._refuse, tenant_hint=self._tenant_hint)
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

    # =========================================================================================================
    # lifecycle
    # =========================================================================================================
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        s = self.settings
        await self._open_store()
        removers: list[Callable[[], None]] = []
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(self.follower.run)
                self.live.grace(time.monotonic())
                await self._subscribe()
                removers.append(self.conn.on_reconnect(self._on_reconnect))
                removers.append(self.conn.on_slow_consumer(self._on_slow_consumer))
                tg.start_soon(self.scheduler.run)
                await tg.start(self.reads.run)
                tg.start_soon(self._sweep_loop)
                tg.start_soon(self._purge_loop)
                tg.start_soon(self._lag_loop)
                if self.settings.follow_tenants:
                    tg.start_soon(follow_limits, self.conn, self.subjects.prefix, self.admission.set_limits)
                self.ready.set()
                log.info(
                    "aggregator ready: %d instances of %d tenants in the view (bucket %s, prefix %s)",
                    len(self.live), len(self.view.tenants()), s.bucket, s.prefix,
                )
                task_status.started()
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
        msgs, size = 1_000_000, 512 * 1024 * 1024
        reads = self.settings.read_backlog
        subs = [
            await nc.subscribe(self.subjects.any("announce"), queue=q, cb=self._on_announce,
                               pending_msgs_limit=msgs, pending_bytes_limit=size),
            await nc.subscribe(self.subjects.any("bye"), queue=q, cb=self._on_bye,
                               pending_msgs_limit=msgs, pending_bytes_limit=size),
            # every aggregator tracks every heartbeat (liveness is per aggregator, in memory)
            await nc.subscribe(self.subjects.any("hb"), cb=self._on_heartbeat,
                               pending_msgs_limit=reads, pending_bytes_limit=size),
            await nc.subscribe(f"{self.subjects.prefix}._sys.stats", cb=self._on_stats),
        ]
        self._subs.extend(subs)
        self._hb_sid = subs[2]._id
        self._hb_sub = subs[2]
        await nc.flush()

    async def _on_reconnect(self) -> None:
        # heartbeats sent while we were away are lost: nobody is expired on that evidence
        self.live.grace(time.monotonic())
        self.follower.restart()

    async def _on_slow_consumer(self, sid: int) -> None:
        self.metrics.inc("slow_consumer")
        if sid == self._hb_sid:
            # heartbeats were dropped: nobody is expired on that evidence (one ttl of grace for everyone)
            self.metrics.inc("heartbeats_dropped")
            self.live.grace(time.monotonic())

    # =========================================================================================================
    # helpers
    # =========================================================================================================
    def _parse(self, subject: str) -> ParsedSubject:
        p = self._parsed.get(subject)
        if p is None:
            p = self.subjects.parse(subject)
            if len(self._parsed) > 100_000:
                self._parsed.clear()
            self._parsed[subject] = p
        return p

    def _reply_ok(self, tenant: str, reply: str) -> bool:
        if not self.settings.strict_replies or reply.startswith(f"_INBOX.{tenant}."):
            return True
        self.metrics.inc("reply_refused", tenant)
        log.warning("tenant %s asked for a reply on %s, outside its inbox: dropped", tenant, reply)
        return False

    async def _reply(self, tenant: str, reply: str, data: bytes, via: Msg | None = None) -> None:
        """Send ``data`` to ``reply`` (if the tenant may read there), on the connection ``via`` came in on."""
        if reply and self._reply_ok(tenant, reply):
            nc = via._client if via is not None else self.conn.nc
            try:
                await nc.publish(reply, data)
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

    async def _ack(self, tenant: str, reply: str, revision: int, changed: bool) -> None:
        if reply:
            await self._reply(tenant, reply, encode_map({"v": 1, "ok": True, "revision": revision,
                                                         "changed": changed}))

    async def _reload(self, t: str, s: str, i: str) -> None:
        change = await self.store.latest(kv_key(t, s, i))
        if change is not None:
            self.follower.apply(change)

    async def _publish_change(
        self, kind: ChangeType, reason: ChangeReason, t: str, s: str, wire: dict[str, Any], rev: int
    ) -> None:
        data = encode_map({
            "v": 1, "type": kind.value, "reason": reason.value, "tenant": t, "service": s, "instance": wire,
            "revision": rev, "at": time.time(),
        })
        subject = self.subjects.changes(t, s)
        for attempt in range(3):
            try:
                await self.store.publish_event(t, subject, data, rev)
                self.metrics.inc(f"events.{kind.value}", t)
                return
            except Exception as exc:
                log.warning("change event %s of %s/%s not stored (attempt %d): %s", rev, t, s, attempt + 1, exc)
                await anyio.sleep(0.1 * (attempt + 1))
        self.metrics.inc("events_failed", t)

    # =========================================================================================================
    # announce / bye / health / expiry (the write path)
    # =========================================================================================================
    async def _on_announce(self, msg: Msg) -> None:
        """Cheap on purpose (a flood must not stall the callback): parse the subject, check the tenant's rate,
        queue the rest (decoding included) on the tenant's fair queue."""
        try:
            p = self._parse(msg.subject)
            self.admission.check_announce(p.tenant)
        except DiscoError as err:
            await self._refuse(msg, self._tenant_hint(msg.subject), err, "announce")
            return
        if not self._submit(p.tenant, partial(self._decode_and_announce, p, msg)):
            await self._refuse(msg, p.tenant, Overloaded(f"too many pending writes for tenant {p.tenant}"),
                               "announce")

    async def _decode_and_announce(self, p: ParsedSubject, msg: Msg) -> None:
        try:
            inst = decode(msg.data, Instance, self.settings.max_payload)
        except DiscoError as err:
            await self._refuse(msg, p.tenant, err, "announce")
            return
        await self._announce(p.tenant, p.service or "", inst, msg.reply)

    async def _announce(self, t: str, s: str, inst: Instance, reply: str) -> None:
        key = (t, s, inst.id)
        kvk = kv_key(t, s, inst.id)
        try:
            for _ in range(_MAX_CAS_ATTEMPTS):
                cur = self.view.get(t, s, inst.id)
                try:
                    if cur is not None:
                        if inst.seq <= cur.instance.seq or inst.same_registration(cur.instance):
                            # a duplicate, a stale retry, or a re-announce that changes nothing
                            self.live.touch(key, time.monotonic())
                            if inst.seq < cur.instance.seq:
                                self.metrics.inc("announce_stale", t)
                            await self._ack(t, reply, cur.revision, False)
                            return
                        rev = await self.store.update(kvk, encode(inst), last=cur.revision)
                        kind = ChangeType.updated
                    else:
                        self.admission.check_new_instance(t, s)
                        try:
                            rev = await self.store.create(kvk, encode(inst), last=self.view.tombstone(t, s, inst.id))
                        finally:
                            self.admission.created(t)
                        kind = ChangeType.added
                except Conflict:
                    self.metrics.inc("cas_conflict", t)
                    await self._reload(t, s, inst.id)
                    continue
                self.view.put(t, s, inst, rev)
                self.live.track(key, inst.ttl, time.monotonic())
                await self._ack(t, reply, rev, True)
                entry = self.view.get(t, s, inst.id)
                wire = entry.wire if entry is not None and entry.revision == rev else inst.model_dump(mode="json")
                await self._publish_change(kind, ChangeReason.announce, t, s, wire, rev)
                return
            raise Unavailable(f"announce of {s}/{inst.id} lost {_MAX_CAS_ATTEMPTS} write races; try again")
        except DiscoError as err:
            self.metrics.inc(f"refused.{err.code}", t)
            if reply:
                await self._reply(t, reply, encode_map(err.to_wire()))
        except Exception as exc:
            self.metrics.inc("write_failed", t)
            log.warning("announce of %s/%s/%s not written: %s", t, s, inst.id, exc or type(exc).__name__)
            if reply:
                unavailable = Unavailable(f"the live view did not take the write: {exc or type(exc).__name__}")
                await self._reply(t, reply, encode_map(unavailable.to_wire()))

    async def _on_bye(self, msg: Msg) -> None:
        tenant = self._tenant_hint(msg.subject)
        try:
            p = self._parse(msg.subject)
            bye = decode(msg.data, Bye, self.settings.max_payload)
        except DiscoError as err:
            await self._refuse(msg, tenant, err, "bye")
            return
        reply = msg.reply
        if not self._submit(p.tenant, lambda: self._remove(p.tenant, p.service or "", bye.id, ChangeReason.bye,
                                                           reply)):
            await self._refuse(msg, p.tenant, Overloaded(f"too many pending writes for tenant {p.tenant}"), "bye")

    async def _remove(self, t: str, s: str, iid: str, reason: ChangeReason, reply: str = "") -> None:
        key = (t, s, iid)
        try:
            for _ in range(_MAX_CAS_ATTEMPTS):
                cur = self.view.get(t, s, iid)
                if cur is None:
                    self.live.forget(key)
                    await self._ack(t, reply, self.view.tombstone(t, s, iid), False)
                    return
                if reason is ChangeReason.expired:
                    deadline = self.live.deadline(key)
                    if deadline is not None and deadline > time.monotonic():
                        return  # a heartbeat arrived meanwhile
                try:
                    rev = await self.store.delete(kv_key(t, s, iid), last=cur.revision)
                except Conflict:
                    self.metrics.inc("cas_conflict", t)
                    await self._reload(t, s, iid)
                    if reason is ChangeReason.expired:
                        return  # re-evaluated at the next sweep with the fresh entry
                    continue
                self.view.delete(t, s, iid, rev)
                self.live.forget(key)
                await self._ack(t, reply, rev, True)
                await self._publish_change(ChangeType.removed, reason, t, s, cur.wire, rev)
                if reason is ChangeReason.expired:
                    self.metrics.inc("expired", t)
                return
        except Exception as exc:
            self.metrics.inc("write_failed", t)
            log.warning("removal of %s/%s/%s (%s) not written: %s", t, s, iid, reason.value, exc)
            if reply:
                err = Unavailable(f"the live view did not take the removal: {exc or type(exc).__name__}")
                await self._reply(t, reply, encode_map(err.to_wire()))
        finally:
            self._expiring.discard(key)

    async def _health(self, t: str, s: str, iid: str, status: Any) -> None:
        for _ in range(_MAX_CAS_ATTEMPTS):
            cur = self.view.get(t, s, iid)
            if cur is None or cur.instance.status == status:
                return
            inst = cur.instance.model_copy(update={"status": status})
            try:
                rev = await self.store.update(kv_key(t, s, iid), encode(inst), last=cur.revision)
            except Conflict:
                await self._reload(t, s, iid)
                continue
            except Exception as exc:
                log.warning("status change of %s/%s/%s not written: %s", t, s, iid, exc)
                return
            self.view.put(t, s, inst, rev)
            entry = self.view.get(t, s, iid)
            await self._publish_change(ChangeType.updated, ChangeReason.health, t, s,
                                       entry.wire if entry else inst.model_dump(mode="json"), rev)
            return

    # =========================================================================================================
    # heartbeats and expiry
    # =========================================================================================================
    async def _on_heartbeat(self, msg: Msg) -> None:
        tenant = self._tenant_hint(msg.subject)
        try:
            p = self._parse(msg.subject)
            hb = decode(msg.data, Heartbeat, self.settings.max_payload)
        except DiscoError as err:
            await self._refuse(msg, tenant, err, "heartbeat")
            return
        t, s = p.tenant, p.service or ""
        now = time.monotonic()
        self.metrics.inc("heartbeats", t)
        for iid in hb.all_ids():
            key = (t, s, iid)
            if self.live.touch(key, now):
                if hb.status is not None:
                    entry = self.view.get(t, s, iid)
                    if entry is not None and entry.instance.status != hb.status:
                        self._submit(t, partial(self._health, t, s, iid, hb.status))
                continue
            entry = self.view.get(t, s, iid)
            if entry is not None:  # in the view but not followed (should not happen): follow it now
                self.live.track(key, entry.instance.ttl, now)
                continue
            await self._ask_reannounce(t, s, iid, now)

    async def _ask_reannounce(self, t: str, s: str, iid: str, now: float) -> None:
        key = (t, s, iid)
        last = self._ctl_sent.get(key)
        if last is not None and now - last < self.settings.ctl_interval:
            return
        if len(self._ctl_sent) > 100_000:
            self._ctl_sent = {k: v for k, v in self._ctl_sent.items() if now - v < self.settings.ctl_interval}
        self._ctl_sent[key] = now
        self.metrics.inc("ctl_reannounce", t)
        try:
            await self.conn.nc.publish(self.subjects.ctl(t, s, iid), encode(Control(op="reannounce", id=iid)))
        except Exception as exc:
            log.debug("reannounce request not sent: %s", exc)

    async def _sweep_loop(self) -> None:
        while True:
            await anyio.sleep(self.settings.sweep_interval)
            self.sweep(time.monotonic())

    def sweep(self, now: float) -> None:
        """Submit the expiry of every instance whose ttl has passed (self-preservation permitting).

        While heartbeats wait unread (a backlog in the client, e.g. under a flood), silence is no evidence of
        death: nobody is expired, everyone gets one ttl of grace from now.
        """
        hb = self._hb_sub
        if self.behind(now) or (hb is not None and hb.pending_msgs > self.settings.hb_backlog_grace):
            self.metrics.inc("sweeps_skipped_backlog")
            self.live.grace(now)
            return
        due = [k for k in self.live.due(now) if k not in self._expiring]
        if not due:
            return
        by_tenant: dict[str, list[Key]] = {}
        for key in due:
            by_tenant.setdefault(key[0], []).append(key)
        for tenant, keys in by_tenant.items():
            for key in self.admission.may_expire(tenant, keys, self.live, now):
                t, s, i = key
                self._expiring.add(key)
                if not self._submit(t, partial(self._remove, t, s, i, ChangeReason.expired)):
                    self._expiring.discard(key)

    def behind(self, now: float) -> bool:
        """True while this aggregator reads its connection late (a backlog in the socket or the server):
        heartbeats may be waiting in there, so silence proves nothing."""
        started = self._probe_started
        limit = self.settings.max_read_lag
        return self.lag > limit or (started is not None and now - started > limit)

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
                           "position": self.view.position, "live": len(self.live)})
        try:
            await self.conn.nc.publish(msg.reply, data)
        except Exception:
            pass
