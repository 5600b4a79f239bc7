"""What a change event is, apart from how it is published (events.py): the ``Disco-Event`` header every KV write
carries, and the event built from a write (its record spliced in, byte for byte what encoding the whole map
gives)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from bus.codec import decode, encode_map
from bus.errors import DiscoError
from bus.live import EVENT_HEADER, REVISION_HEADER, event_header, parse_event_header
from bus.models import Instance
from bus.subjects import Subjects, kv_key

__all__ = ["PendingEvent", "build_event", "build_event_raw", "event_header", "event_of_write", "live_copy",
           "parse_event_header"]


@dataclass(frozen=True, slots=True)
class PendingEvent:
    tenant: str
    key: str  # the KV key written
    subject: str
    data: bytes
    revision: int
    at: float  # when the write was made (unix time, the writer's clock)
    kind: str = ""  # the event's type and reason, for the metrics
    reason: str = ""


def build_event(subjects: Subjects, tenant: str, service: str, kind: str, reason: str, at: float,
                wire: dict[str, Any], revision: int) -> PendingEvent:
    return build_event_raw(subjects, tenant, service, kind, reason, at, str(wire.get("id", "")), encode_map(wire),
                           revision)


_PACKER = msgpack.Packer(use_bin_type=True)  # pack() of one value runs in C under the GIL: safe to share
_HEAD = _PACKER.pack_map_header(8) + _PACKER.pack("v") + _PACKER.pack(1) + _PACKER.pack("type")
_REASON, _TENANT, _SERVICE, _INSTANCE, _REVISION, _AT = (
    _PACKER.pack(k) for k in ("reason", "tenant", "service", "instance", "revision", "at"))


def build_event_raw(subjects: Subjects, tenant: str, service: str, kind: str, reason: str, at: float, iid: str,
                    record: bytes, revision: int) -> PendingEvent:
    """The event of a write whose instance record is already encoded (the write path holds it): the record is
    spliced in, giving byte for byte what encoding the whole map gives."""
    pack = _PACKER.pack
    data: bytes = b"".join((_HEAD, pack(kind), _REASON, pack(reason), _TENANT, pack(tenant), _SERVICE, pack(service),
                            _INSTANCE, record, _REVISION, pack(revision), _AT, pack(at)))
    return PendingEvent(tenant, kv_key(tenant, service, iid), subjects.changes(tenant, service), data, revision, at,
                        kind, reason)


def event_of_write(subjects: Subjects, tenant: str, service: str, header: str | None, value: bytes | None,
                   body: bytes, revision: int, inst: Instance | None = None) -> PendingEvent | None:
    """The change event a KV write carries, or None (a write without the header, e.g. by an older aggregator,
    or an unreadable one)."""
    parsed = parse_event_header(header) if header else None
    if parsed is None:
        return None
    kind, reason, at, _ = parsed
    if inst is None:
        try:
            inst = decode(value if value is not None else body, Instance, 1 << 20)
        except DiscoError:
            return None
    return build_event(subjects, tenant, service, kind, reason, at, inst.model_dump(mode="json"), revision)


def live_copy(subjects: Subjects, ev: PendingEvent, writer: str) -> tuple[str, dict[str, str], bytes]:
    """``ev`` as the server republishes a write on the live subject (:mod:`bus.live`): subject, headers, body."""
    event = msgpack.unpackb(ev.data, raw=False)
    inst = event["instance"]
    headers = {EVENT_HEADER: event_header(event["type"], event["reason"], writer, event["at"]),
               REVISION_HEADER: str(ev.revision)}
    body: bytes = _PACKER.pack(inst)
    return subjects.live(ev.tenant, event["service"], inst["id"]), headers, body
