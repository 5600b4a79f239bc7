"""``disco dns`` on the wire: truncation and TCP fallback, EDNS(0) sizes, malformed packets, floods, TCP framing."""

from __future__ import annotations

import socket
import struct

import anyio
import anyio.streams.buffered
import dns.asyncquery
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import pytest

from bus.models import Instance
from tests.conftest import eventually
from tests.integration.dns_helpers import addresses, dig, raw_announce, start_dns

pytestmark = pytest.mark.integration


async def _many(client, n: int, service: str = "big") -> None:
    for i in range(n):
        inst = Instance(id=f"i{i}", address=f"10.1.{i // 250}.{i % 250 + 1}", port=9000 + i, ttl=60.0, seq=1)
        await raw_announce(client, "acme", service, inst)


async def test_tc_over_udp_then_the_full_answer_over_tcp(nats_server, aggregator, client, prefix):
    await _many(client, 60)
    async with start_dns(nats_server.url, prefix, ["acme"]) as d:
        await eventually(lambda: d.server.views.get("acme").counts == (1, 60))
        plain = await d.query("big.acme.disco", "SRV")                  # no EDNS: 512 bytes at most
        assert plain.flags & dns.flags.TC and not plain.answer
        assert d.server.stats.truncated["udp"] >= 1
        full = await d.query("big.acme.disco", "SRV", tcp=True)
        assert not full.flags & dns.flags.TC and len(full.answer[0]) == 60 and len(full.additional) == 60

        q = dns.message.make_query("big.acme.disco", "A")
        answer, used_tcp = await dns.asyncquery.udp_with_fallback(q, "127.0.0.1", port=d.port, timeout=2)
        assert used_tcp and len(addresses(answer)) == 60

        # dig retries over TCP by itself after TC
        out = await dig(d.port, "big.acme.disco", "A", "+noedns")
        assert "Truncated, retrying in TCP mode" in out and out.count("IN\tA\t10.1.") == 60


async def test_edns_buffer_size_is_honoured(nats_server, aggregator, client, prefix):
    await _many(client, 60)
    async with start_dns(nats_server.url, prefix, ["acme"], max_udp_size=4096) as d:
        await eventually(lambda: d.server.views.get("acme").counts == (1, 60))
        small = await d.query("big.acme.disco", "A", edns=512)     # 60 x 16 bytes does not fit 512
        assert small.flags & dns.flags.TC
        large = await d.query("big.acme.disco", "A", edns=4096)    # fits 4096
        assert not large.flags & dns.flags.TC and len(addresses(large)) == 60
        assert large.edns == 0 and large.payload == 4096
        # 60 SRV records (~2.6 KB: targets are not compressed) with their glue (~1 KB) do not fit 3000 bytes: the
        # glue goes, the answer stays
        mid = await d.query("big.acme.disco", "SRV", edns=3000)
        assert not mid.flags & dns.flags.TC and len(mid.answer[0]) == 60 and not mid.additional
    async with start_dns(nats_server.url, prefix, ["acme"], max_udp_size=512) as capped:
        await eventually(lambda: capped.server.views.get("acme").counts == (1, 60))
        # a client offering 4096 still gets at most what the server allows
        assert (await capped.query("big.acme.disco", "A", edns=4096)).flags & dns.flags.TC


def _udp_exchange(port: int, payload: bytes, timeout: float = 1.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(payload, ("127.0.0.1", port))
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


async def test_malformed_packets_get_formerr_or_nothing_and_it_keeps_answering(
    nats_server, aggregator, client, prefix
):
    await raw_announce(client, "acme", "web", Instance(id="w1", address="10.2.0.1", port=80, ttl=60.0, seq=1))
    async with start_dns(nats_server.url, prefix, ["acme"]) as d:
        good = dns.message.make_query("web.acme.disco", "A").to_wire()
        header_only = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)   # claims a question, has none
        cases = {
            "truncated question": good[:-3],
            "header only": header_only,
            "trailing junk": good + b"\x00junk",
            "two questions": struct.pack("!HHHHHH", 0x2222, 0x0100, 2, 0, 0, 0) + good[12:] + good[12:],
            "label too long": struct.pack("!HHHHHH", 0x3333, 0x0100, 1, 0, 0, 0) + b"\x40" + b"a" * 64 + b"\x00"
            + b"\x00\x01\x00\x01",
            "compression loop": struct.pack("!HHHHHH", 0x4444, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01",
        }
        for what, payload in cases.items():
            reply = await anyio.to_thread.run_sync(_udp_exchange, d.port, payload)
            assert reply is not None, what
            msg_id, flags = struct.unpack("!HH", reply[:4])
            assert msg_id == struct.unpack("!H", payload[:2])[0], what
            assert flags & 0x8000 and flags & 0xF == dns.rcode.FORMERR, (what, flags)
        # not answered at all: shorter than a header, or a response (answering those makes loops and reflectors)
        assert await anyio.to_thread.run_sync(_udp_exchange, d.port, b"\x01\x02\x03", 0.3) is None
        response = dns.message.make_response(dns.message.make_query("web.acme.disco", "A")).to_wire()
        assert await anyio.to_thread.run_sync(_udp_exchange, d.port, response, 0.3) is None
        assert d.server.stats.dropped == {"short": 1, "response": 1}
        # other opcodes, EDNS versions, classes and zone transfers
        notify = dns.message.make_query("web.acme.disco", "SOA")
        notify.set_opcode(dns.opcode.NOTIFY)
        assert (await dns.asyncquery.udp(notify, "127.0.0.1", port=d.port, timeout=2)).rcode() == dns.rcode.NOTIMP
        v1 = dns.message.make_query("web.acme.disco", "A", use_edns=1)
        assert (await dns.asyncquery.udp(v1, "127.0.0.1", port=d.port, timeout=2)).rcode() == dns.rcode.BADVERS
        chaos = dns.message.make_query("version.bind", "TXT", rdclass="CH")
        assert (await dns.asyncquery.udp(chaos, "127.0.0.1", port=d.port, timeout=2)).rcode() == dns.rcode.REFUSED
        axfr = dns.message.make_query("disco", "AXFR")
        assert (await dns.asyncquery.tcp(axfr, "127.0.0.1", port=d.port, timeout=2)).rcode() == dns.rcode.REFUSED
        # ...and it still answers
        assert await d.addresses("web.acme.disco") == {"10.2.0.1"}
        assert d.server.stats.total(rcode="FORMERR") == len(cases)


async def test_a_query_flood_leaves_it_answering(nats_server, aggregator, client, prefix):
    await raw_announce(client, "acme", "web", Instance(id="w1", address="10.2.0.1", port=80, ttl=60.0, seq=1))
    async with start_dns(nats_server.url, prefix, ["acme"]) as d:
        queries = [dns.message.make_query(f"n{i}.web.acme.disco", "A").to_wire() for i in range(50)]
        queries += [b"\xff" * 40, b"\x00" * 5]

        def flood() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.setblocking(False)
                for _ in range(100):   # 5,200 datagrams as fast as the socket takes them, never reading replies
                    for q in queries:
                        try:
                            s.sendto(q, ("127.0.0.1", d.port))
                        except BlockingIOError:
                            pass

        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, flood)
            tg.start_soon(anyio.to_thread.run_sync, flood)
        # answering while and after: the next ordinary question gets its answer (polling: the flood may still be
        # in the socket's buffer)
        assert await d.until("web.acme.disco", bool) == {"10.2.0.1"}
        assert d.server.stats.total() > 100


async def test_tcp_answers_pipelined_queries_and_closes_idle_connections(nats_server, aggregator, client, prefix):
    await raw_announce(client, "acme", "web", Instance(id="w1", address="10.2.0.1", port=80, ttl=60.0, seq=1))
    async with start_dns(nats_server.url, prefix, ["acme"], tcp_idle=0.5) as d:
        stream = await anyio.connect_tcp("127.0.0.1", d.port)
        async with stream:
            wires = [dns.message.make_query(n, "A") for n in ("web.acme.disco", "nope.acme.disco", "example.org")]
            await stream.send(b"".join(len(w := q.to_wire()).to_bytes(2, "big") + w for q in wires))
            buffered = anyio.streams.buffered.BufferedByteReceiveStream(stream)
            rcodes = []
            for q in wires:
                size = int.from_bytes(await buffered.receive_exactly(2), "big")
                reply = dns.message.from_wire(await buffered.receive_exactly(size))
                assert reply.id == q.id
                rcodes.append(dns.rcode.to_text(reply.rcode()))
            assert rcodes == ["NOERROR", "NXDOMAIN", "REFUSED"]
            # an idle connection is closed by the server (waiting for it, not timing it)
            with anyio.fail_after(10):
                with pytest.raises((anyio.EndOfStream, anyio.IncompleteRead, ConnectionResetError)):
                    await buffered.receive_exactly(2)
        # a half-sent message is not answered and does not stop others
        stream = await anyio.connect_tcp("127.0.0.1", d.port)
        async with stream:
            await stream.send(b"\x00\x40abc")
            assert await d.addresses("web.acme.disco") == {"10.2.0.1"}


async def test_tcp_connections_are_bounded(nats_server, aggregator, client, prefix):
    await raw_announce(client, "acme", "web", Instance(id="w1", address="10.2.0.1", port=80, ttl=60.0, seq=1))
    async with start_dns(nats_server.url, prefix, ["acme"], tcp_connections=2) as d:
        held = [await anyio.connect_tcp("127.0.0.1", d.port) for _ in range(2)]
        await eventually(lambda: d.server.stats.tcp_open == 2)
        extra = await anyio.connect_tcp("127.0.0.1", d.port)
        async with extra:
            with anyio.fail_after(10), pytest.raises((anyio.EndOfStream, ConnectionResetError)):
                await extra.receive()   # closed at once by the server
        assert d.server.stats.tcp_refused == 1
        await held[0].aclose()
        await eventually(lambda: d.server.stats.tcp_open == 1)
        reply = await d.query("web.acme.disco", tcp=True)   # room again
        assert addresses(reply) == {"10.2.0.1"}
        await held[1].aclose()
        # UDP was never affected
        assert await d.addresses("web.acme.disco") == {"10.2.0.1"}
