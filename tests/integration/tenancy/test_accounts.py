"""Operator mode end to end: a tenant announces, resolves, watches and keeps a durable change stream in its own
account; removal and rotation cut its open connections; quotas are the server's; the registry survives bad
records."""

from __future__ import annotations

import asyncio
import stat
import time
from typing import Any

import anyio
import nats
import nats.errors
import nats.js.errors
import pytest
from nats.js import api

from bus.announce import announce
from bus.client import resolve
from bus.connection import connect
from bus.deadletters import dead_letters as stored_dead_letters
from bus.errors import BadRequest, ConnectionFailed, PermissionDenied
from bus.models import ChangeEvent
from bus.streams import DLQ_MAX_BYTES
from bus.watch import watch
from bus.workers import Delivery, worker
from services.tenants import TenantRegistry, accounts
from services.tenants.hook import AUTH_DIR
from services.tenants.registry import ACCOUNT_JWT_FORMAT
from tests.conftest import eventually
from tests.helpers import announce_raw, instance

pytestmark = pytest.mark.integration


async def test_a_tenant_announces_resolves_watches_and_consumes_in_its_own_account(operator_system) -> None:
    sys_ = operator_system
    acme = await sys_.tenant("acme")
    assert acme.tenant == "acme"  # taken from the .creds file
    got: list[ChangeEvent] = []

    async def handler(event: ChangeEvent, delivery: Delivery) -> None:
        got.append(event)

    async with watch(acme, "web") as w, worker(acme, "sync", handler, stream_prefix=f"{sys_.prefix}_changes"):
        async with announce(acme, "web", address="10.0.0.1", port=80) as reg:
            assert [i.id for i in (await resolve(acme, "web")).instances] == [reg.id]
            with anyio.fail_after(10):
                async for event in w:
                    assert event.instance.id == reg.id and event.type == "added"
                    break
        await eventually(lambda: [e.type for e in got] == ["added", "removed"], timeout=10)
    # the stream the worker consumed lives in acme's account, capped by the server's quota
    info = await acme.js.stream_info(f"{sys_.prefix}_changes_acme")
    assert info.config.max_bytes and info.config.max_bytes > 0 and info.config.max_consumers == 64
    assert info.state.messages == 2


async def test_dead_letters_are_kept_in_the_tenants_own_account(operator_system) -> None:
    """A worker's dead letters go to a bounded stream of the tenant's account (created with the change stream),
    which the tenant lists with its own credentials and another tenant cannot see."""
    sys_ = operator_system
    acme = await sys_.tenant("acme")
    beta = await sys_.tenant("beta")
    stream_prefix = f"{sys_.prefix}_changes"

    async def failing(event: ChangeEvent, delivery: Delivery) -> None:
        raise RuntimeError("downstream is down")

    async with (
        worker(acme, "fragile", failing, stream_prefix=stream_prefix, max_attempts=1, retry_delay=0.05),
        announce(acme, "web", address="10.0.0.1", port=80),
    ):
        letters = await eventually(
            lambda: stored_dead_letters(acme, group="fragile", stream_prefix=stream_prefix), timeout=15)
    assert letters[0].event is not None and letters[0].event.type == "added" and letters[0].group == "fragile"
    info = await acme.js.stream_info(f"{stream_prefix}_acme_DLQ")
    assert info.config.max_bytes and info.config.max_bytes <= DLQ_MAX_BYTES and info.config.max_age
    with pytest.raises(nats.js.errors.NotFoundError):  # beta's JetStream is its own: acme's stream is not there
        await beta.js.stream_info(f"{stream_prefix}_acme_DLQ")


async def test_a_request_for_another_tenant_is_refused_locally_and_by_the_server(operator_system) -> None:
    acme = await operator_system.tenant("acme")
    await operator_system.add("globex")
    with pytest.raises(PermissionDenied, match="credentials are for tenant 'acme'"):
        await resolve(acme, "web", tenant="globex")
    # bypassing the library: no import, no responder in acme's account
    with pytest.raises(nats.errors.NoRespondersError):
        await acme.nc.request(f"{operator_system.prefix}.globex.resolve.web", b"", timeout=2)


async def _closed_within(conn: Any, action: Any, limit: float) -> float:
    closed = asyncio.Event()

    async def on_disconnect() -> None:
        closed.set()

    conn.on_disconnect(on_disconnect)
    started = time.monotonic()
    await action()
    with anyio.fail_after(10):
        await closed.wait()
    took = time.monotonic() - started
    assert took < limit, f"connection closed after {took:.2f} s"
    return took


async def test_removal_closes_open_connections_at_once_and_refuses_new_ones(operator_system) -> None:
    sys_ = operator_system
    creds = await sys_.add("initech")
    initech = await sys_.connect(creds, max_reconnect_attempts=0)
    bystander = await sys_.tenant("bystander")
    await _closed_within(initech, lambda: sys_.admin.remove("initech"), 1.0)
    with pytest.raises(ConnectionFailed):
        await connect(sys_.server.url, prefix=sys_.prefix, creds=creds, connect_timeout=3)
    assert await sys_.admin.registry.get("initech") is None
    assert (await resolve(bystander, "web")).instances == ()  # the others never noticed
    assert bystander.nc.is_connected and bystander.nc.stats["reconnects"] == 0


async def test_rotation_revokes_the_old_credentials_open_connections(operator_system) -> None:
    sys_ = operator_system
    old = await sys_.add("acme")
    conn = await sys_.connect(old, max_reconnect_attempts=0)
    new: list[Any] = []

    async def rotate() -> None:
        new.append(await sys_.rotate("acme"))

    await _closed_within(conn, rotate, 1.0)
    with pytest.raises(ConnectionFailed, match="authorization"):
        await connect(sys_.server.url, prefix=sys_.prefix, creds=old)
    fresh = await sys_.connect(new[0])
    assert (await resolve(fresh, "web")).instances == ()


async def test_server_quotas_connections_consumers_and_stream_bytes(operator_system) -> None:
    sys_ = operator_system
    creds = await sys_.add("tiny", max_connections=2, max_consumers=2, max_stream_bytes=4096)
    one = await sys_.connect(creds)
    await sys_.connect(creds)
    with pytest.raises(ConnectionFailed):
        await connect(sys_.server.url, prefix=sys_.prefix, creds=creds, connect_timeout=3)
    stream = f"{sys_.prefix}_changes_tiny"
    for i in range(2):
        await one.js.add_consumer(stream, api.ConsumerConfig(durable_name=f"c{i}", ack_policy=api.AckPolicy.EXPLICIT))
    with pytest.raises(nats.js.errors.BadRequestError):
        await one.js.add_consumer(stream, api.ConsumerConfig(durable_name="c3", ack_policy=api.AckPolicy.EXPLICIT))
    with pytest.raises(nats.js.errors.BadRequestError, match="max bytes"):
        await one.js.add_stream(api.StreamConfig(name="mine", subjects=["mine.>"]))  # no byte cap
    with pytest.raises(nats.js.errors.BadRequestError):
        await one.js.add_stream(api.StreamConfig(name="big", subjects=["big.>"], max_bytes=1 << 30))


async def test_a_malformed_registry_record_is_reported_and_skipped(operator_system) -> None:
    sys_ = operator_system
    acme = await sys_.tenant("acme", max_instances=1)
    kv = await sys_.admin.registry.open()
    await kv.put("gamma", b"")
    await kv.put("delta", b'{"name": "delta"}')
    registry = TenantRegistry(sys_.admin_conn.js, sys_.prefix)
    assert [r.name for r in await registry.list()] == ["acme"]
    assert set(registry.problems) == {"gamma", "delta"} and "empty" in registry.problems["gamma"]
    with pytest.raises(BadRequest, match="malformed"):
        await sys_.admin.rotate("delta")
    assert (await kv.get("delta")).value  # never deleted...
    with pytest.raises(BadRequest, match="malformed"):
        await sys_.admin.remove("delta")
    await sys_.admin.remove("delta", force=True)  # ...unless the operator insists
    with pytest.raises(nats.js.errors.KeyNotFoundError):  # (not kv.keys(): nats-py's can miss every key when they
        await kv.get("delta")                              # arrive before its consumer info does, NoKeysError)
    # the aggregator still follows acme's quota
    await eventually(lambda: sys_.agg.admission.limits("acme").max_instances == 1, timeout=10)
    await kv.put("acme", b"garbage")  # a bad write keeps the last valid quota
    async with announce(acme, "web", address="10.0.0.1", port=80):
        assert len((await resolve(acme, "web")).instances) == 1
    assert sys_.agg.admission.limits("acme").max_instances == 1


async def test_no_credentials_no_connection_and_secrets_are_0600(operator_system) -> None:
    sys_ = operator_system
    with pytest.raises(ConnectionFailed, match="authorization"):
        await connect(sys_.server.url, prefix=sys_.prefix, connect_timeout=3)
    creds = await sys_.add("acme")
    for path in [creds, *(sys_.data / AUTH_DIR).glob("*")]:
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((sys_.data / AUTH_DIR).stat().st_mode) == 0o700


async def test_the_relay_restores_events_a_tenants_stream_missed(operator_system) -> None:
    from services.tenants.relay import ChangeRelay

    sys_ = operator_system
    acme = await sys_.tenant("acme")
    stream = f"{sys_.prefix}_changes_acme"
    # as in `disco up --auth`: the relay works with the aggregator's (restricted) DISCO user and the operator keys
    from services.tenants import TenantAdmin

    relay = ChangeRelay(TenantAdmin(sys_.agg.conn, sys_.keys, stream_prefix=f"{sys_.prefix}_changes"))

    started = time.time()
    async with announce(acme, "web", address="10.0.0.1", port=80):
        await eventually(lambda: _messages(acme, stream, 1), timeout=10)
    await eventually(lambda: _messages(acme, stream, 2), timeout=10)
    assert await relay.sweep() == 0  # nothing missing: nothing published
    # the tenant's stream goes away; events meanwhile reach only disco's stream
    await acme.js.delete_stream(stream)
    async with announce(acme, "api", address="10.0.0.2", port=81):
        pass
    await eventually(lambda: _messages(sys_.admin_conn, stream, 4), timeout=10)
    assert await relay.sweep() == 0  # the tenant's stream is not there: nothing to do yet, tried again later
    # re-creates the stream (empty: the deletion took the older events with it); the old user is revoked
    acme = await sys_.connect(await sys_.rotate("acme"))
    assert await relay.sweep() == 4  # every event of the window, in disco's order
    info = await acme.js.stream_info(stream)
    assert info.state.messages == 4
    msgs = [await acme.js.get_msg(stream, seq) for seq in range(info.state.first_seq, info.state.last_seq + 1)]
    p = sys_.prefix
    assert [m.subject for m in msgs] == [f"{p}.acme.changes.web"] * 2 + [f"{p}.acme.changes.api"] * 2
    ids = [int(m.headers["Nats-Msg-Id"]) for m in msgs if m.headers]
    assert len(ids) == 4 and ids == sorted(ids)
    # idempotent: a second pass, or a repair over the whole window, publishes nothing
    assert await relay.sweep() == 0 and await relay.repair((await sys_.admin.registry.get("acme")), started) == 0
    assert relay.restored == {"acme": 4}
    assert sys_.agg.conn.denied == {}  # the aggregator's user was enough: nothing refused


async def _messages(conn: Any, stream: str, n: int) -> bool:
    return bool((await conn.js.stream_info(stream)).state.messages >= n)


async def test_add_twice_unknown_tenants_and_re_adding_a_removed_one(operator_system) -> None:
    from bus.errors import NotFound

    sys_ = operator_system
    first = sys_.data.parent / "acme-first.creds"
    (await sys_.add("acme")).rename(first)
    with pytest.raises(BadRequest, match="exists already"):
        await sys_.admin.add("acme")
    for op in (sys_.admin.rotate, sys_.admin.remove):
        with pytest.raises(NotFound, match="no tenant 'ghost'"):
            await op("ghost")
    old_account = (await sys_.admin.registry.get("acme")).account
    await sys_.admin.remove("acme")
    again = await sys_.connect(await sys_.add("acme"))  # a new account under the same name
    assert (await sys_.admin.registry.get("acme")).account != old_account
    async with announce(again, "web", address="10.0.0.1", port=80) as reg:
        assert [i.id for i in (await resolve(again, "web")).instances] == [reg.id]
    with pytest.raises(ConnectionFailed):  # the first account's credentials died with it
        await connect(sys_.server.url, prefix=sys_.prefix, creds=first, connect_timeout=3)


async def test_a_failed_add_is_reported_and_leaves_no_record(operator_system) -> None:
    import dataclasses

    from services.tenants import TenantAdmin
    from services.tenants.jwt import new_key

    sys_ = operator_system
    # account JWTs signed by a key the operator does not list: the account never works, the add fails
    rogue = TenantAdmin(sys_.admin_conn, dataclasses.replace(sys_.keys, signing=new_key("O")))
    try:
        with pytest.raises((BadRequest, ConnectionFailed)):
            await rogue.add("mallory")
    finally:
        await rogue.close()
    assert await sys_.admin.registry.get("mallory") is None
    await sys_.add("mallory")  # the name is free again


async def test_subscription_and_payload_quotas_are_the_servers(operator_system) -> None:
    """Past its subscriptions or payload quota a connection is closed (nats-server's -ERR, which nats-py treats as
    fatal): a tenant cannot hold more state in the server than its quota, and others are not affected."""
    sys_ = operator_system
    other = await sys_.tenant("other")
    creds = await sys_.add("tiny", max_subscriptions=3, max_payload=2048)

    async def cb(msg: Any) -> None:
        pass

    subs = await sys_.connect(creds, max_reconnect_attempts=0)
    for i in range(5):
        await subs.nc.subscribe(f"x.{i}", cb=cb)
    await eventually(lambda: subs.nc.is_closed, timeout=10)
    big = await sys_.connect(creds, max_reconnect_attempts=0)
    await big.nc.publish("x.small", b"a" * 1000)
    await big.nc.flush()
    assert big.nc.is_connected
    await big.nc.publish("x.big", b"a" * 4000)
    await eventually(lambda: big.nc.is_closed or not big.nc.is_connected, timeout=10)
    assert other.nc.is_connected and (await resolve(other, "web")).instances == ()


async def test_every_listing_holds_every_tenant(operator_system) -> None:
    """A listing is read from the bucket's stream state, not from a KV watcher that may signal "no more keys"
    before counting what the server delivered (seen as `disco tenant ls` answering "no tenants" after a start)."""
    sys_ = operator_system
    for name in ("t1", "t2", "t3"):
        await sys_.tenant(name)
    await sys_.tenant("gone")
    await sys_.admin.remove("gone")
    for _ in range(100):  # a new registry (a new read) each time
        registry = TenantRegistry(sys_.admin_conn.js, sys_.prefix)
        assert [r.name for r in await registry.list()] == ["t1", "t2", "t3"]


async def test_an_account_from_before_the_live_import_is_reissued_and_its_watchers_get_changes(
        operator_system, monkeypatch) -> None:
    """A tenant added by an older disco has an account JWT without the import of its live subject: its watchers
    would hear nothing there. ``refresh_accounts`` (run by ``disco up --auth`` and ``disco tenant relay``) re-issues
    it once, and the watcher's existing subscription hears the next change."""
    sys_ = operator_system
    monkeypatch.setattr(accounts, "STREAM_KINDS", ("changes", "ctl"))  # what the older disco imported
    old = await sys_.tenant("old")
    monkeypatch.undo()
    record, revision = await sys_.admin.registry.get_entry("old")
    await sys_.admin.registry.update(record.model_copy(update={"jwt_format": 0}), revision)
    live: list[Any] = []
    changes: list[Any] = []

    async def on_live(msg: Any) -> None:
        live.append(msg)

    async def on_change(msg: Any) -> None:
        changes.append(msg)

    await old.nc.subscribe(old.subjects.live("old"), cb=on_live)
    await old.nc.subscribe(old.subjects.changes("old"), cb=on_change)
    await old.nc.flush()
    await announce_raw(old, "web", instance("o-1"), tenant="old")
    await eventually(lambda: changes, timeout=10)  # its event, published after the stored write's republish
    await old.nc.flush()
    assert live == []  # no import: the republish never reached the account
    assert await sys_.admin.refresh_accounts() == ["old"]
    assert (await sys_.admin.registry.get("old")).jwt_format == ACCOUNT_JWT_FORMAT
    assert await sys_.admin.refresh_accounts() == []  # once
    with anyio.fail_after(10):
        while not live:  # the import takes effect at once for the open subscription (sent until heard)
            ack = await announce_raw(old, "web", instance("o-2", seq=len(changes) + 1), tenant="old")
            await anyio.sleep(0.1)
    assert live[-1].headers["Nats-Sequence"] == str(ack.revision)
    async with watch(old, "web") as w:
        await announce_raw(old, "web", instance("o-3"), tenant="old")
        with anyio.fail_after(10):
            async for ev in w:  # (a re-announce of o-2 above may still be on its way)
                if ev.instance.id == "o-3":
                    break
        assert ev.type == "added"
