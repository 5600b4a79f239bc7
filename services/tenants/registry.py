"""The tenant registry: tenants, their quotas and their NATS user, in a JetStream KV bucket every aggregator follows.

A record holds the bcrypt hash of the tenant's password, never the password: the password exists only in the
credentials file handed to the tenant (``disco tenant add`` / ``disco tenant creds``).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator

import bcrypt
import nats.js.errors
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bus.errors import BadRequest, NotFound
from bus.subjects import validate_tenant

__all__ = ["TenantRecord", "TenantRegistry", "bucket_name", "hash_password", "new_password"]


class TenantRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    user: str
    password_hash: str
    max_instances: int | None = Field(None, ge=0)
    max_services: int | None = Field(None, ge=0)
    announce_rate: float | None = Field(None, gt=0)
    created_at: float = Field(default_factory=time.time)


def bucket_name(prefix: str) -> str:
    """The registry's KV bucket: ``<prefix>_tenants`` (dots of a prefix become underscores)."""
    return f"{prefix.replace('.', '_')}_tenants"


def new_password() -> str:
    return secrets.token_urlsafe(24)


def hash_password(password: str) -> str:
    """A bcrypt hash in the ``$2a$`` form nats-server accepts for ``password``."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10, prefix=b"2a")).decode()


class TenantRegistry:
    def __init__(self, js: JetStreamContext, prefix: str, replicas: int = 1) -> None:
        self.js = js
        self.bucket = bucket_name(prefix)
        self.replicas = replicas
        self._kv: KeyValue | None = None

    async def open(self, create: bool = True) -> KeyValue:
        if self._kv is None:
            try:
                self._kv = await self.js.key_value(self.bucket)
            except nats.js.errors.BucketNotFoundError:
                if not create:
                    raise
                self._kv = await self.js.create_key_value(
                    bucket=self.bucket, history=1, replicas=self.replicas, storage=api.StorageType.FILE,
                    description="disco tenants",
                )
        return self._kv

    async def get(self, name: str) -> TenantRecord | None:
        kv = await self.open()
        try:
            entry = await kv.get(validate_tenant(name))
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        if not entry.value:
            return None
        return TenantRecord.model_validate_json(entry.value)

    async def put(self, record: TenantRecord) -> None:
        kv = await self.open()
        await kv.put(validate_tenant(record.name), record.model_dump_json().encode())

    async def add(
        self, name: str, *, max_instances: int | None = None, max_services: int | None = None,
        announce_rate: float | None = None,
    ) -> tuple[TenantRecord, str]:
        """Create a tenant; return its record and its (only ever shown here) password."""
        validate_tenant(name)
        if await self.get(name) is not None:
            raise BadRequest(f"tenant {name!r} exists already (use `disco tenant creds` for new credentials)")
        password = new_password()
        try:
            record = TenantRecord(name=name, user=f"tenant-{name}", password_hash=hash_password(password),
                                  max_instances=max_instances, max_services=max_services,
                                  announce_rate=announce_rate)
        except ValidationError as exc:
            raise BadRequest(f"invalid limits: {exc.errors()[0]['msg']}") from None
        kv = await self.open()
        try:
            await kv.create(name, record.model_dump_json().encode())
        except nats.js.errors.KeyWrongLastSequenceError:
            raise BadRequest(f"tenant {name!r} exists already") from None
        return record, password

    async def new_credentials(self, name: str) -> tuple[TenantRecord, str]:
        record = await self.get(name)
        if record is None:
            raise NotFound(f"no tenant {name!r}")
        password = new_password()
        record = record.model_copy(update={"password_hash": hash_password(password)})
        await self.put(record)
        return record, password

    async def remove(self, name: str) -> None:
        if await self.get(name) is None:
            raise NotFound(f"no tenant {name!r}")
        kv = await self.open()
        await kv.delete(name)

    async def list(self) -> list[TenantRecord]:
        kv = await self.open()
        try:
            keys = await kv.keys()
        except nats.js.errors.NoKeysError:
            return []
        out = []
        for key in sorted(keys):
            record = await self.get(key)
            if record is not None:
                out.append(record)
        return out

    async def follow(self) -> AsyncIterator[dict[str, TenantRecord]]:
        """The whole registry now, then again after every change."""
        kv = await self.open()
        watcher = await kv.watchall()
        current: dict[str, TenantRecord] = {}
        initial = True
        try:
            async for entry in watcher:
                if entry is None:
                    initial = False
                    yield dict(current)
                    continue
                if entry.operation in ("DEL", "PURGE") or not entry.value:
                    current.pop(entry.key, None)
                else:
                    try:
                        current[entry.key] = TenantRecord.model_validate_json(entry.value)
                    except (ValidationError, json.JSONDecodeError):
                        continue
                if not initial:
                    yield dict(current)
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
