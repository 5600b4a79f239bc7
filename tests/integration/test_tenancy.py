"""Tenant isolation enforced by the NATS server with the generated authorization (disco up --auth's setup):
a tenant reaches only its own subjects, cannot forge changes or ctl, cannot aim a responder's reply into another
tenant; tenants added while the server runs connect at once, removed ones are refused; quotas come live from the
registry."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import anyio
import pytest

from bus import codec
from bus.announce import announce
from bus.client import resolve, snapshot
from bus.connection import connect
from bus.errors import ConnectionFailed, PermissionDenied, QuotaExceeded
from bus.models import ChangeEvent, ResolveRequest
from services.aggregator import Aggregator, AggregatorSettings
from services.natsserver import NatsServer
from services.tenants import TenantRegistry, embedded_auth, write_creds
from tests.conftest import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
async def system(tmp_path: Path, prefix: str) -> Any:
    data = tmp_path / "data"
    data.mkdir()
    auth = embedded_auth(data, prefix)
    server = NatsServer(data, name="auth", extra_config=f'pid_file: "{(data / "nats-server.pid").as_posix()}"\n'
                        + auth.server_config)
    server.start()
    admin = await connect(server.url, prefix=prefix, **auth.connect_options)
    agg = Aggregator(admin, AggregatorSettings(nats_url=server.url, prefix=prefix, bucket=f"{prefix}_view",
                                               stream=f"{prefix}_changes", strict_replies=True))
    tasks = [asyncio.create_task(agg.run()), asyncio.create_task(auth.background(admin))]
    with anyio.fail_after(20):
        await agg.ready.wait()
    registry = TenantRegistry(admin.js, prefix)

    async def add(name: str, **limits: Any) -> Path:
        record, password = await registry.add(name, **limits)
        path = tmp_path / f"{name}.creds.json"
        write_creds(path, {"tenant": name, "user": record.user, "password": password})
        return path

    async def tenant(name: str, creds: Path) -> Any:
        conn = await eventually(lambda: _try_connect(server.url, prefix, creds), timeout=10)
        opened.append(conn)
        return conn

    opened: list[Any] = []
    yield {"server": server, "admin": admin, "agg": agg, "registry": registry, "add": add, "tenant": tenant,
           "prefix": prefix}
    for c in opened:
        await c.close()
    for t in tasks:
        t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await t
    await admin.close()
    server.stop()


async def _try_connect(url: str, prefix: str, creds: Path) -> Any:
    try:
        return await connect(url, prefix=prefix, creds=creds)
    except ConnectionFailed:
        return None


async def test_tenants_reach_only_their_own_subjects(system) -> None:
    prefix, admin = system["prefix"], system["admin"]
    acme = await system["tenant"]("acme", await system["add"]("acme"))
    globex = await system["tenant"]("globex", await system["add"]("globex"))
    seen_by_globex: list[bytes] = []
    spy: list[tuple[str, bytes]] = []

    async def on_globex(msg: Any) -> None:
        spy.append((msg.subject, msg.data))

    async def on_acme_changes(msg: Any) -> None:
        seen_by_globex.append(msg.data)

    await admin.nc.subscribe(f"{prefix}.globex.>", cb=on_globex)
    changes: list[ChangeEvent] = []

    async def on_changes(msg: Any) -> None:
        changes.append(codec.decode(msg.data, ChangeEvent))

    await admin.nc.subscribe(f"{prefix}.acme.changes.*", cb=on_changes)
    await admin.nc.subscribe(f"{prefix}.acme.ctl.>", cb=on_changes)
    await admin.nc.flush()

    async with announce(acme, "web", address="10.0.0.1", port=80) as reg:
        assert [i.id for i in (await resolve(acme, "web")).instances] == [reg.id]
        # another tenant's data: refused by the server, at once
        with pytest.raises(PermissionDenied):
            await resolve(acme, "web", tenant="globex")
        with pytest.raises(PermissionDenied):
            await snapshot(acme, tenant="globex")
        # subscribing to another tenant's changes is refused (reported through the error callback)
        await acme.nc.subscribe(f"{prefix}.globex.changes.*", cb=on_acme_changes)
        await eventually(lambda: f"{prefix}.globex.changes.*" in acme.denied, timeout=5)
        # forging change and ctl events, even in its own namespace, is refused
        await acme.nc.publish(f"{prefix}.acme.changes.web", b"forged")
        await acme.nc.publish(f"{prefix}.acme.ctl.web.x", b"forged")
        await acme.nc.publish(f"{prefix}.globex.announce.web", b"forged")
        # reply-subject injection: ask the aggregator to answer into globex's namespace
        await acme.nc.publish(f"{prefix}.acme.resolve.web", codec.encode(ResolveRequest()),
                              reply=f"{prefix}.globex.announce.injected")
        await acme.nc.flush()
        await eventually(lambda: system["agg"].metrics.get("reply_refused", "acme") >= 1, timeout=5)
        await eventually(lambda: f"{prefix}.acme.changes.web" in acme.denied, timeout=5)
        # globex's own traffic still works, and saw nothing of acme
        async with announce(globex, "web", address="10.1.0.1", port=80) as theirs:
            assert [i.id for i in (await resolve(globex, "web")).instances] == [theirs.id]
    await admin.nc.flush()
    assert seen_by_globex == []
    assert spy  # globex's own traffic was seen...
    assert not any(subject.endswith(".injected") for subject, _ in spy)  # ...but no reply aimed at it by acme
    assert not any(data == b"forged" for _, data in spy)  # ...and nothing acme published
    # only the aggregator's real events reached acme's change subject: added and removed of its instance
    assert [c.type.value for c in changes] == ["added", "removed"]


async def test_tenants_added_and_removed_while_running(system) -> None:
    initech_creds = await system["add"]("initech")
    initech = await system["tenant"]("initech", initech_creds)  # connects as soon as the reload is through
    assert (await resolve(initech, "anything")).instances == ()
    await initech.close()
    await system["registry"].remove("initech")

    async def refused() -> bool:
        try:
            c = await connect(system["server"].url, prefix=system["prefix"], creds=initech_creds)
        except ConnectionFailed as exc:
            return "authorization" in str(exc)
        await c.close()
        return False

    await eventually(refused, timeout=10)


async def test_quotas_come_live_from_the_registry(system) -> None:
    acme = await system["tenant"]("acme", await system["add"]("acme", max_instances=1))
    await eventually(lambda: system["agg"].admission.limits("acme").max_instances == 1, timeout=10)
    async with announce(acme, "web", address="10.0.0.1", port=80):
        with pytest.raises(QuotaExceeded):
            async with announce(acme, "web", address="10.0.0.2", port=80):
                pass
