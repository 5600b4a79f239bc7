"""The aggregator's write path: announce, bye, status changes carried by heartbeats, expiry (DESIGN.md §6).

Writes are compare-and-set on the KV (a lost race re-reads the key and decides again) and carry their change event
(:mod:`services.aggregator.events`): the reply to the writer waits for the KV write only, the event is published
behind it. Liveness, sweeps and self-preservation read time from ``self.clock`` (monotonic seconds), which tests
replace with a clock of their own.

A KV write that meets JetStream recovering (no responders, 503) is retried until ``write_deadline``; past it the
writer gets ``unavailable`` at once instead of waiting out its own timeout.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from bus.codec import decode, encode, encode_map
from bus.connection import Connection
from bus.errors import DiscoError, Overloaded, Unavailable
from bus.models import Bye, ChangeReason, ChangeType, Control, Heartbeat, Instance
from bus.subjects import ParsedSubject, Subjects, kv_key
from services.aggregator.admission import Admission
from services.aggregator.direct import write_now
from services.aggregator.eventdata import build_event_raw, event_header
from services.aggregator.events import EventPublisher
from services.aggregator.follower import Follower
from services.aggregator.liveness import Liveness
from services.aggregator.metrics import Metrics
from services.aggregator.settings import AggregatorSettings
from services.aggregator.store import Conflict, ViewStore
from services.aggregator.view import Entry, LiveView

__all__ = ["WritePath"]

log = logging.getLogger("disco.aggregator")

Key = tuple[str, str, str]
_MAX_CAS_ATTEMPTS = 8
_JS_RECOVERING = 503


class WritePath:
    """Mixed into :class:`services.aggregator.service.Aggregator`, which provides what is declared here."""

    conn: Connection
    settings: AggregatorSettings
    subjects: Subjects
    view: LiveView
    live: Liveness[Key]
    metrics: Metrics
    admission: Admission
    store: ViewStore
    follower: Follower
    events: EventPublisher
    clock: Callable[[], float]
    writer_id: str
    _expiring: set[Key]
    _ctl_sent: dict[Key, float]
    _hb_sub: Subscription | None
    #: sweeps done so far (tests wait for one to have happened after they moved the clock)
    sweeps: int = 0

    if TYPE_CHECKING:
        def _parse(self, subject: str) -> ParsedSubject: ...
        def _tenant_hint(self, subject: str) -> str: ...
        def _submit(self, tenant: str, job: Callable[[], Awaitable[None]]) -> bool: ...
        async def _reply(self, tenant: str, reply: str, data: bytes, via: Msg | None = None,
                         headers: dict[str, str] | None = None) -> None: ...
        async def _refuse(self, msg: Msg, tenant: str, err: DiscoError, what: str) -> None: ...
        def _refuse_soon(self, msg: Msg, tenant: str, err: DiscoError, what: str) -> None: ...
        def behind(self, now: float) -> bool: ...

    # -- helpers ----------------------------------------------------------------------------------------------
    async def _ack(self, tenant: str, reply: str, revision: int, changed: bool) -> None:
        if reply:
            await self._reply(tenant, reply, encode_map({"v": 1, "ok": True, "revision": revision,
                                                         "changed": changed}))

    async def _reload(self, t: str, s: str, i: str) -> None:
        change = await self.store.latest(kv_key(t, s, i))
        if change is not None:
            # a write this aggregator had not seen (its watch lags, or was being re-created): its event becomes
            # pending here, so that overwriting the key next (before_write) cannot lose it if its writer died
            self.follower.pending_event(change, self.follower.apply(change))
        else:  # the bucket has no message of the key at all: a create must expect none, whatever we remembered
            self.view.clear_tombstone(t, s, i)

    async def _kv_write(self, write: Callable[[], Awaitable[int]]) -> int:
        """Run a KV write, retrying while JetStream recovers, for at most ``write_deadline`` seconds."""
        deadline = anyio.current_time() + self.settings.write_deadline
        delay = 0.05
        while True:
            try:
                return await write()
            except nats.errors.NoRespondersError:
                why = "JetStream is not answering"
            except nats.js.errors.APIError as exc:
                if exc.code != _JS_RECOVERING:
                    raise
                why = "JetStream is recovering"
            except (TimeoutError, nats.errors.TimeoutError):
                raise Unavailable("the live view did not take the write in time; try again") from None
            if anyio.current_time() + delay >= deadline:
                self.metrics.inc("write_unavailable")
                raise Unavailable(f"the live view is unavailable ({why}); try again")
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def _event(self, kind: ChangeType, reason: ChangeReason, t: str, s: str, iid: str, record: bytes, rev: int,
                     at: float) -> None:
        """Publish the write's event now: before the reply, so that both leave in one socket write."""
        await self.events.own_now(build_event_raw(self.subjects, t, s, kind.value, reason.value, at, iid, record,
                                                  rev))

    async def _write_failed(self, t: str, reply: str, what: str, exc: Exception) -> None:
        if isinstance(exc, DiscoError):
            self.metrics.inc(f"refused.{exc.code}", t)
            err = exc
        else:
            self.metrics.inc("write_failed", t)
            log.warning("%s not written: %s", what, exc or type(exc).__name__)
            err = Unavailable(f"the live view did not take the write: {exc or type(exc).__name__}")
        if reply:
            await self._reply(t, reply, encode_map(err.to_wire()))

    # -- announce ---------------------------------------------------------------------------------------------
    def _on_announce(self, msg: Msg) -> None:
        """Called as the message is read (:mod:`services.aggregator.direct`), so cheap on purpose: parse the
        subject, check the tenant's rate, queue the rest (decoding included) on the tenant's fair queue; a refusal
        is sent by a task of its own."""
        try:
            p = self._parse(msg.subject)
            self.admission.check_announce(p.tenant)
        except DiscoError as err:
            self._refuse_soon(msg, self._tenant_hint(msg.subject), err, "announce")
            return
        if not self._submit(p.tenant, partial(self._decode_and_announce, p, msg)):
            self._refuse_soon(msg, p.tenant, Overloaded(f"too many pending writes for tenant {p.tenant}"),
                              "announce")

    async def _decode_and_announce(self, p: ParsedSubject, msg: Msg) -> None:
        try:
            inst = decode(msg.data, Instance, self.settings.max_payload)
        except DiscoError as err:
            await self._refuse(msg, p.tenant, err, "announce")
            return
        await self._announce(p.tenant, p.service or "", inst, msg.reply)

    async def _announce(self, t: str, s: str, inst: Instance, reply: str) -> None:
        t, s = sys.intern(t), sys.intern(s)  # one string per tenant and service in the view, not one per instance
        key = (t, s, inst.id)
        kvk = kv_key(t, s, inst.id)
        value = encode(inst)
        try:
            for _ in range(_MAX_CAS_ATTEMPTS):
                cur = self.view.get(t, s, inst.id)
                at = time.time()
                await self.events.before_write(kvk)
                try:
                    if cur is not None:
                        held = cur.instance
                        if inst.seq <= held.seq or inst.same_registration(held):
                            # a duplicate, a stale retry, or a re-announce that changes nothing
                            self.live.touch(key, self.clock())
                            if inst.seq < held.seq:
                                self.metrics.inc("announce_stale", t)
                            await self._ack(t, reply, cur.revision, False)
                            return
                        kind = ChangeType.updated
                        hdr = event_header(kind.value, ChangeReason.announce.value, self.writer_id, at)
                        rev = await self._kv_write(partial(self.store.update, kvk, value, cur.revision, hdr))
                    else:
                        self.admission.check_new_instance(t, s)
                        kind = ChangeType.added
                        hdr = event_header(kind.value, ChangeReason.announce.value, self.writer_id, at)
                        try:
                            rev = await self._kv_write(partial(
                                self.store.create, kvk, value, self.view.tombstone(t, s, inst.id), hdr))
                        finally:
                            self.admission.created(t)
                except Conflict:
                    self.metrics.inc("cas_conflict", t)
                    await self._reload(t, s, inst.id)
                    continue
                self.view.put_entry(t, s, Entry(inst.id, value, rev, inst.status, inst.zone, inst.tags))
                self.live.track(key, inst.ttl, self.clock())
                was_quiet = self.store.idle()
                await self._event(kind, ChangeReason.announce, t, s, inst.id, value, rev, at)
                await self._ack(t, reply, rev, True)
                if was_quiet:
                    write_now(self.conn.nc)  # the event and the reply in one socket write, now
                return
            raise Unavailable(f"announce of {s}/{inst.id} lost {_MAX_CAS_ATTEMPTS} write races; try again")
        except Exception as exc:
            await self._write_failed(t, reply, f"announce of {t}/{s}/{inst.id}", exc)

    # -- bye and expiry ---------------------------------------------------------------------------------------
    async def _on_bye(self, msg: Msg) -> None:
        tenant = self._tenant_hint(msg.subject)
        try:
            p = self._parse(msg.subject)
            bye = decode(msg.data, Bye, self.settings.max_payload)
        except DiscoError as err:
            await self._refuse(msg, tenant, err, "bye")
            return
        reply = msg.reply
        if not self._submit(p.tenant, partial(self._remove, p.tenant, p.service or "", bye.id, ChangeReason.bye,
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
                    if deadline is not None and deadline > self.clock():
                        return  # a heartbeat arrived meanwhile
                at = time.time()
                hdr = event_header(ChangeType.removed.value, reason.value, self.writer_id, at)
                await self.events.before_write(kv_key(t, s, iid))
                try:
                    rev = await self._kv_write(partial(self.store.delete, kv_key(t, s, iid), cur.revision, hdr,
                                                       cur.raw))
                except Conflict:
                    self.metrics.inc("cas_conflict", t)
                    await self._reload(t, s, iid)
                    if reason is ChangeReason.expired:
                        return  # re-evaluated at the next sweep with the fresh entry
                    continue
                self.view.delete(t, s, iid, rev)
                self.live.forget(key)
                await self._event(ChangeType.removed, reason, t, s, iid, cur.raw, rev, at)
                if reason is ChangeReason.expired:
                    self.metrics.inc("expired", t)
                await self._ack(t, reply, rev, True)
                return
        except Exception as exc:
            await self._write_failed(t, reply, f"removal of {t}/{s}/{iid} ({reason.value})", exc)
        finally:
            self._expiring.discard(key)

    # -- heartbeats ---------------------------------------------------------------------------------------------
    async def _health(self, t: str, s: str, iid: str, status: Any) -> None:
        for _ in range(_MAX_CAS_ATTEMPTS):
            cur = self.view.get(t, s, iid)
            if cur is None or cur.status == status:
                return
            inst = cur.instance.model_copy(update={"status": status})
            value = encode(inst)
            at = time.time()
            hdr = event_header(ChangeType.updated.value, ChangeReason.health.value, self.writer_id, at)
            try:
                await self.events.before_write(kv_key(t, s, iid))
                rev = await self._kv_write(partial(self.store.update, kv_key(t, s, iid), value, cur.revision, hdr))
            except Conflict:
                self.metrics.inc("cas_conflict", t)
                await self._reload(t, s, iid)
                continue
            except Exception as exc:
                log.warning("status change of %s/%s/%s not written: %s", t, s, iid, exc)
                return
            self.view.put_entry(t, s, Entry(iid, value, rev, inst.status, inst.zone, inst.tags))
            await self._event(ChangeType.updated, ChangeReason.health, t, s, iid, value, rev, at)
            return

    async def _on_heartbeat(self, msg: Msg) -> None:
        tenant = self._tenant_hint(msg.subject)
        try:
            p = self._parse(msg.subject)
            hb = decode(msg.data, Heartbeat, self.settings.max_payload)
        except DiscoError as err:
            await self._refuse(msg, tenant, err, "heartbeat")
            return
        t, s = p.tenant, p.service or ""
        now = self.clock()
        self.metrics.inc("heartbeats", t)
        for iid in hb.all_ids():
            key = (t, s, iid)
            if self.live.touch(key, now):
                if hb.status is not None:
                    entry = self.view.get(t, s, iid)
                    if entry is not None and entry.status != hb.status:
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

    # -- expiry -------------------------------------------------------------------------------------------------
    async def _sweep_loop(self) -> None:
        while True:
            await anyio.sleep(self.settings.sweep_interval)
            self.sweep(self.clock())

    def sweep(self, now: float) -> None:
        """Submit the expiry of every instance whose ttl has passed (self-preservation permitting).

        While heartbeats wait unread (a backlog in the client, e.g. under a flood), silence is no evidence of
        death: nobody is expired, everyone gets one ttl of grace from now.
        """
        self.sweeps += 1
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
