"""What adding tenants costs the others, in operator mode (one NATS account per tenant, JWTs pushed at runtime).

    python scripts/bench_tenants.py [--existing 100] [--add 200] [--json]

Starts an operator-mode nats-server (what ``disco up --auth`` runs) and an aggregator in this process; connects
``--existing`` tenants, each with one instance, which resolve in a loop; measures their resolve latency first
with nothing else happening, then while ``--add`` tenants are added one after another (account push, change
stream created in the new account). Reports the add time per tenant, the others' errors and dropped connections
(both must be 0), and their resolve p50/p99 during the adds as a ratio to the quiet phase (same run, same
machine: the ratio matters, not the absolute figures on 2 shared cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchkit import pct  # noqa: E402

from bus.announce import announce  # noqa: E402
from bus.client import resolve  # noqa: E402
from bus.connection import Connection, connect  # noqa: E402
from services.aggregator import Aggregator, AggregatorSettings  # noqa: E402
from services.natsserver import NatsServer  # noqa: E402
from services.tenants import OperatorKeys, Quota, TenantAdmin, embedded_auth, write_creds  # noqa: E402
from services.tenants.hook import ADMIN_CREDS, AUTH_DIR  # noqa: E402
from services.tenants.operator import KEYS_FILE  # noqa: E402

PREFIX = "disco"



class Others:
    """The existing tenants, resolving in a loop; latencies are recorded per phase."""

    def __init__(self, conns: list[Connection]) -> None:
        self.conns = conns
        self.phase = "quiet"
        self.lat: dict[str, list[float]] = {"quiet": [], "adding": []}
        self.errors = 0
        self.stop = anyio.Event()

    async def loop(self, conn: Connection) -> None:
        while not self.stop.is_set():
            t0 = time.perf_counter()
            try:
                reply = await resolve(conn, "web", timeout=5)
                if len(reply.instances) != 1:
                    self.errors += 1
                self.lat[self.phase].append(time.perf_counter() - t0)
            except Exception:
                self.errors += 1
            await anyio.sleep(0.01)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="disco-bench-tenants-"))
    auth = embedded_auth(tmp, PREFIX)
    server = NatsServer(tmp, name="bench", extra_config=auth.server_config)
    server.start()
    try:
        admin_conn = await connect(server.url, prefix=PREFIX, creds=tmp / AUTH_DIR / ADMIN_CREDS)
        agg_conn = await connect(server.url, prefix=PREFIX, **auth.connect_options)
        agg = Aggregator(agg_conn, AggregatorSettings(nats_url=server.url, prefix=PREFIX, strict_replies=True))
        task = asyncio.create_task(agg.run())
        await agg.ready.wait()
        admin = TenantAdmin(admin_conn, OperatorKeys.load(tmp / AUTH_DIR / KEYS_FILE))
        conns: list[Connection] = []
        for i in range(args.existing):
            _, text = await admin.add(f"old{i:04d}")
            path = tmp / f"old{i}.creds"
            write_creds(path, text)
            conns.append(await connect(server.url, prefix=PREFIX, creds=path))
        others = Others(conns)
        add_times: list[float] = []
        async with anyio.create_task_group() as tg:
            regs = [await tg.start(_announced, c) for c in conns]
            for c in conns:
                tg.start_soon(others.loop, c)
            await anyio.sleep(args.quiet)
            others.phase = "adding"
            for i in range(args.add):
                t0 = time.perf_counter()
                await admin.add(f"new{i:04d}", Quota(max_streams=2, max_consumers=4, max_stream_bytes=1 << 20))
                add_times.append(time.perf_counter() - t0)
            others.stop.set()
            for r in regs:
                r.set()
        reconnects = sum(c.nc.stats["reconnects"] for c in conns)
        dropped = sum(1 for c in conns if not c.nc.is_connected) + reconnects
        quiet, adding = others.lat["quiet"], others.lat["adding"]
        result = {
            "existing_tenants": args.existing, "added_tenants": args.add,
            "add_ms_p50": round(pct(add_times, 0.5) * 1000, 2), "add_ms_p99": round(pct(add_times, 0.99) * 1000, 2),
            "add_total_s": round(sum(add_times), 2),
            "others_errors": others.errors, "others_dropped_connections": dropped,
            "others_resolves": len(quiet) + len(adding),
            "resolve_ms_p50_quiet": round(pct(quiet, 0.5) * 1000, 3),
            "resolve_ms_p50_adding": round(pct(adding, 0.5) * 1000, 3),
            "resolve_ms_p99_quiet": round(pct(quiet, 0.99) * 1000, 3),
            "resolve_ms_p99_adding": round(pct(adding, 0.99) * 1000, 3),
        }
        result["p50_ratio_adding_vs_quiet"] = round(result["resolve_ms_p50_adding"] / result["resolve_ms_p50_quiet"], 2)
        for c in conns:
            await c.close()
        task.cancel()
        await admin.close()
        await agg_conn.close()
        await admin_conn.close()
        return result
    finally:
        server.stop()


async def _announced(conn: Connection, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
    done = anyio.Event()
    async with announce(conn, "web", address="10.0.0.1", port=80):
        task_status.started(done)
        await done.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--existing", type=int, default=100, help="tenants connected and resolving")
    parser.add_argument("--add", type=int, default=200, help="tenants added meanwhile")
    parser.add_argument("--quiet", type=float, default=5.0, help="seconds measured before the adds")
    parser.add_argument("--json", action="store_true")
    res = asyncio.run(main(parser.parse_args()))
    if parser.parse_args().json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k:32} {v}")
    sys.exit(0 if res["others_errors"] == 0 and res["others_dropped_connections"] == 0 else 1)
