"""A service that announces itself and calls another one through the resolver.

It listens on a free loopback TCP port (one line in, one line out), registers as ``--name`` and, every
``--interval`` seconds, calls an instance of ``--call`` picked by a live resolver (least outstanding calls,
preferring ``--zone``). Run two of them against a running disco (``disco up``)::

    python scripts/examples/greeter.py --nats nats://127.0.0.1:4222 --tenant demo --name ping --call pong
    python scripts/examples/greeter.py --nats nats://127.0.0.1:4222 --tenant demo --name pong --call ping

Start a third ``pong`` and watch the calls spread; stop one and watch them move (the resolver follows the change
feed; no resolve request per call). Stop the NATS server and the calls go on to the last known instances, marked
stale.
"""

from __future__ import annotations

import argparse
import signal
import sys

import anyio
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from bus.announce import announce
from bus.connection import connect
from bus.errors import DiscoError, NoInstances
from bus.resolver import Resolver, resolver


async def serve(listener: anyio.abc.Listener[SocketStream], name: str, iid: str) -> None:
    async def answer(client: SocketStream) -> None:
        async with client:
            try:
                line = await BufferedByteReceiveStream(client).receive_until(b"\n", 1024)
                await client.send(f"{name}/{iid} says hello to {line.decode(errors='replace')}\n".encode())
            except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, anyio.DelimiterNotFound):
                pass

    await listener.serve(answer)


async def call_once(r: Resolver, me: str) -> str:
    async with r.lease() as inst:  # counted in flight: least_outstanding avoids busy instances
        with anyio.fail_after(2):
            async with await anyio.connect_tcp(inst.address, inst.port) as stream:
                await stream.send(f"{me}\n".encode())
                reply = await BufferedByteReceiveStream(stream).receive_until(b"\n", 1024)
    stale = f" (stale view, {r.stale_for:.1f} s)" if r.stale else ""
    return f"{inst.id} at {inst.address}:{inst.port}: {reply.decode()}{stale}"


async def main(args: argparse.Namespace) -> None:
    conn = await connect(args.nats, tenant=args.tenant, prefix=args.prefix)
    async with conn:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as tg, \
                announce(conn, args.name, address="127.0.0.1", port=port, zone=args.zone, ttl=5) as reg:
            tg.start_soon(serve, listener, args.name, reg.id)
            print(f"{args.name}/{reg.id} listening on 127.0.0.1:{port}", flush=True)
            async with resolver(conn, args.call, strategy="least_outstanding",
                                prefer_zone=args.zone or None) as r:
                calls = 0
                while args.count == 0 or calls < args.count:
                    try:
                        print(await call_once(r, f"{args.name}/{reg.id}"), flush=True)
                        calls += 1
                    except NoInstances as exc:
                        print(f"no one to call: {exc}", flush=True)
                    except (OSError, TimeoutError) as exc:
                        print(f"call failed: {exc or type(exc).__name__}", flush=True)
                    await anyio.sleep(args.interval)
            tg.cancel_scope.cancel()


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nats", default="nats://127.0.0.1:4222", help="NATS URL(s), comma separated")
    p.add_argument("--tenant", required=True)
    p.add_argument("--prefix", default="disco", help="subject prefix of the disco system")
    p.add_argument("--name", default="greeter", help="the service this process announces")
    p.add_argument("--call", default="greeter", help="the service it calls")
    p.add_argument("--zone", default="", help="its zone (calls prefer instances of the same zone)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between calls")
    p.add_argument("--count", type=int, default=0, help="stop after this many successful calls (0: never)")
    return p.parse_args(argv)


async def until_signal(args: argparse.Namespace) -> None:
    """Run ``main`` until SIGINT or SIGTERM, then stop cleanly (cancellation runs every clean-up)."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:

            async def stop_on_signal() -> None:
                async for _ in signals:
                    tg.cancel_scope.cancel()

            tg.start_soon(stop_on_signal)
            await main(args)
            tg.cancel_scope.cancel()


if __name__ == "__main__":
    try:
        anyio.run(until_signal, parse(sys.argv[1:]))
    except KeyboardInterrupt:
        pass
    except DiscoError as exc:
        sys.exit(f"greeter: {exc}")
