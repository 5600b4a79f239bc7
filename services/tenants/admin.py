"""Adding, re-keying and removing tenants on a running server: the registry (DISCO's KV) and the account JWTs
(pushed through the system account) kept in step, with no reload and nothing happening to other tenants.

Promises:

- every change is written to the registry first (compare-and-set: of two admins changing one tenant at once, one
  fails before pushing anything), then the account JWT is pushed;
- ``add``: the record is created, then the account JWT is pushed (on failure both are removed again), then the
  tenant's change stream is created
  *inside the tenant's account* (as a short-lived user of that account), with a byte cap and ``max_consumers``;
- ``rotate``: a new user key; the old one is revoked in the account JWT, which closes its open connections within
  a second (nats-server checks revocations on push); the change stream is created again if the tenant deleted it
  (its workers cannot: a stream without a byte cap is refused in a tenant account);
- ``remove``: the tenant's streams are deleted (so no data stays on disk), the account is deleted
  (``$SYS.REQ.CLAIMS.DELETE`` closes its connections), then the record;
- a JWT is always built from the registry's current record and issued later than the last one pushed.
"""

from __future__ import annotations

import json
import logging
import re
import time

import anyio
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import api

from bus.connection import Connection, NatsClient, connect
from bus.errors import BadRequest, DiscoError, NotFound
from bus.streams import DLQ_MAX_BYTES, changes_stream_config, dlq_stream_config
from bus.subjects import DEFAULT_CHANGES_STREAM, Subjects, validate_tenant
from services.tenants.accounts import DEFAULTS, ClaimsClient, new_user, tenant_account_jwt, tenant_user_jwt
from services.tenants.jwt import auth_options, format_creds, new_key
from services.tenants.operator import OperatorKeys
from services.tenants.registry import ACCOUNT_JWT_FORMAT, Quota, TenantRecord, TenantRegistry

__all__ = ["TenantAdmin"]

log = logging.getLogger("disco.tenants")


class TenantAdmin:
    """Tenant administration over ``conn`` (a DISCO user: the registry) and a system-account connection minted
    from ``keys`` (the pushes). Use as ``async with TenantAdmin(...) as admin``."""

    def __init__(self, conn: Connection, keys: OperatorKeys, *, stream_prefix: str = DEFAULT_CHANGES_STREAM,
                 changes_max_age: float = 7 * 24 * 3600.0, replicas: int = 1) -> None:
        if keys.prefix != conn.subjects.prefix:
            raise BadRequest(f"these keys are for prefix {keys.prefix!r}, not {conn.subjects.prefix!r}")
        self.conn = conn
        self.keys = keys
        self.registry = TenantRegistry(conn.js, keys.prefix)
        self.stream_prefix = stream_prefix
        self.changes_max_age = changes_max_age
        #: replicas of a tenant's change stream (3 on a cluster, like disco's own)
        self.replicas = replicas
        self._sys: NATS | None = None

    async def __aenter__(self) -> TenantAdmin:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._sys is not None and not self._sys.is_closed:
            await self._sys.close()
        self._sys = None

    async def _claims(self) -> ClaimsClient:
        if self._sys is None or not self._sys.is_connected:  # first use, or its hour-long user expired
            await self.close()
            creds = self.keys.user_creds("system", "disco-admin-sys", expires_in=3600)
            nc = NatsClient()

            async def quiet(exc: Exception) -> None:
                log.debug("system connection: %s", exc)

            await nc.connect(servers=self._servers(), error_cb=quiet, max_reconnect_attempts=2,
                             connect_timeout=3, **auth_options(creds))
            self._sys = nc
        return ClaimsClient(self._sys, self.keys)

    async def _commit(self, record: TenantRecord, revision: int) -> TenantRecord:
        """Write ``record`` over the one read at ``revision`` (compare-and-set, with the ``iat`` of its next JWT,
        later than the last one), then push its account JWT. A concurrent change fails here, before any push."""
        iat = max(int(time.time()), record.jwt_iat + 1)
        record = record.model_copy(update={"jwt_iat": iat, "jwt_format": ACCOUNT_JWT_FORMAT})
        await self.registry.update(record, revision)
        await (await self._claims()).push(tenant_account_jwt(self.keys, record, iat))
        return record

    def _creds(self, record: TenantRecord, user: str, seed: str) -> str:
        return format_creds(tenant_user_jwt(self.keys, record, user), seed)

    async def as_tenant(self, record: TenantRecord, name: str = "disco-admin", *, relay: bool = False) -> Connection:
        """A connection of a short-lived (5 min) user of the tenant's account: what the admin uses to manage the
        tenant's own JetStream (``relay``: the user may also publish the tenant's change subjects)."""
        kp = new_key("U")
        user_jwt = tenant_user_jwt(self.keys, record, kp.public, expires_in=300, name=name, relay=relay)
        creds = format_creds(user_jwt, kp.seed)
        return await connect(self._servers(), tenant=record.name, prefix=self.keys.prefix, name=name,
                             max_reconnect_attempts=2, **auth_options(creds))

    def _servers(self) -> list[str]:
        """The URLs the DISCO connection knows (given and discovered)."""
        return [u.geturl() for u in self.conn.nc.servers] or ["nats://127.0.0.1:4222"]

    # -- the operations -----------------------------------------------------------------------------------------
    async def add(self, name: str, quota: Quota | None = None) -> tuple[TenantRecord, str]:
        """Create tenant ``name``; return its record and the text of its ``.creds`` file (shown only here)."""
        validate_tenant(name)
        user, seed = new_user()
        record = TenantRecord(name=name, account=new_key("A").public, user=user,
                              **(quota or Quota()).model_dump())
        revision = await self.registry.create(record)
        try:
            record = await self._commit(record, revision)
            await self._create_stream(record)
        except BaseException:
            with anyio.CancelScope(shield=True):  # undone even when the add was cancelled
                try:
                    await self._undo_add(record)
                except Exception as exc:
                    log.warning("could not undo the partial add of tenant %s: %s", name, exc)
            raise
        return record, self._creds(record, user, seed)

    async def _undo_add(self, record: TenantRecord) -> None:
        try:
            await (await self._claims()).delete(record.account)
        finally:
            await self.registry.delete(record.name)

    async def _create_stream(self, record: TenantRecord) -> None:
        cfg = changes_stream_config(Subjects(self.keys.prefix), self.stream_prefix, record.name,
                                    max_age=self.changes_max_age, replicas=self.replicas)
        cap = record.max_stream_bytes if record.max_stream_bytes is not None else DEFAULTS.max_stream_bytes
        consumers = record.max_consumers if record.max_consumers is not None else DEFAULTS.max_consumers
        cfg.max_bytes = cap
        cfg.max_consumers = consumers
        # dead letters stay in the tenant's own account too (its workers publish them there): bounded like the
        # change stream, with the documented retention (bus/streams.py)
        dlq = dlq_stream_config(Subjects(self.keys.prefix), self.stream_prefix, record.name, replicas=self.replicas,
                                max_bytes=min(cap or DLQ_MAX_BYTES, DLQ_MAX_BYTES))
        dlq.max_consumers = consumers
        conn = await self.as_tenant(record)
        try:
            for stream in (cfg, dlq):
                await _ensure_stream(conn, stream)
        finally:
            await conn.close()

    async def rotate(self, name: str) -> tuple[TenantRecord, str]:
        """New credentials for ``name``; the old user is revoked (its connections close within a second)."""
        record, revision = await self._entry(name)
        user, seed = new_user()
        revoked = dict(record.revoked)
        revoked[record.user] = int(time.time())
        record = record.model_copy(update={"user": user, "revoked": revoked})
        record = await self._commit(record, revision)
        await self._create_stream(record)  # again, if the tenant deleted it
        return record, self._creds(record, user, seed)

    async def refresh_accounts(self) -> list[str]:
        """Re-issue the account JWT of every tenant whose last one predates :data:`ACCOUNT_JWT_FORMAT` (the imports
        it lacks, such as the live subject's, take effect at once); the names re-issued. Run at the start of
        ``disco up --auth`` and of ``disco tenant relay``; a tenant that fails is logged and left for the next."""
        done: list[str] = []
        for stale in [r for r in await self.list() if r.jwt_format < ACCOUNT_JWT_FORMAT]:
            try:
                record, revision = await self._entry(stale.name)
                if record.jwt_format < ACCOUNT_JWT_FORMAT:
                    await self._commit(record, revision)
                    done.append(record.name)
                    log.info("tenant %s: account JWT re-issued with the imports of this version", record.name)
            except (DiscoError, nats.errors.Error, TimeoutError) as exc:
                log.warning("tenant %s: account JWT not re-issued (%s)", stale.name, exc)
        return done

    async def set_quota(self, name: str, quota: Quota) -> TenantRecord:
        record, revision = await self._entry(name)
        record = record.model_copy(update=quota.model_dump())
        return await self._commit(record, revision)

    async def remove(self, name: str, *, force: bool = False) -> None:
        """Delete tenant ``name``: its JetStream data, its account (connections closed), its record.

        A malformed record is refused (BadRequest) unless ``force``: then the account it names, if it names one,
        is deleted, and the record."""
        try:
            record, _ = await self._entry(name)
        except BadRequest:
            if not force:
                raise
            account = await self._account_of_malformed(name)
            if account is not None:
                await (await self._claims()).delete(account)
            await self.registry.delete_raw(name)
            return
        try:
            conn = await self.as_tenant(record)
        except Exception as exc:
            log.warning("tenant %s: its streams could not be deleted (%s)", name, exc)
        else:
            try:
                for stream in await _stream_names(conn):
                    await conn.js.delete_stream(stream)
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("tenant %s: its streams could not be deleted (%s)", name, exc)
            finally:
                await conn.close()
        await (await self._claims()).delete(record.account)
        await self.registry.delete(name)

    async def _account_of_malformed(self, name: str) -> str | None:
        kv = await self.registry.open()
        try:
            data = json.loads((await kv.get(name)).value or b"")
            account = data.get("account") if isinstance(data, dict) else None
        except (ValueError, nats.js.errors.KeyNotFoundError):
            return None
        return account if isinstance(account, str) and re.fullmatch(r"A[A-Z2-7]{55}", account) else None

    async def list(self) -> list[TenantRecord]:
        return await self.registry.list()

    async def _entry(self, name: str) -> tuple[TenantRecord, int]:
        found = await self.registry.get_entry(name)
        if found is None:
            raise NotFound(f"no tenant {name!r}")
        return found


async def _stream_names(conn: Connection) -> list[str]:
    try:
        return [s.config.name for s in await conn.js.streams_info() if s.config.name]
    except nats.js.errors.NotFoundError:
        return []


#: JetStream's "not enabled for account" (10039): on a cluster, the nodes other than the one that answered the
#: account push may not have the account's JetStream yet when the stream is created right after it
_JS_NOT_ENABLED_FOR_ACCOUNT = 10039


async def _ensure_stream(conn: Connection, cfg: api.StreamConfig, within: float = 10.0) -> None:
    """Create ``cfg`` in the connection's account unless it exists, waiting (at most ``within`` seconds) while the
    cluster has not yet enabled JetStream for a freshly pushed account."""
    delay = 0.1
    with anyio.fail_after(within):
        while True:
            try:
                try:
                    await conn.js.stream_info(cfg.name or "")
                except nats.js.errors.NotFoundError:
                    await conn.js.add_stream(cfg)
                return
            except nats.js.errors.APIError as exc:
                if exc.err_code != _JS_NOT_ENABLED_FOR_ACCOUNT:
                    raise
                log.info("JetStream of a new account not enabled on every node yet; retrying in %.1f s", delay)
                await anyio.sleep(delay)
                delay = min(delay * 2, 1.0)
