"""Load model: many tenants x many instances heartbeating, with churn, against one or more aggregators.

    python scripts/load.py [--tenants 10] [--instances 10000] [--ttl 10] [--seconds 30] [--aggregators 1]
                           [--ready 100000,1000000] [--shards 1]

Phase 1 (hold): registers tenants x instances (ttl ``--ttl``), then beats for all of them for ``--seconds`` from
load processes, one heartbeat message per batch of up to 1,000 ids (the protocol's ``ids`` form, as an agent or a
process hosting many instances sends them), while churn retires and registers a few instances a second. Printed:
the aggregators' CPU (% of one core) and RSS, RSS bytes per live instance, heartbeats (ids) per second, and
expiries — a false expiry is an ``expired`` event for an instance whose owner kept beating.

Phase 2 (start): for each count in ``--ready``, a KV bucket is filled with that many entries (written straight
into the bucket, as a long-running system would have them) and a fresh aggregator is started on it: printed is the
time from its start to "ready" (view loaded and verified) and its RSS.

``--shards N`` (N > 1) starts the server with the subject mappings of N shards by tenant and gives aggregator k
``--shard k%N/N`` (services/aggregator/shard.py): each then holds and beats for its shard's tenants only.

Everything runs on loopback on this machine: nats-server, the aggregator processes and the load processes share
its cores, so CPU figures are an upper bound of what a dedicated host would show.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
mp = multiprocessing.get_context("spawn")

from bus.codec import decode, decode_reply, encode  # noqa: E402
from bus.connection import connect  # noqa: E402
from bus.models import AnnounceAck, Bye, ChangeEvent, Heartbeat, Instance  # noqa: E402
from bus.subjects import kv_key  # noqa: E402
from services.aggregator.shard import server_config  # noqa: E402
from services.natsserver import NatsServer  # noqa: E402

PREFIX = "disco"
SERVICE = "svc"


def proc_stat(pid: int) -> tuple[float, int]:
    """(CPU seconds so far, RSS bytes) of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return cpu, rss


def start_aggregator(url: str, bucket: str, log: Path, extra: list[str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "services", "--log-level", "info", "aggregator", "--nats", url, "--prefix", PREFIX,
         *(extra or [])],
        cwd=ROOT, stderr=log.open("wb"), stdout=subprocess.DEVNULL,
        env={**os.environ, "DISCO_BUCKET": bucket, "DISCO_FOLLOW_TENANTS": "false",
             "DISCO_DEFAULT_MAX_INSTANCES": "2000000"},
    )


def wait_ready(log: Path, proc: subprocess.Popen[bytes], timeout: float) -> float:
    """Seconds until the aggregator logs that it is ready."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if re.search(r"aggregator ready", log.read_text(errors="replace")):
            return time.monotonic() - t0
        if proc.poll() is not None:
            raise RuntimeError(f"aggregator exited: {log.read_text()[-2000:]}")
        time.sleep(0.02)
    raise RuntimeError("aggregator not ready in time")


# -- phase 1: the load processes -----------------------------------------------------------------------------
def _beater(url: str, tenants: list[str], instances: int, ttl: float, seconds: float, out: Any) -> None:
    """Registers its tenants' instances, then beats for them in batches; churns a few per second."""

    async def main() -> None:
        conn = await connect(url, prefix=PREFIX, name="load")
        sem = anyio.Semaphore(256)
        ids = {t: [f"i{k:07d}" for k in range(instances)] for t in tenants}
        failures = 0

        async def announce(t: str, iid: str) -> None:
            nonlocal failures
            async with sem:
                inst = Instance(id=iid, address="10.0.0.1", port=8080, ttl=ttl, seq=1)
                try:
                    reply = await conn.nc.request(conn.subjects.announce(t, SERVICE), encode(inst), timeout=30)
                    decode_reply(reply.data, AnnounceAck)
                    registered[t].append(iid)
                except Exception:
                    failures += 1

        registered: dict[str, list[str]] = {t: [] for t in tenants}

        async def beat_registered() -> None:
            """While registering (which may take longer than a ttl), keep what is registered alive."""
            while True:
                await anyio.sleep(ttl / 3)
                for t in tenants:
                    batch = list(registered[t])
                    for i in range(0, len(batch), 1000):
                        await conn.nc.publish(conn.subjects.hb(t, SERVICE),
                                              encode(Heartbeat(ids=tuple(batch[i:i + 1000]))))

        async with anyio.create_task_group() as beating:
            beating.start_soon(beat_registered)
            async with anyio.create_task_group() as tg:
                for t in tenants:
                    for iid in ids[t]:
                        tg.start_soon(announce, t, iid)
            beating.cancel_scope.cancel()
        out.put(("registered", sum(len(v) for v in ids.values()), failures))

        beats = 0
        churned = 0
        deadline = time.monotonic() + seconds
        interval = ttl / 3
        next_churn = time.monotonic() + 1
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            for t in tenants:
                subject = conn.subjects.hb(t, SERVICE)
                batch = ids[t]
                for i in range(0, len(batch), 1000):
                    await conn.nc.publish(subject, encode(Heartbeat(ids=tuple(batch[i:i + 1000]))))
                    beats += len(batch[i:i + 1000])
            await conn.nc.flush()
            if time.monotonic() >= next_churn:  # churn: one instance per tenant leaves, a new one comes
                for t in tenants:
                    gone = ids[t].pop(0)
                    await conn.nc.request(conn.subjects.bye(t, SERVICE), encode(Bye(id=gone)), timeout=30)
                    new = f"c{churned:07d}"
                    await announce(t, new)
                    ids[t].append(new)
                    churned += 1
                next_churn += 1
            await anyio.sleep(max(0.0, interval - (time.monotonic() - t0)))
        out.put(("beats", beats, churned, {t: list(v) for t, v in ids.items()}))
        await conn.close()

    anyio.run(main)


async def hold(url: str, agg_pids: list[int], args: argparse.Namespace) -> dict[str, Any]:
    tenants = [f"t{k}" for k in range(args.tenants)]
    procs = max(1, min(4, args.tenants))
    groups = [tenants[k::procs] for k in range(procs)]
    q: Any = mp.Queue()
    expired: list[tuple[str, str]] = []
    conn = await connect(url, prefix=PREFIX, name="observer")

    async def on_event(msg: Any) -> None:
        ev = decode(msg.data, ChangeEvent)
        if ev.type == "removed" and ev.reason == "expired":
            expired.append((msg.subject.split(".")[1], ev.instance.id))

    await conn.nc.subscribe(f"{PREFIX}.*.changes.>", cb=on_event)
    await conn.nc.flush()
    rss0 = [proc_stat(p)[1] for p in agg_pids]  # an aggregator with an empty view: the baseline
    workers = [mp.Process(target=_beater, args=(url, g, args.instances, args.ttl, args.seconds, q)) for g in groups]
    t0 = time.monotonic()
    for w in workers:
        w.start()
    registered = failures = 0
    early: list[Any] = []  # a fast worker may report its beats before a slow one has registered
    while sum(1 for m in early if m[0] == "registered") < len(workers):
        msg = await anyio.to_thread.run_sync(q.get)
        early.append(msg)
    for msg in early:
        if msg[0] == "registered":
            registered += msg[1]
            failures += msg[2]
    reg_s = time.monotonic() - t0
    before = [proc_stat(p) for p in agg_pids]
    t1 = time.monotonic()
    beats = churned = 0
    alive: dict[str, set[str]] = {}
    done = [m for m in early if m[0] == "beats"]
    while len(done) < len(workers):
        done.append(await anyio.to_thread.run_sync(q.get))
    for _, n, c, ids in done:
        beats += n
        churned += c
        for t, v in ids.items():
            alive[t] = set(v)
    span = time.monotonic() - t1
    after = [proc_stat(p) for p in agg_pids]
    for w in workers:
        w.join(10)
    await conn.close()
    live = registered
    cpu = [(a[0] - b[0]) / span * 100 for a, b in zip(after, before, strict=True)]
    rss = [a[1] for a in after]
    false_expiries = sum(1 for t, iid in expired if iid in alive.get(t, set()))
    return {
        "instances": registered, "announce_failures": failures, "register_s": round(reg_s, 1),
        "heartbeats_per_s": round(beats / span), "churned": churned,
        "aggregator_cpu_pct": [round(c) for c in cpu], "aggregator_rss_mib": [round(r / 2**20) for r in rss],
        "rss_baseline_mib": round(max(rss0) / 2**20),
        "rss_bytes_per_instance": round((sum(rss) - sum(rss0)) / len(rss) / live) if live else None,
        "expired_events": len(expired), "false_expiries": false_expiries,
    }


# -- phase 2: start to ready with N entries in the KV ------------------------------------------------------------
async def fill_bucket(url: str, bucket: str, count: int) -> None:
    conn = await connect(url, prefix=PREFIX, name="fill")
    js = conn.nc.jetstream()
    from nats.js.api import KeyValueConfig

    await js.create_key_value(KeyValueConfig(bucket=bucket, history=1))
    per_tenant = 50_000
    pending: list[Any] = []
    for k in range(count):
        t, iid = f"f{k // per_tenant}", f"i{k:08d}"
        value = encode(Instance(id=iid, address="10.9.0.1", port=8080, ttl=300, seq=1))
        pending.append(await js.publish_async(f"$KV.{bucket}.{kv_key(t, SERVICE, iid)}", value))
        if len(pending) >= 4000:
            await _gather(pending)
            pending = []
    await _gather(pending)
    await conn.close()


async def _gather(futures: list[Any]) -> None:
    for f in futures:
        await f


async def start_to_ready(url: str, tmp: Path, count: int, baseline: int) -> dict[str, Any]:
    bucket = f"ready_{count}"
    t0 = time.monotonic()
    await fill_bucket(url, bucket, count)
    fill_s = time.monotonic() - t0
    log = tmp / f"agg-ready-{count}.log"
    proc = start_aggregator(url, bucket, log)
    try:
        ready_s = await anyio.to_thread.run_sync(wait_ready, log, proc, 600.0)
        cpu, rss = proc_stat(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    return {"entries": count, "fill_s": round(fill_s, 1), "ready_s": round(ready_s, 2), "cpu_s": round(cpu, 2),
            "rss_mib": round(rss / 2**20), "rss_bytes_per_entry": round((rss - baseline) / count)}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        n = args.shards
        server = NatsServer(tmp / "nats", name="load", extra_config=server_config(PREFIX, n) if n > 1 else "")
        server.start()
        aggs: list[subprocess.Popen[bytes]] = []
        try:
            for k in range(max(args.aggregators, n)):
                log = tmp / f"agg{k}.log"
                shard = ["--shard", f"{k % n}/{n}"] if n > 1 else []
                aggs.append(start_aggregator(server.url, "disco_view", log, shard))
                await anyio.to_thread.run_sync(wait_ready, log, aggs[-1], 60.0)
            results["hold"] = await hold(server.url, [a.pid for a in aggs], args)
            for a in aggs:
                a.terminate()
                a.wait(30)
            aggs = []
            baseline = results["hold"]["rss_baseline_mib"] * 2**20
            results["ready"] = [await start_to_ready(server.url, tmp, int(n), baseline)
                                for n in args.ready.split(",") if n]
        finally:
            for a in aggs:
                a.kill()
            server.stop()
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tenants", type=int, default=10)
    ap.add_argument("--instances", type=int, default=10_000, help="per tenant")
    ap.add_argument("--ttl", type=float, default=10.0)
    ap.add_argument("--seconds", type=float, default=30.0, help="how long phase 1 beats")
    ap.add_argument("--aggregators", type=int, default=1)
    ap.add_argument("--shards", type=int, default=1, help="shard the tenants over the aggregators (at least one each)")
    ap.add_argument("--ready", default="100000,1000000", help="KV sizes for the start-to-ready phase ('' skips)")
    a = ap.parse_args()
    r = anyio.run(run, a)
    h = r["hold"]
    print(f"# python scripts/load.py {' '.join(sys.argv[1:])}  ({os.cpu_count()} cores shared by everything)")
    print(f"hold: {h['instances']:,} instances ({a.tenants} tenants, ttl {a.ttl:g} s), registered in "
          f"{h['register_s']} s ({h['announce_failures']} failed)")
    print(f"  heartbeats: {h['heartbeats_per_s']:,} ids/s in batches of <= 1,000; churn {h['churned']} replaced")
    print(f"  aggregator CPU {h['aggregator_cpu_pct']} % of a core, RSS {h['aggregator_rss_mib']} MiB, "
          f"{h['rss_bytes_per_instance']} B per live instance above the {h['rss_baseline_mib']} MiB of an empty one")
    print(f"  expired events {h['expired_events']}, false expiries {h['false_expiries']}")
    for x in r["ready"]:
        print(f"start to ready with {x['entries']:,} KV entries: {x['ready_s']} s (aggregator CPU {x['cpu_s']} s, "
              f"RSS {x['rss_mib']} MiB, "
              f"{x['rss_bytes_per_entry']} B per entry above an empty aggregator; bucket filled in {x['fill_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
