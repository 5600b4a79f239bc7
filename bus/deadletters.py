"""Dead letters: where a worker group's failed events go, how to list them and how to hand them back to the group.

A worker publishes an event it gave up on to ``disco.<t>.dlq.<group>`` (headers ``Disco-Tenant``,
``Disco-Group``, ``Disco-Subject``, ``Disco-Stream``, ``Disco-Stream-Seq``, ``Disco-Attempts``, ``Disco-Error``).
The tenant's dead-letter stream ``<stream_prefix>_<tenant>_DLQ`` (created by the aggregators with the tenant's
change stream, or by a worker that finds it missing) captures ``disco.<t>.dlq.>``, so dead letters are kept
whether or not anyone listens: at most 30 days and 64 MiB per tenant (``DLQ_MAX_AGE``, ``DLQ_MAX_BYTES`` in
:mod:`bus.streams`), the oldest discarded first.

:func:`replay` re-publishes chosen dead letters to ``disco.<t>.dlq.<group>.replay`` (captured by the same
stream) and, by default, deletes the originals. Every durable worker of the group consumes that subject with a
second durable consumer (``<group>-replay``), so a replayed event reaches one process of the group only (not
every group, as re-publishing the change would), with the same handler, retries and dead-lettering.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import nats.errors
import nats.js.errors
from nats.js import api

from bus.codec import decode
from bus.connection import Connection
from bus.errors import DiscoError, NotFound, PermissionDenied, Timeout
from bus.jsbind import refusal
from bus.models import ChangeEvent
from bus.streams import dlq_stream_config, dlq_stream_name
from bus.subjects import Subjects

__all__ = ["DeadLetter", "dead_letters", "ensure_dlq_stream", "publish_dead_letter", "replay", "replay_subject"]

log = logging.getLogger("disco.deadletters")

T = TypeVar("T")
REPLAY_TOKEN = "replay"


async def _js(conn: Connection, stream: str, call: Awaitable[T], subject: str = "") -> T:
    """Await a JetStream call about ``stream`` (or a publish to ``subject``); a refused one (it only times out)
    raises PermissionDenied naming the subject."""
    try:
        return await call
    except TimeoutError:
        refused = refusal(conn, stream)
        if refused is not None:
            raise refused from None
        if subject and subject.lower() in conn.denied:
            raise PermissionDenied(
                f"the NATS server does not allow these credentials to publish to {subject}") from None
        raise Timeout(f"JetStream did not answer about stream {stream}") from None


def replay_subject(subjects: Subjects, tenant: str, group: str) -> str:
    """``disco.<t>.dlq.<group>.replay``: where replayed dead letters go back to the group."""
    return f"{subjects.dlq(tenant, group)}.{REPLAY_TOKEN}"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One stored dead letter (or a replay not yet consumed)."""

    #: its sequence in the dead-letter stream (what ``replay`` takes)
    seq: int
    time: datetime | None
    group: str
    #: True for a replay waiting to be consumed, False for a dead letter
    replay: bool
    attempts: int | None
    error: str
    #: the change subject the event was published on
    subject: str
    #: where it came from: the change stream and its sequence there (None for a non-durable group)
    origin_stream: str | None
    origin_seq: int | None
    data: bytes
    #: the decoded event, or None when it could not be decoded (that was then the error)
    event: ChangeEvent | None


async def ensure_dlq_stream(conn: Connection, stream_prefix: str, tenant: str, replicas: int) -> None:
    """Create the tenant's dead-letter stream if missing (idempotent; a refusal is logged, not raised)."""
    cfg = dlq_stream_config(conn.subjects, stream_prefix, tenant, replicas=replicas)
    try:
        await conn.js.stream_info(cfg.name or "")
        return
    except nats.js.errors.NotFoundError:
        pass
    try:
        await conn.js.add_stream(cfg)
    except (nats.errors.Error, TimeoutError) as exc:
        log.debug("dead-letter stream %s not created: %s", cfg.name, exc)


async def publish_dead_letter(conn: Connection, subject: str, data: bytes, headers: dict[str, str]) -> bool:
    """Publish a dead letter; True when a stream acknowledged it (stored), False when no stream captures the
    subject (then it went out as a core message, the server has it, nobody keeps it)."""
    try:
        await conn.js.publish(subject, data, headers=headers, timeout=5.0)
        return True
    except (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError):
        await conn.nc.publish(subject, data, headers=headers)
        await conn.nc.flush(timeout=5)
        return False


def _parse(msg: api.RawStreamMsg, prefix: str) -> DeadLetter:
    h = msg.headers or {}
    subject = msg.subject or ""
    rest = subject[len(prefix):].split(".") if subject.startswith(prefix) else ["?"]
    attempts = h.get("Disco-Attempts", "")
    origin_seq = h.get("Disco-Stream-Seq", "")
    data = msg.data or b""
    try:
        event: ChangeEvent | None = decode(data, ChangeEvent, 1 << 20)
    except DiscoError:
        event = None
    return DeadLetter(
        seq=msg.seq or 0, time=getattr(msg, "time", None), group=rest[0],
        replay=len(rest) > 1 and rest[1] == REPLAY_TOKEN,
        attempts=int(attempts) if attempts.isdigit() else None, error=h.get("Disco-Error", ""),
        subject=h.get("Disco-Subject", ""), origin_stream=h.get("Disco-Stream") or None,
        origin_seq=int(origin_seq) if origin_seq.isdigit() else None, data=data, event=event,
    )


async def dead_letters(
    conn: Connection, *, tenant: str | None = None, group: str | None = None, stream_prefix: str, limit: int = 1000,
    include_replays: bool = False,
) -> list[DeadLetter]:
    """The stored dead letters of a tenant (of one group when given), oldest first, at most ``limit``.

    Raises :class:`NotFound` when the tenant has no dead-letter stream.
    """
    t = conn.tenant_or(tenant)
    stream = dlq_stream_name(stream_prefix, t)
    root = f"{conn.subjects.prefix}.{t}.dlq."
    flt = conn.subjects.dlq(t, group) if group and not include_replays else f"{root}>"
    try:
        info = await _js(conn, stream, conn.js.stream_info(stream))
    except nats.js.errors.NotFoundError:
        raise NotFound(f"tenant {t} has no dead-letter stream ({stream})") from None
    out: list[DeadLetter] = []
    seq = info.state.first_seq or 1
    while len(out) < limit:
        try:
            raw = await _js(conn, stream, conn.js.get_msg(stream, seq=seq, subject=flt, next=True))
        except nats.js.errors.NotFoundError:
            break
        dl = _parse(raw, root)
        seq = dl.seq + 1
        if group is not None and dl.group != group:
            continue
        if dl.replay and not include_replays:
            continue
        out.append(dl)
    return out


async def replay(
    conn: Connection, group: str, seqs: Iterable[int] | None, *, tenant: str | None = None, stream_prefix: str,
    remove: bool = True,
) -> list[int]:
    """Hand dead letters of ``group`` back to the group (``seqs``; None: all of them); returns the sequences
    replayed. Each is re-published (stored, acknowledged) on the group's replay subject, then, with ``remove``,
    deleted from the dead letters. Raises :class:`NotFound` for a sequence that is not a dead letter of the group.
    """
    t = conn.tenant_or(tenant)
    stream = dlq_stream_name(stream_prefix, t)
    chosen = await dead_letters(conn, tenant=t, group=group, stream_prefix=stream_prefix, limit=1_000_000)
    by_seq = {dl.seq: dl for dl in chosen}
    wanted = sorted(by_seq) if seqs is None else list(seqs)
    for s in wanted:
        if s not in by_seq:
            raise NotFound(f"no dead letter of group {group} at sequence {s} in {stream}")
    target = replay_subject(conn.subjects, t, group)
    done: list[int] = []
    for s in wanted:
        dl = by_seq[s]
        headers = {"Disco-Tenant": t, "Disco-Group": group, "Disco-Subject": dl.subject,
                   "Disco-Replay-Of": str(dl.seq), "Nats-Msg-Id": f"replay-{stream}-{dl.seq}"}
        await _js(conn, stream, conn.js.publish(target, dl.data, headers=headers, timeout=5.0), target)
        if remove:
            try:
                await _js(conn, stream, conn.js.delete_msg(stream, dl.seq))
            except nats.js.errors.NotFoundError:
                pass
        done.append(s)
    return done
