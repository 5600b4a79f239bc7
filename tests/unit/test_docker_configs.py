"""The NATS configs shipped in docker/ are valid for the pinned nats-server (checked with its own -t)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from services.natsserver import find_nats_server

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "docker" / "nats").glob("*.conf"))


@pytest.mark.parametrize("conf", CONFIGS, ids=[c.name for c in CONFIGS])
def test_nats_config_is_valid(conf: Path) -> None:
    out = subprocess.run([find_nats_server(), "-c", str(conf), "-t"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "is valid" in out.stdout + out.stderr


def test_there_are_three_nodes() -> None:
    assert [c.name for c in CONFIGS] == ["nats-1.conf", "nats-2.conf", "nats-3.conf"]
