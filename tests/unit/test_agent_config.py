"""The agent's YAML file: what it accepts, and one clear message naming the line for what it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from bus.models import Status
from services.agent.checks import Health
from services.agent.config import ConfigError, load_config, parse_config

GOOD = """\
tenant: acme
services:
  - service: web
    address: 127.0.0.1
    port: 8080
    tags: [v2, eu]
    meta: {build: 42}
    weight: 200
    zone: eu-1
    ttl: 6
    check:
      http: http://127.0.0.1:8080/health
      status: 204
      interval: 1
      failures_before_critical: 3
  - service: db
    id: db-1
    tenant: other
    address: db.example.com
    port: 5432
    check: {tcp: "127.0.0.1:5432", timeout: 0.5}
  - service: cron
    id: cron-1
    address: 10.0.0.9
    port: 1
    check:
      exec: [test, -f, /tmp/ok]
      exit_code: 1
"""


def test_a_good_file_gives_every_definition_with_its_tenant_and_id() -> None:
    defs = parse_config(GOOD).definitions(None)
    assert list(defs) == [("acme", "web", "web-127-0-0-1-8080"), ("other", "db", "db-1"), ("acme", "cron", "cron-1")]
    web = defs[("acme", "web", "web-127-0-0-1-8080")]
    inst = web.instance(Status.critical, 5)
    assert (inst.tags, inst.meta, inst.weight, inst.zone, inst.ttl, inst.status) == (
        ("v2", "eu"), {"build": "42"}, 200, "eu-1", 6.0, Status.critical)
    assert web.check is not None and (web.check.kind, web.check.status, web.check.failures_before_critical) == (
        "http", 204, 3)
    db = defs[("other", "db", "db-1")].check
    assert db is not None and db.kind == "tcp" and db.target == ("127.0.0.1", 5432) and db.timeout == 0.5
    cron = defs[("acme", "cron", "cron-1")].check
    assert cron is not None and cron.exec_ == ("test", "-f", "/tmp/ok") and cron.exit_code == 1


def test_the_default_tenant_comes_from_the_command_line_when_the_file_has_none() -> None:
    text = GOOD.replace("tenant: acme\n", "")
    assert ("cli", "web", "web-127-0-0-1-8080") in parse_config(text, default_tenant="cli").definitions("cli")


@pytest.mark.parametrize(("old", "new", "line", "words"), [
    ("port: 8080\n", "port: 99999\n", 5, "services[0].port: Input should be less than or equal to 65535"),
    ("interval: 1", "interval: -1", 14, "services[0].check.interval"),
    ("interval: 1", "intervl: 1", 14, "services[0].check.intervl: Extra inputs are not permitted"),
    ("    check: {tcp", "    check: {exit_code: 3, tcp", 21, "exit_code belongs to an exec check"),
    ("      status: 204\n", "      status: 204\n      tcp: a:1\n", 12, "exactly one of http, tcp, exec"),
    ("service: db", "service: DB", 16, "invalid service name 'DB'"),
    ("address: db.example.com", "address: not_a host", 19, "services[1].address: must be an IP address"),
    ("tenant: other", "tenant: Other!", 18, "services[1].tenant: invalid tenant name"),
    ("tcp: \"127.0.0.1:5432\"", "tcp: nope", 21, "services[1].check.tcp: expected host:port"),
    ("http: http://127.0.0.1:8080/health", "http: ftp://x", 12, "expected an http:// or https:// URL"),
    ("service: cron\n    id: cron-1", "service: db\n    id: db-1\n    tenant: other", 22,
     "instance db/db-1 of tenant other is already defined at line 16"),
    ("weight: 200", "weight: 0", 8, "services[0].weight: Input should be greater than or equal to 1"),
    ("    port: 1\n", "    port: 1\n  oops\n", 27, "invalid YAML"),
])
def test_a_broken_file_is_one_message_naming_the_line(old: str, new: str, line: int, words: str) -> None:
    assert old in GOOD
    with pytest.raises(ConfigError) as info:
        parse_config(GOOD.replace(old, new, 1), "agent.yaml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"agent.yaml:{line}: "), message
    assert words in message, message


def test_no_tenant_anywhere_and_wrong_shapes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^f:2: services\[0\]: no tenant"):
        parse_config(GOOD.replace("tenant: acme\n", ""), "f")
    with pytest.raises(ConfigError, match=r"^f:1: expected a mapping"):
        parse_config("- service: web\n", "f")
    assert parse_config("", "f").services == ()
    with pytest.raises(ConfigError, match="cannot read it"):
        load_config(tmp_path / "missing.yaml")


def test_health_counts_consecutive_results() -> None:
    h = Health(Status.critical, failures=2, successes=3)
    assert [h.record(True), h.record(True), h.record(False), h.record(True), h.record(True)] == [None] * 5
    assert h.record(True) is Status.passing
    assert [h.record(False), h.record(True), h.record(False)] == [None, None, None]
    assert h.record(False) is Status.critical
    assert h.record(False) is None
