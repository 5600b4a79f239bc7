"""Change events follow from the KV writes (issue 8.1): an aggregator process SIGKILLed at random points of a
stream of announces and byes, then restarted, leaves every acknowledged change exactly once in the tenant's
change stream, and every write the KV holds with its event."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import anyio
import nats.errors
import pytest
from nats.js import api

from bus.errors import DiscoError
from bus.models import ChangeReason, Instance
from tests.conftest import eventually
from tests.faults import announce_raw, bye_raw, stream_events

pytestmark = pytest.mark.integration

_RUN = "import sys; from services.cli import main; sys.argv[0] = 'disco'; main()"


class AggregatorProcess:
    """``disco aggregator`` in a process of its own, killed with SIGKILL and started again."""

    def __init__(self, url: str, prefix: str, log: Path) -> None:
        self.cmd = [sys.executable, "-c", _RUN, "aggregator", "--nats", url, "--prefix", prefix,
                    "--bucket", f"{prefix}_view", "--stream", f"{prefix}_changes"]
        self.env = {**os.environ, "DISCO_FOLLOW_TENANTS": "false"}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def spawn(self) -> tuple[Path, subprocess.Popen[bytes]]:
        self.starts += 1
        path = self.log.with_suffix(f".{self.starts}.log")
        with path.open("wb") as out:
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        return path, self.proc

    async def start(self) -> None:
        path, proc = self.spawn()
        await eventually(lambda: b"aggregator ready" in path.read_bytes() or proc.poll() is not None, timeout=30)
        assert proc.poll() is None, path.read_text()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def _kv_writes(conn, bucket: str) -> dict[int, str]:
    """revision -> key of the last write of every key the bucket holds (values and delete markers alike)."""
    out: dict[int, str] = {}
    info = await conn.js.stream_info(f"KV_{bucket}")
    if not info.state.messages:
        return out
    sub = await conn.js.subscribe(f"$KV.{bucket}.>", stream=f"KV_{bucket}", ordered_consumer=True,
                                  deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT)
    try:
        while True:
            msg = await sub.next_msg(timeout=5)
            if "Disco-Event" in (msg.headers or {}):
                out[msg.metadata.sequence.stream] = msg.subject
            if msg.metadata.num_pending == 0:
                return out
    finally:
        await sub.unsubscribe()


@pytest.mark.parametrize("processes", [1, 2])
async def test_sigkilled_aggregator_loses_no_event_and_duplicates_none(nats_server, prefix, conn_factory, tmp_path,
                                                                      processes):
    """With one process, a restart catches up; with two, the survivor also takes over the dead one's events."""
    rng = random.Random(f"{os.environ.get('DISCO_TEST_SEED', '8.1')}-{processes}")
    aggs = [AggregatorProcess(nats_server.url, prefix, tmp_path / f"agg{n}") for n in range(processes)]
    conn = await conn_factory(nats_server.url, tenant="acme")
    acked: dict[int, str] = {}  # revision -> "added i7", "removed i3" ... for every changed=True acknowledgement
    live: dict[str, int] = {}  # instance -> seq
    stop = anyio.Event()
    lock = anyio.Lock()

    async def definite(op) -> object:
        """Retry one request until it gets an answer (the aggregator may be dead or restarting)."""
        while True:
            try:
                return await op()
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError, TimeoutError, DiscoError):
                await anyio.sleep(0.05)

    async def client(n: int) -> None:
        k = 0
        while not stop.is_set():
            k += 1
            async with lock:
                byes = [i for i in live if i.startswith(f"c{n}-")]
                bye = byes[0] if byes and rng.random() < 0.4 else None
            if bye is not None:
                ack = await definite(partial(bye_raw, conn, "acme", "svc", bye, timeout=2))
                async with lock:
                    live.pop(bye, None)
                if ack.changed:
                    acked[ack.revision] = f"removed {bye}"
                continue
            iid = f"c{n}-{k}"
            inst = Instance(id=iid, address="10.0.0.1", port=1000 + k % 50000, ttl=300, seq=1)
            ack = await definite(partial(announce_raw, conn, "acme", "svc", inst, timeout=2))
            async with lock:
                live[iid] = 1
            if ack.changed:
                acked[ack.revision] = f"added {iid}"

    for agg in aggs:
        await agg.start()
    try:
        async with anyio.create_task_group() as tg:
            for n in range(8):
                tg.start_soon(client, n)
            for _ in range(5):
                await anyio.sleep(rng.uniform(0.2, 1.0))  # a random point of the stream of writes
                victim = rng.choice(aggs)
                victim.kill()
                await victim.start()
            await eventually(lambda: len(acked) >= 200, timeout=60)
            stop.set()
        stream = f"{prefix}_changes_acme"
        writes = await _kv_writes(conn, f"{prefix}_view")

        async def all_there() -> bool:
            ids = {rev for rev, _ in await stream_events(conn, stream)}
            return set(acked) <= ids and set(writes) <= ids

        try:
            await eventually(all_there, timeout=30, interval=0.5)
        except TimeoutError:
            pass  # the assertions below say what is missing
        events = await stream_events(conn, stream)
        stored = {ev["revision"] for _, ev in events}
        assert not {r: acked[r] for r in acked if r not in stored}, "acknowledged changes missing from the stream"
        assert not {r: writes[r] for r in writes if r not in stored}, "KV writes without their event"
        revisions = [ev["revision"] for _, ev in events]
        assert len(revisions) == len(set(revisions)), "an event stored twice"
        assert all(mid == ev["revision"] for mid, ev in events)
        by_rev = {ev["revision"]: f"{ev['type']} {ev['instance']['id']}" for _, ev in events}
        assert {rev: by_rev[rev] for rev in acked} == acked  # each acknowledged change, as acknowledged
    finally:
        for agg in aggs:
            agg.stop()


async def _silenced(agg) -> list:
    """The writer 'dies' between its KV write and its event publish: its own events go nowhere."""
    lost: list = []

    async def own_now(ev) -> None:
        lost.append(ev)

    agg.events.own = lost.append
    agg.events.own_now = own_now
    return lost


async def test_another_aggregator_takes_over_an_event_its_writer_never_published(
        nats_server, start_aggregator, conn_factory):
    conn = await conn_factory(nats_server.url, tenant="acme")
    a = (await start_aggregator(nats_server.url, event_takeover=0.5)).agg
    b = (await start_aggregator(nats_server.url, event_takeover=0.5)).agg
    lost = await _silenced(a)
    await a._announce("acme", "svc", Instance(id="t1", address="10.0.0.1", port=1, ttl=300, seq=1), "")
    assert len(lost) == 1
    stream = f"{conn.subjects.prefix}_changes_acme"
    await eventually(lambda: _count(conn, stream, 1))
    assert b.metrics.get("events_taken_over", "acme") == 1
    events = await stream_events(conn, stream)
    assert [(mid, e["type"], e["instance"]["id"]) for mid, e in events] == [(lost[0].revision, "added", "t1")]


async def test_a_pending_event_is_stored_before_its_key_is_overwritten(nats_server, start_aggregator, conn_factory):
    """B overwrites (bye) a key whose write by A has no event yet: B stores A's event first, so that it does not
    live only in B's memory once the KV has moved on."""
    conn = await conn_factory(nats_server.url, tenant="acme")
    a = (await start_aggregator(nats_server.url, event_takeover=60.0)).agg  # no takeover within this test
    b = (await start_aggregator(nats_server.url, event_takeover=60.0)).agg
    await _silenced(a)
    await a._announce("acme", "svc", Instance(id="t2", address="10.0.0.1", port=1, ttl=300, seq=1), "")
    await eventually(lambda: b.view.get("acme", "svc", "t2") is not None and b.events.pending)
    await b._remove("acme", "svc", "t2", ChangeReason.bye)
    stream = f"{conn.subjects.prefix}_changes_acme"
    await eventually(lambda: _count(conn, stream, 2))
    events = await stream_events(conn, stream)
    assert [(e["type"], e["reason"]) for _, e in events] == [("added", "announce"), ("removed", "bye")]
    assert b.metrics.get("events_taken_over", "acme") == 0


async def _count(conn, stream: str, n: int) -> bool:
    try:
        return (await conn.js.stream_info(stream)).state.messages >= n
    except Exception:
        return False


async def test_a_start_catches_up_on_writes_overwritten_before_anyone_published_them(
        nats_server, start_aggregator, conn_factory):
    """A's announce and then its bye of one key are both written, and A 'dies' before publishing either event,
    with no other aggregator running: the KV's last message of the key is the bye. An aggregator that starts then
    finds both writes in the bucket's history and stores both events, in order."""
    conn = await conn_factory(nats_server.url, tenant="acme")
    a = (await start_aggregator(nats_server.url, event_takeover=60.0)).agg
    lost = await _silenced(a)
    await a._announce("acme", "svc", Instance(id="t3", address="10.0.0.1", port=1, ttl=300, seq=1), "")
    await a._remove("acme", "svc", "t3", ChangeReason.bye)
    assert [ev.revision for ev in lost] == sorted(ev.revision for ev in lost) and len(lost) == 2
    stream = f"{conn.subjects.prefix}_changes_acme"
    assert not await _count(conn, stream, 1)
    await start_aggregator(nats_server.url)  # catches up before it is ready
    await eventually(lambda: _count(conn, stream, 2))
    events = await stream_events(conn, stream)
    assert [(mid, e["type"]) for mid, e in events] == [(lost[0].revision, "added"), (lost[1].revision, "removed")]


async def test_a_reconnect_catches_up_on_writes_overwritten_while_the_watch_was_away(
        nats_server, start_aggregator, conn_factory):
    """B's watch is away (re-created) while A writes and overwrites a key without publishing either event: B's
    reconciliation reads the bucket's history, not only the key's last message, and both events are stored."""
    conn = await conn_factory(nats_server.url, tenant="acme")
    a = (await start_aggregator(nats_server.url, event_takeover=0.3)).agg
    b = (await start_aggregator(nats_server.url, event_takeover=0.3)).agg
    lost = await _silenced(a)
    before = b.view.position
    b.follower.apply = lambda change: None  # type: ignore[method-assign]  # B sees nothing while "away"
    b.follower.pending_event = lambda change, inst: None  # type: ignore[method-assign]
    await a._announce("acme", "svc", Instance(id="t4", address="10.0.0.1", port=1, ttl=300, seq=1), "")
    await a._remove("acme", "svc", "t4", ChangeReason.bye)
    assert len(lost) == 2
    del b.follower.apply, b.follower.pending_event  # back: the instance's own methods again
    await b.follower.catchup.after_load([], True, before, max(ev.revision for ev in lost))
    stream = f"{conn.subjects.prefix}_changes_acme"
    await eventually(lambda: _count(conn, stream, 2), timeout=10)
    events = await stream_events(conn, stream)
    assert [(mid, e["type"]) for mid, e in events] == [(lost[0].revision, "added"), (lost[1].revision, "removed")]


async def test_a_keys_events_are_stored_in_revision_order_whoever_hands_them_over(
        nats_server, start_aggregator, conn_factory):
    """Another writer's bye of a key comes due for takeover while that key's announce is still pending (it was
    found later, by a catch-up): both are stored, the announce first; and a key's events handed over at once to
    the pipeline and to a direct publish are stored in the order they were handed over."""
    conn = await conn_factory(nats_server.url, tenant="acme")
    a = (await start_aggregator(nats_server.url, event_takeover=60.0)).agg
    b = (await start_aggregator(nats_server.url, event_takeover=60.0)).agg
    lost = await _silenced(a)
    await a._announce("acme", "svc", Instance(id="t5", address="10.0.0.1", port=1, ttl=300, seq=1), "")
    await a._remove("acme", "svc", "t5", ChangeReason.bye)
    added, removed = lost
    for ev in lost:  # B's KV watch makes both pending (or, if it has not seen them yet, these calls do)
        b.events.foreign(ev)
    await eventually(lambda: len(b.events.pending) == 2)
    b.events.pending[("acme", removed.revision)] = (removed, 0.0)  # the bye comes due at once, while the
    # announce, earlier in the same key, is not due for a minute
    stream = f"{conn.subjects.prefix}_changes_acme"
    await eventually(lambda: _count(conn, stream, 2), timeout=10)
    events = await stream_events(conn, stream)
    assert [(mid, e["type"]) for mid, e in events] == [(added.revision, "added"), (removed.revision, "removed")]
    assert not b.events.pending

    # one key, three events handed over in turn to the pipeline, to a direct publish (which waits until stored,
    # so it waits for the pipeline's first), and to the pipeline again: stored in that order
    await a._announce("acme", "svc", Instance(id="t6", address="10.0.0.1", port=1, ttl=300, seq=1), "")
    await a._announce("acme", "svc", Instance(id="t6", address="10.0.0.2", port=1, ttl=300, seq=2), "")
    await a._remove("acme", "svc", "t6", ChangeReason.bye)
    first, second, third = lost[2:]
    b.events.own(first)
    await b.events.publish_now(second)
    b.events.own(third)
    await eventually(lambda: _count(conn, stream, 5), timeout=10)
    events = await stream_events(conn, stream)
    assert [mid for mid, _ in events[2:]] == [first.revision, second.revision, third.revision]
