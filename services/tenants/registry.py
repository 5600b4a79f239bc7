"""The tenant registry: tenants, their quotas, their NATS account and user, in a JetStream KV bucket of the DISCO
account (no tenant user belongs to that account, so no tenant can reach it).

A record holds public keys only: the tenant's account key (whose seed is thrown away once the account JWT is
signed), its current user key, and the user keys revoked by rotation. Seeds exist only in the credentials file
handed to the tenant and in the administrator's keys file.

Every record is validated when read: a malformed or empty record is reported (:attr:`TenantRegistry.problems`,
a warning in the log) and skipped. It never deletes a tenant, never breaks a listing or an aggregator.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import nats.js.errors
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bus.errors import BadRequest, NotFound
from bus.streams import kv_keys, until_led
from bus.subjects import validate_tenant

__all__ = ["Quota", "TenantRecord", "TenantRegistry", "bucket_name"]

log = logging.getLogger("disco.tenants")


class Quota(BaseModel):
    """A tenant's quotas. The aggregator enforces the first three; the NATS server the others (None: the
    default of :mod:`services.tenants.accounts`). Sizes in bytes, rates per second."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_instances: int | None = Field(None, ge=0)
    max_services: int | None = Field(None, ge=0)
    announce_rate: float | None = Field(None, gt=0)
    max_connections: int | None = Field(None, ge=1)
    max_subscriptions: int | None = Field(None, ge=1)
    max_payload: int | None = Field(None, ge=1024)
    max_streams: int | None = Field(None, ge=1, le=1000)
    max_consumers: int | None = Field(None, ge=1, le=10_000)
    max_stream_bytes: int | None = Field(None, ge=1024)


class TenantRecord(Quota):
    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str = Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    #: the tenant's NATS account (public key, ``A…``)
    account: str = Field(pattern=r"^A[A-Z2-7]{55}$")
    #: the tenant's current user (public key, ``U…``)
    user: str = Field(pattern=r"^U[A-Z2-7]{55}$")
    #: users revoked by rotation: public key -> time (whole seconds) before which their JWTs are refused
    revoked: dict[str, int] = Field(default_factory=dict)
    created_at: float = Field(default_factory=time.time)
    #: ``iat`` of the last account JWT pushed: the next one is issued later, never earlier (the full resolver
    #: takes an older JWT, which would undo a revocation)
    jwt_iat: int = 0
    #: what the last account JWT pushed holds (:data:`ACCOUNT_JWT_FORMAT`; 0: before the ``live`` import)
    jwt_format: int = 0

    @property
    def quota(self) -> Quota:
        return Quota(**{k: getattr(self, k) for k in Quota.model_fields})


#: the account JWTs pushed now: 1 = with the stream import of ``<p>.<t>.live.>`` (older ones are re-issued once,
#: :meth:`services.tenants.admin.TenantAdmin.refresh_accounts`)
ACCOUNT_JWT_FORMAT = 1


def bucket_name(prefix: str) -> str:
    """The registry's KV bucket: ``<prefix>_tenants`` (dots of a prefix become underscores)."""
    return f"{prefix.replace('.', '_')}_tenants"


def parse_record(key: str, value: bytes | None) -> TenantRecord:
    """A stored record, validated; BadRequest naming the tenant and the problem otherwise."""
    if not value:
        raise BadRequest(f"tenant record {key!r} is empty")
    try:
        record = TenantRecord.model_validate_json(value)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "record"
        raise BadRequest(f"tenant record {key!r} is malformed: {where}: {err['msg']}") from None
    if record.name != key:
        raise BadRequest(f"tenant record {key!r} names another tenant ({record.name!r})")
    return record


class TenantRegistry:
    """The registry of one prefix, in the JetStream of the connection it is given (the DISCO account)."""

    def __init__(self, js: JetStreamContext, prefix: str, replicas: int = 1) -> None:
        self.js = js
        self.bucket = bucket_name(prefix)
        self.replicas = replicas
        self._kv: KeyValue | None = None
        #: the malformed records met by the last :meth:`list` or :meth:`follow`: tenant -> what is wrong
        self.problems: dict[str, str] = {}

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
                await until_led(self.js, f"KV_{self.bucket}")  # on a cluster: the first write must find a leader
        return self._kv

    async def get_entry(self, name: str) -> tuple[TenantRecord, int] | None:
        """The record and its KV revision (for compare-and-set), None if there is none; BadRequest if the stored
        record is malformed (it is left as it is)."""
        kv = await self.open()
        try:
            entry = await kv.get(validate_tenant(name))
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        if entry.operation in ("DEL", "PURGE"):
            return None
        return parse_record(name, entry.value), int(entry.revision or 0)

    async def get(self, name: str) -> TenantRecord | None:
        found = await self.get_entry(name)
        return found[0] if found is not None else None

    async def create(self, record: TenantRecord) -> int:
        kv = await self.open()
        try:
            return int(await kv.create(validate_tenant(record.name), record.model_dump_json().encode()))
        except nats.js.errors.KeyWrongLastSequenceError:
            raise BadRequest(f"tenant {record.name!r} exists already (`disco tenant creds` issues new "
                             "credentials)") from None

    async def update(self, record: TenantRecord, revision: int) -> int:
        """Replace the record read at ``revision``; BadRequest if someone changed it in between."""
        kv = await self.open()
        try:
            return int(await kv.update(record.name, record.model_dump_json().encode(), last=revision))
        except nats.js.errors.KeyWrongLastSequenceError:
            raise BadRequest(f"tenant {record.name!r} was changed by someone else meanwhile: try again") from None

    async def delete(self, name: str) -> None:
        if await self.get_entry(name) is None:
            raise NotFound(f"no tenant {name!r}")
        kv = await self.open()
        await kv.delete(name)

    async def delete_raw(self, name: str) -> None:
        """Delete the record ``name`` whatever it holds (``disco tenant rm --force`` of a malformed record)."""
        kv = await self.open()
        await kv.delete(validate_tenant(name))
        self.problems.pop(name, None)

    async def list(self) -> list[TenantRecord]:
        """Every valid record, by name; the malformed ones are in :attr:`problems` (and logged)."""
        await self.open()
        keys = await kv_keys(self.js, self.bucket)
        out: list[TenantRecord] = []
        self.problems = {}
        for key in sorted(keys):
            try:
                found = await self.get_entry(key)
            except BadRequest as exc:
                self._problem(key, str(exc))
                continue
            if found is not None:
                out.append(found[0])
        return out

    def _take(self, entry: KeyValue.Entry, current: dict[str, TenantRecord]) -> bool:
        """Apply a followed entry to ``current``; False for a malformed record (skipped, the last valid one kept)."""
        if entry.operation in ("DEL", "PURGE"):
            current.pop(entry.key, None)
            self.problems.pop(entry.key, None)
            return True
        try:
            current[entry.key] = parse_record(entry.key, entry.value)
        except BadRequest as exc:
            self._problem(entry.key, str(exc))
            return False
        self.problems.pop(entry.key, None)
        return True

    def _problem(self, key: str, what: str) -> None:
        if self.problems.get(key) != what:
            log.warning("tenant registry: %s (skipped)", what)
        self.problems[key] = what

    async def follow(self) -> AsyncIterator[dict[str, TenantRecord]]:
        """The whole registry now, then again after every change. A malformed record is skipped: the tenant
        keeps the last valid record seen for it (a bad write never removes a tenant).

        The first view ends with the entry the server had nothing more behind (``delta`` 0), not with nats-py's
        "nothing more" marker alone: when every entry reaches the client before its consumer info does, nats-py
        puts that marker ahead of them. The marker ends the first view only of a bucket holding nothing."""
        kv = await self.open()
        expecting = (await kv.status()).values > 0
        watcher = await kv.watchall()
        current: dict[str, TenantRecord] = {}
        initial = True
        try:
            async for entry in watcher:
                if entry is None:
                    if initial and expecting:
                        # the marker came first: entries follow, unless the bucket was emptied meanwhile
                        expecting = (await kv.status()).values > 0
                    if initial and not expecting:
                        initial = False
                        yield dict(current)
                    continue
                changed = self._take(entry, current)
                if initial and not entry.delta:
                    initial = False
                    yield dict(current)
                elif not initial and changed:
                    yield dict(current)
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]
