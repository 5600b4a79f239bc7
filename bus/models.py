"""One pydantic model per wire message (DESIGN.md §5): the model is the schema.

Models are strict (no type coercion, unknown fields refused) so that what one side sends is exactly what the other
decodes. Every message carries ``"v": 1``. Times are unix seconds as floats; ttl is seconds.
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from typing import Annotated, Literal, Protocol

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, field_validator, model_validator
from pydantic_core import PydanticCustomError

__all__ = [
    "VIEW_BEHIND",
    "VIEW_HEADER",
    "AnnounceAck",
    "Bye",
    "ChangeEvent",
    "ChangeReason",
    "ChangeType",
    "Control",
    "ErrorReply",
    "Heartbeat",
    "Instance",
    "ResolveReply",
    "ResolveRequest",
    "Snapshot",
    "SnapshotRequest",
    "Status",
]

MAX_TAGS = 32
MAX_META = 64
_HOST_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_HOST_LABEL}(\.{_HOST_LABEL})*\.?$")
# exactly the dotted quads ipaddress.IPv4Address takes (0-255, no leading zeros): the common case without an
# exception or an address object per announce
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"^(?:{_OCTET}\.){{3}}{_OCTET}$")
_TOKEN = re.compile(r"^[A-Za-z0-9_.:/+-]*$")

_INSTANCE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _instance_id(value: str) -> str:
    if not _INSTANCE_ID.fullmatch(value):
        raise PydanticCustomError("invalid_name", "invalid instance id: use 1-64 letters, digits, '_' and '-'")
    return value


InstanceId = Annotated[str, AfterValidator(_instance_id)]
Tag = Annotated[str, Field(min_length=1, max_length=128)]
ShortText = Annotated[str, Field(max_length=64)]


class Status(StrEnum):
    passing = "passing"
    warning = "warning"
    critical = "critical"
    maintenance = "maintenance"


class ChangeType(StrEnum):
    added = "added"
    updated = "updated"
    removed = "removed"


class ChangeReason(StrEnum):
    announce = "announce"
    health = "health"
    bye = "bye"
    expired = "expired"
    evicted = "evicted"
    resync = "resync"  # inferred by a watcher from a relist, not sent by aggregators
    initial = "initial"  # the first list of a watcher asked for the current instances (include_initial)


# Enums travel as their string values; strict mode would otherwise demand enum members.
StatusT = Annotated[Status, Strict(False)]
ChangeTypeT = Annotated[ChangeType, Strict(False)]
ChangeReasonT = Annotated[ChangeReason, Strict(False)]


class Message(BaseModel):
    """Base of every wire message: strict, frozen, versioned."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    v: Literal[1] = 1


class Instance(Message):
    """One running copy of a service: where it listens and what it is."""

    id: InstanceId
    address: Annotated[str, Field(min_length=1, max_length=253)]
    port: Annotated[int, Field(ge=1, le=65535)]
    protocol: Annotated[str, Field(min_length=1, max_length=16, pattern=r"^[a-z0-9+.-]+$")] = "tcp"
    version: ShortText = ""
    tags: Annotated[tuple[Tag, ...], Field(max_length=MAX_TAGS)] = ()
    meta: dict[Annotated[str, Field(min_length=1, max_length=128)], Annotated[str, Field(max_length=512)]] = Field(
        default_factory=dict
    )
    weight: Annotated[int, Field(ge=1, le=1000)] = 100
    zone: Annotated[str, Field(max_length=64, pattern=r"^[A-Za-z0-9_.-]*$")] = ""
    status: StatusT = Status.passing
    ttl: Annotated[float, Field(ge=1, le=300)] = 10.0
    seq: Annotated[int, Field(ge=0)] = 0

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if _IPV4.fullmatch(value) or _HOSTNAME.fullmatch(value):
            return value
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError("must be an IP address or a host name") from None
        return value

    @field_validator("meta")
    @classmethod
    def _meta(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_META:
            raise ValueError(f"at most {MAX_META} entries")
        return value

    def same_registration(self, other: Instance) -> bool:
        """True when only ``seq`` differs: a re-announce that changes nothing."""
        return self.model_dump(exclude={"seq"}) == other.model_dump(exclude={"seq"})


class Heartbeat(Message):
    """I am alive: one instance (``id``) or, from an agent, many (``ids``)."""

    id: InstanceId | None = None
    ids: Annotated[tuple[InstanceId, ...], Field(max_length=1000)] = ()
    seq: Annotated[int, Field(ge=0)] | None = None
    status: StatusT | None = None

    @model_validator(mode="after")
    def _some_id(self) -> Heartbeat:
        if self.id is None and not self.ids:
            raise ValueError("a heartbeat names an instance: give id or ids")
        return self

    def all_ids(self) -> tuple[str, ...]:
        return ((self.id,) if self.id is not None else ()) + self.ids


class Bye(Message):
    id: InstanceId


class Filterable(Protocol):
    """What the filters read: an :class:`Instance`, or a compact record holding these fields."""

    @property
    def status(self) -> Status: ...
    @property
    def zone(self) -> str: ...
    @property
    def tags(self) -> tuple[str, ...]: ...


class _Filters(Message):
    tags: Annotated[tuple[Tag, ...], Field(max_length=MAX_TAGS)] = ()
    zone: Annotated[str, Field(max_length=64)] | None = None
    status: Annotated[tuple[StatusT, ...], Field(max_length=4)] = (Status.passing, Status.warning)

    def matches(self, inst: Filterable) -> bool:
        if inst.status not in self.status:
            return False
        if self.zone is not None and inst.zone != self.zone:
            return False
        return all(t in inst.tags for t in self.tags)


class ResolveRequest(_Filters):
    limit: Annotated[int, Field(ge=1, le=10000)] | None = None


class SnapshotRequest(_Filters):
    """Everything of one tenant; ``services`` narrows it. By default every status is included."""

    services: Annotated[tuple[str, ...], Field(max_length=1000)] = ()
    status: Annotated[tuple[StatusT, ...], Field(max_length=4)] = tuple(Status)


class ResolveReply(Message):
    ok: Literal[True] = True
    revision: int
    instances: tuple[Instance, ...] = ()


#: the header of a snapshot reply whose aggregator's view may miss writes the bucket holds (bus/PROTOCOL.md)
VIEW_HEADER = "Disco-View"
VIEW_BEHIND = "behind"


class Snapshot(Message):
    ok: Literal[True] = True
    revision: int
    services: dict[str, tuple[Instance, ...]] = Field(default_factory=dict)
    #: False when the aggregator said its view may miss writes (header ``Disco-View: behind``, never in the body)
    complete: bool = Field(True, exclude=True)


class AnnounceAck(Message):
    """Reply to an announce or a bye. ``changed`` is False when the message changed nothing (duplicate, stale)."""

    ok: Literal[True] = True
    revision: int
    changed: bool = True


class ErrorReply(Message):
    ok: Literal[False] = False
    code: str
    error: str


class ChangeEvent(Message):
    type: ChangeTypeT
    reason: ChangeReasonT
    tenant: str
    service: str
    instance: Instance
    revision: int
    at: float


class Control(Message):
    op: Literal["reannounce"]
    id: InstanceId
