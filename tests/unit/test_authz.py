"""The operator-mode configuration and JWTs: valid for the real nats-server, and exactly the tenant's own subjects
(checked with a NATS subject matcher, token by token, not by substring)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from services.natsserver import find_nats_server
from services.tenants.accounts import tenant_account_jwt, tenant_user_jwt, user_tag
from services.tenants.jwt import decode, format_creds, new_key, parse_creds
from services.tenants.operator import OperatorKeys
from services.tenants.registry import TenantRecord


def matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` is one token, ``>`` one or more trailing tokens."""
    pt, st = pattern.split("."), subject.split(".")
    for i, p in enumerate(pt):
        if p == ">":
            return len(st) > i
        if i >= len(st) or (p != "*" and p != st[i]):
            return False
    return len(pt) == len(st)


def test_the_matcher_is_a_nats_matcher() -> None:
    assert matches("a.*.c", "a.b.c") and not matches("a.*.c", "a.b.b.c") and not matches("a.*", "a")
    assert matches("a.>", "a.b.c") and not matches("a.>", "a") and not matches("a.b", "a.bb")


KEYS = OperatorKeys.generate("disco")
ACME = TenantRecord(name="acme", account=new_key("A").public, user=new_key("U").public)


def _imports(record: TenantRecord) -> list[dict[str, object]]:
    return list(decode(tenant_account_jwt(KEYS, record))["nats"]["imports"])


def test_a_tenant_imports_exactly_its_own_subjects() -> None:
    imports = _imports(ACME)
    services = [i["subject"] for i in imports if i["type"] == "service"]
    streams = [i["subject"] for i in imports if i["type"] == "stream"]
    assert sorted(services) == sorted(["disco.acme.announce.*", "disco.acme.hb.*", "disco.acme.bye.*",
                                       "disco.acme.resolve.*", "disco.acme.snapshot"])
    assert sorted(streams) == ["disco.acme.changes.>", "disco.acme.ctl.>", "disco.acme.live.>"]
    allowed = [str(s) for s in services + streams]
    for subject in ["disco.acme.announce.web", "disco.acme.resolve.api", "disco.acme.snapshot",
                    "disco.acme.changes.web", "disco.acme.ctl.web.i-1", "disco.acme.live.web.i-1"]:
        assert any(matches(p, subject) for p in allowed), subject
    for subject in ["disco.beta.resolve.web", "disco.beta.live.web.i-1", "disco.acme.dlq.g", "disco.acme",
                    "disco.acmex.resolve.web",
                    "$KV.disco_view.acme.web.x", "$JS.API.STREAM.INFO.DISCO_CHANGES_acme", "disco.*.resolve.web",
                    "disco.acme.resolve.web.extra", "_INBOX.acme.x"]:
        assert not any(matches(p, subject) for p in allowed), subject
    # the tenant's own changes are not a service import: its publishes there never reach DISCO
    assert not any(matches(p, "disco.acme.changes.web") for p in services)  # type: ignore[arg-type]
    assert not any(matches(p, "disco.acme.live.web.i-1") for p in services)  # type: ignore[arg-type]


def test_each_import_carries_an_activation_for_this_account_and_these_subjects_only() -> None:
    for imp in _imports(ACME):
        assert imp["account"] == KEYS.disco.public
        act = decode(str(imp["token"]))
        assert act["iss"] == KEYS.disco.public and act["sub"] == ACME.account
        assert act["nats"]["subject"] == imp["subject"] and act["nats"]["kind"] == imp["type"]


def test_disco_exports_every_kind_behind_a_token() -> None:
    exports = decode(KEYS.disco_jwt())["nats"]["exports"]
    assert all(e["token_req"] is True for e in exports)
    subjects = sorted(e["subject"] for e in exports)
    assert subjects == sorted(["disco.*.announce.*", "disco.*.hb.*", "disco.*.bye.*", "disco.*.resolve.*",
                               "disco.*.snapshot", "disco.*.changes.>", "disco.*.live.>", "disco.*.ctl.>"])
    # every import of a tenant falls under one export of the same type
    for imp in _imports(ACME):
        assert any(e["type"] == imp["type"] and matches(e["subject"], str(imp["subject"]).replace(">", "x"))
                   for e in exports)


def test_account_limits_and_revocations() -> None:
    record = ACME.model_copy(update={"max_connections": 3, "max_consumers": 5, "revoked": {"Uold": 123}})
    claims = decode(tenant_account_jwt(KEYS, record, iat=2_000_000_000))
    limits = claims["nats"]["limits"]
    assert limits["conn"] == 3 and limits["consumer"] == 5 and limits["leaf"] == 0
    assert limits["max_bytes_required"] is True and limits["disk_max_stream_bytes"] > 0
    assert limits["mem_storage"] == -1 and limits["disk_storage"] == -1  # never reserved (they fail silently)
    assert claims["nats"]["revocations"] == {"Uold": 123}
    assert claims["iat"] >= 2_000_000_000 and claims["iss"] == KEYS.signing.public
    assert claims["nats"]["signing_keys"] == [KEYS.tenant_signing.public]


def test_user_creds_name_the_tenant_and_round_trip() -> None:
    user = new_key("U")
    text = format_creds(tenant_user_jwt(KEYS, ACME, user.public), user.seed)
    token, seed = parse_creds(text)
    assert seed == user.seed
    claims = decode(token)
    assert claims["sub"] == user.public and claims["nats"]["issuer_account"] == ACME.account
    assert claims["nats"]["tags"] == [user_tag("acme")]
    assert sorted(claims["nats"]["pub"]["deny"]) == ["disco.acme.changes.>", "disco.acme.ctl.>", "disco.acme.live.>"]
    relay = decode(parse_creds(format_creds(tenant_user_jwt(KEYS, ACME, user.public, relay=True), user.seed))[0])
    assert sorted(relay["nats"]["pub"]["deny"]) == ["disco.acme.ctl.>", "disco.acme.live.>"]
    with pytest.raises(ValueError):
        parse_creds("not creds")


def test_the_operator_configuration_is_valid_for_nats_server(tmp_path: Path) -> None:
    conf = tmp_path / "server.conf"
    conf.write_text('listen: "127.0.0.1:4999"\njetstream { store_dir: "js" }\n'
                    + KEYS.server_config(tmp_path / "jwt"))
    out = subprocess.run([find_nats_server(), "-c", str(conf), "-t"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr


def test_keys_file_round_trip_and_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    KEYS.save(path)
    assert OperatorKeys.load(path) == KEYS
    path.write_text('{"operator": "nope"}')
    from bus.errors import BadRequest

    with pytest.raises(BadRequest, match="not a disco keys file"):
        OperatorKeys.load(path)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["tenant", "add", "Bad_Name"], "invalid tenant name"),
        (["tenant", "rm", "--", "-x-"], "invalid tenant name"),
        (["tenant", "ls", "--creds", "/nonexistent/admin.creds"], "does not exist"),
        (["tenant", "render-authz"], "--keys"),
    ],
)
def test_tenant_cli_errors_are_one_line(args: list[str], needle: str) -> None:
    out = subprocess.run([sys.executable, "-m", "services", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def test_secrets_replace_whatever_was_there_with_a_fresh_0600_file(tmp_path: Path) -> None:
    import os
    import stat

    from services.tenants.creds import write_secret

    target = tmp_path / "acme.creds"
    target.write_text("old")
    target.chmod(0o644)
    write_secret(target, "new")
    assert target.read_text() == "new" and stat.S_IMODE(target.stat().st_mode) == 0o600
    # a symlink planted where the secret goes is replaced, not followed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("untouched")
    link = tmp_path / "link.creds"
    os.symlink(elsewhere, link)
    write_secret(link, "secret")
    assert not link.is_symlink() and link.read_text() == "secret" and elsewhere.read_text() == "untouched"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_an_auth_dir_keeps_its_prefix(tmp_path: Path) -> None:
    from bus.errors import BadRequest
    from services.tenants.hook import init_operator

    keys = init_operator(tmp_path / "auth", "disco")
    assert init_operator(tmp_path / "auth", "disco") == keys  # created once
    with pytest.raises(BadRequest, match="prefix 'disco'"):
        init_operator(tmp_path / "auth", "other")
