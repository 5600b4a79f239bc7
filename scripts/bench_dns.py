"""``disco dns`` against a well-known authoritative server serving the same names from a static zone, in one run.

    python scripts/bench_dns.py [--instances 10] [--seconds 3] [--window 32] [--json]

Starts its own nats-server, an aggregator and ``disco dns`` (each in its own process), announces ``--instances``
instances of ``billing`` in tenant ``acme``, writes the same records (A, SRV with glue, SOA/NS) into a static zone
file and serves it with NSD (Debian's ``nsd``; the peer column is left out when it is not installed — it is a
benchmark-only binary). The same dnspython client then asks both servers the same questions:

- serial: one query at a time over one UDP socket (``dns.query.udp``): p50/p99 latency and queries/s;
- windowed: ``--window`` queries in flight on one UDP socket (messages made and parsed by dnspython): queries/s;
  and the same reading only each reply's ID (the client's parsing otherwise bounds both servers).

and, for disco only, how long an announce takes to be answered and a bye to be gone (the promise is 100 ms): the
time from the acknowledgement to the first DNS answer that shows it, polling without pause. Everything shares this
machine's cores, so the ratio to the peer in the same run matters more than the absolute figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import dns.message
import dns.query
import dns.rcode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchkit import pct  # noqa: E402

from bus.announce import announce  # noqa: E402
from bus.connection import connect  # noqa: E402
from services.natsserver import NatsServer, free_port  # noqa: E402

PREFIX = "disco"
QUESTIONS = [("billing.acme.disco.", "A"), ("_billing._tcp.acme.disco.", "SRV"), ("missing.acme.disco.", "A")]



# -- the peer: NSD with a static zone holding the same records --------------------------------------------------
def zone_text(addresses: list[str], ports: list[int]) -> str:
    lines = [
        "$ORIGIN disco.", "$TTL 5",
        "@ IN SOA ns.disco. hostmaster.disco. 1 3600 600 86400 5", "@ IN NS ns.disco.", "ns IN A 127.0.0.1",
    ]
    for addr, port in zip(addresses, ports, strict=True):
        label = bytes(int(x) for x in addr.split(".")).hex()
        lines += [f"billing.acme IN A {addr}", f"{label}.billing.acme IN A {addr}",
                  f"billing.acme IN SRV 1 100 {port} {label}.billing.acme.disco.",
                  f"_billing._tcp.acme IN SRV 1 100 {port} {label}.billing.acme.disco."]
    return "\n".join(lines) + "\n"


def start_nsd(work: Path, port: int, zone: str) -> subprocess.Popen[bytes] | None:
    binary = shutil.which("nsd") or ("/usr/sbin/nsd" if os.access("/usr/sbin/nsd", os.X_OK) else None)
    if binary is None:
        return None
    (work / "disco.zone").write_text(zone)
    conf = work / "nsd.conf"
    conf.write_text(
        f'server:\n  ip-address: 127.0.0.1@{port}\n  port: {port}\n  zonesdir: "{work}"\n  pidfile: "{work}/nsd.pid"\n'
        f'  database: ""\n  username: ""\n  chroot: ""\n  logfile: "{work}/nsd.log"\n  server-count: 1\n'
        f'  xfrdfile: "{work}/xfrd.state"\n  zonelistfile: "{work}/zone.list"\n  hide-version: yes\n  verbosity: 0\n'
        f'  rrl-ratelimit: 0\n'
        f'remote-control:\n  control-enable: no\nzone:\n  name: disco.\n  zonefile: "{work}/disco.zone"\n'
    )
    proc = subprocess.Popen([binary, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not wait_answering(port, 10.0):
        proc.kill()
        raise SystemExit(f"nsd did not answer on port {port}: see {work}/nsd.log")
    return proc


def wait_answering(port: int, timeout: float, name: str = "billing.acme.disco.") -> bool:
    """Until ``name`` gets a NOERROR answer with records (the server is up and has the data)."""
    deadline = time.monotonic() + timeout
    q = dns.message.make_query(name, "A")
    while time.monotonic() < deadline:
        try:
            r = dns.query.udp(q, "127.0.0.1", port=port, timeout=0.2)
            if r.rcode() == dns.rcode.NOERROR and r.answer:
                return True
        except Exception:
            pass
        time.sleep(0.05)
    return False


# -- the client -----------------------------------------------------------------------------------------------
def serial(port: int, name: str, rdtype: str, seconds: float) -> dict[str, float]:
    q = dns.message.make_query(name, rdtype, use_edns=0, payload=4096)
    lat: list[float] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            dns.query.udp(q, "127.0.0.1", port=port, timeout=2, sock=sock)
            lat.append(time.perf_counter() - t0)
    return {"qps": len(lat) / sum(lat), "p50_ms": pct(lat, 0.5) * 1e3, "p99_ms": pct(lat, 0.99) * 1e3}


def windowed(port: int, name: str, rdtype: str, seconds: float, window: int, parse: bool = True) -> float:
    """Queries/s with ``window`` in flight on one socket; each reply is parsed by dnspython (or, with
    ``parse=False``, only its ID is read: the client costs less, so the server's capacity shows better)."""
    base = dns.message.make_query(name, rdtype, use_edns=0, payload=4096)
    wires = {}
    for qid in range(window * 4):
        base.id = qid
        wires[qid] = base.to_wire()
    done = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("127.0.0.1", port))
        sock.settimeout(0.5)
        ids = list(wires)
        pending = set()
        nxt = 0
        t0 = time.perf_counter()
        end = t0 + seconds
        while time.perf_counter() < end:
            while len(pending) < window:
                qid = ids[nxt % len(ids)]
                nxt += 1
                if qid in pending:
                    continue
                try:
                    sock.send(wires[qid])
                except ConnectionRefusedError:  # an ICMP error of an earlier datagram: the send still counts
                    sock.send(wires[qid])
                pending.add(qid)
            try:
                data = sock.recv(65535)
            except (TimeoutError, ConnectionRefusedError):
                pending.clear()  # lost datagrams (or an ICMP error): start the window again
                continue
            rid = dns.message.from_wire(data).id if parse else int.from_bytes(data[:2], "big")
            if rid in pending:
                pending.discard(rid)
                done += 1
        return done / (time.perf_counter() - t0)


# -- disco ----------------------------------------------------------------------------------------------------
async def propagation(url: str, port: int, rounds: int) -> dict[str, float]:
    """Announce acknowledged → first answer showing it; bye acknowledged → first answer without it (seconds)."""
    seen: list[float] = []
    gone: list[float] = []
    conn = await connect(url, tenant="acme", prefix=PREFIX)

    def present(name: str) -> bool:
        r = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=1)
        return bool(r.answer)

    async with conn:
        for i in range(rounds):
            name = f"prop{i}.acme.disco."
            async with announce(conn, f"prop{i}", address="10.9.9.9", port=80):
                t0 = time.perf_counter()
                while not present(name):
                    await anyio.lowlevel.checkpoint()
                seen.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            while present(name):
                await anyio.lowlevel.checkpoint()
            gone.append(time.perf_counter() - t0)
    return {"announce_p50_ms": pct(seen, 0.5) * 1e3, "announce_p99_ms": pct(seen, 0.99) * 1e3,
            "announce_max_ms": max(seen) * 1e3, "bye_p50_ms": pct(gone, 0.5) * 1e3,
            "bye_p99_ms": pct(gone, 0.99) * 1e3, "bye_max_ms": max(gone) * 1e3}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"servers": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = NatsServer(work / "nats", name="bench-dns")
        server.start()
        procs: list[subprocess.Popen[bytes]] = []
        try:
            procs.append(subprocess.Popen(  # noqa: ASYNC220 - started once, before measuring
                [sys.executable, "-m", "services", "aggregator", "--nats", server.url, "--prefix", PREFIX],
                cwd=ROOT, stderr=subprocess.DEVNULL))
            conn = await connect(server.url, tenant="acme", prefix=PREFIX)
            addresses = [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(args.instances)]
            ports = [8000 + i for i in range(args.instances)]
            async with conn, contextlib.AsyncExitStack() as registered:
                for addr, port in zip(addresses, ports, strict=True):
                    await registered.enter_async_context(announce(conn, "billing", address=addr, port=port, ttl=30))
                disco_port = free_port()
                procs.append(subprocess.Popen(  # noqa: ASYNC220
                    [sys.executable, "-m", "services", "dns", "--tenant", "acme", "--listen",
                     f"127.0.0.1:{disco_port}", "--nats", server.url, "--prefix", PREFIX],
                    cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                if not wait_answering(disco_port, 20):
                    raise SystemExit("disco dns did not answer")
                dns_proc = procs[-1]
                ports_by_server = {"disco dns": disco_port}
                nsd_port = free_port()
                nsd = start_nsd(work, nsd_port, zone_text(addresses, ports))
                if nsd is not None:
                    procs.append(nsd)
                    ports_by_server["nsd (static zone)"] = nsd_port
                for label, port in ports_by_server.items():
                    rows = {}
                    for name, rdtype in QUESTIONS:
                        s = serial(port, name, rdtype, args.seconds)
                        s["window_qps"] = windowed(port, name, rdtype, args.seconds, args.window)
                        s["window_raw_qps"] = windowed(port, name, rdtype, args.seconds, args.window, parse=False)
                        rows[f"{rdtype} {name}"] = s
                    results["servers"][label] = rows
                    if any(p.poll() is not None for p in procs):
                        raise SystemExit(f"a server exited while {label} was measured: {[p.args[:4] for p in procs]}")
                results["propagation"] = await propagation(server.url, disco_port, args.rounds)
                assert dns_proc.poll() is None, "disco dns exited"
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
            server.stop()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--instances", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    ap.add_argument("--window", type=int, default=32, help="queries in flight for the windowed measure")
    ap.add_argument("--rounds", type=int, default=50, help="announce/bye rounds for the propagation measure")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    random.seed(1)
    res = anyio.run(run, args)
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"disco dns vs NSD, {args.instances} instances, {os.cpu_count()} cores shared by everything\n")
    w = args.window
    print(f"| question | server | serial q/s | p50 ms | p99 ms | q/s, window {w} | q/s, window {w}, ID only |")
    print("|---|---|---|---|---|---|---|")
    for label, rows in res["servers"].items():
        for q, s in rows.items():
            print(f"| {q} | {label} | {s['qps']:,.0f} | {s['p50_ms']:.3f} | {s['p99_ms']:.3f} | "
                  f"{s['window_qps']:,.0f} | {s['window_raw_qps']:,.0f} |")
    p = res["propagation"]
    print(f"\nannounce acknowledged → answered: p50 {p['announce_p50_ms']:.2f} ms, p99 {p['announce_p99_ms']:.2f} ms, "
          f"max {p['announce_max_ms']:.2f} ms")
    print(f"bye acknowledged → gone:          p50 {p['bye_p50_ms']:.2f} ms, p99 {p['bye_p99_ms']:.2f} ms, "
          f"max {p['bye_max_ms']:.2f} ms  (promise: 100 ms)")


if __name__ == "__main__":
    main()
