"""A durable worker that keeps a file of a service's live addresses up to date.

The file holds one ``host:port`` per line (sorted; passing and warning instances only) and is replaced
atomically on every change, so a proxy or a cron job can read it at any time::

    python scripts/examples/address_file.py --nats nats://127.0.0.1:4222 --tenant demo --service pong \\
        --file /tmp/pong.addresses

How it stays correct: the worker's durable consumer is created first (from the next event on), then a
snapshot gives the current state at revision R; events at or below R are already in it and are skipped, and
later events apply only when their revision is higher than the one held for that instance (tombstones for
removals), so redeliveries and duplicates change nothing. One process per file: its group (default
``addr-file-<service>``) is its own, since processes of one group share the events between them.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from pathlib import Path

import anyio

from bus.client import snapshot
from bus.connection import connect
from bus.errors import DiscoError
from bus.models import ChangeEvent, ChangeType, Instance, Status
from bus.workers import Delivery, worker

LIVE = (Status.passing, Status.warning)


class AddressFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.instances: dict[str, Instance] = {}
        self.revisions: dict[str, int] = {}  # per instance: the newest revision applied (removals included)
        self.floor = 0  # the snapshot's revision: everything at or below it is already applied
        self.loaded = anyio.Event()
        self.last_written: list[str] | None = None

    def load(self, instances: tuple[Instance, ...], revision: int) -> None:
        self.instances = {i.id: i for i in instances}
        self.floor = revision
        self.write()
        self.loaded.set()

    async def handle(self, ev: ChangeEvent, d: Delivery) -> None:
        await self.loaded.wait()
        iid = ev.instance.id
        if ev.revision <= max(self.floor, self.revisions.get(iid, 0)):
            return  # already applied (a duplicate, a redelivery or older than what we hold)
        self.revisions[iid] = ev.revision
        if ev.type is ChangeType.removed:
            self.instances.pop(iid, None)
        else:
            self.instances[iid] = ev.instance
        self.write()

    def lines(self) -> list[str]:
        def hostport(i: Instance) -> str:
            return f"[{i.address}]:{i.port}" if ":" in i.address else f"{i.address}:{i.port}"

        return sorted(hostport(i) for i in self.instances.values() if i.status in LIVE)

    def write(self) -> None:
        lines = self.lines()
        if lines == self.last_written:
            return
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        with os.fdopen(fd, "w") as f:
            f.write("".join(f"{line}\n" for line in lines))
        os.replace(tmp, self.path)  # readers see the old file or the new one, never half of one
        self.last_written = lines
        print(f"{self.path}: {len(lines)} address(es)", flush=True)


async def main(args: argparse.Namespace) -> None:
    target = AddressFile(args.file)
    async with await connect(args.nats, tenant=args.tenant, prefix=args.prefix) as conn:
        group = args.group or f"addr-file-{args.service}"
        async with worker(conn, group, target.handle, services=[args.service], start="new",
                          stream_prefix=args.stream):
            snap = await snapshot(conn, services=[args.service])
            target.load(snap.services.get(args.service, ()), snap.revision)
            await anyio.sleep_forever()


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nats", default="nats://127.0.0.1:4222", help="NATS URL(s), comma separated")
    p.add_argument("--tenant", required=True)
    p.add_argument("--service", required=True, help="the service whose addresses go into the file")
    p.add_argument("--file", required=True, type=lambda v: Path(v).resolve(), help="the file to keep up to date")
    p.add_argument("--group", default=None, help="worker group (default addr-file-<service>)")
    p.add_argument("--prefix", default="disco", help="subject prefix of the disco system")
    p.add_argument("--stream", default="DISCO_CHANGES", help="prefix of the per-tenant change streams")
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
        sys.exit(f"address_file: {exc}")
