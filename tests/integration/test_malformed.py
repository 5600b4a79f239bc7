"""Malformed input against a real aggregator: every bad request gets the error reply of its code, bad messages
without a reply subject are counted (``<prefix>._sys.stats``), and nothing changes the view or stops the
aggregator, not even a flood of thousands of garbage messages on random subjects."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

import anyio
import msgpack
import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from pydantic import BaseModel

from bus.client import resolve
from bus.codec import decode, decode_reply, encode
from bus.connection import Connection
from bus.errors import BadRequest, DiscoError, InvalidName
from bus.models import AnnounceAck, Bye, ErrorReply, Heartbeat, Instance, ResolveRequest, SnapshotRequest
from bus.subjects import Subjects
from services.aggregator import Aggregator
from tests.conftest import Running, eventually

pytestmark = pytest.mark.integration

GOOD: dict[str, Any] = {"v": 1, "id": "i-1", "address": "10.0.0.1", "port": 8080, "ttl": 300}
LIMIT = 64 * 1024


def packed(**changes: Any) -> bytes:
    obj = {**GOOD, **changes}
    data: bytes = msgpack.packb({k: v for k, v in obj.items() if v is not _DROP}, use_bin_type=True)
    return data


_DROP = object()

CASES = [
    # (id, kind, subject under the prefix, payload, expected code)
    ("garbage", "announce", "acme.announce.billing", b"\xc1\x00garbage", "bad_request"),
    ("empty", "announce", "acme.announce.billing", b"", "bad_request"),
    ("array", "announce", "acme.announce.billing", msgpack.packb([1, 2, 3]), "bad_request"),
    ("string", "announce", "acme.announce.billing", msgpack.packb("hello"), "bad_request"),
    ("nil", "announce", "acme.announce.billing", msgpack.packb(None), "bad_request"),
    ("missing-port", "announce", "acme.announce.billing", packed(port=_DROP), "bad_request"),
    ("missing-id", "announce", "acme.announce.billing", packed(id=_DROP), "bad_request"),
    ("port-as-string", "announce", "acme.announce.billing", packed(port="8080"), "bad_request"),
    ("port-as-float", "announce", "acme.announce.billing", packed(port=8080.0), "bad_request"),
    ("ttl-as-bool", "announce", "acme.announce.billing", packed(ttl=True), "bad_request"),
    ("address-as-bin", "announce", "acme.announce.billing", packed(address=b"10.0.0.1"), "bad_request"),
    ("unknown-field", "announce", "acme.announce.billing", packed(color="red"), "bad_request"),
    ("tenant-in-payload", "announce", "acme.announce.billing", packed(tenant="other"), "bad_request"),
    ("port-0", "announce", "acme.announce.billing", packed(port=0), "bad_request"),
    ("ttl-too-long", "announce", "acme.announce.billing", packed(ttl=301), "bad_request"),
    ("33-tags", "announce", "acme.announce.billing", packed(tags=[f"t{n}" for n in range(33)]), "bad_request"),
    ("65-meta", "announce", "acme.announce.billing", packed(meta={str(n): "" for n in range(65)}), "bad_request"),
    ("bad-status", "announce", "acme.announce.billing", packed(status="dead"), "bad_request"),
    ("bad-address", "announce", "acme.announce.billing", packed(address="not an address"), "bad_request"),
    ("truncated", "announce", "acme.announce.billing", packed()[:-3], "bad_request"),
    ("trailing-bytes", "announce", "acme.announce.billing", packed() + b"\x00", "bad_request"),
    ("deep-nesting", "announce", "acme.announce.billing", b"\x91" * 5000 + b"\x01", "bad_request"),
    ("at-the-limit", "announce", "acme.announce.billing", b"\xc1" * LIMIT, "bad_request"),
    ("over-the-limit", "announce", "acme.announce.billing", b"\xc1" * (LIMIT + 1), "payload_too_large"),
    ("big-map", "announce", "acme.announce.billing", packed(meta={"k": "x" * LIMIT}), "payload_too_large"),
    ("v2", "announce", "acme.announce.billing", packed(v=2), "unsupported_version"),
    ("no-v", "announce", "acme.announce.billing", packed(v=_DROP), "unsupported_version"),
    ("v-as-string", "announce", "acme.announce.billing", packed(v="1"), "unsupported_version"),
    ("v-as-bool", "announce", "acme.announce.billing", packed(v=True), "unsupported_version"),
    pytest.param("v-as-map", "announce", "acme.announce.billing", packed(v={"1": 1}), "unsupported_version"),
    pytest.param("invalid-id", "announce", "acme.announce.billing", packed(id="not valid!"), "invalid_name"),
    ("upper-tenant", "announce", "UPPER.announce.billing", packed(), "invalid_name"),
    ("upper-service", "announce", "acme.announce.Billing", packed(), "invalid_name"),
    ("underscore-service", "announce", "acme.announce.bill_ing", packed(), "invalid_name"),
    ("dash-tenant", "announce", "-acme.announce.billing", packed(), "invalid_name"),
    ("long-service", "announce", "acme.announce." + "s" * 64, packed(), "invalid_name"),
    # resolve
    ("garbage", "resolve", "acme.resolve.billing", b"\xc1", "bad_request"),
    ("array", "resolve", "acme.resolve.billing", msgpack.packb(["eu"]), "bad_request"),
    ("tags-as-string", "resolve", "acme.resolve.billing", msgpack.packb({"v": 1, "tags": "eu"}), "bad_request"),
    ("unknown-filter", "resolve", "acme.resolve.billing", msgpack.packb({"v": 1, "region": "eu"}), "bad_request"),
    ("bad-status", "resolve", "acme.resolve.billing", msgpack.packb({"v": 1, "status": ["up"]}), "bad_request"),
    ("limit-0", "resolve", "acme.resolve.billing", msgpack.packb({"v": 1, "limit": 0}), "bad_request"),
    ("limit-as-float", "resolve", "acme.resolve.billing", msgpack.packb({"v": 1, "limit": 2.0}), "bad_request"),
    ("33-tags", "resolve", "acme.resolve.billing", msgpack.packb({"v": 1, "tags": ["t"] * 33}), "bad_request"),
    ("v9", "resolve", "acme.resolve.billing", msgpack.packb({"v": 9}), "unsupported_version"),
    ("no-v", "resolve", "acme.resolve.billing", msgpack.packb({"tags": []}), "unsupported_version"),
    ("too-large", "resolve", "acme.resolve.billing", b"\x80" * (LIMIT + 1), "payload_too_large"),
    ("upper-service", "resolve", "acme.resolve.BILLING", b"", "invalid_name"),
    ("upper-tenant", "resolve", "ACME.resolve.billing", b"", "invalid_name"),
    # snapshot
    ("garbage", "snapshot", "acme.snapshot", b"\xc1", "bad_request"),
    ("services-as-string", "snapshot", "acme.snapshot", msgpack.packb({"v": 1, "services": "x"}), "bad_request"),
    ("bad-status", "snapshot", "acme.snapshot", msgpack.packb({"v": 1, "status": ["up"]}), "bad_request"),
    ("unknown-filter", "snapshot", "acme.snapshot", msgpack.packb({"v": 1, "limit": 3}), "bad_request"),
    ("v0", "snapshot", "acme.snapshot", msgpack.packb({"v": 0}), "unsupported_version"),
    ("too-large", "snapshot", "acme.snapshot", b"\x80" * (LIMIT + 1), "payload_too_large"),
    ("upper-tenant", "snapshot", "Acme.snapshot", b"", "invalid_name"),
    # bye and heartbeat, asked with a reply subject
    ("garbage", "bye", "acme.bye.billing", b"\xc1", "bad_request"),
    ("missing-id", "bye", "acme.bye.billing", msgpack.packb({"v": 1}), "bad_request"),
    ("v2", "bye", "acme.bye.billing", msgpack.packb({"v": 2, "id": "i-1"}), "unsupported_version"),
    ("upper-tenant", "bye", "ACME.bye.billing", msgpack.packb({"v": 1, "id": "i-1"}), "invalid_name"),
    ("garbage", "hb", "acme.hb.billing", b"\xc1", "bad_request"),
    ("no-id", "hb", "acme.hb.billing", msgpack.packb({"v": 1}), "bad_request"),
    ("too-many-ids", "hb", "acme.hb.billing", msgpack.packb({"v": 1, "ids": ["a"] * 1001}), "bad_request"),
    ("upper-service", "hb", "acme.hb.Billing", msgpack.packb({"v": 1, "id": "i-1"}), "invalid_name"),
]


def _case_id(case: Any) -> str:
    values = case.values if hasattr(case, "values") else case
    return f"{values[1]}-{values[0]}"


@pytest.fixture
async def conn(nats_server: Any, conn_factory: Callable[..., Any]) -> Connection:
    c: Connection = await conn_factory(nats_server.url, tenant="acme")
    return c


async def ask(nc: NATS, subject: str, payload: bytes, timeout: float = 2.0) -> bytes:
    msg = await nc.request(subject, payload, timeout=timeout)
    data: bytes = msg.data
    return data


async def stats(nc: NATS, prefix: str) -> dict[str, Any]:
    reply = msgpack.unpackb(await ask(nc, f"{prefix}._sys.stats", b""), raw=False)
    assert reply["ok"] is True
    return dict(reply)


def refused(st: dict[str, Any], tenant: str | None = None) -> int:
    counts: dict[str, int] = st["metrics"].get("refused", {})
    return sum(counts.values()) if tenant is None else counts.get(tenant, 0)


async def state(nc: NATS, prefix: str) -> tuple[bytes, bytes]:
    """The tenant's snapshot and billing's resolve reply, as bytes (equal bytes: nothing changed)."""
    return (await ask(nc, f"{prefix}.acme.snapshot", encode(SnapshotRequest())),
            await ask(nc, f"{prefix}.acme.resolve.billing", b""))


@pytest.mark.parametrize(("name", "kind", "where", "payload", "code"), CASES, ids=[_case_id(c) for c in CASES])
async def test_malformed_request_gets_its_error_code(
    aggregator: Running, conn: Connection, prefix: str, name: str, kind: str, where: str, payload: bytes, code: str
) -> None:
    data = await ask(conn.nc, f"{prefix}.{where}", payload, timeout=1.0)
    err = decode(data, ErrorReply)  # a well-formed error reply
    assert (err.ok, err.code) == (False, code), err.error
    assert err.error  # a human-readable reason
    with pytest.raises(DiscoError) as info:  # the client library raises the class of the code
        decode_reply(data, AnnounceAck)
    assert info.value.code == code
    assert aggregator.agg.view.all_keys() == []  # nothing was registered


async def test_valid_requests_still_work(aggregator: Running, conn: Connection, prefix: str) -> None:
    """Guards the table: the same subjects with good payloads are answered with success."""
    ack = decode_reply(await ask(conn.nc, f"{prefix}.acme.announce.billing", packed()), AnnounceAck)
    assert ack.changed is True and ack.revision > 0
    reply = await resolve(conn, "billing")
    assert [i.id for i in reply.instances] == ["i-1"]
    ack = decode_reply(await ask(conn.nc, f"{prefix}.acme.bye.billing", encode(Bye(id="i-1"))), AnnounceAck)
    assert ack.changed is True


async def test_garbage_without_reply_subject_is_counted(aggregator: Running, conn: Connection, prefix: str) -> None:
    nc = conn.nc
    ack = decode_reply(await ask(nc, f"{prefix}.acme.announce.billing", packed()), AnnounceAck)
    before = await stats(nc, prefix)
    view_before = await state(nc, prefix)
    live_before = aggregator.agg.live.deadline(("acme", "billing", "i-1"))
    bad = [
        ("acme.hb.billing", b"\xc1"),
        ("acme.hb.billing", msgpack.packb({"v": 1})),
        ("acme.hb.billing", msgpack.packb({"v": 1, "id": "i-1", "status": "dead"})),
        ("acme.hb.billing", msgpack.packb({"v": 2, "id": "i-1"})),
        ("acme.bye.billing", b""),
        ("acme.bye.billing", msgpack.packb({"v": 1, "id": 5})),
        ("acme.bye.billing", msgpack.packb({"v": 1, "id": "i-1", "x": 1})),
        ("acme.announce.billing", packed(port=-1)),  # a plain publish of a bad announce
    ]
    for where, payload in bad:
        await nc.publish(f"{prefix}.{where}", payload)
    await nc.flush()
    after = await eventually(lambda: _refused_reached(nc, prefix, refused(before, "acme") + len(bad)))
    assert refused(after, "acme") == refused(before, "acme") + len(bad)
    codes = {name: after["metrics"].get(name, {}).get("acme", 0) - before["metrics"].get(name, {}).get("acme", 0)
             for name in ("refused.bad_request", "refused.unsupported_version")}
    assert codes == {"refused.bad_request": len(bad) - 1, "refused.unsupported_version": 1}
    # nothing changed: same snapshot and resolve bytes, the instance is still there at the same revision, and the
    # malformed heartbeats did not count as signs of life
    assert await state(nc, prefix) == view_before
    entry = aggregator.agg.view.get("acme", "billing", "i-1")
    assert entry is not None and entry.revision == ack.revision
    assert aggregator.agg.live.deadline(("acme", "billing", "i-1")) == live_before


async def _refused_reached(nc: NATS, prefix: str, target: int) -> dict[str, Any] | None:
    st = await stats(nc, prefix)
    return st if refused(st, "acme") >= target else None


# ------------------------------------------------------------------------------------------------------------
# the flood
# ------------------------------------------------------------------------------------------------------------
_MODELS: dict[str, type[BaseModel]] = {
    "announce": Instance, "hb": Heartbeat, "bye": Bye, "resolve": ResolveRequest, "snapshot": SnapshotRequest,
}


def _routed(prefix: str, subject: str) -> str | None:
    """The aggregator handler a subject reaches (its subscriptions: announce, hb, bye, resolve, snapshot)."""
    rest = subject.split(".")[1:]
    if len(rest) == 3 and rest[1] in ("announce", "hb", "bye", "resolve"):
        return rest[1]
    if len(rest) == 2 and rest[1] == "snapshot":
        return "snapshot"
    return None


def _accepted(subjects: Subjects, kind: str, subject: str, payload: bytes) -> bool:
    """Would the aggregator accept it (the same parse and decode it runs)?"""
    try:
        subjects.parse(subject)
    except InvalidName:
        return False
    if kind in ("resolve", "snapshot") and not payload:
        return True
    try:
        decode(payload, _MODELS[kind])
    except BadRequest:
        return False
    return True


def _token(rng: random.Random) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"
    while True:
        token = "".join(rng.choice(alphabet) for _ in range(rng.choice([1, 2, 5, 12, 63, 64, 70])))
        return token


def _garbage_value(rng: random.Random, depth: int = 0) -> Any:
    pick = rng.randrange(9 if depth < 3 else 6)
    if pick == 0:
        return None
    if pick == 1:
        return rng.choice([True, False])
    if pick == 2:
        return rng.randrange(-(2**63), 2**64)
    if pick == 3:
        return rng.random() * rng.choice([1, 1e300, -1])
    if pick == 4:
        return _token(rng)
    if pick == 5:
        return rng.randbytes(rng.randrange(8))
    if pick == 6:
        return [_garbage_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["v", "id", "ids", "address", "port", "tags", "meta", "status", "ttl", "seq", "limit", "zone", "x"]
    return {rng.choice(keys): _garbage_value(rng, depth + 1) for _ in range(rng.randrange(5))}


def _garbage_payload(rng: random.Random) -> bytes:
    pick = rng.randrange(6)
    if pick == 0:
        return rng.randbytes(rng.randrange(1, 300))
    if pick == 1:
        return packed()[: rng.randrange(1, 40)]  # truncated
    if pick == 2:
        return bytes(msgpack.packb(_garbage_value(rng), use_bin_type=True))
    obj = {k: _garbage_value(rng) for k in rng.sample([*GOOD, "ids", "tags", "status", "x"], rng.randrange(6))}
    obj["v"] = rng.choice([1, 1, 1, 2, 0, "1", None, True, 1.5, {}, [1]])
    return bytes(msgpack.packb(obj, use_bin_type=True))


def _flood(prefix: str, n: int, seed: int = 7) -> list[tuple[str, bytes, bool]]:
    """``n`` invalid messages: (subject, payload, wants_reply). Those that reach a handler are all refusable."""
    rng = random.Random(seed)
    subjects = Subjects(prefix)
    kinds = ["announce", "hb", "bye", "resolve", "snapshot", "changes", "ctl", "dlq", "nope"]
    out: list[tuple[str, bytes, bool]] = []
    while len(out) < n:
        form = rng.randrange(4)
        if form == 0:  # garbage on the real subjects
            kind = rng.choice(list(_MODELS))
            subject = f"{prefix}.acme.snapshot" if kind == "snapshot" else f"{prefix}.acme.{kind}.billing"
            payload = _garbage_payload(rng)
        elif form == 1:  # a good announce on a bad subject
            kind = rng.choice(["announce", "resolve"])
            subject = f"{prefix}.{_token(rng).upper() or 'X'}.{kind}.billing"
            payload = packed(id=f"i{rng.randrange(1000)}")
        else:  # random subjects under the prefix, random payloads
            tokens = [_token(rng) if rng.random() < 0.5 else rng.choice(["acme", "billing"]) for _ in range(4)]
            tokens.insert(1, rng.choice(kinds))
            subject = ".".join([prefix, tokens[0], tokens[1], *tokens[2:rng.randrange(2, 5)]])
            payload = _garbage_payload(rng) if rng.random() < 0.9 else b""
        kind_reached = _routed(prefix, subject)
        if kind_reached is not None and _accepted(subjects, kind_reached, subject, payload):
            continue  # only garbage
        out.append((subject, payload, kind_reached is not None and rng.random() < 0.2))
    return out
async def test_flood_of_garbage_leaves_the_aggregator_answering(
    aggregator: Running, conn: Connection, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="disco")
    nc = conn.nc
    for iid in ("i-1", "i-2"):
        decode_reply(await ask(nc, f"{prefix}.acme.announce.billing", packed(id=iid)), AnnounceAck)
    before = await stats(nc, prefix)
    view_before = await state(nc, prefix)
    position = aggregator.agg.view.position
    reply_before = await resolve(conn, "billing")

    flood = _flood(prefix, 3000)
    reaching = sum(1 for s, _, _ in flood if _routed(prefix, s) is not None)
    asked = sum(1 for *_, wants in flood if wants)
    assert reaching > 1000 and asked > 100  # the flood does exercise the handlers

    replies: list[Msg] = []
    all_replied = anyio.Event()

    async def on_reply(msg: Msg) -> None:
        replies.append(msg)
        if len(replies) == asked:
            all_replied.set()

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_reply)
    for subject, payload, wants_reply in flood:
        await nc.publish(subject, payload, reply=inbox if wants_reply else "")
    await nc.flush()

    with anyio.fail_after(20):
        await all_replied.wait()
    after = await eventually(lambda: _total_refused_reached(nc, prefix, refused(before) + reaching), timeout=20)
    await sub.unsubscribe()

    assert refused(after) == refused(before) + reaching  # every message that reached a handler was refused once
    codes = {decode(msg.data, ErrorReply).code for msg in replies}  # each a well-formed error reply
    assert codes == {"bad_request", "unsupported_version", "invalid_name"}

    # still answering, and answering right: the view did not move
    reply_after = await resolve(conn, "billing")
    assert reply_after == reply_before and sorted(i.id for i in reply_after.instances) == ["i-1", "i-2"]
    assert await state(nc, prefix) == view_before
    assert aggregator.agg.view.position == position
    assert sorted(aggregator.agg.view.all_keys()) == [("acme", "billing", "i-1"), ("acme", "billing", "i-2")]
    assert not aggregator.task.done()
    handler_errors = [r.getMessage() for r in caplog.records if r.name == "disco.connection"]
    assert handler_errors == []  # no handler raised (nats-py reports handler exceptions through error_cb)


async def _total_refused_reached(nc: NATS, prefix: str, target: int) -> dict[str, Any] | None:
    st = await stats(nc, prefix)
    return st if refused(st) >= target else None


# ------------------------------------------------------------------------------------------------------------
# error replies under strict replies (--auth), and how refusals are labelled
# ------------------------------------------------------------------------------------------------------------
async def test_strict_replies_answer_the_own_inbox_only(
    nats_server: Any, start_aggregator: Callable[..., Any], conn: Connection, prefix: str
) -> None:
    running: Running = await start_aggregator(nats_server.url, strict_replies=True)
    nc = conn.nc
    data = await ask(nc, f"{prefix}.acme.announce.billing", b"\xc1")  # from _INBOX.acme.…
    assert decode(data, ErrorReply).code == "bad_request"

    foreign: list[Msg] = []

    async def on_foreign(msg: Msg) -> None:
        foreign.append(msg)

    sub = await nc.subscribe("_INBOX.other.>", cb=on_foreign)
    await nc.publish(f"{prefix}.acme.announce.billing", b"\xc1", reply="_INBOX.other.stolen")
    await nc.flush()
    await eventually(lambda: running.agg.metrics.get("reply_refused", "acme") == 1, timeout=5)
    await ask(nc, f"{prefix}.acme.resolve.billing", b"")  # a round trip after the refusal was counted
    await sub.unsubscribe()
    assert foreign == []  # the error reply was not sent into another tenant's inbox


async def test_error_replies_with_a_two_token_prefix(
    nats_server: Any, conn_factory: Callable[..., Any], settings_for: Callable[..., Any], conn: Connection,
    prefix: str,
) -> None:
    two = f"{prefix}.disco"
    agg_conn = await conn_factory(nats_server.url, prefix=two, name="aggregator")
    agg = Aggregator(agg_conn, settings_for(nats_server.url, prefix=two, strict_replies=True))
    outcome: list[bytes | Exception] = []
    async with anyio.create_task_group() as tg:
        await tg.start(agg.run)
        try:
            ok = await ask(conn.nc, f"{two}.acme.resolve.billing", b"", timeout=1.0)
            assert msgpack.unpackb(ok)["ok"] is True  # a valid request is answered
            outcome.append(await ask(conn.nc, f"{two}.acme.announce.billing", b"\xc1", timeout=1.0))
        except nats.errors.TimeoutError as exc:
            outcome.append(exc)
        finally:
            tg.cancel_scope.cancel()
    if isinstance(outcome[0], Exception):
        raise outcome[0]
    assert decode(outcome[0], ErrorReply).code == "bad_request"


async def test_refusals_are_labelled_by_valid_tenants_only(
    aggregator: Running, conn: Connection, prefix: str
) -> None:
    nc = conn.nc
    before = await stats(nc, prefix)
    junk = ["Bad_Tenant", "_", "t" * 64, "UPPER"]
    for token in junk:
        await nc.publish(f"{prefix}.{token}.hb.billing", b"\xc1")
    await nc.flush()
    after = await eventually(lambda: _total_refused_reached(nc, prefix, refused(before) + len(junk)), timeout=2)
    labels = set(after["metrics"]["refused"])
    assert labels <= {"acme", "_"}  # junk tokens are not labels
