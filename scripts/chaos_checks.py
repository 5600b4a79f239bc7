"""The end-of-run checks of the chaos run (scripts/chaos.py): the KV, the change streams, the durable groups'
records, the watchers', resolver caches' and aggregators' views, all compared with the run's ledger."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from typing import Any

import anyio
import msgpack
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from bus.client import snapshot
from bus.codec import decode
from bus.errors import DiscoError
from bus.models import AnnounceAck, ChangeEvent, Instance
from bus.streams import kv_keys
from bus.subjects import changes_stream_name, parse_kv_key

Key = tuple[str, str, str]  # tenant, service, instance id
STABLE, CHURN, PROBE = "api", "jobs", "probe"
GROUPS = ("audit", "sync")


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


class Checks:
    """Mixed into the run: uses its ``load`` connections, ``ledger``, ``watches``, ``resolvers``, ``base``..."""

    # attributes of the run these checks read
    args: Any
    base: Any
    bucket: str
    stream: str
    prefix: str
    tenants: list[str]
    load: dict[str, Any]
    ledger: Any
    watches: dict[str, Any]
    resolvers: dict[str, Any]
    faults: Counter[str]
    elections: list[float]
    killed_leaders: list[str]

    # -- the checks --------------------------------------------------------------------------------------------
    async def kv_state(self) -> dict[str, set[tuple[str, str]]]:
        """{tenant: {(service, id)}} as the KV holds it now (the probe instance of the first tenant included)."""
        out: dict[str, set[tuple[str, str]]] = {t: set() for t in self.tenants}
        js = self.load[self.tenants[0]].js
        kv = await js.key_value(self.bucket)
        for k in await kv_keys(js, self.bucket):  # not kv.keys(): it can report an empty bucket (bus.streams)
            try:
                entry = await kv.get(k)
            except nats.js.errors.KeyNotFoundError:  # a delete marker
                continue
            t, s, i = parse_kv_key(k)
            if t in out and entry.value:
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

    async def stream_revisions(self, tenant: str, deadline_s: float = 60.0) -> set[int]:
        """The revisions of the change events the tenant's change stream holds: read by an ephemeral consumer up to
        the stream's last sequence, taken when the read starts. A fetch that times out, or a consumer lost to a
        leader change, is retried from where the read stopped until ``deadline_s``; a stream that still cannot be
        read whole raises, so a read that stopped early is never reported as changes missing from the stream."""
        conn = self.load[tenant]
        name = changes_stream_name(self.stream, tenant)
        revisions: set[int] = set()
        deadline = time.monotonic() + deadline_s
        last = next_seq = 0
        problem = "no attempt"
        while time.monotonic() < deadline:
            psub = None
            try:
                if not last:
                    state = (await conn.js.stream_info(name)).state
                    last, next_seq = state.last_seq, max(state.first_seq, 1)
                if next_seq > last:
                    return revisions
                psub = await conn.js.pull_subscribe(
                    conn.subjects.changes(tenant), stream=name,
                    config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=next_seq,
                                          ack_policy=AckPolicy.NONE, inactive_threshold=30.0))
                while next_seq <= last:
                    for m in await psub.fetch(500, timeout=5.0):
                        next_seq = max(next_seq, m.metadata.sequence.stream + 1)
                        with contextlib.suppress(DiscoError):
                            revisions.add(decode(m.data, ChangeEvent).revision)
                return revisions
            except Exception as e:  # a timeout or a leader change: read on from next_seq
                problem = f"{type(e).__name__}: {e}"
                await anyio.sleep(0.5)
            finally:
                if psub is not None:
                    with contextlib.suppress(Exception):
                        await psub.unsubscribe()
        raise RuntimeError(f"change stream {name} could not be read up to sequence {last} within {deadline_s} s "
                           f"(stopped at {next_seq}; last problem: {problem})")

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
