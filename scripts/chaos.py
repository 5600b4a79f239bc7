"""Chaos run (issue 8): under steady load, SIGKILL NATS nodes, aggregators, workers and watcher connections, and
check against a ledger that nothing is lost, falsely expired, missing from durable groups, or wrong in any view.

    .venv/bin/python scripts/chaos.py --duration 120 [--tenants 3 --instances 300 --interval 5] [--json out.json]

What runs (everything on loopback, started and stopped by PID by this script): a 3-node nats-server cluster
(configs as ``scripts/dev_cluster.py`` makes them), two ``disco aggregator --replicas 3`` processes, durable
workers of two groups (two processes each, every tenant), per tenant a watcher and a resolver cache (own
connections), and the load: ``--instances`` stable instances that heartbeat all run long, churners that announce
new instances and bye them, and resolves. Every ``--interval`` seconds one of these is killed and restarted
after ``--down`` seconds, in turn: a NATS node (the leader of the KV stream: the time from the kill to the next
acknowledged write is the leader-election time), an aggregator, a worker process, a watcher's or resolver's
connection (its socket aborted, as a SIGKILLed peer's would be).

At the end (faults and churn stopped, ``--settle`` seconds for views to converge) it prints, against the ledger:
instances lost from the KV (and ghosts: byed but present), acknowledged changes missing from each durable group
and duplicates, false expiries (expired while their owner kept heartbeating), watcher and resolver views that
differ from the KV, aggregator views that differ from the KV (each one's counts by ``_sys.stats``, and repeated
snapshots), resolves answered from an incomplete view, the longest window in which resolves failed, and the
leader-election times. ``--json`` writes the same figures for tests/integration/test_chaos.py.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import itertools
import json
import logging
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bus.client import request, resolve, snapshot
from bus.codec import decode, encode
from bus.connection import Connection, connect
from bus.errors import DiscoError
from bus.models import AnnounceAck, Bye, ChangeEvent, ChangeReason, Control, Heartbeat, Instance
from bus.resolver import Resolver, resolver
from bus.subjects import changes_stream_name, parse_kv_key
from bus.watch import Watch, watch
from services.natsserver import NatsServer, free_port

Key = tuple[str, str, str]  # tenant, service, instance id
STABLE, CHURN, PROBE = "api", "jobs", "probe"
GROUPS = ("audit", "sync")

WORKER = """
import sys, anyio
from bus.connection import connect
from bus.workers import worker

urls, prefix, stream, group, out, tenants = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], \\
    sys.argv[6].split(",")

async def main():
    with open(out, "a", buffering=1) as f:
        async def one(tenant):
            conn = await connect(urls, tenant=tenant, prefix=prefix, name=f"chaos-{group}")
            async def handle(ev, d):
                f.write(f"{ev.tenant} {ev.revision} {ev.type} {ev.reason} {ev.service} {ev.instance.id}\\n")
            async with worker(conn, group, handle, stream_prefix=stream, create_stream=False, ack_wait=5.0,
                              batch=32, retry_delay=0.1):
                await anyio.sleep_forever()
        async with anyio.create_task_group() as tg:
            for t in tenants:
                tg.start_soon(one, t)

anyio.run(main)
"""


def _die_with_parent() -> None:
    """In a child before exec: SIGKILL it when this script dies (Linux PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


class Procs:
    """The child processes (aggregators, workers), each restartable, all stopped by PID at the end."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.argv: dict[str, list[str]] = {}
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str] | None = None) -> None:
        if argv is not None:
            self.argv[name] = argv
        with (self.logs / f"{name}.log").open("ab") as log:
            self.running[name] = subprocess.Popen(
                self.argv[name], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=Path(__file__).resolve().parent.parent, preexec_fn=_die_with_parent,
            )

    def kill(self, name: str) -> None:
        p = self.running.pop(name)
        p.send_signal(signal.SIGKILL)
        p.wait()

    def stop_all(self) -> None:
        for p in self.running.values():
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
        for p in self.running.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.running.clear()


class Ledger:
    """What the load did, as acknowledged: who is live, which changes were written, what happened when."""

    def __init__(self) -> None:
        self.live: dict[Key, Instance] = {}
        self.acked: dict[str, set[int]] = {}
        self.announces = self.byes = self.ctl = self.errors = 0
        self.false_expiries: list[tuple[Key, int]] = []
        self.resolves = self.resolve_failed = self.resolve_incomplete = 0
        self.failing_since: dict[str, float] = {}
        self.longest_failure = 0.0
        self.peak = 0

    def changed(self, tenant: str, ack: AnnounceAck) -> None:
        if ack.changed:
            self.acked.setdefault(tenant, set()).add(ack.revision)


class Chaos:
    def __init__(self, args: argparse.Namespace, base: Path) -> None:
        self.args = args
        self.base = base
        self.rng = random.Random(args.seed)
        self.prefix = "chaos"
        self.bucket, self.stream = "chaos_view", "chaos_changes"
        self.tenants = [f"t{n}" for n in range(args.tenants)]
        ports = [free_port() for _ in range(3)]
        self.nodes = [
            NatsServer(base / f"n{i}", name=f"n{i}", cluster_name="disco-chaos", cluster_port=ports[i],
                       routes=[f"nats-route://127.0.0.1:{p}" for j, p in enumerate(ports) if j != i])
            for i in range(3)
        ]
        self.urls = ",".join(n.url for n in self.nodes)
        self.procs = Procs(base)
        self.ledger = Ledger()
        self.load: dict[str, Connection] = {}
        self.watches: dict[str, Watch] = {}
        self.resolvers: dict[str, Resolver] = {}
        self.view_conns: list[Connection] = []
        self.faults: Counter[str] = Counter()
        self.elections: list[float] = []
        self.killed_leaders: list[str] = []
        self.churning = True
        self.seq = itertools.count(1)

    # -- set-up ------------------------------------------------------------------------------------------------
    async def connect(self, tenant: str | None = None, name: str = "chaos") -> Connection:
        return await connect(self.urls, tenant=tenant, prefix=self.prefix, name=name)

    async def start_cluster(self) -> None:
        for n in self.nodes:
            n.start()
        c = await self.connect()
        try:
            with anyio.fail_after(60):
                while True:
                    try:
                        await c.js.account_info()
                        return
                    except Exception:
                        await anyio.sleep(0.2)
        finally:
            await c.close()

    def start_aggregator(self, n: int) -> None:
        disco = str(Path(sys.executable).parent / "disco")
        self.procs.start(f"aggregator{n}", [
            disco, "aggregator", "--nats", self.urls, "--prefix", self.prefix, "--replicas", "3",
            "--bucket", self.bucket, "--stream", self.stream,
        ])

    def start_worker(self, group: str, n: int) -> None:
        out = self.base / f"worker-{group}-{n}.txt"
        self.procs.start(f"worker-{group}-{n}", [
            sys.executable, "-c", WORKER, self.urls, self.prefix, self.stream, group, str(out), ",".join(self.tenants),
        ])

    # -- the load ----------------------------------------------------------------------------------------------
    async def _write(self, tenant: str, subject: str, data: bytes, timeout: float = 2.0) -> AnnounceAck:
        """One acknowledged write, retried (same payload: idempotent) until it is acknowledged."""
        delay = 0.1
        while True:
            try:
                return await request(self.load[tenant], subject, data, AnnounceAck, timeout)
            except DiscoError:
                self.ledger.errors += 1
            await anyio.sleep(delay * self.rng.uniform(0.5, 1.5))
            delay = min(delay * 2, 1.0)

    async def announce(self, tenant: str, service: str, inst: Instance) -> AnnounceAck:
        key = (tenant, service, inst.id)
        self.ledger.live[key] = inst  # heartbeats start at once, as a real client's would
        self.ledger.peak = max(self.ledger.peak, len(self.ledger.live))
        ack = await self._write(tenant, self.load[tenant].subjects.announce(tenant, service), encode(inst))
        self.ledger.announces += 1
        self.ledger.changed(tenant, ack)
        return ack

    async def bye(self, tenant: str, service: str, iid: str) -> None:
        self.ledger.live.pop((tenant, service, iid), None)  # no more heartbeats: its expiry is not false
        ack = await self._write(tenant, self.load[tenant].subjects.bye(tenant, service), encode(Bye(id=iid)))
        self.ledger.byes += 1
        self.ledger.changed(tenant, ack)

    def instance(self, iid: str, seq: int = 1) -> Instance:
        return Instance(id=iid, address=f"10.{self.rng.randrange(256)}.0.1", port=1 + self.rng.randrange(65000),
                        ttl=self.args.ttl, seq=seq)

    async def heartbeats(self, tenant: str) -> None:
        conn = self.load[tenant]
        while True:
            for service in (STABLE, CHURN):
                ids = [i for (t, s, i) in list(self.ledger.live) if t == tenant and s == service]
                for k in range(0, len(ids), 1000):
                    with contextlib.suppress(Exception):
                        await conn.nc.publish(conn.subjects.hb(tenant, service),
                                              encode(Heartbeat(ids=tuple(ids[k:k + 1000]))))
            await anyio.sleep(1.0)

    async def on_ctl(self, tenant: str, msg: Any, tg: Any) -> None:
        parts = msg.subject.split(".")
        try:
            ctl = decode(msg.data, Control)
        except DiscoError:
            return
        key = (tenant, parts[-2], ctl.id)
        inst = self.ledger.live.get(key)
        if inst is not None:
            self.ledger.ctl += 1
            tg.start_soon(self._reannounce, tenant, parts[-2], inst)

    async def _reannounce(self, tenant: str, service: str, inst: Instance) -> None:
        ack = await self._write(tenant, self.load[tenant].subjects.announce(tenant, service), encode(inst))
        self.ledger.changed(tenant, ack)

    async def churner(self, tenant: str, n: int) -> None:
        while self.churning:
            iid = f"c{n}-{next(self.seq)}"
            await self.announce(tenant, CHURN, self.instance(iid))
            await anyio.sleep(self.rng.uniform(0.5, 3.0))
            await self.bye(tenant, CHURN, iid)
            await anyio.sleep(self.rng.uniform(0.0, 0.5))

    async def resolves(self, tenant: str, stable: int) -> None:
        led = self.ledger
        while True:
            try:
                reply = await resolve(self.load[tenant], STABLE, tenant=tenant, timeout=2.0)
            except DiscoError:
                led.resolve_failed += 1
                led.failing_since.setdefault(tenant, time.monotonic())
            else:
                led.resolves += 1
                since = led.failing_since.pop(tenant, None)
                if since is not None:
                    led.longest_failure = max(led.longest_failure, time.monotonic() - since)
                if len(reply.instances) < stable:
                    led.resolve_incomplete += 1
            await anyio.sleep(0.2)

    async def watching(self, tenant: str, ready: Callable[[], None]) -> None:
        conn = await self.connect(tenant, "chaos-watch")
        self.view_conns.append(conn)
        async with watch(conn, tenant=tenant, resync_interval=None) as w:
            self.watches[tenant] = w
            ready()
            async for ev in w:
                key = (tenant, ev.service, ev.instance.id)
                if ev.reason == ChangeReason.expired and key in self.ledger.live:
                    self.ledger.false_expiries.append((key, ev.revision))

    async def caching(self, tenant: str, ready: Callable[[], None]) -> None:
        conn = await self.connect(tenant, "chaos-resolver")
        self.view_conns.append(conn)
        async with resolver(conn, STABLE, tenant=tenant, resync_interval=None, start_timeout=30.0) as r:
            self.resolvers[tenant] = r
            ready()
            await anyio.sleep_forever()

    # -- faults ------------------------------------------------------------------------------------------------
    async def kv_leader(self) -> str | None:
        try:
            info = await self.load[self.tenants[0]].js.stream_info(f"KV_{self.bucket}")
            return info.cluster.leader if info.cluster is not None else None
        except Exception:
            return None

    async def fault(self, kind: str) -> None:
        down = self.args.down
        if kind == "nats":
            leader = await self.kv_leader()
            node = next((n for n in self.nodes if n.name == leader), self.rng.choice(self.nodes))
            t0 = time.monotonic()
            node.kill()
            if leader is not None:
                await self.probe_write(t0)
                self.killed_leaders.append(f"{leader}->{await self.kv_leader()}")
            await anyio.sleep(max(0.0, down - (time.monotonic() - t0)))
            await anyio.to_thread.run_sync(node.start)
        elif kind == "aggregator":
            name = self.rng.choice([n for n in self.procs.running if n.startswith("aggregator")])
            self.procs.kill(name)
            await anyio.sleep(down)
            self.procs.start(name)
        elif kind == "worker":
            name = self.rng.choice([n for n in self.procs.running if n.startswith("worker")])
            self.procs.kill(name)
            await anyio.sleep(down)
            self.procs.start(name)
        else:
            conn = self.rng.choice(self.view_conns)
            transport = getattr(conn.nc, "_transport", None)
            writer = getattr(transport, "_io_writer", None)
            if writer is not None:
                writer.transport.abort()  # the socket dies under the client: it reconnects and relists
        self.faults[kind] += 1

    async def probe_write(self, t0: float) -> None:
        """Acknowledged writes until one succeeds: the time since ``t0`` is the leader election as clients see it."""
        tenant = self.tenants[0]
        conn = self.load[tenant]
        with anyio.move_on_after(60):
            await self._probe(conn, tenant, t0)
            return
        self.elections.append(float("inf"))  # no write for a minute: reported as such

    async def _probe(self, conn: Connection, tenant: str, t0: float) -> None:
        while True:
            seq = next(self.seq)  # a new port each time: a real write (a new seq alone changes nothing)
            inst = Instance(id="probe", address="10.9.9.9", port=1 + seq % 65000, ttl=300.0, seq=seq)
            try:
                ack = await request(conn, conn.subjects.announce(tenant, PROBE), encode(inst), AnnounceAck, 0.5)
            except DiscoError:
                await anyio.sleep(0.02)
                continue
            if not ack.changed:
                continue
            self.ledger.changed(tenant, ack)
            self.elections.append(time.monotonic() - t0)
            return

    async def faults_loop(self, until: float) -> None:
        kinds = ["nats", "aggregator", "worker", "watcher"]
        while time.monotonic() + self.args.interval < until:
            await anyio.sleep(self.args.interval)
            kind = kinds[sum(self.faults.values()) % len(kinds)]
            await self.fault(kind)

    # -- the checks --------------------------------------------------------------------------------------------
    async def kv_state(self) -> dict[str, set[tuple[str, str]]]:
        """{tenant: {(service, id)}} as the KV holds it now (the probe instance of the first tenant included)."""
        out: dict[str, set[tuple[str, str]]] = {t: set() for t in self.tenants}
        kv = await self.load[self.tenants[0]].js.key_value(self.bucket)
        try:
            keys = await kv.keys()
        except Exception:
            keys = []
        for k in keys:
            t, s, i = parse_kv_key(k)
            if t in out:
                out[t].add((s, i))
        return out

    def worker_lines(self) -> dict[str, list[tuple[str, int, str, str, str, str]]]:
        out: dict[str, list[tuple[str, int, str, str, str, str]]] = {g: [] for g in GROUPS}
        for g in GROUPS:
            for f in self.base.glob(f"worker-{g}-*.txt"):
                for line in f.read_text().splitlines():
                    p = line.split()
                    if len(p) == 6:
                        out[g].append((p[0], int(p[1]), p[2], p[3], p[4], p[5]))
        return out

    async def missing_from_streams(self) -> int:
        """Acknowledged changes that are not in their tenant's change stream at all (lost before any worker)."""
        n = 0
        for t, revs in self.ledger.acked.items():
            n += len(revs - await self.stream_revisions(t))
        return n

    def missing_and_duplicates(self) -> tuple[dict[str, int], dict[str, int]]:
        missing, dups = {}, {}
        lines = self.worker_lines()
        for g in GROUPS:
            seen = Counter((t, rev) for t, rev, *_ in lines[g])
            missing[g] = sum(1 for t, revs in self.ledger.acked.items() for r in revs if (t, r) not in seen)
            dups[g] = sum(n - 1 for n in seen.values() if n > 1)
        return missing, dups

    async def stream_revisions(self, tenant: str) -> set[int]:
        """The revisions of the change events the tenant's change stream holds (read by an ephemeral consumer)."""
        conn = self.load[tenant]
        revisions: set[int] = set()
        try:
            psub = await conn.js.pull_subscribe(conn.subjects.changes(tenant), stream=changes_stream_name(
                self.stream, tenant))
        except Exception:
            return revisions
        try:
            while True:
                try:
                    msgs = await psub.fetch(500, timeout=2.0)
                except Exception:
                    return revisions
                for m in msgs:
                    with contextlib.suppress(DiscoError):
                        revisions.add(decode(m.data, ChangeEvent).revision)
                    await m.ack()
        finally:
            with contextlib.suppress(Exception):
                await psub.unsubscribe()

    async def views(self, kv: dict[str, set[tuple[str, str]]]) -> tuple[int, int]:
        """Watchers and resolver caches whose view differs from the KV."""
        watchers = sum(
            1 for t, w in self.watches.items()
            if {(s, i) for s, insts in w.view.items() for i in insts} != kv[t]
        )
        resolvers = sum(
            1 for t, r in self.resolvers.items() if {i.id for i in r.instances} != {i for s, i in kv[t] if s == STABLE}
        )
        return watchers, resolvers

    async def aggregator_views(self, kv: dict[str, set[tuple[str, str]]]) -> dict[str, Any]:
        conn = self.load[self.tenants[0]]
        inbox = conn.nc.new_inbox()
        replies: list[dict[str, Any]] = []

        async def on_reply(msg: Any) -> None:
            replies.append(msgpack.unpackb(msg.data))

        sub = await conn.nc.subscribe(inbox, cb=on_reply)
        await conn.nc.publish(f"{self.prefix}._sys.stats", b"", reply=inbox)
        await anyio.sleep(2.0)  # an observation window for every aggregator's answer (a broadcast, not a request)
        await sub.unsubscribe()
        count_diverging = 0
        for rep in replies:
            tenants = rep.get("tenants", {})
            if any(tenants.get(t, [0, 0])[1] != len(kv[t]) for t in self.tenants):
                count_diverging += 1
        snapshots = snap_diverging = 0
        for t in self.tenants:
            for _ in range(self.args.snapshots):
                try:
                    snap = await snapshot(self.load[t], tenant=t, timeout=2.0)
                except DiscoError:
                    continue
                snapshots += 1
                got = {(s, i.id) for s, insts in snap.services.items() for i in insts}
                if got != kv[t]:
                    snap_diverging += 1
        return {"aggregators_answering": len(replies), "aggregator_counts_diverging": count_diverging,
                "snapshots": snapshots, "snapshots_diverging": snap_diverging}

    async def figures(self) -> dict[str, Any]:
        kv = await self.kv_state()
        live: dict[str, set[tuple[str, str]]] = {t: set() for t in self.tenants}
        for t, s, i in self.ledger.live:
            live[t].add((s, i))
        missing, dups = self.missing_and_duplicates()
        watchers, resolvers = await self.views(kv)
        worker_expired = {
            ((t, svc, iid), rev) for g in GROUPS for t, rev, kind, reason, svc, iid in self.worker_lines()[g]
            if reason == "expired" and svc == STABLE
        }
        false_expiries = {k for k, _ in self.ledger.false_expiries} | {k for k, _ in worker_expired}
        led = self.ledger
        return {
            "duration": self.args.duration, "faults": sum(self.faults.values()), "faults_by_kind": dict(self.faults),
            "tenants": len(self.tenants), "instances_peak": led.peak, "instances_live": len(led.live),
            "announces": led.announces, "byes": led.byes, "ctl_reannounces": led.ctl, "write_retries": led.errors,
            "changes_acked": sum(len(r) for r in led.acked.values()),
            "lost": sum(len(live[t] - kv[t]) for t in self.tenants),
            "ghosts": sum(1 for t in self.tenants for s, _ in kv[t] - live[t] if s != PROBE),
            "missing_from_streams": await self.missing_from_streams(),
            "missing_changes": missing, "duplicate_changes": dups,
            "false_expiries": len(false_expiries),
            "watchers_diverging": watchers, "resolver_caches_diverging": resolvers,
            **await self.aggregator_views(kv),
            "resolves": led.resolves, "resolves_failed": led.resolve_failed,
            "resolves_incomplete": led.resolve_incomplete, "longest_resolve_failure_s": round(led.longest_failure, 3),
            "leader_elections_s": [round(e, 3) for e in self.elections],
            "kv_leader_changes": self.killed_leaders,
        }

    async def settle(self) -> dict[str, Any]:
        """Poll until every view agrees with the KV and the workers caught up, or ``--settle`` seconds passed."""
        deadline = time.monotonic() + self.args.settle
        while True:
            kv = await self.kv_state()
            missing, _ = self.missing_and_duplicates()
            watchers, resolvers = await self.views(kv)
            if (not any(missing.values()) and not watchers and not resolvers) or time.monotonic() > deadline:
                return await self.figures()
            await anyio.sleep(1.0)

    # -- the run -----------------------------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        a = self.args
        await self.start_cluster()
        for n in range(2):
            self.start_aggregator(n)
        for t in self.tenants:
            self.load[t] = await self.connect(t, "chaos-load")
        with anyio.fail_after(60):
            while True:
                try:
                    await snapshot(self.load[self.tenants[0]], timeout=1.0)
                    break
                except DiscoError:
                    await anyio.sleep(0.2)
        for g in GROUPS:
            for n in range(2):
                self.start_worker(g, n)
        stable = a.instances // len(self.tenants)
        async with anyio.create_task_group() as tg:
            for t in self.tenants:
                tg.start_soon(self.heartbeats, t)

                async def cb(msg: Any, t: str = t, tg: Any = tg) -> None:
                    await self.on_ctl(t, msg, tg)

                await self.load[t].nc.subscribe(f"{self.prefix}.{t}.ctl.>", cb=cb)
            with anyio.fail_after(120):
                async with anyio.create_task_group() as first:
                    for t in self.tenants:
                        for n in range(stable):
                            first.start_soon(self.announce, t, STABLE, self.instance(f"s{n}"))
                ready = anyio.Event()
                started: list[str] = []

                def one_ready() -> None:
                    started.append("x")
                    if len(started) == 2 * len(self.tenants):
                        ready.set()

                for t in self.tenants:
                    tg.start_soon(self.watching, t, one_ready)
                    tg.start_soon(self.caching, t, one_ready)
                await ready.wait()
            print(f"chaos: {stable * len(self.tenants)} stable instances up, {len(self.tenants)} tenants; "
                  f"faults every {a.interval:g} s for {a.duration:g} s", flush=True)
            until = time.monotonic() + a.duration
            async with anyio.create_task_group() as load:
                for t in self.tenants:
                    load.start_soon(self.resolves, t, stable)
                churners = []
                for t in self.tenants:
                    for n in range(a.churners):
                        churners.append((t, n))
                async with anyio.create_task_group() as churn:
                    for t, n in churners:
                        churn.start_soon(self.churner, t, n)
                    await self.faults_loop(until)
                    await anyio.sleep(max(0.0, until - time.monotonic()))
                    self.churning = False  # each churner ends its cycle (its bye acknowledged) and stops
                load.cancel_scope.cancel()
            result = await self.settle()
            tg.cancel_scope.cancel()
        return result

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            for c in [*self.load.values(), *self.view_conns]:
                with contextlib.suppress(Exception), anyio.move_on_after(2):
                    await c.close()


def report(fig: dict[str, Any]) -> None:
    for k, v in fig.items():
        print(f"  {k:30} {v}")


async def amain(chaos: Chaos) -> dict[str, Any]:
    try:
        return await chaos.run()
    finally:
        await chaos.close()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=120.0, help="seconds of load and faults")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between faults")
    ap.add_argument("--down", type=float, default=2.0, help="seconds a killed part stays down")
    ap.add_argument("--tenants", type=int, default=3)
    ap.add_argument("--instances", type=int, default=300, help="stable instances, over all tenants")
    ap.add_argument("--churners", type=int, default=4, help="churning clients per tenant")
    ap.add_argument("--ttl", type=float, default=10.0)
    ap.add_argument("--settle", type=float, default=30.0, help="at most this many seconds for views to converge")
    ap.add_argument("--snapshots", type=int, default=20, help="snapshots per tenant compared with the KV")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--verbose", action="store_true", help="show the clients' warnings (reconnects...)")
    args = ap.parse_args()
    if args.duration <= 0 or args.interval <= 0 or args.tenants < 1 or args.instances < args.tenants:
        print("chaos: error: --duration and --interval must be positive, --instances >= --tenants >= 1",
              file=sys.stderr)
        return 2
    started = time.monotonic()
    logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("disco").setLevel(logging.INFO if args.verbose else logging.ERROR)
    signal.signal(signal.SIGTERM, _interrupt)
    with tempfile.TemporaryDirectory(prefix="disco-chaos-") as tmp:
        chaos = Chaos(args, Path(tmp))
        try:
            fig = anyio.run(amain, chaos)
        except KeyboardInterrupt:
            print("chaos: interrupted; everything started was stopped", file=sys.stderr)
            return 130
        finally:
            chaos.procs.stop_all()  # by PID: each child this run started, then each NATS node
            for n in chaos.nodes:
                n.stop()
    fig["wall_clock_s"] = round(time.monotonic() - started, 1)
    print("chaos run figures:")
    report(fig)
    if args.json is not None:
        args.json.write_text(json.dumps(fig, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
