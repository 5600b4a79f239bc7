"""The KV store's compare-and-set on a real server: every write and delete names the revision it expects, and a
write behind its back (another aggregator's) makes it fail with Conflict instead of overwriting."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bus.codec import decode, encode
from bus.connection import Connection
from bus.models import Instance
from bus.subjects import kv_key
from services.aggregator.store import Conflict, ViewStore
from services.natsserver import NatsServer

pytestmark = pytest.mark.integration


def inst(port: int) -> bytes:
    return encode(Instance(id="i1", address="10.0.0.1", port=port, seq=port))


@pytest.fixture
async def stores(nats_server: NatsServer, conn_factory: Callable[..., Any], prefix: str) -> list[ViewStore]:
    """Two stores on the same bucket, as two aggregators have."""
    out = []
    for _ in range(2):
        conn: Connection = await conn_factory(nats_server.url)
        store = ViewStore(conn.js, f"{prefix}_view", conn.subjects, f"{prefix}_changes")
        await store.open(replicas=1, changes_max_age=3600.0)
        out.append(store)
    return out


async def test_a_write_behind_ones_back_makes_update_and_delete_conflict(stores: list[ViewStore]) -> None:
    a, b = stores
    key = kv_key("acme", "api", "i1")
    first = await a.create(key, inst(1))
    behind = await b.update(key, inst(2), last=first)  # the other aggregator re-announced meanwhile
    assert behind > first
    with pytest.raises(Conflict):
        await a.update(key, inst(3), last=first)
    with pytest.raises(Conflict):
        await a.delete(key, last=first)  # a removal must not overwrite the concurrent re-announce
    latest = await a.latest(key)
    assert latest is not None and latest.value is not None and latest.revision == behind
    assert decode(latest.value, Instance).port == 2
    marker = await a.delete(key, last=behind)
    gone = await b.latest(key)
    assert gone is not None and gone.value is None and gone.revision == marker


async def test_a_create_conflicts_with_an_existing_key_or_a_newer_delete_marker(stores: list[ViewStore]) -> None:
    a, b = stores
    key = kv_key("acme", "api", "i1")
    rev = await a.create(key, inst(1))
    with pytest.raises(Conflict):
        await b.create(key, inst(2))  # both saw the instance as new: one wins
    marker = await a.delete(key, last=rev)
    with pytest.raises(Conflict):
        await b.create(key, inst(3), last=rev)  # created against the state before the delete
    again = await b.create(key, inst(4), last=marker)
    assert again > marker
