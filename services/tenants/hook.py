"""The ``disco up --auth`` hook: what the embedded server adds to its configuration, how the aggregator connects,
and the loop that keeps the server's authorization in step with the registry."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from bus.connection import Connection
from services.tenants.authz import ADMIN_USER, render_authz
from services.tenants.creds import write_creds
from services.tenants.registry import TenantRegistry, hash_password, new_password

__all__ = ["EmbeddedAuth", "embedded_auth", "reload_on_change"]

log = logging.getLogger("disco.tenants")


@dataclass(frozen=True, slots=True)
class EmbeddedAuth:
    """What the ``--auth`` hook returns.

    ``server_config``: appended to the nats-server configuration (accounts, users, permissions, or an
    ``include`` of a file the tenant commands rewrite before a reload). ``connect_options``: keyword arguments of
    :func:`bus.connect` for the aggregator (``creds=...``, or ``user=...``, ``password=...``). ``notes``: lines
    printed after the "disco is up" line (e.g. where tenant credentials are kept).
    """

    server_config: str
    connect_options: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    #: run beside the aggregator for as long as ``disco up`` runs (e.g. reload the authorization on changes)
    background: Callable[[Connection], Coroutine[Any, Any, None]] | None = None


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


