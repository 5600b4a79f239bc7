"""Helpers for fault and timing tests: a clock the test moves, raw announces, and the KV's content to compare an
aggregator's view with (import as ``from tests.faults import ...``)."""

from __future__ import annotations

import time
from typing import Any

import anyio
import nats.js.errors
from nats.js import api

from bus import codec
from bus.connection import Connection
from bus.models import AnnounceAck, Bye, Heartbeat, Instance, Status
from bus.streams import kv_keys

__all__ = ["ManualClock", "announce_raw", "bye_raw", "kv_content", "stream_events", "view_content"]


class ManualClock:
    """Monotonic seconds that move only when the test says so (an aggregator's ``clock=``)."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.monotonic() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def swept(agg: Any) -> None:
    """Until the aggregator has swept twice more (so one full sweep saw the clock as it is now)."""
    n = agg.sweeps
    with anyio.fail_after(10):
        while agg.sweeps < n + 2:
            await anyio.sleep(0.01)


async def beat(agg: Any, conn: Connection, tenant: str, service: str, ids: list[str],
               status: Status | None = None) -> None:
    """Send one heartbeat for ``ids`` and wait until the aggregator has handled it."""
    n = agg.metrics.get("heartbeats", tenant)
    await conn.nc.publish(conn.subjects.hb(tenant, service), codec.encode(Heartbeat(ids=tuple(ids), status=status)))
    with anyio.fail_after(10):
        while agg.metrics.get("heartbeats", tenant) <= n:
            await anyio.sleep(0.01)


async def announce_raw(conn: Connection, tenant: str, service: str, inst: Instance,
                       timeout: float = 5.0) -> AnnounceAck:
    msg = await conn.nc.request(conn.subjects.announce(tenant, service), codec.encode(inst), timeout=timeout)
    return codec.decode_reply(msg.data, AnnounceAck)


async def bye_raw(conn: Connection, tenant: str, service: str, iid: str, timeout: float = 5.0) -> AnnounceAck:
    msg = await conn.nc.request(conn.subjects.bye(tenant, service), codec.encode(Bye(id=iid)), timeout=timeout)
    return codec.decode_reply(msg.data, AnnounceAck)


async def kv_content(conn: Connection, bucket: str) -> dict[tuple[str, str, str], int]:
    """Every live key of the bucket (tenant, service, id) with its revision, read from the server."""
    kv = await conn.js.key_value(bucket)
    out: dict[tuple[str, str, str], int] = {}
    for key in await kv_keys(conn.js, bucket):  # not kv.keys(): it can report an empty bucket (bus.streams)
        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            continue
        if entry.value:
            t, s, i = key.split(".")
            out[(t, s, i)] = int(entry.revision or 0)
    return out


def view_content(agg: Any) -> dict[tuple[str, str, str], int]:
    """An aggregator's in-memory view, in the shape of :func:`kv_content`."""
    return {(t, s, i): e.revision for t, s, i in agg.view.all_keys()
            if (e := agg.view.get(t, s, i)) is not None}


async def stream_events(conn: Connection, stream: str) -> list[tuple[int, dict[str, Any]]]:
    """Every message of a change stream: (Nats-Msg-Id as int, decoded event), in stream order."""
    try:
        info = await conn.js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        return []
    out: list[tuple[int, dict[str, Any]]] = []
    if info.state.messages == 0:
        return out
    sub = await conn.js.subscribe(f"{conn.subjects.prefix}.>", stream=stream, ordered_consumer=True,
                                  deliver_policy=api.DeliverPolicy.ALL)
    try:
        while len(out) < info.state.messages:
            msg = await sub.next_msg(timeout=10)
            out.append((int((msg.headers or {}).get("Nats-Msg-Id", "0")), codec.decode_map(msg.data)))
    finally:
        await sub.unsubscribe()
    return out
