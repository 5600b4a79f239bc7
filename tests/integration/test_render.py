"""``disco render``: the real command against the session NATS server and an aggregator of the test's own prefix,
and the :class:`~services.render.Renderer` loop in-process for coalescing and command counting."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import anyio
import pytest

from bus.client import request
from bus.codec import encode
from bus.connection import Connection
from bus.models import AnnounceAck, Bye, Instance
from services.natsserver import NatsServer
from services.render import Renderer, TemplateSpec, Wait
from services.render.output import write_atomic
from tests.conftest import eventually
from tests.procs import ENV, run_disco

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "scripts" / "examples"


@pytest.fixture
def conn_args(nats_server: NatsServer, prefix: str) -> list[str]:
    return ["--nats", nats_server.url, "--prefix", prefix]


async def register(conn: Connection, service: str, iid: str, port: int, *, address: str = "10.0.0.1",
                   ttl: float = 60.0, **fields: Any) -> int:
    inst = Instance(id=iid, address=address, port=port, seq=1, ttl=ttl, **fields)
    ack = await request(conn, conn.subjects.announce("acme", service), encode(inst), AnnounceAck)
    return ack.revision


async def bye(conn: Connection, service: str, iid: str) -> None:
    await request(conn, conn.subjects.bye("acme", service), encode(Bye(id=iid)), AnnounceAck)


async def test_shipped_examples_render_with_once(
    aggregator: Any, client: Connection, conn_args: list[str], tmp_path: Path
) -> None:
    await register(client, "web", "w2", 8002, address="10.0.0.2", weight=300)
    await register(client, "web", "w1", 8001, address="10.0.0.1")
    await register(client, "web", "w6", 8006, address="fd00::6")
    await register(client, "web", "sick", 8009, status="critical")
    await register(client, "api", "a1", 9001, address="10.0.1.1", weight=900)
    env = {**ENV, "DISCO_RENDER_SERVICE": "web"}
    res = await run_disco("render", "--tenant", "acme", *conn_args, "--once",
                      "--template", f"{EXAMPLES / 'nginx-upstreams.conf.j2'}:{tmp_path / 'up.conf'}",
                      "--template", f"{EXAMPLES / 'haproxy-backends.cfg.j2'}:{tmp_path / 'haproxy.cfg'}",
                      "--template", f"{EXAMPLES / 'hostports.txt.j2'}:{tmp_path / 'hosts.txt'}", env=env)
    assert res.returncode == 0, res.stderr.decode()
    assert (tmp_path / "hosts.txt").read_text() == "10.0.0.1:8001\n10.0.0.2:8002\n[fd00::6]:8006\n"
    nginx = (tmp_path / "up.conf").read_text()
    assert "upstream api {\n    server 10.0.1.1:9001 weight=900;  # a1\n}\n" in nginx
    assert ("upstream web {\n    server 10.0.0.1:8001 weight=100;  # w1\n    server 10.0.0.2:8002 weight=300;  # w2\n"
            "    server [fd00::6]:8006 weight=100;  # w6\n}\n") in nginx
    assert "sick" not in nginx
    haproxy = (tmp_path / "haproxy.cfg").read_text()
    assert "backend api\n    balance roundrobin\n    server a1 10.0.1.1:9001 weight 256 check\n" in haproxy
    assert "    server w2 10.0.0.2:8002 weight 256 check\n" in haproxy   # HAProxy's maximum weight
    assert "    server w1 10.0.0.1:8001 weight 100 check\n" in haproxy


async def test_once_with_a_failing_template_keeps_the_last_good_file_and_exits_1(
    aggregator: Any, client: Connection, conn_args: list[str], tmp_path: Path
) -> None:
    await register(client, "web", "w1", 8001)
    tmpl = tmp_path / "bad.j2"
    tmpl.write_text("# header\n{% for i in service('web') %}\n{{ i.nosuchfield }}\n{% endfor %}\n")
    dest = tmp_path / "out.txt"
    dest.write_text("last good\n")
    res = await run_disco("render", "--tenant", "acme", *conn_args, "--once", "--template",
                      f"{tmpl}:{dest}:touch ran", cwd=tmp_path)
    assert res.returncode == 1
    err = res.stderr.decode()
    assert f"{tmpl}:3: UndefinedError" in err, err
    assert "disco: error: 1 of 1 template(s) failed" in err
    assert "Traceback" not in err
    assert dest.read_text() == "last good\n"
    assert not (tmp_path / "ran").exists()


async def test_a_syntax_error_is_a_usage_error_naming_the_line(conn_args: list[str], tmp_path: Path) -> None:
    tmpl = tmp_path / "syntax.j2"
    tmpl.write_text("ok\n\n{% for x in %}\n")
    res = await run_disco("render", "--tenant", "acme", *conn_args, "--template", f"{tmpl}:{tmp_path / 'o'}")
    assert res.returncode == 2
    lines = res.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("disco: error: ") and f"{tmpl}:3: syntax error" in lines[0]
    for bad in (["--template", "nocolon"], ["--template", f"{tmpl}:x", "--wait", "5:1"]):
        res = await run_disco("render", "--tenant", "acme", *conn_args, *bad)
        assert res.returncode == 2 and res.stderr.decode().startswith("disco: error: ")


async def test_dry_run_prints_and_writes_nothing(
    aggregator: Any, client: Connection, conn_args: list[str], tmp_path: Path
) -> None:
    await register(client, "web", "w1", 8001)
    dest = tmp_path / "hosts.txt"
    res = await run_disco("render", "--tenant", "acme", *conn_args, "--once", "--dry-run", "--template",
                      f"{EXAMPLES / 'hostports.txt.j2'}:{dest}:touch {tmp_path / 'ran'}")
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout.decode() == f"> {dest}\n10.0.0.1:8001\n"
    assert not dest.exists()
    assert not (tmp_path / "ran").exists()


def test_atomic_write_keeps_the_mode_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    dest = tmp_path / "conf"
    dest.write_text("old")
    os.chmod(dest, 0o640)
    write_atomic(dest, "new\n")
    assert dest.read_text() == "new\n"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640
    write_atomic(tmp_path / "sub" / "fresh", "x")
    assert (tmp_path / "sub" / "fresh").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf", "sub"]


async def test_a_burst_of_50_announces_is_a_handful_of_rounds_and_commands_only_on_change(
    aggregator: Any, client: Connection, tmp_path: Path
) -> None:
    dest = tmp_path / "hosts.txt"
    log_file = tmp_path / "commands.log"
    spec = TemplateSpec(EXAMPLES / "hostports.txt.j2", dest, f"echo changed >> {log_file}")
    renderer = Renderer(client, [spec], wait=Wait(0.3, 3.0))

    def commands() -> int:
        return len(log_file.read_text().splitlines()) if log_file.exists() else 0

    async with anyio.create_task_group() as tg:
        first = await tg.start(renderer.run)
        assert first.changed == [spec] and dest.read_text() == ""   # a new, empty file: one command
        assert commands() == 1
        rounds = renderer.rounds
        async with anyio.create_task_group() as burst:
            for n in range(50):
                burst.start_soon(register, client, "web", f"i{n}", 10_000 + n)
        # commands_run counts commands started: equal to the log's lines, every command of the burst has finished
        await eventually(lambda: len(dest.read_text().splitlines()) == 50 and commands() == renderer.commands_run)
        assert 2 <= commands() <= renderer.rounds
        assert renderer.rounds - rounds <= 6, renderer.rounds - rounds
        # a change the template does not show: a round, no command
        rounds, before = renderer.rounds, commands()
        await register(client, "other", "o1", 7000)
        await eventually(lambda: renderer.rounds > rounds)
        assert commands() == before
        # a change it shows: a command
        await bye(client, "web", "i7")
        await eventually(lambda: "10007" not in dest.read_text())
        await eventually(lambda: commands() == before + 1)
        tg.cancel_scope.cancel()


async def test_a_template_that_starts_failing_keeps_the_file_and_recovers_when_edited(
    aggregator: Any, client: Connection, tmp_path: Path
) -> None:
    tmpl = tmp_path / "t.j2"
    tmpl.write_text("{% for i in service('web') %}{{ i.port }}\n{% endfor %}")
    dest = tmp_path / "out"
    renderer = Renderer(client, [TemplateSpec(tmpl, dest)], wait=Wait(0, 0))
    async with anyio.create_task_group() as tg:
        await tg.start(renderer.run)
        await register(client, "web", "w1", 8001)
        await eventually(lambda: dest.read_text() == "8001\n")
        tmpl.write_text("{% for i in service('web') %}{{ i.port + 'x' }}\n{% endfor %}")
        rounds = renderer.rounds
        await register(client, "web", "w2", 8002)
        await eventually(lambda: renderer.rounds > rounds)
        assert dest.read_text() == "8001\n"   # the last good file stays
        tmpl.write_text("{% for i in service('web') %}{{ i.port }};\n{% endfor %}")
        await bye(client, "web", "w1")
        await eventually(lambda: dest.read_text() == "8002;\n")
        tg.cancel_scope.cancel()


async def test_helpers_filter_by_tag_status_and_zone(
    aggregator: Any, client: Connection, tmp_path: Path
) -> None:
    await register(client, "web", "a", 1, tags=("v2", "eu"), zone="z1")
    await register(client, "web", "b", 2, tags=("v2",), zone="z2", status="warning")
    await register(client, "web", "c", 3, tags=("v1",), zone="z1", status="critical")
    await register(client, "web", "d", 4, status="maintenance", meta={"k": "v"})
    tmpl = tmp_path / "t.j2"
    tmpl.write_text(
        "{{ service('web') | map(attribute='id') | join(',') }}\n"
        "{{ service('web', tag='v2', status='passing') | map(attribute='id') | join(',') }}\n"
        "{{ service('web', status='any', zone='z1') | map(attribute='id') | join(',') }}\n"
        "{{ service('web', status=['maintenance', 'critical']) | map(attribute='id') | join(',') }}\n"
        "{% for tag, insts in (service('web', status='any') | by_tag).items() %}{{ tag }}={{ insts | length }} "
        "{% endfor %};\n"
        "{{ services() | map(attribute='name') | join(',') }} {{ services()[0].tags | join(',') }}"
        " {{ service('web', status='any')[3].meta.k }} {{ tenant }}\n"
    )
    got: list[str] = []
    renderer = Renderer(client, [TemplateSpec(tmpl, tmp_path / "o")], dry_run=True, printer=got.append)
    result = await renderer.once()
    assert result.ok
    assert got == [f"> {tmp_path / 'o'}\na,b\na\na,c\nc,d\neu=1 v1=1 v2=2 ;\nweb eu,v1,v2 v acme\n"]



async def test_once_without_an_aggregator_is_one_error_line(conn_args: list[str], tmp_path: Path) -> None:
    res = await run_disco("render", "--tenant", "acme", *conn_args, "--once", "--template",
                      f"{EXAMPLES / 'hostports.txt.j2'}:{tmp_path / 'o'}")
    assert res.returncode == 1
    lines = res.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("disco: error: no aggregator is answering"), lines
    assert not (tmp_path / "o").exists()


async def test_once_runs_each_command_once_per_change_and_never_for_identical_output(
    aggregator: Any, client: Connection, conn_args: list[str], tmp_path: Path
) -> None:
    await register(client, "web", "w1", 8001)
    tmpl = EXAMPLES / "hostports.txt.j2"
    args = ["render", "--tenant", "acme", *conn_args, "--once",
            "--template", f"{tmpl}:{tmp_path / 'one'}:echo same >> log",
            "--template", f"{tmpl}:{tmp_path / 'two'}:echo same >> log",
            "--exec", "echo exec >> log"]
    first = await run_disco(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr.decode()
    assert (tmp_path / "log").read_text() == "same\nexec\n"   # the same command once per round, then --exec
    again = await run_disco(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr.decode()
    assert (tmp_path / "log").read_text() == "same\nexec\n"   # identical output: nothing runs
    await register(client, "web", "w2", 8002)
    failing = await run_disco("render", "--tenant", "acme", *conn_args, "--once",
                          "--template", f"{tmpl}:{tmp_path / 'one'}:exit 7", cwd=tmp_path)
    assert failing.returncode == 1
    assert "command 'exit 7' failed with status 7" in failing.stderr.decode()
    assert failing.stderr.decode().strip().splitlines()[-1] == "disco: error: 1 command(s) failed (see above)"
    assert (tmp_path / "one").read_text() == "10.0.0.1:8001\n10.0.0.1:8002\n"
