"""What both modes of a worker share (see :mod:`bus.workers` for the guarantees): the delivery and stats
types, argument checks, naming, and the outcome of one delivery (decode, call the handler, dead-letter)."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import anyio
from nats.aio.msg import Msg

from bus.codec import decode
from bus.connection import Connection
from bus.deadletters import publish_dead_letter
from bus.errors import BadRequest, DiscoError
from bus.models import ChangeEvent
from bus.subjects import DEFAULT_CHANGES_STREAM, changes_stream_name, validate_service

__all__ = ["Delivery", "Handler", "StopWorker", "WorkerBase", "WorkerStats", "describe_exception", "sole_exception"]

log = logging.getLogger("disco.workers")

_STREAM_PREFIX = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True, slots=True)
class Delivery:
    """How an event reached the handler."""

    #: 1 for the first delivery, 2 for the first retry, ...
    attempt: int
    #: the event's sequence in the tenant's change stream (None in non-durable mode)
    stream_seq: int | None
    #: the change subject the event was published on
    subject: str
    group: str
    durable: bool


Handler = Callable[[ChangeEvent, Delivery], Awaitable[None]]


class StopWorker(Exception):
    """Raised by a handler when the worker itself cannot work (not this event's fault): the worker stops and
    hands its unfinished events back to the group, unacknowledged; :meth:`Worker.run` raises it."""


@dataclass(slots=True)
class WorkerStats:
    """Counts since the worker started."""

    handled: int = 0  # handler returned (acknowledged)
    failed: int = 0  # handler raised or overran its timeout
    retried: int = 0  # handed back for a later attempt
    dead_lettered: int = 0
    progress_acks: int = 0  # "still working on it" sent for events held longer than a third of ack_wait
    replayed: int = 0  # replayed dead letters handled


def _one_line(text: str, limit: int = 400) -> str:
    flat = " ".join(text.split())
    return flat.encode("ascii", "replace").decode()[:limit]


def describe_exception(exc: BaseException) -> str:
    text = str(exc).strip()
    return _one_line(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


class WorkerBase:
    """The configuration of one worker and the handling of one delivery; :class:`bus.workers.Worker` runs it."""


    def __init__(
        self,
        conn: Connection,
        group: str,
        handler: Handler,
        *,
        tenant: str | None = None,
        services: Iterable[str] = (),
        durable: bool = True,
        max_attempts: int = 5,
        concurrency: int = 1,
        handler_timeout: float | None = None,
        retry_delay: float = 1.0,
        max_retry_delay: float = 60.0,
        ack_wait: float = 30.0,
        batch: int = 16,
        start: Literal["all", "new"] = "all",
        stream_prefix: str = DEFAULT_CHANGES_STREAM,
        create_stream: bool = True,
        stream_replicas: int | None = None,
        stream_max_age: float = 7 * 24 * 3600.0,
        fetch_timeout: float = 1.0,
    ) -> None:
        self.conn = conn
        self.tenant = conn.tenant_or(tenant)
        self.dlq_subject = conn.subjects.dlq(self.tenant, group)  # validates the group (a DNS label)
        self.group = group
        self.handler = handler
        self.services = tuple(sorted({validate_service(s) for s in services}))
        self.durable = durable
        for name, value, low in (("max_attempts", max_attempts, 1), ("concurrency", concurrency, 1),
                                 ("batch", batch, 1), ("stream_replicas", stream_replicas or 1, 1)):
            if value < low:
                raise BadRequest(f"{name} must be at least {low}, got {value}")
        for fname, fvalue in (("retry_delay", retry_delay), ("max_retry_delay", max_retry_delay),
                              ("ack_wait", ack_wait), ("fetch_timeout", fetch_timeout),
                              ("stream_max_age", stream_max_age), ("handler_timeout", handler_timeout)):
            if fvalue is not None and not fvalue > 0:
                raise BadRequest(f"{fname} must be a positive number of seconds, got {fvalue}")
        if start not in ("all", "new"):
            raise BadRequest(f"start must be 'all' or 'new', got {start!r}")
        if not _STREAM_PREFIX.fullmatch(stream_prefix):
            raise BadRequest(f"invalid stream prefix {stream_prefix!r}: use 1-64 letters, digits, '_' and '-'")
        self.max_attempts = max_attempts
        self.concurrency = concurrency
        self.handler_timeout = handler_timeout
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.ack_wait = ack_wait
        self.batch = batch
        self.start = start
        self.stream_prefix = stream_prefix
        self.stream = changes_stream_name(stream_prefix, self.tenant)
        self.create_stream = create_stream
        self.stream_replicas = stream_replicas
        self.stream_max_age = stream_max_age
        self.fetch_timeout = fetch_timeout
        self.stats = WorkerStats()
        self._unfinished: dict[int, Msg] = {}

    # -- naming ------------------------------------------------------------------------------------------------
    @property
    def consumer_name(self) -> str:
        """``<group>``, or ``<group>-<8 hex>`` of the sorted service filter: one durable consumer per filter."""
        if not self.services:
            return self.group
        digest = hashlib.sha256(",".join(self.services).encode()).hexdigest()[:8]
        return f"{self.group}-{digest}"

    @property
    def subjects(self) -> list[str]:
        """The change subjects this worker reads."""
        if not self.services:
            return [self.conn.subjects.changes(self.tenant)]
        return [self.conn.subjects.changes(self.tenant, s) for s in self.services]

    def retry_delay_for(self, attempt: int) -> float:
        """Seconds before the retry that follows failed attempt ``attempt`` (1-based)."""
        return float(min(self.retry_delay * 2 ** min(attempt - 1, 30), self.max_retry_delay))

    # -- the outcome of one delivery (both modes) ----------------------------------------------------------------
    def _decode(self, data: bytes) -> tuple[ChangeEvent | None, str | None]:
        try:
            ev = decode(data, ChangeEvent, 1 << 20)
        except DiscoError as exc:
            return None, f"undecodable change event: {exc}"
        if ev.tenant != self.tenant:
            return None, f"change event of tenant {ev.tenant!r} on tenant {self.tenant!r}'s subjects"
        return ev, None

    async def _call(self, ev: ChangeEvent, d: Delivery) -> str | None:
        """Run the handler; None when it succeeded, else a one-line description of the failure."""
        try:
            if self.handler_timeout is not None:
                with anyio.fail_after(self.handler_timeout):
                    await self.handler(ev, d)
            else:
                await self.handler(ev, d)
        except StopWorker:
            raise
        except Exception as exc:
            self.stats.failed += 1
            error = describe_exception(exc) if not isinstance(exc, TimeoutError) or str(exc) else (
                f"handler did not finish within {self.handler_timeout:g} s")
            log.warning(
                "worker %s of tenant %s: handler failed on %s %s rev %d (attempt %d of %d): %s",
                self.group, self.tenant, ev.service, ev.instance.id, ev.revision, d.attempt, self.max_attempts, error,
            )
            return error
        self.stats.handled += 1
        return None

    async def _dead_letter(self, data: bytes, d: Delivery, error: str, stream: str | None = None) -> None:
        headers = {
            "Disco-Tenant": self.tenant, "Disco-Group": self.group, "Disco-Subject": d.subject,
            "Disco-Attempts": str(d.attempt), "Disco-Error": _one_line(error),
        }
        if d.stream_seq is not None:
            headers["Disco-Stream"] = stream or self.stream
            headers["Disco-Stream-Seq"] = str(d.stream_seq)
        # acknowledged by the dead-letter stream (or, with no stream, at least flushed to the server) before the
        # event is terminated
        if not await publish_dead_letter(self.conn, self.dlq_subject, data, headers):
            log.warning("worker %s of tenant %s: no stream keeps dead letters of %s", self.group, self.tenant,
                        self.dlq_subject)
        self.stats.dead_lettered += 1
        log.error("worker %s of tenant %s: event %s dead-lettered on %s after %d attempt(s): %s",
                  self.group, self.tenant, d.stream_seq if d.stream_seq is not None else d.subject,
                  self.dlq_subject, d.attempt, error)

    # =========================================================================================================
    @property
    def _who(self) -> str:
        return f"worker {self.group} of tenant {self.tenant}"


def sole_exception(group: BaseExceptionGroup[BaseException]) -> BaseException:
    leaves = list(group.exceptions)
    while len(leaves) == 1 and isinstance(leaves[0], BaseExceptionGroup):
        leaves = list(leaves[0].exceptions)
    return leaves[0] if len(leaves) == 1 else group
