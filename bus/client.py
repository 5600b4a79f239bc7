"""Request-reply calls to the aggregators: resolve and snapshot, and the request helper the others use.

A call that nobody answers fails at once with :class:`NoAggregator` (NATS "no responders"), not after a timeout;
a call the NATS server refused fails with :class:`PermissionDenied`; an error reply raises the exception of its
code (see :mod:`bus.errors`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, TypeVar

import nats.errors
from nats.aio.msg import Msg
from pydantic import BaseModel

from bus.codec import decode_reply, encode
from bus.connection import Connection
from bus.errors import NoAggregator, NoInstances, PermissionDenied, Timeout
from bus.models import VIEW_BEHIND, VIEW_HEADER, ResolveReply, ResolveRequest, Snapshot, SnapshotRequest, Status

__all__ = ["DEFAULT_TIMEOUT", "request", "resolve", "snapshot"]

DEFAULT_TIMEOUT = 2.0
M = TypeVar("M", bound=BaseModel)


def _denied(conn: Connection, subject: str) -> PermissionDenied | None:
    kind = conn.denied.get(subject)
    if kind is None:
        return None
    return PermissionDenied(f"the NATS server does not allow this connection to {kind} to {subject}")


async def request(
    conn: Connection, subject: str, payload: bytes, reply_cls: type[M], timeout: float = DEFAULT_TIMEOUT
) -> M:
    """Send one request and decode its reply into ``reply_cls`` (or raise the reply's error)."""
    return decode_reply((await _request_msg(conn, subject, payload, timeout)).data, reply_cls)


async def _request_msg(conn: Connection, subject: str, payload: bytes, timeout: float) -> Msg:
    known = _denied(conn, subject)
    if known is not None:
        raise known
    try:
        if conn.restricted:
            msg = await _request_racing_denial(conn, subject, payload, timeout)
        else:
            msg = await conn.nc.request(subject, payload, timeout=timeout)
    except nats.errors.NoRespondersError:
        raise _denied(conn, subject) or NoAggregator(
            f"no aggregator is answering {subject}: is an aggregator (or `disco up`) running?"
        ) from None
    except nats.errors.TimeoutError:
        raise _denied(conn, subject) or Timeout(f"no reply on {subject} within {timeout:g} s") from None
    return msg


async def _request_racing_denial(conn: Connection, subject: str, payload: bytes, timeout: float) -> Msg:
    """The request, unless the server refuses the subject first (nats-py reports that only to its error
    callback, so a plain request would wait for its timeout)."""
    denial = conn.denial(subject)
    task = asyncio.ensure_future(conn.nc.request(subject, payload, timeout=timeout))
    try:
        waiting: set[asyncio.Future[Any]] = {task, denial}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if denial.done() and not task.done():
            task.cancel()
            raise PermissionDenied(f"the NATS server does not allow this connection to {denial.result()} to {subject}")
        return task.result()
    finally:
        conn.forget_denial(subject, denial)
        if not task.done():
            task.cancel()


async def resolve(
    conn: Connection,
    service: str,
    *,
    tenant: str | None = None,
    tags: Iterable[str] = (),
    zone: str | None = None,
    status: Iterable[Status | str] = (Status.passing, Status.warning),
    limit: int | None = None,
    require: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> ResolveReply:
    """The live instances of ``service`` that match every filter, with the view revision they were read at.

    ``tags``: all must be present; ``zone``: exact match; ``status``: default passing and warning. With
    ``require=True`` an empty answer raises :class:`NoInstances`.
    """
    t = conn.tenant_or(tenant)
    req = ResolveRequest(
        tags=tuple(tags), zone=zone, status=tuple(Status(s) for s in status), limit=limit
    )
    reply = await request(conn, conn.subjects.resolve(t, service), encode(req), ResolveReply, timeout)
    if require and not reply.instances:
        raise NoInstances(f"service {service!r} of tenant {t!r} has no instance matching the filters")
    return reply


async def snapshot(
    conn: Connection,
    *,
    tenant: str | None = None,
    services: Iterable[str] = (),
    status: Iterable[Status | str] = tuple(Status),
    timeout: float = DEFAULT_TIMEOUT,
) -> Snapshot:
    """Every service of the tenant (or those named) with all their instances, and the view revision.
    ``complete`` is False when the aggregator said its view may miss writes (its KV watch was being re-created):
    the instances are what it holds, and a later snapshot may hold more."""
    t = conn.tenant_or(tenant)
    req = SnapshotRequest(services=tuple(services), status=tuple(Status(s) for s in status))
    msg = await _request_msg(conn, conn.subjects.snapshot(t), encode(req), timeout)
    snap = decode_reply(msg.data, Snapshot)
    if (msg.headers or {}).get(VIEW_HEADER) == VIEW_BEHIND:
        snap = snap.model_copy(update={"complete": False})
    return snap
