"""The core benchmark: resolve latency against a raw NATS responder, throughput, event latency, expiry time.

    python scripts/bench.py [--quick] [--json]

Starts its own nats-server (JetStream, temp dir), the aggregator in its own process, and a raw nats-py
request-reply responder in its own process that returns a reply of the same size (the floor). Client, server and
aggregator share this machine's cores, so the ratios against the raw floor matter more than the absolute figures.
Targets were set to beat etcd 3.4 measured on the same 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parent.parent
mp = multiprocessing.get_context("spawn")  # a fresh interpreter: no event loop inherited from the parent
sys.path.insert(0, str(ROOT))

from bus.codec import decode, decode_reply, encode  # noqa: E402
from bus.connection import Connection, connect  # noqa: E402
from bus.errors import DiscoError  # noqa: E402
from bus.live import change_of  # noqa: E402
from bus.models import AnnounceAck, ChangeEvent, Heartbeat, Instance, ResolveRequest  # noqa: E402
from services.natsserver import NatsServer, find_nats_server  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
from benchkit import EVENT_WARMUP, in_flight, pct, two_hops  # noqa: E402

TENANT = "bench"
PREFIX = "disco"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the raw floor: a plain responder in its own process ------------------------------------------------------
def _raw_responder(url: str, replies: dict[str, bytes], ready: Any) -> None:
    async def main() -> None:
        conn = await connect(url, prefix=PREFIX, name="raw")

        async def cb(msg: Any) -> None:
            await conn.nc.publish(msg.reply, replies[msg.subject.rsplit(".", 1)[-1]])

        async def relay(msg: Any) -> None:  # the two-hop floor: a Python process between publisher and watcher
            await conn.nc.publish("rawrelay.out", msg.data)

        await conn.nc.subscribe("raw.*", cb=cb)
        await conn.nc.subscribe("rawrelay.in", cb=relay)
        await conn.nc.flush()
        ready.set()
        await anyio.sleep_forever()

    anyio.run(main)


# -- load generators in their own processes --------------------------------------------------------------------
def _resolve_load(url: str, subject: str, payload: bytes, inflight: int, seconds: float, out: Any) -> None:
    async def main() -> None:
        conn = await connect(url, prefix=PREFIX, name="load")
        done = 0
        deadline = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal done
            while time.monotonic() < deadline:
                await conn.nc.request(subject, payload, timeout=5)
                done += 1

        async with anyio.create_task_group() as tg:
            for _ in range(inflight):
                tg.start_soon(worker)
        out.put(done)
        await conn.close()

    anyio.run(main)


async def serial_latency(conn: Connection, subject: str, payload: bytes, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await conn.nc.request(subject, payload, timeout=5)
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def announce_until_seen(conn: Connection, subject: str, service: str, n: int,
                              warm: int = EVENT_WARMUP) -> list[float]:
    """``n`` serial announces of new instances of ``service`` in tenant ``TENANT``, after ``warm`` not counted, in
    ms from the request's start until a watcher subscribed to ``subject`` has the change: a live write (bus.live)
    or a ChangeEvent on the change subject. The arrival is stamped before decoding and the announce encoded
    before the clock starts, as the floor's relayed message and payload are."""
    want = ""
    got = anyio.Event()
    at = 0.0

    async def on_msg(msg: Any) -> None:
        nonlocal at
        t = time.perf_counter()
        if conn.subjects.parse(msg.subject).kind == "live":
            ev = change_of(TENANT, msg.subject, msg.headers, msg.data)
        else:
            ev = decode(msg.data, ChangeEvent)
        if ev is not None and ev.instance.id == want:
            at = t
            got.set()

    sub = await conn.nc.subscribe(subject, cb=on_msg)
    await conn.nc.flush()
    lat = []
    for k in range(warm + n):
        want, got = f"{service}-{k}", anyio.Event()
        data = encode(Instance(id=want, address="10.2.0.1", port=1, ttl=300, seq=1))
        t0 = time.perf_counter()
        await conn.nc.request(conn.subjects.announce(TENANT, service), data, timeout=10)
        with anyio.fail_after(10):
            await got.wait()
        if k >= warm:
            lat.append((at - t0) * 1000)
    await sub.unsubscribe()
    return lat


async def register(conn: Connection, service: str, count: int, ttl: float = 300) -> None:
    subject = conn.subjects.announce(TENANT, service)

    async def one(k: int) -> None:
        inst = Instance(id=f"{service}-{k}", address=f"10.{k // 250 % 250}.{k % 250}.1", port=8000 + k % 1000,
                        ttl=ttl, seq=1, tags=("v1",), meta={"k": str(k)})
        decode_reply((await conn.nc.request(subject, encode(inst), timeout=10)).data, AnnounceAck)

    async with anyio.create_task_group() as tg:
        for k in range(count):
            tg.start_soon(one, k)


async def until_answering(conn: Any, timeout: float = 30.0) -> None:
    """Until an aggregator answers a resolve on ``conn`` (it just started), for at most ``timeout`` s."""
    with anyio.fail_after(timeout):
        while True:
            try:
                await conn.nc.request(conn.subjects.resolve(TENANT, "none"), b"", timeout=1)
                return
            except Exception:
                await anyio.sleep(0.1)


async def run(quick: bool, registrations: int) -> dict[str, Any]:
    serial_n = 300 if quick else 2000
    seconds = 2.0 if quick else 5.0
    announces_n = 1000 if quick else registrations
    events_n = 200 if quick else 3000  # enough that a p99 is not a handful of samples on a shared 2-core machine
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(Path(tmp) / "nats", name="bench")
        server.start()
        agg = subprocess.Popen(  # noqa: ASYNC220 - started once, before measuring
            [sys.executable, "-m", "services", "aggregator", "--nats", server.url, "--prefix", PREFIX],
            cwd=ROOT, stderr=subprocess.DEVNULL,
        )
        procs: list[Any] = []
        try:
            conn = await connect(server.url, prefix=PREFIX, name="bench")
            await until_answering(conn)
            await register(conn, "svc10", 10)
            await register(conn, "svc100", 100)
            req = encode(ResolveRequest())
            replies = {
                n: (await conn.nc.request(conn.subjects.resolve(TENANT, f"svc{n}"), req, timeout=5)).data
                for n in ("10", "100")
            }
            ack = await conn.nc.request(conn.subjects.announce(TENANT, "svc10"),
                                        encode(Instance(id="svc10-0", address="10.0.0.1", port=8000, ttl=300, seq=1,
                                                        tags=("v1",), meta={"k": "0"})), timeout=5)
            replies["ack"] = ack.data
            ready = mp.Event()
            raw = mp.Process(target=_raw_responder, args=(server.url, replies, ready), daemon=True)
            raw.start()
            procs.append(raw)
            ready.wait(20)

            # 1. serial resolve latency, aggregator vs raw floor
            for n in ("10", "100"):
                subject = conn.subjects.resolve(TENANT, f"svc{n}")
                await serial_latency(conn, subject, req, 100)  # warm-up
                await serial_latency(conn, f"raw.{n}", req, 100)
                a = await serial_latency(conn, subject, req, serial_n)
                r = await serial_latency(conn, f"raw.{n}", req, serial_n)
                results[f"resolve_{n}"] = {
                    "reply_bytes": len(replies[n]),
                    "p50_ms": round(statistics.median(a), 3), "p99_ms": round(pct(a, 0.99), 3),
                    "raw_p50_ms": round(statistics.median(r), 3), "raw_p99_ms": round(pct(r, 0.99), 3),
                    "ratio_p50": round(statistics.median(a) / statistics.median(r), 2),
                }

            # 2. resolves/s with 100 in flight (two load processes of 50 each)
            q: Any = mp.Queue()
            subject = conn.subjects.resolve(TENANT, "svc100")
            loads = [mp.Process(target=_resolve_load, args=(server.url, subject, req, 50, seconds, q))
                     for _ in range(2)]
            for p in loads:
                p.start()
            total = sum(q.get(timeout=seconds + 60) for _ in loads)
            for p in loads:
                p.join(10)
            results["resolves_per_s_100_inflight"] = round(total / seconds)

            # 3. announces/s with 100 in flight, distinct instances
            subject = conn.subjects.announce(TENANT, "reg")
            failures = 0

            async def announce_one(k: int) -> None:
                nonlocal failures
                inst = Instance(id=f"r{k}", address="10.1.0.1", port=1 + k % 60000, ttl=300, seq=1)
                try:
                    decode_reply((await conn.nc.request(subject, encode(inst), timeout=10)).data, AnnounceAck)
                except DiscoError:
                    failures += 1

            cpu0 = cpu_seconds(agg.pid)
            elapsed = await in_flight(announces_n, 100, announce_one)
            results["announces_per_s_100_inflight"] = round(announces_n / elapsed)
            results["aggregator_cpu_ms_per_announce"] = round((cpu_seconds(agg.pid) - cpu0) / announces_n * 1000, 3)
            results["announce_failures"] = failures

            async def raw_ack_one(k: int) -> None:
                await conn.nc.request("raw.ack", b"x" * 160, timeout=10)

            results["raw_acks_per_s_100_inflight"] = round(announces_n / await in_flight(announces_n, 100, raw_ack_one))

            serial_n_reg = max(200, announces_n // 10)
            t0 = time.perf_counter()
            for k in range(serial_n_reg):
                inst = Instance(id=f"s{k}", address="10.1.0.2", port=1 + k, ttl=300, seq=1)
                decode_reply((await conn.nc.request(subject, encode(inst), timeout=10)).data, AnnounceAck)
            results["announces_per_s_serial"] = round(serial_n_reg / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            for _ in range(serial_n_reg):
                await conn.nc.request("raw.ack", b"x" * 160, timeout=10)
            results["raw_acks_per_s_serial"] = round(serial_n_reg / (time.perf_counter() - t0))

            # 4. announce start -> the `added` change at a watcher (the live subject bus.watch follows)
            lat = await announce_until_seen(conn, conn.subjects.live(TENANT, "ev"), "ev", events_n)
            results["event_latency"] = {"p50_ms": round(statistics.median(lat), 3), "p99_ms": round(pct(lat, 0.99), 3)}

            lat = await two_hops(conn, "rawrelay", events_n)
            results["raw_two_hop"] = {"p50_ms": round(statistics.median(lat), 3), "p99_ms": round(pct(lat, 0.99), 3)}

            # 5. crash -> expired at ttl 2 s: heartbeats stop at a recorded moment, no bye
            ids = [f"x{k}" for k in range(10)]
            expired_at: dict[str, float] = {}

            async def on_removed(msg: Any) -> None:
                ev = decode(msg.data, ChangeEvent)
                if ev.type == "removed" and ev.reason == "expired":
                    expired_at[ev.instance.id] = time.monotonic()

            sub = await conn.nc.subscribe(conn.subjects.changes(TENANT, "crash"), cb=on_removed)
            for iid in ids:
                inst = Instance(id=iid, address="10.3.0.1", port=1, ttl=2, seq=1)
                await conn.nc.request(conn.subjects.announce(TENANT, "crash"), encode(inst), timeout=10)
            hb_subject = conn.subjects.hb(TENANT, "crash")
            last_beat: dict[str, float] = {}
            # beat every ttl/3 for a while, then each instance "crashes" (stops beating) at a staggered moment
            crash_at = {iid: time.monotonic() + 1.0 + 0.2 * k for k, iid in enumerate(ids)}
            end = max(crash_at.values())
            while time.monotonic() < end:
                for iid in ids:
                    if time.monotonic() < crash_at[iid]:
                        await conn.nc.publish(hb_subject, encode(Heartbeat(id=iid, seq=1)))
                        last_beat[iid] = time.monotonic()
                await anyio.sleep(0.2)
            with anyio.fail_after(15):
                while len(expired_at) < len(ids):
                    await anyio.sleep(0.05)
            await sub.unsubscribe()
            since_beat = [expired_at[i] - last_beat[i] for i in ids]
            results["expiry_ttl2"] = {"p50_s": round(statistics.median(since_beat), 3),
                                      "max_s": round(max(since_beat), 3)}
            await conn.close()
        finally:
            for p in procs:
                p.terminate()
            agg.terminate()
            try:
                agg.wait(10)
            except subprocess.TimeoutExpired:
                agg.kill()
            server.stop()
    return results


def targets(results: dict[str, Any]) -> dict[str, bool]:
    r10, r100 = results["resolve_10"], results["resolve_100"]
    t = {
        "resolve p50 <= 1.3x raw (100 instances)": r100["ratio_p50"] <= 1.3,
        "resolve p50 <= 1.3x raw (10 instances)": r10["ratio_p50"] <= 1.3,
        "resolve p99 <= 1 ms (100 instances)": r100["p99_ms"] <= 1.0,
        "announce -> event p99 <= 2x the two-hop raw floor":
            results["event_latency"]["p99_ms"] <= 2 * results["raw_two_hop"]["p99_ms"],
        "expiry <= ttl + 0.3 s (ttl 2 s)": results["expiry_ttl2"]["max_s"] <= 2.3,
    }
    etcd = results.get("etcd")
    if etcd:
        t["registrations/s (100 in flight) >= 2x etcd with a lease each"] = (
            results["announces_per_s_100_inflight"] >= 2 * etcd["registrations_per_s_100_inflight"])
        t["announce -> event p99 <= etcd's"] = results["event_latency"]["p99_ms"] <= etcd["event_latency"]["p99_ms"]
        t["lookup p99 (100 instances) <= etcd's"] = r100["p99_ms"] <= etcd["lookup_100"]["p99_ms"]
    return t


def header() -> str:
    version = subprocess.run([find_nats_server(), "--version"], capture_output=True, text=True).stdout.strip()
    return (f"# {' '.join([Path(sys.executable).name, *sys.argv])}\n# {version}, python {platform.python_version()}, "
            f"{os.cpu_count()} cores shared by nats-server, the aggregator, the raw responder and the clients")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small counts, for a smoke run")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-etcd", action="store_true", help="skip the etcd column")
    ap.add_argument("--registrations", type=int, default=20_000,
                    help="registrations with 100 in flight, for disco, etcd and the floor alike (a few seconds "
                         "each, so that one hiccup does not decide the ratio)")
    a = ap.parse_args()
    results = anyio.run(run, a.quick, a.registrations)
    if not a.no_etcd:
        from bench_etcd import etcd_binary, etcd_server, run_etcd

        if etcd_binary() is None:
            print("# etcd is not installed (scripts/system_deps.sh): no etcd column", file=sys.stderr)
        else:
            with etcd_server() as port:
                results["etcd"] = anyio.run(lambda: run_etcd(
                    port, serial_n=300 if a.quick else 2000, regs_n=1000 if a.quick else a.registrations,
                    events_n=200 if a.quick else 3000))
    results["targets"] = targets(results)
    if a.json:
        print(json.dumps(results, indent=2))
        return 0
    print(header())
    for n in ("10", "100"):
        r = results[f"resolve_{n}"]
        print(f"serial resolve, {n:>3} instances ({r['reply_bytes']} B): p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms   "
              f"raw floor p50 {r['raw_p50_ms']} ms  p99 {r['raw_p99_ms']} ms   ratio {r['ratio_p50']}x")
    print(f"resolves/s, 100 instances, 100 in flight: {results['resolves_per_s_100_inflight']}")
    x = results["expiry_ttl2"]
    print(f"last heartbeat -> expired (ttl 2 s):      p50 {x['p50_s']} s  max {x['max_s']} s")
    print(f"aggregator CPU per announce:              {results['aggregator_cpu_ms_per_announce']} ms"
          f" ({results['announce_failures']} announces failed)")
    etcd = results.get("etcd", {})

    def cell(v: Any) -> str:
        if isinstance(v, dict):
            return f"{v['p50_ms']} / {v['p99_ms']} ms"
        return "-" if v is None else f"{v:,}"

    rows = [
        ("registrations/s, 100 in flight", results["announces_per_s_100_inflight"],
         etcd.get("registrations_per_s_100_inflight"), results["raw_acks_per_s_100_inflight"]),
        ("registrations/s, serial", results["announces_per_s_serial"], etcd.get("registrations_per_s_serial"),
         results["raw_acks_per_s_serial"]),
        ("announce start -> event at a watcher, p50 / p99", results["event_latency"], etcd.get("event_latency"),
         results["raw_two_hop"]),
        ("lookup of a 100-instance service, serial p50 / p99",
         {"p50_ms": results["resolve_100"]["p50_ms"], "p99_ms": results["resolve_100"]["p99_ms"]},
         etcd.get("lookup_100"),
         {"p50_ms": results["resolve_100"]["raw_p50_ms"], "p99_ms": results["resolve_100"]["raw_p99_ms"]}),
    ]
    print()
    print("| | disco | etcd 3.4 (lease per instance) | raw NATS floor |")
    print("|---|---|---|---|")
    for name, d, e, r in rows:
        print(f"| {name} | {cell(d)} | {cell(e)} | {cell(r)} |")
    print()
    for name, ok in results["targets"].items():
        print(f"  {'PASS' if ok else 'MISS'}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
