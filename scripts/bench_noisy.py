"""Noisy neighbour: a quiet tenant's resolve latency before and during a flood by another tenant (from several
processes), and whether the quiet tenant lost anything (false expiries, resolve timeouts). Starts its own
nats-server and aggregator process. Goal: the quiet tenant's resolve p99 during the flood <= 50 ms, none timed out.

    python scripts/bench_noisy.py [--seconds 8] [--kinds resolve] [--flooders 2] [--floor]

With ``--floor`` the same flood is then sent to a subject prefix nobody serves (the server discards it, the
aggregator never sees it) while the quiet tenant samples again: what the flooders and the server alone cost on this
machine, in the same run (``p99_vs_floor``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchkit import pct  # noqa: E402

from bus.announce import announce  # noqa: E402
from bus.client import resolve  # noqa: E402
from bus.connection import connect  # noqa: E402
from bus.errors import DiscoError, Timeout  # noqa: E402
from services.natsserver import NatsServer  # noqa: E402


async def sample(conn, seconds: float, out: list[float], errors: list[str]) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        try:
            await resolve(conn, "api", timeout=2.0)
            out.append((time.perf_counter() - t0) * 1000)
        except Timeout:
            errors.append("timeout")
        except DiscoError as exc:
            errors.append(exc.code)
        await anyio.sleep(0.01)


def start_floods(url: str, seconds: float, kinds: str, flooders: int, prefix: str) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "flood.py"), "--nats", url, "--prefix", prefix, "--tenant",
             "noisy", "--seconds", str(seconds), "--kinds", kinds], stdout=subprocess.PIPE, text=True)
        for _ in range(flooders)
    ]


def finish(floods: list[subprocess.Popen[str]]) -> list[dict[str, object]]:
    stats = []
    for flood in floods:
        out, _ = flood.communicate(timeout=60)
        stats.append(json.loads(out.strip().splitlines()[-1]))
    return stats


def summary(values: list[float], errors: list[str]) -> dict[str, object]:
    return {"n": len(values), "p50": round(statistics.median(values), 3), "p99": round(pct(values, 0.99), 3),
            "max": round(max(values), 3), "errors": errors}


async def main(seconds: float, kinds: str, flooders: int, floor: bool) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer(Path(tmp) / "nats", name="bench")
        server.start()
        agg = subprocess.Popen(  # noqa: ASYNC220 - started once, before measuring
            [sys.executable, "-m", "services", "aggregator", "--nats", server.url], cwd=ROOT, stderr=subprocess.DEVNULL
        )
        try:
            conn = await connect(server.url, tenant="quiet")
            with anyio.fail_after(20):
                while True:
                    try:
                        await resolve(conn, "api")
                        break
                    except DiscoError:
                        await anyio.sleep(0.1)
            before: list[float] = []
            during: list[float] = []
            errors_before: list[str] = []
            errors_during: list[str] = []
            async with (
                announce(conn, "api", address="10.0.0.1", port=1, ttl=2),
                announce(conn, "api", address="10.0.0.2", port=1, ttl=2),
            ):
                await sample(conn, 3.0, before, errors_before)
                floods = start_floods(server.url, seconds, kinds, flooders, "disco")
                await sample(conn, seconds, during, errors_during)
                flood_stats = finish(floods)
                alive = len((await resolve(conn, "api", timeout=30)).instances)
                floor_ms: list[float] = []
                floor_errors: list[str] = []
                if floor:
                    floods = start_floods(server.url, seconds, kinds, flooders, "nobody")
                    await sample(conn, seconds, floor_ms, floor_errors)
                    finish(floods)
            stats_msg = await conn.nc.request("disco._sys.stats", b"", timeout=2)
            import msgpack

            metrics = msgpack.unpackb(stats_msg.data)["metrics"]
            await conn.close()
        finally:
            agg.terminate()
            agg.wait(10)
            server.stop()
    p99 = pct(during, 0.99)
    extra: dict[str, object] = {}
    if floor_ms:
        extra = {"quiet_resolve_ms_floor": summary(floor_ms, floor_errors),
                 "p99_vs_floor": round(p99 / pct(floor_ms, 0.99), 2)}
    return {
        "goal_met": p99 <= 50.0 and not errors_during,
        "flood": {"processes": flooders, "kinds": kinds, "rate": sum(int(f["rate"]) for f in flood_stats),
                  "each": flood_stats},
        "quiet_resolve_ms_before": summary(before, errors_before),
        "quiet_resolve_ms_during": summary(during, errors_during),
        **extra,
        "quiet_instances_alive_after": alive,
        "quiet_expired": metrics.get("expired", {}).get("quiet", 0),
        "aggregator": {k: v for k, v in metrics.items() if k in (
            "reads_dropped", "reads_shed", "read_lane_resets", "read_pauses", "overloaded", "slow_consumer",
            "heartbeats_dropped",
            "ctl_reannounce", "refused")},
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--kinds", default="resolve", help="what the flooders send: announce,hb,resolve")
    ap.add_argument("--flooders", type=int, default=2, help="flooding processes")
    ap.add_argument("--floor", action="store_true", help="then the same flood to a prefix nobody serves")
    a = ap.parse_args()
    print(f"# {' '.join(sys.argv)}  (python {sys.version.split()[0]}, {os.cpu_count()} cores shared by the server, "
          "the aggregator, the flooder and the quiet client)")
    print(json.dumps(anyio.run(main, a.seconds, a.kinds, a.flooders, a.floor), indent=2))
