"""What a change event is, apart from how it is published (events.py): the ``Disco-Event`` header every KV write
carries, and the event built from a write (its record spliced in, byte for byte what encoding the whole map
gives)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import msgpack

from bus.codec import decode, encode_map
from bus.errors import DiscoError
from bus.models import Instance
from bus.subjects import Subjects, kv_key

__all__ = ["PendingEvent", "build_event", "build_event_raw", "event_header", "event_of_write", "parse_event_header"]


def event_header(kind: str, reason: str, writer: str, at: float | None = None) -> str:
    """The ``Disco-Event`` header of a write: ``<type> <reason> <unix time> <writer>``."""
    return f"{kind} {reason} {time.time() if at is None else at:.6f} {writer}"


def parse_event_header(value: str) -> tuple[str, str, float, str] | None:
    parts = value.split(" ")
    if len(parts) != 4:
        return None
    try:
        return parts[0], parts[1], float(parts[2]), parts[3]
    except ValueError:
        return None


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
