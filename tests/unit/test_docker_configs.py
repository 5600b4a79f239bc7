"""The NATS configs shipped in docker/ are valid for the pinned nats-server (checked with its own -t).

The operator-mode configs (docker/nats/auth/) include ``auth/operator.conf``, which the init service of
docker/compose.auth.yaml generates at start; here it is generated the same way (the project's own code, fresh keys)
into a temporary directory beside a copy of each node's config, and the pair is validated."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from bus.subjects import DEFAULT_PREFIX
from services.natsserver import find_nats_server
from services.tenants import init_operator

DOCKER = Path(__file__).resolve().parents[2] / "docker"
CONFIGS = sorted((DOCKER / "nats").glob("*.conf"))
AUTH_CONFIGS = sorted((DOCKER / "nats" / "auth").glob("*.conf"))


def _check(conf: Path) -> None:
    out = subprocess.run([find_nats_server(), "-c", str(conf), "-t"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "is valid" in out.stdout + out.stderr


@pytest.mark.parametrize("conf", CONFIGS, ids=[c.name for c in CONFIGS])
def test_nats_config_is_valid(conf: Path) -> None:
    _check(conf)


def test_there_are_three_nodes() -> None:
    assert [c.name for c in CONFIGS] == ["nats-1.conf", "nats-2.conf", "nats-3.conf"]
    assert [c.name for c in AUTH_CONFIGS] == ["nats-1.conf", "nats-2.conf", "nats-3.conf"]


@pytest.mark.parametrize("conf", AUTH_CONFIGS, ids=[f"auth-{c.name}" for c in AUTH_CONFIGS])
def test_operator_mode_config_is_valid_with_generated_authz(conf: Path, tmp_path: Path) -> None:
    """What the init service runs (``disco tenant init`` + ``render-authz``), done with the same functions."""
    keys = init_operator(tmp_path / "auth", DEFAULT_PREFIX)
    (tmp_path / "auth" / "operator.conf").write_text(keys.server_config(tmp_path / "jwt"))
    node = tmp_path / "nats.conf"
    shutil.copy(conf, node)
    _check(node)
    text = conf.read_text()
    assert 'include "auth/operator.conf"' in text
    assert "jetstream" in text  # operator mode keeps JetStream (the DISCO account's JWT enables it)


def test_without_generated_authz_the_operator_config_is_refused(tmp_path: Path) -> None:
    """The include is real: a node config without its generated operator.conf is not valid."""
    node = tmp_path / "nats.conf"
    shutil.copy(AUTH_CONFIGS[0], node)
    out = subprocess.run([find_nats_server(), "-c", str(node), "-t"], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0


@pytest.mark.parametrize("name", ["compose.yaml", "compose.auth.yaml"])
def test_compose_files_mount_the_shipped_configs_and_check_health(name: str) -> None:
    """Every config a compose file mounts exists, and every daemon others wait for has a health check."""
    compose = yaml.safe_load((DOCKER / name).read_text())
    services = compose["services"]
    for svc in services.values():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]  # a named volume, the auth dir (${DISCO_AUTH_DIR:-./auth}) or a file
            if source.startswith("./"):
                assert (DOCKER / source).is_file(), volume
    waited = {dep for svc in services.values() for dep, cond in svc.get("depends_on", {}).items()
              if cond.get("condition") == "service_healthy"}
    assert waited >= {"nats-1", "nats-2", "nats-3", "aggregator-1"}
    for dep in waited:
        assert "healthcheck" in services[dep], dep
    for daemon in ("dns", "gateway", "echo", "aggregator-1", "aggregator-2"):
        assert "healthcheck" in services[daemon], daemon
