"""The ``disco up --auth`` hook: operator mode for the embedded server, and how the aggregator connects.

An ``--auth`` data directory holds ``auth/``: the keys file (``disco-keys.json``), the administrator's and the
aggregator's ``.creds`` files (DISCO users) and the resolver's directory of pushed account JWTs (``auth/jwt``).
The directory remembers its mode: :func:`isolation_of` tells ``disco up`` that it must not be opened without
isolation.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bus.connection import Connection
from bus.errors import BadRequest
from bus.subjects import DEFAULT_CHANGES_STREAM
from services.tenants.admin import TenantAdmin
from services.tenants.creds import write_secret
from services.tenants.operator import KEYS_FILE, OperatorKeys
from services.tenants.registry import bucket_name
from services.tenants.relay import ChangeRelay

__all__ = ["AUTH_DIR", "EmbeddedAuth", "embedded_auth", "init_operator", "isolation_of"]

log = logging.getLogger("disco.tenants")

AUTH_DIR = "auth"
ADMIN_CREDS = "admin.creds"
AGGREGATOR_CREDS = "aggregator.creds"
#: files of the one-account model (disco before operator mode)
LEGACY_FILES = ("authz.conf", "admin.hash", "admin.creds.json")


@dataclass(frozen=True, slots=True)
class EmbeddedAuth:
    """What the ``--auth`` hook returns.

    ``server_config``: appended to the nats-server configuration. ``connect_options``: keyword arguments of
    :func:`bus.connect` for the aggregator (``creds=...``). ``notes``: lines printed after the "disco is up" line
    (where the admin credentials are).
    """

    server_config: str
    connect_options: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    #: run beside the aggregator for as long as ``disco up`` runs
    background: Callable[[Connection], Coroutine[Any, Any, None]] | None = None


def isolation_of(data_dir: Path) -> Literal["none", "operator", "legacy"]:
    """How a data directory was set up: "operator" (``disco up --auth``), "legacy" (the one-account model of
    earlier versions) or "none" (open)."""
    if any((data_dir / name).exists() for name in LEGACY_FILES):
        return "legacy"  # also while a conversion is under way (the old files go once it is complete)
    if (data_dir / AUTH_DIR / KEYS_FILE).is_file():
        return "operator"
    return "none"


def init_operator(auth_dir: Path, prefix: str) -> OperatorKeys:
    """Create (once) the keys file and the admin and aggregator credentials in ``auth_dir``; return the keys.
    Refuse keys made for another prefix (every tenant account imports subjects of that prefix)."""
    keys_path = auth_dir / KEYS_FILE
    if keys_path.is_file():
        keys = OperatorKeys.load(keys_path)
        if keys.prefix != prefix:
            raise BadRequest(f"{auth_dir} was set up for prefix {keys.prefix!r}, not {prefix!r}")
    else:
        auth_dir.mkdir(parents=True, exist_ok=True)
        auth_dir.chmod(0o700)
        keys = OperatorKeys.generate(prefix)
        keys.save(keys_path)
    if not (auth_dir / ADMIN_CREDS).is_file():
        write_secret(auth_dir / ADMIN_CREDS, keys.user_creds("disco", "disco-admin"))
    if not (auth_dir / AGGREGATOR_CREDS).is_file():
        # the aggregators follow the registry but may not write it
        bucket = bucket_name(prefix)
        deny = [f"$KV.{bucket}.>", f"$JS.API.STREAM.MSG.DELETE.KV_{bucket}",
                *(f"$JS.API.STREAM.{op}.KV_{bucket}" for op in ("CREATE", "UPDATE", "DELETE", "PURGE"))]
        write_secret(auth_dir / AGGREGATOR_CREDS, keys.user_creds("disco", "disco-aggregator", pub_deny=deny))
    return keys


def legacy_message(data_dir: Path) -> str:
    return (
        f"data dir {data_dir} was set up by an older disco with one NATS account for every tenant (authz.conf), "
        f"which does not isolate tenants: convert it with `disco tenant convert --data-dir {data_dir}` (disco "
        "stopped; every tenant is added again with its quotas and gets a new .creds file, the old passwords "
        "cannot be carried over), or move it aside and start on a new data dir"
    )


def embedded_auth(data_dir: Path, prefix: str) -> EmbeddedAuth:
    """The ``disco up --auth`` hook (see services/embedded.py): operator mode with the full account resolver, the
    aggregator connected as a DISCO user."""
    if isolation_of(data_dir) == "legacy":
        raise BadRequest(legacy_message(data_dir))
    auth_dir = data_dir / AUTH_DIR
    keys = init_operator(auth_dir, prefix)
    admin = auth_dir / ADMIN_CREDS
    config = keys.server_config(auth_dir / "jwt")
    write_secret(auth_dir / "operator.conf", config)  # what an existing cluster would include
    stream_prefix = os.environ.get("DISCO_STREAM") or DEFAULT_CHANGES_STREAM  # the aggregator's setting

    async def relay(conn: Connection) -> None:
        """Beside the aggregator: re-issue the tenant accounts an older disco made (with the administrator's
        credentials: the aggregator's may not write the registry), then restore change events a tenant's stream
        missed (services/tenants/relay.py)."""
        try:
            admin_conn = await conn.clone("disco-admin-refresh", creds=str(admin))
            try:
                async with TenantAdmin(admin_conn, keys, stream_prefix=stream_prefix) as refreshing:
                    await refreshing.refresh_accounts()
            finally:
                await admin_conn.close()
        except Exception as exc:
            log.warning("tenant accounts not refreshed: %s", exc)
        async with TenantAdmin(conn, keys, stream_prefix=stream_prefix) as tenant_admin:
            await ChangeRelay(tenant_admin).run()

    return EmbeddedAuth(
        server_config=config,
        connect_options={"creds": str(auth_dir / AGGREGATOR_CREDS)},
        notes=(f"tenants are isolated (one NATS account each); admin credentials: {admin} "
               f"(disco tenant add NAME --creds {admin})",),
        background=relay,
    )
