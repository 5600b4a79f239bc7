"""Converting a data dir of the one-account model (``authz.conf``, bcrypt passwords) to operator mode, offline.

The old registry is read from the old server's JetStream (started alone on the data dir, without authorization,
on a free loopback port); the operator keys are created; every tenant is added again, with its quotas, through an
operator-mode server on the same data dir; each tenant's new ``.creds`` file is written into
``auth/converted/`` (0600): the old passwords cannot become nkeys, so every tenant must be handed its new file.
The old files are renamed ``*.converted`` so the data dir is no longer taken for an old one. The old live view is
not carried over (it lives in the old global account): services re-announce by themselves within a heartbeat.
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import nats.js.errors
from pydantic import ValidationError

from bus.connection import connect
from bus.errors import BadRequest
from bus.streams import kv_keys
from services.natsserver import NatsServer
from services.tenants.admin import TenantAdmin
from services.tenants.creds import write_creds
from services.tenants.hook import ADMIN_CREDS, AUTH_DIR, LEGACY_FILES, init_operator, isolation_of
from services.tenants.registry import Quota, bucket_name

__all__ = ["convert_legacy"]


async def _old_tenants(data_dir: Path, prefix: str) -> dict[str, Quota]:
    server = NatsServer(data_dir, name="disco-convert")  # the old store, no authorization, a free port
    await anyio.to_thread.run_sync(server.start)
    try:
        conn = await connect(server.url, prefix=prefix, name="disco-convert")
        try:
            try:
                kv = await conn.js.key_value(bucket_name(prefix))
            except nats.js.errors.BucketNotFoundError:
                return {}
            keys = await kv_keys(conn.js, bucket_name(prefix))
            out: dict[str, Quota] = {}
            for key in sorted(keys):
                try:
                    entry = await kv.get(key)
                    data = json.loads(entry.value or b"")
                    fields = {k: data.get(k) for k in ("max_instances", "max_services", "announce_rate")}
                    out[key] = Quota(**fields)
                except (ValueError, ValidationError, AttributeError, nats.js.errors.KeyNotFoundError):
                    continue  # a deleted or malformed old record: skipped (reported by the caller as missing)
            return out
        finally:
            await conn.close()
    finally:
        await anyio.to_thread.run_sync(server.stop)


async def convert_legacy(data_dir: Path, prefix: str) -> tuple[list[str], Path]:
    """Convert ``data_dir``; return the tenants added again and the directory of their new ``.creds`` files."""
    data_dir = data_dir.resolve()  # noqa: ASYNC240 - an offline command, once
    if isolation_of(data_dir) != "legacy":
        raise BadRequest(f"{data_dir} is not a data dir of the one-account model (no authz.conf or admin.hash)")
    tenants = await _old_tenants(data_dir, prefix)
    auth_dir = data_dir / AUTH_DIR
    keys = init_operator(auth_dir, prefix)
    out_dir = auth_dir / "converted"
    server = NatsServer(data_dir, name="disco-convert", extra_config=keys.server_config(auth_dir / "jwt"))
    await anyio.to_thread.run_sync(server.start)
    try:
        conn = await connect(server.url, prefix=prefix, creds=auth_dir / ADMIN_CREDS, name="disco-convert")
        try:
            async with TenantAdmin(conn, keys) as admin:
                for name, quota in tenants.items():
                    if await admin.registry.get(name) is None:  # a re-run after an interruption
                        _, text = await admin.add(name, quota)
                        write_creds(out_dir / f"{name}.creds", text)
        finally:
            await conn.close()
    finally:
        await anyio.to_thread.run_sync(server.stop)
    for old in LEGACY_FILES:
        path = data_dir / old
        if path.exists():
            path.rename(path.with_name(path.name + ".converted"))
    return sorted(tenants), out_dir
