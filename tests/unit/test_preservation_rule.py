"""Self-preservation's decision (``Admission.may_expire``) at its boundaries, with explicit times: how many silent
instances make a mass silence, and what happens after the pause."""

from __future__ import annotations

from bus.models import Instance
from services.aggregator.admission import Admission, SelfPreservation
from services.aggregator.liveness import Liveness
from services.aggregator.metrics import Metrics
from services.aggregator.view import LiveView

Key = tuple[str, str, str]
TTL = 10.0


def setup(n: int, share: float = 0.5, min_count: int = 3) -> tuple[Admission, Liveness[Key], list[Key]]:
    view = LiveView()
    live: Liveness[Key] = Liveness()
    keys = []
    for k in range(n):
        inst = Instance(id=f"i{k}", address="10.0.0.1", port=80, ttl=TTL)
        view.put("acme", "svc", inst, k + 1)
        live.track(("acme", "svc", inst.id), TTL, 0.0)
        keys.append(("acme", "svc", inst.id))
    adm = Admission(view, Metrics(), preservation=SelfPreservation(share=share, min_count=min_count, max_pause=60.0))
    return adm, live, keys


def silence(live: Liveness[Key], keys: list[Key], alive: list[Key], now: float) -> list[Key]:
    """``alive`` heartbeat at ``now``; the rest stay silent since 0. The keys due at ``now``."""
    for k in alive:
        live.touch(k, now)
    return [k for k in live.due(now) if k not in alive]


def test_exactly_min_count_silent_over_the_share_pauses_expiry() -> None:
    adm, live, keys = setup(4)
    due = silence(live, keys, keys[3:], 11.0)
    assert len(due) == 3  # 3 >= min_count and 3 > 0.5 * 4
    assert list(adm.may_expire("acme", due, live, 11.0)) == []
    assert "acme" in adm.paused and adm.metrics.get("self_preservation", "acme") == 1


def test_fewer_than_min_count_silent_expire_even_when_most() -> None:
    adm, live, keys = setup(2)
    due = silence(live, keys, [], 11.0)
    assert list(adm.may_expire("acme", due, live, 11.0)) == due  # 2 < min_count: a small tenant is not paused


def test_exactly_the_share_silent_is_not_a_mass_silence() -> None:
    adm, live, keys = setup(6)
    due = silence(live, keys, keys[3:], 11.0)
    assert len(due) == 3  # 3 of 6 is the share, not over it
    assert list(adm.may_expire("acme", due, live, 11.0)) == due
    assert "acme" not in adm.paused


def test_a_pause_ends_when_heartbeats_return_and_drains_after_max_pause() -> None:
    adm, live, keys = setup(4)
    due = silence(live, keys, keys[3:], 11.0)
    assert list(adm.may_expire("acme", due, live, 11.0)) == []
    assert list(adm.may_expire("acme", due, live, 70.0)) == []  # 59 s into the pause
    assert list(adm.may_expire("acme", due, live, 71.0)) == due  # max_pause reached: a real mass death
    assert adm.metrics.get("mass_expiry", "acme") == 1
    assert "acme" not in adm.paused
