"""The announce-rate token bucket with a clock the test advances: burst, refill, the cap after idling, a rate
change, and the admission check built on it."""

from __future__ import annotations

import pytest

from bus.errors import RateLimited
from services.aggregator.admission import Admission, TenantLimits, TokenBucket
from services.aggregator.metrics import Metrics
from services.aggregator.view import LiveView


class Clock:
    """Seconds that move only when the test says so."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def takes(bucket: TokenBucket, n: int) -> int:
    """How many of ``n`` immediate takes succeed."""
    return sum(bucket.take() for _ in range(n))


def test_a_new_bucket_allows_its_burst_then_refuses() -> None:
    b = TokenBucket(5.0, clock=Clock())
    assert takes(b, 20) == 5
    assert not b.take()


def test_the_burst_defaults_to_one_second_of_rate_and_at_least_one_token() -> None:
    assert takes(TokenBucket(3.0, clock=Clock()), 10) == 3
    assert takes(TokenBucket(0.1, clock=Clock()), 10) == 1
    assert takes(TokenBucket(2.0, burst=7.0, clock=Clock()), 10) == 7


def test_tokens_refill_at_the_rate() -> None:
    clock = Clock()
    b = TokenBucket(4.0, clock=clock)
    takes(b, 4)
    clock.advance(0.25)
    assert takes(b, 5) == 1
    clock.advance(0.5)
    assert takes(b, 5) == 2
    clock.advance(0.1)  # 0.4 of a token: not enough
    assert not b.take()
    clock.advance(0.15)  # 0.4 + 0.6 = one token (the fraction was kept)
    assert b.take()


def test_idling_saves_up_no_more_than_the_burst() -> None:
    clock = Clock()
    b = TokenBucket(10.0, clock=clock)
    takes(b, 10)
    clock.advance(3600.0)  # an hour quiet
    assert takes(b, 1000) == 10
    clock.advance(0.5)
    assert takes(b, 1000) == 5


def test_an_explicit_now_overrides_the_clock() -> None:
    b = TokenBucket(1.0, now=0.0, clock=Clock(1e9))
    assert b.take(now=0.0) and not b.take(now=0.5) and b.take(now=1.5)


def test_a_clock_going_nowhere_never_refills() -> None:
    b = TokenBucket(100.0, clock=Clock())
    takes(b, 100)
    assert takes(b, 1000) == 0


@pytest.fixture
def admission() -> tuple[Admission, Clock]:
    adm = Admission(LiveView(), Metrics())
    clock = Clock()
    adm.bucket_clock = clock
    return adm, clock


def accepted(adm: Admission, tenant: str, n: int) -> int:
    ok = 0
    for _ in range(n):
        try:
            adm.check_announce(tenant)
            ok += 1
        except RateLimited as exc:
            assert "announce rate" in str(exc)
    return ok


def test_admission_refuses_over_the_rate_and_counts_it(admission: tuple[Admission, Clock]) -> None:
    adm, clock = admission
    adm.set_limits("acme", TenantLimits(announce_rate=2.0))
    assert accepted(adm, "acme", 5) == 2
    assert adm.metrics.get("rate_limited", "acme") == 3
    clock.advance(1.0)
    assert accepted(adm, "acme", 5) == 2
    assert accepted(adm, "other", 50) == 50  # no limit of its own, unlimited defaults


def test_a_rate_change_takes_effect_for_the_next_announce(admission: tuple[Admission, Clock]) -> None:
    adm, clock = admission
    adm.set_limits("acme", TenantLimits(announce_rate=1.0))
    assert accepted(adm, "acme", 5) == 1
    adm.set_limits("acme", TenantLimits(announce_rate=20.0))  # raised: a new bucket with the new burst
    assert accepted(adm, "acme", 50) == 20
    clock.advance(0.5)
    assert accepted(adm, "acme", 50) == 10
    adm.set_limits("acme", TenantLimits(announce_rate=0.5))  # lowered
    clock.advance(100.0)
    assert accepted(adm, "acme", 5) == 1
    adm.set_limits("acme", None)  # back to the (unlimited) defaults
    assert accepted(adm, "acme", 100) == 100
