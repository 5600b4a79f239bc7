"""What ``disco`` commands print: one JSON shape per object (``--json``), tables, and the filters they share.

The JSON shapes (documented in the README) carry no wire fields (``v``, ``ok``, ``seq``) and give times as
ISO 8601 UTC strings (``2026-11-30T01:02:03.456Z``):

- instance: ``{"tenant", "service", "id", "address", "port", "protocol", "version", "tags", "meta", "weight",
  "zone", "status", "ttl"}``
- event: ``{"type", "reason", "tenant", "service", "revision", "at", "instance": <instance>}``
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from bus.models import ChangeEvent, Instance, Status

__all__ = [
    "Filters",
    "JsonOpt",
    "MetaFilterOpt",
    "StatusFilterOpt",
    "TagFilterOpt",
    "ZoneFilterOpt",
    "dumps",
    "event_json",
    "hostport",
    "instance_json",
    "iso",
    "parse_meta",
    "table",
]

JsonOpt = Annotated[bool, typer.Option("--json", help="JSON output (shapes in the CLI reference).")]
TagFilterOpt = Annotated[
    list[str] | None, typer.Option("--tag", metavar="TAG", help="Only instances with this tag (repeatable: all).")
]
ZoneFilterOpt = Annotated[str | None, typer.Option("--zone", metavar="ZONE", help="Only instances of this zone.")]
StatusFilterOpt = Annotated[
    list[Status] | None,
    typer.Option("--status", metavar="STATUS", help="Only instances in this status (repeatable: any of them).",
                 show_default=False),
]
MetaFilterOpt = Annotated[
    list[str] | None,
    typer.Option("--meta", metavar="KEY=VALUE", help="Only instances with this metadata (repeatable: all)."),
]


def parse_meta(values: Sequence[str], option: str = "--meta") -> dict[str, str]:
    """``["k=v", ...]`` into a dict; raise a usage error for an item without ``=`` or with an empty key."""
    meta: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=f"'{option}'")
        meta[key] = value
    return meta


@dataclass(frozen=True, slots=True)
class Filters:
    """``--tag/--zone/--status/--meta`` as one predicate; ``status`` empty means any status."""

    tags: tuple[str, ...] = ()
    zone: str | None = None
    status: tuple[Status, ...] = ()
    meta: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, tag: Sequence[str] | None, zone: str | None, status: Sequence[Status] | None,
           meta: Sequence[str] | None) -> Filters:
        return cls(tuple(tag or ()), zone, tuple(status or ()), tuple(parse_meta(meta or ()).items()))

    def matches(self, inst: Instance) -> bool:
        if self.status and inst.status not in self.status:
            return False
        if self.zone is not None and inst.zone != self.zone:
            return False
        if not all(t in inst.tags for t in self.tags):
            return False
        return all(inst.meta.get(k) == v for k, v in self.meta)

    @property
    def active(self) -> bool:
        return bool(self.tags or self.zone is not None or self.status or self.meta)


def iso(ts: float) -> str:
    """Unix seconds as ISO 8601 UTC with milliseconds and a ``Z``."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def instance_json(tenant: str, service: str, inst: Instance) -> dict[str, Any]:
    return {
        "tenant": tenant, "service": service, "id": inst.id, "address": inst.address, "port": inst.port,
        "protocol": inst.protocol, "version": inst.version, "tags": list(inst.tags), "meta": dict(inst.meta),
        "weight": inst.weight, "zone": inst.zone, "status": inst.status.value, "ttl": inst.ttl,
    }


def event_json(ev: ChangeEvent) -> dict[str, Any]:
    return {
        "type": ev.type.value, "reason": ev.reason.value, "tenant": ev.tenant, "service": ev.service,
        "revision": ev.revision, "at": iso(ev.at), "instance": instance_json(ev.tenant, ev.service, ev.instance),
    }


def dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def hostport(inst: Instance) -> str:
    host = f"[{inst.address}]" if ":" in inst.address else inst.address
    return f"{host}:{inst.port}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [headers, *rows]]
