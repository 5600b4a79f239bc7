"""What every check type shares: a probe's outcome, and the health state that counts outcomes into a status.

A probe answers one question once ("is it healthy now?") and never raises for an unhealthy target: it returns a
failed :class:`Outcome` with the reason. Timeouts are the runner's job (:mod:`.runner`), not the probe's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bus.models import Status

__all__ = ["Health", "Outcome", "Probe"]


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    detail: str


class Probe(Protocol):
    kind: str

    async def probe(self) -> Outcome:
        """Check once; a failure is a returned Outcome, never an exception."""
        ...

    async def aclose(self) -> None:
        """Release what the probe holds (an HTTP session)."""
        ...


class Health:
    """Consecutive results into a status, like Consul's ``failures_before_critical`` and
    ``success_before_passing``: ``failures`` failures in a row make a non-critical instance critical,
    ``successes`` successes in a row make a non-passing one passing."""

    def __init__(self, status: Status, *, failures: int = 1, successes: int = 1) -> None:
        self.status = status
        self.failures_needed = failures
        self.successes_needed = successes
        self.failures = 0
        self.successes = 0

    def record(self, ok: bool) -> Status | None:
        """Count one result; the new status when it changed, else None."""
        if ok:
            self.failures = 0
            self.successes += 1
            if self.status is not Status.passing and self.successes >= self.successes_needed:
                self.status = Status.passing
                return self.status
        else:
            self.successes = 0
            self.failures += 1
            if self.status is not Status.critical and self.failures >= self.failures_needed:
                self.status = Status.critical
                return self.status
        return None
