"""Health checks of the agent, one module per type (``http``, ``tcp``, ``exec``) over a shared runner."""

from __future__ import annotations

from services.agent.checks.base import Health, Outcome, Probe
from services.agent.checks.exec import ExecProbe
from services.agent.checks.http import HttpProbe
from services.agent.checks.runner import CheckRunner
from services.agent.checks.tcp import TcpProbe
from services.agent.config import CheckDef

__all__ = ["CheckRunner", "ExecProbe", "Health", "HttpProbe", "Outcome", "Probe", "TcpProbe", "make_probe"]


def make_probe(check: CheckDef) -> Probe:
    """The probe a check definition describes."""
    if check.http is not None:
        return HttpProbe(check.http, expected=check.status, method=check.method)
    if check.tcp is not None:
        host, port = check.target
        return TcpProbe(host, port)
    assert check.exec_ is not None
    return ExecProbe(check.exec_, expected=check.exit_code)
