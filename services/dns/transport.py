"""Serving DNS over UDP and TCP (RFC 1035 §4.2, RFC 7766) with anyio, inside the caller's task group.

UDP: one socket, answered in arrival order by one task; building an answer does no I/O, so a flood is bounded by
the kernel's socket buffer (excess datagrams are dropped there) and the server keeps answering what it reads.

TCP: two-byte length-prefixed messages, answered in order on each connection (pipelined queries are fine). At most
``max_connections`` are served at once (more are closed at once and counted); a connection is closed after
``idle`` seconds without a complete query, after ``max_queries`` queries, or when a peer sends a zero length.
"""

from __future__ import annotations

import logging
import socket

import anyio
from anyio.abc import Listener, SocketAttribute, SocketStream, UDPSocket
from anyio.streams.buffered import BufferedByteReceiveStream

from services.dns.protocol import Responder
from services.dns.settings import Endpoint

__all__ = ["SocketListener", "TcpServer", "UdpServer", "bind"]

SocketListener = Listener[SocketStream]

log = logging.getLogger("disco.dns")


def _listen_error(transport: str, endpoint: Endpoint, exc: OSError) -> OSError:
    """The bind failure, saying where (an OSError still: its ``strerror`` is the whole sentence)."""
    return OSError(exc.errno, f"cannot listen on {transport} {endpoint}: {exc.strerror or exc}")


async def bind(endpoint: Endpoint, attempts: int = 20) -> tuple[UDPSocket, SocketListener, int]:
    """A UDP socket and a TCP listener on the same address and port; with port 0, a free port for both (another
    is tried when the TCP side of the one UDP got is taken). Raises OSError saying which side failed."""
    v6 = ":" in endpoint.host
    for attempt in range(attempts):
        try:
            udp = await anyio.create_udp_socket(family=socket.AF_INET6 if v6 else socket.AF_INET,
                                                local_host=endpoint.host, local_port=endpoint.port)
        except OSError as exc:
            raise _listen_error("udp", endpoint, exc) from None
        port: int = udp.extra(SocketAttribute.local_port)
        try:
            tcp = await anyio.create_tcp_listener(local_host=endpoint.host, local_port=port)
        except OSError as exc:
            await udp.aclose()
            if endpoint.port != 0 or attempt == attempts - 1:
                raise _listen_error("tcp", Endpoint(host=endpoint.host, port=port), exc) from None
            continue
        return udp, tcp, port
    raise AssertionError("unreachable")


class UdpServer:
    """Answers UDP queries on ``sock`` until cancelled (and closes it)."""

    def __init__(self, responder: Responder, sock: UDPSocket) -> None:
        self.responder = responder
        self.sock = sock

    async def run(self) -> None:
        async with self.sock:
            await self._serve(self.sock)

    async def _serve(self, sock: UDPSocket) -> None:
        respond = self.responder.respond
        while True:
            try:
                data, addr = await sock.receive()
            except OSError as exc:  # an ICMP error reported on the socket: not ours to stop for
                log.debug("udp receive: %s", exc)
                continue
            try:
                answer = respond(data, "udp")
            except Exception:
                log.exception("udp query from %s could not be answered", addr[0])
                continue
            if answer is not None:
                try:
                    await sock.sendto(answer, addr[0], addr[1])
                except OSError as exc:
                    log.debug("udp answer to %s not sent: %s", addr[0], exc)


class TcpServer:
    """Answers TCP queries on ``listener`` until cancelled, then closes it (see the module docstring for the
    bounds)."""

    def __init__(
        self, responder: Responder, listener: SocketListener, *, max_connections: int = 256, idle: float = 10.0,
        max_queries: int = 1000,
    ) -> None:
        self.responder = responder
        self.listener = listener
        self.max_connections = max_connections
        self.idle = idle
        self.max_queries = max_queries

    async def run(self) -> None:
        async with self.listener:
            await self.listener.serve(self._connection)

    async def _connection(self, stream: SocketStream) -> None:
        stats = self.responder.stats
        async with stream:
            if stats.tcp_open >= self.max_connections:
                stats.tcp_refused += 1
                return
            stats.tcp_open += 1
            try:
                await self._serve(stream)
            except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, anyio.ClosedResourceError,
                    OSError):
                pass  # the peer went away
            finally:
                stats.tcp_open -= 1

    async def _serve(self, stream: SocketStream) -> None:
        buffered = BufferedByteReceiveStream(stream)
        for _ in range(self.max_queries):
            with anyio.move_on_after(self.idle) as idle:
                size = int.from_bytes(await buffered.receive_exactly(2), "big")
                query = await buffered.receive_exactly(size) if size else b""
            if idle.cancelled_caught or not size:
                return
            try:
                answer = self.responder.respond(query, "tcp")
            except Exception:
                log.exception("tcp query could not be answered")
                return
            if answer is None:
                return
            with anyio.move_on_after(self.idle) as stuck:
                await stream.send(len(answer).to_bytes(2, "big") + answer)
            if stuck.cancelled_caught:
                return  # the peer does not read its answers
