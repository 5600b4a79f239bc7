"""The live subject: each stored write of the live view, as watchers receive it (PROTOCOL.md §8.6).

Every write of the live-view bucket carries its change in the ``Disco-Event`` header (``<type> <reason> <unix
time> <writer>``), and its body is the instance record (for a removal, the removed record). The bucket's stream
republishes each write the moment it is stored (JetStream RePublish, configured by the aggregators) on
``<prefix>.<tenant>.live.<service>.<instance id>``, adding ``Nats-Sequence`` (the write's revision). A watcher
therefore sees a change one hop after it is stored, without waiting for the writer to hear the store's
acknowledgement and publish the event itself.

The server queues the republished message before the acknowledgement of the write, so an acknowledged write has
been republished. For a write that is stored without its writer hearing so (a leader change at the wrong moment),
the aggregator that publishes its event into the change stream later (a takeover, a catch-up, a retry) also
publishes the same message on the live subject; a watcher keeps the newest revision of each instance, so a copy
it already has is dropped.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from bus.codec import decode
from bus.errors import DiscoError
from bus.models import ChangeEvent, ChangeReason, ChangeType, Instance
from bus.subjects import validate_service

__all__ = ["EVENT_HEADER", "REVISION_HEADER", "change_of", "event_header", "parse_event_header"]

#: ``<type> <reason> <unix time> <writer id>`` of the change a write makes
EVENT_HEADER = "Disco-Event"
#: the revision of a republished write (JetStream RePublish adds it; the aggregator's copies carry it too)
REVISION_HEADER = "Nats-Sequence"

_TYPES = {t.value: t for t in ChangeType}
_REASONS = {r.value: r for r in ChangeReason}


def event_header(kind: str, reason: str, writer: str, at: float | None = None) -> str:
    """The ``Disco-Event`` header of a write: ``<type> <reason> <unix time> <writer>`` (``at``: now if None)."""
    return f"{kind} {reason} {time.time() if at is None else at:.6f} {writer}"


def parse_event_header(value: str) -> tuple[str, str, float, str] | None:
    parts = value.split(" ")
    if len(parts) != 4:
        return None
    try:
        return parts[0], parts[1], float(parts[2]), parts[3]
    except ValueError:
        return None


def change_of(tenant: str, subject: str, headers: Mapping[str, str] | None, data: bytes,
              max_size: int = 1 << 20) -> ChangeEvent | None:
    """The change a message of ``tenant``'s live subject carries, or None for one that is not a change (a write
    without the header, such as the purge of old delete markers), not ``tenant``'s, or unreadable. The subject's
    last two tokens are the service and the instance id; the instance is the body's."""
    if not headers:
        return None
    parsed = parse_event_header(headers.get(EVENT_HEADER, ""))
    try:
        revision = int(headers.get(REVISION_HEADER, ""))
    except ValueError:
        return None
    if parsed is None:
        return None
    kind, reason = _TYPES.get(parsed[0]), _REASONS.get(parsed[1])
    tokens = subject.rsplit(".", 4)  # <prefix>.<tenant>.live.<service>.<id>, the prefix having dots or not
    if kind is None or reason is None or len(tokens) != 5 or tokens[1] != tenant or tokens[2] != "live":
        return None
    service, iid = tokens[3], tokens[4]
    try:
        validate_service(service)
        inst = decode(data, Instance, max_size)
    except DiscoError:
        return None
    if inst.id != iid:
        return None
    return ChangeEvent(type=kind, reason=reason, tenant=tenant, service=service, instance=inst, revision=revision,
                       at=parsed[2])
