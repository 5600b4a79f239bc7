"""What a template sees: a tenant's live view as plain, sorted, read-only records, and the helpers to query it.

Globals:

- ``services(tag=None)`` — the tenant's services (those with at least one instance), sorted by name; each has
  ``name``, ``tags`` (the union of its instances' tags, sorted), ``instances`` (every status) and ``size``.
- ``service(name, tag=None, status="healthy", zone=None)`` — the instances of one service, sorted by
  (address, port, id). ``status`` is ``"healthy"`` (passing and warning, as ``bus.resolve``), ``"any"``, one
  status, or a list of statuses; ``tag`` a tag or a list of tags that must all be present; ``zone`` exact match.
- ``tenant`` — the tenant's name; ``env(name, default="")`` — an environment variable.

Filters: ``hostport`` (``10.0.0.5:80``, ``[fd00::1]:80``), ``by_tag`` and ``by_zone`` (a dict key → instances,
sorted by key), plus Jinja2's own (``sort``, ``map``, ``join``, ``tojson``...).

Every list is sorted, so a view that did not change renders byte for byte the same file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bus.models import Instance, Status

__all__ = ["ServiceEntry", "TemplateInstance", "build_context", "filters"]

_HEALTHY = (Status.passing, Status.warning)


@dataclass(frozen=True, slots=True)
class TemplateInstance:
    """One instance with every field of the wire record, plus its service and tenant."""

    tenant: str
    service: str
    id: str
    address: str
    port: int
    protocol: str
    version: str
    tags: tuple[str, ...]
    meta: Mapping[str, str]
    weight: int
    zone: str
    status: str
    ttl: float

    @classmethod
    def of(cls, tenant: str, service: str, inst: Instance) -> TemplateInstance:
        return cls(
            tenant=tenant, service=service, id=inst.id, address=inst.address, port=inst.port,
            protocol=inst.protocol, version=inst.version, tags=tuple(inst.tags), meta=dict(inst.meta),
            weight=inst.weight, zone=inst.zone, status=inst.status.value, ttl=inst.ttl,
        )

    @property
    def hostport(self) -> str:
        return hostport(self)

    @property
    def healthy(self) -> bool:
        return self.status in _HEALTHY


@dataclass(frozen=True, slots=True)
class ServiceEntry:
    name: str
    instances: tuple[TemplateInstance, ...] = field(default=())

    @property
    def tags(self) -> list[str]:
        return sorted({t for i in self.instances for t in i.tags})

    @property
    def size(self) -> int:
        return len(self.instances)


def hostport(inst: TemplateInstance) -> str:
    """``address:port``, with brackets around an IPv6 address."""
    addr = f"[{inst.address}]" if ":" in inst.address else inst.address
    return f"{addr}:{inst.port}"


def _statuses(status: str | Iterable[str]) -> frozenset[str] | None:
    if isinstance(status, str):
        if status == "any":
            return None
        if status == "healthy":
            return frozenset(s.value for s in _HEALTHY)
        return frozenset({Status(status).value})  # ValueError for a status that does not exist
    return frozenset(Status(s).value for s in status)


def _as_list(value: str | Iterable[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _sort_key(i: TemplateInstance) -> tuple[str, int, str]:
    return (i.address, i.port, i.id)


def build_context(tenant: str, view: Mapping[str, Mapping[str, Instance]]) -> dict[str, Any]:
    """The template globals for ``view`` (``{service: {id: Instance}}``, as :attr:`bus.Watch.view`)."""
    entries = {
        name: ServiceEntry(name, tuple(sorted((TemplateInstance.of(tenant, name, i) for i in insts.values()),
                                              key=_sort_key)))
        for name, insts in view.items() if insts
    }

    def service(
        name: str, tag: str | Iterable[str] | None = None, status: str | Iterable[str] = "healthy",
        zone: str | None = None,
    ) -> list[TemplateInstance]:
        wanted = _statuses(status)
        tags = _as_list(tag)
        entry = entries.get(name)
        if entry is None:
            return []
        return [
            i for i in entry.instances
            if (wanted is None or i.status in wanted) and (zone is None or i.zone == zone)
            and all(t in i.tags for t in tags)
        ]

    def services(tag: str | None = None) -> list[ServiceEntry]:
        return [e for _, e in sorted(entries.items()) if tag is None or tag in e.tags]

    def env(name: str, default: str = "") -> str:
        return os.environ.get(name, default)

    return {"service": service, "services": services, "tenant": tenant, "env": env}


def _group(instances: Iterable[TemplateInstance], keys: Any) -> dict[str, list[TemplateInstance]]:
    out: dict[str, list[TemplateInstance]] = {}
    for inst in instances:
        for k in keys(inst):
            out.setdefault(k, []).append(inst)
    return dict(sorted(out.items()))


def by_tag(instances: Iterable[TemplateInstance]) -> dict[str, list[TemplateInstance]]:
    """Instances grouped by each of their tags (an instance appears under every tag it has)."""
    return _group(instances, lambda i: i.tags)


def by_zone(instances: Iterable[TemplateInstance]) -> dict[str, list[TemplateInstance]]:
    """Instances grouped by zone (``""`` for those without one)."""
    return _group(instances, lambda i: (i.zone,))


def filters() -> dict[str, Any]:
    return {"hostport": hostport, "by_tag": by_tag, "by_zone": by_zone}
