"""The read path's breaker (services/aggregator/reads.py) with an explicit clock: it trips past its threshold of
drops within one window, not for drops spread over several, pauses 4 s, doubles while the flood comes back, caps
at 30 s, and starts again from 4 s after a calm spell."""

from __future__ import annotations

from services.aggregator.readlanes import PAUSE_MAX, PAUSE_MIN, Breaker


def test_trips_past_the_threshold_within_a_window() -> None:
    b = Breaker(threshold=3)
    assert [b.drop(t) for t in (0.0, 0.1, 0.2)] == [False, False, True]
    assert b.pause == PAUSE_MIN == 4.0 and b.until == 4.2
    assert b.paused(1.0) and not b.paused(4.2)
    assert not any(b.drop(t) for t in (0.3, 0.4, 0.5, 0.6, 0.7))  # paused: nothing more to trip


def test_drops_spread_over_windows_do_not_trip() -> None:
    b = Breaker(threshold=3)
    assert not any(b.drop(t) for t in (0.0, 0.5, 1.6, 2.1, 3.2, 3.7))  # never 3 within one second
    assert b.pause == 0.0 and not b.paused(4.0)


def test_a_returning_flood_doubles_the_pause_up_to_the_cap_and_a_calm_spell_resets_it() -> None:
    b = Breaker(threshold=2)
    now, pauses = 0.0, []
    for _ in range(6):
        assert not b.drop(now) and b.drop(now + 0.01)
        pauses.append(b.pause)
        now = b.until + 0.1  # the flood is back as soon as the path reopens
    assert pauses == [4.0, 8.0, 16.0, PAUSE_MAX, PAUSE_MAX, PAUSE_MAX]
    later = b.until + 2 * PAUSE_MAX + 1
    assert not b.drop(later) and b.drop(later + 0.01)
    assert b.pause == PAUSE_MIN
