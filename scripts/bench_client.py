"""Client-side benchmarks: cached picks, resolver update latency, durable worker throughput. Prints a table.

    .venv/bin/python scripts/bench_client.py [--instances 10] [--picks 200000] [--updates 300] [--events 6000]

It starts its own nats-server (JetStream, temporary directory, free loopback port) and an aggregator as a
subprocess (``python -m services aggregator``), then measures:

- **pick**: the latency of one ``Resolver.pick()`` per strategy (and of a ``lease()`` enter+exit) over a cache of
  ``--instances`` instances, each call timed alone (the ~0.1 µs of the two clock reads included), and the mean
  of a tight loop; target p50 under 5 µs.
- **update**: from the start of an announce request (a new instance) to the moment a pick can return it (the
  resolver's change callback sees it in the candidates); target p99 under 10 ms.
- **workers**: events/s handled by a durable worker group of one and of three processes, from the first event
  handled to the last, over ``--events`` events already in the stream; beside it a raw JetStream pull consumer
  (fetch 16 + ack, no decoding) in one process, the ceiling the worker is measured against.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from anyio.streams.buffered import BufferedByteReceiveStream
from benchkit import pct

from bus.client import request, snapshot
from bus.codec import encode
from bus.connection import Connection, connect
from bus.errors import NoAggregator, Timeout
from bus.models import AnnounceAck, Bye, Instance
from bus.resolver import Strategy, resolver
from bus.subjects import changes_stream_name
from services.natsserver import NatsServer

PREFIX = "bench"
STREAM = "BENCH_CHANGES"
TENANT = "acme"

WORKER = """
import json, sys, time, anyio
from bus.connection import connect
from bus.workers import worker

url, prefix, stream, tenant, group, mode = sys.argv[1:7]
first = last = 0.0
count = 0

async def handle(ev, d):
    global first, last, count
    now = time.perf_counter()
    first = first or now
    last = now
    count += 1

async def raw(conn, stream_name):
    from nats.js import api
    global first, last, count
    js = conn.js
    await js.add_consumer(stream_name, api.ConsumerConfig(name=group, durable_name=group,
                          ack_policy=api.AckPolicy.EXPLICIT, deliver_policy=api.DeliverPolicy.ALL))
    psub = await js.pull_subscribe_bind(durable=group, stream=stream_name)
    print("ready", flush=True)
    while True:
        try:
            msgs = await psub.fetch(16, timeout=1.0)
        except TimeoutError:
            continue
        for m in msgs:
            now = time.perf_counter()
            first = first or now
            last = now
            count += 1
            await m.ack()

async def main():
    conn = await connect(url, tenant=tenant, prefix=prefix)
    try:
        with anyio.open_signal_receiver(15) as signals:
            async with anyio.create_task_group() as tg:
                async def stop():
                    async for _ in signals:
                        tg.cancel_scope.cancel()
                tg.start_soon(stop)
                if mode == "raw":
                    await raw(conn, f"{stream}_{tenant}")
                else:
                    async with worker(conn, group, handle, stream_prefix=stream):
                        print("ready", flush=True)
                        await anyio.sleep_forever()
    finally:
        print(json.dumps({"count": count, "first": first, "last": last}), flush=True)
        await conn.close()

anyio.run(main)
"""



async def wait_aggregator(conn: Connection) -> None:
    with anyio.fail_after(30):
        while True:
            try:
                await snapshot(conn, timeout=0.5)
                return
            except (NoAggregator, Timeout):
                await anyio.sleep(0.05)


async def put(conn: Connection, service: str, iid: str, seq: int = 1, **fields: Any) -> int:
    inst = Instance(id=iid, address="127.0.0.1", port=1000 + seq, seq=seq, ttl=300.0, **fields)
    ack = await request(conn, conn.subjects.announce(TENANT, service), encode(inst), AnnounceAck, 10)
    return ack.revision


# -- picks -------------------------------------------------------------------------------------------------------
async def bench_picks(conn: Connection, instances: int, picks: int) -> list[list[str]]:
    for n in range(instances):
        await put(conn, "picks", f"p{n}", weight=1 + (n * 10) % 1000, zone="z1" if n % 2 else "z2")
    rows = []
    clock = time.perf_counter_ns
    for strategy in Strategy:
        async with resolver(conn, "picks", strategy=strategy, prefer_zone="z1") as r:
            assert len(r.instances) == instances
            pick = r.pick
            samples = []
            for _ in range(picks):
                t0 = clock()
                pick()
                samples.append((clock() - t0) / 1000)
            t0 = clock()
            for _ in range(picks):
                pick()
            mean = (clock() - t0) / 1000 / picks
            rows.append([f"pick {strategy.value}", f"{pct(samples, 0.5):.2f} µs", f"{pct(samples, 0.99):.2f} µs",
                         f"{mean:.2f} µs", f"{picks} picks, {len(r.candidates)} candidates of {instances}"])
            if strategy is Strategy.least_outstanding:
                samples = []
                for _ in range(picks // 4):
                    t0 = clock()
                    with r.lease():
                        pass
                    samples.append((clock() - t0) / 1000)
                rows.append(["lease enter+exit (least_outstanding)", f"{pct(samples, 0.5):.2f} µs",
                             f"{pct(samples, 0.99):.2f} µs", "", f"{picks // 4} leases"])
    return rows


# -- update latency ----------------------------------------------------------------------------------------------
async def bench_updates(conn: Connection, writer: Connection, updates: int) -> list[list[str]]:
    latencies: list[float] = []
    async with resolver(conn, "updates") as r:
        seen = anyio.Event()
        target = ""
        seen_at = 0.0

        def check() -> None:
            nonlocal seen_at
            if not seen.is_set() and any(i.id == target for i in r.candidates):
                seen_at = time.perf_counter()
                seen.set()

        remove = r.on_change(check)
        for n in range(updates):
            seen = anyio.Event()
            target = f"u{n}"
            t0 = time.perf_counter()
            await put(writer, "updates", target)
            with anyio.fail_after(10):
                await seen.wait()
            assert r.pick()  # a pick right now can return it
            latencies.append((seen_at - t0) * 1000)
            await request(writer, writer.subjects.bye(TENANT, "updates"), encode(Bye(id=target)), AnnounceAck)
        remove()
    return [["update: announce → pick sees it", f"{pct(latencies, 0.5):.2f} ms", f"{pct(latencies, 0.99):.2f} ms",
             f"{sum(latencies) / len(latencies):.2f} ms", f"{updates} new instances, one at a time"]]


# -- worker throughput ---------------------------------------------------------------------------------------------
async def fill_stream(conn: Connection, events: int) -> None:
    instances = events // 4
    limit = anyio.Semaphore(128)

    async def one(n: int) -> None:
        async with limit:
            for seq in (1, 2, 3):
                await put(conn, "work", f"w{n}", seq=seq)
            await request(conn, conn.subjects.bye(TENANT, "work"), encode(Bye(id=f"w{n}")), AnnounceAck, 10)

    async with anyio.create_task_group() as tg:
        for n in range(instances):
            tg.start_soon(one, n)


async def run_group(url: str, group: str, processes: int, mode: str, events: int, conn: Connection) -> float:
    procs = [await anyio.open_process([sys.executable, "-c", WORKER, url, PREFIX, STREAM, TENANT, group, mode],
                                      stderr=subprocess.DEVNULL) for _ in range(processes)]
    outs = [BufferedByteReceiveStream(p.stdout) for p in procs if p.stdout is not None]
    try:
        for out in outs:
            with anyio.fail_after(30):
                assert (await out.receive_until(b"\n", 1000)).strip() == b"ready"
        stream = changes_stream_name(STREAM, TENANT)
        with anyio.fail_after(120):
            while True:
                info = await conn.js.consumer_info(stream, group)
                if info.num_pending == 0 and info.num_ack_pending == 0 and info.delivered.stream_seq >= events:
                    break
                await anyio.sleep(0.02)
        for p in procs:
            p.terminate()
        results = []
        for out in outs:
            with anyio.fail_after(30):
                results.append(json.loads(await out.receive_until(b"\n", 10_000)))
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
            await p.wait()
            await p.aclose()
    handled = sum(r["count"] for r in results)
    span = max(r["last"] for r in results if r["count"]) - min(r["first"] for r in results if r["count"])
    return handled / span if span > 0 else float("inf")


async def bench_workers(url: str, conn: Connection, events: int) -> list[list[str]]:
    await fill_stream(conn, events)
    info = await conn.js.stream_info(changes_stream_name(STREAM, TENANT))
    total = int(info.state.messages)
    rows = []
    for label, processes, mode in (("raw JetStream pull, 1 process", 1, "raw"),
                                   ("durable worker group, 1 process", 1, "worker"),
                                   ("durable worker group, 3 processes", 3, "worker")):
        rate = await run_group(url, f"g-{mode}-{processes}", processes, mode, total, conn)
        rows.append([f"workers: {label}", f"{rate:,.0f} ev/s", "", "", f"{total} events in the stream"])
    base = float(rows[0][1].split()[0].replace(",", ""))
    for row in rows[1:]:
        row[3] = f"{float(row[1].split()[0].replace(',', '')) / base:.2f}× raw"
    return rows


def table(rows: list[list[str]]) -> str:
    headers = ["measure", "p50", "p99", "mean / ratio", "notes"]
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def fmt(r: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()

    return "\n".join([fmt(headers), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)])


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="disco-bench-") as tmp:
        server = NatsServer(Path(tmp) / "nats", name="bench")
        server.start()
        agg = await anyio.open_process(
            [sys.executable, "-m", "services", "aggregator", "--nats", server.url, "--prefix", PREFIX,
             "--bucket", "bench_view", "--stream", STREAM],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            conn = await connect(server.url, tenant=TENANT, prefix=PREFIX)
            writer = await connect(server.url, tenant=TENANT, prefix=PREFIX)
            await wait_aggregator(conn)
            rows = await bench_picks(conn, args.instances, args.picks)
            rows += await bench_updates(conn, writer, args.updates)
            rows += await bench_workers(server.url, writer, args.events)
            await conn.close()
            await writer.close()
        finally:
            agg.terminate()
            with anyio.move_on_after(10):
                await agg.wait()
            if agg.returncode is None:
                agg.kill()
                await agg.wait()
            await agg.aclose()
            server.stop()
    print(table(rows))


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--instances", type=int, default=10, help="instances in the picked service")
    p.add_argument("--picks", type=int, default=200_000, help="timed picks per strategy")
    p.add_argument("--updates", type=int, default=300, help="timed announces for the update latency")
    p.add_argument("--events", type=int, default=6000, help="change events for the worker throughput")
    return p.parse_args(argv)


if __name__ == "__main__":
    anyio.run(main, parse(sys.argv[1:]))
