"""Announces per second with 100 in flight, and whether every change event reached the tenant's stream.

    python scripts/bench_announce.py [--count 20000] [--aggregators 1]

Starts its own nats-server (JetStream, temp dir) and ``disco aggregator`` process(es), announces ``count`` distinct
instances with 100 requests in flight, and reports announces/s (acknowledgements; the events are published behind
the replies) and then how long until the change stream holds every one of them (each exactly once).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bus.codec import decode_reply, encode  # noqa: E402
from bus.connection import connect  # noqa: E402
from bus.models import AnnounceAck, Instance  # noqa: E402
from services.natsserver import NatsServer  # noqa: E402

PREFIX = "benchann"
_RUN = "import sys; from services.cli import main; sys.argv[0] = 'disco'; main()"


def spawn(url: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", _RUN, "aggregator", "--nats", url, "--prefix", PREFIX],
            env={**os.environ, "DISCO_FOLLOW_TENANTS": "false"}, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
        )


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def main(count: int, aggregators: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(Path(tmp) / "nats", name="benchann")
        server.start()
        logs = [Path(tmp) / f"agg{n}.log" for n in range(aggregators)]
        procs = [spawn(server.url, log) for log in logs]
        try:
            conn = await connect(server.url, tenant="acme", prefix=PREFIX)
            while not all(b"aggregator ready" in log.read_bytes() for log in logs):
                await anyio.sleep(0.05)
            subject = conn.subjects.announce("acme", "bench")
            limiter = anyio.CapacityLimiter(100)
            failures = 0

            async def one(k: int) -> None:
                nonlocal failures
                async with limiter:
                    inst = Instance(id=f"i{k}", address="10.0.0.1", port=1 + k % 60000, ttl=300, seq=1)
                    try:
                        decode_reply((await conn.nc.request(subject, encode(inst), timeout=10)).data, AnnounceAck)
                    except Exception:
                        failures += 1

            cpu0 = sum(cpu_seconds(p.pid) for p in procs)
            started = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for k in range(count):
                    tg.start_soon(one, k)
            elapsed = time.perf_counter() - started
            print(f"{count} announces, 100 in flight, {aggregators} aggregator(s): {count / elapsed:,.0f}/s "
                  f"({failures} failed)")
            stream = "DISCO_CHANGES_acme"
            while True:
                info = await conn.js.stream_info(stream)
                if info.state.messages >= count - failures:
                    break
                await anyio.sleep(0.05)
            print(f"change stream complete {time.perf_counter() - started - elapsed:.2f} s after the last ack: "
                  f"{info.state.messages} events for {count - failures} acknowledged announces")
            cpu = sum(cpu_seconds(p.pid) for p in procs) - cpu0
            print(f"aggregator CPU per announce (events included): {cpu / max(1, count - failures) * 1000:.3f} ms")
            await conn.close()
        finally:
            for p in procs:
                p.terminate()
                p.wait(10)
            server.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=20000)
    ap.add_argument("--aggregators", type=int, default=1)
    args = ap.parse_args()
    anyio.run(main, args.count, args.aggregators)
