"""Durable per-tenant workers against a real nats-server and aggregator: queue-group sharing across processes with
one killed, groups and tenants apart, retries, dead letters, clean stops, and the non-durable mode."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import nats.errors
import nats.js.errors
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from bus.client import request
from bus.codec import decode, encode
from bus.connection import Connection, connect
from bus.deadletters import dead_letters as stored_dead_letters
from bus.deadletters import replay
from bus.errors import BadRequest, InvalidName, NoAggregator, NotFound, Timeout
from bus.models import AnnounceAck, Bye, ChangeEvent, Instance
from bus.streams import DLQ_MAX_AGE, DLQ_MAX_BYTES, changes_stream_config, dlq_stream_name
from bus.workers import Delivery, Worker, worker
from services.natsserver import NatsServer
from tests.conftest import eventually
from tests.helpers import announce_raw, dead_letters

pytestmark = pytest.mark.integration


async def churn(conn: Connection, tenant: str, service: str, instances: int, updates: int = 1,
                parallel: int = 64) -> list[int]:
    """Add, update ``updates`` times and remove ``instances`` instances, concurrently, by raw requests; the
    revisions of the ``instances * (2 + updates)`` change events, from the acknowledgements."""
    revisions: list[int] = []
    limit = anyio.Semaphore(parallel)

    async def one(n: int) -> None:
        iid = f"i{n}"
        async with limit:
            for seq in range(1, updates + 2):
                inst = Instance(id=iid, address="10.0.0.1", port=1000 + n, weight=seq, seq=seq, ttl=120.0)
                ack = await request(conn, conn.subjects.announce(tenant, service), encode(inst), AnnounceAck, 10)
                assert ack.changed
                revisions.append(ack.revision)
            ack = await request(conn, conn.subjects.bye(tenant, service), encode(Bye(id=iid)), AnnounceAck, 10)
            assert ack.changed
            revisions.append(ack.revision)

    async with anyio.create_task_group() as tg:
        for n in range(instances):
            tg.start_soon(one, n)
    assert len(set(revisions)) == len(revisions)
    return revisions


class Recorder:
    """A handler that records what it was given."""

    def __init__(self) -> None:
        self.events: list[ChangeEvent] = []
        self.deliveries: list[Delivery] = []

    async def __call__(self, ev: ChangeEvent, d: Delivery) -> None:
        self.events.append(ev)
        self.deliveries.append(d)

    @property
    def revisions(self) -> set[int]:
        return {e.revision for e in self.events}


@pytest.fixture
def stream(prefix: str) -> str:
    return f"{prefix}_changes"  # the aggregator settings' stream prefix (tests/conftest.py settings_for)


# =============================================================================================================
# several processes of one group, one of them killed
# =============================================================================================================
WORKER_PROCESS = """
import sys, anyio
from bus.connection import connect
from bus.workers import worker

url, prefix, stream, tenant, group, out, work, stall_after = sys.argv[1:9]

async def main():
    conn = await connect(url, tenant=tenant, prefix=prefix)
    with open(out, "a", buffering=1) as f:
        done = 0
        async def handle(ev, d):
            nonlocal done
            if done == int(stall_after):  # hang on this event (it stays unacknowledged) until killed
                with open(out + ".stuck", "w") as stuck:
                    stuck.write(str(ev.revision))
                await anyio.sleep_forever()
            await anyio.sleep(float(work))  # some work
            f.write(f"{ev.revision} {d.attempt}\\n")
            done += 1
        async with worker(conn, group, handle, stream_prefix=stream, ack_wait=2.0, retry_delay=0.05, batch=8):
            print("ready", flush=True)
            await anyio.sleep_forever()

anyio.run(main)
"""


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _lines(path: Path) -> list[int]:
    if not path.exists():
        return []
    return [int(line.split()[0]) for line in path.read_text().splitlines() if line.strip()]


async def test_three_processes_share_a_group_and_survive_a_kill(
    nats_server: NatsServer, aggregator: Any, conn_factory: Callable[..., Any], prefix: str, stream: str,
    tmp_path: Path,
) -> None:
    files = [tmp_path / f"w{n}.txt" for n in range(3)]
    procs: list[Process] = []
    try:
        for n, f in enumerate(files):
            # the first process hangs on its 21st event and is killed there; the others never hang
            args = [nats_server.url, prefix, stream, "acme", "shared", str(f), "0.01", "20" if n == 0 else "-1"]
            procs.append(await anyio.open_process([sys.executable, "-c", WORKER_PROCESS, *args],
                                                  cwd=Path(__file__).parents[2], stderr=None))
        for p in procs:
            assert p.stdout is not None
            with anyio.fail_after(30):
                line = await BufferedByteReceiveStream(p.stdout).receive_until(b"\n", 1000)
            assert line.strip() == b"ready"
        conn = await conn_factory(nats_server.url, tenant="acme")
        expected = set(await churn(conn, "acme", "api", instances=250, updates=2))
        assert len(expected) == 1000

        def union() -> set[int]:
            return set().union(*(set(_lines(f)) for f in files))

        victim = procs[0]
        stuck_file = Path(f"{files[0]}.stuck")
        stuck = int(await eventually(lambda: _text(stuck_file), timeout=60))
        victim.kill()  # SIGKILL: no clean-up, its fetched events are left unacknowledged
        await victim.wait()
        handled_by_victim = len(_lines(files[0]))
        assert handled_by_victim == 20 and stuck not in _lines(files[0])

        await eventually(lambda: union() >= expected, timeout=60)
        all_lines = [rev for f in files for rev in _lines(f)]
        assert set(all_lines) == expected  # none lost, nothing foreign
        duplicates = Counter(all_lines) - Counter(expected)
        assert sum(duplicates.values()) == len(all_lines) - 1000  # duplicates are recognisable by revision
        assert len(_lines(files[1])) + len(_lines(files[2])) >= 1000 - handled_by_victim  # the others took over
        assert all(_lines(f) for f in files[1:])  # the group really shared the work
        # the event the victim died holding was redelivered to another process (a later attempt)
        retried = [line.split() for f in files[1:] for line in _text(f).splitlines()]
        assert any(int(rev) == stuck and int(attempt) >= 2 for rev, attempt in retried)
    finally:
        with anyio.CancelScope(shield=True):
            for p in procs:
                if p.returncode is None:
                    p.terminate()
            for p in procs:
                with anyio.move_on_after(10):
                    await p.wait()
                if p.returncode is None:
                    p.kill()
                    await p.wait()
                await p.aclose()


# =============================================================================================================
# groups and tenants
# =============================================================================================================
async def test_two_groups_each_get_every_event(aggregator: Any, client: Connection, stream: str) -> None:
    one, two = Recorder(), Recorder()
    async with worker(client, "audit", one, stream_prefix=stream), \
            worker(client, "billing-sync", two, stream_prefix=stream, concurrency=4):
        expected = set(await churn(client, "acme", "api", instances=20))
        await eventually(lambda: one.revisions >= expected and two.revisions >= expected)
    assert one.revisions == two.revisions == expected
    assert all(d.durable and d.stream_seq and d.group == "audit" for d in one.deliveries)


async def test_a_tenants_workers_never_see_another_tenants_events(
    nats_server: NatsServer, aggregator: Any, conn_factory: Callable[..., Any], stream: str
) -> None:
    acme = await conn_factory(nats_server.url, tenant="acme")
    bravo = await conn_factory(nats_server.url, tenant="bravo")
    seen_a, seen_b, core_b = Recorder(), Recorder(), Recorder()
    async with worker(acme, "sync", seen_a, stream_prefix=stream), \
            worker(bravo, "sync", seen_b, stream_prefix=stream), \
            worker(bravo, "sync", core_b, durable=False):
        revs_a = set(await churn(acme, "acme", "api", instances=15))
        revs_b = set(await churn(bravo, "bravo", "api", instances=5))
        await eventually(lambda: seen_a.revisions >= revs_a and seen_b.revisions >= revs_b
                         and core_b.revisions >= revs_b)
    assert {e.tenant for e in seen_a.events} == {"acme"} and seen_a.revisions == revs_a
    assert {e.tenant for e in seen_b.events} == {"bravo"} and seen_b.revisions == revs_b
    assert {e.tenant for e in core_b.events} == {"bravo"} and core_b.revisions == revs_b


async def test_a_service_filter_gets_only_its_services(aggregator: Any, client: Connection, stream: str) -> None:
    rec = Recorder()
    async with worker(client, "only-api", rec, services=["api"], stream_prefix=stream) as w:
        assert w.consumer_name.startswith("only-api-") and w.consumer_name != "only-api"
        other = set(await churn(client, "acme", "web", instances=5))
        wanted = set(await churn(client, "acme", "api", instances=5))
        await eventually(lambda: rec.revisions >= wanted)
        assert not rec.revisions & other
        info = await client.js.consumer_info(w.stream, w.consumer_name)
        assert info.config.filter_subject == client.subjects.changes("acme", "api")


# =============================================================================================================
# failures: retries, dead letters, crashes, clean stops
# =============================================================================================================
async def test_a_failing_handler_is_retried_with_backoff(aggregator: Any, client: Connection, stream: str) -> None:
    attempts: dict[int, list[int]] = {}

    async def flaky(ev: ChangeEvent, d: Delivery) -> None:
        attempts.setdefault(ev.revision, []).append(d.attempt)
        if d.attempt < 3:
            raise RuntimeError("not yet")

    async with worker(client, "flaky", flaky, stream_prefix=stream, retry_delay=0.05, services=["api"]) as w:
        await churn(client, "acme", "api", instances=1, updates=0)  # added + removed
        await eventually(lambda: w.stats.handled == 2)
    assert list(attempts.values()) == [[1, 2, 3], [1, 2, 3]]  # each event: two failures, then success
    assert w.stats.retried == 4 and w.stats.failed == 4 and w.stats.dead_lettered == 0
    assert w.retry_delay_for(1) == 0.05 and w.retry_delay_for(2) == 0.1 and w.retry_delay_for(30) == 60.0


async def test_dead_letter_after_the_attempt_limit(aggregator: Any, client: Connection, stream: str) -> None:
    dead, sub = await dead_letters(client, "fragile")
    calls: list[Delivery] = []

    async def poison(ev: ChangeEvent, d: Delivery) -> None:
        calls.append(d)
        if ev.type == "added":
            raise ValueError("cannot digest\nthis event")

    async with worker(client, "fragile", poison, stream_prefix=stream, max_attempts=3, retry_delay=0.02) as w:
        revisions = await churn(client, "acme", "api", instances=1, updates=0)
        await eventually(lambda: dead and w.stats.handled == 1)
        info = await eventually(lambda: _settled(client, w))
    await sub.unsubscribe()
    assert len(dead) == 1
    msg = dead[0]
    ev = decode(msg.data, ChangeEvent)
    assert ev.revision == revisions[0] and ev.type == "added"
    headers = msg.headers or {}
    assert headers["Disco-Attempts"] == "3"
    assert headers["Disco-Group"] == "fragile" and headers["Disco-Tenant"] == "acme"
    assert headers["Disco-Stream"] == w.stream
    added_seq = next(d.stream_seq for d in calls if d.attempt == 1)
    assert headers["Disco-Stream-Seq"] == str(added_seq)
    assert headers["Disco-Error"] == "ValueError: cannot digest this event"
    assert headers["Disco-Subject"] == client.subjects.changes("acme", "api")
    assert [d.attempt for d in calls if d.stream_seq == added_seq] == [1, 2, 3]
    assert info.num_ack_pending == 0 and info.num_pending == 0  # terminated: never delivered again
    assert w.stats.dead_lettered == 1


async def _settled(conn: Connection, w: Worker) -> Any:
    info = await conn.js.consumer_info(w.stream, w.consumer_name)
    return info if info.num_ack_pending == 0 and info.num_pending == 0 else None


async def test_an_event_whose_workers_keep_dying_is_dead_lettered_unhandled(
    aggregator: Any, client: Connection, stream: str
) -> None:
    dead, sub = await dead_letters(client, "crashy")
    rec = Recorder()
    options: dict[str, Any] = {"stream_prefix": stream, "ack_wait": 0.5, "max_attempts": 2, "services": ["api"]}
    async with worker(client, "crashy", rec, **options) as w:  # creates the consumer
        name, stream_name = w.consumer_name, w.stream
    inst = Instance(id="poison", address="10.0.0.1", port=80, seq=1, ttl=120.0)
    await announce_raw(client, "api", inst)
    # a "worker" that takes the event and dies without a word, twice
    psub = await client.js.pull_subscribe_bind(durable=name, stream=stream_name)
    first = (await psub.fetch(1, timeout=5))[0]
    again = (await psub.fetch(1, timeout=5))[0]  # redelivered after ack_wait
    assert again.metadata.sequence.stream == first.metadata.sequence.stream
    assert again.metadata.num_delivered == 2
    await psub.unsubscribe()
    async with worker(client, "crashy", rec, **options) as w:
        await eventually(lambda: dead)
        await request(client, client.subjects.bye("acme", "api"), encode(Bye(id="poison")), AnnounceAck)
        await eventually(lambda: w.stats.handled == 1)  # the removal is handled, the addition was not
    await sub.unsubscribe()
    assert [e.type for e in rec.events] == ["removed"]
    assert dead[0].headers and dead[0].headers["Disco-Attempts"] == "3"
    assert "no outcome after 2 deliveries" in dead[0].headers["Disco-Error"]


async def test_a_clean_stop_hands_unfinished_events_back_at_once(
    aggregator: Any, client: Connection, stream: str
) -> None:
    started = anyio.Event()

    async def stuck(ev: ChangeEvent, d: Delivery) -> None:
        started.set()
        await anyio.sleep_forever()

    async with worker(client, "handover", stuck, stream_prefix=stream, ack_wait=60.0, services=["api"]):
        await churn(client, "acme", "api", instances=1, updates=0)
        await started.wait()
    rec = Recorder()
    async with worker(client, "handover", rec, stream_prefix=stream, ack_wait=60.0, services=["api"]):
        await eventually(lambda: len(rec.events) == 2, timeout=15)  # well before ack_wait
    assert rec.deliveries[0].attempt == 2 and rec.events[0].type == "added"


async def test_a_worker_started_before_the_stream_waits_for_it(
    aggregator: Any, client: Connection, stream: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="disco.workers")
    rec = Recorder()
    bound = anyio.Event()

    async def run_worker() -> None:
        async with worker(client, "early", rec, stream_prefix=stream, create_stream=False):
            bound.set()
            await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_worker)
        # it waits (logged once) without creating the stream
        await eventually(lambda: "waiting for stream" in caplog.text, timeout=15)
        with pytest.raises(nats.js.errors.NotFoundError):
            await client.js.stream_info(f"{stream}_acme")
        assert not bound.is_set()
        expected = set(await churn(client, "acme", "api", instances=3, updates=0))  # the aggregator creates it
        await eventually(lambda: rec.revisions >= expected)  # from the stream's first event on
        tg.cancel_scope.cancel()
    assert rec.revisions == expected


async def test_a_worker_started_before_the_stream_can_create_it(
    aggregator: Any, client: Connection, stream: str
) -> None:
    rec = Recorder()
    async with worker(client, "creator", rec, stream_prefix=stream) as w:
        info = await client.js.stream_info(w.stream)
        assert info.config.subjects == [client.subjects.changes("acme")]
        expected = set(await churn(client, "acme", "api", instances=3, updates=0))
        await eventually(lambda: rec.revisions >= expected)


# =============================================================================================================
# non-durable mode and arguments
# =============================================================================================================
async def test_non_durable_workers_share_a_core_queue_group(aggregator: Any, client: Connection) -> None:
    one, two = Recorder(), Recorder()
    async with worker(client, "fast", one, durable=False), worker(client, "fast", two, durable=False):
        expected = await churn(client, "acme", "api", instances=40)
        await eventually(lambda: (one.revisions | two.revisions) >= set(expected))
    got = [e.revision for e in one.events + two.events]
    assert sorted(got) == sorted(expected)  # each exactly once between them
    assert one.events and two.events
    assert all(not d.durable and d.stream_seq is None for d in one.deliveries + two.deliveries)


async def test_non_durable_dead_letters_after_in_process_retries(aggregator: Any, client: Connection) -> None:
    dead, sub = await dead_letters(client, "fast-fail")
    attempts: dict[int, list[int]] = {}

    async def failing(ev: ChangeEvent, d: Delivery) -> None:
        attempts.setdefault(ev.revision, []).append(d.attempt)
        raise RuntimeError("nope")

    async with worker(client, "fast-fail", failing, durable=False, max_attempts=2, retry_delay=0.01,
                      services=["api"]):
        await churn(client, "acme", "api", instances=1, updates=0)
        await eventually(lambda: len(dead) == 2)
    await sub.unsubscribe()
    assert list(attempts.values()) == [[1, 2], [1, 2]]
    assert dead[0].headers and dead[0].headers["Disco-Attempts"] == "2"
    assert "Disco-Stream-Seq" not in dead[0].headers


async def test_bad_arguments_are_refused(client: Connection) -> None:
    rec = Recorder()
    with pytest.raises(InvalidName):
        Worker(client, "Bad_Group", rec)
    with pytest.raises(InvalidName):
        Worker(client, "ok", rec, services=["Bad Service"])
    with pytest.raises(BadRequest, match="max_attempts"):
        Worker(client, "ok", rec, max_attempts=0)
    with pytest.raises(BadRequest, match="ack_wait"):
        Worker(client, "ok", rec, ack_wait=0)


async def test_caller_errors_pass_through_unwrapped(aggregator: Any, client: Connection, stream: str) -> None:
    with pytest.raises(KeyError, match="mine"):
        async with worker(client, "plain", Recorder(), stream_prefix=stream):
            raise KeyError("mine")




async def test_a_worker_keeps_consuming_across_a_server_restart(
    fresh_server: NatsServer, start_aggregator: Callable[..., Any], conn_factory: Callable[..., Any], stream: str
) -> None:
    await start_aggregator(fresh_server.url)
    conn = await conn_factory(fresh_server.url, tenant="acme")
    rec = Recorder()
    async with worker(conn, "steady", rec, stream_prefix=stream, ack_wait=2.0):
        before = set(await churn(conn, "acme", "api", instances=5, updates=0))
        await eventually(lambda: rec.revisions >= before)
        fresh_server.stop()
        fresh_server.start()  # same port, same data dir: the stream and the durable consumer are still there

        async def answering() -> bool:
            inst = Instance(id="probe", address="10.0.0.1", port=80, seq=1, ttl=120.0)
            try:
                await request(conn, conn.subjects.announce("acme", "probe"), encode(inst), AnnounceAck, 1.0)
            except (NoAggregator, Timeout):
                return False
            return True

        await eventually(answering, timeout=30)
        after = set(await churn(conn, "acme", "web", instances=5, updates=0))
        await eventually(lambda: rec.revisions >= before | after, timeout=30)


# =============================================================================================================
# keep-alive, dead-letter stream and replay, replicas (issues 8.6, 8.7, 13)
# =============================================================================================================
async def test_a_handler_slower_than_ack_wait_keeps_its_event(
    aggregator: Any, client: Connection, conn_factory: Callable[..., Any], nats_server: NatsServer, stream: str
) -> None:
    """The worker's progress acks keep an event it is still working on: no other member gets it meanwhile, however
    many ack_wait periods pass."""
    release = anyio.Event()
    started = anyio.Event()
    slow_calls: list[int] = []

    async def slow(ev: ChangeEvent, d: Delivery) -> None:
        slow_calls.append(ev.revision)
        started.set()
        await release.wait()

    other = Recorder()
    second = await conn_factory(nats_server.url, tenant="acme")
    opts: dict[str, Any] = {"stream_prefix": stream, "ack_wait": 1.0, "batch": 1, "services": ["slowsvc"]}
    async with worker(client, "patient", slow, **opts) as a:
        inst = Instance(id="s1", address="10.0.0.1", port=80, seq=1, ttl=120.0)
        ack = await request(client, client.subjects.announce("acme", "slowsvc"), encode(inst), AnnounceAck)
        with anyio.fail_after(15):
            await started.wait()
        async with worker(second, "patient", other, **opts):
            # six progress acks, one every ack_wait / 3: the event has been held for two ack_wait periods
            await eventually(lambda: a.stats.progress_acks >= 6, timeout=30)
            info = await client.js.consumer_info(a.stream, a.consumer_name)
            assert info.num_redelivered == 0 and info.num_ack_pending == 1
            assert other.events == []  # the other member was never given it
            release.set()
            await eventually(lambda: _settled(client, a), timeout=15)
    assert slow_calls == [ack.revision] and other.events == []


async def test_dead_letters_are_stored_listed_and_replayed_to_the_group(
    aggregator: Any, client: Connection, stream: str, prefix: str
) -> None:
    failing = True
    handled: list[tuple[int, str, int]] = []

    async def handler(ev: ChangeEvent, d: Delivery) -> None:
        if failing:
            raise RuntimeError("downstream is down")
        handled.append((ev.revision, d.subject, d.attempt))

    async with worker(client, "dlqgrp", handler, stream_prefix=stream, max_attempts=2, retry_delay=0.01,
                      services=["dl"]) as w:
        inst = Instance(id="d1", address="10.0.0.1", port=80, seq=1, ttl=120.0)
        rev = (await request(client, client.subjects.announce("acme", "dl"), encode(inst), AnnounceAck)).revision
        await eventually(lambda: w.stats.dead_lettered == 1)
        [dl] = await stored_dead_letters(client, group="dlqgrp", stream_prefix=stream)
        assert dl.group == "dlqgrp" and not dl.replay and dl.attempts == 2
        assert dl.error == "RuntimeError: downstream is down"
        assert dl.event is not None and dl.event.revision == rev
        assert dl.subject == client.subjects.changes("acme", "dl") and dl.origin_stream == w.stream
        assert dl.time is not None
        with pytest.raises(NotFound):
            await replay(client, "dlqgrp", [dl.seq + 1000], stream_prefix=stream)

        failing = False
        assert await replay(client, "dlqgrp", [dl.seq], stream_prefix=stream) == [dl.seq]
        await eventually(lambda: handled, timeout=15)
        assert handled == [(rev, client.subjects.changes("acme", "dl"), 1)]  # one member, with the change subject
        assert w.stats.replayed == 1
        assert await stored_dead_letters(client, group="dlqgrp", stream_prefix=stream) == []  # the original is gone
    # the stream and its documented retention
    info = await client.js.stream_info(dlq_stream_name(stream, "acme"))
    assert info.config.subjects == [f"{prefix}.acme.dlq.>"]
    assert info.config.max_age == DLQ_MAX_AGE and info.config.max_bytes == DLQ_MAX_BYTES
    with pytest.raises(NotFound):
        await stored_dead_letters(client, tenant="nobody", stream_prefix=stream)


async def test_a_worker_never_creates_a_one_replica_stream_on_a_cluster(
    nats_cluster: Any, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="disco.workers")
    stream = f"{prefix}_changes"
    conn = await connect(nats_cluster.urls[0], tenant="acme", prefix=prefix)
    try:
        w = Worker(conn, "early", Recorder(), stream_prefix=stream)
        async with anyio.create_task_group() as tg:
            tg.start_soon(w.run)
            await eventually(lambda: "waiting for stream" in caplog.text and "--replicas" in caplog.text,
                             timeout=30)
            assert await eventually(lambda: _stream_state(conn, w.stream), timeout=30) == "missing"
            # the aggregators create it (R3): the worker binds to it
            await conn.js.add_stream(changes_stream_config(conn.subjects, stream, "acme", replicas=3))
            await eventually(lambda: _consumer(conn, w.stream, "early"), timeout=30)
            tg.cancel_scope.cancel()
        # told the replica count, a worker creates the stream itself, with that count
        w3 = Worker(conn, "early", Recorder(), tenant="globex", stream_prefix=stream, stream_replicas=3)
        async with anyio.create_task_group() as tg:
            await tg.start(w3.run)
            assert await eventually(lambda: _replicas(conn, w3.stream), timeout=30) == 3
            tg.cancel_scope.cancel()
    finally:
        await conn.close()


async def _consumer(conn: Connection, stream: str, name: str) -> Any:
    try:
        return await conn.js.consumer_info(stream, name)
    except (nats.js.errors.NotFoundError, nats.errors.TimeoutError, TimeoutError):
        return None  # not yet (a cluster's JetStream API may not answer in time while it elects leaders)


async def _stream_state(conn: Connection, stream: str) -> str | None:
    """"missing" or "exists"; None while the JetStream API does not answer in time."""
    try:
        await conn.js.stream_info(stream)
        return "exists"
    except nats.js.errors.NotFoundError:
        return "missing"
    except (nats.errors.TimeoutError, TimeoutError):
        return None


async def _replicas(conn: Connection, stream: str) -> int | None:
    try:
        return (await conn.js.stream_info(stream)).config.num_replicas
    except (nats.errors.TimeoutError, TimeoutError):
        return None
