"""The agent's YAML file: service definitions, each with an optional health check, validated as a whole.

::

    tenant: acme                      # default tenant of every definition (else --tenant)
    services:
      - service: billing
        id: billing-1                 # default: <service>-<address>-<port>
        address: 10.0.0.5
        port: 8080
        tags: [v2]
        meta: {build: "42"}
        weight: 100
        zone: eu-1
        ttl: 10                       # seconds; heartbeats every ttl/3
        check:
          http: http://10.0.0.5:8080/health     # or  tcp: 10.0.0.5:8080   or  exec: "pg_isready -q"
          status: 200                           # http: expected status;  exec: exit_code: 0
          interval: 5
          timeout: 2
          failures_before_critical: 2
          successes_before_passing: 1
          initial_status: critical              # until the first checks decide

A file that does not validate raises :class:`ConfigError` whose message is ONE line naming the file, the line
(from YAML's node marks) and the problem; nothing of it is applied.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bus.errors import InvalidName
from bus.models import Instance, Status
from bus.subjects import validate_instance_id, validate_service, validate_tenant

__all__ = ["AgentConfig", "CheckDef", "ConfigError", "ServiceDef", "load_config", "parse_config"]

Key = tuple[str, str, str]


class ConfigError(ValueError):
    """A configuration file that cannot be used; ``str()`` is ``FILE:LINE: message``."""

    def __init__(self, source: str, line: int | None, message: str) -> None:
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where}: {message}")
        self.line = line
        self.message = message


def _name(validate: Any, value: str) -> str:
    try:
        return str(validate(value))
    except InvalidName as exc:
        raise ValueError(str(exc)) from None


def _host_port(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port``."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.%\w]+)\]:(\d{1,5})|([^:\[\]\s]+):(\d{1,5})", value)
    if m is None:
        raise ValueError(f"expected host:port, got {value!r}")
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"port {port} out of range 1-65535")
    return host, int(port)


class CheckDef(BaseModel):
    """One health check: exactly one of ``http``, ``tcp``, ``exec``; times in seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    http: str | None = None
    tcp: str | None = None
    exec_: Annotated[str | tuple[str, ...] | None, Field(alias="exec")] = None
    status: Annotated[int, Field(ge=100, le=599)] = 200
    method: Annotated[str, Field(pattern=r"^[A-Z]{1,16}$")] = "GET"
    exit_code: Annotated[int, Field(ge=0, le=255)] = 0
    interval: Annotated[float, Field(ge=0.01, le=86400)] = 10.0
    timeout: Annotated[float, Field(gt=0, le=3600)] = 2.0
    failures_before_critical: Annotated[int, Field(ge=1, le=1000)] = 1
    successes_before_passing: Annotated[int, Field(ge=1, le=1000)] = 1
    initial_status: Status = Status.critical

    @field_validator("http")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^/\s]+(/\S*)?", value):
            raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
        return value

    @field_validator("tcp")
    @classmethod
    def _tcp(cls, value: str | None) -> str | None:
        if value is not None:
            _host_port(value)
        return value

    @field_validator("exec_")
    @classmethod
    def _exec(cls, value: str | tuple[str, ...] | None) -> str | tuple[str, ...] | None:
        if value is not None and (not value or (isinstance(value, str) and not value.strip())):
            raise ValueError("the command is empty")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> CheckDef:
        given = [k for k in ("http", "tcp", "exec_") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("a check has exactly one of http, tcp, exec")
        if "status" in self.model_fields_set and self.http is None:
            raise ValueError("status (an HTTP status) belongs to an http check")
        if "exit_code" in self.model_fields_set and self.exec_ is None:
            raise ValueError("exit_code belongs to an exec check")
        return self

    @property
    def kind(self) -> str:
        return "http" if self.http is not None else "tcp" if self.tcp is not None else "exec"

    @property
    def target(self) -> tuple[str, int]:
        assert self.tcp is not None
        return _host_port(self.tcp)


class ServiceDef(BaseModel):
    """One instance to register: the fields of :class:`bus.Instance` (checked by it), its tenant and service,
    and its check."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    tenant: str | None = None
    service: str
    id: str | None = None
    address: str
    port: int
    protocol: str = "tcp"
    version: str = ""
    tags: tuple[str, ...] = ()
    meta: dict[str, str] = Field(default_factory=dict)
    weight: int = 100
    zone: str = ""
    ttl: float = 10.0
    check: CheckDef | None = None

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, value: str | None) -> str | None:
        return None if value is None else _name(validate_tenant, value)

    @field_validator("service")
    @classmethod
    def _service(cls, value: str) -> str:
        return _name(validate_service, value)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str | None) -> str | None:
        return None if value is None else _name(validate_instance_id, value)

    def instance_id(self) -> str:
        if self.id is not None:
            return self.id
        return re.sub(r"[^A-Za-z0-9_-]+", "-", f"{self.service}-{self.address}-{self.port}")[:64].strip("-")

    def instance(self, status: Status, seq: int = 0) -> Instance:
        """The wire record (raises pydantic's ValidationError for a field the protocol refuses)."""
        return Instance(
            id=self.instance_id(), address=self.address, port=self.port, protocol=self.protocol,
            version=self.version, tags=tuple(self.tags), meta=dict(self.meta), weight=self.weight, zone=self.zone,
            status=status, ttl=float(self.ttl), seq=seq,
        )

    def registration(self) -> dict[str, Any]:
        """What an announce carries (a change here is an update in place; a change of the check only is not)."""
        return self.model_dump(exclude={"check", "tenant"})


class AgentConfig(BaseModel):
    """The whole file. ``definitions`` maps (tenant, service, id) to its definition, tenants resolved."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant: str | None = None
    services: tuple[ServiceDef, ...] = ()

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, value: str | None) -> str | None:
        return None if value is None else _name(validate_tenant, value)

    def definitions(self, default_tenant: str | None) -> dict[Key, ServiceDef]:
        out: dict[Key, ServiceDef] = {}
        for d in self.services:
            tenant = d.tenant or self.tenant or default_tenant
            assert tenant is not None  # checked by parse_config
            out[(tenant, d.service, d.instance_id())] = d.model_copy(update={"tenant": tenant})
        return out


# -- loading with line numbers ---------------------------------------------------------------------------------
def _node_at(root: yaml.Node | None, loc: Sequence[int | str]) -> yaml.Node | None:
    """The deepest node of ``root`` along ``loc`` (pydantic's error location)."""
    node = root
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            nxt = node.value[part]
        else:
            nxt = None
        if nxt is None:
            break
        node = nxt
    return node


def _line(root: yaml.Node | None, loc: Sequence[int | str]) -> int | None:
    node = _node_at(root, loc)
    return node.start_mark.line + 1 if node is not None else None


def _describe(loc: Sequence[int | str], msg: str) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    msg = msg.removeprefix("Value error, ")
    return f"{path}: {msg}" if path else msg


def parse_config(text: str, source: str = "<config>", default_tenant: str | None = None) -> AgentConfig:
    """Validate ``text`` (YAML); raise :class:`ConfigError` naming the first problem and its line."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise ConfigError(source, mark.line + 1 if mark else None, f"invalid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, None, f"invalid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, 1, "expected a mapping with 'services:' (a list of service definitions)")
    try:
        cfg = AgentConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p in {"str", "tuple[str, ...]"})]
        raise ConfigError(source, _line(root, loc), _describe(loc, err["msg"])) from None
    seen: dict[Key, int] = {}
    for index, d in enumerate(cfg.services):
        where: list[int | str] = ["services", index]
        if (d.tenant or cfg.tenant or default_tenant) is None:
            raise ConfigError(source, _line(root, where),
                              f"services[{index}]: no tenant: give 'tenant:' in the file or --tenant")
        try:
            d.instance(Status.passing)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = [str(p) for p in err["loc"][:1]]
            raise ConfigError(source, _line(root, [*where, *field]),
                              _describe([*where, *field], err["msg"])) from None
        key = (d.tenant or cfg.tenant or default_tenant or "", d.service, d.instance_id())
        if key in seen:
            raise ConfigError(source, _line(root, where),
                              f"services[{index}]: instance {key[1]}/{key[2]} of tenant {key[0]} is already defined "
                              f"at line {seen[key]}")
        seen[key] = _line(root, where) or 0
    return cfg


def load_config(path: Path, default_tenant: str | None = None) -> AgentConfig:
    """Read and validate the file at ``path`` (see :func:`parse_config`)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), None, f"cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), None, "not UTF-8 text") from None
    return parse_config(text, str(path), default_tenant)
