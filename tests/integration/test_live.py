"""The live subject (bus.live): the server republishes each stored write of the live view, and that is what
watchers follow; where a republish may be missing, the aggregator publishes the same message itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest

from bus.codec import decode, encode
from bus.connection import Connection
from bus.live import EVENT_HEADER, REVISION_HEADER, change_of
from bus.models import ChangeEvent, ChangeReason, ChangeType
from bus.watch import watch
from services.aggregator.eventdata import build_event_raw, event_header
from services.natsserver import NatsServer
from tests.conftest import eventually
from tests.helpers import announce_raw, instance

pytestmark = pytest.mark.integration


class Heard:
    """What a raw subscriber got on one subject pattern."""

    def __init__(self) -> None:
        self.msgs: list[Any] = []


async def _listen(conn: Connection, subject: str) -> Heard:
    heard = Heard()

    async def cb(msg: Any) -> None:
        heard.msgs.append(msg)

    await conn.nc.subscribe(subject, cb=cb)
    await conn.nc.flush()
    return heard


async def test_a_watcher_gets_a_write_the_writer_never_published_an_event_for(
    nats_server: NatsServer, start_aggregator: Callable[..., Any], conn_factory: Callable[..., Any]
) -> None:
    """The writer's own event is suppressed: the change subject stays silent, yet the watcher gets the change,
    from the server's republish of the stored write (revision and all)."""
    agg = (await start_aggregator(nats_server.url)).agg
    client: Connection = await conn_factory(nats_server.url, tenant="acme")
    assert agg.store.republishing
    info = await client.js.stream_info(agg.store.kv_stream)
    assert info.config.republish is not None and info.config.republish.dest == client.subjects.live_republish()

    async def nothing(ev: Any) -> None:
        return None

    agg.events.own_now = nothing  # type: ignore[method-assign]
    changes = await _listen(client, client.subjects.changes("acme"))
    live = await _listen(client, client.subjects.live("acme"))
    async with watch(client, "web") as w:
        ack = await announce_raw(client, "web", instance("i-1"))
        with anyio.fail_after(10):
            ev = await w.next()
    assert (ev.type, ev.reason, ev.instance.id, ev.revision) == (ChangeType.added, ChangeReason.announce, "i-1",
                                                                ack.revision)
    assert changes.msgs == []  # not the writer's event: there was none
    [msg] = live.msgs
    assert msg.subject == client.subjects.live("acme", "web", "i-1")
    assert msg.headers[REVISION_HEADER] == str(ack.revision) and msg.headers[EVENT_HEADER].startswith("added ")


async def test_while_the_bucket_does_not_republish_the_aggregator_copies_its_events_there(
    nats_server: NatsServer, start_aggregator: Callable[..., Any], conn_factory: Callable[..., Any]
) -> None:
    """An operator removed the RePublish: the aggregator notices on its next look at the bucket and publishes each
    event on the live subject itself, so watchers miss nothing; a restarted aggregator configures it again."""
    running = await start_aggregator(nats_server.url, republish_check=3600.0)  # no periodic check meanwhile
    agg = running.agg
    client: Connection = await conn_factory(nats_server.url, tenant="acme")
    info = await client.js.stream_info(agg.store.kv_stream)
    info.config.republish = None
    await client.js.update_stream(info.config)
    await agg.store.bucket_state()
    assert not agg.store.republishing
    live = await _listen(client, client.subjects.live("acme"))
    async with watch(client, "web") as w:
        ack = await announce_raw(client, "web", instance("i-1"))
        with anyio.fail_after(10):
            ev = await w.next()
        assert (ev.type, ev.instance.id, ev.revision) == (ChangeType.added, "i-1", ack.revision)
        await eventually(lambda: live.msgs)
        assert "Nats-Stream" not in live.msgs[0].headers  # the aggregator's copy, not a republish
        await running.stop()
        again = (await start_aggregator(nats_server.url)).agg
        assert again.store.republishing
        info = await client.js.stream_info(agg.store.kv_stream)
        assert info.config.republish is not None
        ack2 = await announce_raw(client, "web", instance("i-2"))
        with anyio.fail_after(10):
            ev = await w.next()
        assert (ev.instance.id, ev.revision) == ("i-2", ack2.revision)
    assert any(m.headers.get("Nats-Stream") == agg.store.kv_stream for m in live.msgs)  # republished again


async def test_an_event_published_by_a_takeover_reaches_the_live_subject_too(
    nats_server: NatsServer, start_aggregator: Callable[..., Any], conn_factory: Callable[..., Any]
) -> None:
    """An event another aggregator publishes for a write (its writer died, or heard no acknowledgement, so the
    server may not have republished it) goes to the live subject as well, as the same change."""
    agg = (await start_aggregator(nats_server.url)).agg
    client: Connection = await conn_factory(nats_server.url, tenant="acme")
    changes = await _listen(client, client.subjects.changes("acme"))
    live = await _listen(client, client.subjects.live("acme"))
    record = instance("i-1")
    await announce_raw(client, "web", record)
    await eventually(lambda: len(changes.msgs) == 1 and live.msgs)
    ev = build_event_raw(client.subjects, "acme", "web", "removed", "expired", 1_700_000_000.5, "i-1",
                         encode(record), 999)
    await agg.events.publish_now(ev)
    copies = await eventually(lambda: [m for m in live.msgs if m.headers.get(REVISION_HEADER) == "999"])
    await eventually(lambda: len(changes.msgs) == 2)
    stored = decode(changes.msgs[1].data, ChangeEvent)
    [copy] = copies
    assert copy.headers[EVENT_HEADER] == event_header("removed", "expired", agg.writer_id, 1_700_000_000.5)
    assert change_of("acme", copy.subject, copy.headers, copy.data) == stored
    assert stored.revision == 999 and stored.type == ChangeType.removed


async def test_a_bucket_that_stopped_republishing_is_configured_again(
    nats_server: NatsServer, start_aggregator: Callable[..., Any], conn_factory: Callable[..., Any]
) -> None:
    """The aggregator looks at the bucket every ``republish_check`` seconds and puts a removed RePublish back."""
    agg = (await start_aggregator(nats_server.url, republish_check=0.1)).agg
    client: Connection = await conn_factory(nats_server.url, tenant="acme")
    info = await client.js.stream_info(agg.store.kv_stream)
    info.config.republish = None
    await client.js.update_stream(info.config)

    async def republishes() -> bool:
        rp = (await client.js.stream_info(agg.store.kv_stream)).config.republish
        return rp is not None and rp.dest == client.subjects.live_republish() and agg.store.republishing

    await eventually(republishes, timeout=10)
    live = await _listen(client, client.subjects.live("acme"))
    ack = await announce_raw(client, "web", instance("i-1"))
    await eventually(lambda: any(m.headers.get(REVISION_HEADER) == str(ack.revision)
                                 and m.headers.get("Nats-Stream") == agg.store.kv_stream for m in live.msgs))
