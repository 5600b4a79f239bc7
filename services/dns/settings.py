"""``disco dns`` configuration: one pydantic settings model (``DISCO_DNS_`` environment prefix), mirrored by the
command's flags. Every time is in seconds (float); sizes are bytes.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated

import dns.name
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bus.connection import DEFAULT_URL
from bus.errors import InvalidName
from bus.subjects import DEFAULT_PREFIX, validate_tenant

__all__ = ["DnsSettings", "Endpoint", "TenantSource", "parse_endpoint", "parse_tenant"]

_PORT = r"(6553[0-5]|655[0-2]\d|65[0-4]\d\d|6[0-4]\d{3}|[1-5]\d{4}|[1-9]\d{0,3}|0)"


class Endpoint(BaseModel):
    """An address to listen on: an IP address (v4 or v6) and a port (0: any free port)."""

    model_config = ConfigDict(frozen=True)
    host: str
    port: Annotated[int, Field(ge=0, le=65535)]

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_endpoint(text: str) -> Endpoint:
    """``ADDR:PORT`` or ``[V6ADDR]:PORT`` into an :class:`Endpoint`; raise ValueError saying what is wrong."""
    m = re.fullmatch(rf"\[([0-9A-Fa-f:.]+)\]:{_PORT}", text) or re.fullmatch(rf"([^:\[\]]+):{_PORT}", text)
    if m is None:
        raise ValueError(f"{text!r} is not ADDR:PORT (an IP address and a port 0-65535; IPv6 as [ADDR]:PORT)")
    host = m.group(1)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address (give the address to listen on, e.g. 127.0.0.1)") from None
    return Endpoint(host=host, port=int(m.group(2)))


class TenantSource(BaseModel):
    """A tenant to serve, and the credentials to follow it with (None: the shared connection's)."""

    model_config = ConfigDict(frozen=True)
    name: str
    creds: Path | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        try:
            return validate_tenant(value)
        except InvalidName as exc:
            raise ValueError(str(exc)) from None


def parse_tenant(text: str) -> TenantSource:
    """``NAME`` or ``NAME=CREDS_FILE`` into a :class:`TenantSource`; raise ValueError saying what is wrong."""
    name, sep, creds = text.partition("=")
    try:
        validate_tenant(name)
    except InvalidName as exc:
        raise ValueError(str(exc)) from None
    if not sep:
        return TenantSource(name=name)
    if not creds:
        raise ValueError(f"no credentials file after {name}= (give NAME or NAME=FILE)")
    path = Path(creds)
    if not path.is_file():
        raise ValueError(f"credentials file of tenant {name} not found: {creds}")
    return TenantSource(name=name, creds=path)


class DnsSettings(BaseSettings):
    """What ``disco dns`` serves, where, and how long answers may be cached."""

    model_config = SettingsConfigDict(env_prefix="DISCO_DNS_", extra="ignore")

    nats_url: str = Field(DEFAULT_URL, description="NATS URL(s), comma separated")
    creds: Path | None = Field(None, description="credentials of the shared connection (tenants without their own)")
    prefix: str = DEFAULT_PREFIX
    listen: Endpoint = Field(Endpoint(host="127.0.0.1", port=8600), description="UDP and TCP address")
    zone: str = Field("disco.", description="the zone served (absolute, lower-case)")
    tenants: tuple[TenantSource, ...] = Field((), description="the tenants served")
    all_tenants: bool = Field(False, description="serve every tenant found in the view (discovered as they appear)")
    ttl: float = Field(5.0, ge=0, le=86400, description="TTL of positive answers")
    negative_ttl: float = Field(5.0, ge=0, le=86400, description="SOA minimum: how long a 'no such name' is cached")
    shuffles: int = Field(
        8, ge=0, le=1000,
        description="weighted orders rendered per question between changes, one picked per answer (0: render each)",
    )
    max_udp_size: int = Field(4096, ge=512, le=65535, description="largest UDP answer, whatever EDNS(0) offers")
    tcp_connections: int = Field(256, ge=1, description="TCP connections served at once; more are closed")
    tcp_idle: float = Field(10.0, gt=0, description="an idle TCP connection is closed after this long")
    tcp_queries: int = Field(1000, ge=1, description="queries answered per TCP connection before it is closed")
    probe_interval: float = Field(
        1.0, gt=0, description="how often each connection checks that an aggregator answers (stale detection)"
    )
    probe_timeout: float = Field(1.0, gt=0)
    discover_interval: float = Field(30.0, gt=0, description="with all_tenants: how often tenants are relisted")
    resync_interval: float = Field(300.0, gt=0, description="full relist of each tenant's view")
    metrics: Endpoint | None = Field(None, description="where Prometheus scrapes /metrics (None: not served)")

    @field_validator("listen", "metrics", mode="before")
    @classmethod
    def _endpoint(cls, value: object) -> object:
        return parse_endpoint(value) if isinstance(value, str) else value

    @field_validator("zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            name = dns.name.from_text(value.strip(), origin=dns.name.root)
        except Exception as exc:
            raise ValueError(f"{value!r} is not a domain name: {exc}") from None
        if name == dns.name.root:
            raise ValueError("the root zone cannot be served: give a zone such as disco.")
        return name.to_text().lower()

    @model_validator(mode="after")
    def _who(self) -> DnsSettings:
        if self.all_tenants and self.tenants:
            raise ValueError("give either tenants or all_tenants, not both")
        if not self.all_tenants and not self.tenants:
            raise ValueError("no tenant to serve: name them (tenants) or ask for all_tenants")
        names = [t.name for t in self.tenants]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise ValueError(f"tenant {dup} is given twice")
        return self
