"""Following the KV bucket's stream: what one of its messages means (:class:`KvChange`), and the ordered consumer
the follower drains (:class:`KvWatch`, filled by :meth:`services.aggregator.store.ViewStore.watch`)."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, NamedTuple

from nats.aio.msg import Msg

from bus.live import EVENT_HEADER
from services.aggregator.direct import ack_fields

__all__ = ["DELETE_MARKER", "EVENT_HEADER", "KV_OP", "KvChange", "KvWatch", "ack_position", "change_of", "kv_change"]

KV_OP = "KV-Operation"
DELETE_MARKER = "Nats-Marker-Reason"


class KvChange(NamedTuple):
    """One message of the bucket (immutable; a tuple because a million are made at a start)."""

    key: str
    value: bytes | None  # None for a delete or purge
    revision: int
    event: str | None = None  # the Disco-Event header of the write, if it has one
    body: bytes = b""  # a delete marker's body: the removed record (for its change event)


class KvWatch:
    """An ordered consumer over every key of the bucket: the last message of each key, then ``None`` (the
    consumer's initial backlog is delivered: not yet a *verified* complete load), then every change.

    Changes wait in a deque that the follower drains without an ``await`` per change (:meth:`pop`): a million
    awaited queue hand-overs were a large part of a start's CPU (issue 11)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.pending: deque[KvChange | None] = deque()
        self._wake = asyncio.Event()
        self._waiting = False
        self.sub: Any = None
        self.init_done = False
        self.delivered = 0

    async def next(self) -> KvChange | None:
        await self.wait()
        return self.pending.popleft()

    async def wait(self) -> None:
        """Until :meth:`ready`."""
        while not self.pending:
            self._wake.clear()
            self._waiting = True
            try:
                await self._wake.wait()
            finally:
                self._waiting = False

    def ready(self) -> bool:
        """True when :meth:`next` would return without waiting (the follower then takes it without a timer:
        a timer per change was a fifth of a start's CPU with a million entries)."""
        return bool(self.pending)

    def pop(self) -> KvChange | None:
        """The next change, taken without waiting; only when :meth:`ready`."""
        return self.pending.popleft()

    def _add(self, change: KvChange | None) -> None:
        self.pending.append(change)
        if self._waiting:  # else nobody to wake (an Event.set per change was 5 % of a start)
            self._wake.set()

    def _put(self, msg: Msg) -> None:
        seq, left = ack_position(msg.reply)
        self._took(change_of(self.prefix, msg, seq), left)

    def _put_plain(self, subject: str, seq: int, left: int, data: bytes) -> None:
        """A value without headers, as the fast parser hands it over (``direct.take_raw``)."""
        self._took(KvChange(subject[len(self.prefix):], data, seq), left)

    def _took(self, change: KvChange, left: int) -> None:
        self.delivered += 1
        self._add(change)
        if left == 0 and not self.init_done:
            self.init_done = True
            self._add(None)


def ack_position(reply: str) -> tuple[int, int]:
    """(stream sequence, messages pending) from a JetStream message's ack subject: what ``msg.metadata`` gives,
    without building its objects and timestamp for each of a million messages."""
    fields = ack_fields(reply)
    if fields is not None:
        return fields[0], fields[2]
    meta = Msg.Metadata._from_reply(reply)  # other forms (a domain, an account hash), as msg.metadata reads them
    return int(meta.sequence.stream), int(meta.num_pending)


def change_of(prefix: str, msg: Msg, seq: int | None = None) -> KvChange:
    """The KV change one message of the bucket's stream holds (a value, or a delete marker with its body)."""
    if seq is None:
        seq = int(msg.metadata.sequence.stream)
    return kv_change(msg.subject[len(prefix):], msg.headers, msg.data, seq)


def kv_change(key: str, headers: dict[str, str] | None, data: bytes | None, seq: int) -> KvChange:
    """The change a message of ``key`` with these headers and data makes, at stream sequence ``seq``."""
    if not headers:  # a plain value (most of a load)
        return KvChange(key, data or b"", seq)
    deleted = headers.get(KV_OP) in ("DEL", "PURGE") or DELETE_MARKER in headers
    return KvChange(key, None if deleted else (data or b""), seq, headers.get(EVENT_HEADER),
                    (data or b"") if deleted else b"")
