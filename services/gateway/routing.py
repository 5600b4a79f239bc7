"""Where a request goes: ``<svc>.<tenant>.<domain>`` by host, else ``/<tenant>/<svc>/...`` by path (the prefix
is stripped), and each route's settings (balancing strategy, zone preference, timeout).

Pure: no I/O. Names are checked with the bus's own validators, so a route names a tenant and service the bus
accepts, or none.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from bus.balancing import Strategy
from bus.errors import DiscoError
from bus.subjects import validate_service, validate_tenant

__all__ = ["RESERVED", "Route", "RouteSettings", "Router", "parse_route_option"]

#: first path segments the gateway answers itself (a tenant of that name is reachable by host only)
RESERVED = frozenset({"v1", "ui", "metrics", "openapi.json", "favicon.ico", "healthz"})


@dataclass(frozen=True, slots=True)
class RouteSettings:
    """How one (tenant, service) is served. ``timeout`` (seconds) bounds the wait for the upstream's response
    head and every read of its body; ``retries`` bounds extra attempts after a connect failure (idempotent
    methods only)."""

    strategy: Strategy = Strategy.least_outstanding
    prefer_zone: str | None = None
    timeout: float = 30.0
    retries: int = 2


@dataclass(frozen=True, slots=True)
class Route:
    tenant: str
    service: str
    #: path (and query) to send upstream
    path: str
    by_host: bool


def _valid(tenant: str, service: str) -> bool:
    try:
        validate_tenant(tenant)
        validate_service(service)
    except DiscoError:
        return False
    return True


class Router:
    """Maps a request to a :class:`Route`; ``domain`` (e.g. ``svc.example.com``) enables host routing."""

    def __init__(
        self,
        domain: str | None = None,
        defaults: RouteSettings | None = None,
        overrides: dict[tuple[str, str], RouteSettings] | None = None,
    ) -> None:
        self.domain = domain.strip(".").lower() if domain else None
        self.defaults = defaults or RouteSettings()
        self.overrides = dict(overrides or {})

    def by_host(self, host: str, path_qs: str) -> Route | None:
        """The route named by a ``Host`` header, or None when the host is not under the domain."""
        if not self.domain:
            return None
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        name = name.strip(".").lower()
        suffix = "." + self.domain
        if not name.endswith(suffix):
            return None
        labels = name[: -len(suffix)].split(".")
        if len(labels) != 2 or not _valid(labels[1], labels[0]):
            return None
        return Route(tenant=labels[1], service=labels[0], path=path_qs, by_host=True)

    def by_path(self, raw_path: str, query: str) -> Route | None:
        """The route of ``/<tenant>/<svc>[/rest]``; None when the path does not name one."""
        parts = raw_path.split("/", 3)
        if len(parts) < 3 or parts[0] != "" or parts[1] in RESERVED or not _valid(parts[1], parts[2]):
            return None
        rest = "/" + parts[3] if len(parts) == 4 else "/"
        return Route(tenant=parts[1], service=parts[2], path=rest + ("?" + query if query else ""), by_host=False)

    def settings(self, tenant: str, service: str) -> RouteSettings:
        return self.overrides.get((tenant, service), self.defaults)


def parse_route_option(value: str, defaults: RouteSettings) -> tuple[tuple[str, str], RouteSettings]:
    """``TENANT/SERVICE:key=value,...`` (keys: strategy, prefer_zone, timeout, retries) → its settings.

    Raises ValueError with a message fit for the command line.
    """
    name, _, opts = value.partition(":")
    tenant, _, service = name.partition("/")
    if not _valid(tenant, service):
        raise ValueError(f"{value!r}: expected TENANT/SERVICE:key=value,... with valid names")
    s = defaults
    for item in filter(None, opts.split(",")):
        key, eq, val = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq:
            raise ValueError(f"{item!r}: expected key=value")
        try:
            if key == "strategy":
                s = replace(s, strategy=Strategy(val))
            elif key in ("prefer_zone", "zone"):
                s = replace(s, prefer_zone=val or None)
            elif key == "timeout":
                t = float(val)
                if not 0 < t <= 3600:
                    raise ValueError
                s = replace(s, timeout=t)
            elif key == "retries":
                r = int(val)
                if not 0 <= r <= 10:
                    raise ValueError
                s = replace(s, retries=r)
            else:
                raise KeyError(key)
        except KeyError:
            raise ValueError(f"unknown route setting {key!r} (use strategy, prefer_zone, timeout, retries)") from None
        except ValueError:
            raise ValueError(f"bad value for {key}: {val!r}") from None
    return (tenant, service), s
