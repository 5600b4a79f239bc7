"""The in-memory live view: revision ordering of puts and deletes, tombstones, the resolve-reply cache and its
invalidation, filters, snapshots."""

from __future__ import annotations

from typing import Any

import msgpack

from bus.codec import decode, encode
from bus.models import Instance, ResolveReply, ResolveRequest, Snapshot, SnapshotRequest, Status
from services.aggregator.view import Entry, LiveView

T, S = "acme", "billing"


def inst(iid: str = "i1", **kw: Any) -> Instance:
    return Instance.model_validate({"id": iid, "address": "10.0.0.1", "port": 80, **kw})


def reply(view: LiveView, req: ResolveRequest | None = None, tenant: str = T, service: str = S) -> ResolveReply:
    req = req or ResolveRequest()
    return decode(view.resolve_reply(tenant, service, encode(req), req), ResolveReply)


def ids(r: ResolveReply) -> list[str]:
    return sorted(i.id for i in r.instances)


# ------------------------------------------------------------------------------------------------------------
# put / delete ordering
# ------------------------------------------------------------------------------------------------------------
def test_put_new_then_newer_then_older() -> None:
    v = LiveView()
    assert v.put(T, S, inst(weight=1), 5) is None  # new
    old = v.put(T, S, inst(weight=2), 7)
    assert isinstance(old, Entry) and old.instance.weight == 1 and old.revision == 5
    assert v.put(T, S, inst(weight=3), 6) is False  # older: ignored
    assert v.put(T, S, inst(weight=4), 7) is False  # same revision: ignored (applied twice)
    entry = v.get(T, S, "i1")
    assert entry is not None and entry.instance.weight == 2 and entry.revision == 7
    assert entry.wire == inst(weight=2).model_dump(mode="json")


def test_delete_leaves_a_tombstone() -> None:
    v = LiveView()
    v.put(T, S, inst(), 5)
    assert v.delete(T, S, "i1", 4) is False  # older than the entry
    assert v.get(T, S, "i1") is not None
    removed = v.delete(T, S, "i1", 8)
    assert isinstance(removed, Entry) and removed.revision == 5
    assert v.get(T, S, "i1") is None
    assert v.tombstone(T, S, "i1") == 8
    assert v.put(T, S, inst(), 7) is False  # a put older than the removal does not resurrect it
    assert v.put(T, S, inst(), 8) is False
    assert v.delete(T, S, "i1", 8) is False  # the same removal twice
    assert v.put(T, S, inst(), 9) is None  # a newer put comes back as new
    assert v.tombstone(T, S, "i1") == 0


def test_delete_before_put_arrives() -> None:
    """Out of order (own write vs. watch): the removal at 6 arrives before the put at 5."""
    v = LiveView()
    assert v.delete(T, S, "i1", 6) is None  # absent, but remembered
    assert v.put(T, S, inst(), 5) is False
    assert v.get(T, S, "i1") is None


def test_service_revision_is_the_highest_change() -> None:
    v = LiveView()
    assert reply(v).revision == 0  # never seen
    v.put(T, S, inst("a"), 3)
    v.put(T, S, inst("b"), 9)
    v.put(T, S, inst("c"), 4)
    assert reply(v).revision == 9
    v.delete(T, S, "a", 12)
    r = reply(v)
    assert r.revision == 12 and ids(r) == ["b", "c"]
    v.delete(T, S, "b", 13)
    v.delete(T, S, "c", 14)
    r = reply(v)
    assert r.revision == 14 and r.instances == ()  # an emptied service keeps its revision


def test_counts_and_listings() -> None:
    v = LiveView()
    v.put(T, S, inst("a"), 1)
    v.put(T, S, inst("b"), 2)
    v.put(T, "auth", inst("a"), 3)
    v.put("other", S, inst("z"), 4)
    assert v.count(T) == (2, 3) and v.count("nobody") == (0, 0)
    assert v.service_instances(T, S) == 2 and v.service_instances(T, "nope") == 0
    assert sorted(v.tenants()) == ["acme", "other"]
    assert sorted(v.all_keys()) == [(T, "auth", "a"), (T, S, "a"), (T, S, "b"), ("other", S, "z")]
    v.delete(T, "auth", "a", 5)
    assert v.count(T) == (1, 2)
    assert set(v.services(T)) == {S}  # emptied services are not listed


# ------------------------------------------------------------------------------------------------------------
# the resolve reply cache
# ------------------------------------------------------------------------------------------------------------
def test_reply_is_cached_until_the_service_changes() -> None:
    v = LiveView()
    v.put(T, S, inst("a"), 1)
    req = ResolveRequest()
    raw = encode(req)
    assert v.cached_reply(T, S, raw) is None
    first = v.resolve_reply(T, S, raw, req)
    assert v.cached_reply(T, S, raw) is first
    assert v.resolve_reply(T, S, raw, req) is first  # same bytes object: served from the cache
    v.put(T, S, inst("b"), 2)  # a put invalidates
    assert v.cached_reply(T, S, raw) is None
    assert ids(decode(v.resolve_reply(T, S, raw, req), ResolveReply)) == ["a", "b"]
    v.delete(T, S, "a", 3)  # a delete invalidates
    assert v.cached_reply(T, S, raw) is None
    r = decode(v.resolve_reply(T, S, raw, req), ResolveReply)
    assert ids(r) == ["b"] and r.revision == 3


def test_cache_is_per_service_and_ignored_changes_keep_it() -> None:
    v = LiveView()
    v.put(T, S, inst("a"), 5)
    v.put(T, "auth", inst("x"), 6)
    req = ResolveRequest()
    raw = encode(req)
    billing = v.resolve_reply(T, S, raw, req)
    v.put(T, "auth", inst("y"), 7)  # another service changed
    assert v.cached_reply(T, S, raw) is billing
    v.put(T, S, inst("a"), 4)  # an ignored (older) write does not invalidate
    assert v.cached_reply(T, S, raw) is billing


def test_cache_is_keyed_by_request_bytes_and_bounded() -> None:
    v = LiveView()
    v.put(T, S, inst("a", status="critical"), 1)
    everything = ResolveRequest(status=tuple(Status))
    default = ResolveRequest()
    assert ids(decode(v.resolve_reply(T, S, encode(everything), everything), ResolveReply)) == ["a"]
    assert ids(decode(v.resolve_reply(T, S, encode(default), default), ResolveReply)) == []
    for n in range(100):  # many distinct requests: the cache stays small
        req = ResolveRequest(tags=(f"t{n}",))
        v.resolve_reply(T, S, encode(req), req)
    svc = v._tenants[T][S]
    assert len(svc.replies) <= 32


def test_limit_samples_and_is_not_cached() -> None:
    v = LiveView()
    for n in range(10):
        v.put(T, S, inst(f"i{n}"), n + 1)
    req = ResolveRequest(limit=3)
    raw = encode(req)
    seen: set[str] = set()
    for _ in range(30):
        r = decode(v.resolve_reply(T, S, raw, req), ResolveReply)
        assert len(r.instances) == 3 and len(set(ids(r))) == 3
        seen.update(ids(r))
        assert v.cached_reply(T, S, raw) is None
    assert len(seen) > 3  # not always the same three
    small = ResolveRequest(limit=50)
    assert len(decode(v.resolve_reply(T, S, encode(small), small), ResolveReply).instances) == 10


def test_unknown_tenant_or_service_is_empty() -> None:
    v = LiveView()
    v.put(T, S, inst(), 3)
    for tenant, service in (("other", S), (T, "nope")):
        r = reply(v, tenant=tenant, service=service)
        assert r.instances == () and r.revision == 0


# ------------------------------------------------------------------------------------------------------------
# filters
# ------------------------------------------------------------------------------------------------------------
def test_resolve_filters() -> None:
    v = LiveView()
    v.put(T, S, inst("eu-a", tags=("eu", "primary"), zone="eu-1"), 1)
    v.put(T, S, inst("eu-b", tags=("eu",), zone="eu-2", status="warning"), 2)
    v.put(T, S, inst("us", tags=("us",), zone="us-1"), 3)
    v.put(T, S, inst("down", tags=("eu",), status="critical"), 4)
    v.put(T, S, inst("maint", status="maintenance"), 5)
    assert ids(reply(v)) == ["eu-a", "eu-b", "us"]  # passing and warning by default
    assert ids(reply(v, ResolveRequest(tags=("eu",)))) == ["eu-a", "eu-b"]
    assert ids(reply(v, ResolveRequest(tags=("eu", "primary")))) == ["eu-a"]
    assert ids(reply(v, ResolveRequest(zone="us-1"))) == ["us"]
    assert ids(reply(v, ResolveRequest(zone=""))) == []
    assert ids(reply(v, ResolveRequest(status=(Status.critical, Status.maintenance)))) == ["down", "maint"]
    assert ids(reply(v, ResolveRequest(tags=("nope",)))) == []


def test_snapshot_map() -> None:
    v = LiveView()
    v.put(T, S, inst("a"), 1)
    v.put(T, S, inst("b", status="critical"), 2)
    v.put(T, "auth", inst("x", tags=("t",)), 3)
    v.put(T, "gone", inst("g"), 4)
    v.delete(T, "gone", "g", 5)
    v.put("other", S, inst("z"), 6)
    v.advance(6)
    snap = Snapshot.model_validate(msgpack.unpackb(msgpack.packb(v.snapshot_map(T, SnapshotRequest())),
                                                   use_list=False))
    assert snap.revision == 6
    assert {k: sorted(i.id for i in insts) for k, insts in snap.services.items()} == {S: ["a", "b"], "auth": ["x"]}
    only = v.snapshot_map(T, SnapshotRequest(services=("auth",)))
    assert set(only["services"]) == {"auth"}
    passing = v.snapshot_map(T, SnapshotRequest(status=(Status.passing,)))
    assert [i["id"] for i in passing["services"][S]] == ["a"]
    tagged = v.snapshot_map(T, SnapshotRequest(tags=("t",)))
    assert set(tagged["services"]) == {"auth"}  # services without a match are left out
    assert v.snapshot_map("nobody", SnapshotRequest()) == {"v": 1, "ok": True, "revision": 6, "services": {}}


# ------------------------------------------------------------------------------------------------------------
# position and tombstone pruning
# ------------------------------------------------------------------------------------------------------------
def test_advance_only_moves_forward() -> None:
    v = LiveView()
    v.advance(10)
    v.advance(5)
    assert v.position == 10


def test_tombstones_are_pruned_only_when_many() -> None:
    v = LiveView()
    v.delete(T, S, "x", 3)
    v.advance(100)
    assert v.tombstone(T, S, "x") == 3  # few tombstones: kept
    for n in range(10_001):
        v.delete(T, S, f"i{n}", 200 + n)
    v.advance(5000)
    assert v.tombstone(T, S, "x") == 0 and v.tombstone(T, S, "i0") == 0  # at or below the position: dropped
    assert v.tombstone(T, S, "i9999") == 10_199  # above it: kept


# ------------------------------------------------------------------------------------------------------------
# reconciliation (issue 8.2): a dropped entry never outranks a later real write
# ------------------------------------------------------------------------------------------------------------
def test_drop_tombstones_at_the_entrys_own_revision() -> None:
    v = LiveView()
    v.put(T, S, inst(), 10)
    dropped = v.drop(T, S, "i1")
    assert isinstance(dropped, Entry) and dropped.revision == 10
    assert v.get(T, S, "i1") is None and reply(v).instances == ()
    assert v.tombstone(T, S, "i1") == 10
    assert v.put(T, S, inst(), 10) is False  # the dropped entry itself does not come back
    assert v.put(T, S, inst(weight=5), 11) is None  # any later write is taken
    assert v.drop(T, S, "nope") is None and v.tombstone(T, S, "nope") == 0


def test_clear_tombstone_lets_a_key_start_again() -> None:
    v = LiveView()
    v.put(T, S, inst(), 10)
    v.delete(T, S, "i1", 12)
    v.clear_tombstone(T, S, "i1")
    assert v.tombstone(T, S, "i1") == 0
    assert v.put(T, S, inst(), 3) is None


# ------------------------------------------------------------------------------------------------------------
# compact entries (issue 11): spliced replies, records loaded from the bucket without the model
# ------------------------------------------------------------------------------------------------------------
def test_spliced_reply_is_what_encode_map_gives() -> None:
    from bus.codec import encode_map
    from services.aggregator.view import reply_bytes

    records = [inst("a", tags=("x",)), inst("b", meta={"k": "v"})]
    wires = [r.model_dump(mode="json") for r in records]
    assert reply_bytes(42, [encode(r) for r in records]) == encode_map(
        {"v": 1, "ok": True, "revision": 42, "instances": wires})
    assert reply_bytes(0, []) == encode_map({"v": 1, "ok": True, "revision": 0, "instances": []})


def test_trusted_entry_takes_aggregator_records_and_refuses_other_shapes() -> None:
    from services.aggregator.follower import trusted_entry

    record = inst("a", tags=("x", "y"), zone="z1", status=Status.warning, ttl=30.0)
    got = trusted_entry("a", encode(record), 9)
    assert got is not None
    entry, ttl = got
    assert (entry.id, entry.revision, entry.status, entry.zone, entry.tags, ttl) == (
        "a", 9, Status.warning, "z1", ("x", "y"), 30.0)
    assert entry.instance == record and entry.raw == encode(record)
    assert trusted_entry("b", encode(record), 9) is None  # the key names another id
    bad = record.model_dump(mode="json")
    for change in ({"status": "dead"}, {"ttl": 5000.0}, {"ttl": 30}, {"tags": [1]}, {"v": 2}, {"zone": None}):
        assert trusted_entry("a", msgpack.packb({**bad, **change}), 9) is None, change
    assert trusted_entry("a", b"\xc1", 9) is None
    assert trusted_entry("a", msgpack.packb([1, 2]), 9) is None


def test_filters_read_compact_entries() -> None:
    v = LiveView()
    v.put(T, S, inst("a", tags=("blue",), zone="z1"), 1)
    v.put(T, S, inst("b", status=Status.critical), 2)
    assert ids(reply(v, ResolveRequest(tags=("blue",)))) == ["a"]
    assert ids(reply(v, ResolveRequest(zone="z1"))) == ["a"]
    assert ids(reply(v, ResolveRequest(status=(Status.critical,)))) == ["b"]


def test_spliced_event_is_what_encoding_the_map_gives() -> None:
    from bus.codec import encode_map
    from bus.subjects import Subjects
    from services.aggregator.eventdata import build_event, build_event_raw

    subjects = Subjects("disco")
    record = inst("a", tags=("x",), meta={"k": "v"})
    wire = record.model_dump(mode="json")
    spliced = build_event_raw(subjects, T, S, "added", "announce", 1.5, "a", encode(record), 7)
    whole = encode_map({"v": 1, "type": "added", "reason": "announce", "tenant": T, "service": S,
                        "instance": wire, "revision": 7, "at": 1.5})
    assert spliced.data == whole == build_event(subjects, T, S, "added", "announce", 1.5, wire, 7).data
    assert spliced.key == build_event(subjects, T, S, "added", "announce", 1.5, wire, 7).key
