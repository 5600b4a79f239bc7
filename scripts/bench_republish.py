"""Prototype measurement (not adopted; README, Performance): JetStream RePublish on the live-view bucket.

    python scripts/bench_republish.py [--count 1000]

Starts nats-server and the aggregator as ``scripts/bench.py`` does, then adds a RePublish of the bucket's stream
(``$KV.<bucket>.<t>.<s>.<i>`` -> ``<prefix>.<t>.live.<s>.<i>``) to the running bucket, so that the server republishes
each stored write (value or delete marker, with its ``Disco-Event`` header and ``Nats-Sequence`` = revision) the
moment it is stored. Prints, in one run, announce start -> (a) the change event on the change subject (what watchers
get today), (b) the republished write, (c) the raw two-hop floor of ``scripts/bench.py``, and (d) that floor with a
relay that first stores each message in a stream (an acknowledged publish with a compare-and-set header, as the
aggregator's KV write) and then relays it into a stream-captured subject, as the aggregator's event: the least a
store-before-visible writer in Python can take, so (a) minus (d) is what the aggregator's own work costs.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from nats.js import api

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import PREFIX, ROOT, _raw_responder, mp, until_answering
from benchkit import pct, two_hops

from bus.codec import decode, encode
from bus.connection import connect
from bus.models import ChangeEvent, Instance
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


async def run(count: int) -> None:
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
            info = await conn.js.stream_info("KV_disco_view")
            info.config.republish = api.RePublish(
                src="$KV.disco_view.*.*.*", dest=f"{PREFIX}.{{{{wildcard(1)}}}}.live.{{{{wildcard(2)}}}}."
                                               f"{{{{wildcard(3)}}}}")
            await conn.js.update_stream(info.config)
            ready = mp.Event()
            raw = mp.Process(target=_raw_responder, args=(server.url, {}, ready), daemon=True)
            raw.start()
            ready.wait(20)

            arrived: dict[tuple[str, str], float] = {}
            want = ""
            both = anyio.Event()

            def seen(kind: str, iid: str) -> None:
                arrived[(kind, iid)] = time.perf_counter()
                if iid == want and ("event", want) in arrived and ("republished", want) in arrived:
                    both.set()

            async def on_event(msg: Any) -> None:
                seen("event", decode(msg.data, ChangeEvent).instance.id)

            async def on_republished(msg: Any) -> None:
                assert (msg.headers or {}).get("Disco-Event"), "the write's event header is republished"
                seen("republished", decode(msg.data, Instance).id)

            await conn.nc.subscribe(conn.subjects.changes(TENANT, "ev"), cb=on_event)
            await conn.nc.subscribe(f"{PREFIX}.{TENANT}.live.ev.*", cb=on_republished)
            await conn.nc.flush()
            event, republished = [], []
            for k in range(count):
                want = f"e{k}"
                both = anyio.Event()
                inst = Instance(id=want, address="10.2.0.1", port=1, ttl=300, seq=1)
                t0 = time.perf_counter()
                await conn.nc.request(conn.subjects.announce(TENANT, "ev"), encode(inst), timeout=10)
                with anyio.fail_after(10):
                    await both.wait()
                event.append((arrived[("event", want)] - t0) * 1000)
                republished.append((arrived[("republished", want)] - t0) * 1000)

            floor = await two_hops(conn, "rawrelay", count)
            ready = mp.Event()
            store_relay = mp.Process(target=_store_relay, args=(server.url, ready), daemon=True)
            store_relay.start()
            ready.wait(20)
            stored = await two_hops(conn, "storerelay", count)
            store_relay.terminate()
            print(f"announce start -> change event (today):  {summary(event)}")
            print(f"announce start -> republished KV write:  {summary(republished)}")
            print(f"raw two-hop floor:                       {summary(floor)}")
            print(f"two hops, the relay storing first:       {summary(stored)}")
            print(f"p99 / floor p99: today {pct(event, 0.99) / pct(floor, 0.99):.2f}x, "
                  f"republished {pct(republished, 0.99) / pct(floor, 0.99):.2f}x, "
                  f"storing relay {pct(stored, 0.99) / pct(floor, 0.99):.2f}x")
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
    anyio.run(run, ap.parse_args().count)
