"""Tenants: the registry (JetStream KV), the NATS authorization it generates, and the `disco up --auth` hook.

``disco up --auth`` keeps an admin credentials file and the generated ``authz.conf`` in its data directory; the
server includes that file, and a loop follows the registry: every ``disco tenant add/rm/creds`` re-renders it and
reloads the server (SIGHUP), so running tenants keep their connections. On an existing cluster, render the file
with ``disco tenant render-authz``, include it on every node and reload them (``nats-server --signal reload``).
"""

from __future__ import annotations

from pathlib import Path

from bus.connection import read_json_creds
from services.tenants.creds import write_creds
from services.tenants.hook import EmbeddedAuth, embedded_auth, reload_on_change
from services.tenants.registry import TenantRecord, TenantRegistry

__all__ = [
    "EmbeddedAuth", "TenantRecord", "TenantRegistry", "admin_creds_of", "embedded_auth", "reload_on_change",
    "write_creds",
]


def admin_creds_of(path: Path) -> dict[str, str] | None:
    return read_json_creds(path)
