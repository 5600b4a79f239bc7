"""The aggregator's write rules, each forced deterministically on a real server: an announce that does not raise
``seq`` changes nothing, and an expiry re-checks the deadline right before it removes (a heartbeat may arrive
between the sweep that found the instance due and the removal job)."""

from __future__ import annotations

from typing import Any

import pytest

from bus.client import resolve
from bus.connection import Connection
from bus.models import ChangeReason
from tests.helpers import announce_raw, instance

pytestmark = pytest.mark.integration


async def test_an_announce_with_the_same_seq_is_a_duplicate_not_an_update(aggregator: Any, client: Connection) -> None:
    first = await announce_raw(client, "api", instance("i1", port=80, seq=3))
    again = await announce_raw(client, "api", instance("i1", port=81, seq=3))  # a retry that lost a race, or a bug
    assert first.changed and not again.changed and again.revision == first.revision
    older = await announce_raw(client, "api", instance("i1", port=82, seq=2))
    assert not older.changed
    assert [i.port for i in (await resolve(client, "api")).instances] == [80]
    assert aggregator.agg.metrics.get("announce_stale", "acme") == 1
    newer = await announce_raw(client, "api", instance("i1", port=83, seq=4))
    assert newer.changed and newer.revision > first.revision
    assert [i.port for i in (await resolve(client, "api")).instances] == [83]


async def test_an_expiry_job_finding_a_fresh_heartbeat_removes_nothing(aggregator: Any, client: Connection) -> None:
    agg = aggregator.agg
    ack = await announce_raw(client, "api", instance("i1", ttl=30.0))
    # the sweep found it due and queued the removal; meanwhile a heartbeat came (its deadline is 30 s ahead):
    # the job itself must see that and leave it
    await agg._remove("acme", "api", "i1", ChangeReason.expired)
    entry = agg.view.get("acme", "api", "i1")
    assert entry is not None and entry.revision == ack.revision
    assert agg.metrics.get("expired", "acme") == 0
    assert [i.id for i in (await resolve(client, "api")).instances] == ["i1"]
