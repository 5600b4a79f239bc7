"""The gateway's configuration (mirrored by ``disco gateway``'s flags). Times are float seconds."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.gateway.routing import RouteSettings

__all__ = ["GatewaySettings", "OutlierSettings"]


@dataclass(frozen=True, slots=True)
class OutlierSettings:
    consecutive: int = 3
    base_time: float = 5.0
    max_time: float = 300.0


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    host: str = "127.0.0.1"
    port: int = 8080
    #: ``<svc>.<tenant>.<domain>`` routes by host when set
    domain: str | None = None
    routes: RouteSettings = field(default_factory=RouteSettings)
    overrides: dict[tuple[str, str], RouteSettings] = field(default_factory=dict)
    #: tenant → bearer token callers must present (tenants not listed are open)
    tokens: dict[str, str] = field(default_factory=dict)
    outlier: OutlierSettings = field(default_factory=OutlierSettings)
    connect_timeout: float = 2.0
