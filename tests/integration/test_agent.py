"""The agent in-process (:class:`services.agent.Agent`) against the session NATS server and an aggregator: real TCP
and HTTP backends going up and down, exec checks, batched heartbeats, reload diffs, a broken file."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web
from anyio.abc import SocketAttribute, SocketListener, SocketStream
from nats.aio.msg import Msg

import bus
from bus.codec import decode, encode
from bus.connection import Connection
from bus.heartbeats import Heartbeats
from bus.models import Bye, ChangeEvent, ChangeReason, ChangeType, Heartbeat, Instance, Status
from services.agent import Agent
from services.natsserver import free_port
from tests.conftest import eventually

pytestmark = pytest.mark.integration


class HttpBackend:
    """A real HTTP server whose /health answers ``code``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.code = 200
        self._runner: web.AppRunner | None = None

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=self.code, text="health")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self._health)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class TcpBackend:
    """A real TCP listener that can go down and come back on the same port."""

    def __init__(self) -> None:
        self.port = 0
        self._listener: SocketListener | None = None
        self._scope: anyio.CancelScope | None = None

    async def _serve(self, *, task_status: Any) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=self.port)
        self.port = listener.extra(SocketAttribute.local_port)

        async def handle(stream: SocketStream) -> None:
            await stream.aclose()

        with anyio.CancelScope() as self._scope:
            task_status.started()
            async with listener:
                await listener.serve(handle)

    async def up(self, tg: anyio.abc.TaskGroup) -> None:
        await tg.start(self._serve)

    def down(self) -> None:
        assert self._scope is not None
        self._scope.cancel()


class Recorder:
    """Every change event of the tenant, and every announce / bye / heartbeat message on the wire.

    :attr:`view` is made from the events recorded (the watch applies an event to its own view before handing it out,
    and may run ahead of the reader), so a test that waits on it has every event behind it in :attr:`events`."""

    def __init__(self) -> None:
        self.events: list[ChangeEvent] = []
        self.view: dict[str, dict[str, Instance]] = {}
        self.announces: list[str] = []
        self.byes: list[str] = []
        self.heartbeats: list[Heartbeat] = []

    def record(self, ev: ChangeEvent) -> None:
        self.events.append(ev)
        if ev.type is ChangeType.removed:
            self.view.get(ev.service, {}).pop(ev.instance.id, None)
        else:
            self.view.setdefault(ev.service, {})[ev.instance.id] = ev.instance

    async def on_announce(self, msg: Msg) -> None:
        self.announces.append(decode(msg.data, Instance).id)

    async def on_bye(self, msg: Msg) -> None:
        self.byes.append(decode(msg.data, Bye).id)

    async def on_hb(self, msg: Msg) -> None:
        self.heartbeats.append(decode(msg.data, Heartbeat))

    def of(self, iid: str) -> list[tuple[str, str, str]]:
        return [(e.type.value, e.reason.value, e.instance.status.value) for e in self.events if e.instance.id == iid]


@asynccontextmanager
async def recording(conn: Connection) -> AsyncIterator[Recorder]:
    rec = Recorder()
    s = conn.subjects
    subs = [await conn.nc.subscribe(f"{s.prefix}.acme.announce.*", cb=rec.on_announce),
            await conn.nc.subscribe(f"{s.prefix}.acme.bye.*", cb=rec.on_bye),
            await conn.nc.subscribe(f"{s.prefix}.acme.hb.*", cb=rec.on_hb)]
    async with anyio.create_task_group() as tg, bus.watch(conn) as w:
        async def pump() -> None:
            async for ev in w:
                rec.record(ev)

        tg.start_soon(pump)
        yield rec
        tg.cancel_scope.cancel()
    for sub in subs:
        await sub.unsubscribe()


@asynccontextmanager
async def running(conn: Connection, path: Path, **kw: Any) -> AsyncIterator[Agent]:
    kw.setdefault("poll_interval", None)
    agent = Agent(conn, path, **kw)
    async with anyio.create_task_group() as tg:
        await tg.start(agent.run)
        yield agent
        tg.cancel_scope.cancel()


def status_of(holder: Recorder | bus.Watch, service: str, iid: str) -> str | None:
    inst = holder.view.get(service, {}).get(iid)
    return inst.status.value if inst is not None else None


async def test_tcp_and_http_checks_follow_real_backends_up_and_down(
    aggregator: Any, client: Connection, tmp_path: Path
) -> None:
    http = HttpBackend()
    tcp = TcpBackend()
    await http.start()
    try:
        async with anyio.create_task_group() as backends:
            await tcp.up(backends)
            cfg = tmp_path / "agent.yaml"
            cfg.write_text(f"""
tenant: acme
services:
  - {{service: web, id: web-1, address: 127.0.0.1, port: {http.port}, ttl: 5,
     check: {{http: "http://127.0.0.1:{http.port}/health", interval: 0.05, timeout: 1,
              failures_before_critical: 2, successes_before_passing: 2}}}}
  - {{service: db, id: db-1, address: 127.0.0.1, port: {tcp.port}, ttl: 5,
     check: {{tcp: "127.0.0.1:{tcp.port}", interval: 0.05, timeout: 1}}}}
""")
            async with recording(client) as rec, running(client, cfg):
                await eventually(lambda: status_of(rec, "web", "web-1") == "passing")
                await eventually(lambda: status_of(rec, "db", "db-1") == "passing")
                http.code = 503
                await eventually(lambda: status_of(rec, "web", "web-1") == "critical")
                reply = await bus.resolve(client, "web")
                assert reply.instances == ()            # critical instances are not resolved
                http.code = 200
                await eventually(lambda: status_of(rec, "web", "web-1") == "passing")
                tcp.down()
                await eventually(lambda: status_of(rec, "db", "db-1") == "critical")
                await tcp.up(backends)
                await eventually(lambda: status_of(rec, "db", "db-1") == "passing")
                for iid in ("web-1", "db-1"):
                    seen = rec.of(iid)
                    # status changes travel in heartbeats (reason health), never as re-announces; the first
                    # passing may overtake the added event (aggregators publish concurrently), so the watcher
                    # may show it as the added one
                    assert all(reason == "health" for _, reason, _ in seen[1:]), seen
                    assert [status for _, _, status in seen][-3:] == ["passing", "critical", "passing"], seen
                assert rec.announces.count("web-1") == 1 and rec.announces.count("db-1") == 1
            backends.cancel_scope.cancel()
    finally:
        await http.stop()
    # leaving the agent said bye for both
    assert sorted(rec.byes) == ["db-1", "web-1"]


async def test_exec_checks_use_the_exit_code_and_the_timeout(
    aggregator: Any, client: Connection, tmp_path: Path
) -> None:
    flag = tmp_path / "ready"
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"""
tenant: acme
services:
  - {{service: job, id: flagged, address: 10.0.0.1, port: 1,
     check: {{exec: "test -f {flag}", interval: 0.05}}}}
  - {{service: job, id: three, address: 10.0.0.1, port: 2,
     check: {{exec: [sh, -c, "exit 3"], exit_code: 3, interval: 0.05}}}}
  - {{service: job, id: wrong, address: 10.0.0.1, port: 3, check: {{exec: [sh, -c, "exit 4"], exit_code: 3,
     interval: 0.05, initial_status: passing}}}}
  - {{service: job, id: hangs, address: 10.0.0.1, port: 4, check: {{exec: "sleep 30", timeout: 0.2,
     interval: 0.05, initial_status: passing}}}}
""")
    async with recording(client) as rec, running(client, cfg) as agent:
        await eventually(lambda: status_of(rec, "job", "three") == "passing")
        await eventually(lambda: status_of(rec, "job", "wrong") == "critical")
        await eventually(lambda: status_of(rec, "job", "hangs") == "critical")
        assert status_of(rec, "job", "flagged") == "critical"
        flag.touch()
        await eventually(lambda: status_of(rec, "job", "flagged") == "passing")
        flag.unlink()
        await eventually(lambda: status_of(rec, "job", "flagged") == "critical")
        assert rec.of("flagged") == [("added", "announce", "critical"), ("updated", "health", "passing"),
                                     ("updated", "health", "critical")]
        assert agent.check_runs[("exec", True)] >= 2 and agent.check_runs[("exec", False)] >= 3


async def test_one_heartbeat_message_carries_every_instance_of_a_service(
    aggregator: Any, client: Connection, tmp_path: Path
) -> None:
    cfg = tmp_path / "agent.yaml"
    items = "\n".join(f"  - {{service: fleet, id: f{n}, address: 10.0.0.{n + 1}, port: 80, ttl: 1.5}}"
                      for n in range(8))
    cfg.write_text(f"tenant: acme\nservices:\n{items}\n")
    async with recording(client) as rec, running(client, cfg) as agent:
        await eventually(lambda: len(rec.view.get("fleet", {})) == 8)
        # four rounds of beats: more than two ttls have passed
        await eventually(lambda: len(rec.heartbeats) >= 4, timeout=20)
        # instances announced a little apart may first beat in two rounds; an instance due within a sixth of its
        # ttl joins the current round, so from then on one message carries them all
        assert all(hb.id is None and sorted(hb.ids) == [f"f{n}" for n in range(8)] and hb.status == "passing"
                   for hb in rec.heartbeats[-2:])
        assert all(hb.status == "passing" for hb in rec.heartbeats)
        assert len(rec.view["fleet"]) == 8
        assert not [e for e in rec.events if e.reason is ChangeReason.expired]
        assert agent.beats.beats >= 4 * agent.beats.messages


async def test_a_reload_applies_exactly_the_difference(
    aggregator: Any, client: Connection, tmp_path: Path
) -> None:
    def config(entries: list[str]) -> str:
        return "tenant: acme\nservices:\n" + "".join(f"  - {e}\n" for e in entries)

    a = "{service: app, id: a, address: 10.0.0.1, port: 1}"
    b = "{service: app, id: b, address: 10.0.0.2, port: 2, meta: {v: '1'}}"
    b2 = "{service: app, id: b, address: 10.0.0.2, port: 2, meta: {v: '2'}}"
    c = "{service: app, id: c, address: 10.0.0.3, port: 3, check: {exec: 'true', interval: 0.05}}"
    c2 = "{service: app, id: c, address: 10.0.0.3, port: 3, check: {exec: [sh, -c, 'exit 0'], interval: 0.05}}"
    d = "{service: other, id: d, address: 10.0.0.4, port: 4}"
    e = "{service: app, id: e, address: 10.0.0.5, port: 5}"
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(config([a, b, c, d]))
    async with recording(client) as rec, running(client, cfg) as agent:
        await eventually(lambda: status_of(rec, "app", "c") == "passing" and len(rec.view.get("app", {})) == 3)
        await eventually(lambda: len(rec.announces) == 4)
        marks = len(rec.events), len(rec.announces)
        cfg.write_text(config([b2, c2, d, e]))
        agent.request_reload()
        await eventually(lambda: agent.reloads == 1)
        await eventually(lambda: "e" in rec.view.get("app", {}) and "a" not in rec.view["app"]
                         and rec.view["app"]["b"].meta == {"v": "2"})
        assert sorted(rec.announces[marks[1]:]) == ["b", "e"]     # c (check only) and d untouched: no announce
        assert rec.byes == ["a"]
        changes = sorted((ev.instance.id, ev.type.value, ev.reason.value) for ev in rec.events[marks[0]:])
        assert changes == [("a", "removed", "bye"), ("b", "updated", "announce"), ("e", "added", "announce")]
        assert rec.view["app"]["c"].status is Status.passing


async def test_a_broken_file_keeps_the_previous_configuration(
    aggregator: Any, client: Connection, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = tmp_path / "agent.yaml"
    good = "tenant: acme\nservices:\n  - {service: app, id: a, address: 10.0.0.1, port: 1}\n"
    cfg.write_text(good)
    async with recording(client) as rec, running(client, cfg, poll_interval=0.05) as agent:
        await eventually(lambda: "a" in rec.view.get("app", {}))
        with caplog.at_level(logging.ERROR, logger="disco.agent"):
            cfg.write_text(good + "  - {service: app, id: b, address: 10.0.0.2, port: 70000}\n")
            await eventually(lambda: agent.reload_errors == 1)   # seen by the file poll, no SIGHUP needed
        [record] = [r for r in caplog.records if "configuration refused" in r.getMessage()]
        assert f"{cfg}:4: services[1].port: Input should be less than or equal to 65535" in record.getMessage()
        assert list(agent.members) == [("acme", "app", "a")] and agent.reloads == 0
        assert "b" not in rec.view["app"] and rec.byes == []
        cfg.write_text(good + "  - {service: app, id: b, address: 10.0.0.2, port: 2}\n")
        await eventually(lambda: "b" in rec.view.get("app", {}))
        assert agent.reloads == 1 and rec.byes == []
        assert [ev.type for ev in rec.events if ev.instance.id == "a"] == [ChangeType.added]


async def test_an_instance_removed_behind_its_back_is_announced_again(
    aggregator: Any, client: Connection, tmp_path: Path
) -> None:
    """A heartbeat naming an instance the view lacks makes the aggregator ask for a re-announce (ctl): the agent
    answers it for that one instance."""
    cfg = tmp_path / "agent.yaml"
    cfg.write_text("tenant: acme\nservices:\n"
                   "  - {service: app, id: a, address: 10.0.0.1, port: 1, ttl: 1.5}\n"
                   "  - {service: app, id: b, address: 10.0.0.2, port: 2, ttl: 1.5}\n")
    async with recording(client) as rec, running(client, cfg):
        await eventually(lambda: rec.view.get("app", {}).keys() == {"a", "b"})
        await client.nc.request(client.subjects.bye("acme", "app"), encode(Bye(id="a")), timeout=2)
        await eventually(lambda: rec.of("a")[-1:] == [("added", "announce", "passing")] and len(rec.of("a")) == 3)
        assert rec.of("a") == [("added", "announce", "passing"), ("removed", "bye", "passing"),
                               ("added", "announce", "passing")]
        assert rec.announces.count("a") == 2 and rec.announces.count("b") == 1


async def test_heartbeats_are_split_at_the_protocol_bound_of_1000_ids(client: Connection) -> None:
    got: list[Heartbeat] = []

    async def on_hb(msg: Msg) -> None:
        got.append(decode(msg.data, Heartbeat))

    await client.nc.subscribe(client.subjects.hb("acme", "big"), cb=on_hb)
    beats = Heartbeats(client)
    for n in range(2500):
        beats.add("acme", "big", f"i{n}", 3.0, Status.passing)
    beats.set_status("acme", "big", "i7", Status.warning)
    async with anyio.create_task_group() as tg:
        await tg.start(beats.run)
        await eventually(lambda: len(got) >= 5)
        tg.cancel_scope.cancel()
    # i7's status change beats at once (alone); a ttl/3 later every instance is due: one message per status,
    # split at 1,000 ids
    assert [(len(hb.ids), hb.status) for hb in got[:1]] == [(1, "warning")]
    assert sorted((len(hb.ids), hb.status) for hb in got[1:5]) == [
        (1, "warning"), (499, "passing"), (1000, "passing"), (1000, "passing")]
    assert sorted(i for hb in got[1:5] for i in hb.ids) == sorted(f"i{n}" for n in range(2500))


async def test_after_a_server_restart_it_announces_again_with_what_changed_meanwhile(
    fresh_server: Any, start_aggregator: Any, conn_factory: Any, tmp_path: Path
) -> None:
    await start_aggregator(fresh_server.url)
    conn = await conn_factory(fresh_server.url, tenant="acme")
    reader = await conn_factory(fresh_server.url, tenant="acme")
    http = HttpBackend()
    await http.start()
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"tenant: acme\nservices:\n  - {{service: web, id: w, address: 127.0.0.1, port: {http.port}, "
                   f"ttl: 5, check: {{http: 'http://127.0.0.1:{http.port}/health', interval: 0.05}}}}\n")
    try:
        async with running(conn, cfg) as agent, bus.watch(reader) as w:
            await eventually(lambda: status_of(w, "web", "w") == "passing")
            member = agent.members[("acme", "web", "w")]
            fresh_server.stop()
            http.code = 500   # the check fails while nobody can hear about it
            await eventually(lambda: member.status is Status.critical)
            fresh_server.start()
            await eventually(lambda: status_of(w, "web", "w") == "critical", timeout=30)
            http.code = 200
            await eventually(lambda: status_of(w, "web", "w") == "passing")
    finally:
        await http.stop()
