"""Reverse-proxy benchmark: requests/s and p50/p99 latency of the same small GET sent direct to a backend,
through ``disco gateway``, and through nginx (Debian's package) with the same backends, side by side in one run.

    .venv/bin/python scripts/bench_gateway.py [--duration 5] [--rounds 3] [--concurrency 32] [--clients 2]

It starts, as subprocesses: ``disco up`` (nats-server + aggregator, temporary directory, free ports), two aiohttp
backends (this script with ``--backend PORT``), ``disco gateway`` for the tenant ``bench`` and ``nginx`` in the
foreground with a config of its own (``upstream`` of the two backends, keepalive). The backends are announced,
then each target gets ``--rounds`` x ``--duration`` seconds of load, the targets taking turns, from
``--clients`` load processes (aiohttp, keep-alive, ``--concurrency`` requests in flight in all). Every process
shares the machine: the figures compare the three paths in the same conditions (the ratios matter more than the
absolute numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DISCO = [sys.executable, "-m", "services"]
TENANT = "bench"
SERVICE = "hello"

NGINX_CONF = """daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  upstream hello {{ least_conn; server 127.0.0.1:{b1}; server 127.0.0.1:{b2}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location /{tenant}/{service}/ {{
      proxy_pass http://hello/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host;
      proxy_buffering off;
    }}
  }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- child roles ------------------------------------------------------------------------------------------------
def run_backend(port: int, size: int) -> None:
    from aiohttp import web

    body = b"x" * size

    async def hello(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/plain")

    app = web.Application()
    app.router.add_get("/{tail:.*}", hello)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def run_load(url: str, concurrency: int, duration: float) -> None:
    """Keep ``concurrency`` GETs in flight for ``duration`` s; print JSON {latencies, errors} on stdout."""
    import asyncio

    import aiohttp

    async def main() -> None:
        lat: list[float] = []
        errors = 0
        deadline = time.perf_counter() + duration
        conn = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=conn) as http:
            async def one() -> None:
                nonlocal errors
                while time.perf_counter() < deadline:
                    t0 = time.perf_counter()
                    try:
                        async with http.get(url) as r:
                            await r.read()
                            ok = r.status == 200
                    except aiohttp.ClientError:
                        ok = False
                    if ok:
                        lat.append(time.perf_counter() - t0)
                    else:
                        errors += 1

            await asyncio.gather(*(one() for _ in range(concurrency)))
        print(json.dumps({"latencies": lat, "errors": errors, "duration": duration}))

    asyncio.run(main())


# -- the run ----------------------------------------------------------------------------------------------------
def wait_http(url: str, timeout: float = 30.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {url} did not answer within {timeout} s")
        time.sleep(0.1)


def load(url: str, clients: int, concurrency: int, duration: float) -> tuple[list[float], int]:
    """Latencies (s) of the successful requests and the count of failed ones, over ``duration`` s."""
    per = max(concurrency // clients, 1)
    procs = [subprocess.Popen([sys.executable, __file__, "--load", url, "--concurrency", str(per),
                               "--duration", str(duration)], stdout=subprocess.PIPE, cwd=ROOT)
             for _ in range(clients)]
    lat: list[float] = []
    errors = 0
    for p in procs:
        out, _ = p.communicate(timeout=duration + 60)
        data = json.loads(out)
        lat += data["latencies"]
        errors += data["errors"]
    return lat, errors


def summary(lat: list[float], errors: int, duration: float) -> dict[str, Any]:
    lat = sorted(lat)

    def pct(q: float) -> float:
        return lat[min(int(q * len(lat)), len(lat) - 1)] * 1000 if lat else float("nan")

    return {"rps": len(lat) / duration, "p50_ms": pct(0.50), "p99_ms": pct(0.99), "errors": errors,
            "requests": len(lat)}


def announce_backends(nats_url: str, ports: list[int]) -> subprocess.Popen[bytes]:
    """``disco announce`` would do; a tiny holder process keeps both registrations alive."""
    code = f"""
import anyio, bus
async def main():
    async with await bus.connect({nats_url!r}, tenant={TENANT!r}) as conn:
        async with bus.announce(conn, {SERVICE!r}, address="127.0.0.1", port={ports[0]}, instance_id="b1"), \\
                bus.announce(conn, {SERVICE!r}, address="127.0.0.1", port={ports[1]}, instance_id="b2"):
            print("announced", flush=True)
            await anyio.sleep_forever()
anyio.run(main)
"""
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, cwd=ROOT)
    assert p.stdout is not None
    if p.stdout.readline().strip() != b"announced":
        raise SystemExit("bench: the backends could not be announced")
    return p


def time_to_traffic(nats_url: str, gw_url: str, rounds: int) -> list[float]:
    """Seconds from an announce's acknowledgement to the first request the gateway sends to that new instance
    (sequential GETs through the gateway until one reaches it; the instance then says bye), ``rounds`` times."""
    import anyio
    from aiohttp import ClientSession, web

    import bus

    async def main() -> list[float]:
        out: list[float] = []
        port = free_port()

        async def new(request: web.Request) -> web.Response:
            return web.Response(text="new")

        app = web.Application()
        app.router.add_get("/{tail:.*}", new)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            async with await bus.connect(nats_url, tenant=TENANT) as conn, ClientSession() as http:
                for i in range(rounds):
                    async with bus.announce(conn, SERVICE, address="127.0.0.1", port=port, instance_id=f"n{i}"):
                        t0 = time.perf_counter()
                        with anyio.fail_after(10):
                            while True:
                                async with http.get(f"{gw_url}/{TENANT}/{SERVICE}/t") as r:
                                    if await r.text() == "new":
                                        break
                        out.append(time.perf_counter() - t0)
                    await anyio.sleep(0.2)  # its bye reaches the gateway before the next round
        finally:
            await runner.cleanup()
        return out

    return anyio.run(main)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per target per round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds over the three targets, interleaved")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--size", type=int, default=256, help="response body bytes")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--traffic-rounds", type=int, default=20,
                    help="announces timed from acknowledgement to their first proxied request")
    ap.add_argument("--backend", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--load", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.backend:
        return run_backend(args.backend, args.size)
    if args.load:
        return run_load(args.load, args.concurrency, args.duration)

    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(nginx, os.X_OK):
        raise SystemExit("bench: nginx is not installed (run scripts/system_deps.sh as root)")
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="disco-bench-gw-") as tmp:
        d = Path(tmp)
        try:
            nats_port, gw_port, nginx_port = free_port(), free_port(), free_port()
            b_ports = [free_port(), free_port()]
            nats_url = f"nats://127.0.0.1:{nats_port}"
            env = {k: v for k, v in os.environ.items() if not k.startswith("DISCO_")}
            procs.append(subprocess.Popen([*DISCO, "up", "--port", str(nats_port), "--data-dir", str(d / "up"),
                                           "--no-metrics"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL))
            assert procs[0].stdout is not None
            if b"disco is up" not in procs[0].stdout.readline():
                raise SystemExit("bench: disco up did not start")
            for port in b_ports:
                procs.append(subprocess.Popen([sys.executable, __file__, "--backend", str(port), "--size",
                                               str(args.size)], cwd=ROOT))
            for port in b_ports:
                wait_http(f"http://127.0.0.1:{port}/")
            procs.append(announce_backends(nats_url, b_ports))
            procs.append(subprocess.Popen([*DISCO, "gateway", "--nats", nats_url, "--tenant", TENANT, "--listen",
                                           f"127.0.0.1:{gw_port}"], cwd=ROOT, env=env,
                                          stderr=subprocess.DEVNULL))
            (d / "nginx").mkdir()
            (d / "nginx" / "nginx.conf").write_text(NGINX_CONF.format(
                d=d / "nginx", b1=b_ports[0], b2=b_ports[1], port=nginx_port, tenant=TENANT, service=SERVICE))
            procs.append(subprocess.Popen([nginx, "-c", str(d / "nginx" / "nginx.conf"), "-p", str(d / "nginx")],
                                          stderr=subprocess.DEVNULL))
            path = f"/{TENANT}/{SERVICE}/hello"
            targets = {
                "direct (one backend)": f"http://127.0.0.1:{b_ports[0]}/hello",
                "disco gateway": f"http://127.0.0.1:{gw_port}{path}",
                "nginx 1 worker": f"http://127.0.0.1:{nginx_port}{path}",
            }
            for url in targets.values():
                wait_http(url)
            for url in targets.values():
                load(url, args.clients, args.concurrency, 1.0)  # warm-up: connections, caches
            # rounds interleave the targets, so that a change in the machine's load falls on all of them alike
            pooled: dict[str, tuple[list[float], int]] = {name: ([], 0) for name in targets}
            for _ in range(args.rounds):
                for name, url in targets.items():
                    lat, errors = load(url, args.clients, args.concurrency, args.duration)
                    pooled[name] = (pooled[name][0] + lat, pooled[name][1] + errors)
            results = {name: summary(lat, errors, args.duration * args.rounds)
                       for name, (lat, errors) in pooled.items()}
            ttt = sorted(time_to_traffic(nats_url, f"http://127.0.0.1:{gw_port}", args.traffic_rounds))
            results["announce_to_traffic_ms"] = {"p50": ttt[len(ttt) // 2] * 1000, "max": ttt[-1] * 1000,
                                                 "rounds": len(ttt)}
        finally:
            for p in reversed(procs):
                p.terminate()
            for p in reversed(procs):
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{args.concurrency} requests in flight from {args.clients} load processes, {args.rounds} x "
          f"{args.duration:g} s per target (interleaved), {args.size}-byte responses, {os.cpu_count()} CPUs "
          f"shared by everything, load average {os.getloadavg()[0]:.1f}")
    print(f"{'path':<22}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
    for name, r in results.items():
        if name == "announce_to_traffic_ms":
            continue
        print(f"{name:<22}{r['rps']:>10.0f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}{r['errors']:>8}")
    t = results["announce_to_traffic_ms"]
    print(f"announce acknowledged -> first request through the gateway to the new instance: p50 {t['p50']:.1f} ms, "
          f"max {t['max']:.1f} ms over {t['rounds']} announces")
    gw, ng = results["disco gateway"], results["nginx 1 worker"]
    print(f"gateway/nginx throughput: {gw['rps'] / ng['rps']:.2f}; gateway/direct: "
          f"{gw['rps'] / results['direct (one backend)']['rps']:.2f}")


if __name__ == "__main__":
    main()
