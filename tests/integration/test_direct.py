"""Subscriptions handled as nats-py reads them, and writes made at once (services/aggregator/direct.py), on a real
nats-server: every message reaches the handler once and in order (those read before the switch included), a
failing handler costs only its message, a JetStream ordered consumer keeps its flow control through a backlog many
times its window, and a write made at once arrives without the flusher's turn."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import anyio
import nats
import pytest
from nats.aio.msg import Msg
from nats.js.api import Header, StreamConfig

from services.aggregator.direct import FastParser, is_direct, make_direct, quiet, subscribe_direct, write_now
from services.natsserver import NatsServer
from tests.conftest import eventually

pytestmark = pytest.mark.integration


async def test_this_nats_py_takes_the_direct_path(nats_server: NatsServer) -> None:
    """The pinned nats-py lets the aggregator skip the queue; an upgrade that takes that away fails here
    (the aggregator would still work, only slower)."""
    nc = await nats.connect(nats_server.url)
    try:
        sub = await subscribe_direct(nc, "direct.probe", lambda msg: None)
        assert is_direct(sub)
        assert sub.pending_msgs == 0
    finally:
        await nc.close()


async def test_messages_reach_the_handler_once_in_order_including_those_read_before_the_switch(
    nats_server: NatsServer,
) -> None:
    nc = await nats.connect(nats_server.url)
    pub = await nats.connect(nats_server.url)
    got: list[int] = []
    try:
        async def cb(msg: Any) -> None:
            got.append(int(msg.data))

        sub = await nc.subscribe("direct.order", cb=cb)
        await nc.flush()
        # messages nats-py has read and queued, whose callback task has not had its turn yet (as nats-py's read
        # loop leaves them): the switch hands them over first, in order, before anything read after it
        for k in range(100):
            sub._pending_queue.put_nowait(Msg(_client=nc, subject="direct.order", data=str(k).encode()))
        assert make_direct(sub, lambda msg: got.append(int(msg.data)))
        assert got == list(range(100))
        for k in range(100, 5000):
            await pub.publish("direct.order", str(k).encode())
        await pub.flush()
        await eventually(lambda: len(got) >= 5000)
        await nc.flush()  # anything still to come (a duplicate) is read by now
        assert got == list(range(5000))
        assert sub.pending_msgs == 0
    finally:
        await pub.close()
        await nc.close()


async def test_a_failing_handler_costs_only_its_message(nats_server: NatsServer,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    nc = await nats.connect(nats_server.url)
    got: list[bytes] = []

    def handler(msg: Any) -> None:
        if msg.data == b"bad":
            raise ValueError("unreadable")
        got.append(msg.data)

    try:
        with caplog.at_level(logging.ERROR, logger="disco.aggregator.direct"):
            await subscribe_direct(nc, "direct.fail", handler)
            for data in (b"a", b"bad", b"b"):
                await nc.publish("direct.fail", data)
            await nc.flush()
            await eventually(lambda: got == [b"a", b"b"])
            assert nc.is_connected
        assert any("direct.fail" in r.getMessage() for r in caplog.records)
    finally:
        await nc.close()


async def test_an_ordered_consumer_goes_through_a_backlog_many_windows_long(nats_server: NatsServer) -> None:
    """Flow control and the ordered consumer's sequence checks are nats-py's, done before a message is queued:
    they keep working when nothing is queued."""
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    try:
        await js.add_stream(StreamConfig(name="DIRECT", subjects=["dj.>"]))
        n = 30_000
        futs = [await js.publish_async(f"dj.{k % 50}", str(k).encode() * 40) for k in range(n)]
        await asyncio.gather(*futs)
        got: list[int] = []
        done = asyncio.Event()

        def handler(msg: Any) -> None:
            got.append(int(msg.data[: len(msg.data) // 40]))
            if len(got) == n:
                done.set()

        async def cb(msg: Any) -> None:
            handler(msg)

        sub = await js.subscribe("dj.>", cb=cb, ordered_consumer=True)
        assert make_direct(sub, handler)
        assert is_direct(sub)
        with anyio.fail_after(30):
            await done.wait()
        assert got == list(range(n))
        await sub.unsubscribe()
    finally:
        await nc.close()


async def test_write_now_sends_without_the_flushers_turn(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    other = await nats.connect(nats_server.url)
    try:
        got = asyncio.Event()

        async def cb(msg: Any) -> None:
            got.set()

        await other.subscribe("direct.now", cb=cb)
        await other.flush()
        await nc.flush()
        assert quiet(nc)
        await nc.publish("direct.now", b"x")  # queued for the flusher, whose turn has not come (no await yielded)
        assert not quiet(nc)
        write_now(nc)
        assert quiet(nc)  # written: nothing is left for the flusher to send
        with anyio.fail_after(5):
            await got.wait()
    finally:
        await other.close()
        await nc.close()


async def test_a_running_aggregator_reads_the_direct_way(aggregator: Any) -> None:
    """What the aggregator relies on for its CPU figures is in place on its connection (README, Performance)."""
    agg = aggregator.agg
    nc = agg.conn.nc
    assert type(nc._ps) is FastParser
    subjects = {sub.subject: is_direct(sub) for sub in nc._subs.values()}
    announce = agg.subjects.any("announce")
    assert subjects[announce] is True
    assert subjects[agg.subjects.any("hb")] is False  # heartbeats keep their backlog: it is evidence (sweep)
    assert sum(subjects.values()) >= 4  # announces, the KV watch, write acks, event acks, others' events


async def test_a_flood_of_refused_announces_is_answered_in_order_or_dropped_never_piled_up(
    aggregator: Any, client: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Announces are refused in the read loop (direct) and the refusals sent by one task; past a bound they are
    dropped and counted (the client times out), as nats-py's bounded backlog dropped them before: a flood never
    becomes a task or a queued reply per message."""
    import services.aggregator.service as service
    from bus.codec import decode_map, encode
    from bus.models import Instance
    from tests.faults import announce_raw

    monkeypatch.setattr(service, "MAX_QUEUED_REFUSALS", 1)
    agg = aggregator.agg
    nc = client.nc
    replies: list[dict[str, Any]] = []

    async def on_reply(msg: Any) -> None:
        replies.append(decode_map(msg.data))

    inbox = nc.new_inbox()
    await nc.subscribe(inbox, cb=on_reply)
    bad = f"{client.subjects.prefix}.acme.announce.Not_A_Label"  # refused by name, before anything is queued
    data = encode(Instance(id="x", address="10.0.0.1", port=1, ttl=30, seq=1))
    n = 5000
    for _ in range(n):
        await nc.publish(bad, data, reply=inbox)
    await nc.flush()
    dropped = lambda: agg.metrics.get("refusals_dropped", "acme")  # noqa: E731
    await eventually(lambda: len(replies) + dropped() == n)
    assert dropped() > 0  # a read holds many messages: with room for one refusal, most of each read is dropped
    assert {r["code"] for r in replies} == {"invalid_name"}
    assert not agg._refusals
    ok = await announce_raw(client, "acme", "web", Instance(id="good", address="10.0.0.2", port=1, ttl=30, seq=1))
    assert ok.changed


async def test_publish_sends_what_nats_py_sends_and_refuses_what_it_refuses(nats_server: NatsServer) -> None:
    from nats.errors import BadSubjectError, MaxPayloadError

    from services.aggregator.direct import publish

    nc = await nats.connect(nats_server.url)
    other = await nats.connect(nats_server.url)
    got: list[tuple[str, str, dict[str, str] | None, bytes]] = []
    try:
        async def cb(msg: Any) -> None:
            got.append((msg.subject, msg.reply, msg.headers, msg.data))

        await other.subscribe("direct.pub.>", cb=cb)
        await other.flush()
        cases: list[tuple[str, bytes, str, dict[str, str] | None]] = [
            ("direct.pub.a", b"plain", "", None),
            ("direct.pub.b", b"with reply", "_INBOX.x.1", None),
            ("direct.pub.c", b"", "_INBOX.x.2", {"Nats-Msg-Id": "42", "Disco-Event": "added;announce;w;1.5"}),
            ("direct.pub.d", bytes(range(256)) * 4, "", {"Nats-Expected-Last-Subject-Sequence": "0"}),
            # nats-py's own header names are a str Enum (formatted, one is "Header.MSG_ID"): the value must go
            ("direct.pub.e", b"e", "_INBOX.x.3", {Header.EXPECTED_LAST_SUBJECT_SEQUENCE: "7", Header.MSG_ID: "9"}),
        ]
        for subject, data, reply, headers in cases:
            await nc.publish(subject, data, reply=reply, headers=headers)
            await publish(nc, subject, data, reply=reply, headers=headers)
        await nc.flush()
        await eventually(lambda: len(got) == 2 * len(cases))
        assert got[0::2] == got[1::2]  # each case: nats-py's message, then ours, the same
        assert got[-1][2] == {"Nats-Expected-Last-Subject-Sequence": "7", "Nats-Msg-Id": "9"}
        assert [g[0] for g in got[0::2]] == [c[0] for c in cases]
        for bad in ("direct.pub.x y", "direct.pub.x\r\nPUB evil 1\r\n", ""):
            with pytest.raises(BadSubjectError):
                await publish(nc, bad, b"x")
        # a value with CR/LF is nats-py's to handle (it blanks them): the same message either way
        await nc.publish("direct.pub.f", b"f", headers={"X-A": "one\r\nPUB evil 1"})
        await publish(nc, "direct.pub.f", b"f", headers={"X-A": "one\r\nPUB evil 1"})
        with pytest.raises(MaxPayloadError):
            await publish(nc, "direct.pub.big", b"x" * (nc.max_payload + 1))
        await nc.flush()
        await eventually(lambda: len(got) == 2 * len(cases) + 2)
        assert got[-2] == got[-1] and got[-1][2] == {"X-A": "one  PUB evil 1"}
        assert nc.is_connected
    finally:
        await other.close()
        await nc.close()


async def test_an_ordered_consumer_taken_raw_keeps_every_message_in_order(nats_server: NatsServer) -> None:
    """Plain messages go to the raw handler, those with headers (and flow control) through nats-py to the direct
    one: together, every message once, in the stream's order, across many flow-control windows."""
    from services.aggregator.direct import drop_raw, parse_faster, take_raw

    nc = await nats.connect(nats_server.url)
    assert parse_faster(nc)
    js = nc.jetstream()
    try:
        await js.add_stream(StreamConfig(name="RAW", subjects=["raw.>"]))
        n = 20_000
        futs = [await js.publish_async(f"raw.{k % 30}", b"v" * 100,
                                       headers={"X-K": str(k)} if k % 7 == 0 else None) for k in range(n)]
        await asyncio.gather(*futs)
        seen: list[tuple[str, int]] = []
        done = asyncio.Event()

        def note(kind: str, seq: int) -> None:
            seen.append((kind, seq))
            if len(seen) == n:
                done.set()

        def direct(msg: Any) -> None:
            note("headers", msg.metadata.sequence.stream)

        async def cb(msg: Any) -> None:
            direct(msg)

        sub = await js.subscribe("raw.>", cb=cb, ordered_consumer=True)
        assert make_direct(sub, direct)
        assert take_raw(nc, sub, lambda subject, seq, left, data: note("plain", seq))
        with anyio.fail_after(30):
            await done.wait()
        assert [seq for _, seq in seen] == list(range(1, n + 1))
        assert {seq for kind, seq in seen if kind == "headers"} == {k + 1 for k in range(0, n, 7)}
        assert sub.delivered >= n  # nats-py counts the flow-control requests too
        drop_raw(nc, sub)
        await sub.unsubscribe()
    finally:
        await nc.close()
