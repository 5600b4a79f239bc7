"""``disco agent``: registers services that cannot speak NATS, from a YAML file, with health checks
(:mod:`.checks`), on one connection and one batched heartbeat stream (:mod:`bus.heartbeats`)."""

from services.agent.config import AgentConfig, CheckDef, ConfigError, ServiceDef, load_config, parse_config
from services.agent.member import Member
from services.agent.runner import Agent, Diff

__all__ = [
    "Agent",
    "AgentConfig",
    "CheckDef",
    "ConfigError",
    "Diff",
    "Member",
    "ServiceDef",
    "load_config",
    "parse_config",
]
