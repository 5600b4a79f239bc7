"""The JetStream stream of a tenant's change events: one definition for the aggregator that creates it and for
the durable workers that may create it first."""

from __future__ import annotations

from nats.js import api

from bus.subjects import Subjects, changes_stream_name

__all__ = ["changes_stream_config"]


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
