"""Shared test helpers (import as ``from tests.helpers import ...``)."""

from __future__ import annotations

import os
import shutil

import pytest
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from bus.client import request
from bus.codec import encode
from bus.connection import Connection
from bus.models import AnnounceAck, Instance

__all__ = ["announce_raw", "dead_letters", "instance", "require_binary"]


def require_binary(name: str, package: str) -> str:
    """The path of a system binary a test needs (installed by ``scripts/system_deps.sh``).

    Missing: the test fails under ``CI=true`` (CI must have run the set-up script) and is skipped with the reason
    elsewhere.
    """
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.access(f"/usr/sbin/{name}", os.X_OK) else None)
    if path is not None:
        return path
    reason = f"{name} is not installed (Debian package {package}; run scripts/system_deps.sh as root)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def instance(iid: str, **fields: object) -> Instance:
    """An instance with test defaults (address 10.0.0.1, port 80, ttl 60 s, seq 1) unless ``fields`` say else."""
    data: dict[str, object] = {"address": "10.0.0.1", "port": 80, "ttl": 60.0, "seq": 1}
    data.update(fields)
    return Instance(id=iid, **data)  # type: ignore[arg-type]


async def announce_raw(
    conn: Connection, service: str, inst: Instance, *, tenant: str = "acme", timeout: float = 5.0
) -> AnnounceAck:
    """Announce one instance by a raw request, as any client could: no registration object, no heartbeats, no
    bye when the test ends. Returns the acknowledgement; a refusal raises its error (QuotaExceeded, ...)."""
    return await request(conn, conn.subjects.announce(tenant, service), encode(inst), AnnounceAck, timeout)


async def dead_letters(conn: Connection, group: str, *, tenant: str = "acme") -> tuple[list[Msg], Subscription]:
    """Collect the dead letters of ``group``: the list fills as they arrive; unsubscribe when done."""
    dead: list[Msg] = []

    async def on_dead(msg: Msg) -> None:
        dead.append(msg)

    sub = await conn.nc.subscribe(conn.subjects.dlq(tenant, group), cb=on_dead)
    return dead, sub
