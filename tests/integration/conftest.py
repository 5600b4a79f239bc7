"""An operator-mode server (what ``disco up --auth`` runs): operator, SYS and DISCO accounts, the full resolver, an
aggregator connected as a DISCO user, and a :class:`TenantAdmin` to add, re-key and remove tenants."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

from bus.connection import Connection, connect
from services.aggregator import Aggregator, AggregatorSettings
from services.natsserver import NatsServer
from services.tenants import OperatorKeys, Quota, TenantAdmin, embedded_auth, write_creds
from services.tenants.hook import ADMIN_CREDS, AUTH_DIR
from services.tenants.operator import KEYS_FILE


@dataclass
class System:
    server: NatsServer
    prefix: str
    data: Path
    admin_conn: Connection
    admin: TenantAdmin
    agg: Aggregator
    opened: list[Connection] = field(default_factory=list)

    @property
    def admin_creds(self) -> Path:
        return self.data / AUTH_DIR / ADMIN_CREDS

    @property
    def keys(self) -> OperatorKeys:
        return OperatorKeys.load(self.data / AUTH_DIR / KEYS_FILE)

    async def add(self, name: str, **quota: Any) -> Path:
        """Add tenant ``name``; return the path of its .creds file."""
        _, text = await self.admin.add(name, Quota(**quota))
        path = self.data.parent / f"{name}.creds"
        write_creds(path, text)
        return path

    async def rotate(self, name: str) -> Path:
        _, text = await self.admin.rotate(name)
        path = self.data.parent / f"{name}.rotated.creds"
        write_creds(path, text)
        return path

    async def connect(self, creds: Path, **kw: Any) -> Connection:
        conn = await connect(self.server.url, prefix=self.prefix, creds=creds, **kw)
        self.opened.append(conn)
        return conn

    async def tenant(self, name: str, **quota: Any) -> Connection:
        return await self.connect(await self.add(name, **quota))


@pytest.fixture
async def operator_system(tmp_path: Path, prefix: str) -> Any:
    data = tmp_path / "data"
    data.mkdir()
    auth = embedded_auth(data, prefix)
    server = NatsServer(data, name="operator", extra_config=auth.server_config)
    server.start()
    admin_conn = await connect(server.url, prefix=prefix, creds=data / AUTH_DIR / ADMIN_CREDS, name="admin")
    agg_conn = await connect(server.url, prefix=prefix, name="aggregator", **auth.connect_options)
    agg = Aggregator(agg_conn, AggregatorSettings(nats_url=server.url, prefix=prefix, bucket=f"{prefix}_view",
                                                  stream=f"{prefix}_changes", strict_replies=True))
    task = asyncio.create_task(agg.run())
    with anyio.fail_after(20):
        await agg.ready.wait()
    admin = TenantAdmin(admin_conn, OperatorKeys.load(data / AUTH_DIR / KEYS_FILE), stream_prefix=f"{prefix}_changes")
    system = System(server, prefix, data, admin_conn, admin, agg)
    yield system
    for c in system.opened:
        await c.close()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await admin.close()
    await agg_conn.close()
    await admin_conn.close()
    server.stop()
