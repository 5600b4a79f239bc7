"""Aggregator configuration: one pydantic settings model, ``DISCO_`` environment prefix, mirrored by CLI flags."""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bus.codec import DEFAULT_MAX_PAYLOAD
from bus.subjects import DEFAULT_PREFIX
from services.aggregator.shard import Shard

#: options of an aggregator's own NATS connection: no echo of its own publishes (its change events would come
#: back to its subscription of every tenant's changes, a message read for nothing on every write; the start-up
#: shard probe publishes from a connection of its own, shard.py)
CONNECT_OPTIONS: dict[str, Any] = {"no_echo": True}


class AggregatorSettings(BaseSettings):
    """Every time is in seconds (float)."""

    model_config = SettingsConfigDict(env_prefix="DISCO_", extra="ignore")

    nats_url: str = Field("nats://127.0.0.1:4222", description="NATS URL(s), comma separated")
    creds: str | None = Field(None, description="NATS credentials file of the aggregator user")
    prefix: str = DEFAULT_PREFIX
    bucket: str = Field("disco_view", description="JetStream KV bucket holding the live view")
    stream: str = Field(
        "DISCO_CHANGES", description="prefix of the per-tenant change streams (<stream>_<tenant>)"
    )
    replicas: int = Field(1, ge=1, le=5, description="replicas of the bucket and stream (3 on a cluster)")
    changes_max_age: float = Field(7 * 24 * 3600.0, gt=0, description="how long change events are kept")
    queue_group: str = "disco-aggregators"
    sweep_interval: float = Field(0.1, gt=0, le=1.0)
    max_payload: int = Field(DEFAULT_MAX_PAYLOAD, ge=1024)
    workers: int = Field(
        256, ge=1, le=4096, description="concurrent KV writes (each waits a KV round trip: 64 cost 12 percent of the "
        "announces/s with 100 in flight)"
    )
    tenant_queue: int = Field(2000, ge=1, description="pending writes per tenant before 'overloaded'")
    write_deadline: float = Field(
        1.5, gt=0, description="a KV write meeting JetStream recovery is retried this long, then 'unavailable' "
        "(below the clients' 2 s announce timeout, so they hear an answer)"
    )
    event_takeover: float = Field(
        2.0, gt=0, description="another aggregator's change event not seen after this long is published by us"
    )
    ctl_interval: float = Field(1.0, ge=0, description="at most one reannounce request per instance per interval")
    purge_deletes_every: float = Field(600.0, gt=0, description="how often old delete markers are purged")
    republish_check: float = Field(
        5.0, gt=0, description="how often (s) the bucket is checked to republish its writes (configured again if not)"
    )
    purge_deletes_older_than: float = Field(1800.0, gt=0)
    # quotas of a tenant that has no limits of its own (None: unlimited)
    default_max_instances: int | None = Field(50_000, ge=0)
    default_max_services: int | None = Field(5_000, ge=0)
    default_announce_rate: float | None = Field(None, gt=0, description="announces per second per tenant")
    # self-preservation
    preservation_share: float = Field(0.5, gt=0, le=1, description="share of a tenant's instances in one sweep")
    preservation_min: int = Field(3, ge=1, description="...and at least this many, to pause expiry")
    preservation_max_pause: float = Field(60.0, gt=0, description="a mass death is expired after this long")
    # backlog bounds of the inline handlers: past this many pending messages nats-py drops (slow consumer), which
    # bounds how long a flood can delay another tenant's heartbeats and resolves; a drop of heartbeats gives
    # everyone one ttl of grace instead of expiring them
    read_backlog: int = Field(200_000, ge=100)
    follow_tenants: bool = Field(True, description="take each tenant's quotas from the tenant registry, live")
    separate_reads: bool = Field(True, description="resolves and snapshots on a connection of their own")
    read_lanes: int = Field(256, ge=0, description="tenants whose reads get a connection of their own (0: none)")
    max_read_lag: float = Field(
        0.25, gt=0, description="read lag (s) past which a sweep expires nobody: heartbeats may be queued unread"
    )
    hb_backlog_grace: int = Field(
        1000, ge=1, description="unread heartbeats past which a sweep expires nobody (they may be in there)"
    )
    read_queue: int = Field(1000, ge=1, description="pending resolves/snapshots per tenant before 'overloaded'")
    strict_replies: bool = Field(
        False, description="reply only to the requesting tenant's inbox (_INBOX.<tenant>.>); on with --auth"
    )
    shard: str | None = Field(
        None, description="K/N: serve only the tenants of shard K of N (the server partitions the subjects; "
        "services/aggregator/shard.py); the view is then in the bucket <bucket>_s<K>of<N>"
    )

    @field_validator("shard")
    @classmethod
    def _valid_shard(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        label = Shard.parse(value).label
        if info.data.get("strict_replies") or info.data.get("creds") is not None:
            raise ValueError("not supported with tenant isolation (--auth: one NATS account per tenant, aggregators "
                             "with credentials) yet: run one unsharded group of aggregators there")
        return label

    @property
    def shard_spec(self) -> Shard | None:
        """The shard this aggregator serves (None: every tenant)."""
        return None if self.shard is None else Shard.parse(self.shard)

    @property
    def view_bucket(self) -> str:
        """The KV bucket this aggregator keeps its view in: ``bucket``, or its shard's (Shard.bucket)."""
        spec = self.shard_spec
        return self.bucket if spec is None else spec.bucket(self.bucket)
