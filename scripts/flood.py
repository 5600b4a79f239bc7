"""A noisy tenant: publishes announces, heartbeats and resolves as fast as it can for a while, then prints how many
messages it sent (JSON on the last line). Used by the noisy-neighbour test and scripts/bench_noisy.py.

    python scripts/flood.py --nats URL --prefix disco --tenant noisy --seconds 5 [--kinds announce,hb,resolve]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bus.codec import encode
from bus.connection import connect
from bus.models import Heartbeat, Instance, ResolveRequest


async def flood(url: str, prefix: str, tenant: str, seconds: float, kinds: list[str]) -> dict[str, object]:
    conn = await connect(url, prefix=prefix, name="flood", pending_size=64 * 1024 * 1024)
    s = conn.subjects
    hb = encode(Heartbeat(ids=tuple(f"ghost{k}" for k in range(20))))
    res = encode(ResolveRequest())
    sent = {k: 0 for k in kinds}
    n = 0
    deadline = time.monotonic() + seconds
    started = time.monotonic()
    try:
        while time.monotonic() < deadline:
            for _ in range(200):
                for kind in kinds:
                    if kind == "hb":
                        await conn.nc.publish(s.hb(tenant, "spam"), hb)
                    elif kind == "resolve":
                        await conn.nc.publish(s.resolve(tenant, "spam"), res, reply=f"_INBOX.{tenant}.sink")
                    else:
                        inst = Instance(id=f"f{n % 5000}", address="10.9.9.9", port=1 + n % 60000, ttl=60, seq=n + 1)
                        await conn.nc.publish(s.announce(tenant, "spam"), encode(inst))
                    sent[kind] += 1
                    n += 1
            await conn.nc.flush(timeout=30)
    finally:
        elapsed = time.monotonic() - started
        await conn.close()
    return {"sent": sent, "total": n, "seconds": round(elapsed, 3), "rate": round(n / elapsed)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nats", required=True)
    ap.add_argument("--prefix", default="disco")
    ap.add_argument("--tenant", default="noisy")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--kinds", default="announce,hb,resolve")
    a = ap.parse_args()
    result = anyio.run(flood, a.nats, a.prefix, a.tenant, a.seconds, a.kinds.split(","))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
