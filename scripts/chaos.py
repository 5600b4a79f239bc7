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
import itertools
import json
import logging
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chaos_checks import GROUPS, PROBE, STABLE, Checks, Ledger
from chaos_load import Load
from chaos_procs import WORKER, Procs

from bus.client import request, snapshot
from bus.codec import encode
from bus.connection import Connection
from bus.errors import DiscoError
from bus.models import AnnounceAck, Instance
from bus.resolver import Resolver
from bus.watch import Watch
from services.natsserver import NatsServer, free_port

Key = tuple[str, str, str]  # tenant, service, instance id


class Chaos(Load, Checks):
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
