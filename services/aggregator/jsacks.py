"""Acknowledged JetStream publishes for the write path, cheaper than ``js.publish``.

``js.publish`` goes through nats-py's generic request: a random token per call, ``asyncio.wait_for`` (an extra
future and callbacks) and a ``PubAck`` dataclass built from the ack. Every announce makes one such write, and that
machinery was about a tenth of the aggregator's CPU (README, Performance). Here the reply subject is a counter under one
inbox (handled as it is read, :mod:`services.aggregator.direct`), the timeout one timer handle, and the ack is
read for its sequence only.

Errors are those of ``js.publish``, so callers cannot tell the difference: no stream listening raises
:class:`nats.js.errors.NoStreamResponseError`, an error in the ack :meth:`nats.js.errors.APIError.from_error`
(``err_code`` 10071 for a compare-and-set lost), no ack in time :class:`nats.errors.TimeoutError`.
"""

from __future__ import annotations

import asyncio
import itertools
import json

import anyio
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from services.aggregator.direct import publish, quiet, subscribe_direct

__all__ = ["AckedPublisher"]

_STATUS = "Status"
_NO_RESPONDERS = "503"


class AckedPublisher:
    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self._prefix = ""
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._tokens = itertools.count()
        self._lock = anyio.Lock()

    async def _start(self) -> None:
        async with self._lock:
            if self._prefix:
                return
            prefix = self.nc.new_inbox() + "."

            def on_ack(msg: Msg) -> None:
                fut = self._waiting.get(msg.subject[len(prefix):])
                if fut is not None and not fut.done():
                    fut.set_result(msg)

            await subscribe_direct(self.nc, prefix + "*", on_ack)
            self._prefix = prefix

    def idle(self) -> bool:
        """No publish waits for its ack, and nothing waits to be written (:func:`~services.aggregator.direct.quiet`)."""
        return not self._waiting and quiet(self.nc)

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str], timeout: float) -> int:
        """Publish into a stream and return the stored message's sequence (see the module's docstring)."""
        if not self._prefix:
            await self._start()
        token = str(next(self._tokens))
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Msg] = loop.create_future()
        self._waiting[token] = fut
        timer = loop.call_later(timeout, _expire, fut)
        try:
            await publish(self.nc, subject, payload, reply=self._prefix + token, headers=headers)
            msg = await fut
        finally:
            timer.cancel()
            del self._waiting[token]
        if msg.headers and msg.headers.get(_STATUS) == _NO_RESPONDERS:
            raise nats.js.errors.NoStreamResponseError
        resp = json.loads(msg.data)
        if "error" in resp:
            raise nats.js.errors.APIError.from_error(resp["error"])
        return int(resp["seq"])


def _expire(fut: asyncio.Future[Msg]) -> None:
    if not fut.done():
        fut.set_exception(nats.errors.TimeoutError())
