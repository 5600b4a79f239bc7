"""Nothing missed while a tenant's change stream is unavailable: an anti-entropy relay from disco's own change
streams (DISCO account) into the tenants' streams (their accounts).

Normally a change event reaches a tenant's stream through the stream import, with no acknowledgement DISCO could
see (nats-server does not route a stream's ack back across accounts). When the tenant's stream is unavailable
then (deleted by the tenant, re-created by ``disco tenant creds``; its replicas down), the event is kept only in
disco's stream. Every ``interval`` seconds the relay compares, tenant by tenant, the events disco's stream holds
from the last ``window`` seconds with those of the tenant's stream (by ``Nats-Msg-Id``, the KV revision the
aggregator gives every event) and publishes the missing ones into the tenant's stream as a short-lived user of
the tenant's account, each acknowledged by the stream, with the same ``Nats-Msg-Id`` (a race with the import is
stored once). Only tenants whose disco stream changed since the previous sweep are looked at.

Promise: an event disco's stream acknowledged is in the tenant's stream within ``interval`` seconds after the
tenant's stream is back, provided that is within ``window`` seconds of the event (the relay runs beside the
aggregator in ``disco up --auth``; ``disco tenant relay`` runs it on an existing cluster).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass

import anyio
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext, api

from bus.subjects import changes_stream_name
from services.tenants.admin import TenantAdmin
from services.tenants.registry import TenantRecord

__all__ = ["ChangeRelay"]

log = logging.getLogger("disco.tenants.relay")


@dataclass(frozen=True, slots=True)
class _Event:
    subject: str
    data: bytes
    msg_id: str


async def _read_since(js: JetStreamContext, stream: str, since: float, limit: int = 100_000) -> list[_Event]:
    """The events ``stream`` stored at or after ``since`` (epoch seconds), oldest first (an ephemeral consumer)."""
    start = dt.datetime.fromtimestamp(since, dt.UTC)
    cfg = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_TIME, opt_start_time=start,
                             ack_policy=api.AckPolicy.NONE, inactive_threshold=10.0, mem_storage=True)
    psub = await js.pull_subscribe("", stream=stream, config=cfg)
    out: list[_Event] = []
    try:
        pending = (await psub.consumer_info()).num_pending or 0
        while pending > 0 and len(out) < limit:
            try:
                msgs = await psub.fetch(min(pending, 256), timeout=5.0)
            except (TimeoutError, nats.errors.TimeoutError):
                break
            for msg in msgs:
                msg_id = (msg.headers or {}).get("Nats-Msg-Id", "")
                if msg_id:
                    out.append(_Event(msg.subject, msg.data, msg_id))
            pending = msgs[-1].metadata.num_pending if msgs else 0
    finally:
        await psub.unsubscribe()
    return out


class ChangeRelay:
    def __init__(self, admin: TenantAdmin, *, disco_stream_prefix: str | None = None, interval: float = 30.0,
                 window: float = 600.0) -> None:
        self.admin = admin
        self.disco_stream_prefix = disco_stream_prefix or admin.stream_prefix
        self.interval = interval
        self.window = window
        #: tenant -> last sequence of disco's stream seen at the previous sweep
        self._seen: dict[str, int] = {}
        #: tenant -> when a sweep last found its stream complete: the next one reads from there (minus a margin for
        #: events stored late), not the whole window
        self._verified: dict[str, float] = {}
        #: events restored so far, per tenant
        self.restored: dict[str, int] = {}

    async def repair(self, record: TenantRecord, since: float) -> int | None:
        """Publish into ``record``'s stream the events of disco's stream since ``since`` that it lacks; return
        how many, or None when the tenant's stream is not there (to be tried again)."""
        js = self.admin.conn.js
        theirs = await _read_since(js, changes_stream_name(self.disco_stream_prefix, record.name), since)
        if not theirs:
            return 0
        stream = changes_stream_name(self.admin.stream_prefix, record.name)
        conn = await self.admin.as_tenant(record, name="disco-relay", relay=True)
        try:
            try:
                present = {e.msg_id for e in await _read_since(conn.js, stream, since - 60.0)}
            except nats.js.errors.NotFoundError:
                return None  # the stream is not there (yet): next sweep
            missing = [e for e in theirs if e.msg_id not in present]
            for e in missing:
                await conn.js.publish(e.subject, e.data, stream=stream, headers={"Nats-Msg-Id": e.msg_id})
        finally:
            await conn.close()
        if missing:
            self.restored[record.name] = self.restored.get(record.name, 0) + len(missing)
            log.warning("tenant %s: %d change events its stream had missed were restored", record.name,
                        len(missing))
        return len(missing)

    async def sweep(self) -> int:
        """One pass over every tenant whose disco stream changed since the last pass; return events restored."""
        since = time.time() - self.window
        total = 0
        try:
            await self.admin.registry.open(create=False)  # the relay's user may read the registry, not create it
        except nats.js.errors.BucketNotFoundError:
            return 0  # no tenant added yet
        records = await self.admin.list()
        for gone in set(self._seen) - {r.name for r in records}:  # removed tenants
            self._seen.pop(gone, None)
            self._verified.pop(gone, None)
        for record in records:
            name = changes_stream_name(self.disco_stream_prefix, record.name)
            try:
                last = (await self.admin.conn.js.stream_info(name)).state.last_seq
            except nats.js.errors.NotFoundError:
                continue  # no event yet
            if self._seen.get(record.name) == last:
                continue
            started = time.time()
            try:
                restored = await self.repair(record, max(since, self._verified.get(record.name, 0.0) - 60.0))
                if restored is not None:  # the tenant's stream holds everything: look again after a change
                    total += restored
                    self._seen[record.name] = last
                    self._verified[record.name] = started
            except Exception as exc:  # one tenant's trouble does not stop the others; retried next sweep
                log.warning("tenant %s: change relay failed: %s", record.name, exc)
        return total

    async def run(self) -> None:
        """Sweep every ``interval`` seconds until cancelled."""
        while True:
            try:
                await self.sweep()
            except Exception as exc:
                log.warning("change relay sweep failed: %s", exc)
            await anyio.sleep(self.interval)
