"""Names and subjects: the only place a subject string is built or taken apart.

Every tenant, service and instance id is validated here before it reaches a subject or a KV key (DESIGN.md §3, §4):
the tenant is always the second token, so one NATS permission (``disco.<t>.>``) describes a tenant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from bus.errors import InvalidName

__all__ = [
    "DEFAULT_CHANGES_STREAM",
    "DEFAULT_PREFIX",
    "ParsedSubject",
    "Subjects",
    "changes_stream_name",
    "kv_key",
    "parse_kv_key",
    "validate_instance_id",
    "validate_service",
    "validate_tenant",
]

DEFAULT_PREFIX = "disco"
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_INSTANCE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_PREFIX = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")

Kind = Literal["announce", "hb", "bye", "resolve", "snapshot", "changes", "ctl"]
_KINDS_WITH_SERVICE = frozenset({"announce", "hb", "bye", "resolve", "changes", "ctl"})


def _label(kind: str, value: object) -> str:
    if not isinstance(value, str) or not _LABEL.fullmatch(value):
        raise InvalidName(
            f"invalid {kind} name {value!r}: use 1-63 lower-case letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return value


def validate_tenant(value: object) -> str:
    """Return ``value`` if it is a valid tenant name (a DNS label), else raise InvalidName."""
    return _label("tenant", value)


def validate_service(value: object) -> str:
    """Return ``value`` if it is a valid service name (a DNS label), else raise InvalidName."""
    return _label("service", value)


def validate_instance_id(value: object) -> str:
    """Return ``value`` if it is a valid instance id (``[A-Za-z0-9_-]{1,64}``), else raise InvalidName."""
    if not isinstance(value, str) or not _INSTANCE_ID.fullmatch(value):
        raise InvalidName(f"invalid instance id {value!r}: use 1-64 letters, digits, '_' and '-'")
    return value


@dataclass(frozen=True, slots=True)
class ParsedSubject:
    tenant: str
    kind: str
    service: str | None = None
    instance_id: str | None = None


@dataclass(frozen=True, slots=True)
class Subjects:
    """Builds and parses the subjects under one prefix (default ``disco``)."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not _PREFIX.fullmatch(self.prefix):
            raise InvalidName(f"invalid subject prefix {self.prefix!r}")

    # -- builders (validate every name) --------------------------------------------------------------------------
    def announce(self, tenant: str, service: str) -> str:
        return f"{self.prefix}.{validate_tenant(tenant)}.announce.{validate_service(service)}"

    def hb(self, tenant: str, service: str) -> str:
        return f"{self.prefix}.{validate_tenant(tenant)}.hb.{validate_service(service)}"

    def bye(self, tenant: str, service: str) -> str:
        return f"{self.prefix}.{validate_tenant(tenant)}.bye.{validate_service(service)}"

    def resolve(self, tenant: str, service: str) -> str:
        return f"{self.prefix}.{validate_tenant(tenant)}.resolve.{validate_service(service)}"

    def snapshot(self, tenant: str) -> str:
        return f"{self.prefix}.{validate_tenant(tenant)}.snapshot"

    def changes(self, tenant: str, service: str | None = None) -> str:
        """The change subject of one service, or of all the tenant's services when ``service`` is None."""
        svc = "*" if service is None else validate_service(service)
        return f"{self.prefix}.{validate_tenant(tenant)}.changes.{svc}"

    def live(self, tenant: str, service: str | None = None, instance_id: str | None = None) -> str:
        """Where each stored write of the live view is republished (:mod:`bus.live`): one instance's, one service's
        (``instance_id`` None) or all the tenant's (``service`` None)."""
        svc = "*" if service is None else validate_service(service)
        iid = "*" if instance_id is None else validate_instance_id(instance_id)
        return f"{self.prefix}.{validate_tenant(tenant)}.live.{svc}.{iid}"

    def live_republish(self) -> str:
        """The RePublish destination of the live-view bucket's stream: ``$KV.<bucket>.<t>.<s>.<i>`` goes to
        ``<prefix>.<t>.live.<s>.<i>`` (the key's three tokens are checked names, :func:`kv_key`)."""
        return f"{self.prefix}.{{{{wildcard(1)}}}}.live.{{{{wildcard(2)}}}}.{{{{wildcard(3)}}}}"

    def dlq(self, tenant: str, group: str) -> str:
        """Where a durable worker group parks events its handler failed too often (a group is a DNS label)."""
        return f"{self.prefix}.{validate_tenant(tenant)}.dlq.{_label('group', group)}"

    def ctl(self, tenant: str, service: str, instance_id: str) -> str:
        return (
            f"{self.prefix}.{validate_tenant(tenant)}.ctl.{validate_service(service)}."
            f"{validate_instance_id(instance_id)}"
        )

    def tenant_root(self, tenant: str) -> str:
        """``disco.<t>.>``: everything of one tenant."""
        return f"{self.prefix}.{validate_tenant(tenant)}.>"

    # -- wildcards the aggregators subscribe to -----------------------------------------------------------------
    def any(self, kind: Kind) -> str:
        """Wildcard over every tenant for one kind, e.g. ``disco.*.announce.*``."""
        if kind == "snapshot":
            return f"{self.prefix}.*.snapshot"
        if kind == "ctl":
            return f"{self.prefix}.*.ctl.*.*"
        return f"{self.prefix}.*.{kind}.*"

    def all_changes(self) -> str:
        return f"{self.prefix}.*.changes.*"

    # -- parser ------------------------------------------------------------------------------------------------
    def parse(self, subject: str) -> ParsedSubject:
        """Split a disco subject into its parts, validating each name; raise InvalidName otherwise."""
        plen = self.prefix.count(".") + 1
        tokens = subject.split(".")
        if tokens[:plen] != self.prefix.split(".") or len(tokens) < plen + 2:
            raise InvalidName(f"not a disco subject: {subject!r}")
        rest = tokens[plen:]
        tenant = validate_tenant(rest[0])
        kind = rest[1]
        if kind == "snapshot" and len(rest) == 2:
            return ParsedSubject(tenant, kind)
        if kind in ("ctl", "live") and len(rest) == 4:
            return ParsedSubject(tenant, kind, validate_service(rest[2]), validate_instance_id(rest[3]))
        if kind in _KINDS_WITH_SERVICE and kind != "ctl" and len(rest) == 3:
            return ParsedSubject(tenant, kind, validate_service(rest[2]))
        raise InvalidName(f"not a disco subject: {subject!r}")


def kv_key(tenant: str, service: str, instance_id: str) -> str:
    """The live-view KV key ``<t>.<svc>.<id>`` (DESIGN.md §6)."""
    return f"{validate_tenant(tenant)}.{validate_service(service)}.{validate_instance_id(instance_id)}"


def parse_kv_key(key: str) -> tuple[str, str, str]:
    parts = key.split(".")
    if len(parts) != 3:
        raise InvalidName(f"not a live-view key: {key!r}")
    return validate_tenant(parts[0]), validate_service(parts[1]), validate_instance_id(parts[2])


DEFAULT_CHANGES_STREAM = "DISCO_CHANGES"


def changes_stream_name(stream_prefix: str, tenant: str) -> str:
    """The JetStream stream holding one tenant's change events: ``<stream_prefix>_<tenant>``."""
    return f"{stream_prefix}_{validate_tenant(tenant)}"
