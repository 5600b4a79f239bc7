"""The resolver's cache and its leases across rebuilds, without a server: change events are handed to the
resolver as its watch hands them (``Resolver._on_event``) on an unconnected client."""

from __future__ import annotations

import random
from collections import Counter

from nats.aio.client import Client as NATS

from bus.connection import Connection
from bus.models import ChangeEvent, ChangeReason, ChangeType, Instance, Status
from bus.resolver import Resolver
from bus.subjects import Subjects


def inst(iid: str, **fields: object) -> Instance:
    return Instance(id=iid, address="10.0.0.1", port=80, **fields)  # type: ignore[arg-type]


def make(strategy: str = "least_outstanding") -> Resolver:
    conn = Connection(NATS(), tenant="acme", subjects=Subjects())
    return Resolver(conn, "acme", "api", strategy=strategy, tags=(), zone=None,
                    status=(Status.passing, Status.warning), prefer_zone=None, rng=random.Random(7), timeout=1.0)


def change(r: Resolver, kind: str, instance: Instance) -> None:
    r.revision += 1
    r._on_event(ChangeEvent(type=ChangeType(kind), reason=ChangeReason.announce, tenant="acme", service="api",
                            instance=instance, revision=r.revision, at=0.0))


def test_least_outstanding_does_not_pile_onto_busy_instances_after_a_change() -> None:
    r = make()
    change(r, "added", inst("a"))
    change(r, "added", inst("b"))
    held = [r.lease() for _ in range(4)]
    assert Counter(lease.instance.id for lease in held) == {"a": 2, "b": 2}
    change(r, "added", inst("c"))  # a rebuild of the candidate lists while four calls are in flight
    assert r.rebuilds == 3
    assert {r.outstanding("a"), r.outstanding("b"), r.outstanding("c")} == {2, 0}
    more = [r.lease() for _ in range(2)]
    assert [lease.instance.id for lease in more] == ["c", "c"]  # the idle one until it is as busy as the others
    for lease in held + more:
        lease.release()
    assert [r.outstanding(i) for i in "abc"] == [0, 0, 0]


def test_a_lease_released_after_its_instance_changed_or_left_is_counted_right() -> None:
    r = make()
    change(r, "added", inst("a"))
    change(r, "added", inst("b"))
    la, lb = r.lease(), r.lease()
    assert {la.instance.id, lb.instance.id} == {"a", "b"}
    a_lease = la if la.instance.id == "a" else lb
    b_lease = lb if a_lease is la else la
    change(r, "updated", inst("a", weight=5))  # rebuild: the in-flight call on a is still counted
    change(r, "removed", inst("b"))
    assert r.outstanding("a") == 1
    assert r.lease().instance.id == "a"  # the only one left, busy or not
    a_lease.release()
    a_lease.release()  # idempotent
    b_lease.release()  # released after its instance left: no negative count anywhere
    assert r.outstanding("a") == 1 and r.outstanding("b") == 0
    change(r, "added", inst("b"))
    assert [r.lease().instance.id for _ in range(2)] == ["b", "a"]  # b idle, then a tie taken in turn


def test_least_outstanding_prefers_idle_instances_with_calls_in_flight() -> None:
    r = make()
    for iid in "abc":
        change(r, "added", inst(iid))
    busy = r.lease()
    picks = Counter(r.pick().id for _ in range(30))  # picks are not leases: nothing more is counted
    assert busy.instance.id not in picks and sum(picks.values()) == 30
