"""disco's client library: announce an instance, resolve and watch services, over NATS.

::

    import bus

    async with await bus.connect("nats://127.0.0.1:4222", tenant="acme") as conn:
        async with bus.announce(conn, "billing", address="10.0.0.5", port=8080):
            reply = await bus.resolve(conn, "billing")
"""

from bus.announce import Registration, announce, new_instance_id
from bus.client import request, resolve, snapshot
from bus.connection import Connection, connect
from bus.errors import (
    BadRequest,
    ConnectionFailed,
    DiscoError,
    InvalidName,
    NoAggregator,
    NoInstances,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    PermissionDenied,
    QuotaExceeded,
    RateLimited,
    SubjectMismatch,
    Timeout,
    Unavailable,
    UnsupportedVersion,
)
from bus.models import ChangeEvent, ChangeReason, ChangeType, Instance, ResolveReply, Snapshot, Status
from bus.resolver import Lease, Resolver, Strategy, resolver
from bus.subjects import Subjects
from bus.watch import Watch, watch
from bus.workers import Delivery, Handler, Worker, WorkerStats, worker

__all__ = [
    "BadRequest",
    "ChangeEvent",
    "ChangeReason",
    "ChangeType",
    "Connection",
    "ConnectionFailed",
    "Delivery",
    "DiscoError",
    "Handler",
    "Instance",
    "InvalidName",
    "Lease",
    "NoAggregator",
    "NoInstances",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "PermissionDenied",
    "QuotaExceeded",
    "RateLimited",
    "Registration",
    "ResolveReply",
    "Resolver",
    "Snapshot",
    "Status",
    "Strategy",
    "SubjectMismatch",
    "Subjects",
    "Timeout",
    "Unavailable",
    "UnsupportedVersion",
    "Watch",
    "Worker",
    "WorkerStats",
    "announce",
    "connect",
    "new_instance_id",
    "request",
    "resolve",
    "resolver",
    "snapshot",
    "watch",
    "worker",
]
