"""How long announces stall after a single-server restart (issue 8.5), and how they are answered meanwhile.

    python scripts/restart_stall.py [--rounds 5]

Starts its own nats-server (JetStream, temp dir) and the aggregator (``disco aggregator``) in its own process, then
for each round: restarts the server (stop, start), waits for this client's own reconnect, and sends announces one
at a time (2 s timeout, as bus.announce) until three are acknowledged. It prints, per round, the time from the
server accepting connections again to the first acknowledged announce, the longest single announce, and what the
others got (ack / unavailable / no responders / timeout). A timeout is a silent stall: there should be none.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import anyio
import nats.errors

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bus.codec import decode_reply, encode  # noqa: E402
from bus.connection import connect  # noqa: E402
from bus.errors import DiscoError  # noqa: E402
from bus.models import AnnounceAck, Instance  # noqa: E402
from services.natsserver import NatsServer  # noqa: E402

PREFIX = "stall"
_RUN = "import sys; from services.cli import main; sys.argv[0] = 'disco'; main()"


def spawn_aggregator(url: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", _RUN, "aggregator", "--nats", url, "--prefix", PREFIX],
            env={**os.environ, "DISCO_FOLLOW_TENANTS": "false"}, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
        )


async def main(rounds: int, preload: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(Path(tmp) / "nats", name="stall")
        server.start()
        log = Path(tmp) / "agg.log"
        agg = spawn_aggregator(server.url, log)
        try:
            conn = await connect(server.url, tenant="acme", prefix=PREFIX)
            reconnects = 0

            async def on_reconnect() -> None:
                nonlocal reconnects
                reconnects += 1

            conn.on_reconnect(on_reconnect)
            while b"aggregator ready" not in log.read_bytes():
                await anyio.sleep(0.05)
            async with anyio.create_task_group() as tg:  # a bigger store recovers more slowly
                limiter = anyio.CapacityLimiter(64)

                async def one(k: int) -> None:
                    async with limiter:
                        inst = Instance(id=f"p{k}", address="10.0.0.2", port=1 + k % 60000, ttl=300, seq=1)
                        await conn.nc.request(conn.subjects.announce("acme", "pre"), encode(inst), timeout=10)

                for k in range(preload):
                    tg.start_soon(one, k)
            print(f"{preload} instances in the view")
            print("round  restart->first ack (s)  longest announce (s)  outcomes")
            for r in range(1, rounds + 1):
                server.stop()
                server.start()
                restarted = time.monotonic()
                while reconnects < r or not conn.nc.is_connected:
                    await anyio.sleep(0.005)
                outcomes: Counter[str] = Counter()
                first_ack: float | None = None
                longest = 0.0
                k = 0
                while outcomes["ack"] < 3:
                    k += 1
                    inst = Instance(id=f"r{r}-{k}", address="10.0.0.1", port=1 + k % 60000, ttl=300, seq=1)
                    started = time.monotonic()
                    try:
                        msg = await conn.nc.request(conn.subjects.announce("acme", "svc"), encode(inst), timeout=2)
                        decode_reply(msg.data, AnnounceAck)
                        outcomes["ack"] += 1
                        first_ack = first_ack or time.monotonic() - restarted
                    except DiscoError as exc:
                        outcomes[exc.code] += 1
                    except nats.errors.NoRespondersError:
                        outcomes["no responders"] += 1
                    except nats.errors.TimeoutError:
                        outcomes["timeout"] += 1
                    longest = max(longest, time.monotonic() - started)
                    if outcomes["ack"] == 0:
                        await anyio.sleep(0.02)
                print(f"{r:5d}  {first_ack or 0:22.3f}  {longest:20.3f}  {dict(outcomes)}")
            await conn.close()
        finally:
            agg.terminate()
            agg.wait(10)
            server.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--preload", type=int, default=0, help="instances announced before the first restart")
    args = ap.parse_args()
    anyio.run(main, args.rounds, args.preload)
