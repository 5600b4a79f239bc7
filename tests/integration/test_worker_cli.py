"""``disco worker --exec`` as users run it: the real command in a subprocess, against the session NATS server and an
aggregator of the test's own prefix."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest

from bus.client import request
from bus.codec import encode
from bus.connection import Connection
from bus.models import AnnounceAck, Bye, ChangeEvent, Instance
from services.natsserver import NatsServer, free_port
from tests.conftest import eventually
from tests.helpers import announce_raw, dead_letters
from tests.procs import error_line, run_disco, spawn

pytestmark = pytest.mark.integration





@pytest.fixture
def conn_args(nats_server: NatsServer, prefix: str) -> list[str]:
    return ["--nats", nats_server.url, "--prefix", prefix, "--stream", f"{prefix}_changes"]


async def add_and_remove(conn: Connection, service: str, iid: str) -> list[int]:
    inst = Instance(id=iid, address="10.0.0.1", port=80, seq=1, ttl=60.0)
    added = await announce_raw(conn, service, inst)
    removed = await request(conn, conn.subjects.bye("acme", service), encode(Bye(id=iid)), AnnounceAck)
    return [added.revision, removed.revision]


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def test_exec_gets_each_event_on_stdin_and_in_its_environment(
    aggregator: Any, client: Connection, conn_args: list[str], tmp_path: Path
) -> None:
    cmd = 'cat >> events.jsonl; echo "$DISCO_TENANT $DISCO_SERVICE $DISCO_EVENT_TYPE $DISCO_REVISION" >> env.txt'
    async with spawn("worker", "--tenant", "acme", "--group", "e2e", "--exec", cmd, "--service", "api", *conn_args,
                     cwd=tmp_path) as w:
        await w.ready()
        revisions = await add_and_remove(client, "api", "one")
        await add_and_remove(client, "web", "other")  # filtered out
        await eventually(lambda: len(read_lines(tmp_path / "env.txt")) == 2)
    events = [ChangeEvent.model_validate_json(line) for line in read_lines(tmp_path / "events.jsonl")]
    assert [(e.type.value, e.revision, e.instance.id) for e in events] == [
        ("added", revisions[0], "one"), ("removed", revisions[1], "one"),
    ]
    assert read_lines(tmp_path / "env.txt") == [
        f"acme api added {revisions[0]}", f"acme api removed {revisions[1]}",
    ]


async def test_a_failing_command_is_retried_then_dead_lettered(
    aggregator: Any, client: Connection, conn_args: list[str], tmp_path: Path
) -> None:
    dead, sub = await dead_letters(client, "picky")
    # added events fail once then pass; removed events always fail
    cmd = ('echo "$DISCO_REVISION $DISCO_ATTEMPT" >> tries.txt; '
           '[ "$DISCO_EVENT_TYPE" = added ] && [ "$DISCO_ATTEMPT" -ge 2 ] && exit 0; exit 3')
    async with spawn("worker", "--tenant", "acme", "--group", "picky", "--exec", cmd, "--max-attempts", "3",
                     "--retry-delay", "0.02", *conn_args, cwd=tmp_path) as w:
        await w.ready()
        added, removed = await add_and_remove(client, "api", "x")
        await eventually(lambda: dead)
        assert w.proc.returncode is None  # failures never stop the worker
    await sub.unsubscribe()
    tries = read_lines(tmp_path / "tries.txt")
    assert [t for t in tries if t.startswith(f"{added} ")] == [f"{added} 1", f"{added} 2"]
    assert [t for t in tries if t.startswith(f"{removed} ")] == [f"{removed} 1", f"{removed} 2", f"{removed} 3"]
    assert dead[0].headers is not None
    assert dead[0].headers["Disco-Attempts"] == "3"
    assert dead[0].headers["Disco-Error"] == "CommandFailed: command exited with status 3"
    assert any("exited with status 3" in line for line in w.err)
    assert not any("Traceback" in line for line in w.err)


async def test_sigterm_stops_it_cleanly_and_hands_the_event_back(
    aggregator: Any, client: Connection, conn_args: list[str], tmp_path: Path
) -> None:
    cmd = 'echo "$DISCO_REVISION $DISCO_ATTEMPT $$" >> started.txt; exec sleep 60'
    args = ["--tenant", "acme", "--group", "slow", "--exec", cmd, "--service", "api", *conn_args]
    async with spawn("worker", *args, cwd=tmp_path) as w:
        await w.ready()
        inst = Instance(id="slowpoke", address="10.0.0.1", port=80, seq=1, ttl=60.0)
        rev = (await request(client, client.subjects.announce("acme", "api"), encode(inst), AnnounceAck)).revision
        await eventually(lambda: len(read_lines(tmp_path / "started.txt")) == 1)
        w.proc.send_signal(signal.SIGTERM)
        with anyio.fail_after(15):
            assert await w.proc.wait() == 0
    assert not any("Traceback" in line for line in w.err)
    [(first_rev, first_attempt, pid)] = [line.split() for line in read_lines(tmp_path / "started.txt")]
    assert (first_rev, first_attempt) == (str(rev), "1")
    assert not _alive(int(pid))  # the running command was stopped with the worker

    async with spawn("worker", *args, cwd=tmp_path) as again:  # the event comes back at once, not after ack_wait (30 s)
        await again.ready()
        await eventually(lambda: len(read_lines(tmp_path / "started.txt")) == 2, timeout=15)
        again.proc.send_signal(signal.SIGTERM)
        with anyio.fail_after(15):
            assert await again.proc.wait() == 0
    assert read_lines(tmp_path / "started.txt")[1].split()[:2] == [str(rev), "2"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_bad_usage_is_one_line_and_exit_2(conn_args: list[str]) -> None:
    bad_group = await run_disco("worker", "--tenant", "acme", "--group", "Not_A_Label", "--exec", "true", *conn_args)
    assert bad_group.returncode == 2
    assert "group" in error_line(bad_group.stderr)
    no_exec = await run_disco("worker", "--tenant", "acme", "--group", "g", *conn_args)
    assert no_exec.returncode == 2
    assert "--exec" in error_line(no_exec.stderr)
    bad_service = await run_disco("worker", "--tenant", "acme", "--group", "g", "--exec", "true", "--service", "A B",
                                       *conn_args)
    assert bad_service.returncode == 2
    assert "service" in error_line(bad_service.stderr)


async def test_no_server_is_one_line_and_exit_1() -> None:
    res = await run_disco("worker", "--tenant", "acme", "--group", "g", "--exec", "true",
                               "--nats", f"nats://127.0.0.1:{free_port()}")
    assert res.returncode == 1
    assert "cannot connect" in error_line(res.stderr)


# =============================================================================================================
# commands that can never succeed fail at once, with the cause (issue 12.5, 12.6)
# =============================================================================================================
async def test_a_command_that_cannot_run_is_refused_at_start(conn_args: list[str], tmp_path: Path) -> None:
    (tmp_path / "not-exec.sh").write_text("#!/bin/sh\nexit 0\n")
    base = ["--tenant", "acme", "--group", "g", *conn_args]
    cases = {
        "no-such-command-xyz --flag": "no-such-command-xyz: command not found",
        f"{tmp_path}/missing.sh": "missing.sh: no such file",
        f"{tmp_path}/not-exec.sh arg": "not-exec.sh: not an executable file",
        f"{tmp_path}": "not an executable file",
    }
    for command, why in cases.items():
        res = await run_disco("worker", *base, "--exec", command)
        assert res.returncode == 2, (command, res.stderr)
        line = error_line(res.stderr)
        assert why in line and "--exec" in line, line
    # builtins, programs on PATH and variable assignments are fine (checked by starting against no server)
    for command in ("true", "echo hi", "FOO=1 env", "exit 0"):
        res = await run_disco("worker", "--tenant", "acme", "--group", "g", "--exec", command,
                                   "--nats", f"nats://127.0.0.1:{free_port()}")
        assert res.returncode == 1 and "cannot connect" in error_line(res.stderr), (command, res.stderr)


async def test_exit_127_at_run_time_stops_the_worker_and_hands_the_event_back(
    aggregator: Any, client: Connection, conn_args: list[str], tmp_path: Path
) -> None:
    dead, sub = await dead_letters(client, "broken")
    # each stop counts as a delivery of the event in hand (after --max-attempts deliveries without an outcome it
    # would be dead-lettered): 3 here is enough for two broken members, then a working one
    args = ["--tenant", "acme", "--group", "broken", "--service", "cmd127", "--max-attempts", "3",
            "--retry-delay", "0.02", *conn_args]
    # the command's first word exists; what it runs does not (127), or cannot be executed (126)
    for status in (127, 126):
        async with spawn("worker", *args, "--exec", f'sh -c "exit {status}"', cwd=tmp_path) as w:
            await w.ready()
            if status == 127:
                inst = Instance(id="c1", address="10.0.0.1", port=80, seq=1, ttl=60.0)
                await request(client, client.subjects.announce("acme", "cmd127"), encode(inst), AnnounceAck)
            with anyio.fail_after(30):
                assert await w.proc.wait() == 1
        assert any(f"disco: error: the command cannot run (exit status {status}" in line for line in w.err), w.err
        assert not any("Traceback" in line for line in w.err)
    # nothing was dead-lettered: a working member of the group then gets the event
    ok_cmd = 'echo "$DISCO_INSTANCE_ID $DISCO_ATTEMPT" >> handled.txt'
    async with spawn("worker", *args, "--exec", ok_cmd, cwd=tmp_path) as ok:
        await ok.ready()
        await eventually(lambda: read_lines(tmp_path / "handled.txt"), timeout=20)
    await sub.unsubscribe()
    [(iid, attempt)] = [line.split() for line in read_lines(tmp_path / "handled.txt")]
    assert (iid, attempt) == ("c1", "3")  # delivered to both broken workers first, handed back each time
    assert dead == []


async def test_a_server_without_jetstream_fails_at_once(tmp_path: Path) -> None:
    from services.natsserver import find_nats_server

    port = free_port()
    log = (tmp_path / "nats.log").open("wb")
    server = subprocess.Popen([find_nats_server(), "-a", "127.0.0.1", "-p", str(port)],  # noqa: ASYNC220
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        await eventually(lambda: _port_open(port), timeout=10)
        res = await run_disco("worker", "--tenant", "acme", "--group", "g", "--exec", "true",
                                   "--nats", f"nats://127.0.0.1:{port}", timeout=30)
        assert res.returncode == 1
        assert "JetStream is not enabled" in error_line(res.stderr)
    finally:
        server.terminate()
        server.wait(10)
        log.close()


def _port_open(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


AUTHZ = """
authorization {
  users = [
    { user: "acme", password: "acme-secret",
      permissions: {
        publish: { allow: ["disco.acme.>", "$JS.API.CONSUMER.*.W_acme.>", "$JS.API.STREAM.INFO.W_acme",
                           "$JS.ACK.W_acme.>"] }
        subscribe: { allow: ["_INBOX.acme.>", "disco.acme.changes.*"] }
      }
    }
  ]
}
"""


async def test_another_tenants_credentials_fail_at_once(tmp_path: Path) -> None:
    creds = tmp_path / "acme.creds.json"
    creds.write_text('{"tenant": "acme", "user": "acme", "password": "acme-secret"}')
    server = NatsServer(tmp_path / "nats", extra_config=AUTHZ)
    server.start()
    try:
        res = await run_disco("worker", "--tenant", "globex", "--group", "g", "--exec", "true", "--creds", str(creds),
                                   "--stream", "W", "--nats", server.url, timeout=40)
        assert res.returncode == 1
        text = res.stderr.decode()
        assert "Traceback" not in text, text
        # the connection's warnings (a daemon logs them) come first, the cause last
        line = text.strip().splitlines()[-1]
        assert line.startswith("disco: error: ") and ("does not allow" in line or "credentials" in line), text
    finally:
        server.stop()


async def test_dlq_ls_and_replay(aggregator: Any, client: Connection, conn_args: list[str], tmp_path: Path) -> None:
    # the command fails until ok.flag exists
    cmd = '[ -e ok.flag ] || exit 4; echo "$DISCO_INSTANCE_ID $DISCO_ATTEMPT" >> handled.txt'
    args = ["--tenant", "acme", "--group", "later", "--service", "dlqcli", "--max-attempts", "2",
            "--retry-delay", "0.02", *conn_args]
    async with spawn("worker", *args, "--exec", cmd, cwd=tmp_path) as w:
        await w.ready()
        inst = Instance(id="q1", address="10.0.0.1", port=80, seq=1, ttl=60.0)
        rev = (await request(client, client.subjects.announce("acme", "dlqcli"), encode(inst), AnnounceAck)).revision
        ls_args = ["dlq", "ls", "--tenant", "acme", "--group", "later", *conn_args]
        listed = await eventually(lambda: _listed(ls_args), timeout=20)
        seq, _when, group, _a, attempts, what, kind, _r, rev_s, *error = listed[0].split()
        assert (group, attempts, what, kind, rev_s) == ("later", "2", "dlqcli/q1", "added", str(rev))
        assert " ".join(error) == "CommandFailed: command exited with status 4"
        as_json = await run_disco(*ls_args, "--json")
        [item] = json.loads(as_json.stdout)
        assert item["seq"] == int(seq) and item["event"]["revision"] == rev and item["attempts"] == 2

        (tmp_path / "ok.flag").write_text("")
        usage = await run_disco("dlq", "replay", "--tenant", "acme", "--group", "later", *conn_args)
        assert usage.returncode == 2  # neither sequences nor --all
        missing = await run_disco("dlq", "replay", "--tenant", "acme", "--group", "later", "999999", *conn_args)
        assert missing.returncode == 1 and "no dead letter" in error_line(missing.stderr)
        done = await run_disco("dlq", "replay", "--tenant", "acme", "--group", "later", seq, *conn_args)
        assert done.returncode == 0, done.stderr
        assert f"replayed 1 dead letter(s) to group later: {seq}" in done.stderr.decode()
        await eventually(lambda: read_lines(tmp_path / "handled.txt"), timeout=20)
    assert read_lines(tmp_path / "handled.txt") == ["q1 1"]
    assert (await run_disco(*ls_args)).stdout == b""  # replayed: no longer a dead letter


async def _listed(args: list[str]) -> list[str]:
    res = await run_disco(*args)
    assert res.returncode == 0, res.stderr
    return res.stdout.decode().splitlines()


async def test_a_sigkilled_worker_leaves_no_command_running(
    aggregator: Any, client: Connection, conn_args: list[str], tmp_path: Path
) -> None:
    """The command gets a parent-death signal (setpriv --pdeathsig): killing the worker with SIGKILL, which it
    cannot handle, still stops the command it was running."""
    import shutil

    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    cmd = 'echo "$$" >> started.txt; exec sleep 60'
    args = ["--tenant", "acme", "--group", "killed", "--exec", cmd, "--service", "kill9", *conn_args]
    async with spawn("worker", *args, cwd=tmp_path) as w:
        await w.ready()
        inst = Instance(id="k1", address="10.0.0.1", port=80, seq=1, ttl=60.0)
        await request(client, client.subjects.announce("acme", "kill9"), encode(inst), AnnounceAck)
        await eventually(lambda: read_lines(tmp_path / "started.txt"), timeout=15)
        [pid] = [int(x) for x in read_lines(tmp_path / "started.txt")]
        assert _alive(pid)
        w.proc.send_signal(signal.SIGKILL)
        with anyio.fail_after(15):
            assert await w.proc.wait() == -signal.SIGKILL
        # inside the block: leaving it waits for the worker's stderr, which a surviving command would hold open
        await eventually(lambda: not _alive(pid) or _zombie(pid), timeout=15)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


async def test_dlq_with_credentials_that_may_not_read_it_is_one_line(tmp_path: Path) -> None:
    creds = tmp_path / "acme.creds.json"
    creds.write_text('{"tenant": "acme", "user": "acme", "password": "acme-secret"}')
    server = NatsServer(tmp_path / "nats", extra_config=AUTHZ)
    server.start()
    try:
        res = await run_disco("dlq", "ls", "--tenant", "acme", "--creds", str(creds), "--stream", "W",
                              "--nats", server.url, timeout=40)
        assert res.returncode == 1
        text = res.stderr.decode()
        assert "Traceback" not in text, text
        line = text.strip().splitlines()[-1]
        assert line.startswith("disco: error: ") and "does not allow" in line and "W_acme_DLQ" in line, text
    finally:
        server.stop()


async def test_json_prints_one_ready_object_on_stdout(aggregator: Any, conn_args: list[str], tmp_path: Path) -> None:
    """``--json``: stdout gets one object once the worker consumes (its command's output is the command's own)."""
    async with spawn("worker", "--tenant", "acme", "--group", "js", "--exec", "cat >/dev/null", "--json",
                     *conn_args, cwd=tmp_path) as w:
        ready = json.loads(await w.line(lambda x: x.startswith("{"), timeout=20))
        assert ready["worker"] == "js" and ready["tenant"] == "acme" and ready["ready"] is True
        assert ready["durable"] is True and ready["stream"].endswith("_acme") and ready["consumer"]
        assert len(w.out) == 1  # one object, nothing else
        assert await w.stop() == 0
