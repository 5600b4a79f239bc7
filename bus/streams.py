"""The JetStream stream of a tenant's change events: one definition for the aggregator that creates it and for
the durable workers that may create it first; and an exact listing of a KV bucket's keys."""

from __future__ import annotations

import anyio
import nats.js.errors
from nats.js import JetStreamContext, api

from bus.subjects import Subjects, changes_stream_name

__all__ = ["DLQ_MAX_AGE", "DLQ_MAX_BYTES", "changes_stream_config", "dlq_stream_config", "dlq_stream_name",
           "kv_keys", "until_led"]


async def kv_keys(js: JetStreamContext, bucket: str) -> list[str]:
    """The keys of a KV bucket that have messages (values or delete markers: ``get`` tells them apart), read from
    the stream's per-subject state. Exact where nats-py's ``KeyValue.keys()`` is not: its watcher can signal "no
    more keys" before it counted the keys the server already delivered, and so report an empty bucket (seen as
    ``disco tenant ls`` answering "no tenants" right after a start, and as a chaos check finding every instance
    lost). The server lists up to 100,000 subjects this way; past that, use the aggregators' verified loads."""
    pre = f"$KV.{bucket}."
    try:
        info = await js.stream_info(f"KV_{bucket}", subjects_filter=f"{pre}>")
    except nats.js.errors.NotFoundError:
        return []
    return sorted(subject[len(pre):] for subject in (info.state.subjects or {}))


async def until_led(js: JetStreamContext, stream: str, timeout: float = 10.0) -> None:
    """Wait until a stream just created has a leader (a replicated one elects it first: a write before that gets
    "no response from stream"); at most ``timeout`` seconds, then leave it to the write to fail."""
    with anyio.move_on_after(timeout):
        while True:
            info = await js.stream_info(stream)
            if info.cluster is None or info.cluster.leader:
                return
            await anyio.sleep(0.05)


def changes_stream_config(
    subjects: Subjects, stream_prefix: str, tenant: str, *, replicas: int = 1, max_age: float = 7 * 24 * 3600.0
) -> api.StreamConfig:
    """Stream ``<stream_prefix>_<tenant>`` capturing ``<prefix>.<tenant>.changes.*``; ``max_age`` in seconds;
    a two-minute duplicate window so that an event re-published with the same ``Nats-Msg-Id`` is stored once."""
    return api.StreamConfig(
        name=changes_stream_name(stream_prefix, tenant),
        subjects=[subjects.changes(tenant)],
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        num_replicas=replicas,
        max_age=max_age,
        duplicate_window=120.0,
        discard=api.DiscardPolicy.OLD,
        description=f"disco change events of tenant {tenant}",
    )


#: retention of a tenant's dead letters (bus/PROTOCOL.md §8): the oldest go first past either bound
DLQ_MAX_AGE = 30 * 24 * 3600.0
DLQ_MAX_BYTES = 64 * 1024 * 1024


def dlq_stream_name(stream_prefix: str, tenant: str) -> str:
    """The stream holding one tenant's dead letters: ``<stream_prefix>_<tenant>_DLQ``."""
    return f"{changes_stream_name(stream_prefix, tenant)}_DLQ"


def dlq_stream_config(
    subjects: Subjects, stream_prefix: str, tenant: str, *, replicas: int = 1, max_age: float = DLQ_MAX_AGE,
    max_bytes: int = DLQ_MAX_BYTES,
) -> api.StreamConfig:
    """Stream ``<stream_prefix>_<tenant>_DLQ`` capturing ``<prefix>.<tenant>.dlq.>`` (every group's dead letters
    and their replays), bounded by age and size, oldest discarded first."""
    return api.StreamConfig(
        name=dlq_stream_name(stream_prefix, tenant),
        subjects=[f"{subjects.prefix}.{tenant}.dlq.>"],
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        num_replicas=replicas,
        max_age=max_age,
        max_bytes=max_bytes,
        duplicate_window=120.0,
        discard=api.DiscardPolicy.OLD,
        description=f"disco dead letters of tenant {tenant}",
    )
