"""Tenants: the registry (JetStream KV), the NATS authorization it generates, and the `disco up --auth` hook.

``disco up --auth`` keeps an admin credentials file and the generated ``authz.conf`` in its data directory; the
server includes that file, and a loop follows the registry: every ``disco tenant add/rm/creds`` re-renders it and
reloads the server (SIGHUP), so running tenants keep their connections. On an existing cluster, render the file
with ``disco tenant render-authz``, include it on every node and reload them (``nats-server --signal reload``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

import anyio

from bus.connection import Connection, read_json_creds
from services.tenants.authz import ADMIN_USER, render_authz
from services.tenants.registry import TenantRecord, TenantRegistry, hash_password, new_password

__all__ = ["TenantRecord", "TenantRegistry", "embedded_auth", "follow_limits", "reload_on_change", "write_creds"]

log = logging.getLogger("disco.tenants")


def write_creds(path: Path, data: dict[str, Any]) -> None:
    """A credentials file only its owner can read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
        f.write("\n")


def _admin(data_dir: Path) -> tuple[Path, str]:
    """The admin credentials file (created once) and the bcrypt hash of its password (kept beside it)."""
    creds = data_dir / "admin.creds.json"
    hashed = data_dir / "admin.hash"
    if not creds.is_file() or not hashed.is_file():
        password = new_password()
        write_creds(creds, {"user": ADMIN_USER, "password": password})
        hashed.write_text(hash_password(password))
    return creds, hashed.read_text().strip()


def embedded_auth(data_dir: Path, prefix: str) -> Any:
    """The ``disco up --auth`` hook (see services/embedded.py): include the generated authorization, connect the
    aggregator as the admin user, and keep the authorization in step with the registry."""
    from services.embedded import EmbeddedAuth

    creds, admin_hash = _admin(data_dir)
    authz = data_dir / "authz.conf"
    if not authz.is_file():
        authz.write_text(render_authz([], admin_hash, prefix))
    pid_file = data_dir / "nats-server.pid"

    async def background(conn: Connection) -> None:
        await reload_on_change(conn, authz, admin_hash, prefix, pid_file)

    return EmbeddedAuth(
        server_config='include "authz.conf"',  # relative to the server config, which is in data_dir
        connect_options={"creds": str(creds)},
        notes=(f"tenants are isolated; admin credentials: {creds} (disco tenant add NAME --creds {creds})",),
        background=background,
    )


def _write_if_changed(path: Path, text: str) -> bool:
    if path.is_file() and path.read_text() == text:
        return False
    path.write_text(text)
    return True


def _reload(pid_file: Path) -> None:
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as exc:
        log.warning("could not reload nats-server (pid file %s): %s", pid_file, exc)


async def reload_on_change(conn: Connection, authz: Path, admin_hash: str, prefix: str, pid_file: Path) -> None:
    """Follow the registry; on every change re-render ``authz`` and reload the server (if the text changed)."""
    registry = TenantRegistry(conn.js, prefix)
    async for tenants in registry.follow():
        text = render_authz(tenants.values(), admin_hash, prefix)
        if await anyio.to_thread.run_sync(_write_if_changed, authz, text):
            await anyio.to_thread.run_sync(_reload, pid_file)
        log.info("authorization reloaded: %d tenants", len(tenants))


async def follow_limits(conn: Connection, prefix: str, set_limits: Any) -> None:
    """Feed every tenant's quotas to an aggregator (``set_limits(tenant, TenantLimits | None)``), live."""
    from services.aggregator.admission import TenantLimits

    registry = TenantRegistry(conn.js, prefix)
    known: set[str] = set()
    while True:
        try:
            await registry.open(create=False)  # no registry, no tenant limits: look again later
            async for tenants in registry.follow():
                for name, rec in tenants.items():
                    set_limits(name, TenantLimits(max_instances=rec.max_instances, max_services=rec.max_services,
                                                  announce_rate=rec.announce_rate))
                for gone in known - set(tenants):
                    set_limits(gone, None)
                known = set(tenants)
        except Exception as exc:
            log.debug("tenant registry not followed (%s); retrying", exc)
        await anyio.sleep(2.0)


def admin_creds_of(path: Path) -> dict[str, str] | None:
    return read_json_creds(path)
