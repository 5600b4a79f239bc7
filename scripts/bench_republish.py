"""The change's two paths to a watcher, side by side with the floors (README, Performance).

    python scripts/bench_republish.py [--count 1000] [--rounds 3]

Starts nats-server and the aggregator as ``scripts/bench.py`` does. The aggregator has the bucket's stream
republish each stored write (``$KV.<bucket>.<t>.<s>.<i>`` -> ``<prefix>.<t>.live.<s>.<i>``, with its
``Disco-Event`` header and ``Nats-Sequence`` = revision) the moment it is stored: what watchers follow (bus.live).
Prints, for each round of one run, announce start -> (a) the republished write on the live subject, (b) the change
event the writer publishes on the change subject after the store's acknowledgement (what watchers followed before;
the durable change stream's copy), each with a watcher of its own, (c) the raw two-hop floor of
``scripts/bench.py``, and (d) that floor with a relay that first stores each message in a stream (an acknowledged
publish with a compare-and-set header, as the aggregator's KV write) and then relays it into a stream-captured
subject, as the aggregator's event: the least a writer in Python that publishes after the store's acknowledgement
can take.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import PREFIX, ROOT, _raw_responder, announce_until_seen, mp, until_answering
from benchkit import pct, two_hops

from bus.connection import connect
from services.aggregator.direct import publish, subscribe_direct, write_now
from services.aggregator.jsacks import AckedPublisher
from services.natsserver import NatsServer

TENANT = "bench"


def _store_relay(url: str, ready: Any) -> None:
    """(d): a relay that stores each message (acked, compare-and-set on a fresh subject) before relaying it."""

    async def main() -> None:
        conn = await connect(url, prefix=PREFIX, name="store-relay")
        acked = AckedPublisher(conn.nc)
        await conn.js.add_stream(name="STORE_RELAY", subjects=["storerelay.kept.>"])
        await conn.js.add_stream(name="STORE_RELAY_OUT", subjects=["storerelay.out"])
        count = 0

        def relay(msg: Any) -> None:
            nonlocal count
            count += 1
            tg.start_soon(one, count, msg.data)

        async def one(k: int, data: bytes) -> None:
            await acked.publish(f"storerelay.kept.{k}", data, {"Nats-Expected-Last-Subject-Sequence": "0"}, 5)
            await publish(conn.nc, "storerelay.out", data, reply=conn.nc.new_inbox())
            write_now(conn.nc)

        async with anyio.create_task_group() as tg:
            await subscribe_direct(conn.nc, "storerelay.in", relay)
            await conn.nc.flush()
            ready.set()
            await anyio.sleep_forever()

    anyio.run(main)


def summary(values: list[float]) -> str:
    return f"p50 {statistics.median(values):.3f}  p99 {pct(values, 0.99):.3f} ms"


async def run(count: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(Path(tmp) / "nats", name="republish")
        server.start()
        agg = subprocess.Popen(  # noqa: ASYNC220 - started once, before measuring
            [sys.executable, "-m", "services", "aggregator", "--nats", server.url, "--prefix", PREFIX],
            cwd=ROOT, stderr=subprocess.DEVNULL,
        )
        raw: Any = None
        try:
            conn = await connect(server.url, prefix=PREFIX, name="bench-republish")
            await until_answering(conn)
            ready = mp.Event()
            raw = mp.Process(target=_raw_responder, args=(server.url, {}, ready), daemon=True)
            raw.start()
            ready.wait(20)

            ready = mp.Event()
            store_relay = mp.Process(target=_store_relay, args=(server.url, ready), daemon=True)
            store_relay.start()
            ready.wait(20)
            for r in range(rounds):  # each path with a watcher of its own: one message per announce to handle
                event = await announce_until_seen(conn, conn.subjects.changes(TENANT, f"ev{r}"), f"ev{r}", count)
                republished = await announce_until_seen(conn, conn.subjects.live(TENANT, f"rp{r}"), f"rp{r}", count)
                floor = await two_hops(conn, "rawrelay", count)
                stored = await two_hops(conn, "storerelay", count)
                fp = pct(floor, 0.99)
                print(f"round {r + 1}")
                print(f"  announce start -> live subject (republished write): {summary(republished)}")
                print(f"  announce start -> change subject (writer's event):  {summary(event)}")
                print(f"  raw two-hop floor:                                  {summary(floor)}")
                print(f"  two hops, the relay storing first:                  {summary(stored)}")
                print(f"  p99 / floor p99: live {pct(republished, 0.99) / fp:.2f}x, change subject "
                      f"{pct(event, 0.99) / fp:.2f}x, storing relay {pct(stored, 0.99) / fp:.2f}x", flush=True)
            store_relay.terminate()
            await conn.close()
        finally:
            if raw is not None:
                raw.terminate()
            agg.terminate()
            try:
                agg.wait(10)
            except subprocess.TimeoutExpired:
                agg.kill()
            server.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    anyio.run(run, args.count, args.rounds)
