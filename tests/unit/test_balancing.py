"""The balancer behind the resolver, without a server: candidates, every strategy, and the least-loaded index."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.balancing import Balancer, Strategy, _LeastLoaded
from bus.errors import NoInstances
from bus.models import Instance


def inst(iid: str, **fields: object) -> Instance:
    data: dict[str, object] = {"address": "10.0.0.1", "port": 80}
    data.update(fields)
    return Instance(id=iid, **data)  # type: ignore[arg-type]


THREE = [inst("c"), inst("a"), inst("b")]


def test_candidates_are_sorted_by_id() -> None:
    assert [i.id for i in Balancer(THREE).candidates] == ["a", "b", "c"]


def test_round_robin_cycles_and_keeps_its_place_across_rebuilds() -> None:
    b = Balancer(THREE, "round_robin", start=0)
    assert [b.pick().id for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]
    b.pick()  # next would be "b"
    rebuilt = Balancer([*THREE, inst("d")], "round_robin", start=b.position)
    assert [rebuilt.pick().id for _ in range(4)] == ["b", "c", "d", "a"]


def test_round_robin_start_is_random_without_a_position() -> None:
    firsts = {Balancer(THREE, "round_robin", rng=random.Random(seed)).pick().id for seed in range(30)}
    assert firsts == {"a", "b", "c"}  # clients do not all start on the same instance


def test_random_is_uniform() -> None:
    b = Balancer(THREE, Strategy.random, rng=random.Random(3))
    counts = Counter(b.pick().id for _ in range(30_000))
    assert all(abs(c / 30_000 - 1 / 3) < 0.02 for c in counts.values()), counts


def test_weighted_follows_weights() -> None:
    items = [inst("light", weight=1), inst("mid", weight=99), inst("heavy", weight=900)]
    b = Balancer(items, Strategy.weighted, rng=random.Random(5))
    n = 50_000
    counts = Counter(b.pick().id for _ in range(n))
    assert abs(counts["heavy"] / n - 0.9) < 0.01
    assert abs(counts["mid"] / n - 0.099) < 0.01
    assert 0 < counts["light"] < n * 0.003


def test_least_outstanding_takes_the_least_loaded_and_rotates_ties() -> None:
    b = Balancer(THREE, Strategy.least_outstanding, outstanding={"a": 2, "b": 1})
    assert {b.pick().id for _ in range(5)} == {"c"}
    b.acquire("c")
    b.acquire("c")  # c: 2, b: 1, a: 2
    assert b.pick().id == "b"
    b.release("a")
    b.release("a")  # a: 0
    assert b.pick().id == "a"
    idle = Balancer(THREE, Strategy.least_outstanding)
    assert [idle.pick().id for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]


def test_unknown_ids_and_over_release_are_ignored() -> None:
    b = Balancer(THREE, Strategy.least_outstanding)
    b.release("a")  # nothing in flight: stays at 0
    b.acquire("zzz")
    b.release("zzz")
    assert [b.pick().id for _ in range(3)] == ["a", "b", "c"]


def test_filters_tags_zone_status() -> None:
    items = [
        inst("a", tags=("v2", "gpu"), zone="z1"),
        inst("b", tags=("v2",), zone="z2", status="warning"),
        inst("c", tags=("v1",), zone="z1", status="critical"),
        inst("d", zone="z1", status="maintenance"),
    ]
    assert [i.id for i in Balancer(items).candidates] == ["a", "b"]  # passing and warning by default
    assert [i.id for i in Balancer(items, tags=["v2", "gpu"]).candidates] == ["a"]
    assert [i.id for i in Balancer(items, zone="z1").candidates] == ["a"]
    assert [i.id for i in Balancer(items, status=["critical", "maintenance"]).candidates] == ["c", "d"]


def test_zone_affinity_prefers_then_falls_back() -> None:
    items = [inst("a", zone="eu"), inst("b", zone="us"), inst("c", zone="eu", status="critical")]
    near = Balancer(items, prefer_zone="eu")
    assert [i.id for i in near.candidates] == ["a"]
    assert [i.id for i in near.matching] == ["a", "b"]
    assert [i.id for i in Balancer(items, prefer_zone="ap").candidates] == ["a", "b"]  # none there: all
    assert [i.id for i in Balancer(items[1:], prefer_zone="eu").candidates] == ["b"]  # eu only critical


@pytest.mark.parametrize("strategy", list(Strategy))
def test_empty_raises_no_instances(strategy: Strategy) -> None:
    with pytest.raises(NoInstances):
        Balancer([], strategy).pick()
    with pytest.raises(NoInstances):
        Balancer([inst("a", status="critical")], strategy).pick()


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=6),
    ops=st.lists(st.tuples(st.sampled_from(["acquire", "release", "pick"]), st.integers(0, 5)), max_size=80),
)
def test_least_loaded_index_always_gives_a_minimum(n: int, ops: list[tuple[str, int]]) -> None:
    ids = [f"i{k}" for k in range(n)]
    model = dict.fromkeys(ids, 0)
    index = _LeastLoaded(ids, {})
    for op, k in ops:
        iid = ids[k % n]
        if op == "acquire":
            index.add(iid, 1)
            model[iid] += 1
        elif op == "release":
            index.add(iid, -1)
            model[iid] = max(model[iid] - 1, 0)
        else:
            assert model[index.pick()] == min(model.values())
        assert index.level == model
        assert index.low == min(model.values())
        assert all(bucket for bucket in index.buckets.values())
