"""The watch relists when its subscription drops messages, on a real server: a slow consumer (the client library
dropped change events) leads to a relist whose diff repairs what was missed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
from nats.aio.msg import Msg

from bus.connection import Connection
from bus.models import ChangeEvent, ChangeReason, ChangeType
from bus.watch import Watch, running
from services.natsserver import NatsServer
from tests.conftest import eventually
from tests.helpers import announce_raw, instance


class StuckWatch(Watch):
    """A watch whose change callback is stuck until ``gate`` opens, as a consumer starved of CPU would be, so the
    client library's pending queue (``buffer * 64`` messages) overflows."""

    def __init__(self, conn: Connection) -> None:
        super().__init__(conn, "acme", None, include_initial=False, resync_interval=None, buffer=1)
        self.gate = anyio.Event()

    async def _on_msg(self, msg: Msg) -> None:
        await self.gate.wait()
        await super()._on_msg(msg)


async def test_a_slow_consumer_drop_makes_the_watch_relist(
    aggregator: Any, nats_server: NatsServer, conn_factory: Callable[..., Any]
) -> None:
    conn: Connection = await conn_factory(nats_server.url, tenant="acme")
    other: Connection = await conn_factory(nats_server.url, tenant="acme")
    dropped: list[int] = []

    async def on_slow(sid: int) -> None:
        dropped.append(sid)

    conn.on_slow_consumer(on_slow)
    w = StuckWatch(conn)
    events: list[ChangeEvent] = []

    async def consume() -> None:
        async for ev in w:
            events.append(ev)

    async with running(conn, w), anyio.create_task_group() as tg:
        tg.start_soon(consume)
        assert w.lists == 1 and w.view == {}
        await announce_raw(other, "api", instance("first"))  # its event is the one the callback is stuck on
        for n in range(2, 200):  # these events overflow the client's pending queue: most are dropped
            await announce_raw(other, "api", instance(f"i{n}"))
        # the drops alone (the watch's own buffer never filled: its callback is stuck) made it list again
        # (the watch fills its view before handing events out: wait for the reader too)
        await eventually(lambda: len(w.instances("api")) == 199 and len(events) >= 199)
        assert dropped and w.lists >= 2
        assert all(e.reason is ChangeReason.resync and e.type is ChangeType.added for e in events)
        assert {e.instance.id for e in events} == {"first"} | {f"i{n}" for n in range(2, 200)}
        before = len(events)
        w.gate.set()  # the stuck and the queued events arrive now: all older than the list, all dropped
        await announce_raw(other, "api", instance("last"))  # in order behind them: when it is seen, they were
        await eventually(lambda: len(events) > before)
        assert [(e.instance.id, e.reason) for e in events[before:]] == [("last", ChangeReason.announce)]
        assert len(w.instances("api")) == 200
        tg.cancel_scope.cancel()
