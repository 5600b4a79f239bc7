"""What the ``disco dns`` tests share: a server running in a task of its own, real DNS clients (dnspython's
``dns.query`` and ``dig``), and announces without heartbeats."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from bus import codec
from bus.connection import Connection
from bus.models import AnnounceAck, Instance
from services.dns import DnsServer, DnsSettings, TenantSource
from tests.conftest import eventually
from tests.helpers import require_binary

__all__ = ["Dns", "addresses", "dig", "raw_announce", "start_dns"]

#: the promise is 100 ms from an announce's acknowledgement to an answer (scripts/bench_dns.py measures it); the
#: tests poll with a generous deadline so that they never depend on how busy the machine is
PROPAGATION = 5.0


class Dns:
    """A :class:`DnsServer` running in an asyncio task (fixtures set up and tear down in different tasks, so a task
    group cannot span a fixture's yield), and a client for it."""

    def __init__(self, server: DnsServer, task: asyncio.Task[None]) -> None:
        self.server = server
        self.task = task

    @property
    def port(self) -> int:
        return self.server.port

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def query(self, name: str, rdtype: str = "A", *, tcp: bool = False, edns: int | None = None,
                    timeout: float = 2.0) -> dns.message.Message:
        q = dns.message.make_query(name, rdtype, use_edns=edns is not None, payload=edns or 512)
        if tcp:
            return await dns.asyncquery.tcp(q, "127.0.0.1", port=self.port, timeout=timeout)
        return await dns.asyncquery.udp(q, "127.0.0.1", port=self.port, timeout=timeout)

    async def rcode(self, name: str, rdtype: str = "A") -> str:
        return dns.rcode.to_text((await self.query(name, rdtype)).rcode())

    async def addresses(self, name: str, rdtype: str = "A", timeout: float = 2.0) -> set[str]:
        return addresses(await self.query(name, rdtype, timeout=timeout), rdtype)

    async def until(self, name: str, predicate: Callable[[set[str]], bool], rdtype: str = "A",
                    timeout: float = PROPAGATION) -> set[str]:
        """Poll the answer's addresses until ``predicate`` holds (fail after ``timeout`` s)."""

        async def check() -> tuple[set[str]] | None:
            try:
                got = await self.addresses(name, rdtype, timeout=0.5)
            except dns.exception.Timeout:
                return None  # a lost datagram (a flood in the socket's buffer): ask again
            return (got,) if predicate(got) else None  # a tuple: an empty answer may be what is awaited

        result: tuple[set[str]] = await eventually(check, timeout, interval=0.005)
        return result[0]


def addresses(msg: dns.message.Message, rdtype: str = "A") -> set[str]:
    """The rdata texts of the answer section's records of ``rdtype``."""
    t = dns.rdatatype.from_text(rdtype)
    return {rd.to_text() for rrset in msg.answer if rrset.rdtype == t for rd in rrset}


@contextlib.asynccontextmanager
async def start_dns(url: str, prefix: str, tenants: list[str | TenantSource] | None = None, *,
                    seed: int | None = 1, **kw: Any) -> AsyncIterator[Dns]:
    """A :class:`DnsServer` on a free loopback port, serving ``tenants`` (names, or with their credentials), once
    every tenant's first list is in."""
    kw.setdefault("listen", "127.0.0.1:0")
    settings = DnsSettings(
        nats_url=url, prefix=prefix,
        tenants=tuple(TenantSource(name=t) if isinstance(t, str) else t for t in tenants or ()), **kw,
    )
    server = DnsServer(settings, seed=seed)
    started: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(server.run)
            started.set_result(None)

    task = asyncio.create_task(main())
    with anyio.fail_after(20):
        await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    d = Dns(server, task)
    await eventually(lambda: server.listed, 20)
    try:
        yield d
    finally:
        await d.stop()


async def raw_announce(conn: Connection, tenant: str, service: str, inst: Instance) -> AnnounceAck:
    """Announce once, with no heartbeats (the instance expires after its ttl)."""
    msg = await conn.nc.request(conn.subjects.announce(tenant, service), codec.encode(inst), timeout=5)
    return codec.decode_reply(msg.data, AnnounceAck)


async def dig(port: int, *args: str) -> str:
    """``dig @127.0.0.1 -p PORT args... +time=1 +tries=1``: its stdout (the test fails if dig fails)."""
    binary = require_binary("dig", "dnsutils")
    result = await anyio.run_process([binary, "@127.0.0.1", "-p", str(port), *args, "+time=1", "+tries=1"],
                                     check=False, stderr=subprocess.STDOUT)
    text = result.stdout.decode()
    if result.returncode != 0:
        pytest.fail(f"dig {' '.join(args)} exited {result.returncode}: {text}")
    return text

