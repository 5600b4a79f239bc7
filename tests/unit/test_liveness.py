"""Liveness: deadlines from the last sign of life, the grace floor, what is due and what is forgotten.

Times are plain numbers passed in (no clock is read), so every case is exact.
"""

from __future__ import annotations

from services.aggregator.liveness import Liveness


def test_track_sets_the_deadline() -> None:
    live: Liveness[str] = Liveness()
    live.track("a", 10.0, now=100.0)
    assert "a" in live and len(live) == 1
    assert live.deadline("a") == 110.0
    assert live.deadline("b") is None
    assert "b" not in live


def test_due_only_after_the_deadline() -> None:
    live: Liveness[str] = Liveness()
    live.track("a", 10.0, now=100.0)
    live.track("b", 5.0, now=100.0)
    assert live.due(104.999) == []
    assert live.due(105.0) == ["b"]  # at the deadline exactly
    assert live.due(105.2) == []  # a due key is re-checked 0.25 s after the sweep that returned it
    assert live.due(105.25) == ["b"]  # kept until forgotten (a failed expiry is tried again)
    assert sorted(live.due(110.0)) == ["a", "b"]
    live.forget("b")
    assert live.due(111.0) == ["a"]


def test_touch_moves_the_deadline() -> None:
    live: Liveness[str] = Liveness()
    live.track("a", 10.0, now=100.0)
    assert live.touch("a", now=108.0) is True
    assert live.deadline("a") == 118.0
    assert live.due(110.0) == []  # the old deadline popped, found moved, re-pushed
    assert live.due(117.9) == []
    assert live.due(118.0) == ["a"]


def test_touch_of_an_unknown_key() -> None:
    live: Liveness[str] = Liveness()
    assert live.touch("ghost", now=1.0) is False
    assert "ghost" not in live and live.due(1e9) == []


def test_forget() -> None:
    live: Liveness[str] = Liveness()
    live.track("a", 1.0, now=0.0)
    live.track("b", 1.0, now=0.0)
    live.forget("a")
    live.forget("never-tracked")  # harmless
    assert "a" not in live and len(live) == 1
    assert live.deadline("a") is None
    assert live.due(5.0) == ["b"]
    assert live.touch("a", 5.0) is False


def test_forgotten_then_tracked_again() -> None:
    live: Liveness[str] = Liveness()
    live.track("a", 1.0, now=0.0)
    live.forget("a")
    live.track("a", 10.0, now=5.0)
    assert live.due(6.0) == []  # the stale heap entry (deadline 1.0) does not expire the new life
    assert "a" in live.due(15.0)


# Liveness.due pops every heap entry that is due; a key with two entries (tracked again after forget, or tracked
# with a shorter ttl) comes out twice. The aggregator then submits two removals and counts the key twice toward a
# tenant's expiry share (self-preservation). Fix reported to the lead (dedupe keys within one due() call).

def test_due_returns_a_key_once_after_forget_and_track() -> None:
    live: Liveness[str] = Liveness()
    live.track("a", 1.0, now=0.0)
    live.forget("a")
    live.track("a", 10.0, now=5.0)
    assert live.due(6.0) == []
    assert live.due(15.0) == ["a"]


def test_due_returns_a_key_once_after_a_shorter_ttl() -> None:
    live: Liveness[str] = Liveness()
    live.track("a", 100.0, now=0.0)
    live.track("a", 2.0, now=1.0)
    assert live.due(200.0) == ["a"]


def test_grace_floor() -> None:
    live: Liveness[str] = Liveness()
    live.track("a", 10.0, now=0.0)
    live.track("b", 10.0, now=50.0)
    live.grace(now=45.0)  # e.g. a reconnect: nobody is silent before 45
    assert live.deadline("a") == 55.0  # max(last, floor) + ttl
    assert live.deadline("b") == 60.0  # heard after the floor: unchanged
    assert live.due(54.9) == []
    assert live.due(55.0) == ["a"]
    assert live.silent_for("a", 57.0) == 12.0
    assert live.silent_for("b", 57.0) == 7.0
    assert live.silent_for("ghost", 57.0) == 0.0


def test_grace_floor_only_rises() -> None:
    live: Liveness[str] = Liveness()
    live.grace(10.0)
    live.grace(5.0)
    assert live.floor == 10.0


def test_shorter_ttl_is_noticed_at_once() -> None:
    live: Liveness[str] = Liveness()
    live.track("a", 100.0, now=0.0)
    live.track("a", 2.0, now=1.0)  # re-announced with a shorter ttl
    assert live.deadline("a") == 3.0
    assert live.due(3.0) == ["a"]


def test_longer_ttl_postpones() -> None:
    live: Liveness[str] = Liveness()
    live.track("a", 2.0, now=0.0)
    live.track("a", 100.0, now=1.0)
    assert live.due(3.0) == []
    assert live.due(100.9) == []
    assert live.due(101.0) == ["a"]


def test_due_is_cheap_when_nothing_is_due() -> None:
    live: Liveness[int] = Liveness()
    for i in range(1000):
        live.track(i, 10.0, now=float(i))
    assert live.due(10.0) == [0]
    def filed() -> int:
        return sum(len(keys) for keys in live._wheel.values())

    before = filed()
    assert live.due(10.5) == [0]
    assert filed() <= before + 1  # no re-filing of the 999 others
    assert len(live.due(2000.0)) == 1000


def test_wheel_keeps_exact_deadlines_and_survives_clock_jumps() -> None:
    """Slots are 0.25 s wide, but a key is due exactly at its deadline, not at its slot's end; a key touched
    meanwhile is filed again, not lost; a jump of the clock far ahead visits only the filled slots."""
    live: Liveness[str] = Liveness()
    live.track("a", 1.0, now=0.0)  # deadline 1.0
    live.track("b", 1.1, now=0.0)  # deadline 1.1, same slot as 1.0
    assert live.due(0.99) == []
    assert live.due(1.0) == ["a"]
    assert live.due(1.05) == []  # a is filed again 0.25 s later (a failed expiry is retried); b not yet due
    assert sorted(live.due(1.25)) == ["a", "b"]  # both due now
    live.forget("a")
    assert live.due(1.6) == ["b"]
    live.touch("b", 1.1)  # alive again: deadline 2.2
    assert live.due(2.1) == []
    assert live.due(2.2) == ["b"]
    live.track("c", 5.0, now=3.0)
    assert sorted(live.due(1e9)) == ["b", "c"]
    assert sorted(live.due(1e9 + 1)) == ["b", "c"]


def test_ttls_other_than_the_common_one_are_kept_apart_and_exact() -> None:
    """Keys with the common ttl (the first one tracked) cost no entry of their own; the others keep theirs, also
    when a key moves from one to the other and back."""
    live: Liveness[str] = Liveness()
    for k in range(100):
        live.track(f"c{k}", 10.0, 0.0)
    live.track("short", 3.0, 0.0)
    live.track("long", 30.0, 0.0)
    assert len(live._ttl) == 2
    assert (live.deadline("c5"), live.deadline("short"), live.deadline("long")) == (10.0, 3.0, 30.0)
    assert live.due(3.0) == ["short"]
    live.track("c5", 2.0, 1.0)  # common -> shorter: noticed at once
    assert live.deadline("c5") == 3.0 and live.ttl("c5") == 2.0
    assert "c5" in live.due(3.5)
    live.track("c5", 10.0, 4.0)  # back to the common ttl: no entry of its own any more
    live.track("short", 10.0, 4.0)
    assert set(live._ttl) == {"long"}
    assert (live.deadline("c5"), live.deadline("short")) == (14.0, 14.0)
    live.forget("long")
    assert live._ttl == {} and live.deadline("long") is None
    assert live.late("c7", 9.0, 0.8) and not live.late("c7", 7.0, 0.8)
