"""Messages handled as nats-py's read loop parses them, and writes made at once: less work per message.

nats-py hands every message of a subscription with a callback to an ``asyncio.Queue``, and a task per subscription
takes it from there and awaits the callback: a queue operation, a coroutine and a task switch per message. An
aggregator reads four messages per announce (the request, the KV write's ack, the write coming back through its KV
watch, the event's ack) and a start reads one per entry, so that machinery was a tenth of its CPU (README,
Performance). :func:`subscribe_direct` subscribes with a plain function instead: it is called in the read loop,
must not block (announces are handed to the tenant's fair queue, scheduler.py), and must not raise (what it raises
is logged and the message dropped).

What stays nats-py's: parsing, headers, JetStream flow control and the ordered consumer's sequence checks and
resets (all done before a message is queued), ``delivered``, unsubscribe and drain. What changes: a direct
subscription has no backlog (``pending_msgs`` is 0), so it is never a slow consumer. It relies on the
subscription's private ``_pending_queue`` (nats-py 2.16, the range ``pyproject.toml`` allows); a nats-py without it
gets the queued callback, which behaves the same, only slower (:func:`is_direct` tells; a test fails if the pinned
nats-py stops allowing it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import ProtocolError
from nats.protocol.parser import AWAITING_CONTROL_LINE, AWAITING_MSG_PAYLOAD, CRLF_SIZE, Parser

__all__ = ["DirectQueue", "FastParser", "ack_fields", "drop_raw", "is_direct", "make_direct", "parse_faster",
           "publish", "quiet", "subscribe_direct", "take_raw", "write_now"]

log = logging.getLogger("disco.aggregator.direct")

Handler = Callable[[Msg], None]


class DirectQueue:
    """Stands in for a subscription's pending queue: ``put_nowait`` calls the handler at once."""

    def __init__(self, sub: Subscription, handler: Handler) -> None:
        self._sub = sub
        self._handler = handler

    def put_nowait(self, msg: Msg) -> None:
        self._sub._pending_size -= len(msg.data)  # counted by nats-py just before; nothing stays pending
        try:
            self._handler(msg)
        except Exception:
            log.exception("message on %s not handled", msg.subject)

    def qsize(self) -> int:
        return 0

    def empty(self) -> bool:
        return True

    def full(self) -> bool:
        return False

    def task_done(self) -> None:
        pass

    async def join(self) -> None:
        return None

    async def get(self) -> Msg:
        await asyncio.get_running_loop().create_future()  # nothing is ever queued
        raise AssertionError("unreachable")


def _core(sub: Any) -> Any:
    """The core subscription: a JetStream push subscription wraps one (and copies its queue)."""
    return getattr(sub, "_sub", sub)


def make_direct(sub: Any, handler: Handler) -> bool:
    """Turn a subscription made with a callback into a direct one; False if this nats-py does not allow it.

    Messages read before are handed to ``handler`` first, here, in the order they came: nats-py's task for the
    callback leaves a message in the queue until it runs, and its callback must not await (it runs to the end in
    the step that took the message), so no message is handled out of order."""
    inner = _core(sub)
    queue = getattr(inner, "_pending_queue", None)
    if not isinstance(queue, asyncio.Queue) or getattr(sub, "_pending_queue", queue) is not queue:
        return False
    direct = DirectQueue(inner, handler)
    while not queue.empty():
        msg = queue.get_nowait()
        queue.task_done()
        direct.put_nowait(msg)
    inner._pending_queue = direct
    if sub is not inner:
        sub._pending_queue = direct
    return True


def is_direct(sub: Any) -> bool:
    return isinstance(getattr(_core(sub), "_pending_queue", None), DirectQueue)


async def subscribe_direct(nc: Client, subject: str, handler: Handler, **kw: Any) -> Subscription:
    """``nc.subscribe(subject, **kw)`` whose messages go to ``handler`` (a plain function) as they are read."""

    async def cb(msg: Msg) -> None:  # a nats-py without direct handling
        handler(msg)

    sub = await nc.subscribe(subject, cb=cb, **kw)
    make_direct(sub, handler)
    return sub


def quiet(nc: Client) -> bool:
    """Nothing waits to be written on ``nc`` (the flusher has written everything): see :func:`write_now`. False
    when this nats-py keeps its pending writes otherwise (then nothing is ever written early)."""
    return getattr(nc, "_pending_data_size", None) == 0 and isinstance(getattr(nc, "_pending", None), list)


def write_now(nc: Client) -> None:
    """Write what is pending on ``nc`` to its socket now, instead of in the flusher task's next turn.

    nats-py writes publishes from a task of its own, woken by each publish: one step of the event loop later, and
    behind every task already woken (on an aggregator, the KV watch applying the write just acknowledged). For a
    write on the path to a reply this is latency; under load it is what batches many publishes into one socket
    write. So a caller that found the connection :func:`quiet` before publishing writes at once; one that found
    publishes waiting leaves them all to the flusher."""
    transport = getattr(nc, "_transport", None)
    if getattr(nc, "_pending_data_size", 0) and transport is not None and nc.is_connected:
        try:
            transport.writelines(nc._pending[:])
        except OSError:
            return  # the flusher meets the error too, and handles it (reconnect)
        nc._pending = []
        nc._pending_data_size = 0


#: takes (subject, stream sequence, messages pending, payload) of a plain message of an ordered consumer
RawHandler = Callable[[str, int, int, bytes], None]


class FastParser(Parser):
    """nats-py's protocol parser with a faster path for what an aggregator mostly reads: runs of ``MSG`` and
    ``HMSG``, split at the spaces instead of matched with regular expressions, and the buffer cut once per read
    instead of twice per message (the parser was a fifth of a start's CPU with a million entries). Anything else
    (``PING``, ``PONG``, ``INFO``, ``+OK``, ``-ERR``) goes to nats-py's own :meth:`Parser.parse`, and a message cut
    by the end of a read waits in the same state nats-py's would (``msg_arg``, ``needed``, ``header_needed``), so
    either parser can take over from the other at any point."""

    #: ordered consumers whose plain messages are taken raw (:func:`take_raw`), by subscription
    raw: dict[Any, RawHandler] | None = None

    async def parse(self, data: bytes = b"") -> None:
        buf = self.buf
        buf.extend(data)
        process = self.nc._process_msg
        raw = self.raw
        pos = 0
        n = len(buf)
        try:
            while pos < n:
                if self.state == AWAITING_MSG_PAYLOAD:  # the rest of a message cut by the end of a read
                    needed, hsize = self.needed, self.header_needed
                    if n - pos < needed + CRLF_SIZE:
                        return
                    arg = self.msg_arg
                    sid, subject, reply = arg["sid"], arg["subject"], arg["reply"]
                    start = pos
                    self.header_needed = 0
                    self.state = AWAITING_CONTROL_LINE
                else:
                    if buf.startswith(b"MSG ", pos):
                        head, with_headers = 4, False
                    elif buf.startswith(b"HMSG ", pos):
                        head, with_headers = 5, True
                    else:  # another operation: nats-py's parser takes the rest of the buffer
                        del buf[:pos]
                        pos = 0
                        await super().parse()
                        return
                    end = buf.find(b"\r\n", pos)
                    if end < 0:
                        return  # the control line is not all here yet
                    args = buf[pos + head:end].split()
                    try:
                        hsize = int(args.pop(-2)) if with_headers else 0
                        needed = int(args[-1])
                        sid = int(args[1])
                        subject = bytes(args[0])
                        reply = bytes(args[2]) if len(args) == 4 else b""
                        if len(args) not in (3, 4):
                            raise ValueError
                    except (ValueError, IndexError):
                        raise ProtocolError("nats: malformed MSG") from None
                    start = end + CRLF_SIZE
                    if n - start < needed + CRLF_SIZE:  # the payload is not all here: wait as nats-py's parser does
                        self.msg_arg["subject"], self.msg_arg["sid"], self.msg_arg["reply"] = subject, sid, reply
                        self.needed, self.header_needed = needed, hsize
                        self.state = AWAITING_MSG_PAYLOAD
                        pos = start
                        return
                # one whole message, its headers and payload from `start`
                pos = start + needed + CRLF_SIZE
                payload = bytes(buf[start + max(hsize, 0):start + needed])
                if hsize > 0:
                    hdr: bytes | None = bytes(buf[start:start + hsize])
                elif raw and self._raw(sid, reply, payload, subject):
                    continue
                else:
                    hdr = None
                await process(sid, subject, reply, payload, hdr)
                if self.buf is not buf:  # reset meanwhile (a reconnect): nothing here is to be read any more
                    return
        finally:
            if pos and self.buf is buf:
                del buf[:pos]

    def _raw(self, sid: int, reply: bytes, payload: bytes, subject: bytes) -> bool:
        """A plain message (no headers) of an ordered consumer taken raw (:func:`take_raw`): what nats-py's
        ``_process_msg`` does for it (counts, the consumer's sequence check and tracking), without building a
        ``Msg``; False (nats-py's path) for anything else, a sequence gap included (nats-py resets the consumer)."""
        nc = self.nc
        sub = nc._subs.get(sid)
        handler = self.raw.get(sub) if sub is not None and self.raw is not None else None
        if handler is None:
            return False
        jsi = sub._jsi
        reply_s = reply.decode()
        fields = ack_fields(reply_s)
        if fields is None or fields[1] != jsi._dseq:
            return False
        sseq, _, left = fields
        nc.stats["in_msgs"] += 1
        nc.stats["in_bytes"] += len(payload)
        sub._received += 1
        jsi._active = True
        jsi._dseq += 1
        jsi._sseq = sseq
        try:
            handler(subject.decode(), sseq, left, payload)
        except Exception:
            log.exception("message on %s not handled", subject)
        jsi.track_sequences(reply_s)
        return True


def ack_fields(reply: str) -> tuple[int, int, int] | None:
    """(stream sequence, consumer sequence, messages pending) from a JetStream delivery's ack subject in its common
    form ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<time>.<pending>``, read without building
    ``msg.metadata``; None for the other forms (a domain, an account hash)."""
    tokens = reply.split(".")
    if len(tokens) != 9 or tokens[1] != "ACK":
        return None
    return int(tokens[5]), int(tokens[6]), int(tokens[8])


def take_raw(nc: Client, sub: Any, handler: RawHandler) -> bool:
    """Have the plain messages (no headers: a KV value) of ordered consumer ``sub`` handed to ``handler`` by
    ``nc``'s :class:`FastParser` as they are parsed (a start reads a million of them); the others (headers,
    flow control, heartbeats, a gap) still take nats-py's path, and a direct handler (:func:`make_direct`) if it
    has one. False if ``nc`` has not the fast parser or ``sub`` is not an ordered consumer."""
    inner = _core(sub)
    jsi = getattr(inner, "_jsi", None)
    if not isinstance(nc._ps, FastParser) or jsi is None or not getattr(jsi, "_ordered", False):
        return False
    if nc._ps.raw is None:
        nc._ps.raw = {}
    nc._ps.raw[inner] = handler
    return True


def drop_raw(nc: Client, sub: Any) -> None:
    """Stop :func:`take_raw` for ``sub`` (its consumer is gone)."""
    table = getattr(nc._ps, "raw", None)
    if table is not None:
        table.pop(_core(sub), None)


def parse_faster(nc: Client) -> bool:
    """Give ``nc`` the :class:`FastParser` (keeping whatever its parser holds); False if it has another parser."""
    if type(nc._ps) is not Parser:
        return isinstance(nc._ps, FastParser)
    nc._ps.__class__ = FastParser
    return True


def _plain(token: str) -> bool:
    return not (" " in token or "\r" in token or "\n" in token or "\t" in token)


async def publish(nc: Client, subject: str, payload: bytes, reply: str = "",
                  headers: dict[str, str] | None = None) -> None:
    """``nc.publish(subject, payload, reply=reply, headers=headers)`` for the aggregator's own writes, events and
    replies: the protocol line and the headers made in one format each instead of nats-py's checks and loops (3 per
    announce were a quarter of the aggregator's CPU). Anything nats-py must decide (not connected, a subject or a
    header it must refuse, a payload over the server's limit, a nats-py keeping its writes otherwise) goes to
    ``nc.publish``, which behaves as always."""
    pending = getattr(nc, "_pending", None)
    if (not nc.is_connected or type(pending) is not list or len(payload) > nc._max_payload or not subject
            or not _plain(subject) or not _plain(reply)
            or (headers is not None and not all(k and _plain(k) and ":" not in k and "\r" not in v and "\n" not in v
                                                for k, v in headers.items()))):
        await nc.publish(subject, payload, reply=reply, headers=headers)
        return
    if headers is None:
        cmd = b"PUB %s %s %d\r\n%s\r\n" % (subject.encode(), reply.encode(), len(payload), payload)
    else:
        # k.strip(), not f"{k}": a key may be a str Enum (nats.js.api.Header), which formats as its member name
        hdr = ("NATS/1.0\r\n" + "".join(f"{k.strip()}: {v.strip()}\r\n" for k, v in headers.items())
               + "\r\n").encode()
        cmd = b"HPUB %s %s %d %d\r\n%s%s\r\n" % (subject.encode(), reply.encode(), len(hdr), len(hdr) + len(payload),
                                                 hdr, payload)
    pending.append(cmd)
    nc._pending_data_size += len(cmd)
    nc.stats["out_msgs"] += 1
    nc.stats["out_bytes"] += len(payload)
    if nc._max_pending_size > 0 and nc._pending_data_size > nc._max_pending_size:
        await nc._flush_pending(force_flush=True)
    elif nc._flush_queue is not None and nc._flush_queue.empty():
        await nc._flush_pending()
