"""The etcd column of ``scripts/bench.py``: the same workloads against etcd 3.4 started on loopback.

    python scripts/bench_etcd.py [--quick]        # the etcd column alone

A registration is what a disco announce is: one instance with its own liveness, so a lease per instance (grant,
then a put with the lease); a lookup is a prefix get of a 100-key service; an event is a put seen by a prefix
watch. Records are the size of a disco instance record. etcd comes from Debian's ``etcd-server`` package
(``scripts/system_deps.sh``); the client is ``aetcd`` (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit import EVENT_WARMUP, in_flight, pct

RECORD = b"x" * 160  # about a disco instance record (msgpack, a few tags and meta)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def etcd_binary() -> str | None:
    return shutil.which("etcd") or ("/usr/bin/etcd" if os.access("/usr/bin/etcd", os.X_OK) else None)


@contextmanager
def etcd_server() -> Iterator[int]:
    """A single-member etcd on loopback with its own data dir; yields the client port."""
    binary = etcd_binary()
    if binary is None:
        raise RuntimeError("etcd is not installed (Debian package etcd-server; run scripts/system_deps.sh)")
    client, peer = _free_port(), _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [binary, "--name", "bench", "--data-dir", str(Path(tmp) / "etcd"),
             "--listen-client-urls", f"http://127.0.0.1:{client}",
             "--advertise-client-urls", f"http://127.0.0.1:{client}",
             "--listen-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
             "--initial-cluster", f"bench=http://127.0.0.1:{peer}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "ETCD_UNSUPPORTED_ARCH": os.environ.get("ETCD_UNSUPPORTED_ARCH", "")},
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", client), timeout=0.2):
                        break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("etcd did not start") from None
                    time.sleep(0.05)
            yield client
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


async def run_etcd(port: int, *, serial_n: int, regs_n: int, events_n: int) -> dict[str, Any]:
    import aetcd  # benchmark-only dependency

    results: dict[str, Any] = {}
    async with aetcd.Client(host="127.0.0.1", port=port) as client:
        await client.put(b"/warm", b"1")

        async def register(key: bytes) -> None:
            lease = await client.lease(300)
            await client.put(key, RECORD, lease=lease)

        # registrations/s, 100 in flight
        async def one(k: int) -> None:
            await register(f"/disco/reg/r{k}".encode())

        results["registrations_per_s_100_inflight"] = round(regs_n / await in_flight(regs_n, 100, one))

        # registrations/s, serial
        n = max(200, regs_n // 10)
        t0 = time.perf_counter()
        for k in range(n):
            await register(f"/disco/serial/s{k}".encode())
        results["registrations_per_s_serial"] = round(n / (time.perf_counter() - t0))

        # lookup of a 100-instance service, serial
        for k in range(100):
            await client.put(f"/disco/svc100/i{k}".encode(), RECORD)
        lat = []
        for _ in range(serial_n):
            t0 = time.perf_counter()
            await client.get_prefix(b"/disco/svc100/")
            lat.append((time.perf_counter() - t0) * 1000)
        results["lookup_100"] = {"p50_ms": round(statistics.median(lat), 3), "p99_ms": round(pct(lat, 0.99), 3)}

        # put (with its lease) start -> event at a prefix watcher
        arrived: dict[bytes, float] = {}
        got = anyio.Event()
        want = b""
        watch = await client.watch_prefix(b"/disco/ev/")

        async def follow() -> None:
            async for ev in watch:
                arrived[ev.kv.key] = time.perf_counter()
                if ev.kv.key == want:
                    got.set()

        lat = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(follow)
            for k in range(EVENT_WARMUP + events_n):  # the first EVENT_WARMUP not counted, as for disco
                want = f"/disco/ev/e{k}".encode()
                got = anyio.Event()
                t0 = time.perf_counter()
                await register(want)
                with anyio.fail_after(10):
                    await got.wait()
                if k >= EVENT_WARMUP:
                    lat.append((arrived[want] - t0) * 1000)
            await watch.cancel()
            tg.cancel_scope.cancel()
        results["event_latency"] = {"p50_ms": round(statistics.median(lat), 3), "p99_ms": round(pct(lat, 0.99), 3)}
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    with etcd_server() as port:
        r = anyio.run(lambda: run_etcd(port, serial_n=300 if a.quick else 2000,
                                       regs_n=1000 if a.quick else 5000, events_n=200 if a.quick else 3000))
    for k, v in r.items():
        print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
