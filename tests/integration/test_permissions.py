"""A request the NATS server refuses fails at once with PermissionDenied naming the subject, not after a timeout;
a tenant's .creds file names its tenant, and a call for another tenant is refused before it leaves the process."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from bus.client import resolve
from bus.connection import connect
from bus.errors import ConnectionFailed, PermissionDenied
from services.natsserver import NatsServer

pytestmark = pytest.mark.integration

AUTHZ = """
authorization {
  users = [
    { user: "acme", password: "acme-secret",
      permissions: {
        publish: { allow: ["disco.acme.>"] }
        subscribe: { allow: ["_INBOX.acme.>", "disco.acme.changes.*"] }
      }
    }
  ]
}
"""


async def test_a_forbidden_request_fails_at_once(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats", extra_config=AUTHZ)
    server.start()
    try:
        conn = await connect(server.url, tenant="acme", user="acme", password="acme-secret")
        try:
            started = time.monotonic()
            with pytest.raises(PermissionDenied, match=re.escape("disco.globex.resolve.billing")):
                await resolve(conn, "billing", tenant="globex", timeout=5)
            assert time.monotonic() - started < 2.5  # the server's refusal, not the 5 s timeout
            # known now: the next one does not even leave the process
            with pytest.raises(PermissionDenied):
                await resolve(conn, "billing", tenant="globex", timeout=5)
        finally:
            await conn.close()
    finally:
        server.stop()


async def test_a_json_creds_file_sets_user_and_tenant(tmp_path: Path) -> None:
    creds = tmp_path / "acme.creds.json"
    creds.write_text('{"tenant": "acme", "user": "acme", "password": "acme-secret"}')
    server = NatsServer(tmp_path / "nats", extra_config=AUTHZ)
    server.start()
    try:
        conn = await connect(server.url, creds=creds)
        try:
            assert conn.tenant == "acme" and conn.restricted
            with pytest.raises(PermissionDenied):
                await resolve(conn, "billing", tenant="globex", timeout=5)
        finally:
            await conn.close()
        bad = tmp_path / "bad.json"
        bad.write_text('{"user": 1}')
        with pytest.raises(ConnectionFailed, match="user"):
            await connect(server.url, creds=bad)
        wrong = tmp_path / "wrong.json"
        wrong.write_text('{"user": "acme", "password": "nope"}')
        with pytest.raises(ConnectionFailed, match=r"(?i)authorization"):
            await connect(server.url, creds=wrong)
    finally:
        server.stop()


# -- operator mode: a tenant's standard .creds file -----------------------------------------------------------------


async def test_a_tenant_creds_file_names_its_tenant_and_refuses_others_locally(
    operator_system, tmp_path: Path
) -> None:
    sys_ = operator_system
    creds = await sys_.add("acme")
    conn = await sys_.connect(creds)
    assert conn.tenant == "acme" and conn.creds_tenant == "acme" and conn.restricted
    started = time.monotonic()
    with pytest.raises(PermissionDenied, match="credentials are for tenant 'acme', not 'globex'"):
        await resolve(conn, "billing", tenant="globex", timeout=5)
    assert time.monotonic() - started < 2.5  # refused here, not by a timeout
    with pytest.raises(PermissionDenied, match="tenant 'acme'"):
        await connect(sys_.server.url, prefix=sys_.prefix, creds=creds, tenant="globex")
    # the admin's .creds names no tenant; a file that is neither form is refused in one line
    admin = await connect(sys_.server.url, prefix=sys_.prefix, creds=sys_.admin_creds)
    assert admin.tenant is None and admin.creds_tenant is None
    await admin.close()
    junk = tmp_path / "junk.creds"
    junk.write_text("hello")
    with pytest.raises(ConnectionFailed, match=r"neither a NATS \.creds file"):
        await connect(sys_.server.url, creds=junk)
