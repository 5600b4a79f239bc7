"""Per-tenant workers: each change event of a tenant handled by one process of a group.

::

    async def handler(ev: bus.ChangeEvent, d: bus.Delivery) -> None:
        ...  # raise to have the event retried

    async with bus.worker(conn, "billing-sync", handler, services=["billing"]):
        await anyio.sleep_forever()

**Durable mode** (the default). All processes that run a worker of the same tenant, group and service filter
share one durable JetStream pull consumer, named ``<group>`` (``<group>-<hash of the services>`` with a service
filter), on the tenant's change stream ``<stream_prefix>_<tenant>`` (subjects ``disco.<t>.changes.*``): like a
queue group, each event goes to one of them at a time; another group gets every event again, and a tenant's
workers only ever read that tenant's stream. If the stream does not exist yet (the aggregators create it with the
tenant's first event, with their replica count) the worker waits for it; it creates it itself (``create_stream``,
the aggregators' configuration) only when it knows the replica count: ``stream_replicas`` given, or a server that
is not part of a cluster (one replica). So a worker never makes a one-replica stream on a cluster. A new group
starts with the oldest event the stream holds (``start="all"``, kept ``changes_max_age``, 7 days by default) or
with the next one (``start="new"``).

Guarantees:

- **At least once.** An event is acknowledged only after the handler returned. A handler that raises (or
  overruns ``handler_timeout``) gets it again after a growing delay (``retry_delay`` × 2^(attempt-1), at most
  ``max_retry_delay`` seconds); a worker that dies gets it redelivered, to any process of the group, once
  ``ack_wait`` seconds passed without word (a live worker keeps its events with progress acks while it works on
  them, however long that takes); a worker that stops cleanly (cancellation) hands its unfinished events back at
  once. So an event can be handled twice (a crash between the handler's end and its acknowledgement), never
  zero times while the stream keeps it.
- **Dead letters.** After ``max_attempts`` failed deliveries (default 5) the event is published, unchanged, to
  ``disco.<t>.dlq.<group>`` with headers ``Disco-Tenant``, ``Disco-Group``, ``Disco-Subject``, ``Disco-Stream``,
  ``Disco-Stream-Seq``, ``Disco-Attempts`` and ``Disco-Error``, stored by the tenant's dead-letter stream (bounded:
  see :mod:`bus.deadletters`), then terminated (never delivered again). An event delivered more than
  ``max_attempts`` times without an outcome (its worker died each time) is dead-lettered without calling the
  handler again; an event that cannot be decoded is dead-lettered at once. Dead letters replayed with
  :func:`bus.deadletters.replay` (``disco dlq replay``) come back to one process of the group.
- **A handler can stop the worker.** A handler that raises :class:`StopWorker` (e.g. its command cannot run at
  all) ends :meth:`Worker.run` with that exception; the event, and every other unfinished one, goes back to the
  group unacknowledged (nothing is dead-lettered for a fault of the worker itself). That delivery still counts
  towards ``max_attempts`` (the server counts deliveries), so a group whose every start fails this way ends up
  dead-lettering the event in hand, never the events behind it.
- **Order.** The stream keeps a tenant's events in the order they were published. One process with
  ``concurrency=1`` (the default) hands them to its handler in that order, except that a retried event comes back
  after its delay (later events are handled meanwhile) and redelivered events come when they come. Several
  processes, or ``concurrency > 1``, handle events in parallel, so there is no order between them.
- **Idempotence by revision.** ``ChangeEvent.revision`` (the live view's revision of the change) rises with every
  change of an instance, so a handler stays correct under duplicates and reordering by keeping, per
  ``(service, instance.id)``, the highest revision it applied (removals included, as tombstones) and ignoring any
  event whose revision is not higher; :class:`Delivery` gives the attempt number and stream sequence too.

**Non-durable mode** (``durable=False``): a plain core-NATS queue subscription on ``disco.<t>.changes.*`` (or the
filtered services) with queue ``<group>``: faster, but at most once: events published while no process of the
group runs, or held by a process that dies, are lost. A failing handler is retried in process with the same
delays, then dead-lettered the same way (without stream headers).

Workers are structured: :meth:`Worker.run` serves until cancelled (``await tg.start(w.run)`` returns once it
consumes), :func:`worker` runs one for the duration of a block. Handlers run with bounded concurrency
(``concurrency``, default 1). Times are seconds (floats).

JetStream API subjects a durable worker uses (what a tenant's credentials must allow): ``$JS.API.CONSUMER.CREATE.
<stream>.<durable>[.<filter>]`` (creates or binds the consumer), ``$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>``
(fetch), publishes to ``$JS.ACK.<stream>.<durable>.>`` (ack, nak, term, progress), ``$JS.API.STREAM.CREATE.
<stream>`` only with ``create_stream`` when the stream is missing, plus ``disco.<t>.dlq.<group>`` (publish) and
its ``_INBOX.<t>.>`` (subscribe). For dead letters and their replays: ``$JS.API.STREAM.INFO.<stream>`` and
``$JS.API.STREAM.INFO.<stream>_DLQ`` (``.CREATE.`` if the worker must create it), and the same consumer subjects on
``<stream>_DLQ`` for the durable ``<group>-replay``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal

import anyio
import nats.errors
import nats.js.errors
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from bus.connection import Connection
from bus.deadletters import ensure_dlq_stream, replay_subject
from bus.errors import ConnectionFailed, DiscoError
from bus.jsbind import bind_pull, clustered
from bus.models import ChangeEvent
from bus.streams import changes_stream_config, dlq_stream_name
from bus.worker_base import Delivery, Handler, StopWorker, WorkerBase, WorkerStats, describe_exception, sole_exception

__all__ = ["Delivery", "Handler", "StopWorker", "Worker", "WorkerStats", "worker"]

log = logging.getLogger("disco.workers")


class Worker(WorkerBase):
    """One process's member of a worker group (see the module docstring); run it with :meth:`run`."""

    # -- running -----------------------------------------------------------------------------------------------
    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Consume until cancelled; ``task_status.started()`` once the consumer is bound (or subscribed).

        Raises :class:`PermissionDenied` when the server refuses the consumer, :class:`BadRequest` when a durable
        consumer of that name exists with an incompatible configuration, :class:`Unavailable` when there is no
        JetStream, :class:`ConnectionFailed` when the connection is closed, :class:`StopWorker` from the handler.
        """
        try:
            if self.durable:
                await self._run_durable(task_status)
            else:
                await self._run_core(task_status)
        except BaseExceptionGroup as group:
            raise sole_exception(group) from None

    # durable mode
    # =========================================================================================================
    def _consumer_config(self) -> api.ConsumerConfig:
        subjects = self.subjects
        return api.ConsumerConfig(
            name=self.consumer_name,
            durable_name=self.consumer_name,
            description=f"disco worker group {self.group} of tenant {self.tenant}",
            deliver_policy=api.DeliverPolicy.ALL if self.start == "all" else api.DeliverPolicy.NEW,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait,
            max_deliver=-1,  # the worker decides when to give up (dead letter), never the server silently
            filter_subject=subjects[0] if len(subjects) == 1 else None,
            filter_subjects=subjects if len(subjects) > 1 else None,
            replay_policy=api.ReplayPolicy.INSTANT,
        )

    def _stream_config(self, replicas: int) -> api.StreamConfig:
        """The configuration the aggregators give a tenant's change stream (one definition: bus/streams.py)."""
        return changes_stream_config(self.conn.subjects, self.stream_prefix, self.tenant, replicas=replicas,
                                     max_age=self.stream_max_age)

    def _new_stream_replicas(self) -> int | None:
        """Replicas for a stream this worker creates: the given count, else 1 on a lone server, else None (on a
        cluster only the aggregators know their replica count: wait for their stream)."""
        if self.stream_replicas is not None:
            return self.stream_replicas
        return None if clustered(self.conn) else 1

    async def _create_stream(self) -> bool:
        replicas = self._new_stream_replicas() if self.create_stream else None
        if replicas is None:
            return False
        try:
            await self.conn.js.add_stream(self._stream_config(replicas))
            log.info("worker %s created stream %s (%d replica%s)", self.group, self.stream, replicas,
                     "" if replicas == 1 else "s")
        except (nats.errors.Error, TimeoutError) as exc:  # created meanwhile, or not ours to create: wait
            log.debug("stream %s not created by the worker: %s", self.stream, describe_exception(exc))
            return False
        return True

    async def _ensure_consumer(self) -> JetStreamContext.PullSubscription:
        waiting = " (the aggregators create it with the tenant's first event"
        waiting += "; give the worker stream_replicas / --replicas to create it)" if clustered(self.conn) else ")"
        return await bind_pull(self.conn, self.stream, self._consumer_config(), who=self._who,
                               create=self._create_stream, waiting=waiting)


    async def _fetch(self, psub: JetStreamContext.PullSubscription) -> list[Msg]:
        try:
            return await psub.fetch(self.batch, timeout=self.fetch_timeout)
        except TimeoutError:  # nats-py raises its own or asyncio's: nothing to fetch in time
            return []

    async def _run_durable(self, task_status: TaskStatus[None]) -> None:
        psub = await self._ensure_consumer()
        log.info("worker %s of tenant %s consuming %s (durable consumer %s)", self.group, self.tenant, self.stream,
                 self.consumer_name)
        task_status.started()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._progress_loop)
                tg.start_soon(self._replays)
                await self._consume(psub, self._ensure_consumer, tg)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
                for msg in list(self._unfinished.values()):  # hand them back at once, not after ack_wait
                    await self._settle(msg, "nak")
                self._unfinished.clear()

    async def _consume(
        self, psub: JetStreamContext.PullSubscription,
        rebind: Callable[[], Awaitable[JetStreamContext.PullSubscription]], tg: anyio.abc.TaskGroup,
    ) -> None:
        """Fetch and handle until cancelled (``rebind`` when the consumer or its stream went away)."""
        delay = 0.1
        slots = anyio.Semaphore(self.concurrency)
        try:
            while True:
                try:
                    msgs = await self._fetch(psub)
                    delay = 0.1
                except nats.errors.ConnectionClosedError:
                    raise ConnectionFailed("the NATS connection is closed") from None
                except Exception as exc:  # consumer or stream gone, JetStream restarting...
                    log.warning("%s: fetch failed (%s); binding again", self._who, describe_exception(exc))
                    await anyio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    await self._unsubscribe(psub)
                    psub = await rebind()
                    continue
                for msg in msgs:
                    self._unfinished[id(msg)] = msg
                for msg in msgs:
                    if self.concurrency == 1:  # in order, inline: no task per event, acks leave in batches
                        await self._handle_durable(msg, None)
                    else:
                        await slots.acquire()
                        tg.start_soon(self._handle_durable, msg, slots)
        finally:
            with anyio.CancelScope(shield=True):
                await self._unsubscribe(psub)

    async def _replays(self) -> None:
        """Consume the group's replayed dead letters (``<group>-replay`` on the tenant's dead-letter stream,
        created here with the change stream's replicas if the aggregators have not made it)."""
        stream = dlq_stream_name(self.stream_prefix, self.tenant)
        try:
            info = await self.conn.js.stream_info(self.stream)
            await ensure_dlq_stream(self.conn, self.stream_prefix, self.tenant, info.config.num_replicas or 1)
        except (nats.errors.Error, TimeoutError) as exc:
            log.debug("%s: dead-letter stream not checked: %s", self._who, describe_exception(exc))
        subject = replay_subject(self.conn.subjects, self.tenant, self.group)
        cfg = api.ConsumerConfig(
            name=f"{self.group}-replay", durable_name=f"{self.group}-replay",
            description=f"replayed dead letters of disco worker group {self.group}",
            deliver_policy=api.DeliverPolicy.ALL, ack_policy=api.AckPolicy.EXPLICIT, ack_wait=self.ack_wait,
            max_deliver=-1, filter_subject=subject, replay_policy=api.ReplayPolicy.INSTANT,
        )

        async def bind() -> JetStreamContext.PullSubscription:
            return await bind_pull(self.conn, stream, cfg, who=self._who)

        try:
            psub = await bind()
        except DiscoError as exc:  # no dead-letter stream we may use: the group still works, without replays
            log.warning("%s: replayed dead letters will not be consumed: %s", self._who, exc)
            return
        async with anyio.create_task_group() as tg:
            await self._consume(psub, bind, tg)

    async def _unsubscribe(self, psub: JetStreamContext.PullSubscription) -> None:
        try:
            await psub.unsubscribe()
        except Exception:
            pass

    async def _progress_loop(self) -> None:
        """Keep every fetched, unfinished event ours (``+WPI``) so that only a dead worker's are redelivered."""
        while True:
            await anyio.sleep(max(self.ack_wait / 3, 0.05))
            for msg in list(self._unfinished.values()):
                try:
                    await msg.in_progress()
                    self.stats.progress_acks += 1
                except Exception:
                    pass

    async def _settle(self, msg: Msg, how: Literal["ack", "nak", "term"], delay: float | None = None) -> None:
        self._unfinished.pop(id(msg), None)
        try:
            if how == "ack":
                await msg.ack()
            elif how == "nak":
                await msg.nak(delay=delay)
            else:
                await msg.term()
        except nats.errors.MsgAlreadyAckdError:
            pass
        except Exception as exc:  # the server redelivers it after ack_wait
            log.warning("worker %s of tenant %s: %s of event %s not sent: %s", self.group, self.tenant, how,
                        msg.reply, describe_exception(exc))

    async def _handle_durable(self, msg: Msg, slots: anyio.Semaphore | None) -> None:
        try:
            md = msg.metadata
            replayed = md.stream != self.stream  # a replayed dead letter: its headers carry the change subject
            subject = (msg.headers or {}).get("Disco-Subject", msg.subject) if replayed else msg.subject
            d = Delivery(attempt=md.num_delivered, stream_seq=md.sequence.stream, subject=subject,
                         group=self.group, durable=True)
            ev: ChangeEvent | None = None
            error: str | None
            if d.attempt > self.max_attempts:
                error = f"no outcome after {d.attempt - 1} deliveries (the worker died or hung handling it)"
            else:
                ev, error = self._decode(msg.data)
                if ev is not None:
                    error = await self._call(ev, d)
            if error is None:
                await self._settle(msg, "ack")
                if replayed:
                    self.stats.replayed += 1
            elif ev is None or d.attempt >= self.max_attempts:
                try:
                    await self._dead_letter(msg.data, d, error, md.stream)
                except Exception as exc:
                    log.warning("worker %s: dead letter not published (%s); retrying later", self.group,
                                describe_exception(exc))
                    await self._settle(msg, "nak", self.retry_delay_for(d.attempt))
                else:
                    await self._settle(msg, "term")
            else:
                self.stats.retried += 1
                await self._settle(msg, "nak", self.retry_delay_for(d.attempt))
        finally:
            if slots is not None:
                slots.release()

    # =========================================================================================================
    # non-durable mode
    # =========================================================================================================
    async def _run_core(self, task_status: TaskStatus[None]) -> None:
        send, recv = anyio.create_memory_object_stream[Msg](self.batch)

        async def on_msg(msg: Msg) -> None:
            try:
                await send.send(msg)  # backpressure onto the subscription's bounded pending buffer
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass  # stopping

        subs = []
        try:
            for subject in self.subjects:
                subs.append(await self.conn.nc.subscribe(subject, queue=self.group, cb=on_msg))
            await self.conn.nc.flush()
            log.info("worker %s of tenant %s listening on %s (queue group, not durable)", self.group, self.tenant,
                     ", ".join(self.subjects))
            task_status.started()
            async with anyio.create_task_group() as tg:
                for _ in range(self.concurrency):
                    tg.start_soon(self._core_loop, recv.clone())
        finally:
            send.close()
            recv.close()
            with anyio.CancelScope(shield=True):
                for sub in subs:
                    try:
                        await sub.unsubscribe()
                    except Exception:
                        pass

    async def _core_loop(self, recv: MemoryObjectReceiveStream[Msg]) -> None:
        async with recv:
            async for msg in recv:
                ev, error = self._decode(msg.data)
                attempt = 1
                while ev is not None:
                    d = Delivery(attempt=attempt, stream_seq=None, subject=msg.subject, group=self.group,
                                 durable=False)
                    error = await self._call(ev, d)
                    if error is None or attempt >= self.max_attempts:
                        break
                    self.stats.retried += 1
                    await anyio.sleep(self.retry_delay_for(attempt))
                    attempt += 1
                if error is not None:
                    d = Delivery(attempt=attempt, stream_seq=None, subject=msg.subject, group=self.group,
                                 durable=False)
                    try:
                        await self._dead_letter(msg.data, d, error)
                    except Exception as exc:
                        log.warning("worker %s: dead letter not published: %s", self.group, describe_exception(exc))


@asynccontextmanager
async def worker(
    conn: Connection, group: str, handler: Handler, **options: Any
) -> AsyncIterator[Worker]:
    """Run a :class:`Worker` (same arguments) for the duration of the block; the block starts once it consumes.

    Leaving the block stops it cleanly: unfinished events go back to the group at once.
    """
    w = Worker(conn, group, handler, **options)
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(w.run)
            try:
                yield w
            finally:
                tg.cancel_scope.cancel()
    except BaseExceptionGroup as exc_group:
        raise sole_exception(exc_group) from None

