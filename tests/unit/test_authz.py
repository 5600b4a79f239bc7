"""The generated authorization: exactly the tenant's own subjects, valid for the real nats-server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from services.natsserver import find_nats_server
from services.tenants.authz import render_authz, tenant_permissions
from services.tenants.registry import TenantRecord, hash_password


def test_a_tenant_may_publish_and_subscribe_only_its_own_subjects() -> None:
    perms = tenant_permissions("acme", "disco")
    pub = perms["publish"]["allow"]  # type: ignore[index]
    sub = perms["subscribe"]["allow"]  # type: ignore[index]
    assert all("acme" in s for s in pub) and all("acme" in s for s in sub)
    assert "disco.acme.changes.*" not in pub and not any(".ctl." in s for s in pub)  # aggregators only
    assert "disco.acme.changes.*" in sub and "_INBOX.acme.>" in sub
    assert "$JS.ACK.DISCO_CHANGES_acme.>" in pub


def test_the_rendered_authorization_is_valid_for_nats_server(tmp_path: Path) -> None:
    tenants = [TenantRecord(name=n, user=f"tenant-{n}", password_hash=hash_password("pw")) for n in ("a", "b")]
    (tmp_path / "authz.conf").write_text(render_authz(tenants, hash_password("admin"), "disco"))
    conf = tmp_path / "server.conf"
    conf.write_text('listen: "127.0.0.1:4999"\ninclude "authz.conf"\n')
    out = subprocess.run([find_nats_server(), "-c", str(conf), "-t"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["tenant", "add", "Bad_Name"], "invalid tenant name"),
        (["tenant", "rm", "--", "-x-"], "invalid tenant name"),
        (["tenant", "ls", "--creds", "/nonexistent/admin.creds.json"], "does not exist"),
    ],
)
def test_tenant_cli_errors_are_one_line(args: list[str], needle: str) -> None:
    out = subprocess.run([sys.executable, "-m", "services", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], out.stderr
    assert "Traceback" not in out.stderr
