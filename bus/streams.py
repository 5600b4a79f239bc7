"""The JetStream stream of a tenant's change events: one definition for the aggregator that creates it and for
the durable workers that may create it first."""

from __future__ import annotations

from nats.js import api

from bus.subjects import Subjects, changes_stream_name

__all__ = ["DLQ_MAX_AGE", "DLQ_MAX_BYTES", "changes_stream_config", "dlq_stream_config", "dlq_stream_name"]


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
