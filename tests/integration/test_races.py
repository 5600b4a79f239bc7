"""Compare-and-set races between two aggregators, forced deterministically: a write lands behind one aggregator's
back between its read of the view and its own write. Exactly one change (and one event) results, the loser
re-reads and decides again, and the conflict is counted."""

from __future__ import annotations

import anyio
import pytest

from bus import codec
from bus.models import AnnounceAck, ChangeReason, Instance
from tests.conftest import eventually
from tests.faults import stream_events

pytestmark = pytest.mark.integration


async def _settled(*aggs) -> None:
    """Until no aggregator has an event unstored or pending."""
    await eventually(lambda: all(a.events.unstored == 0 and not a.events.pending for a in aggs))


async def _reply_inbox(conn):
    """A subscription to collect the aggregator's replies to a write started by hand."""
    inbox = f"_INBOX.acme.{conn.nc.new_inbox().split('.')[-1]}"
    return inbox, await conn.nc.subscribe(inbox)


def _behind_the_back(agg, method: str, other_write):
    """Make ``agg``'s next ``store.<method>`` run ``other_write`` first: its view was read, the KV then changes."""
    real = getattr(agg.store, method)
    fired = anyio.Event()

    async def hooked(*args, **kw):
        if not fired.is_set():
            fired.set()
            await other_write()
        return await real(*args, **kw)

    setattr(agg.store, method, hooked)
    return fired


async def test_announce_loses_a_race_and_decides_again(nats_server, start_aggregator, conn_factory):
    conn = await conn_factory(nats_server.url, tenant="acme")
    a = (await start_aggregator(nats_server.url)).agg
    b = (await start_aggregator(nats_server.url)).agg
    first = Instance(id="r1", address="10.7.0.1", port=1, ttl=300, seq=1)
    await a._announce("acme", "race", first, "")
    await eventually(lambda: b.view.get("acme", "race", "r1") is not None)
    newer = first.model_copy(update={"seq": 3, "port": 3})  # B writes seq 3 between A's read and A's write
    older = first.model_copy(update={"seq": 2, "port": 2})
    fired = _behind_the_back(a, "update", lambda: b._announce("acme", "race", newer, ""))
    inbox, replies = await _reply_inbox(conn)
    await a._announce("acme", "race", older, inbox)
    ack = codec.decode_reply((await replies.next_msg(timeout=5)).data, AnnounceAck)
    assert fired.is_set()
    assert ack.changed is False  # after re-reading, A's seq 2 is stale next to B's seq 3
    assert a.metrics.get("cas_conflict", "acme") == 1
    assert a.view.get("acme", "race", "r1").instance.port == 3
    await _settled(a, b)
    events = await stream_events(conn, f"{conn.subjects.prefix}_changes_acme")
    assert [(e["type"], e["instance"]["port"]) for _, e in events] == [("added", 1), ("updated", 3)]


async def test_bye_loses_a_race_to_a_reannounce_and_removes_the_newer_entry_once(
        nats_server, start_aggregator, conn_factory):
    conn = await conn_factory(nats_server.url, tenant="acme")
    a = (await start_aggregator(nats_server.url)).agg
    b = (await start_aggregator(nats_server.url)).agg
    inst = Instance(id="r2", address="10.7.0.2", port=1, ttl=300, seq=1)
    await a._announce("acme", "race", inst, "")
    await eventually(lambda: b.view.get("acme", "race", "r2") is not None)
    moved = inst.model_copy(update={"seq": 2, "port": 9})
    fired = _behind_the_back(a, "delete", lambda: b._announce("acme", "race", moved, ""))
    inbox, replies = await _reply_inbox(conn)
    await a._remove("acme", "race", "r2", ChangeReason.bye, inbox)
    ack = codec.decode_reply((await replies.next_msg(timeout=5)).data, AnnounceAck)
    assert fired.is_set() and ack.changed
    assert a.metrics.get("cas_conflict", "acme") == 1
    await eventually(lambda: b.view.get("acme", "race", "r2") is None)
    await _settled(a, b)
    events = await stream_events(conn, f"{conn.subjects.prefix}_changes_acme")
    assert [(e["type"], e["instance"]["port"]) for _, e in events] == [("added", 1), ("updated", 9),
                                                                        ("removed", 9)]
    assert len({mid for mid, _ in events}) == 3
