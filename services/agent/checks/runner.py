"""Running one check on its schedule: a probe every ``interval`` seconds, bounded by ``timeout``, its outcomes
counted by :class:`~.base.Health`; each status change is handed to a callback (which the agent turns into a
heartbeat carrying the new status)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio

from bus.models import Status
from services.agent.checks.base import Health, Outcome, Probe

__all__ = ["CheckRunner"]

log = logging.getLogger("disco.agent")

OnChange = Callable[[Status, Outcome], Awaitable[None]]
OnRun = Callable[[str, bool], None]


class CheckRunner:
    """Runs ``probe`` until cancelled, the first probe at once. ``on_change(status, outcome)`` is awaited after
    every status change; ``on_run(kind, ok)`` is told every result (metrics)."""

    def __init__(
        self, probe: Probe, health: Health, *, interval: float, timeout: float, on_change: OnChange,
        on_run: OnRun | None = None,
    ) -> None:
        self.probe = probe
        self.health = health
        self.interval = interval
        self.timeout = timeout
        self.on_change = on_change
        self.on_run = on_run
        self.last: Outcome | None = None

    async def check_once(self) -> Outcome:
        with anyio.move_on_after(self.timeout) as scope:
            outcome = await self.probe.probe()
        if scope.cancelled_caught:
            outcome = Outcome(False, f"timed out after {self.timeout:g} s")
        self.last = outcome
        if self.on_run is not None:
            self.on_run(self.probe.kind, outcome.ok)
        changed = self.health.record(outcome.ok)
        if changed is not None:
            await self.on_change(changed, outcome)
        return outcome

    async def run(self) -> None:
        try:
            while True:
                started = anyio.current_time()
                await self.check_once()
                await anyio.sleep(max(0.0, self.interval - (anyio.current_time() - started)))
        finally:
            with anyio.CancelScope(shield=True):
                await self.probe.aclose()
